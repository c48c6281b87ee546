"""The scenario's timeline: each kind of event is a handler registered here by name.

A handler gets the running fleet and its event, does what the event says (a fault, a change
of the world), undoes it after ``for_s`` when the event is temporary, and returns a line for the
report. Handlers are registered with `event`, which refuses a kind registered twice. A kind
that needs work done before the fleet streams (a model version to train and build) registers a
``prepare`` too; the runner calls it for each such event before the clock starts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet_protocol.codec import describe_validation_error

if TYPE_CHECKING:
    from simulators.fleet import FleetRun


class Event(BaseModel):
    """Fields every event has; a kind adds its own by subclassing."""

    model_config = ConfigDict(extra="forbid")

    at_s: float = Field(ge=0, description="Seconds after the fleet started streaming")
    kind: str
    site: int | Literal["all"] = Field(default=0, description="Index of the site it hits, or all")
    for_s: float = Field(default=2.0, ge=0, description="How long a temporary fault lasts")


Handler = Callable[["FleetRun", Any], Awaitable[str]]
Prepare = Callable[["FleetRun", Any], Awaitable[None]]
_REGISTRY: dict[str, tuple[type[Event], Handler]] = {}
_PREPARE: dict[str, Prepare] = {}


def event(
    kind: str, spec: type[Event] = Event, *, prepare: Prepare | None = None
) -> Callable[[Handler], Handler]:
    """Register ``handler`` for events of ``kind``, whose fields ``spec`` declares."""

    def register(handler: Handler) -> Handler:
        if kind in _REGISTRY:
            raise ValueError(f"event kind {kind!r} is registered twice")
        _REGISTRY[kind] = (spec, handler)
        if prepare is not None:
            _PREPARE[kind] = prepare
        return handler

    return register


def describe() -> list[tuple[str, str, dict[str, str]]]:
    """Each kind: its one-line summary and its own fields with their descriptions (for --help)."""
    out = []
    common = set(Event.model_fields)
    for kind in kinds():
        spec, handler = _REGISTRY[kind]
        summary = (handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else ""
        fields = {
            name: info.description or "" for name, info in spec.model_fields.items() if name not in common
        }
        out.append((kind, summary, fields))
    return out


def kinds() -> list[str]:
    return sorted(_REGISTRY)


def parse_event(data: Any, index: int = 0) -> Event:
    """Validate one event of a scenario by the fields of its kind.

    Raises
    ------
    ValueError
        Naming the event's index and what is wrong with it.
    """
    if isinstance(data, Event):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"events.{index} must be a mapping")
    kind = data.get("kind")
    if kind not in _REGISTRY:
        raise ValueError(f"events.{index}.kind: unknown event kind {kind!r} (known: {', '.join(kinds())})")
    try:
        return _REGISTRY[kind][0].model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"events.{index} ({kind}): {describe_validation_error(exc)}") from None


async def apply(run: FleetRun, spec: Event) -> str:
    """Carry out one event; returns what happened, for the report."""
    return await _REGISTRY[spec.kind][1](run, spec)


async def prepare(run: FleetRun, spec: Event) -> None:
    """Do what the event needs done before the fleet streams (nothing, for most kinds)."""
    if spec.kind in _PREPARE:
        await _PREPARE[spec.kind](run, spec)


# Each module registers its kinds on import.
from simulators.events import agents, brokers, devices, drift, gateways, jobs, network, rollouts  # noqa: E402, F401
