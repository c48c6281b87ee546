"""A fleet scenario, declared in YAML: sites, devices, the model, the faults and when."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet_protocol.codec import describe_validation_error


class SimError(Exception):
    """A scenario cannot run; the message says why. Exit code 2."""

    exit_code = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Fault(_Strict):
    at_s: float = Field(ge=0, description="Seconds after the fleet started streaming")
    kind: Literal["broker_restart", "broker_kill"]
    down_s: float = Field(default=2.0, ge=0, description="How long the broker stays down")
    site: int = Field(default=0, ge=0, description="Index of the site whose broker is hit")


class Scenario(_Strict):
    name: str = "fleet"
    sites: int = Field(default=2, ge=1, le=100)
    devices_per_site: int = Field(default=10, ge=1, le=10_000)
    duration_s: float = Field(default=60, gt=0)
    rate_hz: float = Field(default=2.0, gt=0, description="Readings per second per device")
    anomaly_rate: float = Field(default=0.01, ge=0, le=1)
    runtimes: list[Literal["onnx-fp32", "onnx-int8", "openvino-fp32"]] = Field(
        default_factory=lambda: ["onnx-int8", "openvino-fp32", "onnx-fp32"],
        description="Bundles handed out round-robin across devices",
    )
    drain_timeout_s: float = Field(default=60, gt=0)
    faults: list[Fault] = Field(default_factory=list)


def load_scenario(path: str | Path, **overrides: object) -> Scenario:
    """Read a scenario file; ``overrides`` (from the CLI) win over the file."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise SimError(f"cannot read scenario {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SimError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SimError(f"{path} must hold a mapping")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = describe_validation_error(exc, limit=None, separator="\n  - ")
        raise SimError(f"{path} is invalid:\n  - {problems}") from None
