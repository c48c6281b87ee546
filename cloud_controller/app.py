"""The FastAPI application: built from settings in a factory, no import-time singletons."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from cloud_controller.api.routes import audit, devices, groups, health, ingest, registry, sites
from cloud_controller.dashboard import router as dashboard_router
from cloud_controller.db import make_engine
from cloud_controller.metrics import ControllerMetrics
from cloud_controller.settings import ControllerSettings
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
        yield
        engine.dispose()

    app = FastAPI(title="edgefleet controller", version="0.1.0", lifespan=lifespan)
    for module in (sites, devices, groups, registry, ingest, audit):
        app.include_router(module.router, prefix=API)
    app.include_router(sites.gateways, prefix=API)
    app.include_router(health.router)
    app.include_router(dashboard_router)
    return app
