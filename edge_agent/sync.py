"""Outbox -> MQTT: batches, QoS 1, ack-then-delete, reconnects, retained state, Last Will.

One connection at a time. Per connection a task group runs the sender, the receiver of
desired state, the state reporter and the event publisher; any `LinkError` tears the
group down and the loop reconnects after a jittered backoff. Records are sent again from
the oldest unacknowledged one after every reconnect: at-least-once delivery, made
exactly-once downstream by ``(device_id, seq)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

import msgpack

from edge_agent.config import MqttConfig
from edge_agent.exceptions import ConfigError, LinkError
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt_link import LastWill, LinkSettings, MqttLink
from edge_agent.outbox import Outbox, OutboxRow
from edge_agent.records import to_wire, wire_json
from fleet_protocol import (
    DesiredState,
    DeviceEvent,
    Encoding,
    Health,
    ProtocolError,
    ReportedState,
    TelemetryBatch,
    decode,
    desired_topic,
    encode,
    events_topic,
    labels_topic,
    state_topic,
    telemetry_topic,
)
from fleet_protocol.pacing import Backoff, ByteBudget, wait_event
from fleet_protocol.tls import TlsConfigError

log = logging.getLogger(__name__)

_EVENT_QUEUE = 256
#: How long acknowledged records wait to be deleted together. Never sent again meanwhile (they
#: are skipped by seq); after a kill -9 they are sent again, and stored once downstream.
_DELETE_EVERY_S = 0.1


#: Brokers this process has warned about: a simulator's thousand agents on one broker say it once.
_WARNED_PLAIN: set[tuple[str, int]] = set()


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    """The link's TLS context; without one, say at start that anyone on the network can pose as us."""
    if config.tls is None:
        if (config.host, config.port) not in _WARNED_PLAIN:
            _WARNED_PLAIN.add((config.host, config.port))
            log.warning(
                "MQTT to %s:%d is plain TCP without a client certificate: for a lab only (anyone on"
                " the network can read and publish as this device); set mqtt.tls for production",
                config.host,
                config.port,
            )
        return None
    try:
        return config.tls.context()
    except TlsConfigError as exc:
        raise ConfigError(f"mqtt.tls: {exc}") from None


class _SessionOver(Exception):
    """Raised inside a session's task group to end it on purpose (shutdown)."""


class Syncer:
    def __init__(
        self,
        *,
        device_id: str,
        site: str,
        config: MqttConfig,
        outbox: Outbox,
        metrics: AgentMetrics,
        report_state: Callable[[], ReportedState],
        on_desired: Callable[[DesiredState], Awaitable[None]],
        budget: ByteBudget | None = None,
        on_labels: Callable[[bytes], None] | None = None,
    ) -> None:
        self.device_id, self.site, self.config = device_id, site, config
        #: Delayed labels for this device's records (None: not subscribed to its labels topic).
        self._on_labels = on_labels
        self.outbox, self.metrics = outbox, metrics
        self._report_state = report_state
        self._on_desired = on_desired
        self.budget = budget
        self.encoding = config.encoding
        self._topics = {
            "telemetry": telemetry_topic(site, device_id),
            "state": state_topic(site, device_id),
            "desired": desired_topic(site, device_id),
            "events": events_topic(site, device_id),
            "labels": labels_topic(site, device_id),
        }
        offline = ReportedState(device_id=device_id, site=site, online=False, health=Health.UNKNOWN)
        self.link = MqttLink(
            LinkSettings(
                host=config.host,
                port=config.port,
                client_id=f"agent-{device_id}",
                username=config.username,
                password=config.password,
                keepalive_s=config.keepalive_s,
                will=LastWill(self._topics["state"], encode(offline), qos=1, retain=True),
                timeout_s=config.publish_timeout_s,
                max_inflight=max(20, config.max_inflight),
                tls=tls_context(config),
            )
        )
        #: Failed attempts since the last good connection (a device offline for days counts up).
        self.backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._events: asyncio.Queue[DeviceEvent] = asyncio.Queue(maxsize=_EVENT_QUEUE)
        self._state_changed = asyncio.Event()
        #: Records the broker acknowledged that are still in the outbox: deleted in batches by
        #: `_delete_acked`, so that a publish never waits for a delete, and never sent again.
        self._acked: set[int] = set()
        self._to_delete: list[int] = []
        self._acked_ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self.connected = asyncio.Event()

    # -- public API --------------------------------------------------------------------

    def emit(self, event: DeviceEvent) -> None:
        """Queue an event for the broker; when the queue is full the oldest is dropped."""
        if self._events.full():
            self._events.get_nowait()
            log.warning("event queue full: dropped the oldest event")
        self._events.put_nowait(event)

    def state_changed(self) -> None:
        """Ask for the reported state to be published now."""
        self._state_changed.set()

    async def stop(self) -> None:
        """Publish the offline state and disconnect cleanly (the Last Will is not sent)."""
        self._stopping.set()

    async def run(self) -> None:
        """Connect, sync, reconnect on failure, until `stop`."""
        deleter = asyncio.create_task(self._delete_acked(), name="outbox-delete")
        try:
            await self._connect_loop()
        finally:
            deleter.cancel()
            await asyncio.gather(deleter, return_exceptions=True)
            await self._delete_now()  # what the broker has must not be sent again after a restart

    async def _connect_loop(self) -> None:
        backoff = self.backoff
        while not self._stopping.is_set():
            try:
                async with self.link:
                    self.metrics.connects.inc()
                    self.metrics.connected.set(1)
                    self.connected.set()
                    backoff.reset()
                    log.info("connected to %s:%d", self.config.host, self.config.port)
                    await self._session()
            except* LinkError as group:
                self.metrics.link_errors.inc()
                # Once per doubling of the attempts: a device offline for days must not fill its log.
                if backoff.attempt & (backoff.attempt + 1) == 0:
                    log.warning(
                        "MQTT link: %s (attempt %d)",
                        "; ".join(str(e) for e in group.exceptions),
                        backoff.attempt + 1,
                    )
            except* _SessionOver:
                pass
            finally:
                self.metrics.connected.set(0)
                self.connected.clear()
            if self._stopping.is_set():
                break
            delay = backoff.next_delay()
            log.debug("reconnecting in %.3fs", delay)
            await wait_event(self._stopping, delay)

    # -- one connection ----------------------------------------------------------------

    async def _session(self) -> None:
        await self.link.subscribe(self._topics["desired"], qos=1)
        if self._on_labels is not None:
            # QoS 1 on a persistent session: labels published while the device is away wait for it.
            await self.link.subscribe(self._topics["labels"], qos=1)
        await self._publish_state()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._send_records())
            group.create_task(self._receive())
            group.create_task(self._report())
            group.create_task(self._send_events())
            group.create_task(self._until_stopped())

    async def _until_stopped(self) -> None:
        await self._stopping.wait()
        offline = self._report_state().model_copy(update={"online": False, "ts": time.time()})
        with contextlib.suppress(LinkError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self.link.publish(self._topics["state"], encode(offline), qos=1, retain=True)
        raise _SessionOver

    async def _send_records(self) -> None:
        cfg = self.config
        inflight = asyncio.Semaphore(cfg.max_inflight)
        sent_upto = 0  # after a reconnect, everything unacknowledged goes again
        async with asyncio.TaskGroup() as group:
            while True:
                rows = await self.outbox.read_after(
                    sent_upto, limit=cfg.batch_max_records, max_bytes=cfg.batch_max_bytes
                )
                if rows and self._acked:
                    unsent = [r for r in rows if r.seq not in self._acked]
                    if not unsent:
                        # All acknowledged already, waiting for their delete: look past them.
                        sent_upto = rows[-1].seq
                        continue
                    rows = unsent
                if not rows:
                    await self.outbox.wait_for_records()
                    continue
                sent_upto = rows[-1].seq
                payload = self._batch_payload(rows)
                if self.budget is not None:
                    await self.budget.take(len(payload))
                await inflight.acquire()
                group.create_task(self._publish_batch(payload, [r.seq for r in rows], inflight))
                if sent_upto >= self.outbox.stats.last_seq:
                    # All there is: wait for more rather than read nothing (half the reads of a
                    # device that sends as it reads).
                    await self.outbox.wait_for_records()

    async def _publish_batch(self, payload: bytes, seqs: list[int], inflight: asyncio.Semaphore) -> None:
        try:
            await self.link.publish(self._topics["telemetry"], payload, qos=1)
        finally:
            inflight.release()
        # Only now may the records leave the outbox: the broker has them.
        self._acked.update(seqs)
        self._to_delete.extend(seqs)
        self._acked_ready.set()
        self.metrics.records_sent.inc(len(seqs))
        self.metrics.bytes_sent.inc(len(payload))
        self.metrics.publishes.inc()

    async def _delete_acked(self) -> None:
        """Delete what the broker acknowledged, many batches per transaction."""
        while True:
            await self._acked_ready.wait()
            # Gather the acknowledgements of a while into one transaction: a delete per PUBACK
            # makes a draining backlog's outbox thread compete with the sync for the GIL.
            await asyncio.sleep(_DELETE_EVERY_S)
            self._acked_ready.clear()
            await self._delete_now()

    async def _delete_now(self) -> None:
        seqs, self._to_delete = self._to_delete, []
        if seqs:
            await self.outbox.ack(seqs)
            self._acked.difference_update(seqs)

    def _batch_payload(self, rows: list[OutboxRow]) -> bytes:
        # Records were built to the TelemetryRecord schema by the agent; re-validating
        # each one with pydantic here would cost more than the rest of the path.
        head = {
            "schema_version": TelemetryBatch.CURRENT_VERSION,
            "device_id": self.device_id,
            "site": self.site,
            "sent_at": time.time(),
        }
        if self.encoding is Encoding.JSON:
            return wire_json(head, [(row.seq, row.body) for row in rows])
        head["records"] = to_wire([(row.seq, row.value()) for row in rows])
        return msgpack.packb(head, use_bin_type=True)

    async def _receive(self) -> None:
        async for message in self.link.messages():
            if message.topic == self._topics["labels"] and self._on_labels is not None:
                self._on_labels(message.payload)  # parsed and judged by the agent: never raises here
                continue
            if message.topic != self._topics["desired"]:
                continue
            if not message.payload:
                continue  # a cleared retained message
            try:
                desired = decode(message.payload, DesiredState)
            except ProtocolError as exc:
                self.metrics.rejected_desired.labels(exc.reason).inc()
                log.warning("refused desired state: %s", exc)
                continue
            if desired.device_id != self.device_id:
                self.metrics.rejected_desired.labels("wrong_device").inc()
                log.warning("refused desired state for %s on my topic", desired.device_id)
                continue
            await self._on_desired(desired)

    async def _report(self) -> None:
        while True:
            await wait_event(self._state_changed, self.config.state_interval_s)
            self._state_changed.clear()
            await self._publish_state()

    async def _publish_state(self) -> None:
        state = self._report_state()
        await self.link.publish(self._topics["state"], encode(state), qos=1, retain=True)

    async def _send_events(self) -> None:
        while True:
            event = await self._events.get()
            try:
                await self.link.publish(self._topics["events"], encode(event), qos=1)
            except LinkError:
                # Keep it for the next connection, unless newer events filled the queue.
                if not self._events.full():
                    self._events.put_nowait(event)
                raise
