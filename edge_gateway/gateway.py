"""The site gateway: broker -> validate, dedup, reduce -> store -> ack; store -> cloud; desired -> devices.

Tasks on one loop: the MQTT reader (reconnects with backoff), the processor (a batch of
whatever messages are waiting -> one store transaction -> acknowledgements), the uplink,
the desired-state relay, the managed broker's watcher, and the HTTP server. Only the
processor changes the in-memory state, so none of it needs a lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from edge_gateway.broker import ManagedBroker, reach_host
from edge_gateway.broker_acl import SiteIdentities, TlsListener, acl, read_devices_file
from edge_gateway.bundles import BundleCache
from edge_gateway.config import BrokerConfig, GatewaySettings
from edge_gateway.controller_client import ControllerClient
from edge_gateway.desired import DesiredRelay
from edge_gateway.exceptions import ConfigError, LinkError
from edge_gateway.metrics import GatewayMetrics
from edge_gateway.mqtt_link import Message, MqttLink
from edge_gateway.pipeline import Pipeline
from edge_gateway.site_http import make_app, serve
from edge_gateway.store import GatewayStore, StoreError
from edge_gateway.uplink import Uplink
from fleet_protocol import site_subscription
from fleet_protocol.pacing import Backoff
from fleet_protocol.signing import load_public_key
from fleet_protocol.tls import TlsConfigError

log = logging.getLogger(__name__)

_STORE_RETRY_S = 2.0
_TICK_S = 1.0
_LINGER_S = 0.005


def managed_broker(settings: GatewaySettings) -> ManagedBroker:
    """The site's Mosquitto: with ``broker.serve_tls``, for fleet certificates only, under an ACL."""
    broker, serve = settings.broker, settings.broker.serve_tls
    workdir = settings.data_dir / "broker"
    if serve is None:
        return ManagedBroker(workdir, listen=broker.listen, port=broker.port)
    identities = SiteIdentities(
        site=settings.site,
        gateway=settings.gateway_id,
        labellers=tuple(serve.labellers),
        observers=tuple(serve.observers),
        extra=tuple(serve.acl_extra),
    )
    devices_file = serve.devices_file

    def site_acl() -> str:
        if devices_file is None:
            return acl(identities)
        return acl(dataclasses.replace(identities, devices=read_devices_file(devices_file)))

    try:
        first = site_acl()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"broker.serve_tls.devices_file cannot be used: {exc}") from None
    listener = TlsListener(serve.cert_file, serve.key_file, serve.ca_file, serve.crl_file)
    return ManagedBroker(
        workdir,
        listen=broker.listen,
        port=broker.port,
        tls=listener,
        acl=first,
        crl_check_s=serve.crl_check_s,
        acl_watch=devices_file,
        acl_refresh=site_acl if devices_file is not None else None,
    )


def link_tls(broker: BrokerConfig) -> ssl.SSLContext | None:
    """The gateway's own TLS context; without one, say at start that the site broker is open."""
    if broker.tls is None:
        log.warning(
            "the site broker link is plain TCP without certificates: for a lab only (any client on"
            " the site network can publish as any device); set broker.tls and broker.serve_tls"
        )
        return None
    try:
        return broker.tls.context()
    except TlsConfigError as exc:
        raise ConfigError(f"broker.tls: {exc}") from None


class Gateway:
    def __init__(self, settings: GatewaySettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = GatewayMetrics()
        self.store = GatewayStore(
            settings.data_dir / "gateway.sqlite",
            dead_letters_max=settings.dead_letters_max,
            max_bytes=settings.store_max_bytes,
        )
        self.pipeline = Pipeline(settings, self.metrics)
        self.broker: ManagedBroker | None = None
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._retry: list[Message] = []
        broker = settings.broker
        if broker.host is None:
            self.broker = managed_broker(settings)
            self.broker.prime = self._open_session
        self._link_tls = link_tls(broker)
        # The broker sends no more than its in-flight limit before we acknowledge, which bounds
        # this queue.
        self.link = self._broker_link(
            broker.host or reach_host(broker.listen), broker.port, on_message=self._queue_message
        )
        up = settings.upstream
        self.client = (
            ControllerClient(
                up.url,
                up.token,
                timeout_s=up.timeout_s,
                ca_file=up.ca_file,
                cert_file=up.cert_file,
                key_file=up.key_file,
            )
            if up.url
            else None
        )
        self.cache = BundleCache(
            settings.data_dir / "bundles",
            self.client,
            self.metrics,
            trusted_keys=[load_public_key(k) for k in settings.trusted_keys],
            on_reference=self.pipeline.set_reference,
        )
        self.uplink: Uplink | None = None
        self.relay: DesiredRelay | None = None
        if self.client is not None:
            self.uplink = Uplink(
                site=settings.site,
                gateway_id=settings.gateway_id,
                config=up,
                store=self.store,
                client=self.client,
                metrics=self.metrics,
            )
            self.relay = DesiredRelay(
                site=settings.site,
                client=self.client,
                link=self.link,
                cache=self.cache,
                public_url=settings.public_url,
                poll_s=up.desired_poll_s,
                metrics=self.metrics,
            )
        self.http_port: int | None = None
        self._store_ok = True
        self._stop = asyncio.Event()
        self.started = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def _broker_link(self, host: str, port: int, **options: Any) -> MqttLink:
        """A connection to the site broker as this gateway (its client id, credentials, TLS)."""
        broker = self.settings.broker
        return MqttLink(
            host,
            port,
            client_id=broker.client_id or f"gateway-{self.settings.gateway_id}",
            username=broker.username,
            password=broker.password,
            keepalive_s=broker.keepalive_s,
            tls=self._link_tls,
            **options,
        )

    async def _open_session(self, host: str, port: int) -> None:
        """Open this gateway's persistent session, subscribed, on a managed broker's listener of
        its own before the site listener opens (`ManagedBroker._prime`)."""
        async with self._broker_link(host, port) as link:
            await link.subscribe(site_subscription(self.settings.site), qos=1)

    async def run(self) -> None:
        self.pipeline.restore(await self.store.open())
        self._gauge_queue()
        runner = None
        tasks: list[asyncio.Task[Any]] = []
        try:
            if self.broker is not None:
                await self.broker.start()
                tasks.append(asyncio.create_task(self._watch_broker(), name="broker"))
            await self.cache.start()
            app = make_app(self.cache, self.metrics, self.health)
            runner, self.http_port = await serve(app, self.settings.http.host, self.settings.http.port)
            await self.link.subscribe(site_subscription(self.settings.site), qos=1)
            tasks.append(asyncio.create_task(self._read_mqtt(), name="mqtt"))
            tasks.append(asyncio.create_task(self._process(), name="process"))
            if self.uplink is not None and self.relay is not None:
                tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))
                tasks.append(asyncio.create_task(self.relay.run(), name="desired"))
            log.info(
                "gateway %s of site %s: broker %s:%d, http :%d, upstream %s",
                self.settings.gateway_id,
                self.settings.site,
                self.link.host,
                self.link.port,
                self.http_port,
                self.settings.upstream.url or "none",
            )
            self.started.set()
            await self._until_stopped(tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if runner is not None:
                await runner.cleanup()
            if self.client is not None:
                await self.client.close()
            await self.store.close()
            if self.broker is not None:
                await self.broker.stop()

    async def _until_stopped(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Return on `stop`; re-raise the first task that failed."""
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({stop, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            stop.cancel()

    # -- MQTT in --------------------------------------------------------------------------

    async def _read_mqtt(self) -> None:
        broker = self.settings.broker
        backoff = Backoff(broker.reconnect_min_s, broker.reconnect_max_s)
        while True:
            try:
                async with self.link:
                    self.metrics.mqtt_connects.inc()
                    self.metrics.mqtt_connected.set(1)
                    backoff.reset()
                    log.info("connected to broker %s:%d", self.link.host, self.link.port)
                    await self.link.until_disconnected()
            except LinkError as exc:
                self.metrics.mqtt_link_errors.inc()
                # Once per doubling of the attempts: a broker down for days must not fill the log.
                if backoff.attempt & (backoff.attempt + 1) == 0:
                    log.warning("broker link: %s (attempt %d)", exc, backoff.attempt + 1)
            finally:
                self.metrics.mqtt_connected.set(0)
            await asyncio.sleep(backoff.next_delay())

    def _queue_message(self, message: Message) -> None:
        self._queue.put_nowait(message)

    async def _process(self) -> None:
        limit = self.settings.batch_messages
        while True:
            batch = await self._take(limit)
            changes = self.pipeline.process(batch, self.clock())
            started = time.perf_counter()
            try:
                await self.store.commit(changes)
            except StoreError as exc:
                # Nothing is acknowledged: the messages stay with the broker, and in our hands
                # for the next try, in smaller batches in case this one can never fit.
                self._store_ok = False
                self.metrics.store_errors.inc()
                self._retry = batch + self._retry
                limit = max(1, len(batch) // 2)
                log.error(
                    "%s: %d messages wait unacknowledged; retrying in %.0fs", exc, len(batch), _STORE_RETRY_S
                )
                await asyncio.sleep(_STORE_RETRY_S)
                # The failed transaction left memory ahead of the store: start again from the store.
                await self._restore_from_store()
                continue
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            self._store_ok = True
            limit = min(self.settings.batch_messages, limit * 2)
            self._gauge_queue()
            # Only now: what the broker forgets, the store has.
            self.link.ack(batch)

    async def _restore_from_store(self) -> None:
        """Rebuild the pipeline from what the store committed; process nothing until that worked.

        Going on with memory ahead of the store would drop the broker's redelivery of the
        failed batch as duplicates of records that were never committed.
        """
        while True:
            try:
                self.pipeline.restore(await self.store.snapshot())
                return
            except StoreError as exc:
                log.error("%s: cannot reload the committed state; retrying in %.0fs", exc, _STORE_RETRY_S)
                await asyncio.sleep(_STORE_RETRY_S)

    async def _take(self, limit: int) -> list[Message]:
        """Messages to process: those of a failed commit first, then whatever is waiting."""
        batch, self._retry = self._retry[:limit], self._retry[limit:]
        if not batch:
            try:
                async with asyncio.timeout(_TICK_S):
                    batch = [await self._queue.get()]
            except TimeoutError:
                return []  # a tick: windows may be due
        if self._queue.qsize() < limit:
            # A moment for more to arrive: a transaction (and its acks) for many messages costs
            # hardly more than for one.
            await asyncio.sleep(_LINGER_S)
        while len(batch) < limit and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    def _gauge_queue(self) -> None:
        self.metrics.queue_depth.set(self.store.depth)
        self.metrics.queue_bytes.set(self.store.bytes)

    # -- the rest -------------------------------------------------------------------------

    async def _watch_broker(self) -> None:
        assert self.broker is not None
        before = self.broker.restarts
        watcher = asyncio.create_task(self.broker.run())
        try:
            while not watcher.done():
                await asyncio.sleep(1.0)
                self.metrics.broker_restarts.inc(self.broker.restarts - before)
                before = self.broker.restarts
        finally:
            watcher.cancel()

    def health(self) -> tuple[bool, dict[str, object]]:
        online = sum(1 for s in self.pipeline.devices.values() if s.online)
        detail: dict[str, object] = {
            "gateway_id": self.settings.gateway_id,
            "site": self.settings.site,
            "mqtt_connected": self.link.connected,
            "store_ok": self._store_ok,
            "devices": len(self.pipeline.devices),
            "devices_online": online,
            "upstream": self.uplink.health() if self.uplink else None,
            "desired_error": self.relay.last_error if self.relay else None,
        }
        return self.link.connected and self._store_ok, detail
