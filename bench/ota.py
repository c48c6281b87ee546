"""Over-the-air updates at fleet scale; prints one JSON object.

The fleet is fleet-sim's (`simulators.bringup.fleet_up`), every part real: a ``cloud-controller``
process, per site a Mosquitto, an uplink proxy and an ``edge-gateway`` process, and the devices,
real ``edge_agent.Agent``s in one process per site (``--devices-per-site``, 500 by default, at
``--rate-hz``; a few of each site's devices, the ``fast`` class, read at 10 Hz in a process of
their own). The versions are
trained, built and signed by ``model_compiler`` during the run (one ONNX int8 bundle each) and
rolled out through the controller's rollout API, as ``fleet-sim``'s ``rollout`` event does.

- ``rollout_seconds``: a good version in waves of 10, 50 and 100 % with no soak and no shadow,
  from its creation to the controller's ``succeeded`` (goal <= 120 s); ``all_devices_seconds``: to
  every device reporting the new version (its retained state, as the observer reads it).
- ``uplink_downloads_per_site``: bundle downloads each site's gateway made over its uplink during
  that rollout (``edge_gateway_bundle_fetches_total{result="ok"}``; goal exactly 1: one bundle).
- ``rollback_seconds``: a bad version (NaN outputs) in waves of 10 and 100 % with a 5 s soak: from
  the controller's abort decision to every canary device back (running the previous version, with
  the desired state that names it applied); goal <= 30 s. ``canary_failure_to_abort_seconds``: from
  the first canary device's ``ota.rolled_back`` to that decision.
- ``swap_gap_ms``: the longest time without an inference at a switch of models, over the devices
  that read at 10 Hz (``Agent.swap_gap_s``, the ``edge_agent_model_swap_gap_seconds`` metric);
  goal <= one reading period at 10 Hz (100 ms). The gap counts from the last batch of the old
  model to the first of the new, so it holds one reading period by construction when the switch
  costs nothing: the excess over the period is given beside it. ``steady_gap_ms_before_swap``: the
  longest gap between two batches of the same model on those devices in the 5-10 s before their
  switch (``Agent.steady_gap_s``), what the machine's own scheduling gives without any switch;
  ``swap_gap_over_own_steady_ms_max``: the most any device's swap gap exceeded its own steady gap.
- ``simulator``: whether the machine held the fleet on schedule (`simulators.lag`), and if not,
  the largest fleet it held.

Run: ``.venv/bin/python bench/ota.py`` (about 3 minutes on 2 cores; Mosquitto installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from bench._machine import machine  # noqa: E402
from bench._output import stdout_for_json_only  # noqa: E402
from simulators.bringup import fleet_up  # noqa: E402
from simulators.events import apply, parse_event  # noqa: E402
from simulators.fleet import FleetRun  # noqa: E402
from simulators.result import RunResult  # noqa: E402
from simulators.scenario import FIRST_MODEL_VERSION, Scenario  # noqa: E402

GOOD, BAD = "2.0.0", "2.1.0"
READING_PERIOD_MS = 100.0  # 10 Hz


def _scenario(args: argparse.Namespace) -> Scenario:
    fast = max(1, round(args.devices_per_site * args.fast_share))
    return Scenario.model_validate(
        {
            "name": "bench-ota",
            "sites": args.sites,
            "devices_per_site": args.devices_per_site,
            "duration_s": 3600,  # the bench drives the fleet itself: no timeline clock
            "rate_hz": args.rate_hz,
            "runtimes": ["onnx-int8"],
            "device_classes": [
                {"name": "dev", "share": args.devices_per_site - fast},
                # In agent processes of their own: the swap gap is the agent's, not the stall of a
                # process where 500 other devices load a new model at the same moment.
                {"name": "fast", "share": fast, "rate_hz": 10.0, "own_process": True},
            ],
            "gateway": {"window_s": 30, "drift_window_s": 30},
            "agent_processes_per_site": args.agent_processes_per_site,
            "events": [
                {
                    "at_s": 0,
                    "kind": "rollout",
                    "version": GOOD,
                    "waves": [10, 50, 100],
                    "soak_s": 0,
                    "shadow_s": 0,
                },
                {
                    "at_s": 0,
                    "kind": "bad_rollout",
                    "version": BAD,
                    "defect": "nan_outputs",
                    "waves": [10, 100],
                    "soak_s": 5,
                    "shadow_s": 2,
                },
            ],
        }
    )


async def _until(what: str, check, within_s: float, every_s: float = 0.5) -> float | None:  # type: ignore[no-untyped-def]
    """Unix time at which ``check()`` (async) first held; None if it did not within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await check():
            return time.time()
        await asyncio.sleep(every_s)
    logging.warning("%s: not within %.0f s", what, within_s)
    return None


async def _all_on(fleet: FleetRun, version: str, devices: int) -> bool:
    models = await fleet.observer.models(within_s=30)
    return sum(1 for m in models.values() if m["online"] and m["version"] == version) >= devices


async def _follow_canary(fleet: FleetRun, bad: str, previous: str, stop: asyncio.Event) -> dict[str, float]:
    """Devices sent ``bad``, and when each was back: on ``previous``, its desired state applied."""
    sent: set[str] = set()
    back: dict[str, float] = {}
    while True:
        models = await fleet.observer.models(within_s=30)
        now = time.time()
        for device, m in models.items():
            if m["desired_version"] == bad:
                sent.add(device)
                back.pop(device, None)
            elif (
                device in sent
                and device not in back
                and m["desired_version"] == previous
                and m["revision"] == m["desired_revision"]
                and m["version"] == previous
            ):
                back[device] = now
        if stop.is_set() and sent and len(back) == len(sent):
            return back
        await asyncio.sleep(0.25)


async def bench(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    scenario = _scenario(args)
    good_spec, bad_spec = (parse_event(e.model_dump()) for e in scenario.events)
    devices = scenario.sites * scenario.devices_per_site
    result = RunResult(scenario, run_dir, time.time())
    console = Console(stderr=True)
    out: dict[str, Any] = {"devices": devices, "sites": scenario.sites, "rate_hz": args.rate_hz}
    started = time.monotonic()
    async with fleet_up(scenario, run_dir, console, result) as up:
        fleet = up.fleet
        up.lag.start_judging()
        await _until("every device online", lambda: _all_on(fleet, FIRST_MODEL_VERSION, devices), 300)
        out["fleet_up_seconds"] = round(time.monotonic() - started, 1)
        await asyncio.sleep(5)  # the gateways' first desired polls and bundle prefetches settle
        before = await asyncio.to_thread(fleet.bundle_fetches)
        watch = asyncio.create_task(
            _until(f"every device on {GOOD}", lambda: _all_on(fleet, GOOD, devices), 600)
        )
        console.log(await apply(fleet, good_spec))
        good = fleet.rollouts[-1]
        everyone = await watch
        after = await asyncio.to_thread(fleet.bundle_fetches)
        out["rollout_state"] = good.state
        out["rollout_seconds"] = round(good.seconds(), 1) if good.seconds() is not None else None
        out["all_devices_seconds"] = (
            round(everyone - good.created_at, 1) if everyone and good.created_at else None
        )
        out["rollout_waves"] = [
            {"target": w.get("target"), "started_after_s": round(w["started_at"] - good.created_at, 1)}
            for w in good.waves
            if w.get("started_at") is not None and good.created_at
        ]
        out["uplink_downloads_per_site"] = {site: after[site] - before[site] for site in after}

        await fleet.poll()
        gaps = fleet.swap_gaps()
        fast = sorted(g * 1000 for d, g in gaps.items() if "-fast-" in d)
        every = sorted(g * 1000 for g in gaps.values())
        out["swap_gap_ms"] = round(fast[-1], 1) if fast else None
        out["swap_gap_ms_p50"] = round(fast[len(fast) // 2], 1) if fast else None
        out["swap_gap_excess_ms"] = round(fast[-1] - READING_PERIOD_MS, 1) if fast else None
        out["swap_gap_excess_ms_p50"] = round(fast[len(fast) // 2] - READING_PERIOD_MS, 1) if fast else None
        out["swap_gap_devices"] = len(fast)
        out["swap_gap_ms_all_devices_p50"] = round(every[len(every) // 2], 1) if every else None
        # The same devices' own longest gap between two batches in the 5-10 s before their switch.
        steady = fleet.steady_gaps()
        before = sorted(g * 1000 for d, g in steady.items() if "-fast-" in d)
        out["steady_gap_ms_before_swap"] = round(before[-1], 1) if before else None
        out["steady_gap_ms_before_swap_p50"] = round(before[len(before) // 2], 1) if before else None
        over = [gaps[d] - steady[d] for d in gaps if "-fast-" in d and d in steady]
        out["swap_gap_over_own_steady_ms_max"] = round(max(over) * 1000, 1) if over else None

        stop = asyncio.Event()
        canary = asyncio.create_task(_follow_canary(fleet, BAD, GOOD, stop))
        console.log(await apply(fleet, bad_spec))
        bad = fleet.rollouts[-1]
        stop.set()
        try:
            back = await asyncio.wait_for(canary, 300)
        except TimeoutError:
            back = {}
        aborted = next((d["at"] for d in bad.decisions if d["action"] == "abort"), None)
        view = await fleet.observer.view()
        failures = [
            e.ts
            for device in back
            for e in view.ota.get(device, [])
            if e.version == BAD and e.kind == "ota.rolled_back"
        ]
        out["bad_rollout_state"] = bad.state
        out["canary_devices"] = len(back)
        out["rollback_seconds"] = round(max(back.values()) - aborted, 1) if back and aborted else None
        out["canary_failure_to_abort_seconds"] = (
            round(aborted - min(failures), 1) if failures and aborted else None
        )
        up.lag.stop_judging()
    out["simulator"] = {
        k: result.lag.get(k)
        for k in ("behind", "message", "loop_delay_p95_s", "loop_delay_max_s", "largest_fleet_held")
    }
    out["crashed"] = result.crashed
    out["goals"] = {
        "rollout_seconds <= 120": out["rollout_seconds"] is not None and out["rollout_seconds"] <= 120,
        "uplink_downloads_per_site == 1": all(v == 1 for v in out["uplink_downloads_per_site"].values()),
        "rollback_seconds <= 30": out["rollback_seconds"] is not None and out["rollback_seconds"] <= 30,
        "swap_gap_ms <= 100": out["swap_gap_ms"] is not None and out["swap_gap_ms"] <= READING_PERIOD_MS,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices-per-site", type=int, default=500)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rate-hz", type=float, default=0.5, help="readings per second of most devices")
    parser.add_argument("--fast-share", type=float, default=0.02, help="share of devices reading at 10 Hz")
    parser.add_argument("--agent-processes-per-site", type=int, default=1)
    parser.add_argument("--out", type=Path, help="run directory (default: a temporary one, removed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with stdout_for_json_only() as write:
        started = time.monotonic()
        if args.out is not None:
            figures = asyncio.run(bench(args, args.out.resolve()))
        else:
            with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp:
                figures = asyncio.run(bench(args, Path(tmp)))
        figures["bench_seconds"] = round(time.monotonic() - started, 1)
        figures["machine"] = machine()
        write(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
