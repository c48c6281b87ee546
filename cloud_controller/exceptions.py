"""Errors of the controller; CLI-facing ones carry an exit code."""

from __future__ import annotations


class ControllerError(Exception):
    exit_code = 1


class ConfigError(ControllerError):
    exit_code = 2
