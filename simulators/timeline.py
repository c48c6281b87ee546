"""One sample a second of what the report plots: throughput, presence, model versions, queues."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulators.fleet import FleetRun


@dataclass
class Timeline:
    t: list[float] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)  # records the site brokers delivered, cumulative
    at_controller: list[int] = field(default_factory=list)  # records counted at the controller, cumulative
    online: list[int] = field(default_factory=list)  # devices whose retained state says online
    versions: list[dict[str, int]] = field(default_factory=list)  # online devices per model version
    queued: list[int] = field(default_factory=list)  # items in the gateways' upstream queues
    uplink_bytes: list[int] = field(default_factory=list)  # bytes gateways sent through the uplinks
    _last: dict[str, Any] = field(default_factory=lambda: {"records": 0, "online": 0, "versions": {}})

    async def sample(self, fleet: FleetRun) -> None:
        # The observer is another process: a busy one gives no answer, and the last one stands.
        stats = await fleet.observer.stats() or self._last
        self._last = stats
        stored = await asyncio.to_thread(fleet.controller.stored)
        queued = 0
        for site in fleet.sites:
            if site.gateway.alive():
                # A gateway being killed by a fault gives no sample now.
                with contextlib.suppress(Exception):
                    metrics = await asyncio.to_thread(site.gateway.metrics)
                    queued += int(metrics.get("edge_gateway_upstream_queue_items", 0))
        self.t.append(round(fleet.elapsed(), 2))
        self.delivered.append(stats["records"])
        self.at_controller.append(sum(s["summarised"] for s in stored.values()))
        self.online.append(stats["online"])
        self.versions.append(stats["versions"])
        self.queued.append(queued)
        self.uplink_bytes.append(sum(site.uplink.bytes_up for site in fleet.sites))

    def delivered_now(self) -> int:
        return self.delivered[-1] if self.delivered else 0

    def online_now(self) -> int:
        return self.online[-1] if self.online else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "delivered": self.delivered,
            "at_controller": self.at_controller,
            "online": self.online,
            "versions": self.versions,
            "queued": self.queued,
            "uplink_bytes": self.uplink_bytes,
        }
