"""Helper process for bench/agent.py: one side of a comparison, in a fresh process of its own.

``_agent_side.py MODE JSON`` runs one measurement and prints one JSON object: each side runs as it
would be deployed, without the benchmark's own imports (torch, to train the model) in its heap,
whose garbage collection would otherwise slow the side that allocates most. Modes: ``ort`` (bare
ONNX Runtime), ``agent`` (the agent offline), ``pipeline`` (the bare loop on the agent's
micro-batch sizes), ``deliver`` (the agent end to end to a subscriber), ``sync`` (the agent's
sync from a full outbox), ``paho`` (a bare publisher), ``link`` (the agent's MQTT link alone),
``floor`` (bare sqlite3 reading and deleting a full outbox the cheapest way it can, and bare
``orjson.dumps`` of the agent's batches).
"""

from __future__ import annotations

import asyncio
import cProfile
import hashlib
import io
import json
import pstats
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config import AgentSettings, load_settings  # noqa: E402
from edge_agent.mqtt_link import LinkSettings, MqttLink  # noqa: E402
from edge_agent.sources.base import Reading, SensorSource  # noqa: E402
from edge_agent.sources.synthetic import make_dataset  # noqa: E402
from fleet_protocol import BundleManifest  # noqa: E402

TS0 = 1.7e9
DEVICE = "infer-bench"


def say(message: str) -> None:
    print(f"[bench/agent] {message}", file=sys.stderr, flush=True)


def readings(n: int) -> list[list[float]]:
    """The benchmark's readings: the same in every process."""
    x, _ = make_dataset(n, seed=7)
    return [r.tolist() for r in x]


def scaled_rows(bundle: Path, rows: list[list[float]]) -> np.ndarray:
    """The readings as the agent feeds them to the model: float32, scaled as the manifest says."""
    pre = BundleManifest.model_validate_json((bundle / "manifest.json").read_bytes()).preprocessing
    mean, scale = np.asarray(pre.mean, dtype=np.float32), np.asarray(pre.scale, dtype=np.float32)
    return (np.asarray(rows, dtype=np.float32) - mean) / scale


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
    bundle: Path,
    rows: list[list[float]],
    sizes: list[int],
    db_path: Path,
    synchronous: str,
    samples_path: Path | None = None,
) -> tuple[float, float]:
    """Readings per second of the minimal loop (numpy, ONNX Runtime, msgpack, SQLite), CPU s each.

    With ``samples_path``, each batch's raw inputs and predictions also go to a second WAL database
    at ``synchronous=NORMAL`` in one ``executemany`` transaction, as the agent's training buffer keeps them.
    """
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
    samples_db = None
    if samples_path is not None:
        samples_db = sqlite3.connect(samples_path, isolation_level=None)
        samples_db.execute("PRAGMA journal_mode=WAL")
        samples_db.execute("PRAGMA synchronous=NORMAL")
        samples_db.execute(
            "CREATE TABLE samples (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, model_id TEXT NOT NULL,"
            " model_version TEXT NOT NULL, features BLOB NOT NULL, predicted INTEGER, label INTEGER,"
            " labelled_at REAL)"
        )
    session.run(None, {name: np.zeros((max(sizes), len(mean)), dtype=np.float32)})
    pack = msgpack.Packer(use_bin_type=True).pack
    start = 0
    started, cpu = time.perf_counter(), time.process_time()
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
        if samples_db is not None:
            samples_db.execute("BEGIN IMMEDIATE")
            samples_db.executemany(
                "INSERT OR REPLACE INTO samples (seq, ts, model_id, model_version, features, predicted)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        start + k + 1,
                        TS0 + start + k,
                        model_id,
                        version,
                        in_blob[k * in_stride : (k + 1) * in_stride],
                        predicted[k],
                    )
                    for k in range(n)
                ],
            )
            samples_db.execute("COMMIT")
        start += n
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    db.close()
    if samples_db is not None:
        samples_db.close()
    return start / elapsed, cpu / start


def sqlite_floor(db_path: Path, batch: int, delete_every: int, synchronous: str) -> float:
    """Records per second bare sqlite3 reads and deletes a full outbox at, the cheapest way it can.

    Reads ``batch`` rows at a time (as a sync must, to send them), deletes by range once every
    ``delete_every`` records, one transaction each: no encoding, no network, no asyncio. What any
    sync that keeps each record in SQLite until it is acknowledged spends at least, on this machine.
    """
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    count = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    upto = deleted_upto = done = 0
    started = time.perf_counter()
    while True:
        rows = db.execute(
            "SELECT seq, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (upto, batch)
        ).fetchall()
        if rows:
            upto, done = rows[-1][0], done + len(rows)
        if upto > deleted_upto and (not rows or done % delete_every < batch):
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM outbox WHERE seq <= ?", (upto,))
            db.execute("COMMIT")
            deleted_upto = upto
        if not rows:
            break
    elapsed = time.perf_counter() - started
    left = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    db.close()
    if done != count or left:
        raise RuntimeError(f"the SQLite floor read {done} of {count} records and left {left}")
    return done / elapsed


def bare_orjson(payloads: list[bytes], replays: int) -> float:
    """Records per second ``orjson.dumps`` serialises the agent's batches at, their records already built.

    The cheapest step of sending JSON: the batches as Python objects (parsed back from the very
    payloads), nothing read, decoded or rounded; each dumped ``replays`` times.
    """
    import orjson

    batches = [orjson.loads(payload) for payload in payloads]
    records = sum(len(batch["records"]) for batch in batches) * replays
    started = time.perf_counter()
    for _ in range(replays):
        for batch in batches:
            orjson.dumps(batch)
    return records / (time.perf_counter() - started)


def _kept(counts: Any) -> tuple[int, int]:
    """Samples the training buffer committed: held, or evicted by its bound."""
    return counts.samples, counts.evicted


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
    """Readings per second, the micro-batch sizes in order, the settings, CPU seconds per reading."""
    # No broker on that port: this measures inference plus persistence, not the network.
    settings = load_settings(None, **agent_config(work, bundle, key, port, device, {"kind": "synthetic"}))
    agent = Agent(settings, source=ListSource(rows))
    recorder = SizeRecorder(agent.metrics.batch_size)
    agent.metrics.batch_size = recorder  # type: ignore[assignment]
    task = asyncio.create_task(agent.run())
    # Steady state: the clock starts once the bundle is verified and loaded.
    await agent.started.wait()
    started, cpu = time.perf_counter(), time.process_time()
    while agent.outbox.stats.last_seq < len(rows):  # noqa: ASYNC110 - a counter other threads advance
        await asyncio.sleep(0.002)
    # The training buffer's writer commits behind the outbox: the clock stops when it has every sample.
    while agent.training is not None and sum(_kept(agent.training.live_counts())) < len(rows):  # noqa: ASYNC110
        await asyncio.sleep(0.002)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    agent.stop()
    await task
    return len(rows) / elapsed, recorder.sizes, settings, cpu / len(rows)


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


async def link_delivery(port: int, payloads: list[bytes], records: int, inflight: int) -> float:
    """Records per second the agent's MQTT link (`MqttLink`, aiomqtt) gets to the counter with payloads
    already built, ``inflight`` QoS 1 publishes at once: the transport alone, without the outbox."""
    counter = start_counter(port, "bare/telemetry", records)
    link = MqttLink(LinkSettings(host="127.0.0.1", port=port, client_id=f"bench-link-{time.time_ns()}"))
    window = asyncio.Semaphore(inflight)

    async def publish(payload: bytes) -> None:
        try:
            await link.publish("bare/telemetry", payload, qos=1)
        finally:
            window.release()

    async with link:
        started = time.time()
        async with asyncio.TaskGroup() as group:
            for payload in payloads:
                await window.acquire()
                group.create_task(publish(payload))
        got, elapsed = await asyncio.to_thread(finish_counter, counter, started)
    if got < records:
        raise RuntimeError(f"the link's subscriber counted {got} of {records} records")
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
    work: Path, bundle: Path, key: Path, port: int, rows: list[list[float]], keep: Path, profile: bool = False
) -> tuple[float, AgentSettings]:
    """Records per second the agent's sync gets from a full outbox to the subscriber, from its connection.

    With ``profile``, cProfile covers the clocked part only (not the offline fill before it).
    """
    device = "sync-bench"
    await agent_throughput(work, bundle, key, rows, 1, device)  # offline: fills the outbox
    counter = start_counter(port, "fleet/bench/+/telemetry", len(rows), keep)
    settings = load_settings(None, **agent_config(work, bundle, key, port, device, {"kind": "synthetic"}))
    agent = Agent(settings, source=ListSource([]))
    task = asyncio.create_task(agent.run())
    await agent.syncer.connected.wait()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    started = time.time()
    records, elapsed = await asyncio.to_thread(finish_counter, counter, started)
    if profiler is not None:
        profiler.disable()
        _print_profile("the agent's sync (clocked part)", profiler)
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


def profiled(what: str, run: Callable[[], Any]) -> Any:
    """``run()`` under cProfile (this thread only); the top functions to stderr."""
    profiler = cProfile.Profile()
    profiler.enable()
    result = run()
    profiler.disable()
    _print_profile(what, profiler)
    return result


def _print_profile(what: str, profiler: cProfile.Profile) -> None:
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(45)
    say(f"profile of {what}:\n{text.getvalue()}")


def main() -> None:
    mode, p = sys.argv[1], json.loads(sys.argv[2])
    profile = p.get("profile", False)
    bundle = Path(p["bundle"]) if "bundle" in p else None
    out: dict[str, Any]
    if mode == "ort":
        assert bundle is not None
        scaled = scaled_rows(bundle, readings(p["n"]))
        out = {
            "per_reading": bare_ort_per_reading(bundle, scaled),
            "batch256": bare_ort_batched(bundle, scaled, 256),
        }
    elif mode == "agent":
        assert bundle is not None
        rows = readings(p["n"])

        def run() -> Any:
            work, key = Path(p["work"]), Path(p["key"])
            return asyncio.run(agent_throughput(work, bundle, key, rows, 1, p["device"]))

        rate, sizes, settings, cpu = profiled("the agent, offline", run) if profile else run()
        out = {
            "rate": rate,
            "sizes": sizes,
            "synchronous": settings.outbox.synchronous,
            "training_buffer": settings.training_buffer.enabled,
            "cpu_s_each": cpu,
        }
    elif mode == "pipeline":
        assert bundle is not None
        rows = readings(p["n"])
        samples = Path(p["samples_db"]) if p.get("samples_db") else None
        rate, cpu = bare_pipeline(bundle, rows, p["sizes"], Path(p["db"]), p["synchronous"], samples)
        out = {"rate": rate, "cpu_s_each": cpu}
    elif mode == "deliver":
        assert bundle is not None
        rows = readings(p["n"])
        out = {"rate": asyncio.run(agent_delivery(Path(p["work"]), bundle, Path(p["key"]), p["port"], rows))}
    elif mode == "sync":
        assert bundle is not None
        rows = readings(p["n"])

        rate, settings = asyncio.run(
            agent_sync(Path(p["work"]), bundle, Path(p["key"]), p["port"], rows, Path(p["keep"]), profile)
        )
        out = {"rate": rate, "inflight": settings.mqtt.max_inflight}
    elif mode == "floor":
        assert bundle is not None
        work, device = Path(p["work"]), "floor-bench"
        _, _, settings, _ = asyncio.run(
            agent_throughput(work, bundle, Path(p["key"]), readings(p["n"]), 1, device)
        )
        db = work / device / "outbox.sqlite"
        batch = settings.mqtt.batch_max_records
        rate = sqlite_floor(db, batch, p["delete_every"], settings.outbox.synchronous)
        encode = bare_orjson(read_payloads(Path(p["payloads"])), p["replays"])
        out = {"rate": rate, "batch": batch, "orjson": encode}
    elif mode == "paho":
        payloads = read_payloads(Path(p["payloads"])) * p["replays"]
        out = {"rate": bare_paho_delivery(p["port"], payloads, p["records"], p["inflight"])}
    elif mode == "link":
        payloads = read_payloads(Path(p["payloads"])) * p["replays"]
        out = {"rate": asyncio.run(link_delivery(p["port"], payloads, p["records"], p["inflight"]))}
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
