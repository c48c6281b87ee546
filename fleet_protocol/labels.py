"""Delayed ground truth: labels keyed by ``(device_id, seq)``, the pair that names a record everywhere.

A label arrives minutes or days after the record it judges, from a system that is not the device:
a line-side inspection station or an operator app at the site publishes a `LabelBatch` on
``fleet/{site}/{device}/labels`` (QoS 1); a system that talks to the cloud POSTs a `LabelUpload`
to ``/api/v1/labels``. The device joins labels with the inputs it kept (its training buffer); the
gateway relays them upstream in `IngestBatch` (schema version 4); the controller joins them with
the records it stored whole. A label sent twice is stored once: the last one sent wins, so a
correction is a new label for the same seq.
"""

from __future__ import annotations

import time
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet_protocol.messages import INT64_MAX, DeviceId, ProtocolModel, SiteId

#: Labels one message or one upload may carry.
MAX_LABELS = 1000
#: Largest class index a label may name (the same bound as a record's ``predicted``).
MAX_CLASS = 2**31


class Label(BaseModel):
    """The true class of one record of the device the batch names."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Strict: true is not class 1, and 2.0 is not seq 2.
    seq: int = Field(
        ge=1, le=INT64_MAX, strict=True, description="The record's sequence number on its device"
    )
    label: int = Field(ge=0, le=MAX_CLASS, strict=True, description="The true class index")
    labelled_at: float = Field(
        default_factory=time.time, ge=0.0, description="When the ground truth was established, Unix seconds"
    )
    source: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
        description="Who labelled it (an inspection station, an operator app)",
    )


def _unique_seqs(labels: list[Label], where: str) -> None:
    seen: set[int] = set()
    for index, item in enumerate(labels):
        if item.seq in seen:
            raise ValueError(f"{where}[{index}] labels seq {item.seq} a second time")
        seen.add(item.seq)


class DeviceLabels(BaseModel):
    """Labels of one device's records, as the gateway relays them and the API takes them."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device_id: DeviceId
    labels: list[Label] = Field(min_length=1, max_length=MAX_LABELS)

    @model_validator(mode="after")
    def _one_label_per_seq(self) -> DeviceLabels:
        _unique_seqs(self.labels, "labels")
        return self


class LabelBatch(ProtocolModel):
    """Published on ``fleet/{site}/{device}/labels`` (QoS 1, not retained) by a labelling system."""

    device_id: DeviceId
    site: SiteId
    sent_at: float = Field(default_factory=time.time)
    labels: list[Label] = Field(min_length=1, max_length=MAX_LABELS)

    @model_validator(mode="after")
    def _one_label_per_seq(self) -> LabelBatch:
        _unique_seqs(self.labels, "labels")
        return self


class LabelUpload(ProtocolModel):
    """``POST /api/v1/labels``: labels for devices of one site, from a system that talks to the cloud."""

    SUPPORTED_VERSIONS: ClassVar[frozenset[int]] = frozenset({1})
    CURRENT_VERSION: ClassVar[int] = 1

    site: SiteId
    devices: list[DeviceLabels] = Field(min_length=1, max_length=MAX_LABELS)

    @model_validator(mode="after")
    def _bounded(self) -> LabelUpload:
        total = sum(len(d.labels) for d in self.devices)
        if total > MAX_LABELS:
            raise ValueError(f"{total} labels in one upload; at most {MAX_LABELS}")
        ids = [d.device_id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError("a device is listed twice: put all of its labels in one entry")
        return self


class LabelResult(BaseModel):
    """The controller's answer to a label upload."""

    stored: int = Field(ge=0, description="Labels stored (new, or replacing an earlier label)")
    unchanged: int = Field(ge=0, description="Labels the controller already had, same class")
    unknown_devices: list[str] = Field(default_factory=list, description="Devices of another site or none")
