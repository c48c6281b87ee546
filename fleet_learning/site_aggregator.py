"""Hierarchical FL: one update per site per round, aggregated where the site's devices are.

Two forms:
- deployed (``gateway_round``): the gateway is a SuperNode of the cloud and runs its site's round
  on a SuperLink of its own; the update that leaves the site is computed at the gateway;
- emulated (``FederatedConfig.hierarchical``, here): in one ServerApp, device replies are grouped by
  the ``site`` they report and folded by :class:`SiteAggregator` before the cloud strategy sees
  them; the bytes a gateway would send upstream are counted, but device updates did reach the
  ServerApp's process. The simulation engine has no gateways, so this is how it compares flat and
  hierarchical on one fleet.

:class:`SiteAggregator` is plain numpy: a running example-weighted sum of device updates, one
model's worth of memory whatever the number of devices."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fleet_learning import messages as m


@dataclass
class SiteUpdate:
    """What a site sends upstream in one round."""

    site: str
    arrays: dict[str, np.ndarray]
    num_examples: int
    devices: int
    metrics: dict[str, float]


@dataclass
class SiteAggregator:
    """Example-weighted running mean of one site's device updates."""

    site: str
    _sums: dict[str, np.ndarray] = field(default_factory=dict)
    _metric_sums: dict[str, float] = field(default_factory=dict)
    _examples: int = 0
    _devices: int = 0

    def add(self, arrays: dict[str, np.ndarray], num_examples: int, metrics: dict[str, float]) -> None:
        """Fold one device's update in; a device with no examples carries no weight."""
        if num_examples <= 0:
            return
        if self._sums and set(arrays) != set(self._sums):
            raise ValueError(f"site {self.site}: an update's arrays do not match the others'")
        for name, value in arrays.items():
            weighted = value.astype(np.float64) * num_examples
            self._sums[name] = self._sums[name] + weighted if name in self._sums else weighted
        for name, value in metrics.items():
            self._metric_sums[name] = self._metric_sums.get(name, 0.0) + float(value) * num_examples
        self._examples += num_examples
        self._devices += 1

    def result(self) -> SiteUpdate | None:
        """The site's update, or None if no device contributed."""
        if not self._examples:
            return None
        n = self._examples
        return SiteUpdate(
            site=self.site,
            arrays={k: (v / n).astype(np.float32) for k, v in self._sums.items()},
            num_examples=n,
            devices=self._devices,
            metrics={k: v / n for k, v in self._metric_sums.items()},
        )


def aggregate_by_site(replies: list[Message]) -> list[Message]:
    """One synthetic reply per site from the device replies (all finite, none declined)."""
    aggregators: dict[str, SiteAggregator] = {}
    first: dict[str, Message] = {}
    for reply in replies:
        site = m.site_of(reply)
        aggregator = aggregators.setdefault(site, SiteAggregator(site))
        first.setdefault(site, reply)
        metrics = dict(reply.content[m.METRICS])
        examples = int(metrics.pop(m.NUM_EXAMPLES))
        arrays = {k: v.numpy() for k, v in reply.content[m.ARRAYS].items()}
        aggregator.add(arrays, examples, {k: float(v) for k, v in metrics.items()})  # type: ignore[arg-type]
    site_replies = []
    for site, aggregator in aggregators.items():
        update = aggregator.result()
        if update is None:
            continue
        content = RecordDict(
            {
                m.ARRAYS: ArrayRecord({k: Array(v) for k, v in update.arrays.items()}),
                m.METRICS: MetricRecord({m.NUM_EXAMPLES: update.num_examples, **update.metrics}),
                m.NODE: ConfigRecord({"site": update.site, "devices": update.devices}),
            }
        )
        # Metadata borrowed from one of the site's replies: the strategy only reads the content.
        site_replies.append(Message(content, reply_to=first[site]))
    return site_replies
