"""Over-the-air model updates: what a rollout asks of a device, and what the device reports back.

Down, in the desired state: a `ModelAssignment` names the bundle (by its manifest's sha256) and,
when a rollout sent it, a `RolloutDirective`: how long to run the new model in shadow beside the
current one, and the gates it must pass on the device. Up, in the reported state and in each
``ota.*`` event's ``data``: an `OtaStatus`, with `ShadowStats` once the shadow period ran.

The device's update is a state machine (`OtaState`) written to its disk before each transition,
so that a restart resumes or undoes it; its failures end in a `ModelReason` from the closed list.
"""

from __future__ import annotations

import time
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ModelReason(StrEnum):
    """Why a device does not run the model its desired state names: a closed list.

    Free text goes in ``ReportedState.reason``; this code is what fleets, rollouts and the
    simulators' invariants act on. Every value but `UPDATE_PENDING` is final for the
    desired revision it answers: the device stays on the model it runs until a new one comes.
    """

    #: The update is under way (download, verification, shadow): not an answer yet.
    UPDATE_PENDING = "update_pending"
    #: This agent cannot install models over the air (an older agent).
    OTA_UNSUPPORTED = "ota_unsupported"
    #: The bundle could not be fetched from the gateway or the controller.
    DOWNLOAD_FAILED = "download_failed"
    #: The manifest is not the one the desired state names (its sha256 differs).
    MANIFEST_MISMATCH = "manifest_mismatch"
    #: The manifest's signature does not verify with any trusted key.
    SIGNATURE_INVALID = "signature_invalid"
    #: A file of the bundle does not match the digest its manifest gives.
    DIGEST_MISMATCH = "digest_mismatch"
    #: The bundle needs a runtime this device does not have.
    RUNTIME_UNSUPPORTED = "runtime_unsupported"
    #: The runtime could not load the model.
    LOAD_FAILED = "load_failed"
    #: A smoke inference, or a live batch of the new model after the switch, gave non-finite
    #: outputs or outputs of the wrong shape.
    SMOKE_TEST_FAILED = "smoke_test_failed"
    #: The runtime raised while running the new model.
    RUNTIME_ERROR = "runtime_error"
    #: The new model broke a gate on the device during its shadow period.
    SHADOW_GATE_FAILED = "shadow_gate_failed"
    #: No space left for the new bundle beside the active one.
    DISK_FULL = "disk_full"
    #: A manifest the device installed (signed) withdraws this version: the device will not install it.
    WITHDRAWN = "withdrawn"


#: Integers are signed 64-bit everywhere (SQLite, PostgreSQL).
INT64_MAX = 2**63 - 1

#: Event kinds of an update, in the order a good one goes through them.
OTA_EVENTS = (
    "ota.downloading",
    "ota.verified",
    "ota.shadow",
    "ota.promoted",
    "ota.rolled_back",
    "ota.refused",
    "ota.cancelled",  # a newer desired state took over before an outcome
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RolloutDirective(_Strict):
    """What a rollout asks of a device beyond installing the bundle."""

    rollout_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    #: Seconds the new model runs in shadow beside the current one before the switch; 0: none.
    shadow_s: float = Field(default=0.0, ge=0, le=7 * 86_400)
    #: The new model's predictions must agree with the current one's on at least this share.
    min_agreement: float = Field(default=0.0, ge=0, le=1)
    #: The new model's p95 latency may be at most this multiple of the current one's.
    max_latency_ratio: float | None = Field(default=None, gt=0)
    #: At least this many shadow inferences before the gates are judged (fewer: judged on what came).
    min_samples: int = Field(default=20, ge=1, le=1_000_000)


class OtaState(StrEnum):
    """Where a device's update stands (Mender's states, named for what they mean here)."""

    IDLE = "idle"  # running the desired model, or nothing asked
    DOWNLOADING = "downloading"
    VERIFIED = "verified"  # unpacked into the spare slot, signature and digests checked
    SHADOW = "shadow"  # loaded, smoke-tested, running beside the current model
    PROMOTED = "promoted"  # switched: the new model is the one running
    ROLLED_BACK = "rolled_back"  # the new model failed after loading; the previous one runs
    REFUSED = "refused"  # the bundle failed a check before loading; nothing changed


class RunStats(_Strict):
    """One model's figures over a shadow period."""

    mean_confidence: float | None = Field(default=None, ge=0, le=1)
    p95_latency_ms: float | None = Field(default=None, ge=0)
    #: Resident memory of the agent while this model was loaded (the process's, in MB).
    peak_rss_mb: float | None = Field(default=None, ge=0)
    non_finite: int = Field(default=0, ge=0, le=INT64_MAX)


class ShadowStats(_Strict):
    """Champion (the running model) against challenger (the new one), on the same live inputs."""

    samples: int = Field(ge=0, le=INT64_MAX)
    agreement: float | None = Field(default=None, ge=0, le=1)
    seconds: float = Field(ge=0)
    champion: RunStats
    challenger: RunStats


class OtaStatus(_Strict):
    """A device's update towards one model version: in the reported state and every ota.* event."""

    state: OtaState
    model_id: str = Field(max_length=128)
    version: str = Field(max_length=64)
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rollout_id: str | None = Field(default=None, max_length=64)
    #: Set when the update failed: why, from the closed list.
    reason: ModelReason | None = None
    detail: str | None = Field(default=None, max_length=2048)
    shadow: ShadowStats | None = None
    ts: float = Field(default_factory=time.time)
