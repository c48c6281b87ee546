"""Small durable JSON documents (the applied desired state), Home Assistant style.

A versioned envelope ``{"version", "key", "data"}``; an undecodable file is renamed to
``*.corrupt.<time>`` and logged, and the agent starts clean; writes are atomic
(temp file, fsync, rename) and done in a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION = 1


class JsonStore:
    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self._lock = asyncio.Lock()

    async def load(self) -> Any | None:
        return await asyncio.to_thread(self._load)

    def _load(self) -> Any | None:
        try:
            envelope = json.loads(self.path.read_text())
            if envelope.get("key") != self.key or envelope.get("version") != VERSION:
                raise ValueError(f"unexpected envelope key={envelope.get('key')} v={envelope.get('version')}")
            return envelope["data"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, AttributeError, UnicodeDecodeError) as exc:
            corrupt = self.path.with_name(f"{self.path.name}.corrupt.{int(time.time())}")
            os.replace(self.path, corrupt)
            log.error("%s is unreadable (%s): moved to %s, starting clean", self.path, exc, corrupt)
            return None

    async def save(self, data: Any) -> None:
        async with self._lock:
            await asyncio.to_thread(self._save, data)

    def _save(self, data: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w") as handle:
            json.dump({"version": VERSION, "key": self.key, "data": data}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        # The rename is durable only once the folder is: a power cut must not bring the old file back.
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
