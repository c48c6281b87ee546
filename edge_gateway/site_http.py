"""The gateway's HTTP server on the site network: bundles for devices, ``/metrics``, ``/healthz``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edge_gateway.bundles import SHA256, BundleCache, BundleNotAvailable
from edge_gateway.metrics import GatewayMetrics

Health = Callable[[], tuple[bool, dict[str, object]]]


def make_app(cache: BundleCache, metrics: GatewayMetrics, health: Health) -> web.Application:
    async def bundle(request: web.Request) -> web.StreamResponse:
        sha = request.match_info["sha256"]
        if not SHA256.match(sha):
            metrics.bundle_requests.labels("bad_request").inc()
            raise web.HTTPBadRequest(text="a bundle is named by its sha256 (64 hex digits)")
        try:
            path = await cache.get(sha)
        except BundleNotAvailable as exc:
            metrics.bundle_requests.labels("unavailable").inc()
            raise web.HTTPServiceUnavailable(text=f"bundle {sha[:12]} is not available: {exc}") from None
        metrics.bundle_requests.labels("ok").inc()
        size = (await asyncio.to_thread(path.stat)).st_size
        wanted = request.http_range
        start = wanted.start or 0
        start = min(size, start if start >= 0 else max(0, size + start))  # a negative start: the last bytes
        metrics.bundle_bytes_served.inc((min(size, wanted.stop) if wanted.stop is not None else size) - start)
        return web.FileResponse(path, headers={"ETag": f'"{sha}"', "Content-Type": "application/x-tar"})

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok, detail = health()
        return web.json_response({"status": "ok" if ok else "degraded", **detail}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/bundles/{sha256}", bundle)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start the server; returns the runner (to clean up) and the port it bound."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server is not None and server.sockets else port
    return runner, int(bound)
