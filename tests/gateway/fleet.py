"""Real edge agents in the test's process, streaming synthetic readings to a site broker."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.sources.synthetic import SyntheticSource


class Fleet:
    """``n`` agents on one loop, each with its own MQTT connection and outbox."""

    def __init__(
        self,
        workdir: Path,
        *,
        devices: int,
        broker_port: int,
        bundle: Path,
        key_file: Path,
        rate_hz: float = 2.0,
        readings: int = 40,
        anomaly_rate: float = 0.05,
        site: str = "site-a",
        first: int = 0,
    ) -> None:
        """``first``: the number of the first device (``{site}-dev-{first:03d}``), for a second fleet."""
        self.readings = readings
        self._outbox_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="outbox")
        self._infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self.agents: list[Agent] = []
        for i in range(first, first + devices):
            device = f"{site}-dev-{i:03d}"
            settings = load_settings(
                None,
                device_id=device,
                site=site,
                data_dir=str(workdir / device),
                model_dir=str(bundle),
                trusted_keys=[str(key_file)],
                source={"kind": "synthetic"},
                mqtt={
                    "port": broker_port,
                    "reconnect_min_s": 0.2,
                    "reconnect_max_s": 2.0,
                    "batch_max_records": 20,
                },
                inference={"executor": "inline", "micro_batch_max": 16},
            )
            source = SyntheticSource(rate_hz=rate_hz, seed=i, anomaly_rate=anomaly_rate, limit=readings)
            self.agents.append(
                Agent(
                    settings,
                    source=source,
                    outbox_executor=self._outbox_pool,
                    inference_executor=self._infer_pool,
                )
            )
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Fleet:
        self.tasks = [asyncio.create_task(a.run(), name=a.settings.device_id) for a in self.agents]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for agent in self.agents:
            agent.stop()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self._outbox_pool.shutdown(wait=False)
        self._infer_pool.shutdown(wait=False)

    def produced(self) -> int:
        return sum(a.outbox.stats.last_seq for a in self.agents)

    def drained(self) -> bool:
        """Every reading is a stored record and every outbox is empty: the broker has everything.

        A source that ended may still have its last readings in the agent's buffer, not yet records:
        hence the seq check (synthetic readings are never refused).
        """
        return all(
            a.source_done.is_set()
            and a.outbox.stats.last_seq >= self.readings
            and not a.outbox.stats.depth
            and not a.outbox.stats.pending
            for a in self.agents
        )

    def crashed(self) -> list[str]:
        return [
            t.get_name() for t in self.tasks if t.done() and not t.cancelled() and t.exception() is not None
        ]
