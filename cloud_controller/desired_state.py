"""The one place desired state is computed: the newest deployment whose group selects a device.

Rollouts (a later issue) will create deployments in stages; they reuse this computation.
"""

from __future__ import annotations

import hashlib
import json

from sqlmodel import Session, select

from cloud_controller.models import Bundle, Deployment, Device, DeviceGroup, ModelVersion
from fleet_protocol import DesiredState, ModelAssignment


def selects(group: DeviceGroup, device: Device) -> bool:
    return all(device.labels.get(key) == value for key, value in group.selector.items())


def desired_for_devices(*, session: Session, devices: list[Device]) -> list[DesiredState]:
    deployments = session.exec(select(Deployment).order_by(Deployment.id.desc())).all()  # type: ignore[union-attr]
    groups = {g.id: g for g in session.exec(select(DeviceGroup)).all()}
    out = []
    for device in devices:
        chosen = next((d for d in deployments if selects(groups[d.group_id], device)), None)
        assignment = None
        if chosen is not None:
            assignment = _assignment(session, chosen, device)
        out.append(
            DesiredState(
                device_id=device.id,
                revision=chosen.id if chosen is not None and chosen.id is not None else 0,
                # Stable for an unchanged deployment, so the ETag is too.
                issued_at=chosen.created_at if chosen is not None else 0.0,
                model=assignment,
            )
        )
    return out


def _assignment(session: Session, deployment: Deployment, device: Device) -> ModelAssignment | None:
    version = session.exec(
        select(ModelVersion).where(
            ModelVersion.model_id == deployment.model_id, ModelVersion.version == deployment.version
        )
    ).first()
    if version is None:
        return None
    bundles = session.exec(select(Bundle).where(Bundle.model_version_id == version.id)).all()
    if not bundles:
        return None
    # The bundle for the engine the device runs, when the registry has one.
    bundle = next((b for b in bundles if b.runtime == device.runtime), bundles[0])
    return ModelAssignment(
        model_id=version.model_id,
        version=version.version,
        manifest_sha256=bundle.manifest_sha256,
        bundle_url=f"/api/v1/bundles/{bundle.sha256}",
    )


def etag(states: list[DesiredState]) -> str:
    """A strong ETag over the whole answer: unchanged desired state, unchanged tag."""
    body = json.dumps([s.model_dump(mode="json") for s in states], sort_keys=True).encode()
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
