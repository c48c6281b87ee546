"""Benchmark of the cloud controller (a real `cloud-controller serve` process); prints one JSON object.

- ``ingest_rps_sqlite`` / ``ingest_rps_postgres``: records per second stored, 4 concurrent clients
  posting batches of 500 new records each (gateway tokens, JSON bodies), from the moment all clients
  are connected to the last answer.
- ``desired_state_p95_ms`` (and p50): latency of ``GET /api/v1/devices/{id}/desired`` for random
  devices, with 10,000 devices in the registry, a group and a deployment that select them (SQLite).
- ``metrics_scrape_ms_sqlite`` / ``metrics_scrape_ms_postgres``: p50 and p95 of ``GET /metrics`` with
  1,000,000 drift windows stored (12 model versions and sites, inserted in bulk), and that the latest
  score it reports is right.
- ``machine``: ``os.cpu_count()`` and the CPU model, beside the figures.

PostgreSQL is part of it, not an option: the benchmark stops with the reason when none answers on
127.0.0.1:5432 (``EDGEFLEET_TEST_PG`` names another). Run: ``.venv/bin/python bench/controller.py``
(about three minutes). Progress goes to stderr, the JSON object alone to stdout.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from sqlmodel import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._machine import machine  # noqa: E402
from bench._output import stdout_for_json_only  # noqa: E402
from cloud_controller.db import make_engine  # noqa: E402
from cloud_controller.models import Deployment, Device, DeviceGroup, Site  # noqa: E402
from fleet_protocol.signing import generate_private_key, public_key_pem  # noqa: E402
from tests.controller.conftest import Controller, _pg_available, database_url, start_controller  # noqa: E402
from tests.controller.factories import batch, bulk_drift, bulk_score  # noqa: E402

CLIENTS, BATCHES_PER_CLIENT, RECORDS_PER_BATCH = 4, 10, 500
DEVICES = 10_000
DRIFT_KEYS = [(f"site-{s}", "sensor-mlp", f"1.{v}.0") for s in range(3) for v in range(4)]
DRIFT_WINDOWS = 1_000_000 // len(DRIFT_KEYS) + 1  # per key: 1,000,008 rows in all
SCRAPES = 20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def controller(work: Path, kind: str, key: Path) -> Iterator[Controller]:
    """A `cloud-controller serve` on a fresh SQLite file or PostgreSQL database."""
    (work / kind).mkdir(parents=True)
    for url in database_url(kind, work / kind):
        process, ctl = start_controller(work / kind, url, key)
        try:
            yield ctl
        finally:
            process.terminate()
            process.wait(10)


def ingest_rate(ctl: Controller) -> float:
    bodies = [
        [
            batch(devices={f"bench-{c}": range(1 + i * RECORDS_PER_BATCH, 1 + (i + 1) * RECORDS_PER_BATCH)})
            .model_dump_json()
            .encode()
            for i in range(BATCHES_PER_CLIENT)
        ]
        for c in range(CLIENTS)
    ]
    clients = [ctl.client("gateway") for _ in range(CLIENTS)]
    for client in clients:  # connected before the clock starts
        client.timeout = httpx.Timeout(120)
        client.get("/healthz").raise_for_status()
    ready = threading.Barrier(CLIENTS + 1)

    def run(client: httpx.Client, client_bodies: list[bytes]) -> tuple[int, float]:
        ready.wait()
        stored = 0
        for body in client_bodies:
            response = client.post("/api/v1/ingest", content=body)
            answered = time.perf_counter()  # the clock stops at the controller's answer
            response.raise_for_status()
            stored += response.json()["accepted"]
        return stored, answered

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(run, client, b) for client, b in zip(clients, bodies, strict=True)]
        ready.wait()
        started = time.perf_counter()
        results = [f.result() for f in futures]
    for client in clients:
        client.close()
    stored = sum(r[0] for r in results)
    assert stored == CLIENTS * BATCHES_PER_CLIENT * RECORDS_PER_BATCH
    return stored / (max(r[1] for r in results) - started)


def seed_devices(db_url: str) -> None:
    engine = make_engine(db_url)
    with Session(engine) as session:
        session.add(Site(id="site-a", name="a"))
        session.flush()  # the devices reference it
        session.add_all(
            Device(id=f"dev-{i:05d}", site_id="site-a", labels={"line": str(i % 10)}) for i in range(DEVICES)
        )
        group = DeviceGroup(name="line-3", selector={"line": "3"})
        session.add(group)
        session.flush()
        assert group.id is not None
        session.add(Deployment(group_id=group.id, model_id="sensor-mlp", version="1.0.0", created_by="bench"))
        session.commit()
    engine.dispose()


def latencies_ms(client: httpx.Client, paths: Iterator[str], count: int, warmup: int) -> list[float]:
    """Milliseconds from each request to its answer (after ``warmup`` requests not counted)."""
    out = []
    for n in range(warmup + count):
        path = next(paths)
        started = time.perf_counter()
        response = client.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        if n >= warmup:
            out.append(elapsed)
    return out


def desired_ms(ctl: Controller) -> tuple[float, float]:
    rng = random.Random(0)
    paths = (f"/api/v1/devices/dev-{rng.randrange(DEVICES):05d}/desired" for _ in iter(int, 1))
    with ctl.client("viewer") as client:
        found = latencies_ms(client, paths, count=500, warmup=50)
    return float(np.percentile(found, 50)), float(np.percentile(found, 95))


def scrape_ms(ctl: Controller) -> tuple[float, float]:
    started = time.perf_counter()
    bulk_drift(ctl.database_url, DRIFT_KEYS, DRIFT_WINDOWS)
    log(
        f"  {len(DRIFT_KEYS) * DRIFT_WINDOWS:,} drift windows stored in {time.perf_counter() - started:.0f} s"
    )
    paths = iter(lambda: "/metrics", None)
    with ctl.client(None) as client:
        found = latencies_ms(client, paths, count=SCRAPES, warmup=2)
        text = client.get("/metrics").text
    site, model, version = DRIFT_KEYS[-1]
    expected = (
        f'edgefleet_drift_score{{model="{model}@{version}",site="{site}"}} {bulk_score(DRIFT_WINDOWS - 1)}'
    )
    assert expected in text, f"/metrics does not say {expected}"
    return float(np.percentile(found, 50)), float(np.percentile(found, 95))


def main() -> None:
    reason = _pg_available()
    if reason:
        raise SystemExit(
            f"bench/controller.py: {reason}; PostgreSQL is part of this benchmark (.ci/run starts it)"
        )
    with stdout_for_json_only() as emit:
        out: dict[str, object] = {"machine": machine()}
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            key = work / "k.pub"
            key.write_bytes(public_key_pem(generate_private_key().public_key()))
            for kind in ("sqlite", "postgres"):
                log(f"ingest on {kind}")
                with controller(work / "ingest", kind, key) as ctl:
                    out[f"ingest_rps_{kind}"] = round(ingest_rate(ctl))
            log("desired state with 10,000 devices")
            with controller(work / "desired", "sqlite", key) as ctl:
                seed_devices(ctl.database_url)
                p50, p95 = desired_ms(ctl)
                out |= {"desired_state_p95_ms": round(p95, 2), "desired_state_p50_ms": round(p50, 2)}
            for kind in ("sqlite", "postgres"):
                log(f"/metrics with 1,000,000 drift windows on {kind}")
                with controller(work / "metrics", kind, key) as ctl:
                    p50, p95 = scrape_ms(ctl)
                    out[f"metrics_scrape_ms_{kind}"] = {"p50": round(p50, 1), "p95": round(p95, 1)}
        out |= {
            "devices": DEVICES,
            "drift_windows": len(DRIFT_KEYS) * DRIFT_WINDOWS,
            "clients": CLIENTS,
            "records_per_batch": RECORDS_PER_BATCH,
        }
        emit(json.dumps(out))


if __name__ == "__main__":
    main()
