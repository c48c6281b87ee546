"""Errors of the site gateway. CLI-facing ones carry the exit code the CLI returns."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of the gateway's own errors."""

    exit_code = 1


class ConfigError(GatewayError):
    """The configuration file or an environment override is invalid."""

    exit_code = 2


class BrokerError(GatewayError):
    """The managed broker cannot be started (no Mosquitto, port taken, ...)."""

    exit_code = 4


class LinkError(GatewayError):
    """The MQTT link failed: not connected, or the broker went away."""


class UpstreamError(GatewayError):
    """The controller did not take a request; ``retry`` says whether sending again may help, and
    ``retry_after`` (seconds) when the controller said how long to wait first (429 over its rate)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry = retry
        self.retry_after = retry_after
