"""Ingest from gateways, and the desired state they pull for their site."""

from __future__ import annotations

import asyncio
import zlib

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session, select

from cloud_controller.api.deps import CurrentToken, Gateway, SessionDep
from cloud_controller.desired_state import desired_for_devices, etag
from cloud_controller.ingest import store_batch
from cloud_controller.models import ApiToken, Device, Role, Site
from fleet_protocol import ProtocolError, decode
from fleet_protocol.ingest import IngestBatch, IngestResult, SiteDesiredStates

router = APIRouter(tags=["gateways"])


@router.post("/ingest", response_model=IngestResult)
async def ingest(
    request: Request,
    session: SessionDep,
    caller: Gateway,
    content_encoding: str | None = Header(default=None),
) -> IngestResult:
    """Store a gateway's batch (JSON, optionally gzip); records already stored count as duplicates."""
    limit = request.app.state.settings.max_ingest_bytes
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(413, f"Batch is larger than {limit} bytes")
    data = bytes(body)
    if content_encoding == "gzip":
        data = await asyncio.to_thread(_gunzip, data, limit)
    elif content_encoding not in (None, "identity"):
        raise HTTPException(415, f"Unsupported Content-Encoding {content_encoding}")
    try:
        batch = decode(data, IngestBatch, max_bytes=limit)
    except ProtocolError as exc:
        request.app.state.metrics.ingest_rejected.labels(exc.reason).inc()
        raise HTTPException(422 if exc.reason != "too_large" else 413, str(exc)) from None
    if caller.site_id is not None and caller.site_id != batch.site:
        raise HTTPException(403, f"This gateway token is for site {caller.site_id}, not {batch.site}")
    result = await run_in_threadpool(_store, session, batch)
    metrics = request.app.state.metrics
    metrics.ingest_records.inc(result.accepted)
    metrics.ingest_duplicates.inc(result.duplicates)
    metrics.ingest_summaries.inc(result.summaries_stored)
    return result


def _store(session: Session, batch: IngestBatch) -> IngestResult:
    return store_batch(session=session, batch=batch)


def _gunzip(data: bytes, limit: int) -> bytes:
    # Bounded: a small gzip body must not expand into gigabytes.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise HTTPException(400, f"Body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise HTTPException(413, f"Batch expands beyond {limit} bytes")
    return out


@router.get("/sites/{site_id}/desired", response_model=SiteDesiredStates)
def site_desired(
    session: SessionDep,
    caller: CurrentToken,
    site_id: str,
    response: Response,
    if_none_match: str | None = Header(default=None),
) -> SiteDesiredStates | Response:
    """Every device's desired state at a site; send If-None-Match to get 304 when unchanged."""
    _check_site_reader(caller, site_id)
    if session.get(Site, site_id) is None:
        raise HTTPException(404, "Site not found")
    devices = list(session.exec(select(Device).where(Device.site_id == site_id).order_by(Device.id)).all())
    states = desired_for_devices(session=session, devices=devices)
    tag = etag(states)
    if if_none_match == tag:
        return Response(status_code=304, headers={"ETag": tag})
    response.headers["ETag"] = tag
    return SiteDesiredStates(site=site_id, states=states)


def _check_site_reader(caller: ApiToken, site_id: str) -> None:
    if caller.role is Role.GATEWAY:
        if caller.site_id is not None and caller.site_id != site_id:
            raise HTTPException(403, f"This gateway token is for site {caller.site_id}")
    elif caller.role not in (Role.VIEWER, Role.OPERATOR):
        raise HTTPException(403, f"Role {caller.role.value} may not do this")
