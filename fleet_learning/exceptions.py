"""Errors of fleet learning; the message says what went wrong and what happens next."""

from __future__ import annotations


class LearningError(Exception):
    """Base class."""


class RecipeError(LearningError):
    """A training recipe cannot be used: bad entry point, or the model it builds is not a Module."""


class DataError(LearningError):
    """Training data cannot be used: unreadable buffer, wrong feature count, labels out of range."""
