"""The runner's handle on one process of virtual devices (`simulators.agent_host`).

It remembers how each of its devices was started, so that after a kill -9 the same devices
start again on the same data folders (same outboxes, same model slots, same update journals),
and keeps the last status it read, which the runner's synchronous questions are answered from.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.agent_host import CRASH_AT
from simulators.child_process import JsonLineChild
from simulators.scenario import SimError


@dataclass
class DeviceSpec:
    settings: dict[str, Any]
    source: dict[str, Any]


@dataclass
class HostStatus:
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    retired: dict[str, int] = field(default_factory=dict)
    crashed: dict[str, str] = field(default_factory=dict)
    pace: dict[str, float] = field(default_factory=lambda: {"devices": 0, "due_per_s": 0.0, "behind": 0.0})
    loop_delay_s: float = 0.0
    #: The process's labeller: scheduled, published, waiting (`simulators.labeller`).
    labels: dict[str, int] = field(default_factory=dict)


class AgentHostProcess:
    def __init__(self, name: str, log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self.specs: dict[str, DeviceSpec] = {}  # running here, in start order
        self.status = HostStatus()
        #: The highest seq each device ever reported here: a killed process forgets nothing of it.
        self.last_seq: dict[str, int] = {}
        self.kills = 0  # kill -9s that were meant (by a fault or an armed crash point)
        #: Labels published by processes of this handle since killed (a new one counts from 0).
        self.labels_before = 0
        self.armed: str | None = None
        self.child = self._new_child()

    def _new_child(self) -> JsonLineChild:
        env = {k: v for k, v in os.environ.items() if k != CRASH_AT}  # armed only on purpose, by `arm`
        return JsonLineChild("simulators.agent_host", self.log_path, env=env)

    async def start(self) -> None:
        await self.child.start()

    def alive(self) -> bool:
        return self.child.alive()

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    async def start_device(self, device: str, spec: DeviceSpec) -> None:
        self.specs[device] = spec
        await self.child.ask({"op": "start", "device": device, **spec.__dict__}, within_s=30)

    async def stop_device(self, device: str) -> None:
        self.specs.pop(device, None)
        answer = await self.child.ask({"op": "stop", "device": device}, within_s=60)
        self.last_seq[device] = max(self.last_seq.get(device, 0), int(answer["last_seq"]))

    async def tell(self, command: dict[str, Any], within_s: float = 30) -> dict[str, Any]:
        return await self.child.ask(command, within_s=within_s)

    async def wait_running(self, within_s: float) -> int:
        answer = await self.child.ask({"op": "wait_running", "within_s": within_s}, within_s=within_s + 30)
        return int(answer["running"])

    async def refresh(self, within_s: float = 5.0) -> HostStatus | None:
        """Read its status; None (the last one stands) when it is busy, dead or being restarted."""
        if not self.alive():
            return None
        try:
            answer = await self.child.ask({"op": "status"}, within_s=within_s)
        except (TimeoutError, SimError):
            return None
        self.status = HostStatus(
            answer["devices"],
            answer["retired"],
            answer["crashed"],
            answer["pace"],
            answer["loop_delay_s"],
            answer.get("labels", {}),
        )
        for device, row in self.status.devices.items():
            self.last_seq[device] = max(self.last_seq.get(device, 0), int(row["last_seq"]))
        for device, seq in self.status.retired.items():
            self.last_seq[device] = max(self.last_seq.get(device, 0), int(seq))
        return self.status

    async def arm(self, point: str) -> None:
        """The next device here to reach ``point`` of an update kills the whole process (-9)."""
        self.armed = point
        self.kills += 1
        await self.child.ask({"op": "arm", "point": point}, within_s=10)

    async def disarm(self) -> None:
        self.armed = None
        self.kills -= 1
        await self.child.ask({"op": "arm", "point": None}, within_s=10)

    async def wait_exit(self, within_s: float) -> int | None:
        """The exit code once the process has exited (-9: an armed point was reached); None if it runs on."""
        return await self.child.wait(within_s)

    async def kill(self) -> None:
        self.kills += 1
        await self.child.kill()

    async def restart(self, within_s: float = 120.0) -> int:
        """A new process with the same devices on the same data folders; returns how many run."""
        if self.child.alive():
            raise SimError(f"agent process {self.name} still runs: kill it first")
        await self.child.kill()  # reaps it and stops reading its answers
        self.armed = None
        self.labels_before = self.labels_published
        self.status = HostStatus(retired=self.status.retired)
        self.child = self._new_child()
        await self.child.start()
        for device, spec in list(self.specs.items()):
            await self.child.ask({"op": "start", "device": device, **spec.__dict__}, within_s=30)
        return await self.wait_running(within_s)

    @property
    def labels_published(self) -> int:
        """Delayed labels this handle's processes published, over every life (as last read)."""
        return self.labels_before + int(self.status.labels.get("published", 0))

    def died_unexpectedly(self) -> bool:
        """Exited, and not by a kill -9 that a fault meant."""
        code = self.child.returncode
        return code is not None and not (code == -9 and self.kills)

    async def close(self) -> None:
        if self.child.alive():
            with contextlib.suppress(TimeoutError, SimError):
                await self.child.ask({"op": "stop_all"}, within_s=120)
            await self.refresh()
        await self.child.close(within_s=30)


async def gather_refresh(hosts: list[AgentHostProcess]) -> None:
    await asyncio.gather(*(host.refresh() for host in hosts))
