"""Agent settings: a YAML file, overridden by ``EDGEFLEET_AGENT__...`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge_agent.exceptions import ConfigError
from fleet_protocol import Encoding, Runtime, validate_id
from fleet_protocol.codec import describe_validation_error
from fleet_protocol.tls import MqttTls, resolve_tls_paths

ENV_PREFIX = "EDGEFLEET_AGENT__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _SourceSection(_Section):
    #: Put the source's own ground truth (a reading's label) into each record. False keeps it
    #: out: labels then reach the device and the cloud only as delayed labels, as in most fleets.
    inline_labels: bool = True


class ReplaySourceConfig(_SourceSection):
    """Replays a CSV or JSON-lines file, one reading a row."""

    kind: Literal["replay"] = "replay"
    path: Path
    rate_hz: float | None = Field(default=None, gt=0, description="None: as fast as possible")
    loop: bool = False
    ts_field: str = "ts"
    label_field: str = "label"


class SyntheticSourceConfig(_SourceSection):
    """Generates readings like a real sensor: regimes, noise, rare anomalies, drift."""

    kind: Literal["synthetic"] = "synthetic"
    rate_hz: float | None = Field(default=10.0, gt=0, description="None: as fast as possible")
    seed: int = 0
    anomaly_rate: float = Field(default=0.01, ge=0, le=1)
    noise: float = Field(default=0.6, gt=0)
    drift_per_hour: float = Field(default=0.0, ge=0)
    limit: int | None = Field(default=None, ge=1, description="Stop after this many readings")
    class_weights: dict[int | str, float] | None = Field(
        default=None,
        description="How often each normal class (by name or index: idle, load, peak) is the regime,"
        " relative weights; a class left out never is. None: uniform. Faults come at anomaly_rate",
    )

    @field_validator("class_weights")
    @classmethod
    def _known_classes(cls, value: dict[int | str, float] | None) -> dict[int | str, float] | None:
        from edge_agent.sources.synthetic import regime_probabilities  # the sources import this module

        regime_probabilities(value)
        return value


class MqttTopicSourceConfig(_SourceSection):
    """Reads JSON readings that a local sensor process publishes on an MQTT topic."""

    kind: Literal["mqtt"] = "mqtt"
    topic: str
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _backoff_ordered(self) -> Self:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        return self


SourceConfig = Annotated[
    ReplaySourceConfig | SyntheticSourceConfig | MqttTopicSourceConfig, Field(discriminator="kind")
]


class MqttConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    keepalive_s: int = Field(default=30, ge=5)
    #: Records per telemetry publish, and the longest a record waits to fill a batch.
    batch_max_records: int = Field(default=100, ge=1, le=1000)
    batch_max_bytes: int = Field(default=128 * 1024, ge=1024)
    #: Publishes awaiting PUBACK at once: pipelines the link without unbounded memory.
    max_inflight: int = Field(default=8, ge=1, le=64)
    publish_timeout_s: float = Field(default=15.0, gt=0)
    bandwidth_bytes_per_hour: int | None = Field(default=None, ge=1024)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    state_interval_s: float = Field(default=30.0, gt=0)
    encoding: Encoding = Encoding.JSON
    #: MQTT over TLS with this device's certificate; None: plain TCP (a lab; said at start).
    tls: MqttTls | None = None

    @model_validator(mode="after")
    def _backoff_ordered(self) -> Self:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        return self


class OutboxConfig(_Section):
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    #: Records that wait in memory for the writer; when full, inference waits (never drops).
    max_pending: int = Field(default=10_000, ge=10)
    #: FULL survives power loss; NORMAL survives a killed process and is faster.
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"


class TrainingBufferConfig(_Section):
    """Inputs of recent records kept for local training, joined with delayed labels."""

    enabled: bool = True
    max_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, description="Bound of training.sqlite")


class InferenceConfig(_Section):
    micro_batch_max: int = Field(default=256, ge=1, le=4096)
    threads: int = Field(default=1, ge=1, le=64)
    #: "thread" keeps the loop free while a model runs; "inline" avoids the hop for tiny models;
    #: "auto" runs a batch on the loop when the model's last batches say it takes under
    #: ``inline_max_ms``, on the inference thread otherwise (and while that is not known yet).
    executor: Literal["auto", "thread", "inline"] = "auto"
    inline_max_ms: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="auto: the longest a model call may hold the event loop",
    )
    features: Literal["raw", "summary", "none"] = "raw"
    queue_size: int = Field(default=1000, ge=1)


class OtaConfig(_Section):
    """Model updates over the air: where slots live, what the device can run, how it fetches."""

    enabled: bool = Field(default=True, description="False: report desired models, never install them")
    models_dir: Path | None = Field(default=None, description="Model slots; default <data_dir>/models")
    runtimes: list[Runtime] | None = Field(
        default=None, description="Runtimes this device accepts; None: every one installed"
    )
    token: str | None = Field(default=None, description="Bearer token for the controller's fallback URL")
    download_timeout_s: float = Field(default=300.0, gt=0)
    retry_min_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    #: Recent readings kept for the smoke test of a new model.
    recent_inputs: int = Field(default=32, ge=1, le=4096)

    @model_validator(mode="after")
    def _backoff_ordered(self) -> Self:
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must not be below retry_min_s")
        return self


class TrustedKeyConfig(_Section):
    """A public key bundles may be signed by; a plain path in ``trusted_keys`` is one never retired."""

    path: Path = Field(description="PEM ed25519 public key (model-compiler keygen's .pub)")
    #: From this moment on (the device's clock) a bundle signed by this key is refused for download
    #: and install; bundles already installed before it keep running, reported (see the README).
    retired_at: AwareDatetime | None = Field(
        default=None, description="ISO 8601 with a time zone, e.g. 2026-03-01T00:00:00Z; None: not retired"
    )


class MetricsConfig(_Section):
    port: int | None = Field(default=None, ge=0, le=65535, description="None: no HTTP endpoint")
    host: str = "127.0.0.1"


class AgentSettings(BaseSettings):
    """Everything one device agent needs. Required values have no default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    device_id: str
    site: str
    data_dir: Path = Field(description="Outbox and agent state live here")
    model_dir: Path = Field(description="The active model bundle")
    trusted_keys: list[TrustedKeyConfig] = Field(
        min_length=1,
        description="Keys bundles must be signed by: each a path to a PEM ed25519 public key, or"
        " {path, retired_at} for a key being rotated out",
    )
    source: SourceConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    ota: OtaConfig = Field(default_factory=OtaConfig)
    training_buffer: TrainingBufferConfig = Field(default_factory=TrainingBufferConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        return validate_id(value, "device")

    @field_validator("site")
    @classmethod
    def _site(cls, value: str) -> str:
        return validate_id(value, "site")

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _plain_key_paths(cls, value: Any) -> Any:
        # A plain path (the form every config had before rotation) is a key never retired.
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, str | Path) else item for item in value]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file: an operator overrides one value of a
        # shipped config without editing it.
        return env_settings, init_settings


def load_settings(path: str | Path | None = None, **overrides: Any) -> AgentSettings:
    """Read a YAML config, apply environment overrides, validate.

    Relative paths in the file are resolved against the file's folder.

    Raises
    ------
    ConfigError
        Naming the file and each invalid field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of settings, not {type(loaded).__name__}")
        data = _resolve_paths(loaded, path.parent)
    data.update(overrides)
    try:
        return AgentSettings(**data)
    except ValidationError as exc:
        where = str(path) if path is not None else "agent settings"
        problems = describe_validation_error(exc, limit=None, separator="\n  - ")
        raise ConfigError(f"{where} is invalid:\n  - {problems}") from None


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(data)
    for key in ("data_dir", "model_dir"):
        if isinstance(out.get(key), str):
            out[key] = str(base / out[key])
    if isinstance(out.get("trusted_keys"), list):
        out["trusted_keys"] = [_resolve_key(k, base) for k in out["trusted_keys"]]
    source = out.get("source")
    if isinstance(source, dict) and isinstance(source.get("path"), str):
        out["source"] = {**source, "path": str(base / source["path"])}
    mqtt = out.get("mqtt")
    if isinstance(mqtt, dict) and isinstance(mqtt.get("tls"), dict):
        out["mqtt"] = {**mqtt, "tls": resolve_tls_paths(mqtt["tls"], base)}
    ota = out.get("ota")
    if isinstance(ota, dict) and isinstance(ota.get("models_dir"), str):
        out["ota"] = {**ota, "models_dir": str(base / ota["models_dir"])}
    return out


def _resolve_key(entry: Any, base: Path) -> Any:
    """A trusted key's path, plain or in ``{path, retired_at}``, against the config's folder."""
    if isinstance(entry, str):
        return str(base / entry)
    if isinstance(entry, dict) and isinstance(entry.get("path"), str):
        return {**entry, "path": str(base / entry["path"])}
    return entry
