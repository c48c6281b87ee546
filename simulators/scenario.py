"""A fleet scenario, declared in YAML: sites, devices, the gateway's filters, and a timeline of events.

Each event has a time, a kind, and the fields its kind declares (`simulators.events`): a new
kind of event is one module with one handler, and a line of YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_agent.sources.synthetic import regime_probabilities
from fleet_protocol.codec import describe_validation_error

#: The version of the model every device is provisioned with; rollouts bring the others.
FIRST_MODEL_VERSION = "1.0.0"


class SimError(Exception):
    """A scenario cannot run; the message says why. Exit code 2."""

    exit_code = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewayFilters(_Strict):
    """What every site's gateway forwards whole and how it summarises the rest."""

    window_s: float = Field(default=10.0, ge=1, description="Summary window, on record time")
    drift_window_s: float = Field(default=10.0, ge=1)
    sample_rate: float = Field(default=0.0, ge=0, le=1)
    forward_all: bool = False


class Labels(_Strict):
    """Delayed ground truth from a simulated labelling system at each site (`simulators.labeller`)."""

    share: float = Field(default=0.2, ge=0, le=1, description="Share of records labelled, by (device, seq)")
    delay_s: float = Field(default=10.0, ge=0, description="Seconds between a record and its label")


class AlarmPolicy(_Strict):
    """The model's alarm policy, as `PUT /api/v1/models/{id}/alarm-policy` takes it."""

    psi_threshold: float | None = Field(default=0.2, gt=0, description="data_drift above this PSI")
    accuracy_floor: float | None = Field(default=0.8, ge=0, le=1, description="accuracy below this")
    min_samples: int = Field(default=30, ge=1, description="Labelled records an accuracy window needs")
    window_s: float = Field(default=20.0, gt=0, description="Trailing window the accuracy is judged on")
    action: Literal["auto", "ask", "off"] = Field(
        default="ask",
        description="ask: the timeline's `job` events answer the alarms, as an operator would; auto:"
        " the worker starts a retraining job of the whole fleet with the default job settings",
    )


class Learning(_Strict):
    """The learning loop: a jobs worker beside the controller, the model's recipe and alarm policy."""

    alarm_policy: AlarmPolicy = Field(default_factory=AlarmPolicy)
    alarm_tick_s: float = Field(
        default=2.0, gt=0, description="Seconds between the controller's alarm passes"
    )
    expect_alarms: list[tuple[int, Literal["data_drift", "accuracy"]]] = Field(
        default_factory=list, description="[site index, alarm kind] pairs that must fire"
    )
    min_recovered_accuracy: float = Field(
        default=0.85, ge=0, le=1, description="Accuracy each drifted site must reach once its job rolled out"
    )


class DeviceClass(_Strict):
    """A kind of device: how its sensor behaves. Devices of a site are split between classes by share."""

    name: str = Field(default="dev", pattern=r"^[a-z][a-z0-9]{0,15}$", description="Part of each device id")
    share: float = Field(default=1.0, gt=0, description="Relative number of devices of this class")
    rate_hz: float | None = Field(default=None, gt=0, description="Default: the scenario's rate_hz")
    noise: float = Field(default=0.6, gt=0, description="Sensor noise (the model was trained on 0.6)")
    anomaly_rate: float | None = Field(default=None, ge=0, le=1, description="Default: the scenario's")
    period_s: float = Field(default=60.0, gt=0, description="Period of the machine's slow cycle")
    class_mix: dict[int | str, float] | None = Field(
        default=None,
        description="Non-IID devices: how often each normal class (by name or index: idle, load, peak)"
        " is the machine's regime, as relative weights, e.g. {idle: 0.5, load: 0.3, peak: 0.2}; a class"
        " left out never is. Default: uniform. Faults (class 3) still come at anomaly_rate",
    )
    own_process: bool = Field(
        default=False,
        description="Its devices run in an agent process of their own at each site: the other devices'"
        " work (hundreds loading a new model at once) does not stall them",
    )

    @field_validator("class_mix")
    @classmethod
    def _known_classes(cls, value: dict[int | str, float] | None) -> dict[int | str, float] | None:
        regime_probabilities(value)
        return value


class Scenario(_Strict):
    name: str = "fleet"
    sites: int = Field(default=2, ge=1, le=100)
    devices_per_site: int = Field(default=10, ge=1, le=10_000)
    duration_s: float = Field(default=60, gt=0)
    rate_hz: float = Field(default=2.0, gt=0, description="Readings per second per device")
    anomaly_rate: float = Field(default=0.01, ge=0, le=1)
    runtimes: list[Literal["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"]] = Field(
        default_factory=lambda: ["onnx-int8", "openvino-fp32", "onnx-fp32"],
        description="Bundles handed out round-robin across devices",
    )
    device_classes: list[DeviceClass] = Field(default_factory=lambda: [DeviceClass()], min_length=1)
    gateway: GatewayFilters = Field(default_factory=GatewayFilters)
    labels: Labels | None = Field(default=None, description="None: no delayed labels are published")
    learning: Learning | None = Field(
        default=None, description="None: no jobs worker, no recipe, the controller's default alarm policy"
    )
    inline_labels: bool | None = Field(
        default=None,
        description="Records carry the sensor's truth inline; false: truth reaches the cloud only as"
        " delayed labels. Default: false when `labels` are published, true otherwise",
    )
    drain_timeout_s: float = Field(default=90, gt=0)
    tls: bool = Field(
        default=False,
        description="MQTT over mutual TLS: a fleet CA made for the run, a certificate per device, gateway,"
        " labeller and observer, site brokers that take only those, under the gateway's ACL",
    )
    agent_processes_per_site: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Processes a site's devices run in: a fault kills a process and its devices together",
    )
    lag_limit_s: float = Field(
        default=2.0,
        gt=0,
        description="The simulator fell behind when its loop stalls, an event fires, or the sensors"
        " lag their schedule by more than this",
    )
    #: Each: ``{at_s, kind, ...fields of that kind}``; validated by `simulators.events`.
    events: list[Any] = Field(default_factory=list)

    @field_validator("events", mode="before")
    @classmethod
    def _known_events(cls, value: Any) -> Any:
        from simulators.events import parse_event

        if not isinstance(value, list):
            raise ValueError("events must be a list")
        parsed, problems = [], []
        for index, item in enumerate(value):
            try:
                parsed.append(parse_event(item, index))
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return parsed

    @property
    def records_carry_labels(self) -> bool:
        """Whether devices put the sensor's truth into their records (`inline_labels` resolved)."""
        return self.labels is None if self.inline_labels is None else self.inline_labels

    @model_validator(mode="after")
    def _versions_once(self) -> Scenario:
        # Each rollout trains and uploads its own version: the registry would refuse a second one.
        seen = {FIRST_MODEL_VERSION: "the first model"}
        for index, spec in enumerate(self.events):
            version = getattr(spec, "version", None)
            if version is None:
                continue
            if version in seen:
                raise ValueError(f"events.{index}.version: {version} is already {seen[version]}")
            seen[version] = f"events.{index}'s"
        return self


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


def device_class(scenario: Scenario, number: int) -> DeviceClass:
    """The class of a site's device ``number``: classes take consecutive blocks, by share."""
    total = sum(c.share for c in scenario.device_classes)
    position = (number % scenario.devices_per_site + 0.5) / scenario.devices_per_site * total
    for cls in scenario.device_classes:
        if position < cls.share:
            return cls
        position -= cls.share
    return scenario.device_classes[-1]
