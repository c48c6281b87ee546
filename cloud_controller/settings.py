"""Controller settings: a YAML file, overridden by ``EDGEFLEET_CONTROLLER__...`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, HttpUrl, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cloud_controller.exceptions import ConfigError
from fleet_protocol.codec import describe_validation_error


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_CONTROLLER__", env_nested_delimiter="__", extra="forbid"
    )

    database_url: str = Field(
        default="sqlite:///controller.sqlite", description="SQLite file or postgresql+psycopg://"
    )
    bundle_dir: Path = Path("bundles")
    trusted_keys: list[Path] = Field(
        default_factory=list, description="Keys uploaded bundles must be signed by"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    environment: Literal["development", "production"] = "development"
    max_ingest_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    rollout_tick_s: float = Field(
        default=2.0, gt=0, le=3600, description="Seconds between two judgements of every running rollout"
    )
    signing_key: Path | None = Field(
        default=None,
        description="ed25519 private key (PEM) the jobs worker signs the bundles it builds with; its "
        "public key must be among trusted_keys (and the devices')",
    )
    job_dir: Path = Field(
        default=Path("jobs"), description="Where the jobs worker keeps each job's data, weights and bundles"
    )
    alarm_tick_s: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds between two passes of the alarm evaluator"
    )
    alarm_webhook_url: HttpUrl | None = Field(
        default=None,
        description="POST alarm.fired and alarm.resolved events (JSON) here; null: no notifications",
    )
    alarm_webhook_token: SecretStr | None = Field(
        default=None, description="Sent as 'Authorization: Bearer <it>' to alarm_webhook_url; never logged"
    )
    alarm_webhook_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="Seconds a webhook request may wait to connect, or for data"
    )
    alarm_webhook_max_age_s: float | None = Field(
        default=86_400.0,
        ge=0,
        description="An alarm event not delivered by the time it is this old (a webhook configured on "
        "a controller with older alarms, or a receiver away this long) is skipped: marked, counted and "
        "logged, never sent; null: send every event however old",
    )
    ingest_records_per_s: float | None = Field(
        default=10_000.0,
        gt=0,
        description="Items (records, states, events, summaries, drift windows, labels) each gateway "
        "token may ingest per second, on average; null: no limit. Kept per controller process",
    )
    ingest_burst_records: int = Field(
        default=100_000, ge=1, description="Items a gateway token may ingest at once above that rate"
    )
    tls_certfile: Path | None = Field(default=None, description="PEM certificate chain: serve HTTPS")
    tls_keyfile: Path | None = Field(default=None, description="PEM private key of tls_certfile")
    tls_client_ca: Path | None = Field(
        default=None,
        description="The fleet CA (PEM, `pki init`'s ca.pem): over HTTPS, ask callers for a client "
        "certificate it signed (optional: callers without one use tokens); a gateway's lets it in "
        "without a token",
    )
    tls_crl_file: Path | None = Field(
        default=None,
        description="The fleet CRL (`pki init`'s crl.pem): certificates it lists are refused; read "
        "again when the file changes",
    )
    tls_crl_check_s: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between two looks at tls_crl_file's mtime"
    )
    metrics_token: SecretStr | None = Field(
        default=None, min_length=16, description="When set, /metrics requires 'Authorization: Bearer <it>'"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ControllerSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together: set both or neither")
        if self.tls_client_ca is not None and self.tls_certfile is None:
            raise ValueError("tls_client_ca needs HTTPS: set tls_certfile and tls_keyfile too")
        if self.tls_crl_file is not None and self.tls_client_ca is None:
            raise ValueError("tls_crl_file is the CRL of tls_client_ca's certificates: set tls_client_ca too")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings


def load_settings(path: str | Path | None = None, **overrides: Any) -> ControllerSettings:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    data.update(overrides)
    try:
        return ControllerSettings(**data)
    except ValidationError as exc:
        raise ConfigError(
            f"controller settings are invalid: {describe_validation_error(exc, limit=None)}"
        ) from None
