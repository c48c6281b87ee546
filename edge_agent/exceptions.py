"""Errors of the device agent. CLI-facing ones carry the exit code the CLI returns."""

from __future__ import annotations


class AgentError(Exception):
    """Base class of the agent's own errors."""

    exit_code = 1


class ConfigError(AgentError):
    """The configuration file or an environment override is invalid."""

    exit_code = 2


class ModelLoadError(AgentError):
    """The model bundle cannot be run: missing, unsigned, tampered, or unloadable."""

    exit_code = 3


class ModelSpecMismatch(ModelLoadError):
    """The model file's inputs or outputs do not match what its manifest declares."""


class InvalidReading(AgentError):
    """A sensor reading cannot become a model input; ``reason`` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class LinkError(AgentError):
    """The MQTT link failed: not connected, or the broker went away."""
