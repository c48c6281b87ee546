"""Runs a scenario end to end: controller, sites, a first model, devices, the timeline, a report.

1-2. The fleet comes up (`simulators.bringup`): a controller process, the observer process; per
   site a Mosquitto, an uplink proxy and an `edge-gateway` process; a first model trained on
   generated data, compiled, measured and signed by `model_compiler`, uploaded, deployed to every
   device and provisioned on each; the model versions the timeline rolls out, built and uploaded.
3. Devices (in agent processes of their own) stream; events fire on the scenario's timeline; a
   sample is taken every second, and the simulator's own lag is measured (`simulators.lag`).
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

from simulators.bringup import fleet_up
from simulators.controller import ControllerProcess
from simulators.events import Event, apply
from simulators.fleet import FleetRun
from simulators.lag import LagMonitor
from simulators.learning import JobOutcome, LearningResult, labelled_records, site_accuracy
from simulators.learning import alarms as learning_alarms
from simulators.learning import verdicts as learning_verdicts
from simulators.ota_checks import judge
from simulators.releases import MODEL_ID
from simulators.result import RunResult, off_model
from simulators.scenario import FIRST_MODEL_VERSION, Scenario

log = logging.getLogger(__name__)

MODEL_VERSION = FIRST_MODEL_VERSION
#: The observer catches up once devices stop producing; it gets at least this long to.
_OBSERVER_CATCH_UP_S = 60.0
#: After the timeline, devices still in an update get this long to finish it before the drain.
_SETTLE_UPDATES_S = 60.0


async def run_scenario(scenario: Scenario, run_dir: Path, console: Console | None = None) -> RunResult:
    console = console or Console()
    # Absolute: the daemons' configs are files in the run directory, and theirs resolve against them.
    run_dir = await asyncio.to_thread(run_dir.resolve)
    result = RunResult(scenario, run_dir, time.time())
    async with fleet_up(scenario, run_dir, console, result) as up:
        await _stream(up.fleet, result, up.lag, console)
        await _final_checks(up.fleet, result)
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
            if fleet.rollouts or fleet.jobs:
                await _settle_updates(fleet, result, _SETTLE_UPDATES_S)
            lag.stop_judging()
            await fleet.stop_producing()
            drain = progress.add_task("draining to the controller", total=None, records=0, online=0)
            await _drain(
                fleet, result, lag, lambda: progress.update(drain, records=result.timeline.delivered_now())
            )
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    await result.timeline.sample(fleet)
    result.seconds = fleet.elapsed()


async def _settle_updates(fleet: FleetRun, result: RunResult, within_s: float) -> None:
    """Devices still in an update finish it (reading, shadowing) before the drain: how each update
    ended is what the invariants of updates judge."""
    busy = await fleet.settle_updates(within_s)
    if busy:
        result.events.append(
            f"{fleet.elapsed():>5.0f}s still mid-update after {within_s:.0f}s: {', '.join(busy)}"
        )


async def _sample_every_second(fleet: FleetRun, result: RunResult) -> None:
    next_sample = 0.0
    while True:
        await result.timeline.sample(fleet)
        next_sample += 1.0
        await asyncio.sleep(max(0.0, next_sample - fleet.elapsed()))


async def _drain(fleet: FleetRun, result: RunResult, lag: LagMonitor, tick: Callable[[], None]) -> None:
    """Outboxes empty, then the observer's view complete, then every record at the controller."""
    deadline = time.monotonic() + fleet.scenario.drain_timeout_s
    await fleet.poll()
    while not fleet.outboxes_empty() and time.monotonic() < deadline:
        fleet.check_crashes()
        tick()
        await asyncio.sleep(0.5)
        await fleet.poll()
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
    if not result.drained and result.books.lost:
        result.in_transit = await _in_transit(fleet, result)
    devices = await asyncio.to_thread(controller.devices)
    result.rollouts = list(fleet.rollouts)
    succeeded = [r.version for r in fleet.rollouts if r.state == "succeeded"]
    result.final_version = succeeded[-1] if succeeded else MODEL_VERSION
    produced = fleet.produced()
    result.devices_off_model, result.devices_unknown = [], []
    for site in fleet.sites:
        # A site a job's rollout reached ends on that job's version; the others on the fleet's.
        version = learning_version(fleet.jobs, site.name) or result.final_version
        mine = [device for device in produced if device in site.devices]
        off, unknown = off_model(mine, devices, result.view.states, (MODEL_ID, version))
        result.devices_off_model += off
        result.devices_unknown += unknown
    if fleet.rollouts:
        site_of = {device: site.name for site in fleet.sites for device in site.devices}
        fetches = await asyncio.to_thread(fleet.bundle_fetches)
        result.ota = judge(
            fleet.rollouts,
            result.view,
            site_of=site_of,
            killed=fleet.killed(),
            fetches=fetches,
            planted=fleet.planted,
            complete=result.view_complete,
            moved_on=moved_on(fleet),
        )
        result.swap_gaps = fleet.swap_gaps()
    for site in fleet.sites:
        # A gateway that crashed is reported as such; its bytes are not counted.
        with contextlib.suppress(httpx.HTTPError):
            metrics = await asyncio.to_thread(site.gateway.metrics)
            result.upstream_bytes += metrics.get("edge_gateway_upstream_bytes_total", 0.0)
    result.drift_scores = await asyncio.to_thread(_drift_scores, controller)
    if fleet.scenario.learning is not None:
        result.learning = await asyncio.to_thread(_learning, fleet, result)
    if fleet.scenario.labels is not None:
        await fleet.poll()  # the labellers' counts as of now, not as of the last sample
        result.labels_published = sum(host.labels_published for host in fleet.hosts())


async def _in_transit(fleet: FleetRun, result: RunResult) -> str | None:
    """Why records not counted are demonstrably still on their way, if they are (read from the gateways)."""
    reasons = []
    lost_by_device: dict[str, int] = {}
    for device, seq in result.books.lost:
        lost_by_device[device] = max(lost_by_device.get(device, 0), seq)
    for site in fleet.sites:
        try:
            held = await asyncio.to_thread(site.gateway.in_transit)
        except Exception as exc:  # a gateway's store that cannot be read tells nothing either way
            log.warning("cannot read %s's gateway store: %s", site.name, exc)
            continue
        unread = sum(1 for d in site.devices if lost_by_device.get(d, 0) > held.highest_seq.get(d, 0))
        if held.upstream_items:
            reasons.append(f"{site.name}: {held.upstream_items} items in the gateway's upstream queue")
        if held.open_windows:
            reasons.append(f"{site.name}: {held.open_windows} windows still open at the gateway")
        if unread:
            reasons.append(f"{site.name}: {unread} devices' records not yet read from the broker")
    return "; ".join(reasons) or None


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


def learning_version(jobs: list[JobOutcome], site: str) -> str | None:
    """The version the last job rolled out to ``site`` (or to every site), if any."""
    done = [j for j in jobs if j.rolled_out() and j.site in (site, "all sites") and j.rollout_ended_at]
    return max(done, key=lambda j: j.rollout_ended_at or 0.0).version if done else None


def moved_on(fleet: FleetRun) -> dict[str, str]:
    """Per device of a site a learning job's rollout reached, the version that job gave it."""
    out = {}
    for site in fleet.sites:
        version = learning_version(fleet.jobs, site.name)
        if version is not None:
            out.update(dict.fromkeys(site.devices, version))
    return out


def _learning(fleet: FleetRun, result: RunResult) -> LearningResult:
    """Alarms, jobs and accuracy per site, from what the controller stored (blocking)."""
    scenario = fleet.scenario
    assert scenario.learning is not None
    origin, end = result.stream_started_at, time.time()
    records = labelled_records(fleet.controller.database_url, origin)
    accuracy = {}
    for site in fleet.sites:
        done = [j for j in fleet.jobs if j.rolled_out() and j.site in (site.name, "all sites")]
        recovered = max((j.rollout_ended_at or 0.0) for j in done) if done else None
        drifted = origin + site.drifted_at if site.drifted_at is not None else None
        accuracy[site.name] = site_accuracy(
            records,
            site.name,
            origin=origin,
            end=end,
            drifted_at=drifted,
            recovered_at=recovered,
            series_s=5.0,
        )
    fired = learning_alarms(fleet.controller)
    verdicts, problems = learning_verdicts(
        scenario.learning,
        fleet.jobs,
        fired,
        accuracy,
        [site.name for site in fleet.sites],
        complete=result.view_complete,
    )
    return LearningResult(
        list(fleet.jobs), fired, accuracy, verdicts, problems, series_s=5.0, rollouts=list(fleet.rollouts)
    )


def _write_reports(result: RunResult) -> None:
    from simulators.report_html import render_html

    summary = result.summary()
    summary["timeline"] = result.timeline.as_dict()
    summary["simulator"] = {**summary["simulator"], "series": result.lag_series}
    (result.run_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (result.run_dir / "report.html").write_text(render_html(summary))
