"""Benchmark of the site gateway; prints one JSON object (progress goes to stderr).

- ``ingest_vs_bare_paho``: MQTT messages per second the gateway ingests (validation, dedup on
  ``(device_id, seq)``, window summaries, one SQLite transaction per batch, acknowledgement after
  the commit) over a bare paho subscriber draining the same queued messages, same broker, same run.
  A persistent session per side and round is created first, then N QoS 1 telemetry batches are
  published and queued for all; then, round after round, each side drains its session in a fresh
  process of its own (``bench/_ingest_drain.py``, no imports but its own). The bare subscriber is
  timed from connect until it received all N (paho sends each PUBACK as its callback returns);
  the gateway from its start (store open, about to connect) until it acknowledged all N, each
  after the transaction that stored it committed; afterwards the broker must have nothing left
  for the gateway's session (``ingest_left_unacknowledged``). The figure is total bare seconds
  over total gateway seconds (``_rounds``: each round's); ``ingest_cpu_vs_bare_paho`` is the same
  with the processes' CPU seconds, less sensitive to a busy machine.
  ``ingest_vs_bare_paho_until_counted`` keeps the earlier clock: from before `Gateway.run()` until
  the gateway's messages counter reached N, before the last transaction committed.
- ``upstream_bytes_ratio`` and ``anomaly_recall``: real agents (synthetic sensor, 16 features,
  signed int8 ONNX MLP) -> Mosquitto -> an ``edge-gateway run`` process with the default filter
  (flagged records go up whole, the rest as 60 s window summaries) -> a real controller on SQLite.
  Bytes up (gzip, as the controller accepted them) over the telemetry payload bytes devices
  published; records flagged ``anomaly`` by devices found in the controller's telemetry table over
  those devices published. Read once the window summaries count every record produced.
- ``rss_mb_1000_devices``: VmRSS of an ``edge-gateway run`` process while 1,000 devices (1,000
  MQTT connections, aiomqtt clients on one loop in this process) are online with a retained state
  and publish a record a second each; ``rss_mb_idle`` is the same process before they connect.

Run: ``.venv/bin/python bench/gateway.py`` (about four minutes; Mosquitto installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from bench._gateway_devices import DeviceSwarm, PayloadFactory  # noqa: E402
from bench._machine import machine  # noqa: E402
from bench._output import stdout_for_json_only  # noqa: E402
from fleet_protocol import site_subscription, telemetry_topic  # noqa: E402
from fleet_protocol.signing import generate_private_key, public_key_pem  # noqa: E402
from simulators.brokers import SiteBroker  # noqa: E402
from tests.controller.conftest import Controller, start_controller  # noqa: E402
from tests.gateway.conftest import GatewayProcess, controller_rows  # noqa: E402
from tests.gateway.fleet import Fleet  # noqa: E402
from tests.utils.subscriber import FleetSubscriber  # noqa: E402
from tests.utils.waiting import wait_until  # noqa: E402

SITE = "site-a"
WINDOW_S = 60.0  # the default DeviceClass.window_s: this bench does not change it
GRACE_S = 5.0  # DeviceWindows.grace_s


def say(message: str) -> None:
    print(f"[bench/gateway] {message}", file=sys.stderr, flush=True)


# -- 1. ingest against a bare subscriber ---------------------------------------------------------


def _session(port: int, client_id: str, topic: str) -> None:
    """Create a persistent session subscribed to ``topic`` at QoS 1, then leave it offline."""
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    if not subscribed.wait(10):
        raise RuntimeError(f"no SUBACK for session {client_id}")
    client.disconnect()
    client.loop_stop()


def _publish_queued(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def _ingest_messages(n: int, devices: int, records: int) -> list[tuple[str, bytes]]:
    """``n`` telemetry batches of ``records`` records, round robin over devices, seqs rising per device."""
    factory = PayloadFactory(SITE, anomaly_rate=0.01)
    names = [f"ingest-{i:04d}" for i in range(devices)]
    next_seq = dict.fromkeys(names, 1)
    now = time.time()
    out = []
    for i in range(n):
        device = names[i % devices]
        seq = next_seq[device]
        next_seq[device] = seq + records
        # 5 Hz devices: the records end about now, so windows are current ones.
        ts = [now - (n // devices) * records * 0.2 + (seq + k) * 0.2 for k in range(records)]
        out.append((telemetry_topic(SITE, device), factory.telemetry(device, range(seq, seq + records), ts)))
    return out


def _drain(kind: str, port: int, client_id: str, n: int, work: Path) -> dict[str, Any]:
    """Run one side (``bare`` or ``gateway``) in a process of its own; its clocks and counters."""
    script = str(ROOT / "bench" / "_ingest_drain.py")
    args = [sys.executable, script, kind, str(port), client_id, str(n), SITE, str(work)]
    done = subprocess.run(args, stdout=subprocess.PIPE, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _left_for(port: int, client_id: str, wait_s: float = 1.0) -> int:
    """Messages the broker still had for session ``client_id``: it sends them on connect."""
    received = [0]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_message = lambda *_: received.__setitem__(0, received[0] + 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(wait_s)
    client.disconnect()
    client.loop_stop()
    return received[0]


def measure_ingest(work: Path, n: int, devices: int, records: int, rounds: int) -> dict[str, Any]:
    say(f"ingest: building {n} telemetry batches of {records} records from {devices} devices")
    messages = _ingest_messages(n, devices, records)
    payload_bytes = sum(len(p) for _, p in messages)
    broker = SiteBroker(work / "broker-ingest")
    broker.start()
    bare: list[dict[str, Any]] = []
    gateway: list[dict[str, Any]] = []
    left = 0
    try:
        # A session per side and round: the broker queues every message for each.
        sessions = [(f"bench-bare-{i}", f"bench-gateway-{i}") for i in range(rounds)]
        for pair in sessions:
            for client_id in pair:
                _session(broker.port, client_id, site_subscription(SITE))
        say(
            f"ingest: publishing {n} QoS 1 messages ({payload_bytes / 1e6:.1f} MB), queued for"
            f" {2 * rounds} sessions"
        )
        _publish_queued(broker.port, messages)
        del messages
        # Alternating, so that both sides see the same share of the machine's noise.
        for i, (bare_id, gateway_id) in enumerate(sessions):
            say(f"ingest: round {i + 1} of {rounds}, bare paho subscriber draining")
            bare.append(_drain("bare", broker.port, bare_id, n, work))
            say(f"ingest: round {i + 1} of {rounds}, gateway draining")
            gateway.append(_drain("gateway", broker.port, gateway_id, n, work / f"gw-ingest-{i}"))
            left += _left_for(broker.port, gateway_id)
    finally:
        broker.stop()
    for gw in gateway:
        if gw["records"] != n * records:
            raise RuntimeError(f"the gateway counted {gw['records']:.0f} new records, not {n * records}")
    if left:
        say(f"ingest: WARNING the broker still had {left} messages for the gateway's sessions")
    ratios = [b["seconds"] / g["seconds"] for b, g in zip(bare, gateway, strict=True)]
    bare_s = sum(b["seconds"] for b in bare)
    gateway_s = sum(g["seconds"] for g in gateway)
    counted_s = sum(g["counted_seconds"] for g in gateway)
    return {
        "ingest_vs_bare_paho": round(bare_s / gateway_s, 3),
        "ingest_vs_bare_paho_rounds": [round(r, 3) for r in ratios],
        "ingest_vs_bare_paho_until_counted": round(bare_s / counted_s, 3),
        "ingest_cpu_vs_bare_paho": round(
            sum(b["cpu_seconds"] for b in bare) / sum(g["cpu_seconds"] for g in gateway), 3
        ),
        "gateway_ingest_msgs_per_s": round(rounds * n / gateway_s),
        "gateway_ingest_records_per_s": round(rounds * n * records / gateway_s),
        "gateway_ingest_msgs_per_s_until_counted": round(rounds * n / counted_s),
        "gateway_startup_s": round(max(g["startup_seconds"] for g in gateway), 3),
        "bare_paho_msgs_per_s": round(rounds * n / bare_s),
        "ingest_rounds": rounds,
        "ingest_messages": n,
        "ingest_records_per_message": records,
        "ingest_devices": devices,
        "ingest_payload_mb": round(payload_bytes / 1e6, 1),
        "ingest_store_transactions": int(sum(g["commits"] for g in gateway) / rounds),
        "ingest_left_unacknowledged": left,
    }


# -- 2. upstream bytes and anomalies, real agents ------------------------------------------------


def _readings_until_boundary(rate_hz: float, min_s: float, margin_s: float = 6.0) -> tuple[int, float]:
    """Readings per device so the stream ends ``margin_s`` before a window boundary, after ``min_s``.

    The last window is summarised only once it ended anyway: filling it costs no extra time.
    """
    start = time.time()
    boundary = math.ceil((start + min_s + margin_s) / WINDOW_S) * WINDOW_S
    seconds = boundary - margin_s - start
    return int(seconds * rate_hz), seconds


async def _stream_fleet(
    work: Path,
    port: int,
    bundle: Path,
    key_file: Path,
    *,
    devices: int,
    rate_hz: float,
    min_s: float,
    anomaly_rate: float,
) -> tuple[FleetSubscriber, int, float]:
    readings, seconds = _readings_until_boundary(rate_hz, min_s)
    say(f"fleet: {devices} agents at {rate_hz:g} Hz for {seconds:.0f} s ({readings} readings each)")
    fleet = Fleet(
        work / "agents",
        devices=devices,
        broker_port=port,
        bundle=bundle,
        key_file=key_file,
        rate_hz=rate_hz,
        readings=readings,
        anomaly_rate=anomaly_rate,
    )
    async with FleetSubscriber(port, "fleet/+/+/telemetry") as sent, fleet:
        await wait_until(fleet.drained, seconds + 120, "agents streamed and drained their outboxes")
        produced = fleet.produced()
        await wait_until(lambda: len(sent.records) >= produced, 60, "the broker delivered everything")
        if fleet.crashed():
            raise RuntimeError(f"agents crashed: {fleet.crashed()}")
    return sent, produced, seconds


def measure_upstream(
    work: Path,
    controller: Controller,
    bundle: Path,
    key_file: Path,
    *,
    devices: int,
    rate_hz: float,
    min_s: float,
    anomaly_rate: float,
) -> dict[str, Any]:
    broker = SiteBroker(work / "broker-fleet")
    broker.start()
    gateway = GatewayProcess(
        work / "gw-fleet",
        {
            "gateway_id": "gw-fleet",
            "broker": {"host": "127.0.0.1", "port": broker.port},
            "upstream": {"url": controller.url, "token": controller.tokens["gateway"]},
        },
    )
    try:
        gateway.start()
        sent, produced, seconds = asyncio.run(
            _stream_fleet(
                work,
                broker.port,
                bundle,
                key_file,
                devices=devices,
                rate_hz=rate_hz,
                min_s=min_s,
                anomaly_rate=anomaly_rate,
            )
        )
        last_ts = max(r.ts for r in sent.records)
        due = math.floor(last_ts / WINDOW_S) * WINDOW_S + WINDOW_S + GRACE_S - time.time()
        say(f"fleet: {produced} records sent; the last windows close in about {max(0.0, due):.0f} s")

        def summarised() -> int:
            rows = controller_rows(
                controller.database_url, "SELECT COALESCE(SUM(count), 0) FROM window_summary"
            )
            return int(rows[0][0])

        deadline = time.monotonic() + max(0.0, due) + 60
        while summarised() < produced:
            if time.monotonic() > deadline:
                raise RuntimeError(f"window summaries count {summarised()} of {produced} records")
            time.sleep(0.25)
        metrics = gateway.metrics()
    finally:
        gateway.stop()
        broker.stop()
    flagged = {(r.device_id, r.seq) for r in sent.records if r.anomaly}
    stored = set(
        controller_rows(controller.database_url, "SELECT device_id, seq FROM telemetry WHERE anomaly")
    )
    stored_total = controller_rows(controller.database_url, "SELECT COUNT(*) FROM telemetry")[0][0]
    bytes_up = metrics.get("edge_gateway_upstream_bytes_total", 0.0)
    return {
        "upstream_bytes_ratio": round(bytes_up / sent.telemetry_bytes, 4),
        "anomaly_recall": round(len(flagged & stored) / len(flagged), 4) if flagged else None,
        "fleet_devices": devices,
        "fleet_rate_hz": rate_hz,
        "fleet_anomaly_rate": anomaly_rate,
        "fleet_seconds": round(seconds, 1),
        "fleet_records": produced,
        "fleet_records_flagged_anomaly": len(flagged),
        "fleet_records_flagged_low_confidence_only": sum(
            1 for r in sent.records if r.low_confidence and not r.anomaly
        ),
        "fleet_records_stored_whole": stored_total,
        "bytes_in_telemetry_payloads": sent.telemetry_bytes,
        "bytes_in_gateway_received_incl_state": int(metrics.get("edge_gateway_received_bytes_total", 0)),
        "bytes_up_gzip": int(bytes_up),
        "bytes_up_raw_json": int(metrics.get("edge_gateway_upstream_raw_bytes_total", 0)),
        "upstream_raw_bytes_ratio": round(
            metrics.get("edge_gateway_upstream_raw_bytes_total", 0.0) / sent.telemetry_bytes, 4
        ),
        "window_summaries_up": int(metrics.get("edge_gateway_summaries_total", 0)),
        "window_s": WINDOW_S,
    }


# -- 3. memory with 1,000 devices --------------------------------------------------------------


def _rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def _swarm(port: int, devices: int, seconds: float, pid: int, samples: list[float]) -> DeviceSwarm:
    swarm = DeviceSwarm(port, SITE, devices, prefix="rss")
    try:
        started = time.perf_counter()
        await swarm.connect(progress=lambda k: say(f"rss: {k} devices connected"))
        say(
            f"rss: {devices} devices online in {time.perf_counter() - started:.1f} s; streaming {seconds:g} s"
        )
        stream = asyncio.create_task(swarm.stream(seconds))
        while not stream.done():
            await asyncio.sleep(1.0)
            samples.append(_rss_mb(pid)[0])
        await stream
    finally:
        await swarm.close()
    return swarm


def measure_rss(work: Path, controller: Controller, devices: int, seconds: float) -> dict[str, Any]:
    broker = SiteBroker(work / "broker-rss")
    broker.start()
    gateway = GatewayProcess(
        work / "gw-rss",
        {
            "gateway_id": "gw-rss",
            "broker": {"host": "127.0.0.1", "port": broker.port},
            "upstream": {"url": controller.url, "token": controller.tokens["gateway"]},
            "log_level": "WARNING",
        },
    )
    try:
        gateway.start()
        assert gateway.process is not None
        pid = gateway.process.pid
        time.sleep(3)
        idle, _ = _rss_mb(pid)
        say(f"rss: gateway idle at {idle:.1f} MB; connecting {devices} devices")
        samples: list[float] = []
        swarm = asyncio.run(_swarm(broker.port, devices, seconds, pid, samples))
        _, hwm = _rss_mb(pid)
        metrics = gateway.metrics()
    finally:
        gateway.stop()
        broker.stop()
    online = int(metrics.get('edge_gateway_devices{state="online"}', 0))
    if online < devices:
        say(f"rss: WARNING only {online} of {devices} devices were online at the gateway")
    return {
        "rss_mb_1000_devices": round(max(samples), 1),
        "rss_mb_idle": round(idle, 1),
        "rss_mb_devices_end": round(samples[-1], 1),
        "rss_mb_devices_hwm": round(hwm, 1),
        "rss_devices": devices,
        "rss_devices_online_at_gateway": online,
        "rss_stream_seconds": seconds,
        "rss_telemetry_published": swarm.published,
        "rss_publish_errors": swarm.errors,
        "rss_telemetry_ingested": int(metrics.get('edge_gateway_messages_total{kind="telemetry"}', 0)),
    }


# -- main ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _children_output_to(path: Path) -> Iterator[None]:
    """Children started meanwhile write their stdout and stderr (the controller's log) to ``path``."""
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Prints one JSON object to stdout; progress to stderr. Ratios, not absolute rates, compare"
        " across machines.",
    )
    parser.add_argument("--messages", type=int, default=20_000, help="ingest: QoS 1 messages (20000)")
    parser.add_argument("--ingest-devices", type=int, default=100, help="ingest: devices (100)")
    parser.add_argument("--records-per-message", type=int, default=5, help="ingest: records a batch (5)")
    parser.add_argument("--ingest-rounds", type=int, default=3, help="ingest: bare, gateway, ... rounds (3)")
    parser.add_argument("--fleet-devices", type=int, default=50, help="upstream: real agents (50)")
    parser.add_argument("--fleet-rate", type=float, default=5.0, help="upstream: readings/s per agent (5)")
    parser.add_argument(
        "--fleet-seconds",
        type=float,
        default=60.0,
        help="upstream: at least this much data (60); it runs on to just before a 60 s window boundary",
    )
    parser.add_argument(
        "--anomaly-rate", type=float, default=0.05, help="upstream: share of faulty readings (0.05)"
    )
    parser.add_argument("--rss-devices", type=int, default=1000, help="rss: MQTT connections (1000)")
    parser.add_argument("--rss-seconds", type=float, default=30.0, help="rss: seconds of streaming (30)")
    parser.add_argument("--skip", action="append", default=[], choices=["ingest", "upstream", "rss"])
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every process started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    started = time.perf_counter()
    out: dict[str, Any] = {}
    with stdout_for_json_only() as emit, tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        if "ingest" not in args.skip:
            out.update(
                measure_ingest(
                    work, args.messages, args.ingest_devices, args.records_per_message, args.ingest_rounds
                )
            )
            say(f"ingest: {json.dumps({k: v for k, v in out.items() if 'per_s' in k or 'vs' in k})}")
        if {"upstream", "rss"} - set(args.skip):
            from simulators.model_factory import build_bundles, train_mlp

            key = generate_private_key()
            key_file = work / "fleet.pub"
            key_file.write_bytes(public_key_pem(key.public_key()))
            (work / "controller").mkdir()
            db_url = f"sqlite:///{work / 'controller' / 'controller.sqlite'}"
            with _children_output_to(work / "controller" / "controller.log"):
                process, controller = start_controller(work / "controller", db_url, key_file)
            try:
                if "upstream" not in args.skip:
                    say("upstream: training the MLP and building its signed bundles")
                    bundle = build_bundles(train_mlp(seed=0), work / "bundles", key)["onnx-int8"]
                    out.update(
                        measure_upstream(
                            work,
                            controller,
                            bundle,
                            key_file,
                            devices=args.fleet_devices,
                            rate_hz=args.fleet_rate,
                            min_s=args.fleet_seconds,
                            anomaly_rate=args.anomaly_rate,
                        )
                    )
                if "rss" not in args.skip:
                    out.update(measure_rss(work, controller, args.rss_devices, args.rss_seconds))
            finally:
                process.terminate()
                try:
                    process.wait(10)
                except Exception:
                    process.kill()
                    process.wait()
        out.update(machine())
        out["bench_seconds"] = round(time.perf_counter() - started)
        emit(json.dumps(out))


if __name__ == "__main__":
    main()
