"""Helper process for bench/agent.py: counts records arriving on a topic, prints when N arrived.

Runs apart from the publisher so the two do not share a CPU loop.
"""

from __future__ import annotations

import sys
import threading
import time

import paho.mqtt.client as mqtt


def main() -> None:
    port, topic, target = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    done = threading.Event()
    state = {"records": 0, "first": 0.0, "last": 0.0}

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        if not state["records"]:
            state["first"] = now
        # Each record carries one "seq"; a bare publisher's message is one record.
        state["records"] += max(1, message.payload.count(b'"seq":'))
        state["last"] = now
        if state["records"] >= target:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{time.time_ns()}")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    print("ready", flush=True)
    done.wait(timeout=float(sys.argv[4]) if len(sys.argv) > 4 else 120)
    client.loop_stop()
    print(f"{state['records']} {state['last']:.6f} {time.time():.6f}", flush=True)


if __name__ == "__main__":
    main()
