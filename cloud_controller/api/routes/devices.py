"""Devices: registered by operators, kept current by their gateways' reports."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import func
from sqlmodel import select

from cloud_controller import audit
from cloud_controller.api.deps import MAX_ID, IdPath, IdQuery, Operator, Reader, SessionDep, text_query
from cloud_controller.api.errors import AUTH, BODY, errors
from cloud_controller.desired_state import desired_for_devices
from cloud_controller.models import (
    ID_PATTERN,
    TEXT_PATTERN,
    Device,
    DeviceCreate,
    DevicePublic,
    DevicesPublic,
    DeviceUpdate,
    Site,
    SummariesPublic,
    Summary,
    SummaryPublic,
    Telemetry,
)
from fleet_protocol import DesiredState
from fleet_protocol.messages import ModelReason

router = APIRouter(prefix="/devices", tags=["fleet"], responses=errors(*AUTH))

#: ``key=value``: a label key (the id rule) and a value (free text).
LABEL_FILTER = ID_PATTERN.removesuffix("$") + "=" + TEXT_PATTERN.removeprefix("^")


@router.get("", response_model=DevicesPublic)
def list_devices(
    session: SessionDep,
    _: Reader,
    site_id: IdQuery = None,
    online: bool | None = None,
    model_version: Annotated[str | None, text_query(64)] = None,
    model_reason: Annotated[
        ModelReason | None, Query(description="Devices not on their desired model for this reason")
    ] = None,
    label: Annotated[
        list[Annotated[str, Query(max_length=265, pattern=LABEL_FILTER)]] | None,
        Query(description="key=value, repeatable"),
    ] = None,
    skip: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DevicesPublic:
    """List devices, filtered by site, online state, model version, model reason or labels."""
    query = select(Device)
    if site_id is not None:
        query = query.where(Device.site_id == site_id)
    if online is not None:
        query = query.where(Device.online == online)
    if model_version is not None:
        query = query.where(Device.model_version == model_version)
    if model_reason is not None:
        query = query.where(Device.model_reason == model_reason.value)
    rows = session.exec(query.order_by(Device.id)).all()
    wanted = dict(item.split("=", 1) for item in label or [])
    rows = [d for d in rows if all(d.labels.get(k) == v for k, v in wanted.items())]
    return DevicesPublic(
        data=[DevicePublic.model_validate(d) for d in rows[skip : skip + limit]], count=len(rows)
    )


@router.post("", response_model=DevicePublic, status_code=201, responses=errors(*BODY, 404, 409))
def create_device(session: SessionDep, caller: Operator, body: DeviceCreate) -> Device:
    """Register a device."""
    if session.get(Site, body.site_id) is None:
        raise HTTPException(404, "Site not found")
    if session.get(Device, body.id) is not None:
        raise HTTPException(409, "Device already exists")
    device = Device.model_validate(body)
    session.add(device)
    audit.record(
        session=session,
        actor=caller,
        action="create",
        resource=f"device/{device.id}",
        after=audit.snapshot(device),
    )
    session.commit()
    session.refresh(device)
    return device


@router.get("/{device_id}", response_model=DevicePublic, responses=errors(404))
def get_device(session: SessionDep, _: Reader, device_id: IdPath) -> Device:
    """Get a device and its reported state."""
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(404, "Device not found")
    return device


@router.patch("/{device_id}", response_model=DevicePublic, responses=errors(*BODY, 404))
def update_device(session: SessionDep, caller: Operator, device_id: IdPath, body: DeviceUpdate) -> Device:
    """Change a device's labels or hardware profile."""
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(404, "Device not found")
    before = audit.snapshot(device)
    device.sqlmodel_update(body.model_dump(exclude_unset=True, exclude_none=True))
    audit.record(
        session=session,
        actor=caller,
        action="update",
        resource=f"device/{device_id}",
        before=before,
        after=audit.snapshot(device),
    )
    session.commit()
    session.refresh(device)
    return device


@router.get("/{device_id}/desired", response_model=DesiredState, responses=errors(404))
def get_desired(session: SessionDep, _: Reader, device_id: IdPath) -> DesiredState:
    """The desired state the fleet's deployments give this device."""
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(404, "Device not found")
    return desired_for_devices(session=session, devices=[device])[0]


@router.get("/{device_id}/telemetry")
def recent_telemetry(
    session: SessionDep, _: Reader, device_id: IdPath, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[dict[str, object]]:
    """The device's most recent records."""
    rows = session.exec(
        select(Telemetry).where(Telemetry.device_id == device_id).order_by(Telemetry.seq.desc()).limit(limit)  # type: ignore[attr-defined]
    ).all()
    return [r.record for r in rows]


@router.get("/{device_id}/summaries", response_model=SummariesPublic)
def list_summaries(
    session: SessionDep,
    _: Reader,
    device_id: IdPath,
    since: Annotated[
        float | None, Query(allow_inf_nan=False, description="Windows starting at or after, Unix seconds")
    ] = None,
    until: Annotated[
        float | None, Query(allow_inf_nan=False, description="Windows starting before, Unix seconds")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SummariesPublic:
    """The device's window summaries from its gateway, newest window first."""
    conditions = [Summary.device_id == device_id]
    if since is not None:
        conditions.append(Summary.window_start >= since)
    if until is not None:
        conditions.append(Summary.window_start < until)
    rows = session.exec(
        select(Summary)
        .where(*conditions)
        .order_by(Summary.window_start.desc(), Summary.first_seq.desc())  # type: ignore[attr-defined]
        .limit(limit)
    ).all()
    count = session.exec(select(func.count()).select_from(Summary).where(*conditions)).one()
    return SummariesPublic(
        data=[SummaryPublic(**r.summary, site_id=r.site_id, received_at=r.received_at) for r in rows],
        count=count,
    )
