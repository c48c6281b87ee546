"""A run's outcome: what was produced, delivered and counted, the invariants, and the exit code.

An invariant is PASS (True), FAIL (False) or NOT JUDGED (None). Not judged means the run
cannot tell: the observer's view was incomplete, or a drain that timed out cannot tell a lost
record from a late one (the simulator fell behind, or records were demonstrably still on their
way: in a gateway's upstream queue or open windows, or not yet read from its broker). A record
counted twice, a crash, or a device off its model without a final reason fail whatever the lag.
When the timeline rolls out model versions, the invariants of over-the-air updates join them
(`simulators.ota_checks`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_controller.models import Device
from fleet_protocol import ModelReason, ReportedState
from simulators.fleet_view import FleetView
from simulators.learning import LearningResult
from simulators.ledger import Ledger, Reconciliation, reconcile
from simulators.ota_checks import OtaVerdicts
from simulators.rollouts import RolloutOutcome
from simulators.scenario import Scenario
from simulators.timeline import Timeline

#: Exit codes of `fleet-sim run` (2 is an invalid scenario, 130 Ctrl-C).
#: Report figures computed from the observer's view of the brokers, not from the controller's books.
VIEW_FIGURES = (
    "records_per_s",
    "anomalies_delivered",
    "telemetry_bytes",
    "upstream_bytes_ratio",
    "device_model_accuracy",
    "accuracy_before_drift",
    "accuracy_after_drift",
)

EXIT_OK, EXIT_INVARIANT_FAILED, EXIT_FELL_BEHIND = 0, 1, 4


def off_model(
    devices: Iterable[str],
    at_controller: Mapping[str, Device],
    reported: Mapping[str, ReportedState],
    model: tuple[str, str],
) -> tuple[list[str], list[str]]:
    """Devices not on ``model`` (id, version) without a final reason from the closed list, and
    devices the controller never heard of (a FAIL only when the run's view is complete).

    The version is what the controller knows of the device; the reason is the controller's
    if it keeps one, else the device's own last reported state.
    """
    off, unknown = [], []
    for device in devices:
        row = at_controller.get(device)
        if row is None:
            unknown.append(device)
            continue
        if (row.model_id, row.model_version) == model:
            continue
        reason = getattr(row, "model_reason", None)
        if reason is None and device in reported:
            reason = reported[device].model_reason
        if reason is None or reason == ModelReason.UPDATE_PENDING:
            off.append(device)
    return off, unknown


@dataclass
class RunResult:
    scenario: Scenario
    run_dir: Path
    started: float
    seconds: float = 0.0
    model_accuracy: float = 0.0
    compiler_table: list[dict[str, Any]] = field(default_factory=list)
    view: FleetView = field(default_factory=FleetView)
    #: The observer read everything the brokers had accepted once the outboxes were empty.
    view_complete: bool = False
    produced: dict[str, int] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    #: `reconcile(view.seqs, ledger)`, set once both are final.
    books: Reconciliation = field(default_factory=lambda: Reconciliation([], [], []))
    devices_off_model: list[str] = field(default_factory=list)
    #: Devices the controller never heard of (judged only on a complete view).
    devices_unknown: list[str] = field(default_factory=list)
    #: The version every device should end on: the last rollout that succeeded, or the first model.
    final_version: str = ""
    #: Why records not counted when the drain timed out were still on their way, if they demonstrably were.
    in_transit: str | None = None
    rollouts: list[RolloutOutcome] = field(default_factory=list)
    ota: OtaVerdicts | None = None
    #: Per device, its last swap gap in seconds (`Agent.swap_gap_s`), for devices that switched.
    swap_gaps: dict[str, float] = field(default_factory=dict)
    #: Unix time at which the fleet started streaming (the report's charts count from there).
    stream_started_at: float = 0.0
    events: list[str] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)
    drained: bool = False
    upstream_bytes: float = 0.0
    #: Delayed labels the simulated labelling systems published (None: the scenario has none).
    labels_published: int | None = None
    timeline: Timeline = field(default_factory=Timeline)
    #: Alarms, jobs and accuracy per site (a scenario with `learning`).
    learning: LearningResult | None = None
    drift_started_at: float | None = None
    drift_scores: list[dict[str, Any]] = field(default_factory=list)
    #: `LagMonitor.verdict` and its per-second series.
    lag: dict[str, Any] = field(default_factory=lambda: {"behind": False})
    lag_series: dict[str, list[float]] = field(default_factory=dict)

    @property
    def behind(self) -> bool:
        return bool(self.lag.get("behind"))

    def settle(self) -> None:
        """Compare the final view with the final ledger, once (large fleets have many records)."""
        self.books = reconcile(self.view.seqs, self.ledger)

    def unacknowledged(self) -> int:
        """Records devices made that no broker delivered."""
        return sum(self.produced.values()) - sum(len(s) for s in self.view.seqs.values())

    def invariants(self) -> dict[str, bool | None]:
        books = self.books
        missing_flagged = self.view.flagged - self.ledger.whole
        arrived = (
            self.drained
            and not books.lost
            and not self.unacknowledged()
            and not missing_flagged
            and not self.ledger.unlisted
        )
        lost: bool | None = arrived
        if not self.view_complete or (not arrived and (self.behind or self.in_transit)):
            lost = None
        doubled: bool | None = not books.doubled and self.view.seq_reused == 0
        if doubled and not self.view_complete:
            doubled = None  # a seq reused for two readings may be in what the observer did not read
        on_model: bool | None = not self.devices_off_model and not self.devices_unknown
        if not self.devices_off_model and self.devices_unknown and not self.view_complete:
            on_model = None  # the controller may not have heard of them yet: the run cannot tell
        verdicts = {
            "no_acknowledged_record_lost": lost,
            "no_record_stored_twice": doubled,
            "every_device_on_its_desired_model_or_says_why": on_model,
            "no_daemon_crashed": not self.crashed,
        }
        if self.ota is not None:
            verdicts.update(self.ota.verdicts)
        if self.learning is not None:
            verdicts.update(self.learning.verdicts)
        return verdicts

    def exit_code(self) -> int:
        verdicts = self.invariants().values()
        if any(v is False for v in verdicts):
            return EXIT_INVARIANT_FAILED
        if self.behind or any(v is None for v in verdicts):
            return EXIT_FELL_BEHIND
        return EXIT_OK

    def _ota_summary(self) -> dict[str, Any] | None:
        if self.ota is None:
            return None
        gaps = sorted(self.swap_gaps.values())
        return {
            "problems": {k: v for k, v in self.ota.problems.items() if v},
            "devices_by_version": self.ota.devices,
            "bundle_downloads_per_site": self.ota.fetches,
            "switches_without_their_event_on_killed_devices": self.ota.unconfirmed_switches,
            "swap_gap_ms_max": round(gaps[-1] * 1000, 1) if gaps else None,
            "swap_gap_ms_p50": round(gaps[len(gaps) // 2] * 1000, 1) if gaps else None,
            "stream_started_at": self.stream_started_at,
            "version_runs": {
                device: [[r.version, r.first_ts, r.last_ts] for r in runs]
                for device, runs in sorted(self.view.version_runs.items())
            },
        }

    def summary(self) -> dict[str, Any]:
        view = self.view
        books = self.books
        delivered = sum(len(s) for s in view.seqs.values())
        before = after = None
        if self.drift_started_at is not None:
            before = view.accuracy_between(0, self.drift_started_at)
            after = view.accuracy_between(self.drift_started_at, float("inf"))
        return {
            "scenario": self.scenario.name,
            "simulator": self.lag,
            "sites": self.scenario.sites,
            "devices": len(self.produced),
            # Ids are site-N-<class>-NNNN; devices that joined during the run are of class "new".
            "devices_by_class": dict(Counter(device.split("-")[2] for device in self.produced)),
            "seconds": round(self.seconds, 1),
            "records_produced": sum(self.produced.values()),
            "records_delivered_unique": delivered,
            "records_counted_at_controller": self.ledger.total(),
            "records_stored_whole": len(self.ledger.whole),
            "records_lost": len(books.lost),
            "records_lost_examples": Reconciliation.examples(books.lost),
            "records_counted_twice": len(books.doubled),
            "records_counted_twice_examples": Reconciliation.examples(books.doubled),
            "records_counted_never_delivered": len(books.unexpected),
            "records_not_acknowledged": self.unacknowledged(),
            "duplicates_delivered": view.duplicates,
            "observer_view_complete": self.view_complete,
            # Figures computed from what the observer read: partial when its view was.
            "figures_from_partial_view": [] if self.view_complete else list(VIEW_FIGURES),
            "drained": self.drained,
            "drain_timeout_s": self.scenario.drain_timeout_s,
            "records_per_s": round(delivered / self.seconds, 1) if self.seconds else 0.0,
            "anomalies_delivered": view.anomalies,
            "anomalies_missing_at_controller": len(view.flagged - self.ledger.whole),
            "telemetry_bytes": view.bytes,
            "upstream_bytes": int(self.upstream_bytes),
            "labels_published": self.labels_published,
            "upstream_bytes_ratio": round(self.upstream_bytes / view.bytes, 4) if view.bytes else None,
            "device_model_accuracy": round(view.correct / view.labelled, 4) if view.labelled else None,
            "accuracy_before_drift": before,
            "accuracy_after_drift": after,
            "training_accuracy": round(self.model_accuracy, 4),
            "compiler": self.compiler_table,
            "rejected_payloads": view.rejected,
            "events": sorted(self.events, key=lambda line: float(line.split("s", 1)[0])),
            "crashed": self.crashed,
            "devices_off_model": self.devices_off_model,
            "devices_unknown_to_controller": self.devices_unknown,
            "final_model_version": self.final_version,
            "records_in_transit_at_drain_timeout": self.in_transit,
            "rollouts": [r.as_dict() for r in self.rollouts],
            "ota": self._ota_summary(),
            "drift_scores": self.drift_scores,
            "learning": None if self.learning is None else self.learning.summary(self.stream_started_at),
            "invariants": self.invariants(),
            "exit_code": self.exit_code(),
            "run_dir": str(self.run_dir),
        }
