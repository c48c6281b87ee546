"""Benchmark of the device agent; prints one JSON object (progress and profiles go to stderr).

Inference, same run, same int8 ONNX MLP (16-64-4), same readings (Python lists of 16 floats):

- ``agent_vs_bare_pipeline``: readings per second through the whole agent (preprocess, infer
  with micro-batching, outbox persistence in SQLite) over a minimal hand-written loop doing the
  same work: the lists scaled with numpy, ``InferenceSession.run`` on exactly the micro-batch
  sizes the agent used (recorded from its batch-size metric, replayed in order), the same record
  bytes (checked) written with ``executemany`` in one WAL transaction per batch at the agent's
  ``synchronous``. Both clocks stop when the last record is committed.
- ``agent_vs_bare_ort_per_reading``: the agent over bare ``InferenceSession.run`` called once per
  reading on the scaled inputs (no persistence): what micro-batching buys, not what the agent costs.
- ``bare_ort_batch256_readings_per_s``: ``InferenceSession.run`` on batches of 256 scaled rows, the
  model's own limit on this machine.
- ``agent_rss_mb``: peak RSS of an ``edge-agent run`` process (onnxruntime backend, no torch).

Delivery through Mosquitto, records per second reaching a subscriber (another process):

- ``delivery_vs_bare_paho_same_batches``: the agent's sync alone (its outbox already holds the
  records: read, encode, batched QoS 1 publishes, delete once acknowledged), timed from its
  connection, over a bare paho publisher, timed from its connection, sending the very payloads
  the agent sent (captured by the subscriber) with the agent's in-flight window
  (``mqtt.max_inflight`` publishes awaiting PUBACK).
- ``delivery_vs_bare_paho_per_record``: the agent end to end (from its start, inference included,
  as before) over a bare paho publisher sending one record per QoS 1 message (20 in flight): what
  batching buys.

Run: ``.venv/bin/python bench/agent.py`` (about a minute); ``--profile`` also runs the agent's
inference benchmark once more under cProfile and prints where its time goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import io
import json
import pstats
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._machine import machine  # noqa: E402
from bench._output import stdout_for_json_only  # noqa: E402
from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config import AgentSettings, load_settings  # noqa: E402
from edge_agent.sources.base import Reading, SensorSource  # noqa: E402
from edge_agent.sources.synthetic import make_dataset  # noqa: E402
from fleet_protocol import BundleManifest  # noqa: E402
from fleet_protocol.signing import generate_private_key, public_key_pem  # noqa: E402
from simulators.model_factory import build_bundles, train_mlp  # noqa: E402
from tests.utils.broker import Mosquitto  # noqa: E402

N_INFER = 50_000
N_DELIVER = 20_000
REPLAYS = 10  # the bare publisher sends the agent's payloads this many times over
TS0 = 1.7e9
DEVICE = "infer-bench"


def say(message: str) -> None:
    print(f"[bench/agent] {message}", file=sys.stderr, flush=True)


class ListSource(SensorSource):
    """Readings already in memory: the benchmark measures the agent, not a sensor."""

    def __init__(self, rows: list[list[float]]) -> None:
        self.rows = rows

    async def readings(self, start_cursor: str | None = None) -> AsyncIterator[Reading]:
        for i, row in enumerate(self.rows):
            yield Reading(ts=TS0 + i, values=row)
            if i % 512 == 0:
                await asyncio.sleep(0)


class SizeRecorder:
    """Stands in for the agent's batch-size histogram: keeps every micro-batch size, in order."""

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram
        self.sizes: list[int] = []

    def observe(self, value: float) -> None:
        self.sizes.append(int(value))
        self.histogram.observe(value)


# -- bare baselines ---------------------------------------------------------------------------


def _session(bundle: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # As the agent's runtime: one thread each.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])


def bare_ort_per_reading(bundle: Path, scaled: np.ndarray) -> float:
    session = _session(bundle)
    name = session.get_inputs()[0].name
    for row in scaled[:200]:
        session.run(None, {name: row[None, :]})
    started = time.perf_counter()
    for row in scaled:
        session.run(None, {name: row[None, :]})
    return len(scaled) / (time.perf_counter() - started)


def bare_ort_batched(bundle: Path, scaled: np.ndarray, size: int) -> float:
    session = _session(bundle)
    name = session.get_inputs()[0].name
    batches = [scaled[i : i + size] for i in range(0, len(scaled) - size + 1, size)]
    for batch in batches[:20]:
        session.run(None, {name: batch})
    started = time.perf_counter()
    for batch in batches:
        session.run(None, {name: batch})
    return len(batches) * size / (time.perf_counter() - started)


def bare_pipeline(
    bundle: Path, rows: list[list[float]], sizes: list[int], db_path: Path, synchronous: str
) -> float:
    """Readings per second of the minimal loop: numpy, ONNX Runtime, msgpack, SQLite."""
    manifest = BundleManifest.model_validate_json((bundle / "manifest.json").read_bytes())
    pre, post = manifest.preprocessing, manifest.postprocessing
    mean = np.asarray(pre.mean, dtype=np.float32)
    scale = np.asarray(pre.scale, dtype=np.float32)
    anomaly_classes = np.asarray(post.anomaly_classes, dtype=np.int64)
    threshold = post.low_confidence_below
    model_id, version = manifest.model_id, manifest.version
    session = _session(bundle)
    name = session.get_inputs()[0].name
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, flagged INTEGER NOT NULL, size INTEGER NOT NULL,"
        " body BLOB NOT NULL)"
    )
    session.run(None, {name: np.zeros((max(sizes), len(mean)), dtype=np.float32)})
    pack = msgpack.Packer(use_bin_type=True).pack
    start = 0
    started = time.perf_counter()
    for n in sizes:
        raw = np.asarray(rows[start : start + n], dtype=np.float32)
        logits = session.run(None, {name: (raw - mean) / scale})[0]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        confidence = np.clip(probs.max(axis=1), 0.0, 1.0)
        anomaly = np.isin(probs.argmax(axis=1), anomaly_classes).tolist()
        low = (confidence < threshold).tolist() if threshold is not None else [False] * n
        predicted = probs.argmax(axis=1).tolist()
        confidence_list = np.round(confidence, 6).tolist()
        out_blob, out_stride = np.ascontiguousarray(logits, dtype=np.float32).tobytes(), logits.shape[1] * 4
        in_blob, in_stride = raw.tobytes(), raw.shape[1] * 4
        records = []
        for k in range(n):
            body = pack(
                [
                    DEVICE,
                    TS0 + start + k,
                    model_id,
                    version,
                    out_blob[k * out_stride : (k + 1) * out_stride],
                    predicted[k],
                    confidence_list[k],
                    anomaly[k],
                    low[k],
                    in_blob[k * in_stride : (k + 1) * in_stride],
                    None,
                    None,
                ]
            )
            records.append((start + k + 1, int(anomaly[k] or low[k]), len(body), body))
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?)", records)
        db.execute("COMMIT")
        start += n
    elapsed = time.perf_counter() - started
    db.close()
    return start / elapsed


def outbox_digest(db_path: Path) -> tuple[int, str]:
    """(rows, sha256 of every body in seq order) of an outbox database."""
    digest = hashlib.sha256()
    db = sqlite3.connect(db_path)
    count = 0
    for (body,) in db.execute("SELECT body FROM outbox ORDER BY seq"):
        digest.update(body)
        count += 1
    db.close()
    return count, digest.hexdigest()


# -- the agent --------------------------------------------------------------------------------


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


async def agent_throughput(
    work: Path, bundle: Path, key: Path, rows: list[list[float]], port: int, device: str
) -> tuple[float, list[int], AgentSettings]:
    """Readings per second, the micro-batch sizes in order, and the settings it ran with."""
    # No broker on that port: this measures inference plus persistence, not the network.
    settings = load_settings(None, **agent_config(work, bundle, key, port, device, {"kind": "synthetic"}))
    agent = Agent(settings, source=ListSource(rows))
    recorder = SizeRecorder(agent.metrics.batch_size)
    agent.metrics.batch_size = recorder  # type: ignore[assignment]
    task = asyncio.create_task(agent.run())
    # Steady state: the clock starts once the bundle is verified and loaded.
    await agent.started.wait()
    started = time.perf_counter()
    while agent.outbox.stats.last_seq < len(rows):  # noqa: ASYNC110 - a counter other threads advance
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - started
    agent.stop()
    await task
    return len(rows) / elapsed, recorder.sizes, settings


def profiled(what: str, run: Any) -> Any:
    """``run()`` under cProfile; the top functions to stderr."""
    profiler = cProfile.Profile()
    profiler.enable()
    result = run()
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(45)
    say(f"profile of {what}:\n{text.getvalue()}")
    return result


# -- delivery ---------------------------------------------------------------------------------


def start_counter(port: int, topic: str, target: int, keep: Path | None = None) -> subprocess.Popen[str]:
    script = str(ROOT / "bench" / "_count_subscriber.py")
    args = [sys.executable, script, str(port), topic, str(target), "120"]
    if keep is not None:
        args.append(str(keep))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def finish_counter(proc: subprocess.Popen[str], started_wall: float) -> tuple[int, float]:
    out, _ = proc.communicate(timeout=180)
    records, _, finished_wall = out.split()
    return int(records), float(finished_wall) - started_wall


def bare_paho_delivery(port: int, payloads: list[bytes], records: int, inflight: int) -> float:
    """Records per second a bare paho publisher gets to the counter, ``inflight`` QoS 1 publishes at once."""
    import paho.mqtt.client as mqtt

    counter = start_counter(port, "bare/telemetry", records)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-bare-pub-{time.time_ns()}")
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.time()
    infos = [client.publish("bare/telemetry", payload, qos=1) for payload in payloads]
    for info in infos:
        info.wait_for_publish(60)
    got, elapsed = finish_counter(counter, started)
    client.loop_stop()
    client.disconnect()
    if got < records:
        raise RuntimeError(f"the bare publisher's subscriber counted {got} of {records} records")
    return got / elapsed


async def agent_delivery(work: Path, bundle: Path, key: Path, port: int, rows: list[list[float]]) -> float:
    """Records per second from the agent's start (verify, load, infer, store, send) to the subscriber."""
    counter = start_counter(port, "fleet/bench/+/telemetry", len(rows))
    settings = load_settings(
        None, **agent_config(work, bundle, key, port, "deliver-bench", {"kind": "synthetic"})
    )
    agent = Agent(settings, source=ListSource(rows))
    started = time.time()
    task = asyncio.create_task(agent.run())
    records, elapsed = await asyncio.to_thread(finish_counter, counter, started)
    agent.stop()
    await task
    if records < len(rows):
        raise RuntimeError(f"the agent's subscriber counted {records} of {len(rows)} records")
    return records / elapsed


async def agent_sync(
    work: Path, bundle: Path, key: Path, port: int, rows: list[list[float]], keep: Path
) -> tuple[float, AgentSettings]:
    """Records per second the agent's sync gets from a full outbox to the subscriber, from its connection."""
    device = "sync-bench"
    await agent_throughput(work, bundle, key, rows, 1, device)  # offline: fills the outbox
    counter = start_counter(port, "fleet/bench/+/telemetry", len(rows), keep)
    settings = load_settings(None, **agent_config(work, bundle, key, port, device, {"kind": "synthetic"}))
    agent = Agent(settings, source=ListSource([]))
    task = asyncio.create_task(agent.run())
    await agent.syncer.connected.wait()
    started = time.time()
    records, elapsed = await asyncio.to_thread(finish_counter, counter, started)
    agent.stop()
    await task
    if records < len(rows):
        raise RuntimeError(f"the agent's subscriber counted {records} of {len(rows)} records")
    return records / elapsed, settings


def read_payloads(path: Path) -> list[bytes]:
    blob, out, at = path.read_bytes(), [], 0
    while at < len(blob):
        size = int.from_bytes(blob[at : at + 4], "big")
        out.append(blob[at + 4 : at + 4 + size])
        at += 4 + size
    return out


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


def histogram(sizes: list[int]) -> dict[str, int]:
    """Micro-batch sizes in power-of-two buckets: ``{"1": calls, "2-3": calls, ..., "256-511": calls}``."""
    buckets: Counter[int] = Counter(1 << (size.bit_length() - 1) for size in sizes)
    return {(str(low) if low == 1 else f"{low}-{2 * low - 1}"): buckets[low] for low in sorted(buckets)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", action="store_true", help="also profile the agent (cProfile, to stderr)")
    args = parser.parse_args()
    with stdout_for_json_only() as emit, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key = generate_private_key()
        key_file = work / "fleet.pub"
        key_file.write_bytes(public_key_pem(key.public_key()))
        trained = train_mlp(seed=0)
        bundle = build_bundles(trained, work / "bundles", key)["onnx-int8"]
        x, _ = make_dataset(max(N_INFER, N_DELIVER), seed=7)
        rows = [r.tolist() for r in x]
        scaled = ((x[:N_INFER] - trained.mean) / trained.scale).astype(np.float32)

        say("bare ONNX Runtime, one reading per call, then batches of 256")
        per_reading = bare_ort_per_reading(bundle, scaled)
        batch256 = bare_ort_batched(bundle, scaled, 256)
        closed_port = 1  # nothing listens: the agent runs offline
        say("the agent, offline")
        agent_rate, sizes, settings = asyncio.run(
            agent_throughput(work, bundle, key_file, rows[:N_INFER], closed_port, DEVICE)
        )
        say(f"the bare pipeline on the agent's {len(sizes)} micro-batches")
        bare_db = work / "bare-outbox.sqlite"
        pipeline_rate = bare_pipeline(bundle, rows[:N_INFER], sizes, bare_db, settings.outbox.synchronous)
        same_bytes = outbox_digest(bare_db) == outbox_digest(work / DEVICE / "outbox.sqlite")
        if args.profile:
            profiled(
                "the agent, offline",
                lambda: asyncio.run(
                    agent_throughput(work, bundle, key_file, rows[:N_INFER], closed_port, "profile-bench")
                ),
            )

        broker = Mosquitto(work / "mosquitto")
        broker.start()
        try:
            sample = json.dumps({"device_id": "bare", "seq": 1, "outputs": [0.1] * 4, "features": [0.5] * 16})
            say("delivery: bare paho, one record per message")
            bare_per_record = bare_paho_delivery(broker.port, [sample.encode()] * N_DELIVER, N_DELIVER, 20)
            say("delivery: the agent, end to end")
            agent_delivered = asyncio.run(
                agent_delivery(work, bundle, key_file, broker.port, rows[:N_DELIVER])
            )
            say("delivery: the agent's sync, from a full outbox")
            captured = work / "agent-payloads.bin"
            agent_synced, deliver_settings = asyncio.run(
                agent_sync(work, bundle, key_file, broker.port, rows[:N_DELIVER], captured)
            )
            payloads = read_payloads(captured)
            window = deliver_settings.mqtt.max_inflight
            say(f"delivery: bare paho, the agent's {len(payloads)} payloads x {REPLAYS}, {window} in flight")
            # Replayed: once would take a few tens of milliseconds.
            bare_same = bare_paho_delivery(broker.port, payloads * REPLAYS, N_DELIVER * REPLAYS, window)
            if args.profile:
                profiled(
                    "the agent's sync",
                    lambda: asyncio.run(
                        agent_sync(
                            work / "profile", bundle, key_file, broker.port, rows[:N_DELIVER], work / "p.bin"
                        )
                    ),
                )
            rss = agent_rss_mb(work, bundle, key_file, broker.port)
        finally:
            broker.stop()
        emit(
            json.dumps(
                {
                    "agent_vs_bare_pipeline": round(agent_rate / pipeline_rate, 3),
                    "agent_vs_bare_ort_per_reading": round(agent_rate / per_reading, 3),
                    "agent_rss_mb": round(rss, 1),
                    "delivery_vs_bare_paho_same_batches": round(agent_synced / bare_same, 3),
                    "delivery_vs_bare_paho_per_record": round(agent_delivered / bare_per_record, 3),
                    "agent_readings_per_s": round(agent_rate),
                    "bare_pipeline_readings_per_s": round(pipeline_rate),
                    "bare_pipeline_same_record_bytes": same_bytes,
                    "bare_ort_per_reading_runs_per_s": round(per_reading),
                    "bare_ort_batch256_readings_per_s": round(batch256),
                    "agent_micro_batches": len(sizes),
                    "agent_micro_batch_mean": round(float(np.mean(sizes)), 1),
                    "agent_micro_batch_sizes": histogram(sizes),
                    "outbox_synchronous": settings.outbox.synchronous,
                    "agent_sync_records_per_s": round(agent_synced),
                    "agent_end_to_end_records_delivered_per_s": round(agent_delivered),
                    "bare_paho_same_batches_records_per_s": round(bare_same),
                    "bare_paho_per_record_records_per_s": round(bare_per_record),
                    "delivery_payloads": len(payloads),
                    "delivery_records_per_payload": round(N_DELIVER / max(1, len(payloads)), 1),
                    "delivery_inflight_window": window,
                    "model": "MLP 16-64-4, ONNX dynamic int8",
                    **machine(),
                }
            )
        )


if __name__ == "__main__":
    main()
