"""Per-gateway ingest rate limit: a token bucket of items per gateway token.

The bucket is `fleet_protocol.pacing.ByteBudget`, the one gateways and agents pace their own
uplink with, counting items instead of bytes. A batch larger than the burst goes through once its
bucket is full, as there, so that no batch the gateway may send is refused for good.

Buckets live in the controller process: behind a load balancer with N controllers a gateway may
ingest up to N times the rate, and a restart refills every bucket.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from fleet_protocol.ingest import IngestBatch
from fleet_protocol.pacing import ByteBudget


class IngestLimiter:
    """``admit(token_id, items)``: 0 when the batch may be stored now, else seconds to wait.

    Parameters
    ----------
    per_second, burst
        The average rate in items per second and the bucket's size, per gateway token.
    clock
        Monotonic seconds; tests pass a fake one and tick it.
    """

    def __init__(self, per_second: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second, self.burst, self._clock = per_second, burst, clock
        self._buckets: dict[int, ByteBudget] = {}
        # Ingest checks from worker threads: taking from a bucket is a read and a write.
        self._lock = threading.Lock()

    def admit(self, token_id: int, items: int) -> float:
        with self._lock:
            bucket = self._buckets.get(token_id)
            if bucket is None:
                bucket = ByteBudget(self.per_second * 3600, burst_bytes=self.burst, clock=self._clock)
                self._buckets[token_id] = bucket
            delay = bucket.delay_for(items)
            if delay <= 0:
                bucket.spend(items)
            return delay


def retry_after(delay_s: float) -> int:
    """``Retry-After`` in whole seconds, never 0: the bucket holds enough after that long."""
    return max(1, math.ceil(delay_s))


def batch_items(batch: IngestBatch) -> int:
    """What a batch costs: each item the controller stores, as the gateway counts them in a batch."""
    return (
        len(batch.records)
        + len(batch.devices)
        + len(batch.events)
        + len(batch.summaries)
        + len(batch.drift)
        + sum(len(d.labels) for d in batch.labels)
    )
