"""Rollouts: tables and API models (the template's family: Create / table / Public).

A rollout moves one group of devices to a model version in waves, each a cumulative target
("after wave k, this many of the group's devices run the new version"), judged by gates over
what the devices report (hawkBit's groups with success and error thresholds). Its decisions are
rows, with the numbers that made them.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator
from sqlalchemy import JSON, BigInteger, Column, Index, text
from sqlmodel import Field, SQLModel

from cloud_controller.models import MAX_ID, TEXT_PATTERN, BigId, ModelId, Version

#: The rollout id pattern: "r-" and 8 hex digits (a `fleet_protocol.RolloutDirective` id).
ROLLOUT_ID_PATTERN = r"^r-[0-9a-f]{8}$"
MAX_WAVES = 20
GroupName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TEXT_PATTERN)]


def _now() -> float:
    return time.time()


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # by an operator, or by the engine when a wave missed its install deadline
    SUCCEEDED = "succeeded"  # every wave passed: the group's deployment is the new version
    ABORTED = "aborted"  # by an operator: the rollout's devices go back to the previous version
    FAILED = "failed"  # a gate broke: the rollout's devices go back to the previous version


#: Rollouts that still decide what their devices run.
ACTIVE = (RolloutState.RUNNING, RolloutState.PAUSED)
_ACTIVE_SQL = "state IN ('running', 'paused')"


class Action(StrEnum):
    START = "start"
    ADVANCE = "advance"
    HOLD = "hold"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    COMPLETE = "complete"


#: What a device of a rollout is doing, from what it reported ("pending": nothing yet).
DEVICE_STATES = ("pending", "downloading", "verified", "shadow", "promoted", "rolled_back", "refused")


# -- what the API accepts --------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PercentWave(_Strict):
    """A share of the group's devices, in percent."""

    percent: float = Field(gt=0, le=100)


class CountWave(_Strict):
    """A number of the group's devices (all of them when the group is smaller)."""

    count: int = Field(ge=1, le=MAX_ID)


Wave = PercentWave | CountWave


class Gates(_Strict):
    """A wave's success condition (installed) and error conditions (failed, quality)."""

    install_deadline_s: float = Field(
        default=300,
        gt=0,
        le=30 * 86_400,
        description="Installs after this long from the wave's start count as not installed",
    )
    min_installed: float = Field(
        default=0.9, ge=0, le=1, description="Share of the wave's devices on the new version to advance"
    )
    min_agreement: float = Field(
        default=0.0, ge=0, le=1, description="Mean shadow agreement below this fails the rollout"
    )
    max_latency_ratio: float | None = Field(
        default=None, gt=0, le=1000, description="Mean challenger/champion p95 latency above this fails it"
    )
    max_failed: float = Field(
        default=0.2, ge=0, le=1, description="Share of rolled back or refused devices above this fails it"
    )


class RolloutCreate(_Strict):
    model_id: ModelId
    version: Version
    group: GroupName = Field(description="The device group's name")
    waves: list[Wave] = Field(
        min_length=1,
        max_length=MAX_WAVES,
        description="Cumulative targets: after wave k, that many of the group's devices run the version",
    )
    soak_s: float = Field(default=60, ge=0, le=30 * 86_400, description="Seconds a wave holds its gates")
    shadow_s: float = Field(
        default=0, ge=0, le=7 * 86_400, description="Seconds devices run the new model in shadow first"
    )
    gates: Gates = Field(default_factory=Gates)

    @model_validator(mode="after")
    def _targets_do_not_shrink(self) -> RolloutCreate:
        # Only waves of one kind compare before the group is known; a count after a percent that
        # turns out smaller adds no device (targets are made cumulative when each wave starts).
        for index in range(1, len(self.waves)):
            before, wave = self.waves[index - 1], self.waves[index]
            if (
                isinstance(before, PercentWave)
                and isinstance(wave, PercentWave)
                and wave.percent < before.percent
            ):
                raise ValueError(
                    f"waves.{index}.percent: {wave.percent:g} is below the previous wave's "
                    f"{before.percent:g} (targets are cumulative)"
                )
            if isinstance(before, CountWave) and isinstance(wave, CountWave) and wave.count < before.count:
                raise ValueError(
                    f"waves.{index}.count: {wave.count} is below the previous wave's {before.count} "
                    "(targets are cumulative)"
                )
        return self


# -- tables ------------------------------------------------------------------------------


class Rollout(SQLModel, table=True):
    # One active rollout per group, whoever races to create a second: the database refuses it.
    __table_args__ = (
        Index(
            "ux_rollout_active_group",
            "group_id",
            unique=True,
            sqlite_where=text(_ACTIVE_SQL),
            postgresql_where=text(_ACTIVE_SQL),
        ),
    )
    id: str = Field(primary_key=True)
    model_id: str
    version: str
    group_id: int = Field(foreign_key="device_group.id", index=True, sa_type=BigInteger)
    #: Groups cannot be renamed: the name is kept for display and for the API.
    group_name: str
    previous_model_id: str | None = None
    previous_version: str | None = None
    waves: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    soak_s: float
    shadow_s: float
    gates: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    state: str = Field(index=True)
    current_wave: int = Field(default=0, sa_type=BigInteger)
    #: One entry per started wave: {threshold, target, started_at, clock, reached_at}. See `waves.py`.
    progress: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: Bumped by every change: a change is written only if ``step`` is still what it was read as,
    #: so that two engines (or an engine and an operator) never both act on one state.
    step: int = Field(default=0, sa_type=BigInteger)
    created_by: str
    created_at: float = Field(default_factory=_now)
    updated_at: float = Field(default_factory=_now)


class RolloutDecision(SQLModel, table=True):
    __tablename__ = "rollout_decision"
    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    rollout_id: str = Field(foreign_key="rollout.id", index=True)
    at: float
    wave: int = Field(sa_type=BigInteger)
    action: str
    reason: str
    values: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: "rollout-engine", or the operator ("operator:<token name>").
    actor: str


# -- what the API answers ----------------------------------------------------------------


class PreviousModel(BaseModel):
    model_id: str
    version: str


class RolloutPublic(BaseModel):
    id: str
    model_id: str
    version: str
    group: str
    previous: PreviousModel | None = Field(description="What the group ran before (its deployment)")
    waves: list[Wave]
    soak_s: float
    shadow_s: float
    gates: Gates
    state: RolloutState
    current_wave: int
    created_at: float
    updated_at: float


class RolloutsPublic(BaseModel):
    data: list[RolloutPublic]
    count: int


class ByState(BaseModel):
    pending: int = 0
    downloading: int = 0
    verified: int = 0
    shadow: int = 0
    promoted: int = 0
    rolled_back: int = 0
    refused: int = 0


class GateValues(BaseModel):
    """A wave's figures over its devices (cumulative: every device of this wave and the ones before)."""

    installed: float = Field(description="Share on the new version within the install deadline")
    agreement: float | None = Field(description="Mean shadow agreement over devices that reported one")
    latency_ratio: float | None = Field(description="Mean of challenger p95 / champion p95 over devices")
    non_finite: int = Field(description="Non-finite outputs of the new model, summed over devices")
    failed: float = Field(description="Share rolled back or refused")


class WaveStatus(BaseModel):
    index: int
    target: int = Field(description="Devices the wave's cumulative target names (at its start, once started)")
    devices: int = Field(description="Devices of the group in this wave or an earlier one")
    by_state: ByState
    started_at: float | None
    gates: GateValues | None = Field(description="None until the wave starts")


class DecisionPublic(BaseModel):
    at: float
    wave: int
    action: Action
    reason: str
    values: dict[str, Any]


class RolloutStatus(RolloutPublic):
    waves: list[WaveStatus]  # type: ignore[assignment]
    decisions: list[DecisionPublic]
