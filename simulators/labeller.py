"""A simulated labelling system: the truth of a share of the records, published late on the site broker.

A line-side inspection station labels some of what a machine made, minutes later. This one
labels a ``share`` of each device's records, chosen by a hash of ``(device, seq)`` (the same
records on every run and after a restart), ``delay_s`` after the record was stored, and
publishes them as `LabelBatch`es on ``fleet/{site}/{device}/labels`` (QoS 1), where the device
(its training buffer) and the site gateway (upstream to the controller) both read them.

Where the truth comes from: the agents of a host process run in that process, and each tells
the host the seqs its records got with each reading's truth (`edge_agent.agent.Agent`'s
``on_stored``). The truth is what the sensor knew when it read, so it follows concept drift
(`SyntheticSource.relabel`). Labels still waiting when the process is killed -9 are lost, as
a labelling station's unsent work would be; the count says what was published.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import zlib
from collections import defaultdict

from edge_agent.exceptions import LinkError
from edge_agent.mqtt_link import LinkSettings, MqttLink
from edge_agent.training_buffer import Samples
from fleet_protocol import LabelBatch, encode, labels_topic
from fleet_protocol.labels import MAX_LABELS, Label
from fleet_protocol.pacing import Backoff
from fleet_protocol.tls import MqttTls

log = logging.getLogger(__name__)

SOURCE = "sim-labeller"
#: How often due labels are gathered and published: one message per device per turn.
_TICK_S = 0.5


def chosen(device: str, seq: int, share: float) -> bool:
    """Whether the record ``(device, seq)`` gets a label: the same answer on every run.

    The same hash as the gateway's sampling (`edge_gateway.config.DeviceClass.sample_rate`): with
    a sample rate of at least ``share``, every labelled record also goes up whole, and the
    controller can join each label with its record (its accuracy and training data need both).
    """
    return zlib.crc32(f"{device}:{seq}".encode()) / 2**32 < share


class Labeller:
    """Labels of the records of one site's devices, published on that site's broker after a delay."""

    def __init__(
        self,
        *,
        site: str,
        host: str,
        port: int,
        share: float,
        delay_s: float,
        client_id: str,
        tls: dict[str, str] | None = None,
    ) -> None:
        self.site, self.share, self.delay_s = site, share, delay_s
        context = MqttTls.model_validate(tls).context() if tls else None
        self.link = MqttLink(
            LinkSettings(host=host, port=port, client_id=client_id, clean_session=True, tls=context)
        )
        #: (due, device, seq, truth), soonest first.
        self._due: list[tuple[float, str, int, int]] = []
        self.scheduled = 0
        self.published = 0
        self._task: asyncio.Task[None] | None = None

    def observe(self, device: str, first_seq: int, samples: Samples) -> None:
        """An agent stored records ``first_seq``...: schedule labels for the chosen ones."""
        due = time.monotonic() + self.delay_s
        for seq, truth in enumerate(samples.truth, start=first_seq):
            if truth is not None and chosen(device, seq, self.share):
                heapq.heappush(self._due, (due, device, seq, truth))
                self.scheduled += 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"labeller-{self.site}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @property
    def waiting(self) -> int:
        return len(self._due)

    async def _run(self) -> None:
        backoff = Backoff(0.2, 3.0)
        while True:
            try:
                async with self.link:
                    backoff.reset()
                    while True:
                        await self._publish_due()
                        await asyncio.sleep(_TICK_S)
            except LinkError as exc:
                log.debug("labeller of %s: %s", self.site, exc)
            await asyncio.sleep(backoff.next_delay())

    async def _publish_due(self) -> None:
        now = time.monotonic()
        by_device: dict[str, list[tuple[int, int]]] = defaultdict(list)
        while self._due and self._due[0][0] <= now:
            _, device, seq, truth = heapq.heappop(self._due)
            by_device[device].append((seq, truth))
        parts = [
            (device, items[i : i + MAX_LABELS])
            for device, items in by_device.items()
            for i in range(0, len(items), MAX_LABELS)
        ]
        for index, (device, part) in enumerate(parts):
            labelled_at = time.time()
            batch = LabelBatch(
                device_id=device,
                site=self.site,
                labels=[Label(seq=s, label=t, labelled_at=labelled_at, source=SOURCE) for s, t in part],
            )
            try:
                await self.link.publish(labels_topic(self.site, device), encode(batch), qos=1)
            except LinkError:
                # What did not go back in the queue, due now: it goes once the broker is back.
                for other, rest in parts[index:]:
                    for seq, truth in rest:
                        heapq.heappush(self._due, (now, other, seq, truth))
                raise
            self.published += len(part)
