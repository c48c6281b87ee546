"""The gateway -> controller ingest contract: what a gateway POSTs, what the controller answers.

``POST /api/v1/ingest`` with an `IngestBatch` body (JSON, optionally ``Content-Encoding: gzip``).
The controller stores each record once, keyed by ``(device_id, seq)``: a batch sent again after
a lost response is answered with the same counts moved to ``duplicates``.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from fleet_protocol.messages import (
    DesiredState,
    DeviceEvent,
    ProtocolModel,
    ReportedState,
    SiteId,
    TelemetryRecord,
)

MAX_INGEST_RECORDS = 5000


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
    histograms: list[list[int]] | None = None


class IngestBatch(ProtocolModel):
    """One upload from a site gateway. ``batch_id`` is unique per gateway (for logs and retries)."""

    site: SiteId
    gateway_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    batch_id: str = Field(min_length=1, max_length=128)
    sent_at: float = Field(default_factory=time.time)
    records: list[TelemetryRecord] = Field(default_factory=list, max_length=MAX_INGEST_RECORDS)
    devices: list[ReportedState] = Field(default_factory=list, max_length=MAX_INGEST_RECORDS)
    drift: list[DriftSummary] = Field(default_factory=list, max_length=1000)
    events: list[DeviceEvent] = Field(default_factory=list, max_length=MAX_INGEST_RECORDS)


class IngestResult(BaseModel):
    """The controller's answer: how many records were new, how many it already had."""

    batch_id: str
    accepted: int = Field(ge=0)
    duplicates: int = Field(ge=0)
    devices_updated: int = Field(ge=0)
    drift_stored: int = Field(ge=0)
    events_stored: int = Field(default=0, ge=0)


class SiteDesiredStates(ProtocolModel):
    """``GET /api/v1/sites/{site}/desired``: every device's desired state; the ETag covers it all."""

    site: SiteId
    states: list[DesiredState]
