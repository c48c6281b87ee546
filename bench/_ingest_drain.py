"""Helper process for bench/gateway.py: one subscriber drains the messages queued for its session.

``_ingest_drain.py bare|gateway PORT CLIENT_ID N SITE [WORKDIR]`` prints one JSON object of
clocks and counters. Each side runs in a fresh process of its own, as it would be deployed:
neither carries the benchmark's other imports (nor their garbage collection).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare(port: int, client_id: str, n: int, site: str) -> dict[str, Any]:
    """Seconds from connect until a bare paho client of session ``client_id`` received ``n`` messages.

    paho sends each PUBACK as its message callback returns.
    """
    done = threading.Event()
    received = [0]

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        received[0] += 1
        if received[0] >= n:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(f"fleet/{site}/+/#", qos=1)
    started, cpu = time.perf_counter(), time.process_time()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not done.wait(180):
        raise RuntimeError(f"bare subscriber got {received[0]} of {n} messages in 180 s")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    client.disconnect()
    client.loop_stop()
    return {"seconds": elapsed, "cpu_seconds": cpu}


async def gateway(port: int, client_id: str, n: int, site: str, work: Path) -> dict[str, Any]:
    """Clocks of a `Gateway` draining ``n`` queued telemetry messages, and its counters.

    ``seconds``: from the gateway's start (store open, HTTP up; about to connect) until it
    acknowledged the ``n``-th message, which it does right after the transaction that stored it
    committed. ``counted_seconds``: the earlier clock, from before `Gateway.run()` until its
    messages counter reached ``n`` (before that last transaction committed).
    """
    from edge_gateway.config import load_settings
    from edge_gateway.gateway import Gateway

    settings = load_settings(
        None,
        gateway_id="gw-ingest",
        site=site,
        data_dir=str(work),
        broker={"host": "127.0.0.1", "port": port, "client_id": client_id},
        http={"host": "127.0.0.1", "port": 0},
        log_level="WARNING",
    )
    # Built inside the loop: the MQTT client binds to the running loop.
    gw = Gateway(settings)
    telemetry = gw.metrics.messages.labels("telemetry")
    launched = time.perf_counter()
    task = asyncio.create_task(gw.run())
    counted = None
    try:
        while not gw.started.is_set():  # unless the task failed first
            if task.done():
                task.result()
            await asyncio.sleep(0.001)
        started, cpu = time.perf_counter(), time.process_time()
        deadline = started + 180
        while gw.link.acked < n:  # the gateway's tasks advance it
            if counted is None and telemetry._value.get() >= n:
                counted = time.perf_counter()
            if task.done():
                task.result()
                raise RuntimeError("the gateway stopped before ingesting everything")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the gateway acknowledged {gw.link.acked} of {n} in 180 s")
            await asyncio.sleep(0.002)
        acked, cpu = time.perf_counter(), time.process_time() - cpu
    finally:
        gw.stop()
        await task
    m = gw.metrics
    commits = next(s.value for s in m.commit_seconds.collect()[0].samples if s.name.endswith("_count"))
    return {
        "seconds": acked - started,
        "cpu_seconds": cpu,
        "counted_seconds": (counted or acked) - launched,
        "startup_seconds": started - launched,
        "records": m.records._value.get(),
        "duplicates": m.duplicates._value.get(),
        "commits": commits,
    }


def main() -> None:
    kind, port, client_id, n, site = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    if kind == "bare":
        out = bare(port, client_id, n, site)
    else:
        out = asyncio.run(gateway(port, client_id, n, site, Path(sys.argv[6])))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
