"""A rollout's devices, what each reported, and a wave's gate values over them.

Read from `Device` (model running, the last `OtaStatus`) and, for shadow figures a device's state no
longer carries, from its ``ota.shadow`` events (indexed by rollout).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from sqlmodel import Session, col, select

from cloud_controller.desired_state import load_layers, owner
from cloud_controller.models import Device, DeviceGroup, Event
from cloud_controller.rollout_models import ACTIVE, ByState, GateValues, Rollout
from cloud_controller.waves import position

_FAILED = ("rolled_back", "refused")


@dataclass(frozen=True)
class Shadow:
    """One device's shadow figures: challenger against champion."""

    agreement: float | None
    latency_ratio: float | None
    non_finite: int


@dataclass(frozen=True)
class Report:
    """One device of a rollout: where it stands in the rollout's order and in its update."""

    device_id: str
    position: int
    state: str  # one of rollout_models.DEVICE_STATES
    #: When it reported the new version promoted (its own clock); None when it runs the version
    #: without having reported an update (it had it already): installed from the start.
    installed_at: float | None
    shadow: Shadow | None


@dataclass(frozen=True)
class Measured:
    devices: int
    by_state: ByState
    gates: GateValues


def reports(session: Session, rollout: Rollout) -> list[Report]:
    """Every device of the rollout: of its group and, while it is active, not claimed by a newer layer."""
    group = session.get(DeviceGroup, rollout.group_id)
    selector = group.selector if group is not None else {}
    layers = load_layers(session) if rollout.state in ACTIVE else []
    rows = session.exec(
        select(Device.id, Device.labels, Device.model_id, Device.model_version, Device.ota).order_by(
            col(Device.id)
        )
    ).all()
    events = _shadow_events(session, rollout) if rollout.shadow_s > 0 else {}
    out = []
    for device_id, labels, model_id, model_version, ota in rows:
        if not all(labels.get(k) == v for k, v in selector.items()):
            continue
        if layers:
            newest = owner(layers, labels)
            if newest is None or newest.rollout_id != rollout.id:
                continue
        mine = ota if ota is not None and _is_for(ota, rollout) else None
        state, installed_at = _state(rollout, model_id, model_version, mine)
        shadow = _shadow(mine.get("shadow") if mine else None) or _shadow(events.get(device_id))
        out.append(Report(device_id, position(rollout.id, device_id), state, installed_at, shadow))
    return out


def measure(devices: list[Report], *, threshold: int, clock: float, deadline_s: float) -> Measured:
    """Gate values over the devices below ``threshold``: the waves started so far, cumulatively.

    Installed: promoted (or running the version) by ``clock + deadline_s``. Agreement and latency
    ratio: means over the devices that reported shadow figures (None when none did).
    """
    wave = [d for d in devices if d.position < threshold]
    states = Counter(d.state for d in wave)
    installed = sum(
        1
        for d in wave
        if d.state == "promoted" and (d.installed_at is None or d.installed_at <= clock + deadline_s)
    )
    failed = sum(states[s] for s in _FAILED)
    shadows = [d.shadow for d in wave if d.shadow is not None]
    agreements = [s.agreement for s in shadows if s.agreement is not None]
    ratios = [s.latency_ratio for s in shadows if s.latency_ratio is not None]
    # An empty wave (an empty group) holds nothing back and has nothing failing.
    n = len(wave)
    return Measured(
        devices=n,
        by_state=ByState(**states),
        gates=GateValues(
            installed=round(installed / n, 6) if n else 1.0,
            agreement=round(fmean(agreements), 6) if agreements else None,
            latency_ratio=round(fmean(ratios), 6) if ratios else None,
            non_finite=sum(s.non_finite for s in shadows),
            failed=round(failed / n, 6) if n else 0.0,
        ),
    )


def _is_for(ota: dict[str, Any], rollout: Rollout) -> bool:
    """Whether a device's OtaStatus is its update towards this rollout's version.

    One that names another rollout (an earlier one of the same version) is not: that device is
    asked again by this one and has not answered yet.
    """
    named = ota.get("rollout_id")
    return (
        ota.get("model_id") == rollout.model_id
        and ota.get("version") == rollout.version
        and named in (None, rollout.id)
    )


def _state(
    rollout: Rollout, model_id: str | None, model_version: str | None, ota: dict[str, Any] | None
) -> tuple[str, float | None]:
    if ota is not None and ota.get("state") not in (None, "idle"):
        state = str(ota["state"])
        return state, float(ota.get("ts") or 0.0) if state == "promoted" else None
    if (model_id, model_version) == (rollout.model_id, rollout.version):
        return "promoted", None
    return "pending", None


def _shadow(stats: dict[str, Any] | None) -> Shadow | None:
    """A device's figures from `fleet_protocol.ShadowStats`, if it ran any sample."""
    if not stats or not stats.get("samples"):
        return None
    champion = (stats.get("champion") or {}).get("p95_latency_ms")
    challenger_stats = stats.get("challenger") or {}
    challenger = challenger_stats.get("p95_latency_ms")
    ratio = challenger / champion if champion and challenger is not None else None
    return Shadow(stats.get("agreement"), ratio, int(challenger_stats.get("non_finite") or 0))


def _shadow_events(session: Session, rollout: Rollout) -> dict[str, dict[str, Any]]:
    """Per device, the shadow figures of its latest ``ota.shadow`` event of this rollout."""
    out: dict[str, dict[str, Any]] = {}
    for device_id, data in session.exec(
        select(Event.device_id, Event.data)
        .where(Event.rollout_id == rollout.id, Event.kind == "ota.shadow")
        .order_by(col(Event.id))
    ).all():
        if isinstance(data, dict) and data.get("shadow"):
            out[device_id] = data["shadow"]
    return out
