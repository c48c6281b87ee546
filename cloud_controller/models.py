"""Tables and API models, in the FastAPI template's family: Base / Create / Update / table / Public."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet_protocol.ingest import WindowSummary
from fleet_protocol.messages import DeviceId, SiteId


def _now() -> float:
    return time.time()


#: Every integer column is 64-bit, as the protocol's and the API's integers are (PostgreSQL's
#: INTEGER is 32-bit). An autoincrement id is BIGSERIAL there; on SQLite only ``INTEGER PRIMARY
#: KEY`` autoincrements, and it is 64-bit already.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Role(StrEnum):
    VIEWER = "viewer"  # reads
    OPERATOR = "operator"  # changes the fleet and rolls out
    GATEWAY = "gateway"  # ingests, reads its site's desired state
    DEVICE = "device"  # nothing else yet


# -- sites and gateways ---------------------------------------------------------------


class SiteBase(SQLModel):
    name: str = Field(default="", max_length=200)


class SiteCreate(SiteBase):
    id: SiteId


class SiteUpdate(SQLModel):
    name: str | None = Field(default=None, max_length=200)


class Site(SiteBase, table=True):
    id: str = Field(primary_key=True)
    created_at: float = Field(default_factory=_now)


class SitePublic(SiteBase):
    id: str
    created_at: float


class SitesPublic(SQLModel):
    data: list[SitePublic]
    count: int


# -- gateways --------------------------------------------------------------------------------


class GatewayBase(SQLModel):
    name: str = Field(default="", max_length=200)


class GatewayCreate(GatewayBase):
    id: SiteId  # same id rules as a site
    site_id: SiteId


class GatewayUpdate(SQLModel):
    name: str | None = Field(default=None, max_length=200)


class Gateway(GatewayBase, table=True):
    id: str = Field(primary_key=True)
    site_id: str = Field(foreign_key="site.id", index=True)
    last_seen: float | None = None
    last_batch_id: str | None = None
    records_ingested: int = Field(default=0, sa_type=BigInteger)
    created_at: float = Field(default_factory=_now)


class GatewayPublic(GatewayBase):
    id: str
    site_id: str
    last_seen: float | None
    last_batch_id: str | None
    records_ingested: int


class GatewaysPublic(SQLModel):
    data: list[GatewayPublic]
    count: int


# -- devices ---------------------------------------------------------------------------


class DeviceBase(SQLModel):
    hardware_profile: str | None = Field(default=None, max_length=64)
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class DeviceCreate(DeviceBase):
    id: DeviceId
    site_id: SiteId


class DeviceUpdate(SQLModel):
    hardware_profile: str | None = Field(default=None, max_length=64)
    labels: dict[str, str] | None = None


class Device(DeviceBase, table=True):
    id: str = Field(primary_key=True)
    site_id: str = Field(foreign_key="site.id", index=True)
    online: bool = False
    health: str | None = None
    reason: str | None = None
    model_id: str | None = None
    model_version: str | None = None
    runtime: str | None = None
    last_seq: int = Field(default=0, sa_type=BigInteger)
    last_seen: float | None = None
    created_at: float = Field(default_factory=_now)


class DevicePublic(DeviceBase):
    id: str
    site_id: str
    online: bool
    health: str | None
    reason: str | None
    model_id: str | None
    model_version: str | None
    runtime: str | None
    last_seq: int
    last_seen: float | None


class DevicesPublic(SQLModel):
    data: list[DevicePublic]
    count: int


# -- device groups and deployments ----------------------------------------------------------


class GroupBase(SQLModel):
    name: str = Field(max_length=64, min_length=1)
    selector: dict[str, str] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False),
        description="label -> value; {} selects all",
    )


class GroupCreate(GroupBase):
    pass


class GroupUpdate(SQLModel):
    selector: dict[str, str] | None = None


class DeviceGroup(GroupBase, table=True):
    __tablename__ = "device_group"
    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    created_at: float = Field(default_factory=_now)


class GroupPublic(GroupBase):
    id: int


class GroupsPublic(SQLModel):
    data: list[GroupPublic]
    count: int


class DeploymentCreate(SQLModel):
    group_id: int = Field(ge=1, le=2**62)
    model_id: str
    version: str


class Deployment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    group_id: int = Field(foreign_key="device_group.id", index=True, sa_type=BigInteger)
    model_id: str
    version: str
    created_by: str
    created_at: float = Field(default_factory=_now)


class DeploymentPublic(DeploymentCreate):
    id: int
    created_by: str
    created_at: float


# -- model registry --------------------------------------------------------------------------


class Stage(StrEnum):
    CANDIDATE = "candidate"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    model_id: str = Field(index=True)
    version: str
    stage: Stage = Stage.CANDIDATE
    parent: str | None = None
    training_data_sha256: str | None = None
    compiler_version: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: The `fleet_protocol.DriftReference` its bundles carry, if they carry one.
    drift_reference: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: float = Field(default_factory=_now)


class ModelVersionPublic(SQLModel):
    id: int
    model_id: str
    version: str
    stage: Stage
    parent: str | None
    training_data_sha256: str | None
    compiler_version: str | None
    metrics: dict[str, Any]
    drift_reference: dict[str, Any] | None
    created_at: float


class ModelVersionUpdate(SQLModel):
    stage: Stage


class Bundle(SQLModel, table=True):
    """A verified bundle archive, stored on disk under its sha256."""

    sha256: str = Field(primary_key=True)
    manifest_sha256: str = Field(index=True)
    model_version_id: int = Field(foreign_key="model_version.id", index=True, sa_type=BigInteger)
    runtime: str
    size: int = Field(sa_type=BigInteger)
    created_at: float = Field(default_factory=_now)


class BundlePublic(SQLModel):
    sha256: str
    manifest_sha256: str
    model_version_id: int
    runtime: str
    size: int


# -- telemetry, drift, audit, tokens ----------------------------------------------------


class Telemetry(SQLModel, table=True):
    """One record, stored once per (device_id, seq). ``ts`` is the partition key at scale."""

    __table_args__ = (Index("ix_telemetry_ts", "ts"),)
    device_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    ts: float
    site_id: str
    model_id: str
    model_version: str
    predicted: int | None = Field(default=None, sa_type=BigInteger)
    confidence: float | None = None
    anomaly: bool = False
    record: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    received_at: float = Field(default_factory=_now)


class Drift(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("site_id", "model_id", "model_version", "window_start"),)
    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    site_id: str
    model_id: str = Field(index=True)
    model_version: str
    window_start: float
    window_end: float
    count: int = Field(sa_type=BigInteger)
    summary: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    score: float | None = None
    #: How ``score`` was computed: "psi" (against the bundle's reference) or "mean_shift".
    score_method: str | None = None


class Summary(SQLModel, table=True):
    """One device's statistics over a window, stored once per (device_id, window_start, first_seq)."""

    __tablename__ = "window_summary"
    __table_args__ = (Index("ix_window_summary_window_start", "window_start"),)
    device_id: str = Field(primary_key=True)
    window_start: float = Field(primary_key=True)
    first_seq: int = Field(primary_key=True, sa_type=BigInteger)
    window_end: float
    last_seq: int = Field(sa_type=BigInteger)
    site_id: str
    model_id: str
    model_version: str
    count: int = Field(sa_type=BigInteger)
    anomalies: int = Field(default=0, sa_type=BigInteger)
    low_confidence: int = Field(default=0, sa_type=BigInteger)
    forwarded: int = Field(default=0, sa_type=BigInteger)
    summary: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    received_at: float = Field(default_factory=_now)


class SummaryPublic(WindowSummary):
    """The summary as its gateway sent it, with where and when it arrived."""

    site_id: str
    received_at: float


class SummariesPublic(SQLModel):
    data: list[SummaryPublic]
    count: int


class Event(SQLModel, table=True):
    """A device event (OTA progress, errors, rejections) relayed by its gateway."""

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    device_id: str = Field(index=True)
    ts: float
    kind: str
    severity: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_log"
    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    at: float = Field(default_factory=_now, index=True)
    actor: str
    action: str
    resource: str
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"
    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    name: str
    role: Role
    site_id: str | None = Field(default=None, description="A gateway token is bound to one site")
    token_sha256: str = Field(unique=True, index=True)
    created_at: float = Field(default_factory=_now)
    revoked: bool = False
