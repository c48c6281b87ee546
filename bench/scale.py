"""How many virtual devices one process sustains, end to end; prints one JSON object.

The question: the largest fleet that ONE process of virtual devices keeps up with on this
machine, each device producing one record per second, from its sensor to the site gateway.

- Devices are real ``edge_agent.Agent`` instances (the daemon's own code), all on this process's
  event loop, each with its own MQTT connection, SQLite outbox and ONNX Runtime session (signed
  int8 MLP 16-64-4, inline inference), sharing two small thread pools, as ``fleet-sim`` runs them.
- They publish to a site Mosquitto (``simulators.brokers.SiteBroker``: persistence,
  ``max_queued_messages 0``, ``max_inflight_messages 1000``) read by an ``edge-gateway run``
  process, which sends window summaries and flagged records up to a ``cloud-controller serve``
  process on SQLite (``--no-controller``: no upstream, the gateway keeps them in its queue).
- The fleet grows in steps (``--steps``); each step starts the extra agents in chunks, lets the
  start-up backlog drain (``--warmup``, or as long as the start-up took if longer), then
  measures a steady window (``--window``: whole summary windows of the gateway, 60 s each,
  aligned on the wall clock as the gateway aligns them):
  ``records_per_s_offered`` (devices x rate), ``records_per_s_produced`` (records the agents
  committed to their outboxes), ``records_per_s_delivered`` (records of that window the
  controller stored: the counts of its window summaries in the controller's database, which
  count every record exactly once, read when they all arrived or ``--summary-wait`` seconds
  after the window ended), ``summary_delay_s_max`` (their arrival at the controller minus the
  window's end), ``records_per_s_counted_by_gateway`` (the gateway's
  ``edge_gateway_records_total``, the former "delivered": counted before its transaction
  commits), the gateway's lag (produced minus counted) at both ends of the window, outbox
  depths, the loop's scheduling delay, RSS per device (growth of this
  process's VmRSS over its level before the first agent, divided by devices) and CPU seconds of
  the broker, the gateway, the controller and this process (utime+stime from /proc) as shares
  and as cores.
- A step keeps up when delivered >= 0.95 x offered and the gateway's lag grew by less than 5 %
  of what the window offered. Steps up to ``--goal`` devices always run (the goal's figures are always
  measured, a backlog left by a step that fell behind included); a step above the goal runs only
  if every step before it kept up; ``--stop-at-first-miss`` stops at the first that fell behind.
  A step that would not end within ``--budget`` seconds of the start is skipped. Without a
  controller (``--no-controller``) the gateway's count stands in for "delivered".

Run: ``.venv/bin/python bench/scale.py`` (about 12-15 minutes; Mosquitto installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime  # noqa: E402,F401 - imported before the RSS baseline: a fixed cost, not per device

from bench._machine import machine  # noqa: E402
from bench._output import stdout_for_json_only  # noqa: E402
from cloud_controller.db import make_engine  # noqa: E402
from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config import load_settings  # noqa: E402
from edge_agent.sources.synthetic import SyntheticSource  # noqa: E402
from fleet_protocol.signing import generate_private_key, public_key_pem  # noqa: E402
from simulators.brokers import SiteBroker  # noqa: E402
from simulators.controller import ControllerProcess  # noqa: E402
from simulators.gateways import GatewayProcess  # noqa: E402

SITE = "scale"
KEEP_UP_SHARE = 0.95
SUMMARY_WINDOW_S = 60.0  # the default DeviceClass.window_s: the gateway config below keeps it
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(f"[bench/scale] {message}", file=sys.stderr, flush=True)


# -- /proc ----------------------------------------------------------------------------------------


def cpu_seconds(pid: int | str, thread: int | None = None) -> float:
    """utime + stime of a process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def raise_nofile() -> int:
    """Soft open-files limit up to the hard one: each agent holds a socket and three SQLite files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the fleet ------------------------------------------------------------------------------------


@dataclass
class Fleet:
    """Agents on this loop, built the way ``simulators.fleet.FleetRun.start_agent`` builds them."""

    work: Path
    bundle: Path
    key_file: Path
    broker_port: int
    rate_hz: float
    state_interval_s: float
    agents: list[Agent] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outbox_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="outbox")
        self.infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")

    def start_one(self) -> Agent:
        number = len(self.agents)
        device = f"{SITE}-dev-{number:05d}"
        settings = load_settings(
            None,
            device_id=device,
            site=SITE,
            data_dir=str(self.work / "devices" / device),
            model_dir=str(self.bundle),
            trusted_keys=[str(self.key_file)],
            source={"kind": "synthetic", "rate_hz": self.rate_hz, "seed": number},
            mqtt={
                "port": self.broker_port,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 3.0,
                "state_interval_s": self.state_interval_s,
            },
            inference={"executor": "inline", "micro_batch_max": 32},
        )
        source = SyntheticSource(rate_hz=self.rate_hz, seed=number, anomaly_rate=0.01)
        agent = Agent(
            settings, source=source, outbox_executor=self.outbox_pool, inference_executor=self.infer_pool
        )
        self.agents.append(agent)
        self.tasks.append(asyncio.create_task(agent.run(), name=device))
        return agent

    async def grow(self, target: int, chunk: int, within_s: float = 60.0) -> int:
        """Start agents up to ``target``, a chunk at a time; return how many failed to connect in time."""
        late = 0
        while len(self.agents) < target:
            started = [self.start_one() for _ in range(min(chunk, target - len(self.agents)))]
            try:
                async with asyncio.timeout(within_s):
                    await asyncio.gather(*(a.syncer.connected.wait() for a in started))
            except TimeoutError:
                late += sum(1 for a in started if not a.syncer.connected.is_set())
            self.check_crashes()
        return late

    def check_crashes(self) -> None:
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"virtual device {task.get_name()} crashed: {task.exception()!r}")

    def totals(self) -> dict[str, int]:
        produced = sent = depth = pending = connected = 0
        for agent in self.agents:
            stats = agent.outbox.stats
            produced += stats.last_seq
            depth += stats.depth
            pending += stats.pending
            sent += int(agent.metrics.records_sent._value.get())  # a counter this loop advances
            connected += agent.syncer.connected.is_set()
        return {
            "produced": produced,
            "sent": sent,
            "depth": depth,
            "pending": pending,
            "connected": connected,
        }

    async def close(self, within_s: float = 30.0) -> int:
        """Stop every agent; cancel those still stopping after ``within_s``; return how many never ended."""
        for agent in self.agents:
            agent.stop()
        stuck: set[asyncio.Task[None]] = set()
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=within_s)
            if late:
                say(f"{len(late)} agents still stopping after {within_s:.0f} s: cancelling them")
                for task in late:
                    task.cancel()
                _, stuck = await asyncio.wait(late, timeout=10)
            if stuck:
                # Left behind with the loop, not awaited forever; say where every pending task waits.
                say(f"{len(stuck)} agents did not end when cancelled; pending tasks by where they wait:")
                for (name, where), count in _pending_tasks().most_common(12):
                    say(f"  {count} x {name} at {where}")
        self.outbox_pool.shutdown(wait=False)
        self.infer_pool.shutdown(wait=False)
        return len(stuck)


def _pending_tasks() -> Counter[tuple[str, str]]:
    """(task name, innermost frame) of every other pending task on this loop."""
    out: Counter[tuple[str, str]] = Counter()
    current = asyncio.current_task()
    for task in asyncio.all_tasks():
        if task is current:
            continue
        frames = task.get_stack()
        where = "?"
        if frames:
            code = frames[-1].f_code
            where = f"{code.co_filename.removeprefix(str(ROOT) + '/')}:{frames[-1].f_lineno} {code.co_name}"
        out[task.get_name().split("-dev-")[0], where] += 1
    return out


class LoopDelay:
    """How late ``asyncio.sleep(period)`` wakes up: the loop's own view of its load."""

    def __init__(self, period_s: float = 0.1) -> None:
        self.period_s = period_s
        self.samples: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.period_s)
            self.samples.append(loop.time() - before - self.period_s)

    def take(self) -> dict[str, float]:
        samples, self.samples = sorted(self.samples) or [0.0], []
        return {
            "loop_delay_ms_p50": round(1000 * statistics.median(samples), 1),
            "loop_delay_ms_p99": round(1000 * samples[int(0.99 * (len(samples) - 1))], 1),
            "loop_delay_ms_max": round(1000 * samples[-1], 1),
        }


# -- one step -------------------------------------------------------------------------------------


@dataclass
class Processes:
    broker: SiteBroker
    gateway: GatewayProcess
    controller: ControllerProcess | None

    def pids(self) -> dict[str, int]:
        assert self.broker.process is not None and self.gateway.process is not None
        out = {"broker": self.broker.process.pid, "gateway": self.gateway.process.pid, "agents": os.getpid()}
        if self.controller is not None and self.controller.process is not None:
            out["controller"] = self.controller.process.pid
        return out


class StoredCounter:
    """What the controller stored, read from its database: records counted in window summaries."""

    def __init__(self, database_url: str) -> None:
        self.engine = make_engine(database_url)

    def window(self, start: float, end: float) -> tuple[int, list[float]]:
        """Records counted in summaries of windows starting in ``[start, end)``, and their delays.

        A delay is the summary's arrival at the controller minus its window's end.
        """
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT count, received_at - window_end FROM window_summary"
                " WHERE window_start >= ? AND window_start < ?",
                (start, end),
            ).all()
        return sum(int(r[0]) for r in rows), [float(r[1]) for r in rows]

    async def collect(
        self, start: float, end: float, expected: int, wait_s: float
    ) -> tuple[int, list[float]]:
        """`window` once nearly ``expected`` records came, or ``wait_s`` after ``end`` (wall clock)."""
        while True:
            count, delays = await asyncio.to_thread(self.window, start, end)
            if count >= 0.99 * expected:
                # The summaries of a window come in a burst: give its tail a moment.
                await asyncio.sleep(2.0)
                return await asyncio.to_thread(self.window, start, end)
            if time.time() > end + wait_s:
                return count, delays
            await asyncio.sleep(1.0)

    def close(self) -> None:
        self.engine.dispose()


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float]
    loop_thread_cpu: float
    fleet: dict[str, int]
    gateway: dict[str, float]

    @property
    def counted(self) -> int:
        return int(self.gateway.get("edge_gateway_records_total", 0.0))

    @property
    def lag(self) -> int:
        return self.fleet["produced"] - self.counted


async def snapshot(fleet: Fleet, procs: Processes) -> Snapshot:
    metrics = await asyncio.to_thread(procs.gateway.metrics)
    return Snapshot(
        at=time.monotonic(),
        cpu={name: cpu_seconds(pid) for name, pid in procs.pids().items()},
        loop_thread_cpu=cpu_seconds("self", os.getpid()),
        fleet=fleet.totals(),
        gateway=metrics,
    )


def step_report(
    devices: int,
    rate_hz: float,
    a: Snapshot,
    b: Snapshot,
    baseline_kb: int,
    stored: tuple[int, list[float]] | None,
    span_s: float,
) -> dict[str, Any]:
    seconds = b.at - a.at
    offered = devices * rate_hz
    produced = (b.fleet["produced"] - a.fleet["produced"]) / seconds
    published = (b.fleet["sent"] - a.fleet["sent"]) / seconds
    counted = (b.counted - a.counted) / seconds
    # The controller's count is of records whose timestamps fall in the span's summary windows.
    delivered = stored[0] / span_s if stored is not None else counted
    delays = stored[1] if stored is not None else None
    name = 'edge_gateway_messages_total{kind="telemetry"}'
    messages = (b.gateway.get(name, 0.0) - a.gateway.get(name, 0.0)) / seconds
    cpu = {name: b.cpu[name] - a.cpu[name] for name in b.cpu}
    total_cpu = sum(cpu.values()) or 1.0
    lag_growth = b.lag - a.lag
    keeps_up = delivered >= KEEP_UP_SHARE * offered and lag_growth < 0.05 * offered * seconds
    rss = rss_kb()
    return {
        "devices": devices,
        "keeps_up": keeps_up,
        "window_s": round(seconds, 1),
        "records_per_s_offered": round(offered, 1),
        "records_per_s_produced": round(produced, 1),
        "records_per_s_published": round(published, 1),
        "records_per_s_delivered": round(delivered, 1),
        "delivered_over_offered": round(delivered / offered, 3),
        "delivered_at": "controller" if stored is not None else "gateway (counted, no controller)",
        "records_per_s_counted_by_gateway": round(counted, 1),
        "summary_delay_s_max": round(max(delays), 1) if delays else None,
        "summary_delay_s_median": round(statistics.median(delays), 1) if delays else None,
        "summaries_received": len(delays) if delays is not None else None,
        "gateway_messages_per_s": round(messages, 1),
        # Above 1 when agents fall behind: the outbox then sends many records per publish.
        "records_per_message": round(counted / max(1e-9, messages), 2),
        "lag_records_start": a.lag,
        "lag_records_end": b.lag,
        "lag_s_end": round(b.lag / offered, 2),  # Little's law: mean time a record is on its way
        "outbox_depth_total": b.fleet["depth"],
        "outbox_pending_total": b.fleet["pending"],
        "agents_connected": b.fleet["connected"],
        "gateway_devices_online": int(b.gateway.get('edge_gateway_devices{state="online"}', 0.0)),
        "gateway_queue_items": int(b.gateway.get("edge_gateway_upstream_queue_items", 0.0)),
        "gateway_duplicates": int(b.gateway.get("edge_gateway_duplicates_total", 0.0)),
        "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_cores": {k: round(v / seconds, 3) for k, v in cpu.items()},
        "cpu_share": {k: round(v / total_cpu, 3) for k, v in cpu.items()},
        "agents_loop_thread_cores": round((b.loop_thread_cpu - a.loop_thread_cpu) / seconds, 3),
        # CPU per record: what each piece would need per device at 1 Hz, on any machine.
        "cpu_ms_per_record": {
            k: round(1000 * v / max(1.0, (produced if k == "agents" else counted) * seconds), 3)
            for k, v in cpu.items()
        },
        "rss_kb": rss,
        "rss_kb_per_device": round((rss - baseline_kb) / devices, 1),
        "open_fds": open_fds(),
    }


# -- main -----------------------------------------------------------------------------------------


def start_processes(work: Path, key_file: Path, with_controller: bool) -> Processes:
    broker = SiteBroker(work / "broker")
    gateway = controller = None
    try:
        broker.start()
        upstream: dict[str, Any] = {}
        if with_controller:
            controller = ControllerProcess(work / "controller", key_file)
            controller.start()
            upstream = {"upstream": {"url": controller.url, "token": controller.gateway_token(SITE)}}
        gateway = GatewayProcess(
            work / "gateway",
            {
                "gateway_id": f"gw-{SITE}",
                "site": SITE,
                "trusted_keys": [str(key_file)],
                "broker": {"host": "127.0.0.1", "port": broker.port},
                "device_classes": [{"name": "sensors"}],  # defaults: flagged whole, 60 s summaries
                "log_level": "WARNING",
                **upstream,
            },
        )
        gateway.start()
    except BaseException:
        stop_processes(broker, gateway, controller)
        raise
    return Processes(broker, gateway, controller)


def stop_processes(
    broker: SiteBroker, gateway: GatewayProcess | None, controller: ControllerProcess | None
) -> None:
    for stop in (gateway.stop if gateway else None, controller.stop if controller else None, broker.stop):
        if stop is not None:
            try:
                stop()
            except Exception as exc:  # stop the others anyway
                say(f"cleanup: {exc!r}")


async def run(
    args: argparse.Namespace, work: Path, procs: Processes, bundle: Path, key_file: Path, started: float
) -> dict[str, Any]:
    errors = LoopErrors()
    asyncio.get_running_loop().set_exception_handler(errors)
    fleet = Fleet(work, bundle, key_file, procs.broker.port, args.rate, args.state_interval)
    stored = StoredCounter(procs.controller.database_url) if procs.controller is not None else None
    delay = LoopDelay()
    delay_task = asyncio.create_task(delay.run())
    steps: list[dict[str, Any]] = []
    notes: list[str] = []
    start_s_per_device = 0.02  # refined by each step
    baseline_kb = rss_kb()
    try:
        for target in sorted(args.steps):
            extra = target - len(fleet.agents)
            if extra <= 0:
                continue
            if target > args.goal and not all(s["keeps_up"] for s in steps):
                break
            startup = extra * start_s_per_device
            # + alignment on a summary window, + the summaries' arrival, + shutdown
            align = SUMMARY_WINDOW_S / 2 + args.summary_wait / 2 if stored is not None else 0.0
            estimate = startup + max(args.warmup, startup) + align + args.window + 50
            if time.monotonic() - started + estimate > args.budget:
                notes.append(f"step {target} skipped: it would not fit in the {args.budget:.0f} s budget")
                say(notes[-1])
                break
            say(f"step {target}: starting {extra} agents in chunks of {args.chunk}")
            t0 = time.monotonic()
            late = await fleet.grow(target, args.chunk)
            startup_s = time.monotonic() - t0
            start_s_per_device = max(0.005, startup_s / extra)
            # The records held back while agents started drain first: wait at least as long again.
            warmup = max(args.warmup, startup_s)
            say(f"step {target}: started in {startup_s:.1f} s ({late} late); warm-up {warmup:.0f} s")
            await asyncio.sleep(warmup)
            window_start = time.time()
            if stored is not None:
                # The window is whole summary windows: the controller stores each record once, in
                # the summary of the window its timestamp falls in.
                window_start = math.ceil(time.time() / SUMMARY_WINDOW_S) * SUMMARY_WINDOW_S
                await asyncio.sleep(window_start - time.time())
            delay.take()
            a = await snapshot(fleet, procs)
            await asyncio.sleep(window_start + args.window - time.time())
            fleet.check_crashes()
            b = await snapshot(fleet, procs)
            counts = None
            if stored is not None:
                expected = b.fleet["produced"] - a.fleet["produced"]
                say(f"step {target}: waiting for the window's summaries at the controller")
                counts = await stored.collect(
                    window_start, window_start + args.window, expected, args.summary_wait
                )
            report = step_report(target, args.rate, a, b, baseline_kb, counts, args.window)
            report.update(delay.take())
            report["startup_s"] = round(startup_s, 1)
            report["warmup_s"] = round(warmup, 1)
            report["agents_late_to_connect"] = late
            steps.append(report)
            say(
                f"step {target}: delivered {report['records_per_s_delivered']}/s of"
                f" {report['records_per_s_offered']}/s offered, lag {report['lag_records_start']} ->"
                f" {report['lag_records_end']}, cores {report['cpu_cores']}, keeps up: {report['keeps_up']}"
            )
            if not report["keeps_up"] and (args.stop_at_first_miss or target >= args.goal):
                break
    finally:
        say(f"stopping {len(fleet.agents)} agents")
        delay_task.cancel()
        await asyncio.gather(delay_task, return_exceptions=True)
        t0 = time.monotonic()
        stuck = await fleet.close()
        stop_s = time.monotonic() - t0
        if stored is not None:
            stored.close()
    out = summarize(steps, notes, args, baseline_kb)
    out["agents_stop_s"] = round(stop_s, 1)
    out["agents_stuck_at_stop"] = stuck
    out["loop_callback_errors"] = dict(errors.counts)
    return out


class LoopErrors:
    """The loop's exception handler: count what callbacks raised, log the first of each kind."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError):
            kind = f"{type(exc).__name__} errno {exc.errno}"
        else:
            kind = type(exc).__name__ if exc is not None else str(context.get("message"))
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] == 1:
            loop.default_exception_handler(context)


def summarize(
    steps: list[dict[str, Any]], notes: list[str], args: argparse.Namespace, baseline_kb: int
) -> dict[str, Any]:
    # Only steps before the first miss count: a later one starts with the backlog the miss left.
    kept: list[dict[str, Any]] = []
    for step in steps:
        if not step["keeps_up"]:
            break
        kept.append(step)
    best = kept[-1] if kept else None
    miss = steps[len(kept)] if len(kept) < len(steps) else None
    out: dict[str, Any] = {
        "devices": best["devices"] if best else 0,
        "records_per_s_offered": best["records_per_s_offered"] if best else None,
        "records_per_s_delivered": best["records_per_s_delivered"] if best else None,
        "rss_kb_per_device": best["rss_kb_per_device"] if best else None,
        "cpu_share": best["cpu_share"] if best else None,
        "cpu_cores": best["cpu_cores"] if best else None,
        "lag_records_end": best["lag_records_end"] if best else None,
        "goal_devices": args.goal,
        "goal_met": any(s["devices"] >= args.goal for s in kept),
        "first_step_behind": (
            {k: miss[k] for k in ("devices", "records_per_s_offered", "records_per_s_delivered", "cpu_cores")}
            if miss
            else None
        ),
        "largest_tried": steps[-1]["devices"] if steps else 0,
        "steps": steps,
    }
    if len(steps) >= 2:
        # The marginal cost: free of the first agents' fixed share (thread pools, arenas).
        first, last = steps[0], steps[-1]
        out["rss_kb_per_device_marginal"] = round(
            (last["rss_kb"] - first["rss_kb"]) / (last["devices"] - first["devices"]), 1
        )
    out.update(
        {
            "end_to_end": "agents (this process) -> Mosquitto -> edge-gateway"
            + (" -> cloud-controller (SQLite)" if args.controller else " (no upstream: it keeps its queue)"),
            "rate_hz_per_device": args.rate,
            "state_interval_s": args.state_interval,
            "keeps_up_rule": (
                f"delivered >= {KEEP_UP_SHARE} x offered, the gateway's lag grew < 5 % of the window's offer"
            ),
            "delivered_means": (
                "records counted in window summaries the controller stored"
                if args.controller
                else "records the gateway counted (no controller)"
            ),
            "rss_kb_baseline": baseline_kb,
            "model": "MLP 16-64-4, ONNX dynamic int8, inline inference",
            **machine(),
            "notes": notes,
        }
    )
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Prints one JSON object to stdout; progress goes to stderr.",
    )
    parser.add_argument(
        "--steps",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[500, 1000, 1500, 2000, 3000],
        help="fleet sizes to step through, comma-separated (500,1000,1500,2000,3000)",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=60.0,
        help="seconds of steady window per step, rounded up to whole 60 s summary windows (60)",
    )
    parser.add_argument(
        "--warmup", type=float, default=15.0, help="seconds after a step's start-up, at least its length (15)"
    )
    parser.add_argument("--chunk", type=int, default=100, help="agents started at once (100)")
    parser.add_argument("--rate", type=float, default=1.0, help="records per second per device (1)")
    parser.add_argument(
        "--state-interval", type=float, default=30.0, help="seconds between state reports (30, the agent's)"
    )
    parser.add_argument(
        "--no-controller",
        dest="controller",
        action="store_false",
        help="no cloud-controller behind the gateway (it then keeps everything in its queue)",
    )
    parser.add_argument(
        "--goal", type=int, default=2000, help="steps up to this size run even after one fell behind (2000)"
    )
    parser.add_argument("--stop-at-first-miss", action="store_true", help="stop at the first step behind")
    parser.add_argument(
        "--summary-wait",
        type=float,
        default=60.0,
        help="seconds after a window's end its summaries may take to reach the controller (60)",
    )
    parser.add_argument(
        "--budget", type=float, default=1000.0, help="skip steps that would end later (1000 s)"
    )
    args = parser.parse_args()
    if args.controller:
        # Whole summary windows: the controller's count grows in one step per window.
        args.window = max(1, math.ceil(args.window / SUMMARY_WINDOW_S - 1e-9)) * SUMMARY_WINDOW_S
    return args


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    # SIGTERM unwinds like Ctrl-C, so every process and agent started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    nofile = raise_nofile()  # before the broker starts: it inherits the limit
    with stdout_for_json_only() as emit, tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        from simulators.model_factory import build_bundles, train_mlp

        work = Path(tmp)
        say("training the MLP and building its signed bundles")
        key = generate_private_key()
        key_file = work / "fleet.pub"
        key_file.write_bytes(public_key_pem(key.public_key()))
        bundle = build_bundles(train_mlp(seed=0), work / "bundles", key)["onnx-int8"]
        procs = start_processes(work, key_file, args.controller)
        # Not asyncio.run: on the way out it would wait without end for an agent that never ends.
        loop = asyncio.new_event_loop()
        task = loop.create_task(run(args, work, procs, bundle, key_file, started))
        try:
            out = loop.run_until_complete(task)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): let the run's own finally stop the agents.
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
            raise
        finally:
            say("stopping the gateway, the controller and the broker")
            stop_processes(procs.broker, procs.gateway, procs.controller)
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
        out["open_files_limit"] = nofile
        out["bench_seconds"] = round(time.monotonic() - started)
        emit(json.dumps(out))


if __name__ == "__main__":
    main()
