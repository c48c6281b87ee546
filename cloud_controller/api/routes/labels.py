"""Labels from systems that talk to the cloud, and the accuracy they measure."""

from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from cloud_controller import accuracy
from cloud_controller.api.deps import CurrentToken, IdQuery, Reader, SessionDep, text_query
from cloud_controller.api.errors import AUTH, errors
from cloud_controller.labels import from_devices, store_labels
from cloud_controller.models import ApiToken, Role
from fleet_protocol import Encoding, ProtocolError, decode
from fleet_protocol.codec import sniff_encoding
from fleet_protocol.labels import LabelResult, LabelUpload

router = APIRouter(tags=["labels"], responses=errors(*AUTH))

#: 1000 labels take a few hundred kB at most; more is refused before parsing. Bodies below this
#: are parsed, so that a body of too many labels is answered 422 with the reason.
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
#: Model ids these routes address: one path segment (the registry's ids may hold more).
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}$"
ModelIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=MODEL_ID_PATTERN)]
_UPLOAD_SCHEMA = {"$ref": "#/components/schemas/LabelUpload"}


@router.post(
    "/labels",
    response_model=LabelResult,
    # The route reads the body itself (as ingest does): every 422 is ours, with the reason.
    responses=errors(413, 422),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _UPLOAD_SCHEMA}}}
    },
)
async def upload_labels(request: Request, session: SessionDep, caller: CurrentToken) -> LabelResult:
    """Store labels of devices of one site (operator, or a gateway token of that site).

    A label for a ``(device_id, seq)`` stored already is replaced when its class differs and its
    ``labelled_at`` is no earlier (a correction); the same class, or an older label, is ``unchanged``.
    Devices of another site, or unknown, are listed in ``unknown_devices`` and their labels dropped.
    """
    if caller.role not in (Role.OPERATOR, Role.GATEWAY):
        raise HTTPException(403, f"Role {caller.role.value} may not do this")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"Label upload is larger than {MAX_UPLOAD_BYTES} bytes")
    return await run_in_threadpool(_store, session, caller, bytes(body))


def _store(session: Session, caller: ApiToken, data: bytes) -> LabelResult:
    try:
        upload = decode(data, LabelUpload, max_bytes=MAX_UPLOAD_BYTES)
    except ProtocolError as exc:
        raise HTTPException(422 if exc.reason != "too_large" else 413, str(exc)) from None
    _refuse_booleans(data)
    if caller.role is Role.GATEWAY and caller.site_id is not None and caller.site_id != upload.site:
        raise HTTPException(403, f"This gateway token is for site {caller.site_id}, not {upload.site}")
    counts = store_labels(
        session=session,
        site=upload.site,
        labels=from_devices(upload.devices),
        now=time.time(),
        known_devices_only=True,
    )
    session.commit()
    return LabelResult(
        stored=counts.stored, unchanged=counts.unchanged, unknown_devices=counts.refused_devices
    )


def _refuse_booleans(data: bytes) -> None:
    """422 for ``true``/``false`` where a label has a number: pydantic reads them as 1 and 0."""
    if sniff_encoding(data) is not Encoding.JSON:
        return
    raw = json.loads(data)
    for i, device in enumerate(raw["devices"]):
        for j, label in enumerate(device["labels"]):
            for name in ("seq", "label", "labelled_at"):
                if isinstance(label.get(name), bool):
                    raise HTTPException(422, f"devices.{i}.labels.{j}.{name}: a boolean is not a number")


@router.get("/models/{model_id}/accuracy", response_model=accuracy.ModelAccuracy, responses=errors(403))
def model_accuracy(
    session: SessionDep,
    _: Reader,
    model_id: ModelIdPath,
    version: Annotated[str | None, text_query(64, "Only this version")] = None,
    site: IdQuery = None,
    window_s: Annotated[float, Query(ge=1, le=30 * 86_400, description="Window length, seconds")] = 3600,
    since: Annotated[
        float | None, Query(ge=0, le=1e11, description="Records from this time on (default: a day ago)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000, description="The most recent windows")] = 1000,
) -> accuracy.ModelAccuracy:
    """Accuracy per site, version and window, from labels joined with the records stored whole.

    The controller stores only some records whole (the gateway forwards flagged and sampled
    records, and window summaries for the rest): accuracy is measured on that labelled sample.
    A record counts in the window of its ``ts``. Windows without a labelled record are left out.
    """
    start = since if since is not None else time.time() - 86_400
    found = accuracy.windows(
        session=session,
        model_id=model_id,
        window_s=window_s,
        since=start,
        version=version,
        site=site,
        limit=limit,
    )
    return accuracy.ModelAccuracy(
        model_id=model_id, window_s=window_s, since=start, data=found, count=len(found)
    )
