"""The upstream queue -> the controller's ingest API: in order, gzip, retried, within a budget.

One batch at a time, oldest first, so after a partition of any length the backlog goes up in
the order it came in. A batch keeps its id (from its first and last queue rows) across
retries, and the controller stores each ``(device_id, seq)`` once: a batch whose answer was
lost is sent again and counted as duplicates there. A batch the controller refuses for its
content is split until the one bad item is found, which goes to the dead letters; the rest
go up. Nothing leaves the queue before the controller answered 200.

Labels are queued one per row and go up grouped by device (schema version 4), in entries of at
most `MAX_LABELS` labels (a device with more gets several entries); a seq labelled twice within
one batch goes up once, with the later label (the controller keeps the last one sent anyway, and
one `DeviceLabels` may not name a seq twice).

A batch goes with the lowest schema version its content needs (4 with labels, 3 with summaries
listing their ``seq_ranges``, 2 with other summaries, else 1): a controller not yet upgraded to
the newest version still takes every batch that does not use it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time

from edge_gateway.config import UpstreamConfig
from edge_gateway.controller_client import ControllerClient
from edge_gateway.exceptions import UpstreamError
from edge_gateway.metrics import GatewayMetrics
from edge_gateway.store import GatewayStore, StoreError, UpstreamBatch
from fleet_protocol.labels import MAX_LABELS
from fleet_protocol.pacing import Backoff, ByteBudget

log = logging.getLogger(__name__)

_FIELDS = {"record": "records", "summary": "summaries", "drift": "drift", "event": "events"}
_LABEL = "label"


def ingest_body(batch: UpstreamBatch, *, site: str, gateway_id: str) -> bytes:
    """The `IngestBatch` JSON, spliced from the queued items' own JSON (no re-encoding)."""
    groups: dict[str, list[bytes]] = {name: [] for name in _FIELDS.values()}
    labels: list[bytes] = []
    for _, kind, body in batch.items:
        if kind == _LABEL:
            labels.append(body)
        else:
            groups[_FIELDS[kind]].append(body)
    groups["devices"] = [body for _, _, body in batch.devices]
    if labels:
        groups["labels"] = _labels_by_device(labels)
    version = 4 if labels else _summaries_version(groups["summaries"])
    batch_id = (
        f"{gateway_id}-{batch.first_id}-{batch.last_id}" if batch.items else f"{gateway_id}-s{time.time_ns()}"
    )
    head = {
        "schema_version": version,
        "site": site,
        "gateway_id": gateway_id,
        "batch_id": batch_id,
        "sent_at": time.time(),
    }
    parts = [json.dumps(head)[:-1].encode()]
    for name, bodies in groups.items():
        if bodies:
            parts.append(b',"' + name.encode() + b'":[' + b",".join(bodies) + b"]")
    return b"".join(parts) + b"}"


def _summaries_version(summaries: list[bytes]) -> int:
    """The lowest `IngestBatch` schema version that takes these summaries (1 when there are none)."""
    if not summaries:
        return 1
    if any(json.loads(body).get("seq_ranges") is not None for body in summaries):
        return 3
    return 2


def _labels_by_device(rows: list[bytes]) -> list[bytes]:
    """One-label `DeviceLabels` rows -> `DeviceLabels` per device of at most `MAX_LABELS` labels each.

    The later label of a seq is kept; a device with more than `MAX_LABELS` labels gets several
    entries (the controller stores labels per entry, and one entry may hold no more).
    """
    devices: dict[str, dict[int, dict[str, object]]] = {}
    for body in rows:
        item = json.loads(body)
        by_seq = devices.setdefault(item["device_id"], {})
        for label in item["labels"]:
            by_seq.pop(label["seq"], None)  # the later one wins, in the order it came
            by_seq[label["seq"]] = label
    out: list[bytes] = []
    for device, by_seq in devices.items():
        kept = list(by_seq.values())
        for start in range(0, len(kept), MAX_LABELS):
            entry = {"device_id": device, "labels": kept[start : start + MAX_LABELS]}
            out.append(json.dumps(entry, separators=(",", ":")).encode())
    return out


def label_count(batch: UpstreamBatch) -> int:
    """Label rows in a batch (one label each)."""
    return sum(1 for _, kind, _ in batch.items if kind == _LABEL)


class Uplink:
    def __init__(
        self,
        *,
        site: str,
        gateway_id: str,
        config: UpstreamConfig,
        store: GatewayStore,
        client: ControllerClient,
        metrics: GatewayMetrics,
    ) -> None:
        self.site, self.gateway_id, self.config = site, gateway_id, config
        self.store, self.client, self.metrics = store, client, metrics
        self.budget = ByteBudget(config.bandwidth_bytes_per_hour) if config.bandwidth_bytes_per_hour else None
        self.backoff = Backoff(config.retry_min_s, config.retry_max_s)
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._limit = config.max_records
        #: 429s with Retry-After since the controller last took a batch.
        self._told_to_wait = 0

    async def run(self) -> None:
        while True:
            try:
                batch = await self.store.next_batch(self._limit, self.config.max_bytes)
            except StoreError as exc:
                self.last_error = str(exc)
                log.error("%s: reading the queue again later", exc)
                await asyncio.sleep(self.backoff.next_delay())
                continue
            if batch is None:
                self.store.has_upstream.clear()
                await self.store.has_upstream.wait()
                # Let a batch fill: one request for many items is what saves the uplink.
                await asyncio.sleep(self.config.linger_s)
                continue
            await self._send(batch)

    async def _send(self, batch: UpstreamBatch) -> None:
        body = ingest_body(batch, site=self.site, gateway_id=self.gateway_id)
        compressed = await asyncio.to_thread(gzip.compress, body, self.config.compression)
        while True:
            if self.budget is not None:
                await self.budget.take(len(compressed))
            try:
                result = await self.client.ingest(compressed)
                break
            except UpstreamError as exc:
                self.last_error = str(exc)
                self.metrics.upstream_failures.labels(str(exc.status or "network")).inc()
                if not exc.retry:
                    await self._refused(batch, exc)
                    return
                # The same bytes go again: a backlog is not read and compressed anew per attempt.
                await self._wait_to_retry(exc)
        try:
            await self.store.sent(batch)
        except StoreError as exc:
            # The controller has the batch; sending it again is harmless (it is idempotent).
            log.error("%s: the batch will be sent again", exc)
            await asyncio.sleep(self.backoff.next_delay())
            return
        self._limit = min(self.config.max_records, self._limit * 2)
        self.backoff.reset()
        self._told_to_wait = 0
        self.last_success, self.last_error = time.time(), None
        self.metrics.upstream_batches.inc()
        self.metrics.upstream_items.inc(len(batch.items) + len(batch.devices))
        self.metrics.labels_forwarded.inc(label_count(batch))
        self.metrics.upstream_bytes.inc(len(compressed))
        self.metrics.upstream_raw_bytes.inc(len(body))
        self.metrics.upstream_last_success.set(self.last_success)
        log.debug("batch %s: %d new, %d duplicates", result.batch_id, result.accepted, result.duplicates)

    async def _wait_to_retry(self, exc: UpstreamError) -> None:
        if exc.retry_after is not None:
            await self._wait_as_told(exc, exc.retry_after)
            return
        attempt = self.backoff.attempt + 1
        delay = self.backoff.next_delay()
        # Once per doubling of the attempts: a cloud link down for days must not fill the log.
        if attempt & (attempt - 1) == 0:
            log.warning(
                "%s; attempt %d, retrying in %.1fs (%d items wait)", exc, attempt, delay, self.store.depth
            )
        await asyncio.sleep(delay)

    async def _wait_as_told(self, exc: UpstreamError, retry_after: float) -> None:
        """The controller said how long to wait (429: over its rate limit): that long, and a little more.

        The batch stays queued and goes again as it is. The backoff does not grow: the link works,
        the controller is pacing this gateway. The jitter (up to a tenth, at most a second) keeps
        gateways refused together from coming back together.
        """
        self._told_to_wait += 1
        delay = retry_after + self.backoff.rng.uniform(0.0, min(1.0, retry_after / 10))
        if self._told_to_wait & (self._told_to_wait - 1) == 0:
            log.warning(
                "%s; told to wait %d times, sending the same batch again in %.1fs (%d items wait)",
                exc,
                self._told_to_wait,
                delay,
                self.store.depth,
            )
        await asyncio.sleep(delay)

    async def _refused(self, batch: UpstreamBatch, exc: UpstreamError) -> None:
        """The controller refused the batch for its content: halve it, or dead-letter its one item."""
        count = len(batch.items) + len(batch.devices)
        if count > 1:
            self._limit = max(1, count // 2)
            log.warning("%s; sending in batches of %d to find the refused item", exc, self._limit)
            return
        log.error("%s; the item goes to the dead letters", exc)
        self.metrics.upstream_refused.inc(count)
        try:
            await self.store.refused(batch, f"refused_{exc.status}", str(exc))
        except StoreError as error:
            log.error("%s: trying again later", error)
            await asyncio.sleep(self.backoff.next_delay())

    def health(self) -> dict[str, object]:
        return {
            "queue_items": self.store.depth,
            "queue_bytes": self.store.bytes,
            "last_success": self.last_success,
            "last_error": self.last_error,
        }
