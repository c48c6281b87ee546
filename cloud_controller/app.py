"""The FastAPI application: built from settings in a factory, no import-time singletons."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.routing import Match, Route

from cloud_controller.alarm_engine import AlarmEngine
from cloud_controller.alarm_webhook import AlarmNotifier
from cloud_controller.api.routes import (
    alarms,
    audit,
    devices,
    groups,
    health,
    ingest,
    labels,
    registry,
    rollouts,
    sites,
    tokens,
)
from cloud_controller.api.routes import jobs as job_routes
from cloud_controller.dashboard import router as dashboard_router
from cloud_controller.dashboard_alarms import router as alarm_pages
from cloud_controller.dashboard_jobs import router as job_pages
from cloud_controller.dashboard_rollouts import router as rollout_pages
from cloud_controller.db import make_engine
from cloud_controller.metrics import ControllerMetrics
from cloud_controller.rate_limit import IngestLimiter
from cloud_controller.rollout_engine import RolloutEngine
from cloud_controller.settings import ControllerSettings
from fleet_protocol.ingest import IngestBatch
from fleet_protocol.labels import LabelUpload
from fleet_protocol.signing import load_public_key

API = "/api/v1"


def create_app(settings: ControllerSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        app.state.settings = settings
        app.state.engine = engine
        app.state.trusted_keys = [load_public_key(p) for p in settings.trusted_keys]
        app.state.metrics = ControllerMetrics(engine)
        app.state.decoding = threading.Lock()  # ingest decodes one batch at a time
        app.state.ingest_limiter = (
            IngestLimiter(settings.ingest_records_per_s, settings.ingest_burst_records)
            if settings.ingest_records_per_s is not None
            else None
        )
        # What exists now (modules, schemas, the app) lives as long as the process: out of the
        # collector's sight. A full collection, which a large batch's objects set off, stops every
        # thread; walking these 100k objects each time took over 100 ms.
        gc.freeze()
        stop = asyncio.Event()
        rollout_engine = asyncio.create_task(
            RolloutEngine(engine, interval_s=settings.rollout_tick_s).run(stop), name="rollout-engine"
        )
        notifier, tasks = None, [rollout_engine]
        if settings.alarm_webhook_url is not None:
            token = settings.alarm_webhook_token
            notifier = AlarmNotifier(
                engine,
                url=str(settings.alarm_webhook_url),
                token=token.get_secret_value() if token is not None else None,
                timeout_s=settings.alarm_webhook_timeout_s,
                max_age_s=settings.alarm_webhook_max_age_s,
                counter=app.state.metrics.alarm_notifications,
            )
            tasks.append(
                asyncio.create_task(notifier.run(stop, settings.alarm_tick_s), name="alarm-notifier")
            )
        tasks.append(
            asyncio.create_task(
                AlarmEngine(
                    engine,
                    interval_s=settings.alarm_tick_s,
                    on_accuracy=app.state.metrics.accuracy.update,
                    after_pass=notifier.wake if notifier is not None else lambda: None,
                ).run(stop),
                name="alarm-engine",
            )
        )
        yield
        stop.set()
        for task in tasks:
            await task
        engine.dispose()

    app = FastAPI(title="edgefleet controller", version="0.1.0", lifespan=lifespan)
    for module in (sites, devices, groups, rollouts, labels, alarms, registry, ingest, audit, tokens):
        app.include_router(module.router, prefix=API)
    app.include_router(sites.gateways, prefix=API)
    app.include_router(job_routes.router, prefix=API)
    app.include_router(health.router)
    app.include_router(dashboard_router)
    app.include_router(rollout_pages)
    app.include_router(alarm_pages)
    app.include_router(job_pages)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    app.add_exception_handler(405, _method_not_allowed)
    return app


async def _method_not_allowed(request: Request, _: Exception) -> JSONResponse:
    """405 with every method the path has in ``Allow``.

    Starlette names only those of the first route matching the path, and a path often has two
    (``GET /sites`` and ``POST /sites`` are two functions).
    """
    methods = {
        method
        for route in request.app.router.routes
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE
        for method in route.methods or ()
    }
    return JSONResponse({"detail": "Method Not Allowed"}, 405, headers={"Allow": ", ".join(sorted(methods))})


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's schema plus `IngestBatch`, which ingest reads itself (JSON or msgpack) and so
    FastAPI does not see."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            read_by_routes: dict[str, Any] = {}
            for model in (IngestBatch, LabelUpload):  # bodies their routes read themselves
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                read_by_routes.update({**body.pop("$defs", {}), model.__name__: body})
            for name, definition in read_by_routes.items():
                if name in components and _shape(components[name]) != _shape(definition):
                    raise RuntimeError(f"Two different models named {name} in the OpenAPI spec")
                # pydantic's own schema: FastAPI's copy of a protocol model (in a response) turns
                # integer bounds into floats, and 2**63 - 1 is not a float.
                components[name] = definition
            app.openapi_schema = schema
        return app.openapi_schema

    return build


def _shape(definition: dict[str, Any]) -> tuple[object, ...]:
    """What makes two schemas of one model alike: title, fields, enum values."""
    return (definition.get("title"), sorted(definition.get("properties", {})), definition.get("enum"))
