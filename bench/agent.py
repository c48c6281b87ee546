"""Benchmark of the device agent; prints one JSON object.

- ``agent_vs_bare_ort``: readings per second through the whole agent (preprocess, infer
  with micro-batching, outbox persistence in SQLite) over bare ``InferenceSession.run``
  called once per reading on the same scaled inputs, same run, same int8 ONNX MLP (16-64-4).
- ``agent_rss_mb``: peak RSS of an ``edge-agent run`` process (onnxruntime backend, no torch).
- ``delivery_vs_bare_paho``: records per second that reach a subscriber through Mosquitto,
  agent (batched QoS 1 publishes from the outbox) over a bare paho publisher sending one
  record per QoS 1 message, same run, same broker.

Run: ``.venv/bin/python bench/agent.py`` (about a minute).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config import load_settings  # noqa: E402
from edge_agent.sources.base import Reading, SensorSource  # noqa: E402
from edge_agent.sources.synthetic import make_dataset  # noqa: E402
from fleet_protocol.signing import generate_private_key, public_key_pem  # noqa: E402
from simulators.model_factory import build_bundles, train_mlp  # noqa: E402
from tests.utils.broker import Mosquitto  # noqa: E402

N_INFER = 50_000
N_DELIVER = 20_000


class ListSource(SensorSource):
    """Readings already in memory: the benchmark measures the agent, not a sensor."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = [r.tolist() for r in rows]

    async def readings(self, start_cursor: str | None = None) -> AsyncIterator[Reading]:
        for i, row in enumerate(self.rows):
            yield Reading(ts=1.7e9 + i, values=row)
            if i % 512 == 0:
                await asyncio.sleep(0)


def bare_ort(bundle: Path, x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    scaled = ((x - mean) / scale).astype(np.float32)
    name = session.get_inputs()[0].name
    for row in scaled[:200]:
        session.run(None, {name: row[None, :]})
    started = time.perf_counter()
    for row in scaled:
        session.run(None, {name: row[None, :]})
    return len(scaled) / (time.perf_counter() - started)


def agent_config(work: Path, bundle: Path, key: Path, port: int, device: str, source: dict) -> dict:
    return {
        "device_id": device,
        "site": "bench",
        "data_dir": str(work / device),
        "model_dir": str(bundle),
        "trusted_keys": [str(key)],
        "source": source,
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2},
    }


async def agent_throughput(work: Path, bundle: Path, key: Path, x: np.ndarray, port: int) -> float:
    # No broker on that port: this measures inference plus persistence, not the network.
    settings = load_settings(
        None, **agent_config(work, bundle, key, port, "infer-bench", {"kind": "synthetic"})
    )
    agent = Agent(settings, source=ListSource(x))
    task = asyncio.create_task(agent.run())
    # Steady state: the clock starts once the bundle is verified and loaded.
    await agent.started.wait()
    started = time.perf_counter()
    while agent.outbox.stats.last_seq < len(x):  # noqa: ASYNC110 - a counter other threads advance
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    agent.stop()
    await task
    return len(x) / elapsed


def start_counter(port: int, topic: str, target: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "_count_subscriber.py"), str(port), topic, str(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def finish_counter(proc: subprocess.Popen[str], started_wall: float) -> tuple[int, float]:
    out, _ = proc.communicate(timeout=180)
    records, _, finished_wall = out.split()
    return int(records), float(finished_wall) - started_wall


def bare_paho_delivery(port: int, n: int, payload: bytes) -> float:
    import paho.mqtt.client as mqtt

    counter = start_counter(port, "bare/telemetry", n)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare-pub")
    client.max_inflight_messages_set(20)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.time()
    infos = [client.publish("bare/telemetry", payload, qos=1) for _ in range(n)]
    for info in infos:
        info.wait_for_publish(60)
    records, elapsed = finish_counter(counter, started)
    client.loop_stop()
    client.disconnect()
    return records / elapsed


async def agent_delivery(work: Path, bundle: Path, key: Path, port: int, x: np.ndarray) -> float:
    counter = start_counter(port, "fleet/bench/+/telemetry", len(x))
    settings = load_settings(
        None, **agent_config(work, bundle, key, port, "deliver-bench", {"kind": "synthetic"})
    )
    agent = Agent(settings, source=ListSource(x))
    started = time.time()
    task = asyncio.create_task(agent.run())
    records, elapsed = await asyncio.to_thread(finish_counter, counter, started)
    agent.stop()
    await task
    return records / elapsed


def agent_rss_mb(work: Path, bundle: Path, key: Path, port: int) -> float:
    config = agent_config(work, bundle, key, port, "rss-bench", {"kind": "synthetic", "rate_hz": 200})
    path = work / "rss.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(path)], cwd=ROOT)
    time.sleep(8)
    status = Path(f"/proc/{proc.pid}/status").read_text()
    peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    return peak_kb / 1024


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key = generate_private_key()
        key_file = work / "fleet.pub"
        key_file.write_bytes(public_key_pem(key.public_key()))
        trained = train_mlp(seed=0)
        bundle = build_bundles(trained, work / "bundles", key)["onnx-int8"]
        x, _ = make_dataset(max(N_INFER, N_DELIVER), seed=7)

        bare = bare_ort(bundle, x[:N_INFER], trained.mean, trained.scale)
        closed_port = 1  # nothing listens: the agent runs offline
        agent_rate = asyncio.run(agent_throughput(work, bundle, key_file, x[:N_INFER], closed_port))

        broker = Mosquitto(work / "mosquitto")
        broker.start()
        try:
            sample = json.dumps({"device_id": "bare", "seq": 1, "outputs": [0.1] * 4, "features": [0.5] * 16})
            bare_delivery = bare_paho_delivery(broker.port, N_DELIVER, sample.encode())
            agent_delivered = asyncio.run(agent_delivery(work, bundle, key_file, broker.port, x[:N_DELIVER]))
            rss = agent_rss_mb(work, bundle, key_file, broker.port)
        finally:
            broker.stop()
    print(
        json.dumps(
            {
                "agent_vs_bare_ort": round(agent_rate / bare, 3),
                "agent_rss_mb": round(rss, 1),
                "delivery_vs_bare_paho": round(agent_delivered / bare_delivery, 3),
                "agent_readings_per_s": round(agent_rate),
                "bare_ort_runs_per_s": round(bare),
                "agent_records_delivered_per_s": round(agent_delivered),
                "bare_paho_records_delivered_per_s": round(bare_delivery),
                "model": "MLP 16-64-4, ONNX dynamic int8",
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
