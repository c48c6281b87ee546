"""Helper process for bench/agent.py: counts records arriving on a topic, prints when N arrived.

Runs apart from the publisher so the two do not share a CPU loop. Arguments: port, topic,
records, then optionally a timeout in seconds and a file to write every payload to (each as a
4-byte big-endian length and the bytes), written after the count, outside the clock.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt


def main() -> None:
    port, topic, target = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 120.0
    keep = Path(sys.argv[5]) if len(sys.argv) > 5 else None
    done = threading.Event()
    state = {"records": 0, "first": 0.0, "last": 0.0}
    payloads: list[bytes] = []

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        if not state["records"]:
            state["first"] = now
        # Each record carries one "seq"; a bare publisher's message is one record.
        state["records"] += max(1, message.payload.count(b'"seq":'))
        state["last"] = now
        if keep is not None:
            payloads.append(message.payload)
        if state["records"] >= target:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{time.time_ns()}")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    print("ready", flush=True)
    done.wait(timeout=timeout)
    finished = time.time()
    client.loop_stop()
    if keep is not None:
        keep.write_bytes(b"".join(len(p).to_bytes(4, "big") + p for p in payloads))
    print(f"{state['records']} {state['last']:.6f} {finished:.6f}", flush=True)


if __name__ == "__main__":
    main()
