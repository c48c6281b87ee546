"""Runs a scenario end to end: controller, sites, a first model, devices, the timeline, a report.

1. A controller process; per site a Mosquitto, an uplink proxy and an `edge-gateway` process.
2. A first model trained on generated data, compiled, measured and signed by `model_compiler`,
   uploaded to the controller, deployed to every device and provisioned on each of them.
3. Devices stream; events fire on the scenario's timeline; a sample is taken every second.
4. Devices stop producing; the run drains until every record is at the controller (whole or
   in a window summary) or the drain times out; then the invariants are checked against what
   the controller stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from fleet_protocol.signing import generate_private_key, public_key_pem
from model_compiler.archive import pack
from simulators.controller import ControllerProcess
from simulators.events import Event, apply
from simulators.fleet import FleetRun
from simulators.observer import FleetView
from simulators.scenario import Scenario, SimError, device_class
from simulators.timeline import Timeline

log = logging.getLogger(__name__)

MODEL_ID, MODEL_VERSION = "sensor-mlp", "1.0.0"


@dataclass
class RunResult:
    scenario: Scenario
    run_dir: Path
    started: float
    seconds: float = 0.0
    model_accuracy: float = 0.0
    compiler_table: list[dict[str, Any]] = field(default_factory=list)
    view: FleetView = field(default_factory=FleetView)
    produced: dict[str, int] = field(default_factory=dict)
    stored: dict[str, dict[str, int]] = field(default_factory=dict)
    missing_flagged: int = 0
    devices_off_model: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)
    drained: bool = False
    upstream_bytes: float = 0.0
    timeline: Timeline = field(default_factory=Timeline)
    drift_started_at: float | None = None
    drift_scores: list[dict[str, Any]] = field(default_factory=list)

    def record_counts(self) -> tuple[int, int, int]:
        """(delivered by devices, lost on the way, counted twice), against the controller."""
        delivered = lost = doubled = 0
        for device, seqs in self.view.seqs.items():
            counted = self.stored.get(device, {}).get("summarised", 0)
            delivered += len(seqs)
            lost += max(0, len(seqs) - counted)
            doubled += max(0, counted - len(seqs))
        return delivered, lost, doubled

    def invariants(self) -> dict[str, bool]:
        _, lost, doubled = self.record_counts()
        unacked = sum(self.produced.values()) - sum(len(s) for s in self.view.seqs.values())
        return {
            "no_acknowledged_record_lost": self.drained
            and lost == 0
            and unacked == 0
            and not self.missing_flagged,
            "no_record_stored_twice": doubled == 0 and self.view.seq_reused == 0,
            "every_device_on_its_desired_model_or_says_why": not self.devices_off_model,
            "no_daemon_crashed": not self.crashed,
        }

    def summary(self) -> dict[str, Any]:
        view = self.view
        delivered, lost, doubled = self.record_counts()
        stored_whole = sum(s.get("whole", 0) for s in self.stored.values())
        before = after = None
        if self.drift_started_at is not None:
            before = view.accuracy_between(0, self.drift_started_at)
            after = view.accuracy_between(self.drift_started_at, float("inf"))
        return {
            "scenario": self.scenario.name,
            "sites": self.scenario.sites,
            "devices": len(self.produced),
            # Ids are site-N-<class>-NNNN; devices that joined during the run are of class "new".
            "devices_by_class": dict(Counter(device.split("-")[2] for device in self.produced)),
            "seconds": round(self.seconds, 1),
            "records_produced": sum(self.produced.values()),
            "records_delivered_unique": delivered,
            "records_counted_at_controller": sum(s.get("summarised", 0) for s in self.stored.values()),
            "records_stored_whole": stored_whole,
            "records_lost": lost,
            "records_counted_twice": doubled,
            "duplicates_delivered": view.duplicates,
            "records_per_s": round(delivered / self.seconds, 1) if self.seconds else 0.0,
            "anomalies_delivered": view.anomalies,
            "anomalies_missing_at_controller": self.missing_flagged,
            "telemetry_bytes": view.bytes,
            "upstream_bytes": int(self.upstream_bytes),
            "upstream_bytes_ratio": round(self.upstream_bytes / view.bytes, 4) if view.bytes else None,
            "device_model_accuracy": round(view.correct / view.labelled, 4) if view.labelled else None,
            "accuracy_before_drift": before,
            "accuracy_after_drift": after,
            "training_accuracy": round(self.model_accuracy, 4),
            "compiler": self.compiler_table,
            "rejected_payloads": view.rejected,
            "events": sorted(self.events, key=lambda line: float(line.split("s", 1)[0])),
            "crashed": self.crashed,
            "devices_off_model": self.devices_off_model,
            "drift_scores": self.drift_scores,
            "invariants": self.invariants(),
            "run_dir": str(self.run_dir),
        }


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
    fleet: FleetRun | None = None
    try:
        with console.status("training and compiling the first model, starting the controller"):
            compiled, _ = await asyncio.gather(
                asyncio.to_thread(_compile, run_dir, key, scenario), asyncio.to_thread(controller.start)
            )
        result.model_accuracy, result.compiler_table = compiled.accuracy, compiled.table
        console.print(
            f"model {MODEL_ID}@{MODEL_VERSION}: accuracy {compiled.accuracy:.3f}, built"
            f" {', '.join(compiled.bundles)} in {compiled.seconds:.1f}s; controller at {controller.url}"
        )
        await asyncio.to_thread(_register_and_deploy, controller, compiled.bundles)
        fleet = FleetRun(scenario, run_dir, controller, compiled.bundles, key_file, result.view)
        with console.status("starting brokers, uplinks and gateways"):
            for index in range(scenario.sites):
                await fleet.add_site(index)
        for site in fleet.sites:
            for number in range(scenario.devices_per_site):
                kind = device_class(scenario, number).name
                await fleet.start_agent(site, f"{site.name}-{kind}-{number:04d}")
        fleet.started = time.monotonic()
        await _stream(fleet, result, console)
    finally:
        if fleet is not None:
            result.produced = fleet.produced()
            result.crashed = list(fleet.crashed)
            result.drift_started_at = _wall(fleet, fleet.drift_started_at)
            await fleet.close()
        await asyncio.to_thread(controller.stop)
    await asyncio.to_thread(_write_reports, result)
    return result


async def _stream(fleet: FleetRun, result: RunResult, console: Console) -> None:
    scenario = fleet.scenario
    pending = sorted(scenario.events, key=lambda e: e.at_s)
    running: list[asyncio.Task[None]] = []
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[records]} records, {task.fields[online]} online"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("streaming", total=scenario.duration_s, records=0, online=0)
        next_sample = 0.0
        while (elapsed := fleet.elapsed()) < scenario.duration_s:
            while pending and pending[0].at_s <= elapsed:
                running.append(asyncio.create_task(_event(fleet, pending.pop(0), result, console)))
            if elapsed >= next_sample:
                await result.timeline.sample(fleet)
                next_sample += 1.0
            fleet.check_crashes()
            progress.update(
                bar, completed=elapsed, records=result.view.records, online=result.timeline.online_now()
            )
            await asyncio.sleep(0.2)
        progress.update(bar, completed=scenario.duration_s)
        await asyncio.gather(*running)  # temporary faults end before the drain
        fleet.stop_producing()
        drain = progress.add_task("draining to the controller", total=None, records=0, online=0)
        deadline = time.monotonic() + scenario.drain_timeout_s
        while time.monotonic() < deadline:
            fleet.check_crashes()
            if fleet.drained() and await _all_at_controller(fleet, result):
                result.drained = True
                break
            if fleet.elapsed() >= next_sample:
                await result.timeline.sample(fleet)
                next_sample += 1.0
            progress.update(drain, records=result.view.records, online=result.timeline.online_now())
            await asyncio.sleep(0.5)
    await result.timeline.sample(fleet)
    result.seconds = fleet.elapsed()
    await _final_checks(fleet, result)


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
    """Every record the sites delivered is counted in a window summary at the controller."""
    result.stored = await asyncio.to_thread(fleet.controller.stored)
    return all(
        result.stored.get(device, {}).get("summarised", 0) >= len(seqs)
        for device, seqs in result.view.seqs.items()
    )


async def _final_checks(fleet: FleetRun, result: RunResult) -> None:
    controller = fleet.controller
    result.stored = await asyncio.to_thread(controller.stored)
    anomalies = await asyncio.to_thread(controller.anomalies)
    result.missing_flagged = len(result.view.flagged - anomalies)
    devices = await asyncio.to_thread(controller.devices)
    for device in fleet.produced():
        state = devices.get(device)
        if state is None or (state.model_version != MODEL_VERSION and not state.reason):
            result.devices_off_model.append(device)
    metrics = [await asyncio.to_thread(site.gateway.metrics) for site in fleet.sites]
    result.upstream_bytes = sum(m.get("edge_gateway_upstream_bytes_total", 0.0) for m in metrics)
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
    (result.run_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (result.run_dir / "report.html").write_text(render_html(summary))
