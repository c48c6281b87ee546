"""Runs a scenario end to end: controller, sites, a first model, devices, the timeline, a report.

1. A controller process, the observer process; per site a Mosquitto, an uplink proxy and an
   `edge-gateway` process.
2. A first model trained on generated data, compiled, measured and signed by `model_compiler`,
   uploaded to the controller, deployed to every device and provisioned on each of them.
3. Devices stream; events fire on the scenario's timeline; a sample is taken every second, and
   the simulator's own lag is measured (`simulators.lag`).
4. Devices stop producing; the run drains: every outbox empty, the observer has read all the
   brokers accepted, every record is at the controller (or the drain times out). Then the
   invariants are judged against what the controller stored (`simulators.result`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from fleet_protocol.signing import generate_private_key, public_key_pem
from model_compiler.archive import pack
from simulators.controller import ControllerProcess
from simulators.events import Event, apply
from simulators.fleet import FleetRun
from simulators.lag import LagMonitor
from simulators.observer_process import ObserverProcess
from simulators.result import RunResult, off_model
from simulators.scenario import Scenario, SimError, device_class

log = logging.getLogger(__name__)

MODEL_ID, MODEL_VERSION = "sensor-mlp", "1.0.0"
#: The observer catches up once devices stop producing; it gets at least this long to.
_OBSERVER_CATCH_UP_S = 60.0
#: Devices that have not loaded their model by then start late, and their lag is measured.
_START_WITHIN_S = 300.0


async def run_scenario(scenario: Scenario, run_dir: Path, console: Console | None = None) -> RunResult:
    console = console or Console()
    # Absolute: the daemons' configs are files in the run directory, and theirs resolve against them.
    run_dir = await asyncio.to_thread(run_dir.resolve)
    await asyncio.to_thread(run_dir.mkdir, parents=True, exist_ok=True)
    result = RunResult(scenario, run_dir, time.time())
    console.print(
        f"[bold]edgefleet[/] scenario [cyan]{scenario.name}[/]: {scenario.sites} sites x "
        f"{scenario.devices_per_site} devices, {scenario.duration_s:.0f} s, {len(scenario.events)} events"
    )
    key = generate_private_key()
    key_file = run_dir / "fleet-signing.pub"
    await asyncio.to_thread(key_file.write_bytes, public_key_pem(key.public_key()))
    controller = ControllerProcess(run_dir / "controller", key_file)
    observer = ObserverProcess(run_dir / "observer.log")
    fleet: FleetRun | None = None
    lag: LagMonitor | None = None
    monitor: asyncio.Task[None] | None = None
    try:
        with console.status("training and compiling the first model, starting the controller"):
            compiled, _, _ = await asyncio.gather(
                asyncio.to_thread(_compile, run_dir, key, scenario),
                asyncio.to_thread(controller.start),
                observer.start(),
            )
        result.model_accuracy, result.compiler_table = compiled.accuracy, compiled.table
        console.print(
            f"model {MODEL_ID}@{MODEL_VERSION}: accuracy {compiled.accuracy:.3f}, built"
            f" {', '.join(compiled.bundles)} in {compiled.seconds:.1f}s; controller at {controller.url}"
        )
        await asyncio.to_thread(_register_and_deploy, controller, compiled.bundles)
        fleet = FleetRun(scenario, run_dir, controller, compiled.bundles, key_file, observer)
        with console.status("starting brokers, uplinks and gateways"):
            for index in range(scenario.sites):
                await fleet.add_site(index)
        lag = LagMonitor(scenario.lag_limit_s, fleet.pace)
        monitor = asyncio.create_task(lag.run(), name="lag-monitor")
        with console.status(f"starting {scenario.sites * scenario.devices_per_site} devices"):
            for site in fleet.sites:
                for number in range(scenario.devices_per_site):
                    kind = device_class(scenario, number).name
                    await fleet.start_agent(site, f"{site.name}-{kind}-{number:04d}")
            await fleet.wait_running(within_s=_START_WITHIN_S)
        fleet.started = time.monotonic()
        await _stream(fleet, result, lag, console)
        await _final_checks(fleet, result)
    finally:
        if monitor is not None:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
        if fleet is not None:
            result.produced = fleet.produced()
            result.crashed = list(fleet.crashed)
            result.drift_started_at = _wall(fleet, fleet.drift_started_at)
            if lag is not None:
                result.lag, result.lag_series = lag.verdict(fleet.started), lag.series(fleet.started)
            await fleet.close()
        await observer.close()
        await asyncio.to_thread(controller.stop)
    await asyncio.to_thread(_write_reports, result)
    return result


async def _stream(fleet: FleetRun, result: RunResult, lag: LagMonitor, console: Console) -> None:
    scenario = fleet.scenario
    pending = sorted(scenario.events, key=lambda e: e.at_s)
    running: list[asyncio.Task[None]] = []
    # Sampling waits on other processes: in a task of its own, it cannot make an event late.
    sampler = asyncio.create_task(_sample_every_second(fleet, result), name="sampler")
    lag.start_judging()
    try:
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[records]} records, {task.fields[online]} online"),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("streaming", total=scenario.duration_s, records=0, online=0)
            while (elapsed := fleet.elapsed()) < scenario.duration_s:
                while pending and pending[0].at_s <= elapsed:
                    spec = pending.pop(0)
                    lag.event_fired(spec.kind, spec.at_s, elapsed)
                    running.append(asyncio.create_task(_event(fleet, spec, result, console)))
                fleet.check_crashes()
                timeline = result.timeline
                progress.update(
                    bar, completed=elapsed, records=timeline.delivered_now(), online=timeline.online_now()
                )
                due = pending[0].at_s if pending else scenario.duration_s
                await asyncio.sleep(max(0.0, min(0.2, due - elapsed)))
            progress.update(bar, completed=scenario.duration_s)
            await asyncio.gather(*running)  # temporary faults end before the drain
            lag.stop_judging()
            fleet.stop_producing()
            drain = progress.add_task("draining to the controller", total=None, records=0, online=0)
            await _drain(
                fleet, result, lag, lambda: progress.update(drain, records=result.timeline.delivered_now())
            )
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    await result.timeline.sample(fleet)
    result.seconds = fleet.elapsed()


async def _sample_every_second(fleet: FleetRun, result: RunResult) -> None:
    next_sample = 0.0
    while True:
        await result.timeline.sample(fleet)
        next_sample += 1.0
        await asyncio.sleep(max(0.0, next_sample - fleet.elapsed()))


async def _drain(fleet: FleetRun, result: RunResult, lag: LagMonitor, tick: Callable[[], None]) -> None:
    """Outboxes empty, then the observer's view complete, then every record at the controller."""
    deadline = time.monotonic() + fleet.scenario.drain_timeout_s
    while not fleet.outboxes_empty() and time.monotonic() < deadline:
        fleet.check_crashes()
        tick()
        await asyncio.sleep(0.5)
    outboxes_empty = fleet.outboxes_empty()
    catch_up = max(deadline - time.monotonic(), _OBSERVER_CATCH_UP_S)
    result.view_complete = await fleet.observer.sync(catch_up)
    if not result.view_complete:
        lag.observer_incomplete = (
            f"the observer had not read all the brokers accepted {catch_up:.0f} s after the devices stopped"
        )
    result.view = await fleet.observer.view()
    result.produced = fleet.produced()
    delivered_all = outboxes_empty and result.unacknowledged() == 0
    while True:
        fleet.check_crashes()
        tick()
        if await _all_at_controller(fleet, result):
            result.drained = delivered_all and result.view_complete
            return
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.5)


async def _event(fleet: FleetRun, spec: Event, result: RunResult, console: Console) -> None:
    try:
        line = await apply(fleet, spec)
    except Exception as exc:  # an event that fails is reported, and the run goes on
        line = f"{spec.kind} failed: {exc}"
        log.exception("event %s failed", spec.kind)
    line = f"{spec.at_s:>5.0f}s {spec.kind}: {line}"
    result.events.append(line)
    console.log(line)


async def _all_at_controller(fleet: FleetRun, result: RunResult) -> bool:
    """Every record the brokers delivered is counted in a window summary at the controller."""
    stored = await asyncio.to_thread(fleet.controller.stored)
    # Sums first (cheap), then the seqs themselves: a sum can be right with a record missing.
    if any(stored.get(d, {}).get("summarised", 0) < len(seqs) for d, seqs in result.view.seqs.items()):
        return False
    ledger = await asyncio.to_thread(fleet.controller.ledger)
    return all(ledger.counted.get(d, {}).keys() >= seqs for d, seqs in result.view.seqs.items())


async def _final_checks(fleet: FleetRun, result: RunResult) -> None:
    controller = fleet.controller
    result.ledger = await asyncio.to_thread(controller.ledger)
    result.produced = fleet.produced()
    await asyncio.to_thread(result.settle)
    devices = await asyncio.to_thread(controller.devices)
    result.devices_off_model = off_model(
        fleet.produced(), devices, result.view.states, (MODEL_ID, MODEL_VERSION)
    )
    for site in fleet.sites:
        # A gateway that crashed is reported as such; its bytes are not counted.
        with contextlib.suppress(httpx.HTTPError):
            metrics = await asyncio.to_thread(site.gateway.metrics)
            result.upstream_bytes += metrics.get("edge_gateway_upstream_bytes_total", 0.0)
    result.drift_scores = await asyncio.to_thread(_drift_scores, controller)


def _compile(run_dir: Path, key: Any, scenario: Scenario):  # type: ignore[no-untyped-def]
    from simulators.model_factory import compile_first_model

    return compile_first_model(run_dir / "model", key, sorted(set(scenario.runtimes)), version=MODEL_VERSION)


def _register_and_deploy(controller: ControllerProcess, bundles: dict[str, Path]) -> None:
    """Upload every bundle, then deploy the version to a group that selects every device."""
    with controller.client("operator") as client:
        for target, bundle in bundles.items():
            response = client.post("/api/v1/bundles", content=pack(bundle).read_bytes())
            if response.status_code != 201:
                raise SimError(f"the controller refused the {target} bundle: {response.text}")
        group = client.post("/api/v1/groups", json={"name": "every-device", "selector": {}})
        if group.status_code != 201:
            raise SimError(f"cannot create the device group: {group.text}")
        body = {"group_id": group.json()["id"], "model_id": MODEL_ID, "version": MODEL_VERSION}
        deployed = client.post("/api/v1/deployments", json=body)
        if deployed.status_code != 201:
            raise SimError(f"cannot deploy {MODEL_ID}@{MODEL_VERSION}: {deployed.text}")


def _drift_scores(controller: ControllerProcess) -> list[dict[str, Any]]:
    from sqlmodel import Session, select

    from cloud_controller.db import make_engine
    from cloud_controller.models import Drift

    engine = make_engine(controller.database_url)
    try:
        with Session(engine) as session:
            rows = session.exec(select(Drift).order_by(Drift.window_start)).all()  # type: ignore[arg-type]
            return [
                {
                    "site": r.site_id,
                    "window_start": r.window_start,
                    "score": r.score,
                    "method": r.score_method,
                    "count": r.count,
                }
                for r in rows
            ]
    finally:
        engine.dispose()


def _wall(fleet: FleetRun, elapsed: float | None) -> float | None:
    """A time on the run's clock as Unix time (the records' clock)."""
    if elapsed is None:
        return None
    return time.time() - (time.monotonic() - fleet.started) + elapsed


def _write_reports(result: RunResult) -> None:
    from simulators.report_html import render_html

    summary = result.summary()
    summary["timeline"] = result.timeline.as_dict()
    summary["simulator"] = {**summary["simulator"], "series": result.lag_series}
    (result.run_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (result.run_dir / "report.html").write_text(render_html(summary))
