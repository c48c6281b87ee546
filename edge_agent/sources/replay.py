"""Replays a recorded CSV or JSON-lines file, one reading a row."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from edge_agent.sources.base import Reading, SensorSource

_CHUNK = 512


class ReplaySource(SensorSource):
    """Rows become readings; the cursor is the row number, so a restart resumes after it.

    A row that cannot be parsed still yields a reading whose values carry the raw row:
    preprocessing rejects and counts it, and the replay goes on.
    """

    def __init__(
        self,
        path: Path,
        *,
        rate_hz: float | None = None,
        loop: bool = False,
        ts_field: str = "ts",
        label_field: str = "label",
    ) -> None:
        self.path = path
        self.rate_hz = rate_hz
        self.loop = loop
        self.ts_field = ts_field
        self.label_field = label_field

    async def readings(self, start_cursor: str | None = None) -> AsyncIterator[Reading]:
        skip = int(start_cursor) if start_cursor else 0
        next_at = time.monotonic()
        while True:
            rows = self._rows()
            index = 0
            while True:
                # File I/O in a thread: a slow SD card must not stall the loop.
                chunk = await asyncio.to_thread(_take, rows, _CHUNK)
                if not chunk:
                    break
                for row in chunk:
                    index += 1
                    if index <= skip:
                        continue
                    if self.rate_hz is not None:
                        next_at += 1.0 / self.rate_hz
                        delay = next_at - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    yield self._reading(row, index)
                await asyncio.sleep(0)
            if not self.loop:
                return
            skip = 0

    def _rows(self) -> Iterator[Any]:
        with self.path.open(newline="") as handle:
            if self.path.suffix == ".csv":
                yield from csv.DictReader(handle)
            else:
                for line in handle:
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError:
                            yield {"_unparsable": line.rstrip("\n")}

    def _reading(self, row: Any, index: int) -> Reading:
        if not isinstance(row, dict):
            return Reading(ts=time.time(), values={"_unparsable": row}, cursor=str(index))
        values = dict(row)
        ts = _number(values.pop(self.ts_field, None))
        label = _number(values.pop(self.label_field, None))
        if self.path.suffix == ".csv":
            values = {k: _csv_value(v) for k, v in values.items()}
        return Reading(
            ts=ts if ts is not None else time.time(),
            values=values,
            label=int(label) if label is not None else None,
            cursor=str(index),
        )


def _take(rows: Iterator[Any], n: int) -> list[Any]:
    out = []
    for row in rows:
        out.append(row)
        if len(out) == n:
            break
    return out


def _number(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _csv_value(value: str) -> Any:
    # CSV has only strings; a value that is no number stays a string and is rejected later.
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
