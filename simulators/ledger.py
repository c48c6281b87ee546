"""Which records the controller counted, as ``(device_id, seq)``, against those the devices delivered.

Counts cannot tell one record lost and another counted twice on the same device from a
clean run; the seqs can. Each window summary the controller stores lists the seqs it
counts (``seq_ranges``, ingest schema 3); records sent whole are rows of the telemetry table.
Read through the controller's own data layer (SQLModel), on SQLite or PostgreSQL alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlmodel import Session, select

from cloud_controller.db import make_engine
from cloud_controller.models import Summary, Telemetry

Record = tuple[str, int]


@dataclass
class Ledger:
    #: device -> seq -> how many window summaries count it
    counted: dict[str, Counter[int]] = field(default_factory=dict)
    #: records counted by summaries that do not list their seqs (written before schema 3)
    unlisted: int = 0
    #: records stored whole
    whole: set[Record] = field(default_factory=set)

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counted.values()) + self.unlisted


def read_ledger(session: Session) -> Ledger:
    """Expand every stored summary's seq ranges into the multiset of records it counts."""
    ledger = Ledger()
    for device, body in session.exec(select(Summary.device_id, Summary.summary)):
        ranges = body.get("seq_ranges")
        if ranges is None:
            ledger.unlisted += int(body.get("count", 0))
            continue
        seqs = ledger.counted.setdefault(device, Counter())
        for low, high in ranges:
            seqs.update(range(low, high + 1))
    ledger.whole = {(d, int(s)) for d, s in session.exec(select(Telemetry.device_id, Telemetry.seq))}
    return ledger


def controller_ledger(database_url: str) -> Ledger:
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            return read_ledger(session)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Reconciliation:
    lost: list[Record]  # delivered by a site broker, counted by no summary
    doubled: list[Record]  # counted by more than one summary (each record listed once)
    unexpected: list[Record]  # counted, but no broker delivered it

    @staticmethod
    def examples(records: list[Record], limit: int = 5) -> list[str]:
        return [f"{device}#{seq}" for device, seq in records[:limit]]


def reconcile(delivered: Mapping[str, set[int]], ledger: Ledger) -> Reconciliation:
    """Compare the set the devices delivered with the multiset the controller counted."""
    lost: list[Record] = []
    doubled: list[Record] = []
    unexpected: list[Record] = []
    for device in sorted(set(delivered) | set(ledger.counted)):
        sent = delivered.get(device, set())
        counted = ledger.counted.get(device, Counter())
        lost += [(device, seq) for seq in sorted(sent) if not counted[seq]]
        doubled += [(device, seq) for seq, n in sorted(counted.items()) if n > 1]
        unexpected += [(device, seq) for seq in sorted(counted) if seq not in sent]
    return Reconciliation(lost, doubled, unexpected)
