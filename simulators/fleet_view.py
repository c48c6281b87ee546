"""What the site brokers delivered, as any MQTT client following ``fleet/{site}/#`` sees it.

The observer process builds it message by message (`FleetView.add`) and hands it to the runner
as JSON (`to_wire` / `from_wire`): sets of seqs travel as inclusive runs, so a view of a
large fleet stays small.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fleet_protocol import ProtocolError, ReportedState, TelemetryBatch, TopicKind, decode, parse_topic


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
            self.records += 1
            if record.anomaly:
                self.anomalies += 1
                self.flagged.add(key)
            if record.label is not None:
                right = record.predicted == record.label
                self.labelled += 1
                self.correct += right
                bucket = self.accuracy[int(record.ts)]
                bucket[0] += right
                bucket[1] += 1

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
        return view
