"""Helpers for bench/gateway.py: device payloads, and many devices as aiomqtt clients on one loop."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import aiomqtt
import numpy as np

from fleet_protocol import ReportedState, TelemetryBatch, TelemetryRecord, state_topic, telemetry_topic

MODEL_ID, MODEL_VERSION = "sensor-mlp", "1.0.0"
FEATURES = 16


class PayloadFactory:
    """Valid telemetry batches whose records look like an agent's (float32 features, 4 outputs)."""

    def __init__(self, site: str, *, anomaly_rate: float = 0.01, seed: int = 0) -> None:
        self.site = site
        self.anomaly_rate = anomaly_rate
        self.rng = np.random.default_rng(seed)

    def telemetry(self, device: str, seqs: range, ts: list[float]) -> bytes:
        n = len(seqs)
        features = self.rng.normal(0.0, 1.0, (n, FEATURES)).astype(np.float32).tolist()
        outputs = self.rng.dirichlet(np.ones(4), n).astype(np.float32).tolist()
        anomaly = (self.rng.random(n) < self.anomaly_rate).tolist()
        records = [
            TelemetryRecord(
                device_id=device,
                seq=seq,
                ts=ts[i],
                model_id=MODEL_ID,
                model_version=MODEL_VERSION,
                outputs=outputs[i],
                predicted=3 if anomaly[i] else int(np.argmax(outputs[i][:3])),
                confidence=max(outputs[i]),
                anomaly=anomaly[i],
                features=features[i],
            )
            for i, seq in enumerate(seqs)
        ]
        batch = TelemetryBatch(device_id=device, site=self.site, records=records)
        return batch.model_dump_json(exclude_none=True).encode()

    def state(self, device: str, *, online: bool = True, last_seq: int = 0) -> bytes:
        state = ReportedState(
            device_id=device,
            site=self.site,
            online=online,
            health="ok" if online else "unknown",
            model_id=MODEL_ID,
            model_version=MODEL_VERSION,
            runtime="onnxruntime",
            last_seq=last_seq,
        )
        return state.model_dump_json(exclude_none=True).encode()


class DeviceSwarm:
    """``count`` devices, each its own MQTT connection: retained online state, then a record a second.

    All on the caller's loop (aiomqtt: paho's sockets on the loop, no thread per client).
    """

    def __init__(self, port: int, site: str, count: int, *, interval_s: float = 1.0, prefix: str = "dev"):
        self.port, self.site, self.interval_s = port, site, interval_s
        self.devices = [f"{prefix}-{i:05d}" for i in range(count)]
        self.payloads = PayloadFactory(site, seed=1)
        self.published = 0
        self.telemetry_bytes = 0
        self.errors = 0
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[str, aiomqtt.Client] = {}

    async def connect(self, concurrency: int = 50, progress: Callable[[int], None] | None = None) -> None:
        """Connect every device and publish its retained state; returns when all are online."""
        gate = asyncio.Semaphore(concurrency)

        async def one(device: str) -> None:
            will = aiomqtt.Will(
                state_topic(self.site, device), self.payloads.state(device, online=False), qos=1, retain=True
            )
            client = aiomqtt.Client("127.0.0.1", self.port, identifier=device, will=will, timeout=30)
            async with gate:
                await self._stack.enter_async_context(client)
                await client.publish(
                    state_topic(self.site, device), self.payloads.state(device), qos=1, retain=True
                )
            self._clients[device] = client
            if progress is not None and len(self._clients) % 200 == 0:
                progress(len(self._clients))

        await asyncio.gather(*(one(d) for d in self.devices))

    async def stream(self, duration_s: float) -> None:
        """Each device publishes one record per interval, phases spread over the interval."""
        deadline = time.monotonic() + duration_s
        await asyncio.gather(*(self._device(d, deadline) for d in self.devices))

    async def _device(self, device: str, deadline: float) -> None:
        client = self._clients[device]
        topic = telemetry_topic(self.site, device)
        await asyncio.sleep(random.random() * self.interval_s)
        seq = 0
        next_at = time.monotonic()
        while next_at < deadline:
            seq += 1
            payload = self.payloads.telemetry(device, range(seq, seq + 1), [time.time()])
            try:
                await client.publish(topic, payload, qos=1)
            except aiomqtt.MqttError:
                self.errors += 1
            else:
                self.published += 1
                self.telemetry_bytes += len(payload)
            next_at += self.interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def close(self) -> None:
        await self._stack.aclose()
