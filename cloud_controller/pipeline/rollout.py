"""``rollout``: when the candidate beats production by the job's margin, a rollout in waves with
gates (`cloud_controller.rollouts.create`); otherwise the job ends there and production stays."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from cloud_controller import rollouts
from cloud_controller.exceptions import Conflict, NotFound
from cloud_controller.models import Deployment, DeviceGroup
from cloud_controller.pipeline.base import Skip, StepContext, StepFailed
from cloud_controller.rollout_models import PercentWave, Rollout, RolloutCreate

DEFAULT_WAVES = [PercentWave(percent=10), PercentWave(percent=50), PercentWave(percent=100)]


def _group_running(session: Session, model_id: str, version: str) -> str | None:
    """The group whose latest deployment is ``model_id@version`` (the first made, if several)."""
    for group in session.exec(select(DeviceGroup).order_by(col(DeviceGroup.id))).all():
        latest = session.exec(
            select(Deployment).where(Deployment.group_id == group.id).order_by(col(Deployment.id).desc())
        ).first()
        if latest is not None and (latest.model_id, latest.version) == (model_id, version):
            return group.name
    return None


class RolloutStep:
    name = "rollout"
    #: Steps whose files (in the job directory) this one reads.
    needs: tuple[str, ...] = ()

    def run(self, ctx: StepContext) -> dict[str, Any]:
        evaluation, version = ctx.artifacts["evaluate"], ctx.artifacts["register"]["version"]
        candidate, current = evaluation["candidate_accuracy"], evaluation["production_accuracy"]
        margin = ctx.params.margin
        if current is None:
            raise Skip(
                f"no production version of {ctx.model_id} to compare with: {version} stays a candidate"
            )
        if candidate < current + margin:
            raise Skip(
                f"candidate did not beat production ({candidate:.4f} vs {current:.4f}, margin {margin:g}): "
                f"production {evaluation['production_version']} stays"
            )
        ctx.log(f"candidate beats production: {candidate:.4f} vs {current:.4f} (margin {margin:g})")
        if not ctx.params.rollout:
            raise Skip(f"the job's params say rollout: false: {version} stays a candidate")
        with Session(ctx.engine) as session:
            mine = session.exec(
                select(Rollout).where(
                    Rollout.model_id == ctx.model_id,
                    Rollout.version == version,
                    Rollout.created_by == ctx.actor,
                )
            ).first()
            if mine is None:
                group = ctx.params.group or _group_running(
                    session, ctx.model_id, evaluation["production_version"]
                )
                if group is None:
                    raise StepFailed(
                        f"no group's deployment is {ctx.model_id}@{evaluation['production_version']}: "
                        "name the group in the job's params"
                    )
                try:
                    body = _body(ctx, version, group)
                except ValidationError as exc:
                    raise StepFailed(f"the job's rollout settings are refused: {exc}") from None
                try:
                    mine = rollouts.create(session=session, body=body, actor=ctx.actor)
                except (NotFound, Conflict) as exc:
                    raise StepFailed(f"the rollout was refused: {exc}") from None
            ctx.log(f"rollout {mine.id} of {ctx.model_id}@{version} to group {mine.group_name} started")
            return {"rollout_id": mine.id, "group": mine.group_name, "waves": mine.waves}

    def ready(self, ctx: StepContext) -> bool:
        return self.name in ctx.artifacts


def _body(ctx: StepContext, version: str, group: str) -> RolloutCreate:
    gates = ctx.params.gates.model_dump() if ctx.params.gates else {}
    return RolloutCreate.model_validate(
        {
            "model_id": ctx.model_id,
            "version": version,
            "group": group,
            "waves": [w.model_dump() for w in ctx.params.waves or DEFAULT_WAVES],
            "soak_s": ctx.params.soak_s,
            "shadow_s": ctx.params.shadow_s,
            "gates": gates,
        }
    )
