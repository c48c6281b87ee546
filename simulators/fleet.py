"""A running fleet: per site a Mosquitto, an uplink proxy and an `edge-gateway`; devices that are real agents.

What events act on: `sites_for` picks sites, `devices_of` their devices, and agents can be
stopped, started again (a reboot: same id, same outbox) and added while the fleet runs.
Every virtual device is a real `edge_agent.Agent` with its own MQTT connection and SQLite
outbox; all share one event loop and two small thread pools. What the brokers deliver is
followed by the observer, a process of its own (`simulators.observer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edge_agent.agent import Agent
from edge_agent.config import load_settings
from simulators.brokers import SiteBroker
from simulators.controller import ControllerProcess
from simulators.gateways import GatewayProcess
from simulators.lag import FleetPace
from simulators.netproxy import FaultyLink
from simulators.observer_process import ObserverProcess
from simulators.paced_source import PacedSource
from simulators.scenario import Scenario, device_class

log = logging.getLogger(__name__)


@dataclass
class Site:
    index: int
    name: str
    broker: SiteBroker
    uplink: FaultyLink
    gateway: GatewayProcess
    devices: list[str] = field(default_factory=list)
    drift_shift: float = 0.0
    relabel: dict[int, int] = field(default_factory=dict)


class FleetRun:
    def __init__(
        self,
        scenario: Scenario,
        run_dir: Path,
        controller: ControllerProcess,
        bundles: dict[str, Path],
        key_file: Path,
        observer: ObserverProcess,
    ) -> None:
        self.scenario, self.run_dir, self.controller = scenario, run_dir, controller
        self.bundles, self.key_file, self.observer = bundles, key_file, observer
        self.sites: list[Site] = []
        self.agents: dict[str, Agent] = {}
        self.sources: dict[str, PacedSource] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.retired: list[Agent] = []  # stopped agents whose counters still count
        self.crashed: list[str] = []
        self.started = time.monotonic()
        self.drift_started_at: float | None = None
        self._outbox_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="outbox")
        self._infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._joined = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # -- sites ---------------------------------------------------------------------------

    async def add_site(self, index: int) -> Site:
        name = f"site-{index}"
        home = self.run_dir / name
        broker = SiteBroker(home / "broker")
        await asyncio.to_thread(broker.start)
        host, port = self.controller.url.removeprefix("http://").split(":")
        uplink = FaultyLink(host, int(port), seed=index)
        await uplink.start()
        filters = self.scenario.gateway
        gateway = GatewayProcess(
            home / "gateway",
            {
                "gateway_id": f"gw-{name}",
                "site": name,
                "trusted_keys": [str(self.key_file)],
                "broker": {"host": "127.0.0.1", "port": broker.port},
                "upstream": {
                    "url": f"http://127.0.0.1:{uplink.port}",
                    "token": await asyncio.to_thread(self.controller.gateway_token, name),
                    "linger_s": 0.5,
                    "retry_max_s": 2.0,
                    "desired_poll_s": 2.0,
                },
                "device_classes": [
                    {
                        "name": "sensors",
                        "window_s": filters.window_s,
                        "sample_rate": filters.sample_rate,
                        "forward_all": filters.forward_all,
                    }
                ],
                "drift_window_s": filters.drift_window_s,
            },
        )
        await asyncio.to_thread(gateway.start)
        await self.observer.watch(name, broker.port)
        site = Site(index, name, broker, uplink, gateway)
        self.sites.append(site)
        return site

    def sites_for(self, which: int | Literal["all"]) -> list[Site]:
        return list(self.sites) if which == "all" else [self.sites[which % len(self.sites)]]

    def devices_of(self, site: Site) -> list[str]:
        return [d for d in site.devices if d in self.agents]

    # -- devices -------------------------------------------------------------------------

    async def start_agent(self, site: Site, device: str) -> Agent:
        """Start a device (again): a reboot keeps its id, its outbox and its place in the data."""
        scenario = self.scenario
        number = site.devices.index(device) if device in site.devices else len(site.devices)
        if device not in site.devices:
            site.devices.append(device)
        runtime = scenario.runtimes[(site.index + number) % len(scenario.runtimes)]
        seed = site.index * 10_000 + number
        cls = device_class(scenario, number)
        rate_hz = cls.rate_hz or scenario.rate_hz
        anomaly_rate = scenario.anomaly_rate if cls.anomaly_rate is None else cls.anomaly_rate
        settings = load_settings(
            None,
            device_id=device,
            site=site.name,
            data_dir=str(self.run_dir / site.name / "devices" / device),
            model_dir=str(self.bundles[runtime]),
            trusted_keys=[str(self.key_file)],
            source={"kind": "synthetic", "rate_hz": rate_hz, "seed": seed},
            mqtt={
                "port": site.broker.port,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 3.0,
                "state_interval_s": 10.0,
            },
            inference={"executor": "inline", "micro_batch_max": 32},
        )
        source = PacedSource(
            rate_hz=rate_hz, seed=seed, anomaly_rate=anomaly_rate, noise=cls.noise, period_s=cls.period_s
        )
        source.extra_drift, source.relabel = site.drift_shift, site.relabel
        agent = Agent(
            settings, source=source, outbox_executor=self._outbox_pool, inference_executor=self._infer_pool
        )
        self.agents[device], self.sources[device] = agent, source
        self.tasks[device] = asyncio.create_task(agent.run(), name=device)
        return agent

    async def wait_running(self, within_s: float) -> int:
        """Until every agent runs its pipeline (its model loaded) or has ended; returns how many run.

        Agents load their models in threads: a large fleet takes a while to be all there, and
        the scenario's clock starts when it is.
        """

        async def one(device: str) -> None:
            started = asyncio.create_task(self.agents[device].started.wait())
            await asyncio.wait({started, self.tasks[device]}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(one(d) for d in self.agents)), within_s)
        return sum(agent.started.is_set() for agent in self.agents.values())

    async def add_agent(self, site: Site) -> Agent:
        self._joined += 1
        return await self.start_agent(site, f"{site.name}-new-{self._joined:03d}")

    async def stop_agent(self, device: str) -> None:
        agent, task = self.agents.pop(device), self.tasks.pop(device)
        self.sources.pop(device, None)
        agent.stop()
        await asyncio.gather(task, return_exceptions=True)
        self._note_crash(device, task)
        self.retired.append(agent)

    def stop_producing(self) -> None:
        for source in self.sources.values():
            source.limit = 0

    def check_crashes(self) -> None:
        for device, task in self.tasks.items():
            self._note_crash(device, task)
        for site in self.sites:
            process, name = site.gateway.process, f"gateway {site.name}"
            # A fault restarts what it kills (-9) before the next check; any other exit is a crash.
            if process is not None and process.returncode not in (-9, None) and name not in self.crashed:
                self.crashed.append(name)
        if not self.controller.alive() and "controller" not in self.crashed:
            self.crashed.append("controller")

    def _note_crash(self, device: str, task: asyncio.Task[None]) -> None:
        if (
            task.done()
            and not task.cancelled()
            and task.exception() is not None
            and device not in self.crashed
        ):
            self.crashed.append(device)
            log.error("virtual device %s crashed: %s", device, task.exception())

    def outboxes_empty(self) -> bool:
        """Every running device stopped reading and its broker acknowledged all it stored."""
        for agent in self.agents.values():
            stats = agent.outbox.stats
            if not agent.source_done.is_set() or stats.depth or stats.pending:
                return False
        return True

    def pace(self) -> FleetPace:
        """How the running sensors keep their declared rates (for `simulators.lag`)."""
        now = time.monotonic()
        running = [s for s in self.sources.values() if s.started_at is not None and not s.done]
        return FleetPace(
            devices=len(running),
            due_per_s=sum(s.rate_hz or 0.0 for s in running),
            behind=sum(s.behind(now) for s in running),
            given=sum(s.given for s in running),
        )

    def produced(self) -> dict[str, int]:
        """Records each device made (its last seq), running or retired."""
        out: dict[str, int] = {}
        for agent in [*self.retired, *self.agents.values()]:
            device = agent.settings.device_id
            out[device] = max(out.get(device, 0), agent.outbox.stats.last_seq)
        return out

    async def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        for site in self.sites:
            await asyncio.to_thread(site.gateway.stop)
            await site.uplink.close()
            await asyncio.to_thread(site.broker.stop)
        self._outbox_pool.shutdown(wait=False)
        self._infer_pool.shutdown(wait=False)
