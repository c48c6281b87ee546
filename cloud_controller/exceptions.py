"""Errors of the controller; CLI-facing ones carry an exit code."""

from __future__ import annotations


class ControllerError(Exception):
    exit_code = 1


class ConfigError(ControllerError):
    exit_code = 2


class NotFound(ControllerError):
    """What a request names does not exist (HTTP 404)."""


class Conflict(ControllerError):
    """The request contradicts what is stored (HTTP 409)."""


class ApiRefused(ControllerError):
    """The controller answered a CLI's request with an error (its detail is the message)."""


class Unreachable(ControllerError):
    """The CLI could not reach the controller at all."""

    exit_code = 3


class Invalid(ControllerError):
    """The request is refused as it is, e.g. a gateway token without a site (HTTP 422)."""

    exit_code = 2


class TokenRejected(ControllerError):
    """A bearer token is unknown, revoked or expired (HTTP 401); the message says which."""
