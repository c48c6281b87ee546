"""Runs a scenario: brokers, a first model, virtual devices that are real agents, faults, a report.

Every virtual device is a real `edge_agent.Agent` (the daemon's own code) with its own MQTT
connection and SQLite outbox; all share one event loop and two small thread pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.sources.synthetic import SyntheticSource
from fleet_protocol.signing import generate_private_key, public_key_pem
from simulators.brokers import SiteBroker
from simulators.observer import FleetView, SiteObserver
from simulators.scenario import Fault, Scenario

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    scenario: Scenario
    run_dir: Path
    started: float
    seconds: float = 0.0
    model_accuracy: float = 0.0
    view: FleetView = field(default_factory=FleetView)
    produced: dict[str, int] = field(default_factory=dict)
    left_in_outbox: dict[str, int] = field(default_factory=dict)
    faults_applied: list[str] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)

    def invariants(self) -> dict[str, bool]:
        missing = sum(
            len(set(range(1, n + 1)) - self.view.seqs.get(device, set()))
            for device, n in self.produced.items()
        )
        return {
            "no_record_lost": missing == 0 and not any(self.left_in_outbox.values()),
            "no_seq_reused": self.view.seq_reused == 0,
            "no_daemon_crashed": not self.crashed,
        }

    def summary(self) -> dict[str, Any]:
        view = self.view
        return {
            "scenario": self.scenario.name,
            "sites": self.scenario.sites,
            "devices": len(self.produced),
            "seconds": round(self.seconds, 1),
            "records_produced": sum(self.produced.values()),
            "records_delivered_unique": view.records,
            "duplicates_delivered": view.duplicates,
            "records_per_s": round(view.records / self.seconds, 1) if self.seconds else 0.0,
            "anomalies_delivered": view.anomalies,
            "device_model_accuracy": round(view.correct / view.labelled, 4) if view.labelled else None,
            "training_accuracy": round(self.model_accuracy, 4),
            "telemetry_bytes": view.bytes,
            "rejected_payloads": view.rejected,
            "faults": self.faults_applied,
            "invariants": self.invariants(),
            "run_dir": str(self.run_dir),
        }


async def run_scenario(scenario: Scenario, run_dir: Path, console: Console | None = None) -> RunResult:
    console = console or Console()
    await asyncio.to_thread(run_dir.mkdir, parents=True, exist_ok=True)
    result = RunResult(scenario, run_dir, time.time())

    console.print(
        f"[bold]edgefleet[/] scenario [cyan]{scenario.name}[/]: {scenario.sites} sites x "
        f"{scenario.devices_per_site} devices, {scenario.duration_s:.0f} s"
    )
    bundles, key_file, accuracy = await asyncio.to_thread(_make_model, run_dir)
    result.model_accuracy = accuracy
    console.print(f"trained and signed the first model (accuracy {accuracy:.3f}): {', '.join(bundles)}")

    brokers = [SiteBroker(run_dir / f"site-{i}" / "broker") for i in range(scenario.sites)]
    for broker in brokers:
        await asyncio.to_thread(broker.start)
    outbox_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="outbox")
    infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
    observers, agents, tasks = [], [], []
    try:
        for site_index, broker in enumerate(brokers):
            site = f"site-{site_index}"
            observer = SiteObserver(site, broker.port, result.view)
            observers.append(asyncio.create_task(observer.run(), name=f"observer-{site}"))
            await asyncio.wait_for(observer.ready.wait(), 10)
            for d in range(scenario.devices_per_site):
                device = f"{site}-dev-{d:04d}"
                bundle = bundles[scenario.runtimes[(site_index + d) % len(scenario.runtimes)]]
                agents.append(
                    _agent(
                        scenario,
                        run_dir,
                        site,
                        device,
                        broker.port,
                        bundle,
                        key_file,
                        outbox_pool,
                        infer_pool,
                        seed=site_index * 10_000 + d,
                    )
                )
        for agent in agents:
            tasks.append(asyncio.create_task(agent.run(), name=agent.settings.device_id))
        started = time.monotonic()
        faults = sorted(scenario.faults, key=lambda f: f.at_s)
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[records]} records"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as progress:
            bar = progress.add_task("streaming", total=scenario.duration_s, records=0)
            while (elapsed := time.monotonic() - started) < scenario.duration_s:
                while faults and faults[0].at_s <= elapsed:
                    result.faults_applied.append(await _apply(faults.pop(0), brokers))
                _check_crashes(tasks, result)
                progress.update(bar, completed=elapsed, records=result.view.records)
                await asyncio.sleep(0.25)
            progress.update(bar, completed=scenario.duration_s, records=result.view.records)
            for agent in agents:
                agent.source.limit = 0  # type: ignore[attr-defined]
            drain = progress.add_task("draining outboxes", total=None, records=result.view.records)
            deadline = time.monotonic() + scenario.drain_timeout_s
            while time.monotonic() < deadline and not _drained(agents, result.view):
                progress.update(drain, records=result.view.records)
                await asyncio.sleep(0.25)
        result.seconds = time.monotonic() - started
        _check_crashes(tasks, result)
    finally:
        for agent in agents:
            agent.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in observers:
            task.cancel()
        await asyncio.gather(*observers, return_exceptions=True)
        for broker in brokers:
            await asyncio.to_thread(broker.stop)
        outbox_pool.shutdown(wait=False)
        infer_pool.shutdown(wait=False)
    for agent in agents:
        stats = agent.outbox.stats
        result.produced[agent.settings.device_id] = stats.last_seq
        result.left_in_outbox[agent.settings.device_id] = stats.depth
    (run_dir / "report.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
    return result


def _make_model(run_dir: Path) -> tuple[dict[str, Path], Path, float]:
    from simulators.model_factory import build_bundles, train_mlp

    key = generate_private_key()
    key_file = run_dir / "fleet-signing.pub"
    key_file.write_bytes(public_key_pem(key.public_key()))
    trained = train_mlp(seed=0)
    return build_bundles(trained, run_dir / "bundles", key), key_file, trained.accuracy


def _agent(
    scenario: Scenario,
    run_dir: Path,
    site: str,
    device: str,
    port: int,
    bundle: Path,
    key_file: Path,
    outbox_pool: ThreadPoolExecutor,
    infer_pool: ThreadPoolExecutor,
    seed: int,
) -> Agent:
    settings = load_settings(
        None,
        device_id=device,
        site=site,
        data_dir=str(run_dir / site / device),
        model_dir=str(bundle),
        trusted_keys=[str(key_file)],
        source={
            "kind": "synthetic",
            "rate_hz": scenario.rate_hz,
            "seed": seed,
            "anomaly_rate": scenario.anomaly_rate,
        },
        mqtt={"port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 3.0, "state_interval_s": 10.0},
        inference={"executor": "inline", "micro_batch_max": 32},
    )
    source = SyntheticSource(rate_hz=scenario.rate_hz, seed=seed, anomaly_rate=scenario.anomaly_rate)
    return Agent(settings, source=source, outbox_executor=outbox_pool, inference_executor=infer_pool)


async def _apply(fault: Fault, brokers: list[SiteBroker]) -> str:
    import signal

    broker = brokers[fault.site % len(brokers)]
    sig = signal.SIGKILL if fault.kind == "broker_kill" else signal.SIGTERM
    await asyncio.to_thread(broker.stop, sig)
    await asyncio.sleep(fault.down_s)
    await asyncio.to_thread(broker.start)
    return f"{fault.kind} site-{fault.site % len(brokers)} at {fault.at_s:.0f}s for {fault.down_s:.0f}s"


def _check_crashes(tasks: list[asyncio.Task[None]], result: RunResult) -> None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            name = task.get_name()
            if name not in result.crashed:
                result.crashed.append(name)
                log.error("virtual device %s crashed: %s", name, task.exception())


def _drained(agents: list[Agent], view: FleetView) -> bool:
    for agent in agents:
        stats = agent.outbox.stats
        if stats.depth or stats.pending:
            return False
        with contextlib.suppress(KeyError):
            if len(view.seqs[agent.settings.device_id]) < stats.last_seq:
                return False
    return True
