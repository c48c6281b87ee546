"""A real HTTP server of bundle archives by sha256, with range requests, as a site gateway serves them.

``cut_after`` makes it hang up after that many bytes of a download, once: the device must resume.
``seconds_per_download`` streams every archive slowly (in 40 chunks over that time, ranges
honoured), so that a test can kill a device at instants spread over its download.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from aiohttp import web

from model_compiler.archive import pack


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class BundleServer:
    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        self.requests: list[tuple[str, str | None]] = []  # (sha256, Range header)
        self.cut_after: int | None = None
        self.seconds_per_download: float | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    def add(self, bundle_dir: Path, archive: Path | None = None) -> str:
        """Serve a bundle (packed into a .tar if no archive is given); returns its address."""
        archive = archive or pack(bundle_dir)
        sha = sha256_of(archive)
        self.files[sha] = archive
        return sha

    def url(self, sha: str) -> str:
        return f"http://127.0.0.1:{self.port}/bundles/{sha}"

    async def __aenter__(self) -> BundleServer:
        app = web.Application()
        app.router.add_get("/bundles/{sha}", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _get(self, request: web.Request) -> web.StreamResponse:
        sha = request.match_info["sha"]
        self.requests.append((sha, request.headers.get("Range")))
        path = self.files.get(sha)
        if path is None:
            raise web.HTTPNotFound()
        if self.cut_after is not None:
            cut, self.cut_after = self.cut_after, None
            response = web.StreamResponse(status=200, headers={"Content-Length": str(path.stat().st_size)})
            await response.prepare(request)
            await response.write(path.read_bytes()[:cut])
            await asyncio.sleep(0.3)  # the bytes reach the device, then the link drops
            request.transport.close()  # type: ignore[union-attr]  # a dropped link mid-download
            return response
        if self.seconds_per_download is not None:
            return await self._slowly(request, path.read_bytes(), self.seconds_per_download)
        return web.FileResponse(path)

    @staticmethod
    async def _slowly(request: web.Request, data: bytes, seconds: float) -> web.StreamResponse:
        start = 0
        if (wanted := request.headers.get("Range", "")).startswith("bytes="):
            start = int(wanted.removeprefix("bytes=").split("-", 1)[0])
            if start >= len(data):
                raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{len(data)}"})
        headers = {"Content-Length": str(len(data) - start)}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        await response.prepare(request)
        chunk = max(1, len(data) // 40)
        for offset in range(start, len(data), chunk):
            await response.write(data[offset : offset + chunk])
            await asyncio.sleep(seconds / 40)
        await response.write_eof()
        return response
