"""What the gateway does with a batch of MQTT messages, as one set of `Changes` for the store.

validate -> dedup on (device_id, seq) -> window summaries and drift statistics -> the records
that go up whole -> upstream queue; state -> presence; events -> upstream queue; labels -> the
upstream queue, one row per label (not deduplicated: the controller keeps the last one sent, so
a resend is harmless); anything bad -> dead letters. Pure in-memory work: the caller commits
the changes, then acknowledges the messages; when a commit fails it rebuilds this from the
store (`restore`) and tries again.
"""

from __future__ import annotations

import logging
from collections import Counter

from edge_gateway.config import GatewaySettings
from edge_gateway.dedup import DedupWindow
from edge_gateway.drift import PREFIX as DRIFT_PREFIX
from edge_gateway.drift import DriftWindows
from edge_gateway.filters import Reducer
from edge_gateway.metrics import GatewayMetrics
from edge_gateway.mqtt_link import Message
from edge_gateway.store import Changes, Snapshot
from edge_gateway.summaries import DeviceWindows, feature_matrix
from edge_gateway.validate import Rejection, validate
from fleet_protocol import (
    DeviceEvent,
    DriftReference,
    LabelBatch,
    ReportedState,
    TelemetryBatch,
    TelemetryRecord,
    TopicKind,
    decode,
)

log = logging.getLogger(__name__)

#: Fields of a reported state whose change goes up at once; others wait for the refresh.
_SIGNIFICANT = (
    "online",
    "health",
    "reason",
    "model_id",
    "model_version",
    "runtime",
    "desired_revision",
    "agent_version",
    "evicted",
    "model_reason",
)


def _update_step(state: ReportedState) -> tuple[str, str, str, str | None] | None:
    """Where the device's update stands: a new step (downloading, verified, shadow, ...) or another
    update goes up at once, so the rollout engine sees it; the shadow figures ride with the refresh."""
    ota = state.ota
    return None if ota is None else (ota.state.value, ota.model_id, ota.version, ota.rollout_id)


class Pipeline:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.reducer = Reducer(settings.device_classes)
        self.dedup = DedupWindow(settings.dedup_window)
        self.windows = DeviceWindows()
        self.drift = DriftWindows(settings.drift_window_s)
        self.devices: dict[str, ReportedState] = {}
        self._state_sent_at: dict[str, float] = {}

    def restore(self, snapshot: Snapshot) -> None:
        """Rebuild the in-memory state from what the store committed."""
        self.dedup = DedupWindow(self.settings.dedup_window)
        for device, hwm, bits in snapshot.dedup:
            self.dedup.load(device, hwm, bits)
        references = self.drift.references
        self.windows = DeviceWindows()
        self.drift = DriftWindows(self.settings.drift_window_s)
        self.drift.references = references
        for key, body in snapshot.windows:
            (self.drift if key.startswith(DRIFT_PREFIX) else self.windows).load(key, body)
        self.devices = {}
        for device, body in snapshot.devices.items():
            try:
                self.devices[device] = decode(body, ReportedState)
            except ValueError:
                log.warning("stored state of %s is unreadable: dropped", device)
        self._count_devices()

    def set_reference(self, model_id: str, version: str, reference: DriftReference) -> None:
        self.drift.set_reference(model_id, version, reference)

    # -- one batch ----------------------------------------------------------------------

    def process(self, messages: list[Message], now: float) -> Changes:
        changes = Changes()
        kinds: Counter[str] = Counter()
        new: list[TelemetryRecord] = []
        chunks: list[tuple[list[TelemetryRecord], float, bool, list[bool]]] = []
        for message in messages:
            parsed = validate(message.topic, message.payload, self.settings.site)
            if parsed is None:
                kinds["ignored"] += 1
            elif isinstance(parsed, Rejection):
                self.metrics.rejected.labels(parsed.reason).inc()
                if message.topic.endswith("/" + TopicKind.LABELS.value):
                    self.metrics.label_messages_rejected.labels(parsed.reason).inc()
                changes.dead_letters.append(
                    (now, message.topic, parsed.reason, parsed.detail, message.payload)
                )
            elif isinstance(parsed, TelemetryBatch):
                kinds["telemetry"] += 1
                self._telemetry(parsed, changes, new, chunks)
            elif isinstance(parsed, ReportedState):
                kinds["state"] += 1
                self._state(parsed, changes, now)
            elif isinstance(parsed, LabelBatch):
                kinds["labels"] += 1
                self._labels(parsed, changes)
            else:
                kinds["event"] += 1
                self._event(parsed, changes)
        # Counted and summarised once per batch of messages: per record it costs more than the rest.
        if new:
            # One float matrix of all the features, for the window summaries and drift alike.
            features = feature_matrix(new)
            self.windows.add(chunks, now, features)
            self.drift.add(new, now, features)
            self.metrics.records.inc(len(new))
            self.metrics.anomalies.inc([r.anomaly for r in new].count(True))
            self.metrics.forwarded.inc(sum(sum(c[3]) for c in chunks))
        for kind, count in kinds.items():
            self.metrics.messages.labels(kind).inc(count)
        self.metrics.bytes_in.inc(sum(len(m.payload) for m in messages))
        self.tick(now, changes)
        return changes

    def _telemetry(
        self,
        batch: TelemetryBatch,
        changes: Changes,
        new: list[TelemetryRecord],
        chunks: list[tuple[list[TelemetryRecord], float, bool, list[bool]]],
    ) -> None:
        records = batch.records
        # Every record of a batch is from its device (validated).
        seen = self.dedup.check_many(batch.device_id, [r.seq for r in records])
        fresh = records if all(seen) else [r for r, new_seq in zip(records, seen, strict=True) if new_seq]
        if len(fresh) < len(records):
            self.metrics.duplicates.inc(len(records) - len(fresh))
        if not fresh:
            return
        model_id = fresh[0].model_id
        if all(r.model_id == model_id for r in fresh):
            cls = self.reducer.class_for(batch.device_id, model_id)
            keep = self.reducer.forward_many(cls, fresh)
            chunks.append((fresh, cls.window_s, cls.class_means, keep))
        else:
            keep = []
            for record in fresh:
                cls = self.reducer.class_for(record.device_id, record.model_id)
                keep.append(self.reducer.forward(cls, record))
                chunks.append(([record], cls.window_s, cls.class_means, keep[-1:]))
        for record, whole in zip(fresh, keep, strict=True):
            if whole:
                changes.upstream.append(("record", record.model_dump_json(exclude_none=True).encode()))
        new.extend(fresh)

    def _state(self, state: ReportedState, changes: Changes, now: float) -> None:
        before = self.devices.get(state.device_id)
        self.devices[state.device_id] = state
        significant = (
            before is None
            or any(getattr(before, f) != getattr(state, f) for f in _SIGNIFICANT)
            or _update_step(before) != _update_step(state)
        )
        # Unchanged states still go up now and then: the controller's "last seen" moves with them.
        if (
            significant
            or now - self._state_sent_at.get(state.device_id, 0.0) >= self.settings.upstream.state_refresh_s
        ):
            changes.devices[state.device_id] = state.model_dump_json(exclude_none=True).encode()
            self._state_sent_at[state.device_id] = now
        if before is None or before.online != state.online:
            self._count_devices()

    def _labels(self, batch: LabelBatch, changes: Changes) -> None:
        # One queue row per label: a batch of the uplink then counts labels, not messages (an
        # ingest batch takes at most MAX_INGEST_RECORDS of them), and halving a refused batch
        # narrows down to the one label the controller refused. Each row is a valid
        # `DeviceLabels` of its own; the uplink groups them by device.
        head = b'{"device_id":"' + batch.device_id.encode() + b'","labels":['
        for label in batch.labels:
            body = head + label.model_dump_json(exclude_none=True).encode() + b"]}"
            changes.upstream.append(("label", body))
        self.metrics.labels_received.inc(len(batch.labels))

    def _event(self, event: DeviceEvent, changes: Changes) -> None:
        self.metrics.events.inc()
        changes.upstream.append(("event", event.model_dump_json(exclude_none=True).encode()))

    # -- time ---------------------------------------------------------------------------

    def tick(self, now: float, changes: Changes) -> None:
        """Close the windows that are due, and collect what changed for the store."""
        for summary in self.windows.close_due(now, self.drift.feature_names()):
            changes.upstream.append(("summary", summary.model_dump_json(exclude_none=True).encode()))
            self.metrics.summaries.inc()
        for drift in self.drift.close_due(now):
            changes.upstream.append(("drift", drift.model_dump_json(exclude_none=True).encode()))
            self.metrics.drift.inc()
        changes.dedup.update(self.dedup.take_dirty())
        for windows in (self.windows, self.drift):
            upserts, closed = windows.take_changes()
            changes.windows.update(upserts)
            changes.windows_closed.extend(closed)
        if self.dedup.stale:
            self.metrics.stale.inc(self.dedup.stale)
            self.dedup.stale = 0

    def _count_devices(self) -> None:
        online = sum(1 for s in self.devices.values() if s.online)
        self.metrics.devices.labels("online").set(online)
        self.metrics.devices.labels("offline").set(len(self.devices) - online)
