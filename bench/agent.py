"""Benchmark of the device agent; prints one JSON object (progress and profiles go to stderr).

Inference, same run, same int8 ONNX MLP (16-64-4), same readings (Python lists of 16 floats):

- ``agent_vs_bare_pipeline``: readings per second through the whole agent (preprocess, infer
  with micro-batching, outbox persistence in SQLite) over a minimal hand-written loop doing the
  same work: the lists scaled with numpy, ``InferenceSession.run`` on exactly the micro-batch
  sizes the agent used (recorded from its batch-size metric, replayed in order), the same record
  bytes (checked) written with ``executemany`` in one WAL transaction per batch at the agent's
  ``synchronous``; and, as the agent keeps a training buffer by default, each batch's raw inputs and
  predictions in a second WAL database (``synchronous=NORMAL``, one ``executemany`` transaction per
  batch). Both clocks stop when the last record and the last sample are committed. Three alternating rounds
  (``--rounds``); the figure is total readings over total seconds of each side, ``_rounds`` each
  round's, ``_cpu`` the same with the processes' CPU seconds (steadier on a busy machine).
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
- ``link_vs_bare_paho_same_batches``: the agent's MQTT link alone (`edge_agent.mqtt_link.MqttLink`
  on aiomqtt) publishing those same payloads, already built, with the same window, over bare paho:
  what the transport costs. What is left between it and ``delivery_vs_bare_paho_same_batches`` is
  the outbox (read, delete) and encoding the stored records as wire records.
- ``outbox_sqlite_floor_vs_bare_paho``: bare sqlite3 alone reading a full outbox of the agent's
  records 100 rows at a time (the agent's batch) and deleting them by range once per 1,000, over that
  same bare paho figure: no encoding, no network, no asyncio. The best ratio any sync that keeps each
  record in SQLite until the broker acknowledges it could reach on this machine, were encoding and
  the link free; ``delivery_vs_bare_paho_same_batches`` cannot pass it.
- ``sync_bound_vs_bare_paho``: computed, not measured: the rate of a sync doing nothing but the link's
  work (``link_same_batches_records_per_s``), the SQLite floor's and ``orjson.dumps`` of the agent's
  batches with their records already built (``bare_orjson_records_per_s``), one after the other,
  over bare paho. On one event loop these hold the GIL in turn (SQLite's own C code excepted), and
  on two cores the broker and the subscriber need the other: the bound of this design here.
- ``delivery_vs_bare_paho_per_record``: the agent end to end (from its start, inference included,
  as before) over a bare paho publisher sending one record per QoS 1 message (20 in flight): what
  batching buys.

Every side runs in a fresh process of its own (``bench/_agent_side.py``): none carries this
script's imports (torch, to train the model) and their garbage collection.

Run: ``.venv/bin/python bench/agent.py`` (about a minute); ``--profile`` also runs the agent's
inference and its sync once more under cProfile (main thread) and prints the top functions.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._agent_side import DEVICE, agent_config, outbox_digest, read_payloads, say  # noqa: E402
from bench._machine import machine  # noqa: E402
from bench._output import stdout_for_json_only  # noqa: E402
from fleet_protocol.signing import generate_private_key, public_key_pem  # noqa: E402
from simulators.model_factory import build_bundles, train_mlp  # noqa: E402
from tests.utils.broker import Mosquitto  # noqa: E402

N_INFER = 50_000
N_DELIVER = 20_000
REPLAYS = 10  # the bare publisher sends the agent's payloads this many times over
FLOOR_DELETE_EVERY = 1_000  # records per range delete in the SQLite floor (the agent deletes per 0.1 s)


def side(mode: str, **params: Any) -> dict[str, Any]:
    """One measurement in a fresh process (``bench/_agent_side.py``); its JSON answer."""
    args = [sys.executable, str(ROOT / "bench" / "_agent_side.py"), mode, json.dumps(params, default=str)]
    done = subprocess.run(args, stdout=subprocess.PIPE, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--rounds", type=int, default=3, help="agent, bare pipeline, ... rounds (3)")
    args = parser.parse_args()
    with stdout_for_json_only() as emit, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key = generate_private_key()
        key_file = work / "fleet.pub"
        key_file.write_bytes(public_key_pem(key.public_key()))
        bundle = build_bundles(train_mlp(seed=0), work / "bundles", key)["onnx-int8"]
        common = {"bundle": bundle, "key": key_file}

        say("bare ONNX Runtime, one reading per call, then batches of 256")
        ort = side("ort", bundle=bundle, n=N_INFER)
        # Alternating rounds, so that both sides see the same share of a busy machine's noise.
        agents, pipelines, same_bytes = [], [], True
        for i in range(args.rounds):
            say(f"round {i + 1} of {args.rounds}: the agent, offline")
            agent = side("agent", **common, work=work / f"round-{i}", device=DEVICE, n=N_INFER)
            say(f"round {i + 1} of {args.rounds}: the bare pipeline on the agent's micro-batch sizes")
            bare_db = work / f"bare-outbox-{i}.sqlite"
            pipelines.append(
                side(
                    "pipeline",
                    bundle=bundle,
                    n=N_INFER,
                    sizes=agent["sizes"],
                    db=bare_db,
                    synchronous=agent["synchronous"],
                    samples_db=work / f"bare-training-{i}.sqlite" if agent["training_buffer"] else None,
                )
            )
            agents.append(agent)
            same_bytes &= outbox_digest(bare_db) == outbox_digest(
                work / f"round-{i}" / DEVICE / "outbox.sqlite"
            )
        sizes = [s for a in agents for s in a["sizes"]]
        # Totals over the rounds: readings over seconds.
        agent_rate = args.rounds / sum(1 / a["rate"] for a in agents)
        pipeline_rate = args.rounds / sum(1 / p["rate"] for p in pipelines)
        agent_cpu = sum(a["cpu_s_each"] for a in agents)
        pipeline_cpu = sum(p["cpu_s_each"] for p in pipelines)
        if args.profile:
            side("agent", **common, work=work / "profile", device=DEVICE, n=N_INFER, profile=True)

        broker = Mosquitto(work / "mosquitto")
        broker.start()
        try:
            sample = json.dumps({"device_id": "bare", "seq": 1, "outputs": [0.1] * 4, "features": [0.5] * 16})
            one = work / "one-record.bin"
            one.write_bytes(len(sample).to_bytes(4, "big") + sample.encode())
            say("delivery: bare paho, one record per message")
            per_record = side(
                "paho", port=broker.port, payloads=one, replays=N_DELIVER, records=N_DELIVER, inflight=20
            )["rate"]
            say("delivery: the agent, end to end")
            delivered = side("deliver", **common, work=work, port=broker.port, n=N_DELIVER)["rate"]
            say("delivery: the agent's sync, from a full outbox")
            captured = work / "agent-payloads.bin"
            sync = side("sync", **common, work=work, port=broker.port, n=N_DELIVER, keep=captured)
            payloads = len(read_payloads(captured))
            say("delivery: bare sqlite3 reading and deleting a full outbox, the floor of the sync")
            floor = side(
                "floor",
                **common,
                work=work / "floor",
                n=N_DELIVER,
                delete_every=FLOOR_DELETE_EVERY,
                payloads=captured,
                replays=REPLAYS,
            )
            window = sync["inflight"]
            say(f"delivery: bare paho, the agent's {payloads} payloads x {REPLAYS}, {window} in flight")
            # Replayed: once would take a few tens of milliseconds. Bare paho and the link alone
            # send the very same payloads, the same number of times, with the same window.
            replay = {
                "port": broker.port,
                "payloads": captured,
                "replays": REPLAYS,
                "records": N_DELIVER * REPLAYS,
                "inflight": window,
            }
            same = side("paho", **replay)["rate"]
            say(f"delivery: the agent's MQTT link alone, the same payloads x {REPLAYS}, {window} in flight")
            link = side("link", **replay)["rate"]
            if args.profile:
                side(
                    "sync",
                    **common,
                    work=work / "profile",
                    port=broker.port,
                    n=N_DELIVER,
                    keep=work / "p.bin",
                    profile=True,
                )
            rss = agent_rss_mb(work, bundle, key_file, broker.port)
            # One after the other: the link's work, the SQLite floor's, orjson's (see the docstring).
            bound = 1 / (1 / link + 1 / floor["rate"] + 1 / floor["orjson"])
        finally:
            broker.stop()
        emit(
            json.dumps(
                {
                    "agent_vs_bare_pipeline": round(agent_rate / pipeline_rate, 3),
                    "agent_vs_bare_pipeline_rounds": [
                        round(a["rate"] / p["rate"], 3) for a, p in zip(agents, pipelines, strict=True)
                    ],
                    "agent_vs_bare_pipeline_cpu": round(pipeline_cpu / agent_cpu, 3),
                    "agent_vs_bare_ort_per_reading": round(agent_rate / ort["per_reading"], 3),
                    "agent_rss_mb": round(rss, 1),
                    "delivery_vs_bare_paho_same_batches": round(sync["rate"] / same, 3),
                    "delivery_vs_bare_paho_per_record": round(delivered / per_record, 3),
                    "link_vs_bare_paho_same_batches": round(link / same, 3),
                    "outbox_sqlite_floor_vs_bare_paho": round(floor["rate"] / same, 3),
                    "sync_bound_vs_bare_paho": round(bound / same, 3),
                    "agent_readings_per_s": round(agent_rate),
                    "bare_pipeline_readings_per_s": round(pipeline_rate),
                    "agent_cpu_us_per_reading": round(1e6 * agent_cpu / args.rounds, 2),
                    "bare_pipeline_cpu_us_per_reading": round(1e6 * pipeline_cpu / args.rounds, 2),
                    "bare_pipeline_same_record_bytes": same_bytes,
                    "bare_ort_per_reading_runs_per_s": round(ort["per_reading"]),
                    "bare_ort_batch256_readings_per_s": round(ort["batch256"]),
                    "agent_micro_batches": len(sizes) // args.rounds,
                    "agent_micro_batch_mean": round(float(np.mean(sizes)), 1),
                    "agent_micro_batch_sizes": histogram(sizes),
                    "outbox_synchronous": agents[0]["synchronous"],
                    "training_buffer": agents[0]["training_buffer"],
                    "rounds": args.rounds,
                    "agent_sync_records_per_s": round(sync["rate"]),
                    "agent_end_to_end_records_delivered_per_s": round(delivered),
                    "bare_paho_same_batches_records_per_s": round(same),
                    "link_same_batches_records_per_s": round(link),
                    "outbox_sqlite_floor_records_per_s": round(floor["rate"]),
                    "bare_orjson_records_per_s": round(floor["orjson"]),
                    "bare_paho_per_record_records_per_s": round(per_record),
                    "delivery_payloads": payloads,
                    "delivery_records_per_payload": round(N_DELIVER / max(1, payloads), 1),
                    "delivery_inflight_window": window,
                    "model": "MLP 16-64-4, ONNX dynamic int8",
                    **machine(),
                }
            )
        )


if __name__ == "__main__":
    main()
