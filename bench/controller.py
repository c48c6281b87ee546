"""Benchmark of the cloud controller (a real `cloud-controller serve` process); prints one JSON object.

- ``ingest_rps_sqlite`` / ``ingest_rps_postgres``: records per second stored, 4 concurrent clients
  posting batches of 500 new records each (gateway tokens, JSON bodies).
- ``desired_state_p95_ms``: p95 latency of ``GET /api/v1/devices/{id}/desired`` for random devices,
  with 10,000 devices in the registry, a group and a deployment that select them (SQLite).

Run: ``.venv/bin/python bench/controller.py`` (about a minute; PostgreSQL on 127.0.0.1:5432).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from sqlmodel import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloud_controller.db import make_engine  # noqa: E402
from cloud_controller.models import Deployment, Device, DeviceGroup, Site  # noqa: E402
from fleet_protocol.signing import generate_private_key, public_key_pem  # noqa: E402
from tests.controller.conftest import _pg_available, database_url, start_controller  # noqa: E402
from tests.controller.factories import batch  # noqa: E402

CLIENTS, BATCHES_PER_CLIENT, RECORDS_PER_BATCH = 4, 10, 500
DEVICES = 10_000


def ingest_rate(url: str, token: str) -> float:
    bodies = [
        [
            batch(
                devices={f"bench-{client}": range(1 + i * RECORDS_PER_BATCH, 1 + (i + 1) * RECORDS_PER_BATCH)}
            )
            .model_dump_json()
            .encode()
            for i in range(BATCHES_PER_CLIENT)
        ]
        for client in range(CLIENTS)
    ]

    def run(client_bodies: list[bytes]) -> int:
        stored = 0
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
            for body in client_bodies:
                response = client.post("/api/v1/ingest", content=body)
                response.raise_for_status()
                stored += response.json()["accepted"]
        return stored

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        stored = sum(pool.map(run, bodies))
    elapsed = time.perf_counter() - started
    assert stored == CLIENTS * BATCHES_PER_CLIENT * RECORDS_PER_BATCH
    return stored / elapsed


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


def desired_p95_ms(url: str, token: str) -> tuple[float, float]:
    rng = random.Random(0)
    latencies = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for _ in range(50):  # warm-up
            client.get(f"/api/v1/devices/dev-{rng.randrange(DEVICES):05d}/desired")
        for _ in range(500):
            started = time.perf_counter()
            client.get(f"/api/v1/devices/dev-{rng.randrange(DEVICES):05d}/desired").raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(latencies, 95)), float(np.percentile(latencies, 50))


def main() -> None:
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key = work / "k.pub"
        key.write_bytes(public_key_pem(generate_private_key().public_key()))
        for kind in ("sqlite", "postgres"):
            if kind == "postgres" and _pg_available():
                out["ingest_rps_postgres"] = None
                out["postgres_skipped"] = _pg_available()
                continue
            for db in database_url(kind, work / kind if kind == "sqlite" else work):
                (work / kind).mkdir(exist_ok=True)
                process, ctl = start_controller(work / kind, db, key)
                try:
                    out[f"ingest_rps_{kind}"] = round(ingest_rate(ctl.url, ctl.tokens["gateway"]))
                finally:
                    process.terminate()
                    process.wait(10)
        (work / "desired").mkdir()
        db = f"sqlite:///{work / 'desired' / 'c.sqlite'}"
        process, ctl = start_controller(work / "desired", db, key)
        try:
            seed_devices(db)
            p95, p50 = desired_p95_ms(ctl.url, ctl.tokens["viewer"])
        finally:
            process.terminate()
            process.wait(10)
    out.update(
        {
            "desired_state_p95_ms": round(p95, 2),
            "desired_state_p50_ms": round(p50, 2),
            "devices": DEVICES,
            "clients": CLIENTS,
            "records_per_batch": RECORDS_PER_BATCH,
        }
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
