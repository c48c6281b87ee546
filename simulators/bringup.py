"""Brings a scenario's fleet up, and down again: the controller, the observer, the first model, the
model versions the timeline rolls out, per site a broker, an uplink and a gateway, and the devices.

`fleet_up` yields once every device runs its pipeline (the scenario's clock starts there) and,
on the way out, stops everything in order and writes what only the end can tell into the
result (what each device produced, what crashed, the simulator's lag verdict). The runner
streams the timeline inside it; a benchmark can drive the fleet its own way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from fleet_protocol.signing import generate_private_key, public_key_pem
from model_compiler.archive import pack
from simulators.child_process import start_to_the_end
from simulators.controller import ControllerProcess
from simulators.events import prepare
from simulators.fleet import FleetRun
from simulators.lag import LagMonitor
from simulators.learning import set_up as set_up_learning
from simulators.observer_process import ObserverProcess
from simulators.releases import MODEL_ID
from simulators.result import RunResult
from simulators.scenario import FIRST_MODEL_VERSION, Scenario, SimError, device_class
from simulators.worker import WorkerProcess

MODEL_VERSION = FIRST_MODEL_VERSION
#: Devices that have not loaded their model by then start late, and their lag is measured.
_START_WITHIN_S = 300.0


@dataclass
class Up:
    fleet: FleetRun
    lag: LagMonitor


@asynccontextmanager
async def fleet_up(
    scenario: Scenario, run_dir: Path, console: Console, result: RunResult
) -> AsyncIterator[Up]:
    """The whole fleet, streaming from the moment this yields; everything stopped cleanly after."""
    await asyncio.to_thread(run_dir.mkdir, parents=True, exist_ok=True)
    console.print(
        f"[bold]edgefleet[/] scenario [cyan]{scenario.name}[/]: {scenario.sites} sites x "
        f"{scenario.devices_per_site} devices, {scenario.duration_s:.0f} s, {len(scenario.events)} events"
    )
    key = generate_private_key()
    key_file = run_dir / "fleet-signing.pub"
    await asyncio.to_thread(key_file.write_bytes, public_key_pem(key.public_key()))
    controller = ControllerProcess(run_dir / "controller", key_file)
    worker: WorkerProcess | None = None
    if scenario.learning is not None:
        controller.env["EDGEFLEET_CONTROLLER__ALARM_TICK_S"] = str(scenario.learning.alarm_tick_s)
        worker = WorkerProcess(run_dir / "worker", controller, key)
    observer = ObserverProcess(run_dir / "observer.log")
    fleet: FleetRun | None = None
    lag: LagMonitor | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        with console.status("training and compiling the first model, starting the controller"):
            compiled, _, _ = await asyncio.gather(
                asyncio.to_thread(_compile, run_dir, key, scenario),
                start_to_the_end(controller.start),
                observer.start(),
            )
        result.model_accuracy, result.compiler_table = compiled.accuracy, compiled.table
        console.print(
            f"model {MODEL_ID}@{MODEL_VERSION}: accuracy {compiled.accuracy:.3f}, built"
            f" {', '.join(compiled.bundles)} in {compiled.seconds:.1f}s; controller at {controller.url}"
        )
        await asyncio.to_thread(_register_and_deploy, controller, compiled.bundles)
        fleet = FleetRun(scenario, run_dir, controller, compiled.bundles, key_file, observer, key)
        if worker is not None and scenario.learning is not None:
            await asyncio.to_thread(set_up_learning, controller, scenario.learning, MODEL_VERSION)
            await start_to_the_end(worker.start)
            fleet.worker = worker
            console.print(
                f"jobs worker started (log {worker.log});"
                f" alarm pass every {scenario.learning.alarm_tick_s:g}s"
            )
        await _prepare_timeline(fleet, console)
        with console.status("starting brokers, uplinks and gateways"):
            for index in range(scenario.sites):
                await fleet.add_site(index)
        lag = LagMonitor(scenario.lag_limit_s, fleet.pace, host_delay=fleet.take_host_delay)
        tasks.append(asyncio.create_task(lag.run(), name="lag-monitor"))
        tasks.append(asyncio.create_task(_poll_agents(fleet), name="agent-status"))
        with console.status(f"starting {scenario.sites * scenario.devices_per_site} devices"):
            for site in fleet.sites:
                for number in range(scenario.devices_per_site):
                    kind = device_class(scenario, number).name
                    await fleet.start_agent(site, f"{site.name}-{kind}-{number:04d}")
            await fleet.wait_running(within_s=_START_WITHIN_S)
        fleet.started = time.monotonic()
        result.stream_started_at = time.time()
        yield Up(fleet, lag)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if fleet is not None:
            result.drift_started_at = _wall(fleet, fleet.drift_started_at)
            if lag is not None:
                result.lag, result.lag_series = lag.verdict(fleet.started), lag.series(fleet.started)
            await fleet.close()
            # After the close: the agent processes said their last word on every device.
            result.produced = fleet.produced()
            result.crashed = list(fleet.crashed)
        await observer.close()
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(controller.stop)


async def _prepare_timeline(fleet: FleetRun, console: Console) -> None:
    """Train, build and upload the model versions the timeline rolls out (before the clock starts)."""
    for spec in fleet.scenario.events:
        version = getattr(spec, "version", None)
        with console.status(f"training and building {spec.kind} {version}" if version else spec.kind):
            await prepare(fleet, spec)
        if version in fleet.releases:
            release = fleet.releases[version]
            defect = f" with {release.defect} built in" if release.defect else ""
            console.print(
                f"model {MODEL_ID}@{version}{defect}: accuracy {release.accuracy:.3f},"
                f" built {', '.join(release.bundles)} and uploaded in {release.seconds:.1f}s"
            )


async def _poll_agents(fleet: FleetRun) -> None:
    """The agent processes' status twice a second: what the runner's questions are answered from."""
    while True:
        await fleet.poll()
        await asyncio.sleep(0.5)


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


def _wall(fleet: FleetRun, elapsed: float | None) -> float | None:
    """A time on the run's clock as Unix time (the records' clock)."""
    if elapsed is None:
        return None
    return time.time() - (time.monotonic() - fleet.started) + elapsed
