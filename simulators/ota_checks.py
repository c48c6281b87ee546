"""The invariants of over-the-air updates, judged from what the site brokers delivered and the gateways count.

- Every rollout ended as it should: a good version through every wave; a bad one stopped at its
  canary, each canary device back on the previous version with a final reason for the bad one, or
  with its update cancelled (``ota.cancelled``) by the abort before its own checks had ended: the
  controller's gates on the canary's shadow reports can stop a rollout before every device's do.
  A learning job's later rollout to the device's site may have moved it on since: its version
  counts as the previous one. A defect a device judges by statistics (``slow_10x``, ``disagrees``:
  a latency ratio, an agreement rate over its shadow period) may pass one device's gate on too few
  readings and be caught by the controller's gates over the whole canary: such a device may have
  promoted the bad version, provided the abort then put it back on the previous one. A NaN model or
  a tampered bundle is caught on every device, by checks that do not depend on chance.
- No device loaded an unverified bundle: a tampered bundle was refused by every device that was
  sent it (``ota.refused`` for its signature or digests) unless the abort cancelled its download
  first, never shadowed, promoted or run; and on
  any device that was never killed, nothing was shadowed or promoted without being verified first.
- Every record is attributed to the model version that made it: per device, in seq order, the
  records' version changes only where the device said it switched (``ota.promoted`` to the new
  one, ``ota.rolled_back`` away from the old one), and no record comes from a version stopped at
  its canary, but on a device that promoted it as above (its records are then rightly its). An
  ``ota.*`` event is in the agent's memory until the broker has it, so a device
  whose process was killed -9 may lose one per kill: those transitions are allowed, and counted.
- Each site downloaded each bundle once: the gateway's ``edge_gateway_bundle_fetches_total
  {result="ok"}`` (over its lives) equals the bundles its devices' desired states named, but for
  those an attacker planted in its cache (which must not be fetched at all).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleet_protocol import ModelReason
from simulators.fleet_view import FleetView, OtaEvent
from simulators.rollouts import RolloutOutcome

_REFUSED_UNVERIFIED = {
    ModelReason.SIGNATURE_INVALID.value,
    ModelReason.DIGEST_MISMATCH.value,
    ModelReason.MANIFEST_MISMATCH.value,
}
_ENDED = ("ota.rolled_back", "ota.refused", "ota.cancelled", "ota.promoted")
#: Defects a device's own gate judges by statistics over its shadow period (see above).
_STATISTICAL = ("slow_10x", "disagrees")
_LOADED = ("ota.shadow", "ota.promoted")
_EXAMPLES = 5


@dataclass
class OtaVerdicts:
    verdicts: dict[str, bool | None] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)
    #: Version changes in records that no event explains, on devices killed -9 (allowed).
    unconfirmed_switches: int = 0
    fetches: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Per version of the timeline, each device its desired state sent it to: how its update ended
    #: (``outcome``, ``reason``) and the version it runs at the end (``runs``).
    devices: dict[str, dict[str, dict[str, str | None]]] = field(default_factory=dict)


def judge(
    rollouts: list[RolloutOutcome],
    view: FleetView,
    *,
    site_of: Mapping[str, str],
    killed: Mapping[str, int],
    fetches: Mapping[str, float],
    planted: Mapping[str, set[str]],
    complete: bool,
    moved_on: Mapping[str, str] | None = None,
) -> OtaVerdicts:
    """The four verdicts; a problem found on an incomplete view is NOT JUDGED (None), not a FAIL.

    ``moved_on``: per device, the version a later rollout that is not the timeline's (a learning
    job's, to the device's site) gave it; a canary device of a bad rollout may end on that one
    instead of the version it was back on."""
    out = OtaVerdicts()
    for r in rollouts:
        out.devices[r.version] = {}
        for device in _got(view, r.version):
            how, reason = _outcome(view, device, r.version)
            state = view.states.get(device)
            runs = state.model_version if state is not None else None
            out.devices[r.version][device] = {"outcome": how, "reason": reason, "runs": runs}
    checks = {
        "every_rollout_ended_as_expected_devices_back_with_a_reason": _rollouts(
            rollouts, view, moved_on or {}
        ),
        "no_device_loaded_an_unverified_bundle": _unverified(rollouts, view, killed),
        "every_record_attributed_to_the_model_version_that_made_it": _attribution(
            rollouts, view, killed, out
        ),
        "each_site_downloaded_each_bundle_once": _downloads(view, site_of, fetches, planted, out),
    }
    for name, problems in checks.items():
        out.problems[name] = problems[:_EXAMPLES] + (
            [f"... and {len(problems) - _EXAMPLES} more"] if len(problems) > _EXAMPLES else []
        )
        out.verdicts[name] = True if not problems else (False if complete else None)
    return out


def _got(view: FleetView, version: str) -> list[str]:
    """Devices whose desired state named ``version``."""
    return sorted(d for d, seen in view.desired.items() if any(a.version == version for a in seen))


def _outcome(view: FleetView, device: str, version: str) -> tuple[str | None, str | None]:
    """How the device's update to ``version`` ended: (state, reason), from its events or its last state."""
    ended = [e for e in view.ota.get(device, []) if e.version == version and e.kind in _ENDED]
    if ended:
        return ended[-1].kind.removeprefix("ota."), ended[-1].reason
    state = view.states.get(device)
    if state is not None and state.ota is not None and state.ota.version == version:
        return state.ota.state.value, state.ota.reason.value if state.ota.reason else None
    return None, None


def _rollouts(rollouts: list[RolloutOutcome], view: FleetView, moved_on: Mapping[str, str]) -> list[str]:
    problems = []
    for r in rollouts:
        if r.state != r.expected:
            problems.append(
                f"{r.version}: {r.state}, expected {r.expected}" + (f" ({r.error})" if r.error else "")
            )
        if r.defect is None:
            continue
        if r.waves_started() > 1:
            problems.append(
                f"{r.version} ({r.defect}) went past its canary: {r.waves_started()} waves started"
            )
        canary = _got(view, r.version)
        if not canary:
            problems.append(f"{r.version} ({r.defect}) reached no device")
        for device in canary:
            state = view.states.get(device)
            running = state.model_version if state is not None else None
            if running != r.previous and (running is None or running != moved_on.get(device)):
                problems.append(f"{device} runs {running} after {r.version} failed, not {r.previous}")
            how, reason = _outcome(view, device, r.version)
            if how == "cancelled" and r.state == "failed":
                continue  # the abort came first; still on the previous version (checked above)
            if how == "promoted" and r.state == "failed" and r.defect in _STATISTICAL:
                continue  # its gate passed on its readings; the canary's gates did not (back: above)
            if how not in ("rolled_back", "refused") or reason in (None, ModelReason.UPDATE_PENDING.value):
                problems.append(f"{device}: {r.version} ended {how or 'without an outcome'}, reason {reason}")
    return problems


def _unverified(rollouts: list[RolloutOutcome], view: FleetView, killed: Mapping[str, int]) -> list[str]:
    problems = []
    for r in rollouts:
        if r.defect != "tampered_signature":
            continue
        for device, events in view.ota.items():
            loaded = [
                e.kind for e in events if e.version == r.version and e.kind in ("ota.shadow", "ota.promoted")
            ]
            if loaded:
                problems.append(f"{device} loaded the tampered {r.version}: {', '.join(loaded)}")
        for device, runs in view.version_runs.items():
            if any(run.version == r.version for run in runs):
                problems.append(f"{device} made records with the tampered {r.version}")
        for device in _got(view, r.version):
            how, reason = _outcome(view, device, r.version)
            if how == "cancelled":
                continue  # the abort stopped it before the check (and `loaded` above is empty)
            if how != "refused" or reason not in _REFUSED_UNVERIFIED:
                problems.append(f"{device} did not refuse the tampered {r.version}: {how}, {reason}")
    for device, events in view.ota.items():
        if killed.get(device):
            continue  # its `ota.verified` may have died with the process
        verified: set[str | None] = set()
        for e in events:
            if e.kind == "ota.verified":
                verified.add(e.manifest_sha256)
            elif e.kind in ("ota.shadow", "ota.promoted") and e.manifest_sha256 not in verified:
                problems.append(f"{device}: {e.kind} of {e.version} without ota.verified before it")
    return problems


def _attribution(
    rollouts: list[RolloutOutcome], view: FleetView, killed: Mapping[str, int], out: OtaVerdicts
) -> list[str]:
    problems = []
    stopped = {r.version for r in rollouts if r.defect is not None}
    statistical = {r.version for r in rollouts if r.defect in _STATISTICAL}
    for device, runs in view.version_runs.items():
        promoted = {e.version for e in view.ota.get(device, []) if e.kind == "ota.promoted"}
        for run in runs:
            if run.version in stopped and not (run.version in statistical and run.version in promoted):
                problems.append(f"{device}: {run.records} records from {run.version}, stopped at its canary")
        events = [e for e in view.ota.get(device, []) if e.kind in ("ota.promoted", "ota.rolled_back")]
        unexplained = 0
        position = 0
        for before, after in itertools.pairwise(runs):
            found = _explained(events, position, before.version, after.version)
            if found is None:
                unexplained += 1
            else:
                position = found + 1
        allowed = killed.get(device, 0)
        out.unconfirmed_switches += min(unexplained, allowed)
        if unexplained > allowed:
            versions = " -> ".join(f"{r.version}[{r.first_seq}..{r.last_seq}]" for r in runs)
            problems.append(f"{device}: {unexplained} version changes no ota event explains: {versions}")
    return problems


def _explained(events: list[OtaEvent], start: int, before: str, after: str) -> int | None:
    """The index of the first event from ``start`` on that switches ``before`` to ``after``."""
    for index in range(start, len(events)):
        e = events[index]
        if (e.kind == "ota.promoted" and e.version == after) or (
            e.kind == "ota.rolled_back" and e.version == before
        ):
            return index
    return None


def _downloads(
    view: FleetView,
    site_of: Mapping[str, str],
    fetches: Mapping[str, float],
    planted: Mapping[str, set[str]],
    out: OtaVerdicts,
) -> list[str]:
    named: dict[str, set[str]] = {site: set() for site in fetches}
    for device, seen in view.desired.items():
        site = site_of.get(device)
        if site in named:
            named[site].update(a.bundle for a in seen if a.bundle)
    problems = []
    for site, count in sorted(fetches.items()):
        expected = len(named[site] - planted.get(site, set()))
        out.fetches[site] = {"downloads": count, "bundles": expected, "planted": len(planted.get(site, ()))}
        if count != expected:
            problems.append(f"{site}: {count:g} bundle downloads over the uplink for {expected} bundles")
    return problems
