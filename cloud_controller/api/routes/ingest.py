"""Ingest from gateways, and the desired state they pull for their site."""

from __future__ import annotations

import zlib
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session, col, select
from starlette.datastructures import State

from cloud_controller.api.deps import CurrentToken, Gateway, IdPath, SessionDep
from cloud_controller.api.errors import AUTH, errors
from cloud_controller.desired_state import etag, issue
from cloud_controller.ingest import store_batch
from cloud_controller.models import ApiToken, Device, Role, Site
from cloud_controller.rate_limit import batch_items, retry_after
from fleet_protocol import ProtocolError, decode
from fleet_protocol.ingest import IngestBatch, IngestResult, SiteDesiredStates

router = APIRouter(tags=["gateways"], responses=errors(*AUTH))

#: `IngestBatch` is published among the components by `cloud_controller.app`.
_BATCH_SCHEMA = {"$ref": "#/components/schemas/IngestBatch"}
_ENCODINGS = ("gzip", "identity")


@router.post(
    "/ingest",
    response_model=IngestResult,
    # The route reads the body itself: FastAPI validates no parameter, every 422 is ours.
    responses={
        **errors(400, 413, 415, 422, 429),
        429: {
            **errors(429)[429],
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before sending again",
                    "schema": {"type": "integer"},
                }
            },
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _BATCH_SCHEMA},
                "application/msgpack": {"schema": _BATCH_SCHEMA},
            },
        }
    },
)
async def ingest(
    request: Request,
    session: SessionDep,
    caller: Gateway,
    content_encoding: Annotated[str | None, Header(json_schema_extra={"enum": list(_ENCODINGS)})] = None,
) -> IngestResult:
    """Store a gateway's batch (JSON or msgpack, optionally gzip); records stored already are duplicates."""
    limit = request.app.state.settings.max_ingest_bytes
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(413, f"Batch is larger than {limit} bytes")
    if content_encoding not in (None, *_ENCODINGS):
        raise HTTPException(415, f"Unsupported Content-Encoding {content_encoding}")
    # Inflating, validating, storing and even freeing a batch of `limit` bytes (millions of
    # objects) each take a fraction of a second: all of it in a worker thread, so that the event
    # loop goes on answering other requests meanwhile.
    return await run_in_threadpool(
        _ingest, request.app.state, session, caller, body, content_encoding == "gzip"
    )


def _ingest(state: State, session: Session, caller: ApiToken, data: bytearray, gzipped: bool) -> IngestResult:
    """Decode, check and store one batch, in a worker thread; the batch is freed here too."""
    limit = state.settings.max_ingest_bytes
    # One decode at a time: it holds the GIL (pydantic parses the whole JSON before it validates,
    # without letting go), so a second would not go faster and would only hold the loop up longer.
    with state.decoding:
        try:
            # The bytearray as it came: copying megabytes would hold the GIL as well.
            raw = _gunzip(data, limit) if gzipped else data
            batch = decode(raw, IngestBatch, max_bytes=limit)  # type: ignore[arg-type]
        except ProtocolError as exc:
            state.metrics.ingest_rejected.labels(exc.reason).inc()
            raise HTTPException(422 if exc.reason != "too_large" else 413, str(exc)) from None
    try:
        if caller.site_id is not None and caller.site_id != batch.site:
            raise HTTPException(403, f"This gateway token is for site {caller.site_id}, not {batch.site}")
        _within_rate(state, caller, batch)
        result = store_batch(session=session, batch=batch)
    finally:
        # Record by record: freeing millions of numbers in one call would hold the GIL throughout.
        while batch.records:
            batch.records.pop()
    state.metrics.ingest_records.inc(result.accepted)
    state.metrics.ingest_duplicates.inc(result.duplicates)
    state.metrics.ingest_summaries.inc(result.summaries_stored)
    return result


def _within_rate(state: State, caller: ApiToken, batch: IngestBatch) -> None:
    """429 with ``Retry-After`` when the caller's bucket cannot take this batch now; nothing is stored."""
    if state.ingest_limiter is None:
        return
    assert caller.id is not None
    items = batch_items(batch)
    delay = state.ingest_limiter.admit(caller.id, items)
    if delay > 0:
        state.metrics.ingest_rejected.labels("rate_limited").inc()
        wait = retry_after(delay)
        raise HTTPException(
            429,
            f"Gateway token {caller.name!r} is over its ingest rate ({state.settings.ingest_records_per_s:g} "
            f"items/s, burst {state.settings.ingest_burst_records}): batch of {items} items not stored, "
            f"send it again in {wait} s",
            headers={"Retry-After": str(wait)},
        )


def _gunzip(data: bytearray, limit: int) -> bytes:
    # Bounded: a small gzip body must not expand into gigabytes.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise HTTPException(400, f"Body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise HTTPException(413, f"Batch expands beyond {limit} bytes")
    return out


@router.get(
    "/sites/{site_id}/desired",
    response_model=SiteDesiredStates,
    responses={304: {"description": "Unchanged since the ETag sent in If-None-Match"}, **errors(404)},
)
def site_desired(
    session: SessionDep,
    caller: CurrentToken,
    site_id: IdPath,
    response: Response,
    if_none_match: Annotated[str | None, Header(max_length=200)] = None,
) -> SiteDesiredStates | Response:
    """Every device's desired state at a site; send If-None-Match to get 304 when unchanged."""
    _check_site_reader(caller, site_id)
    if session.get(Site, site_id) is None:
        raise HTTPException(404, "Site not found")
    # Three columns, not whole devices: this is polled by every gateway, with thousands of devices.
    devices = session.exec(
        select(Device.id, Device.labels, Device.runtime)
        .where(Device.site_id == site_id)
        .order_by(col(Device.id))
    ).all()
    issued = issue(session=session, devices=devices, site_id=site_id)
    tag = etag(issued)
    if if_none_match == tag:
        return Response(status_code=304, headers={"ETag": tag})
    response.headers["ETag"] = tag
    return SiteDesiredStates(site=site_id, states=[i.state() for i in issued])


def _check_site_reader(caller: ApiToken, site_id: str) -> None:
    if caller.role is Role.GATEWAY:
        if caller.site_id is not None and caller.site_id != site_id:
            raise HTTPException(403, f"This gateway token is for site {caller.site_id}")
    elif caller.role not in (Role.VIEWER, Role.OPERATOR):
        raise HTTPException(403, f"Role {caller.role.value} may not do this")
