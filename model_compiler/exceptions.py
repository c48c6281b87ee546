"""Errors of the model compiler; each carries the exit code the CLI returns."""

from __future__ import annotations


class CompilerError(Exception):
    """Base class: the message says what went wrong and what to do."""

    exit_code = 1


class InputError(CompilerError):
    """A model, weights or data file cannot be used."""

    exit_code = 2


class BudgetError(CompilerError):
    """No target of the model fits the hardware profile's budget."""

    exit_code = 3


class TargetError(CompilerError):
    """One target failed to build."""

    exit_code = 4


class VerifyError(CompilerError):
    """A bundle or archive failed verification."""

    exit_code = 5
