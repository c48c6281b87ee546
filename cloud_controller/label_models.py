"""Labels, accuracy and alarms: tables and API models (the template's family).

A label is the true class of one record, keyed like the record by ``(device_id, seq)``; it may
arrive before or after the record (or for a record the controller never stores whole). An alarm
policy per model says when a site's data drift (PSI) or accuracy (from labels) raises an alarm;
an alarm is a row, open until its condition clears, one open per (model, site, kind).
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict
from sqlalchemy import BigInteger, Index, text
from sqlmodel import Field, SQLModel

from cloud_controller.models import BigId


def _now() -> float:
    return time.time()


# -- tables ------------------------------------------------------------------------------


class RecordLabel(SQLModel, table=True):
    """The true class of a record; the last ``labelled_at`` wins (a correction is a newer label)."""

    __tablename__ = "label"
    __table_args__ = (Index("ix_label_site_id_received_at", "site_id", "received_at"),)
    device_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    label: int = Field(sa_type=BigInteger)
    labelled_at: float
    received_at: float = Field(default_factory=_now)
    #: Who labelled it; "inline" for a label a telemetry record carried itself.
    source: str | None = None
    site_id: str


class AlarmAction(StrEnum):
    AUTO = "auto"  # the alarm starts a retraining job (the jobs worker claims it)
    ASK = "ask"  # the alarm waits for an operator to start a job
    OFF = "off"  # the policy raises no alarm


class AlarmKind(StrEnum):
    DATA_DRIFT = "data_drift"
    ACCURACY = "accuracy"


class AlarmPolicy(SQLModel, table=True):
    __tablename__ = "alarm_policy"
    model_id: str = Field(primary_key=True)
    psi_threshold: float | None = None
    accuracy_floor: float | None = None
    min_samples: int = Field(sa_type=BigInteger)
    window_s: float
    action: str
    updated_by: str
    updated_at: float = Field(default_factory=_now)


#: An alarm is open until it has a ``resolved_at``.
_OPEN_SQL = "resolved_at IS NULL"


class Alarm(SQLModel, table=True):
    # One open alarm per (model, site, kind), whichever evaluator races to fire a second.
    __table_args__ = (
        Index(
            "ux_alarm_open",
            "model_id",
            "site_id",
            "kind",
            unique=True,
            sqlite_where=text(_OPEN_SQL),
            postgresql_where=text(_OPEN_SQL),
        ),
        Index("ix_alarm_fired_at", "fired_at"),
    )
    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    model_id: str
    version: str | None = None
    site_id: str
    kind: str
    #: The figure that fired it (PSI, or accuracy) and the policy's threshold at that time.
    value: float
    threshold: float
    samples: int = Field(sa_type=BigInteger)
    #: The policy's action when it fired: the jobs worker starts a job for ``auto`` ones.
    action: str
    fired_at: float
    #: The latest evaluation while open (and the one that resolved it).
    last_value: float
    evaluated_at: float
    resolved_at: float | None = None
    #: The job started for it (by the jobs worker); a string so that any job id fits.
    job_id: str | None = None
    #: Webhook notice of each event: None (not yet sent), "delivered" or "skipped" (too old when
    #: a configured webhook first saw it). Rows from before the webhooks count as delivered.
    fired_notice: str | None = None
    resolved_notice: str | None = None


# -- what the API accepts and answers ---------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _not_a_boolean(value: object) -> object:
    # pydantic reads true as 1; strict mode would also refuse 30.0, which JSON Schema calls an integer.
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


Number = Annotated[float, BeforeValidator(_not_a_boolean)]
Count = Annotated[int, BeforeValidator(_not_a_boolean)]


class AlarmPolicyBody(_Strict):
    """A model's alarm policy. A threshold left null raises no alarm of its kind.

    ``false`` is not a floor of 0: booleans are refused where numbers go.
    """

    psi_threshold: Number | None = Field(
        default=0.2,
        gt=0,
        le=100,
        description="A site's latest PSI (drift score) above this raises a data_drift alarm",
    )
    accuracy_floor: Number | None = Field(
        default=0.8,
        ge=0,
        le=1,
        description="A site's accuracy over the window below this raises an accuracy alarm",
    )
    min_samples: Count = Field(
        default=30,
        ge=1,
        le=1_000_000,
        description="Labelled records the window needs before its accuracy is judged",
    )
    window_s: Number = Field(
        default=3600,
        gt=0,
        le=30 * 86_400,
        description="Seconds of records (by their ts) accuracy is judged over",
    )
    action: AlarmAction = Field(default=AlarmAction.ASK, description="auto: start a retraining job; ask; off")


class AlarmPolicyPublic(AlarmPolicyBody):
    model_id: str
    updated_by: str | None = Field(description="None for the defaults (no policy was set)")
    updated_at: float | None


class AlarmState(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class AlarmPublic(BaseModel):
    id: int
    model_id: str
    version: str | None
    site_id: str
    kind: AlarmKind
    state: AlarmState
    value: float = Field(description="PSI or accuracy when the alarm fired")
    threshold: float
    samples: int = Field(description="Records (PSI) or labelled records (accuracy) behind the value")
    action: AlarmAction
    fired_at: float
    last_value: float = Field(description="The latest evaluation (the one that resolved it, once resolved)")
    evaluated_at: float
    resolved_at: float | None
    job_id: str | None


class AlarmsPublic(BaseModel):
    data: list[AlarmPublic]
    count: int
