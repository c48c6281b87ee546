"""Stores labels, idempotent on ``(device_id, seq)``: the last ``labelled_at`` wins.

Labels come from a gateway's ingest batch (relayed from the site's labelling systems, or inline in
a telemetry record) and from ``POST /api/v1/labels``. A label sent again is ``unchanged``; a label
of another class with a ``labelled_at`` at least the stored one's replaces it (a correction); an
older one leaves the newer standing and also counts as ``unchanged``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from cloud_controller.label_models import RecordLabel
from cloud_controller.models import Device
from fleet_protocol.labels import DeviceLabels
from fleet_protocol.messages import TelemetryRecord

#: Rows per INSERT: 7 columns x 1000 stays well under PostgreSQL's 65535 bound parameters.
_CHUNK = 1000
#: ``source`` of a label a telemetry record carried itself.
INLINE = "inline"


@dataclass(frozen=True)
class Incoming:
    device_id: str
    seq: int
    label: int
    labelled_at: float
    source: str | None


@dataclass
class LabelCounts:
    stored: int = 0
    unchanged: int = 0
    #: Devices whose labels were refused: of another site (or, for the API, of no site at all).
    refused_devices: list[str] = field(default_factory=list)


def from_devices(devices: Iterable[DeviceLabels]) -> list[Incoming]:
    return [
        Incoming(d.device_id, item.seq, item.label, item.labelled_at, item.source)
        for d in devices
        for item in d.labels
    ]


def from_records(records: Iterable[TelemetryRecord]) -> list[Incoming]:
    """Labels records carry inline, labelled when the record was made (its ``ts``).

    A negative inline label (the record schema allows one) names no class: it is not a label.
    """
    return [
        Incoming(r.device_id, r.seq, r.label, max(r.ts, 0.0), INLINE)
        for r in records
        if r.label is not None and r.label >= 0
    ]


def store_labels(
    *, session: Session, site: str, labels: list[Incoming], now: float, known_devices_only: bool
) -> LabelCounts:
    """Upsert ``labels`` for devices of ``site`` in the caller's transaction (not committed here).

    A device registered at another site has its labels refused. A device not registered at all is
    refused when ``known_devices_only`` (a system outside the site names it), and otherwise stored
    under ``site`` (its gateway vouches for it, as for the records it sends before the device's state).
    """
    counts = LabelCounts()
    if not labels:
        return counts
    names = sorted({item.device_id for item in labels})
    sites = dict(session.exec(select(Device.id, Device.site_id).where(col(Device.id).in_(names))).all())
    refused = {name for name in names if sites.get(name, None if known_devices_only else site) != site}
    counts.refused_devices = sorted(refused)
    # One row per key, the latest labelled (the later in the list on a tie): one INSERT may not
    # touch a row twice.
    latest: dict[tuple[str, int], Incoming] = {}
    for item in labels:
        if item.device_id in refused:
            continue
        key = (item.device_id, item.seq)
        held = latest.get(key)
        if held is None or item.labelled_at >= held.labelled_at:
            latest[key] = item
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    rows = [
        {
            "device_id": item.device_id,
            "seq": item.seq,
            "label": item.label,
            "labelled_at": item.labelled_at,
            "received_at": now,
            "source": item.source,
            "site_id": site,
        }
        for item in latest.values()
    ]
    table = RecordLabel.__table__  # type: ignore[attr-defined]
    for start in range(0, len(rows), _CHUNK):
        statement = insert(RecordLabel).values(rows[start : start + _CHUNK])
        statement = statement.on_conflict_do_update(
            index_elements=["device_id", "seq"],
            set_={
                "label": statement.excluded.label,
                "labelled_at": statement.excluded.labelled_at,
                "received_at": statement.excluded.received_at,
                "source": statement.excluded.source,
                "site_id": statement.excluded.site_id,
            },
            # A correction: another class, labelled no earlier than the stored label.
            where=(table.c.label != statement.excluded.label)
            & (table.c.labelled_at <= statement.excluded.labelled_at),
        ).returning(table.c.seq)
        counts.stored += len(session.execute(statement).all())
    counts.unchanged = sum(1 for item in labels if item.device_id not in refused) - counts.stored
    return counts
