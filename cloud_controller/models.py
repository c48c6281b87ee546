"""Tables and API models, in the FastAPI template's family: Base / Create / Update / table / Public."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any

from pydantic import StringConstraints, WithJsonSchema
from sqlalchemy import JSON, BigInteger, Column, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet_protocol.ingest import WindowSummary
from fleet_protocol.messages import ModelReason
from fleet_protocol.ota import OtaStatus


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


# -- what the API accepts --------------------------------------------------------------
# Every string the API takes is constrained here, in the published schema, so that nothing the
# schema allows is refused later and nothing it refuses reaches a database (PostgreSQL's text
# cannot hold a NUL byte).

#: Site, device and gateway ids: the rule of `fleet_protocol.topics.validate_id` (they are MQTT
#: topic levels), written as a pattern so that the OpenAPI schema says it.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
#: Free text: no control characters (NUL included).
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
#: Largest integer id or offset accepted: what a JSON number (a double) carries exactly. FastAPI
#: publishes bounds as doubles, and a larger bound would admit, in the schema, integers it refuses.
MAX_ID = 2**53 - 1

ResourceId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=ID_PATTERN)]
Name = Annotated[str, StringConstraints(max_length=200, pattern=TEXT_PATTERN)]
HardwareProfile = Annotated[str, StringConstraints(max_length=64, pattern=TEXT_PATTERN)]
#: As long as `fleet_protocol.ModelAssignment` allows, since deployments become one.
ModelId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=TEXT_PATTERN)]
Version = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TEXT_PATTERN)]
LabelValue = Annotated[str, StringConstraints(max_length=200, pattern=TEXT_PATTERN)]
MAX_LABELS = 64
#: Labels (and selectors) ``{key: value}``: keys follow the id rule. The schema is spelt out because
#: pydantic's for a constrained key admits any key that misses the pattern.
Labels = Annotated[
    dict[ResourceId, LabelValue],
    Field(max_length=MAX_LABELS),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"minLength": 1, "maxLength": 64, "pattern": ID_PATTERN},
            "additionalProperties": {"type": "string", "maxLength": 200, "pattern": TEXT_PATTERN},
            "maxProperties": MAX_LABELS,
        }
    ),
]


# -- sites and gateways ---------------------------------------------------------------


class SiteBase(SQLModel):
    name: Name = ""


class SiteCreate(SiteBase):
    id: ResourceId


class SiteUpdate(SQLModel):
    name: Name | None = None


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
    name: Name = ""


class GatewayCreate(GatewayBase):
    id: ResourceId
    site_id: ResourceId


class GatewayUpdate(SQLModel):
    name: Name | None = None


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
    hardware_profile: HardwareProfile | None = None
    labels: Labels = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class DeviceCreate(DeviceBase):
    id: ResourceId
    site_id: ResourceId


class DeviceUpdate(SQLModel):
    hardware_profile: HardwareProfile | None = None
    labels: Labels | None = None


class Device(DeviceBase, table=True):
    id: str = Field(primary_key=True)
    site_id: str = Field(foreign_key="site.id", index=True)
    online: bool = False
    health: str | None = None
    reason: str | None = None
    model_id: str | None = None
    model_version: str | None = None
    runtime: str | None = None
    #: A `ModelReason` value, stored as text: a new reason in a later protocol version needs no
    #: migration of an enum type.
    model_reason: str | None = None
    #: The last `OtaStatus` the device reported (JSON), and two of its fields as columns: what
    #: /metrics groups by, without reading JSON on either store.
    ota: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    ota_state: str | None = None
    ota_rollout_id: str | None = None
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
    model_reason: ModelReason | None = Field(description="Why the device does not run its desired model")
    ota: OtaStatus | None = Field(default=None, description="The last model update the device reported")
    last_seq: int
    last_seen: float | None


class DevicesPublic(SQLModel):
    data: list[DevicePublic]
    count: int


# -- device groups and deployments ----------------------------------------------------------


class GroupBase(SQLModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TEXT_PATTERN)]
    selector: Labels = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False),
        description="label -> value; {} selects all",
    )


class GroupCreate(GroupBase):
    pass


class GroupUpdate(SQLModel):
    selector: Labels | None = None


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
    group_id: int = Field(ge=1, le=MAX_ID)
    model_id: ModelId
    version: Version


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

    __table_args__ = (Index("ix_event_rollout_id_kind", "rollout_id", "kind"),)
    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    device_id: str = Field(index=True)
    ts: float
    kind: str
    severity: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: The rollout an ``ota.*`` event's `OtaStatus` names: a rollout's events are read by index.
    rollout_id: str | None = None


class DesiredRevision(SQLModel, table=True):
    """The desired revision last issued to a device, and a digest of the assignment it carried.

    A device applies only revisions above the last it applied, whatever changed its assignment
    (a deployment, a rollout's wave, its abort, a relabelled device): a new digest gets a new,
    higher revision; the same digest keeps its revision, so the ETag holds.
    """

    __tablename__ = "desired_revision"
    device_id: str = Field(primary_key=True, foreign_key="device.id")
    revision: int = Field(sa_type=BigInteger)
    fingerprint: str
    issued_at: float


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
    #: Unix time after which the token is refused (401, "expired"); None: never (tokens issued
    #: before migration 0011, or made with ``--expires-in never``).
    expires_at: float | None = None
    #: Last time the token authenticated an API request, written at most once a minute.
    last_used_at: float | None = None
