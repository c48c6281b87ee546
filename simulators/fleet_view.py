"""What the site brokers delivered, as any MQTT client following ``fleet/{site}/#`` sees it.

The observer process builds it message by message (`FleetView.add`) and hands it to the runner
as JSON (`to_wire` / `from_wire`): sets of seqs travel as inclusive runs, so a view of a
large fleet stays small, and so do the model versions of the records (runs of one version, in
seq order). Over-the-air updates are followed too: each device's ``ota.*`` events and every
model assignment its desired state named.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fleet_protocol import (
    DesiredState,
    DeviceEvent,
    LabelBatch,
    ProtocolError,
    ReportedState,
    TelemetryBatch,
    TopicKind,
    decode,
    parse_topic,
)


def to_runs(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted inclusive runs ``[first, last]`` of a set of seqs."""
    runs: list[list[int]] = []
    for seq in sorted(seqs):
        if runs and runs[-1][1] + 1 == seq:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return runs


def from_runs(runs: Iterable[Iterable[int]]) -> set[int]:
    out: set[int] = set()
    for low, high in runs:
        out.update(range(low, high + 1))
    return out


@dataclass(frozen=True, slots=True)
class VersionRun:
    """Consecutive records of one device (in seq order) made by one model version."""

    version: str
    first_seq: int
    last_seq: int
    first_ts: float
    last_ts: float
    records: int


@dataclass(frozen=True, slots=True)
class OtaEvent:
    """One ``ota.*`` event of a device, as the broker delivered it."""

    ts: float
    kind: str
    version: str | None
    manifest_sha256: str | None
    reason: str | None
    rollout_id: str | None


@dataclass(frozen=True, slots=True)
class Assignment:
    """A model a device's desired state named, and the bundle it named for it (its sha256 address)."""

    revision: int
    version: str
    bundle: str | None
    rollout_id: str | None


@dataclass
class FleetView:
    seqs: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    duplicates: int = 0
    seq_reused: int = 0  # the same (device, seq) for two different readings: must stay 0
    records: int = 0
    anomalies: int = 0
    correct: int = 0
    labelled: int = 0
    bytes: int = 0
    states: dict[str, ReportedState] = field(default_factory=dict)
    rejected: int = 0
    flagged: set[tuple[str, int]] = field(default_factory=set)
    #: Per second of reading time: [correct, labelled], for accuracy before and after drift.
    accuracy: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    #: Timestamp of each (device, seq) seen, to tell a redelivery from a reused seq; observer only.
    stamps: dict[tuple[str, int], float] = field(default_factory=dict)
    #: Per device, seq -> index in `version_names` of the model version that made it; observer only.
    record_versions: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    version_names: list[str] = field(default_factory=list)
    #: Per device, its records' model versions as runs in seq order (`to_wire` builds them).
    version_runs: dict[str, list[VersionRun]] = field(default_factory=dict)
    ota: dict[str, list[OtaEvent]] = field(default_factory=lambda: defaultdict(list))
    desired: dict[str, list[Assignment]] = field(default_factory=lambda: defaultdict(list))
    #: Delayed labels (`LabelBatch`) and records without an inline label, each kept until the other
    #: comes, to score the record as an inline label would be; observer only.
    pending_labels: dict[tuple[str, int], int] = field(default_factory=dict)
    unlabelled: dict[tuple[str, int], tuple[int | None, float]] = field(default_factory=dict)

    def accuracy_between(self, start: float, end: float) -> float | None:
        correct = labelled = 0
        for second, (c, n) in self.accuracy.items():
            if start <= second < end:
                correct, labelled = correct + c, labelled + n
        return round(correct / labelled, 4) if labelled else None

    def delivered(self) -> set[tuple[str, int]]:
        return {(device, seq) for device, seqs in self.seqs.items() for seq in seqs}

    # -- building it, one message at a time ----------------------------------------------

    def add(self, topic: str, payload: bytes) -> None:
        """Take one message of the site's tree; what does not decode is counted as rejected."""
        if not payload:
            return
        with contextlib.suppress(ProtocolError):
            kind = parse_topic(topic).kind
            if kind is TopicKind.TELEMETRY:
                self._telemetry(decode(payload, TelemetryBatch), len(payload))
            elif kind is TopicKind.STATE:
                state = decode(payload, ReportedState)
                self.states[state.device_id] = state
            elif kind is TopicKind.EVENTS:
                self._event(decode(payload, DeviceEvent))
            elif kind is TopicKind.DESIRED:
                self._desired(decode(payload, DesiredState))
            elif kind is TopicKind.LABELS:
                self._labels(decode(payload, LabelBatch))
            return
        self.rejected += 1

    def _telemetry(self, batch: TelemetryBatch, size: int) -> None:
        self.bytes += size
        seen = self.seqs[batch.device_id]
        for record in batch.records:
            key = (batch.device_id, record.seq)
            if record.seq in seen:
                self.duplicates += 1
                self.seq_reused += self.stamps[key] != record.ts
                continue
            self.stamps[key] = record.ts
            seen.add(record.seq)
            self.record_versions[batch.device_id][record.seq] = self._version_index(record.model_version)
            self.records += 1
            if record.anomaly:
                self.anomalies += 1
                self.flagged.add(key)
            label = record.label if record.label is not None else self.pending_labels.pop(key, None)
            if label is not None:
                self._score(record.predicted, label, record.ts)
            else:
                self.unlabelled[key] = (record.predicted, record.ts)

    def _labels(self, batch: LabelBatch) -> None:
        for item in batch.labels:
            key = (batch.device_id, item.seq)
            record = self.unlabelled.pop(key, None)
            if record is not None:
                self._score(record[0], item.label, record[1])
            elif key not in self.stamps:
                self.pending_labels[key] = item.label  # the record is still on its way

    def _score(self, predicted: int | None, label: int, ts: float) -> None:
        right = predicted == label
        self.labelled += 1
        self.correct += right
        bucket = self.accuracy[int(ts)]
        bucket[0] += right
        bucket[1] += 1

    def _version_index(self, version: str | None) -> int:
        name = version or "none"
        try:
            return self.version_names.index(name)
        except ValueError:
            self.version_names.append(name)
            return len(self.version_names) - 1

    def _event(self, event: DeviceEvent) -> None:
        if not event.kind.startswith("ota."):
            return
        data = event.data
        self.ota[event.device_id].append(
            OtaEvent(
                ts=float(data.get("ts", event.ts)),
                kind=event.kind,
                version=data.get("version"),
                manifest_sha256=data.get("manifest_sha256"),
                reason=data.get("reason"),
                rollout_id=data.get("rollout_id"),
            )
        )

    def _desired(self, desired: DesiredState) -> None:
        model = desired.model
        if model is None:
            return
        url = (model.bundle_url or "").rstrip("/")
        assignment = Assignment(
            revision=desired.revision,
            version=model.version,
            bundle=url.rsplit("/", 1)[-1] if url else None,
            rollout_id=model.rollout.rollout_id if model.rollout else None,
        )
        seen = self.desired[desired.device_id]
        if assignment not in seen:
            seen.append(assignment)

    def runs_of(self, device: str) -> list[VersionRun]:
        """The device's records' model versions as runs in seq order (observer side)."""
        versions = self.record_versions.get(device, {})
        runs: list[VersionRun] = []
        for seq in sorted(versions):
            name, ts = self.version_names[versions[seq]], self.stamps.get((device, seq), 0.0)
            last = runs[-1] if runs else None
            if last is not None and last.version == name:
                runs[-1] = VersionRun(name, last.first_seq, seq, last.first_ts, ts, last.records + 1)
            else:
                runs.append(VersionRun(name, seq, seq, ts, ts, 1))
        return runs

    def models(self) -> dict[str, dict[str, Any]]:
        """Per device, its model and update as its last state says, and the model it was last asked for."""
        out: dict[str, dict[str, Any]] = {}
        for device, state in self.states.items():
            ota = state.ota
            desired = self.desired[device][-1] if self.desired.get(device) else None
            out[device] = {
                "online": state.online,
                "version": state.model_version,
                "reason": state.model_reason.value if state.model_reason else None,
                "revision": state.desired_revision,
                "ota_state": ota.state.value if ota else None,
                "ota_version": ota.version if ota else None,
                # The last desired state the broker delivered for it: the device has applied it when
                # its reported revision is this one.
                "desired_version": desired.version if desired else None,
                "desired_revision": desired.revision if desired else None,
            }
        return out

    # -- handing it over -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The little the runner samples every second: records, devices online, model versions."""
        online = [s for s in self.states.values() if s.online]
        versions = Counter(f"{s.model_id}@{s.model_version}" for s in online)
        return {"records": self.records, "online": len(online), "versions": dict(versions)}

    def to_wire(self) -> dict[str, Any]:
        return {
            "seqs": {device: to_runs(seqs) for device, seqs in self.seqs.items()},
            "duplicates": self.duplicates,
            "seq_reused": self.seq_reused,
            "records": self.records,
            "anomalies": self.anomalies,
            "correct": self.correct,
            "labelled": self.labelled,
            "bytes": self.bytes,
            "rejected": self.rejected,
            "states": {d: s.model_dump(mode="json") for d, s in self.states.items()},
            "flagged": sorted(self.flagged),
            "accuracy": {str(second): pair for second, pair in self.accuracy.items()},
            "version_runs": {
                device: [list(_run_fields(run)) for run in self.runs_of(device)]
                for device in self.record_versions
            },
            "ota": {d: [list(_event_fields(e)) for e in events] for d, events in self.ota.items()},
            "desired": {d: [list(_assignment_fields(a)) for a in seen] for d, seen in self.desired.items()},
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> FleetView:
        view = cls(
            duplicates=data["duplicates"],
            seq_reused=data["seq_reused"],
            records=data["records"],
            anomalies=data["anomalies"],
            correct=data["correct"],
            labelled=data["labelled"],
            bytes=data["bytes"],
            rejected=data["rejected"],
            states={d: ReportedState.model_validate(s) for d, s in data["states"].items()},
            flagged={(d, int(s)) for d, s in data["flagged"]},
        )
        for device, runs in data["seqs"].items():
            view.seqs[device] = from_runs(runs)
        for second, pair in data["accuracy"].items():
            view.accuracy[int(second)] = list(pair)
        view.version_runs = {
            d: [VersionRun(*run) for run in runs] for d, runs in data["version_runs"].items()
        }
        for device, events in data["ota"].items():
            # In the order the device made them (a broker restart can reorder deliveries).
            view.ota[device] = sorted((OtaEvent(*event) for event in events), key=lambda e: e.ts)
        for device, seen in data["desired"].items():
            view.desired[device] = [Assignment(*a) for a in seen]
        return view


def _run_fields(run: VersionRun) -> tuple[Any, ...]:
    return (run.version, run.first_seq, run.last_seq, run.first_ts, run.last_ts, run.records)


def _event_fields(e: OtaEvent) -> tuple[Any, ...]:
    return (e.ts, e.kind, e.version, e.manifest_sha256, e.reason, e.rollout_id)


def _assignment_fields(a: Assignment) -> tuple[Any, ...]:
    return (a.revision, a.version, a.bundle, a.rollout_id)
