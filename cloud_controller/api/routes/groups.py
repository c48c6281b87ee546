"""Device groups (label selectors) and deployments of a model version to a group."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlmodel import select

from cloud_controller import audit
from cloud_controller.api.deps import IntId, Operator, Reader, SessionDep
from cloud_controller.api.errors import AUTH, BODY, errors
from cloud_controller.audit import who
from cloud_controller.models import (
    Deployment,
    DeploymentCreate,
    DeploymentPublic,
    DeviceGroup,
    GroupCreate,
    GroupPublic,
    GroupsPublic,
    GroupUpdate,
    ModelVersion,
    Stage,
)
from cloud_controller.rollouts import active_for_group

router = APIRouter(tags=["rollout"], responses=errors(*AUTH))


@router.get("/groups", response_model=GroupsPublic)
def list_groups(session: SessionDep, _: Reader) -> GroupsPublic:
    """List device groups."""
    rows = session.exec(select(DeviceGroup).order_by(DeviceGroup.id)).all()
    return GroupsPublic(data=[GroupPublic.model_validate(g) for g in rows], count=len(rows))


@router.post("/groups", response_model=GroupPublic, status_code=201, responses=errors(*BODY, 409))
def create_group(session: SessionDep, caller: Operator, body: GroupCreate) -> DeviceGroup:
    """Create a device group from a label selector."""
    if session.exec(select(DeviceGroup).where(DeviceGroup.name == body.name)).first() is not None:
        raise HTTPException(409, "Group already exists")
    group = DeviceGroup.model_validate(body)
    session.add(group)
    session.flush()
    audit.record(
        session=session,
        actor=caller,
        action="create",
        resource=f"group/{group.id}",
        after=audit.snapshot(group),
    )
    session.commit()
    session.refresh(group)
    return group


@router.get("/groups/{group_id}", response_model=GroupPublic, responses=errors(404))
def get_group(session: SessionDep, _: Reader, group_id: IntId) -> DeviceGroup:
    """Get a device group."""
    group = session.get(DeviceGroup, group_id)
    if group is None:
        raise HTTPException(404, "Group not found")
    return group


@router.patch("/groups/{group_id}", response_model=GroupPublic, responses=errors(*BODY, 404))
def update_group(session: SessionDep, caller: Operator, group_id: IntId, body: GroupUpdate) -> DeviceGroup:
    """Change a group's selector (its devices' desired state follows)."""
    group = session.get(DeviceGroup, group_id)
    if group is None:
        raise HTTPException(404, "Group not found")
    before = audit.snapshot(group)
    group.sqlmodel_update(body.model_dump(exclude_unset=True, exclude_none=True))
    audit.record(
        session=session,
        actor=caller,
        action="update",
        resource=f"group/{group_id}",
        before=before,
        after=audit.snapshot(group),
    )
    session.commit()
    session.refresh(group)
    return group


@router.get("/deployments", response_model=list[DeploymentPublic])
def list_deployments(session: SessionDep, _: Reader) -> list[Deployment]:
    """List deployments, newest first."""
    return list(session.exec(select(Deployment).order_by(Deployment.id.desc())).all())  # type: ignore[union-attr]


@router.post(
    "/deployments", response_model=DeploymentPublic, status_code=201, responses=errors(*BODY, 404, 409)
)
def create_deployment(session: SessionDep, caller: Operator, body: DeploymentCreate) -> Deployment:
    """Assign a model version to every device of a group (their desired state changes)."""
    if session.get(DeviceGroup, body.group_id) is None:
        raise HTTPException(404, "Group not found")
    version = session.exec(
        select(ModelVersion).where(
            ModelVersion.model_id == body.model_id, ModelVersion.version == body.version
        )
    ).first()
    if version is None:
        raise HTTPException(404, "Model version not found")
    if version.stage is Stage.ARCHIVED:
        raise HTTPException(409, "Model version is archived")
    active = active_for_group(session, body.group_id)
    if active is not None:
        # The deployment would hide the rollout's waves and then be replaced by its outcome.
        raise HTTPException(409, f"Group has an active rollout {active.id} ({active.state}): abort it first")
    deployment = Deployment(**body.model_dump(), created_by=who(caller))
    session.add(deployment)
    session.flush()
    audit.record(
        session=session,
        actor=caller,
        action="deploy",
        resource=f"deployment/{deployment.id}",
        after=audit.snapshot(deployment),
    )
    session.commit()
    session.refresh(deployment)
    return deployment
