"""A process of virtual devices: real `edge_agent.Agent`s on one event loop, driven by the runner.

Why a process of their own: a fault must be able to kill -9 the devices (mid-update, say) and
start them again on the same data folders, while the runner, the observer and the rest of the
fleet go on. Each device keeps its own MQTT connection, SQLite outbox and model runtime; they
share two small thread pools, as they did on the runner's loop.

Commands, one JSON object a line on stdin (`simulators.json_lines`):

- ``{"op": "start", "device", "settings", "source"}``: start a device (``settings`` are
  `edge_agent.config.load_settings` overrides, ``source`` the `PacedSource`'s arguments plus
  ``extra_drift``, ``relabel`` and ``labels``: ``{share, delay_s}`` of the site's simulated
  labelling system, `simulators.labeller`, which this process runs for its devices); answers
  at once.
- ``{"op": "stop", "device"}``: a clean stop; answers when it is done.
- ``{"op": "source", "devices", "extra_drift"?, "relabel"?}``: the sensors change.
- ``{"op": "disk_limit", "devices", "max_bytes"}``: their outboxes' disk fills up (None: frees).
- ``{"op": "stop_producing"}``: every sensor stops after its current reading.
- ``{"op": "arm", "point"}``: the next device to reach that point of an update kills this
  process with SIGKILL (`edge_agent.ota.hooks`); ``null`` disarms.
- ``{"op": "wait_running", "within_s"}``: until every device runs its pipeline or has ended.
- ``{"op": "status"}``: per device, its outbox, sensor, model and last switch; the sensors'
  pace; the worst scheduling delay of this loop since the last status; labels published.
- ``{"op": "stop_all"}``: every device stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.ota.hooks import POINTS
from simulators.json_lines import run_child, serve
from simulators.labeller import Labeller
from simulators.paced_source import PacedSource

log = logging.getLogger(__name__)

#: The hook `edge_agent.ota.hooks.crash_point` reads at each point.
CRASH_AT = "EDGEFLEET_AGENT_CRASH_AT"
_TICK_S = 0.1
_BLOCKING_THREADS = 2


class AgentHost:
    def __init__(self) -> None:
        self.agents: dict[str, Agent] = {}
        self.sources: dict[str, PacedSource] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        #: Devices stopped here: their last seq still counts.
        self.retired: dict[str, int] = {}
        self.crashed: dict[str, str] = {}
        self._outbox_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="outbox")
        self._infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._worst_delay = 0.0
        self._ticker: asyncio.Task[None] | None = None
        #: The site's labelling system, for this process's devices (one site per process).
        self.labeller: Labeller | None = None

    async def answer(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command.get("op")
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._measure_loop(), name="loop-delay")
        if op == "start":
            self._start(command["device"], command["settings"], command["source"])
            return {"ok": True}
        if op == "stop":
            return {"last_seq": await self._stop(command["device"])}
        if op == "source":
            for device in command["devices"]:
                source = self.sources.get(device)
                if source is None:
                    continue
                if "extra_drift" in command:
                    source.extra_drift = float(command["extra_drift"])
                if "relabel" in command:
                    source.relabel = {int(k): int(v) for k, v in command["relabel"].items()}
            return {"ok": True}
        if op == "disk_limit":
            for device in command["devices"]:
                agent = self.agents.get(device)
                if agent is not None:
                    await agent.outbox.set_disk_limit(command["max_bytes"])
            return {"ok": True}
        if op == "stop_producing":
            for source in self.sources.values():
                source.limit = 0
            return {"ok": True}
        if op == "arm":
            point = command["point"]
            if point is None:
                os.environ.pop(CRASH_AT, None)
                return {"ok": True}
            if point not in POINTS:
                return {"error": f"unknown crash point {point!r} (known: {', '.join(POINTS)})"}
            os.environ[CRASH_AT] = point
            return {"ok": True}
        if op == "wait_running":
            return {"running": await self._wait_running(float(command["within_s"]))}
        if op == "status":
            return self._status()
        if op == "stop_all":
            for device in list(self.agents):
                await self._stop(device)
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}

    def _start(self, device: str, overrides: dict[str, Any], source_args: dict[str, Any]) -> None:
        settings = load_settings(None, **overrides)
        args = dict(source_args)
        extra_drift = float(args.pop("extra_drift", 0.0))
        relabel = {int(k): int(v) for k, v in args.pop("relabel", {}).items()}
        labels = args.pop("labels", None)
        labeller_tls = args.pop("labeller_tls", None)
        source = PacedSource(**args)
        source.extra_drift, source.relabel = extra_drift, relabel
        labeller = self._labeller(settings.site, settings.mqtt.host, settings.mqtt.port, labels, labeller_tls)
        agent = Agent(
            settings,
            source=source,
            outbox_executor=self._outbox_pool,
            inference_executor=self._infer_pool,
            on_stored=(lambda first, samples: labeller.observe(device, first, samples)) if labeller else None,
        )
        self.agents[device], self.sources[device] = agent, source
        self.retired.pop(device, None)
        self.tasks[device] = asyncio.create_task(agent.run(), name=device)

    def _labeller(
        self, site: str, host: str, port: int, labels: dict[str, Any] | None, tls: dict[str, str] | None
    ) -> Labeller | None:
        """The process's labeller, started with its first device that asks for labels."""
        if not labels or float(labels.get("share", 0.0)) <= 0.0:
            return None
        if self.labeller is None:
            self.labeller = Labeller(
                site=site,
                host=host,
                port=port,
                share=float(labels["share"]),
                delay_s=float(labels.get("delay_s", 0.0)),
                client_id=f"labeller-{site}-{os.getpid()}",
                tls=tls,
            )
            self.labeller.start()
        return self.labeller

    async def _stop(self, device: str) -> int:
        agent, task = self.agents.pop(device, None), self.tasks.pop(device, None)
        self.sources.pop(device, None)
        if agent is None or task is None:
            return self.retired.get(device, 0)
        agent.stop()
        await asyncio.gather(task, return_exceptions=True)
        self._note_crash(device, task)
        self.retired[device] = agent.outbox.stats.last_seq
        return self.retired[device]

    async def _wait_running(self, within_s: float) -> int:
        async def one(device: str) -> None:
            started = asyncio.create_task(self.agents[device].started.wait())
            await asyncio.wait({started, self.tasks[device]}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await asyncio.gather(*(one(d) for d in list(self.agents)))
        return sum(agent.started.is_set() for agent in self.agents.values())

    def _note_crash(self, device: str, task: asyncio.Task[None]) -> None:
        failed = task.done() and not task.cancelled() and task.exception() is not None
        if failed and device not in self.crashed:
            self.crashed[device] = repr(task.exception())
            log.error("virtual device %s crashed: %r", device, task.exception())

    def _status(self) -> dict[str, Any]:
        now = time.monotonic()
        devices: dict[str, Any] = {}
        for device, agent in self.agents.items():
            self._note_crash(device, self.tasks[device])
            stats = agent.outbox.stats
            model = agent.model
            devices[device] = {
                "started": agent.started.is_set(),
                "waiting": stats.depth + stats.pending,
                "last_seq": stats.last_seq,
                "source_done": agent.source_done.is_set(),
                "version": model.manifest.version if model is not None else None,
                "swap_gap_s": agent.swap_gap_s,
                "steady_gap_s": agent.steady_gap_s,
            }
        running = [s for s in self.sources.values() if s.started_at is not None and not s.done]
        delay, self._worst_delay = self._worst_delay, 0.0
        return {
            "devices": devices,
            "retired": self.retired,
            "crashed": self.crashed,
            "pace": {
                "devices": len(running),
                "due_per_s": sum(s.rate_hz or 0.0 for s in running),
                "behind": sum(s.behind(now) for s in running),
                "given": sum(s.given for s in running),
            },
            "loop_delay_s": delay,
            "labels": {
                "scheduled": self.labeller.scheduled if self.labeller else 0,
                "published": self.labeller.published if self.labeller else 0,
                "waiting": self.labeller.waiting if self.labeller else 0,
            },
        }

    async def _measure_loop(self) -> None:
        """A 0.1 s sleep that wakes late means this loop had no time for it: the devices lag."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(_TICK_S)
            self._worst_delay = max(self._worst_delay, time.monotonic() - before - _TICK_S)

    async def close(self) -> None:
        for device in list(self.agents):
            await self._stop(device)
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self.labeller is not None:
            await self.labeller.close()
        self._outbox_pool.shutdown(wait=False)
        self._infer_pool.shutdown(wait=False)


async def _serve() -> None:
    # The agents' blocking work (loading and verifying models, bundle files) goes through the
    # default executor: a few threads, so that hundreds of devices loading a new model at once
    # queue there instead of taking the interpreter from the loop that runs them all.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=_BLOCKING_THREADS, thread_name_prefix="blocking")
    )
    host = AgentHost()
    try:
        await serve(host.answer)
    finally:
        # End of commands (the runner closed stdin, or SIGTERM): devices stop cleanly.
        await host.close()


def main() -> None:
    run_child(_serve)


if __name__ == "__main__":
    main()
