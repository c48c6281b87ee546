"""Gateway settings: a YAML file, overridden by ``EDGEFLEET_GATEWAY__...`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge_gateway.exceptions import ConfigError
from fleet_protocol import validate_id
from fleet_protocol.codec import describe_validation_error
from fleet_protocol.tls import MqttTls, resolve_tls_paths

ENV_PREFIX = "EDGEFLEET_GATEWAY__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerServeTls(_Section):
    """The managed broker's TLS listener (see edge_gateway/broker_acl.py for what each name may do)."""

    cert_file: Path = Field(description="The broker's certificate (`pki issue --kind broker --host ...`)")
    key_file: Path = Field(description="The broker's private key")
    ca_file: Path = Field(description="The fleet CA: clients must show a certificate it signed")
    crl_file: Path | None = Field(default=None, description="The fleet CRL; a change restarts the broker")
    crl_check_s: float = Field(
        default=10.0, gt=0, description="How often the CRL file (and devices_file) is looked at"
    )
    devices_file: Path | None = Field(
        default=None,
        description="The site's devices, one id a line (`cloud-controller pki devices --site`): only these"
        " names get a device's rights here; a change is applied without a restart. None: any other"
        " certificate of the fleet CA is a device of this site",
    )
    labellers: list[str] = Field(default_factory=list, description="Names that may publish labels here")
    observers: list[str] = Field(default_factory=list, description="Names that may read the whole site")
    acl_extra: list[str] = Field(
        default_factory=list, description="More Mosquitto ACL lines: ['user bridge-1', 'topic read fleet/#']"
    )


class BrokerConfig(_Section):
    """The site broker. Without a host, the gateway starts and supervises a Mosquitto of its own."""

    host: str | None = Field(default=None, description="An existing broker; None: start a managed one")
    port: int = Field(default=1883, ge=1, le=65535)
    listen: str = Field(default="0.0.0.0", description="Managed broker: the address devices connect to")
    username: str | None = None
    password: str | None = None
    keepalive_s: int = Field(default=30, ge=5)
    client_id: str | None = Field(default=None, description="Default gateway-<gateway_id>")
    reconnect_min_s: float = Field(default=0.2, gt=0)
    reconnect_max_s: float = Field(default=5.0, gt=0)
    #: The gateway's own connection over TLS, with its certificate (CN = gateway_id).
    tls: MqttTls | None = None
    #: The managed broker takes only clients with a fleet certificate, under an ACL per identity.
    serve_tls: BrokerServeTls | None = None

    @model_validator(mode="after")
    def _backoff_ordered(self) -> Self:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        if self.serve_tls is not None and self.host is not None:
            raise ValueError("serve_tls configures the managed broker: it needs broker.host unset")
        if self.serve_tls is not None and self.tls is None:
            raise ValueError("a broker requiring certificates needs broker.tls for the gateway's own link")
        return self


class DeviceClass(_Section):
    """How the records of one kind of device are reduced before they go up.

    Flagged records (anomaly or low confidence, as the device's model said) always go up whole.
    Of the routine ones, a record goes up whole when it is sampled, moved past the deadband,
    or changed class (when asked); every record, forwarded or not, is in its window's summary.
    """

    name: str
    devices: list[str] = Field(default_factory=lambda: ["*"], description="Glob patterns on device ids")
    models: list[str] = Field(default_factory=lambda: ["*"], description="Glob patterns on model ids")
    forward_all: bool = Field(default=False, description="Send every record whole (no reduction)")
    sample_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of routine records sent whole, picked by (device, seq)"
    )
    deadband: float | None = Field(
        default=None, gt=0, description="Send a record whole when a feature moved more than this"
    )
    on_class_change: bool = Field(default=False, description="Send a record whole when its class changed")
    window_s: float = Field(default=60.0, ge=1, le=86_400, description="Summary window, on record time")
    class_means: bool = Field(default=False, description="Per-class feature means in summaries")


class UpstreamConfig(_Section):
    url: str | None = Field(default=None, description="The controller, e.g. https://cloud:8000; None: keep")
    token: str | None = Field(default=None, description="A gateway token from `cloud-controller admin`")
    ca_file: Path | None = Field(
        default=None, description="The CA of the controller's HTTPS certificate, when not a public one"
    )
    cert_file: Path | None = Field(
        default=None,
        description="This gateway's fleet certificate (`pki issue --kind gateway`), shown to a controller "
        "served with --client-ca: then no token is needed (a token, when set, is sent and wins)",
    )
    key_file: Path | None = Field(default=None, description="The private key of cert_file, mode 0600")
    max_records: int = Field(default=2000, ge=1, le=5000, description="Items per ingest batch")
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=4096, description="JSON bytes per batch, before gzip")
    linger_s: float = Field(default=1.0, ge=0, description="Wait this long for a batch to fill")
    timeout_s: float = Field(default=30.0, gt=0)
    retry_min_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    bandwidth_bytes_per_hour: int | None = Field(default=None, ge=4096, description="Compressed bytes")
    compression: int = Field(default=6, ge=1, le=9, description="gzip level")
    desired_poll_s: float = Field(default=5.0, gt=0)
    state_refresh_s: float = Field(default=60.0, gt=0, description="Resend every device's state this often")

    @model_validator(mode="after")
    def _token_with_url(self) -> UpstreamConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("upstream.cert_file and upstream.key_file go together: set both or neither")
        if self.url and not self.token and self.cert_file is None:
            raise ValueError(
                "upstream.token is required when upstream.url is set (or upstream.cert_file and "
                "upstream.key_file: the gateway's fleet certificate)"
            )
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must not be below retry_min_s")
        return self


class HttpConfig(_Section):
    """Bundles for devices, ``/metrics`` and ``/healthz``, on the site network."""

    host: str = "0.0.0.0"
    port: int = Field(default=8088, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="How devices reach this server; default http://<host>:<port>"
    )


class GatewaySettings(BaseSettings):
    """Everything one site gateway needs. Required values have no default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    gateway_id: str
    site: str
    data_dir: Path = Field(description="The gateway's SQLite store, bundle cache and managed broker")
    trusted_keys: list[Path] = Field(
        default_factory=list, description="Keys cached bundles must be signed by (for drift references)"
    )
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    device_classes: list[DeviceClass] = Field(
        default_factory=lambda: [DeviceClass(name="default")],
        description="First match wins; a device no class matches gets the defaults",
    )
    drift_window_s: float = Field(default=300.0, ge=1, description="Drift summary window, on gateway time")
    dedup_window: int = Field(default=4096, ge=64, le=65536, description="Recent seqs remembered per device")
    dead_letters_max: int = Field(default=10_000, ge=10)
    store_max_bytes: int | None = Field(
        default=None,
        ge=256 * 1024,
        description="Bound the store file; when full, messages wait unacknowledged in the broker",
    )
    batch_messages: int = Field(default=500, ge=1, description="MQTT messages per store transaction")
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("gateway_id")
    @classmethod
    def _gateway_id(cls, value: str) -> str:
        return validate_id(value, "gateway")

    @field_validator("site")
    @classmethod
    def _site(cls, value: str) -> str:
        return validate_id(value, "site")

    @property
    def public_url(self) -> str:
        if self.http.public_url:
            return self.http.public_url.rstrip("/")
        host = "127.0.0.1" if self.http.host in ("0.0.0.0", "::") else self.http.host
        return f"http://{host}:{self.http.port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file: one value of a shipped config, changed on site.
        return env_settings, init_settings


def load_settings(path: str | Path | None = None, **overrides: Any) -> GatewaySettings:
    """Read a YAML config, apply environment overrides, validate.

    Relative paths in the file resolve against the file's folder.

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
        return GatewaySettings(**data)
    except ValidationError as exc:
        where = str(path) if path is not None else "gateway settings"
        problems = describe_validation_error(exc, limit=None, separator="\n  - ")
        raise ConfigError(f"{where} is invalid:\n  - {problems}") from None


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(data)
    if isinstance(out.get("data_dir"), str):
        out["data_dir"] = str(base / out["data_dir"])
    if isinstance(out.get("trusted_keys"), list):
        out["trusted_keys"] = [str(base / k) if isinstance(k, str) else k for k in out["trusted_keys"]]
    broker = out.get("broker")
    if isinstance(broker, dict):
        broker = dict(broker)
        for section in ("tls", "serve_tls"):
            if isinstance(broker.get(section), dict):
                broker[section] = resolve_tls_paths(broker[section], base)
        out["broker"] = broker
    upstream = out.get("upstream")
    if isinstance(upstream, dict):
        out["upstream"] = {
            **upstream,
            **{
                k: str(base / upstream[k])
                for k in ("ca_file", "cert_file", "key_file")
                if isinstance(upstream.get(k), str)
            },
        }
    return out
