"""Bundle downloads: from the site gateway first, the controller as a fallback, resumed with Range.

A cut download keeps its ``.part`` file; the next try asks for the bytes after it. Bundles are
content-addressed (``…/bundles/{sha256}``): a download that does not hash to its address is
thrown away and never unpacked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from pathlib import Path

import aiohttp

from edge_agent.ota.hooks import crash_point

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")


class FetchError(Exception):
    """No source gave the bundle; ``digest`` when bytes came but did not hash to the address."""

    def __init__(self, message: str, *, digest: bool = False, disk_full: bool = False) -> None:
        super().__init__(message)
        self.digest = digest
        self.disk_full = disk_full


def address(url: str) -> str | None:
    """The sha256 a bundle URL names, if it ends with one."""
    last = url.rstrip("/").rsplit("/", 1)[-1]
    return last if _SHA256.fullmatch(last) else None


async def fetch_bundle(
    urls: list[str],
    dest: Path,
    *,
    token: str | None = None,
    timeout_s: float = 300.0,
) -> Path:
    """Download to ``dest`` from the first URL that works; returns ``dest``.

    Raises
    ------
    FetchError
        When every URL failed; the message says how each did.
    """
    failures: list[str] = []
    for index, url in enumerate(urls):
        # The token is for the controller; a site gateway serves bundles to its devices without one.
        headers = {"Authorization": f"Bearer {token}"} if token and index > 0 else {}
        try:
            await _download(url, dest, headers, timeout_s)
        except FetchError as exc:
            if exc.digest or exc.disk_full:
                raise
            failures.append(f"{url}: {exc}")
            continue
        return dest
    raise FetchError("; ".join(failures) or "no bundle URL")


async def _download(url: str, dest: Path, headers: dict[str, str], timeout_s: float) -> None:
    part = dest.with_name(dest.name + ".part")
    have = await asyncio.to_thread(lambda: part.stat().st_size if part.exists() else 0)
    if have:
        headers = {**headers, "Range": f"bytes={have}-"}
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(10.0, timeout_s))
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url, headers=headers) as response:
            if response.status == 416 and have:
                pass  # the part file is whole already
            elif response.status not in (200, 206):
                raise FetchError(f"HTTP {response.status}")
            else:
                if response.status == 200 and have:
                    have = 0  # the server ignored the range: start over
                handle = await asyncio.to_thread(part.open, "ab" if have else "wb")
                try:
                    # Whatever arrives is kept at once: a link cut mid-way loses nothing received.
                    async for chunk in response.content.iter_any():
                        await asyncio.to_thread(handle.write, chunk)
                        crash_point("download")  # a test's kill -9 with part of the bundle on disk
                    await asyncio.to_thread(handle.flush)
                finally:
                    await asyncio.to_thread(handle.close)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise FetchError(f"{exc.__class__.__name__}: {exc}") from None
    except OSError as exc:
        raise FetchError(f"cannot write {part}: {exc}", disk_full=exc.errno == 28) from None
    expected = address(url)
    if expected is not None:
        actual = await asyncio.to_thread(_sha256, part)
        if actual != expected:
            await asyncio.to_thread(part.unlink, True)
            raise FetchError(f"{url} gave bytes hashing to {actual[:12]}, not its address", digest=True)
    await asyncio.to_thread(part.replace, dest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
