"""The gateway -> controller ingest contract: what a gateway POSTs, what the controller answers.

``POST /api/v1/ingest`` with an `IngestBatch` body (JSON, optionally ``Content-Encoding: gzip``).
The controller stores each record once, keyed by ``(device_id, seq)``: a batch sent again after
a lost response is answered with the same counts moved to ``duplicates``.

Schema version 2 adds ``summaries``: per-device window statistics, which a gateway sends in
place of the routine records it does not forward whole. Version 3 adds each summary's
``seq_ranges``: which records it counts. Version 4 adds ``labels``: delayed ground truth the site's
labelling systems published (`fleet_protocol.labels`). Versions 1 to 3 are still accepted.
"""

from __future__ import annotations

import time
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet_protocol.labels import DeviceLabels
from fleet_protocol.messages import (
    INT64_MAX,
    DesiredState,
    DeviceEvent,
    DeviceId,
    ProtocolModel,
    ReportedState,
    SiteId,
    TelemetryRecord,
)

MAX_INGEST_RECORDS = 5000
#: Runs of seqs one summary piece may list; a piece with more gaps is closed early by the gateway.
MAX_SEQ_RANGES = 256

Seq = Annotated[int, Field(ge=1, le=INT64_MAX)]


class DriftSummary(BaseModel):
    """Per-window, per-feature statistics a drift test needs, computed at the site."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model_id: str
    model_version: str
    window_start: float
    window_end: float
    count: int = Field(ge=0, le=2**63 - 1)
    feature_names: list[str]
    mean: list[float]
    std: list[float]
    #: Histogram counts per feature over the bins the model bundle's reference declares.
    histograms: list[list[Annotated[int, Field(ge=0, le=INT64_MAX)]]] | None = Field(
        default=None, max_length=4096
    )


class ClassStats(BaseModel):
    """Records of one predicted class within a window."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    predicted: int = Field(ge=0, le=2**31)
    count: int = Field(ge=1, le=INT64_MAX)
    mean_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    #: Per-feature mean of this class's inputs, when the gateway is configured to send it.
    mean: list[float] | None = Field(default=None, max_length=4096)


class WindowSummary(BaseModel):
    """Statistics of one device's records over a time window, computed at the site.

    Windows are aligned on the records' own timestamps. A summary covers every record of
    the window the gateway had when it closed the window, flagged ones included; records
    that arrive after that (a device back from a long outage) make a further piece of the
    same window. ``first_seq`` tells pieces apart: every record is in exactly one piece.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device_id: DeviceId
    model_id: str = Field(max_length=128)
    model_version: str = Field(max_length=64)
    window_start: float
    window_end: float
    first_seq: int = Field(ge=1, le=INT64_MAX)
    last_seq: int = Field(ge=1, le=INT64_MAX)
    count: int = Field(ge=1, le=INT64_MAX)
    anomalies: int = Field(default=0, ge=0, le=INT64_MAX)
    low_confidence: int = Field(default=0, ge=0, le=INT64_MAX)
    #: Records of the window sent whole (flagged, sampled or past the deadband).
    forwarded: int = Field(default=0, ge=0, le=INT64_MAX)
    feature_names: list[str] | None = Field(default=None, max_length=4096)
    min: list[float] = Field(default_factory=list, max_length=4096)
    max: list[float] = Field(default_factory=list, max_length=4096)
    mean: list[float] = Field(default_factory=list, max_length=4096)
    std: list[float] = Field(default_factory=list, max_length=4096)
    classes: list[ClassStats] = Field(default_factory=list, max_length=1024)
    #: The seqs the piece counts, as inclusive ``[first, last]`` runs in arrival order (schema
    #: version 3): which records a summary covers, not only how many, so that one record lost
    #: and another counted twice cannot pass for a right count.
    seq_ranges: list[tuple[Seq, Seq]] | None = Field(default=None, max_length=MAX_SEQ_RANGES)

    @model_validator(mode="after")
    def _consistent(self) -> WindowSummary:
        if self.window_end < self.window_start:
            raise ValueError("window_end is before window_start")
        if self.last_seq < self.first_seq:
            raise ValueError("last_seq is below first_seq")
        if self.seq_ranges is not None:
            covered = 0
            for low, high in self.seq_ranges:
                if not self.first_seq <= low <= high <= self.last_seq:
                    raise ValueError(f"seq range [{low}, {high}] is outside [first_seq, last_seq]")
                covered += high - low + 1
            if covered != self.count:
                raise ValueError(f"seq_ranges cover {covered} seqs, count is {self.count}")
        lengths = {len(self.min), len(self.max), len(self.mean), len(self.std)}
        if len(lengths) != 1:
            raise ValueError("min, max, mean and std must have one value per feature")
        return self


class IngestBatch(ProtocolModel):
    """One upload from a site gateway. ``batch_id`` is unique per gateway (for logs and retries)."""

    SUPPORTED_VERSIONS: ClassVar[frozenset[int]] = frozenset({1, 2, 3, 4})
    CURRENT_VERSION: ClassVar[int] = 4

    schema_version: int = Field(default=4, strict=True, description="Version of this payload's schema")

    site: SiteId
    gateway_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    batch_id: str = Field(min_length=1, max_length=128)
    sent_at: float = Field(default_factory=time.time)
    records: list[TelemetryRecord] = Field(default_factory=list, max_length=MAX_INGEST_RECORDS)
    devices: list[ReportedState] = Field(default_factory=list, max_length=MAX_INGEST_RECORDS)
    drift: list[DriftSummary] = Field(default_factory=list, max_length=1000)
    events: list[DeviceEvent] = Field(default_factory=list, max_length=MAX_INGEST_RECORDS)
    summaries: list[WindowSummary] = Field(default_factory=list, max_length=MAX_INGEST_RECORDS)
    #: Labels per device (schema version 4); at most `MAX_INGEST_RECORDS` labels in all.
    labels: list[DeviceLabels] = Field(default_factory=list, max_length=MAX_INGEST_RECORDS)

    @model_validator(mode="after")
    def _summaries_need_v2(self) -> IngestBatch:
        if self.schema_version < 2 and self.summaries:
            raise ValueError("summaries need schema_version 2")
        if self.schema_version < 3 and any(s.seq_ranges is not None for s in self.summaries):
            raise ValueError("summaries with seq_ranges need schema_version 3")
        if self.schema_version < 4 and self.labels:
            raise ValueError("labels need schema_version 4")
        if sum(len(d.labels) for d in self.labels) > MAX_INGEST_RECORDS:
            raise ValueError(f"more than {MAX_INGEST_RECORDS} labels in one batch")
        return self


class IngestResult(BaseModel):
    """The controller's answer: how many records were new, how many it already had."""

    batch_id: str
    accepted: int = Field(ge=0)
    duplicates: int = Field(ge=0)
    devices_updated: int = Field(ge=0)
    drift_stored: int = Field(ge=0)
    events_stored: int = Field(default=0, ge=0)
    summaries_stored: int = Field(default=0, ge=0)
    labels_stored: int = Field(default=0, ge=0)


class SiteDesiredStates(ProtocolModel):
    """``GET /api/v1/sites/{site}/desired``: every device's desired state; the ETag covers it all."""

    site: SiteId
    states: list[DesiredState]
