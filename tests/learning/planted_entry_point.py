"""A module a malicious recipe names as its entry point: a test checks it is never imported."""

from __future__ import annotations

raise AssertionError("a recipe's entry point was imported")


def build(**kwargs: object) -> None:  # pragma: no cover - never reached
    return None
