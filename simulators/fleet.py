"""A running fleet: per site a Mosquitto, an uplink proxy and an `edge-gateway`; devices that are real agents.

What events act on: `sites_for` picks sites, `devices_of` their devices, and agents can be
stopped, started again (a reboot: same id, same outbox), added, and killed -9 with their
process while the fleet runs. Every virtual device is a real `edge_agent.Agent` with its own
MQTT connection, SQLite outbox and model slots; a site's devices run in processes of their own
(`simulators.agent_host`, ``agent_processes_per_site`` of them), so that a fault can kill them
mid-update and start them again on the same data. What the brokers deliver is followed by the
observer, a process of its own too (`simulators.observer`).

The runner asks its questions (outboxes empty? how many records made? who crashed? the
sensors' pace) synchronously: they are answered from each agent process's last status, which
`poll` refreshes about twice a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_controller.pki import Kind
from simulators.agent_hosts import AgentHostProcess, DeviceSpec
from simulators.brokers import SiteBroker
from simulators.child_process import start_to_the_end
from simulators.controller import ControllerProcess
from simulators.gateways import GatewayProcess
from simulators.identities import OBSERVER, RunIdentities, gateway_name, labeller_name
from simulators.lag import FleetPace
from simulators.learning import JobOutcome
from simulators.netproxy import FaultyLink
from simulators.observer_process import ObserverProcess
from simulators.releases import Release
from simulators.rollouts import RolloutOutcome
from simulators.scenario import Scenario, device_class
from simulators.worker import WorkerProcess

log = logging.getLogger(__name__)

#: Update states that are not an outcome yet (`fleet_protocol.OtaState`).
_MID_UPDATE = ("downloading", "verified", "shadow")


@dataclass
class Site:
    index: int
    name: str
    broker: SiteBroker
    uplink: FaultyLink
    gateway: GatewayProcess
    hosts: list[AgentHostProcess] = field(default_factory=list)
    #: Device classes with an agent process of their own (`DeviceClass.own_process`): its host.
    class_hosts: dict[str, AgentHostProcess] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    drift_shift: float = 0.0
    relabel: dict[int, int] = field(default_factory=dict)
    #: When drift of either kind first hit the site, on the run's clock (a job's data starts there).
    drifted_at: float | None = None


class FleetRun:
    def __init__(
        self,
        scenario: Scenario,
        run_dir: Path,
        controller: ControllerProcess,
        bundles: dict[str, Path],
        key_file: Path,
        observer: ObserverProcess,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.scenario, self.run_dir, self.controller = scenario, run_dir, controller
        #: The run's fleet CA and certificates (scenario ``tls``), else plain TCP on the site brokers.
        self.identities = RunIdentities(run_dir) if scenario.tls else None
        self.bundles, self.key_file, self.observer = bundles, key_file, observer
        #: Signs the model versions the timeline builds during the run.
        self.signing_key = signing_key
        self.releases: dict[str, Release] = {}
        self.sites: list[Site] = []
        self.host_of: dict[str, AgentHostProcess] = {}
        self.running: set[str] = set()  # started and not stopped (a killed device is still running)
        self.crashed: list[str] = []
        self.started = time.monotonic()
        self.drift_started_at: float | None = None
        #: What rollout events did, for the invariants and the report.
        self.rollouts: list[RolloutOutcome] = []
        #: Serializes rollouts: a site group has one at a time.
        self.rollout_lock = asyncio.Lock()
        #: Bundles planted in a site gateway's cache by an attacker: site -> sha256 addresses.
        self.planted: dict[str, set[str]] = defaultdict(set)
        #: Per site, ``edge_gateway_bundle_fetches_total{result="ok"}`` of gateway processes killed.
        self.fetches_before_kill: dict[str, float] = defaultdict(float)
        #: The jobs worker (a scenario with `learning`), and what the timeline's jobs did.
        self.worker: WorkerProcess | None = None
        self.jobs: list[JobOutcome] = []
        self._host_delay = 0.0
        self._joined = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # -- sites ---------------------------------------------------------------------------

    async def add_site(self, index: int) -> Site:
        """Start a site's broker, uplink, gateway and agent processes; `close` stops them once added.

        A start that fails or is cancelled (Ctrl-C while the site comes up) stops what it had started
        itself: the site is not in `sites` yet, where `close` would find it.
        """
        stops: list[Callable[[], Awaitable[object]]] = []
        try:
            return await self._add_site(index, stops)
        except BaseException:
            for stop in reversed(stops):
                with contextlib.suppress(Exception):
                    await stop()
            raise

    async def _add_site(self, index: int, stops: list[Callable[[], Awaitable[object]]]) -> Site:
        name = f"site-{index}"
        home = self.run_dir / name
        if self.identities is not None:
            processes = self.scenario.agent_processes_per_site + sum(
                1 for cls in self.scenario.device_classes if cls.own_process
            )
            listener, acl = await asyncio.to_thread(self.identities.broker, name, processes)
            broker = SiteBroker(home / "broker", tls=listener, acl=acl)
        else:
            broker = SiteBroker(home / "broker")
        # Each part is registered to be stopped before it starts: it may be cancelled mid-start.
        stops.append(lambda: asyncio.to_thread(broker.stop))
        await start_to_the_end(broker.start)
        host, port = self.controller.url.removeprefix("http://").split(":")
        uplink = FaultyLink(host, int(port), seed=index)
        stops.append(uplink.close)
        await uplink.start()
        filters = self.scenario.gateway
        gateway = GatewayProcess(
            home / "gateway",
            {
                "gateway_id": f"gw-{name}",
                "site": name,
                "trusted_keys": [str(self.key_file)],
                "broker": {
                    "host": "127.0.0.1",
                    "port": broker.port,
                    **await self._tls(gateway_name(name), "gateway", name),
                },
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
        stops.append(lambda: asyncio.to_thread(gateway.stop))
        await start_to_the_end(gateway.start, False)
        await asyncio.to_thread(gateway.wait_healthy)
        observer_tls = (await self._tls(OBSERVER, "observer")).get("tls")
        await self.observer.watch(name, broker.port, observer_tls)
        site = Site(index, name, broker, uplink, gateway)
        for number in range(self.scenario.agent_processes_per_site):
            agents = AgentHostProcess(f"{name}/{number}", home / f"agents-{number}.log")
            stops.append(agents.close)
            await agents.start()
            site.hosts.append(agents)
        for cls in self.scenario.device_classes:
            if cls.own_process:
                agents = AgentHostProcess(f"{name}/{cls.name}", home / f"agents-{cls.name}.log")
                stops.append(agents.close)
                await agents.start()
                site.hosts.append(agents)
                site.class_hosts[cls.name] = agents
        self.sites.append(site)
        return site

    async def _tls(self, name: str, kind: Kind, site: str | None = None) -> dict[str, Any]:
        """``{"tls": section}`` of a client's MQTT config when the run is over TLS, else ``{}``."""
        if self.identities is None:
            return {}
        return {"tls": await asyncio.to_thread(self.identities.tls, name, kind, site)}

    def sites_for(self, which: int | Literal["all"]) -> list[Site]:
        return list(self.sites) if which == "all" else [self.sites[which % len(self.sites)]]

    def devices_of(self, site: Site) -> list[str]:
        return [d for d in site.devices if d in self.running]

    def site_of(self, device: str) -> Site:
        return next(site for site in self.sites if device in site.devices)

    # -- devices -------------------------------------------------------------------------

    async def start_agent(self, site: Site, device: str) -> None:
        """Start a device (again): a reboot keeps its id, its outbox, its slots and its place in the data."""
        scenario = self.scenario
        number = site.devices.index(device) if device in site.devices else len(site.devices)
        if device not in site.devices:
            site.devices.append(device)
        runtime = scenario.runtimes[(site.index + number) % len(scenario.runtimes)]
        seed = site.index * 10_000 + number
        cls = device_class(scenario, number)
        rate_hz = cls.rate_hz or scenario.rate_hz
        anomaly_rate = scenario.anomaly_rate if cls.anomaly_rate is None else cls.anomaly_rate
        settings = {
            "device_id": device,
            "site": site.name,
            "data_dir": str(self.run_dir / site.name / "devices" / device),
            "model_dir": str(self.bundles[runtime]),
            "trusted_keys": [str(self.key_file)],
            "source": {
                "kind": "synthetic",
                "rate_hz": rate_hz,
                "seed": seed,
                "inline_labels": scenario.records_carry_labels,
                "class_weights": cls.class_mix,
            },
            "mqtt": {
                **await self._tls(device, "device", site.name),
                "port": site.broker.port,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 3.0,
                "state_interval_s": 10.0,
            },
            "inference": {"executor": "inline", "micro_batch_max": 32},
            # A bundle the site cannot serve yet (uplink cut) is asked for again within seconds.
            "ota": {"retry_min_s": 0.5, "retry_max_s": 3.0},
        }
        source = {
            "rate_hz": rate_hz,
            "seed": seed,
            "anomaly_rate": anomaly_rate,
            "noise": cls.noise,
            "period_s": cls.period_s,
            "class_weights": cls.class_mix,
            "extra_drift": site.drift_shift,
            "relabel": {str(k): v for k, v in site.relabel.items()},
            "labels": scenario.labels.model_dump() if scenario.labels is not None else None,
        }
        shared = [h for h in site.hosts if h not in site.class_hosts.values()]
        host = self.host_of.get(device) or site.class_hosts.get(cls.name) or shared[number % len(shared)]
        self.host_of[device] = host
        labeller = labeller_name(site.name, site.hosts.index(host))
        source["labeller_tls"] = (await self._tls(labeller, "labeller", site.name)).get("tls")
        await host.start_device(device, DeviceSpec(settings, source))
        self.running.add(device)

    async def wait_running(self, within_s: float) -> int:
        """Until every agent runs its pipeline (its model loaded) or has ended; returns how many run.

        Agents load their models in threads: a large fleet takes a while to be all there, and
        the scenario's clock starts when it is.
        """
        counts = await asyncio.gather(*(h.wait_running(within_s) for h in self.hosts()))
        return sum(counts)

    async def add_agent(self, site: Site) -> None:
        self._joined += 1
        await self.start_agent(site, f"{site.name}-new-{self._joined:03d}")

    async def stop_agent(self, device: str) -> None:
        self.running.discard(device)
        await self.host_of[device].stop_device(device)

    async def set_sources(self, devices: list[str], **change: Any) -> None:
        """Change what the devices' sensors read (``extra_drift``, ``relabel``)."""
        if "relabel" in change:
            change["relabel"] = {str(k): v for k, v in change["relabel"].items()}
        for host, mine in self._by_host(devices).items():
            for device in mine:
                host.specs[device].source.update(change)  # a restarted device reads the same
            if host.alive():  # else it is being restarted, and its devices start with the change
                await host.tell({"op": "source", "devices": mine, **change})

    async def set_disk_limit(self, devices: list[str], max_bytes: int | None) -> None:
        for host, mine in self._by_host(devices).items():
            if host.alive():  # a device killed -9 boots with its disk as it is
                await host.tell({"op": "disk_limit", "devices": mine, "max_bytes": max_bytes})

    async def stop_producing(self) -> None:
        await asyncio.gather(*(h.tell({"op": "stop_producing"}) for h in self.hosts() if h.alive()))

    def _by_host(self, devices: list[str]) -> dict[AgentHostProcess, list[str]]:
        out: dict[AgentHostProcess, list[str]] = defaultdict(list)
        for device in devices:
            if device in self.running:
                out[self.host_of[device]].append(device)
        return out

    def hosts(self) -> list[AgentHostProcess]:
        return [host for site in self.sites for host in site.hosts]

    # -- what the runner asks, from the agent processes' last status -----------------------

    async def poll(self) -> None:
        """Read every agent process's status (the answers below come from it)."""
        statuses = await asyncio.gather(*(host.refresh() for host in self.hosts()))
        for status in statuses:
            if status is not None:
                self._host_delay = max(self._host_delay, status.loop_delay_s)

    def take_host_delay(self) -> float:
        """The worst scheduling delay of the agent processes' loops since the last call."""
        delay, self._host_delay = self._host_delay, 0.0
        return delay

    def check_crashes(self) -> None:
        for host in self.hosts():
            for device, error in host.status.crashed.items():
                if device not in self.crashed:
                    self.crashed.append(device)
                    log.error("virtual device %s crashed: %s", device, error)
            name = f"agents {host.name}"
            if host.died_unexpectedly() and name not in self.crashed:
                self.crashed.append(name)
        for site in self.sites:
            process, name = site.gateway.process, f"gateway {site.name}"
            # A fault restarts what it kills (-9) before the next check; any other exit is a crash.
            if process is not None and process.returncode not in (-9, None) and name not in self.crashed:
                self.crashed.append(name)
        if not self.controller.alive() and "controller" not in self.crashed:
            self.crashed.append("controller")
        if self.worker is not None and self.worker.exited() and "jobs worker" not in self.crashed:
            self.crashed.append("jobs worker")

    def outboxes_empty(self) -> bool:
        """Every running device stopped reading and its broker acknowledged all it stored."""
        for device in self.running:
            row = self.host_of[device].status.devices.get(device)
            if row is None or not row["source_done"] or row["waiting"]:
                return False
        return True

    def pace(self) -> FleetPace:
        """How the running sensors keep their declared rates (for `simulators.lag`)."""
        paces = [host.status.pace for host in self.hosts()]
        return FleetPace(
            devices=int(sum(p["devices"] for p in paces)),
            due_per_s=sum(p["due_per_s"] for p in paces),
            behind=sum(p["behind"] for p in paces),
            given=int(sum(p.get("given", 0) for p in paces)),
        )

    def produced(self) -> dict[str, int]:
        """Records each device made (its last seq), running or retired."""
        out: dict[str, int] = {}
        for host in self.hosts():
            for device, seq in host.last_seq.items():
                out[device] = max(out.get(device, 0), seq)
        for device in self.running:
            out.setdefault(device, 0)
        return out

    async def settle_updates(self, within_s: float, version: str | None = None) -> list[str]:
        """Until no online device is mid-update (to ``version``, or any), as its retained state says;
        returns the devices still mid-update when ``within_s`` ran out.

        A rollout ends by the controller's decision, and a device of it can still be downloading or
        shadowing then: the agent goes on with an update its desired state no longer names, and a
        newer desired state cancels it without a word. Letting it finish first keeps each update's
        outcome on record.
        """
        deadline = time.monotonic() + within_s
        while True:
            models = await self.observer.models(within_s=30)
            busy = sorted(
                device
                for device, m in models.items()
                if m["online"]
                and m["ota_state"] in _MID_UPDATE
                and (version is None or m["ota_version"] == version)
            )
            if not busy or time.monotonic() >= deadline:
                return busy
            await asyncio.sleep(1.0)

    def killed(self) -> dict[str, int]:
        """Per device, how many times its process was killed -9 on purpose."""
        return {device: host.kills for host in self.hosts() for device in host.last_seq if host.kills}

    def bundle_fetches(self) -> dict[str, float]:
        """Per site, bundles its gateway downloaded over the uplink (every life of it)."""
        return {site.name: site.gateway.bundle_fetches() for site in self.sites}

    def swap_gaps(self) -> dict[str, float]:
        """Per device that switched models, its last swap gap (`Agent.swap_gap_s`)."""
        return self._per_device("swap_gap_s")

    def steady_gaps(self) -> dict[str, float]:
        """Per device that switched models, its longest gap between batches before the switch
        (`Agent.steady_gap_s`): the machine's own scheduling, to set the swap gap against."""
        return self._per_device("steady_gap_s")

    def _per_device(self, key: str) -> dict[str, float]:
        return {
            device: row[key]
            for host in self.hosts()
            for device, row in host.status.devices.items()
            if row.get(key) is not None
        }

    async def close(self) -> None:
        await asyncio.gather(*(host.close() for host in self.hosts()))
        for site in self.sites:
            await asyncio.to_thread(site.gateway.stop)
            await site.uplink.close()
            await asyncio.to_thread(site.broker.stop)
