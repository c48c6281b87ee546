"""Pydantic models of every MQTT payload, each carrying its schema version.

Models forbid unknown fields and non-finite floats: a field added to the contract
is a new schema version, and NaN never reaches a database.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from fleet_protocol.ota import INT64_MAX, ModelReason, OtaStatus, RolloutDirective
from fleet_protocol.topics import validate_id

#: What `validate_id` enforces, published in the JSON Schema too (clients validate before sending).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
SiteId = Annotated[
    str,
    AfterValidator(lambda v: validate_id(v, "site")),
    WithJsonSchema({"type": "string", "pattern": ID_PATTERN, "maxLength": 64}),
]
DeviceId = Annotated[
    str,
    AfterValidator(lambda v: validate_id(v, "device")),
    WithJsonSchema({"type": "string", "pattern": ID_PATTERN, "maxLength": 64}),
]

MAX_RECORDS_PER_BATCH = 1000


class Encoding(StrEnum):
    """Wire encodings. JSON is the default; msgpack is the compact option."""

    JSON = "json"
    MSGPACK = "msgpack"


class ProtocolModel(BaseModel):
    """Base of every payload: strict, versioned."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    #: Versions of this payload this build can read. The codec refuses others
    #: before validation, with `UnknownSchemaVersion`.
    SUPPORTED_VERSIONS: ClassVar[frozenset[int]] = frozenset({1})
    CURRENT_VERSION: ClassVar[int] = 1

    # Strict: true or 1.0 is not a version, on the fast JSON path as on the slow one.
    schema_version: int = Field(default=1, strict=True, description="Version of this payload's schema")


class FeatureSummary(BaseModel):
    """Per-channel statistics of an input that is too large to send whole."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mean: list[float]
    min: list[float]
    max: list[float]


class TelemetryRecord(ProtocolModel):
    """One inference on one device. ``(device_id, seq)`` identifies it everywhere."""

    device_id: DeviceId
    seq: int = Field(ge=1, le=INT64_MAX, description="Per-device sequence number; persisted, only grows")
    ts: float = Field(description="When the input was read, Unix seconds")
    model_id: str = Field(max_length=128)
    model_version: str = Field(max_length=64)
    outputs: list[float] = Field(max_length=4096, description="Raw model outputs")
    predicted: int | None = Field(default=None, ge=0, le=2**31, description="Arg-max class, for classifiers")
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    anomaly: bool = Field(default=False, description="Flagged by the device: always sent up whole")
    low_confidence: bool = False
    features: list[float] | None = Field(default=None, max_length=4096)
    feature_summary: FeatureSummary | None = None
    label: int | None = Field(default=None, ge=-(2**31), le=2**31, description="Ground truth, when known")


class TelemetryBatch(ProtocolModel):
    """What one telemetry publish carries: records of one device, in ``seq`` order."""

    device_id: DeviceId
    site: SiteId
    sent_at: float = Field(default_factory=time.time)
    records: list[TelemetryRecord] = Field(min_length=1, max_length=MAX_RECORDS_PER_BATCH)

    @model_validator(mode="after")
    def _records_belong_to_device(self) -> TelemetryBatch:
        for index, record in enumerate(self.records):
            if record.device_id != self.device_id:
                raise ValueError(
                    f"records[{index}] has device_id {record.device_id!r}, batch is from {self.device_id!r}"
                )
        return self


class Health(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"  # running, but something needs attention (outbox evicting, ...)
    FAILED = "failed"  # cannot infer: no valid model
    UNKNOWN = "unknown"  # set by the Last Will: the device went away


class ReportedState(ProtocolModel):
    """Retained on ``fleet/{site}/{device}/state``; the Last Will publishes ``online=False``.

    Version 2 adds ``model_reason``; version 1 states are still read.
    """

    SUPPORTED_VERSIONS: ClassVar[frozenset[int]] = frozenset({1, 2})
    CURRENT_VERSION: ClassVar[int] = 2

    schema_version: int = Field(default=2, strict=True, description="Version of this payload's schema")

    device_id: DeviceId
    site: SiteId
    online: bool
    ts: float = Field(default_factory=time.time)
    health: Health = Health.UNKNOWN
    reason: str | None = Field(default=None, max_length=1024)
    agent_version: str | None = None
    model_id: str | None = None
    model_version: str | None = None
    runtime: str | None = None
    last_seq: int = Field(default=0, ge=0, le=INT64_MAX)
    outbox_depth: int = Field(default=0, ge=0, le=INT64_MAX)
    outbox_bytes: int = Field(default=0, ge=0, le=INT64_MAX)
    evicted: int = Field(default=0, ge=0, le=INT64_MAX, description="Records dropped by the outbox bound")
    desired_revision: int | None = Field(
        default=None, ge=0, le=INT64_MAX, description="Last desired state applied"
    )
    encodings: list[Encoding] = Field(default_factory=lambda: list(Encoding))
    model_reason: ModelReason | None = Field(
        default=None, description="Why the device does not run its desired model (schema version 2)"
    )
    ota: OtaStatus | None = Field(default=None, description="The last model update (schema version 2)")

    @model_validator(mode="after")
    def _reason_needs_v2(self) -> ReportedState:
        if self.schema_version < 2 and (self.model_reason is not None or self.ota is not None):
            raise ValueError("model_reason and ota need schema_version 2")
        return self


class ModelAssignment(BaseModel):
    """Which model a device should run, and where its bundle is."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(max_length=128)
    version: str = Field(max_length=64)
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bundle_url: str | None = None
    #: Where the bundle is when ``bundle_url`` fails (the controller, behind a site cache).
    fallback_url: str | None = None
    #: Set when a rollout sent this assignment (desired state schema version 2).
    rollout: RolloutDirective | None = None


class DesiredState(ProtocolModel):
    """Retained on ``fleet/{site}/{device}/desired``. Higher ``revision`` wins.

    Version 2 adds the model's ``fallback_url`` and ``rollout``; version 1 states are still read.
    """

    SUPPORTED_VERSIONS: ClassVar[frozenset[int]] = frozenset({1, 2})
    CURRENT_VERSION: ClassVar[int] = 2

    schema_version: int = Field(default=2, strict=True, description="Version of this payload's schema")

    device_id: DeviceId
    revision: int = Field(ge=0, le=INT64_MAX)
    issued_at: float = Field(default_factory=time.time)
    model: ModelAssignment | None = None
    telemetry_encoding: Encoding = Encoding.JSON
    config: dict[str, Any] = Field(default_factory=dict, description="Agent setting overrides")

    @model_validator(mode="after")
    def _rollout_needs_v2(self) -> DesiredState:
        model = self.model
        if self.schema_version < 2 and model is not None and (model.rollout or model.fallback_url):
            raise ValueError("model.rollout and model.fallback_url need schema_version 2")
        return self


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class DeviceEvent(ProtocolModel):
    """Published on ``fleet/{site}/{device}/events``: OTA progress, errors, rejections."""

    device_id: DeviceId
    ts: float = Field(default_factory=time.time)
    kind: str = Field(pattern=r"^[a-z][a-z0-9_.]{0,63}$", examples=["ota.verified", "input.rejected"])
    severity: Severity = Severity.INFO
    message: str = Field(max_length=4096)
    data: dict[str, Any] = Field(default_factory=dict)
