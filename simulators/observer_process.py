"""The runner's handle on the observer process (`simulators.observer`): start, ask, stop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from simulators.child_process import JsonLineChild
from simulators.fleet_view import FleetView


class ObserverProcess(JsonLineChild):
    def __init__(self, log_path: Path) -> None:
        super().__init__("simulators.observer", log_path)

    async def watch(self, site: str, port: int, tls: dict[str, str] | None = None) -> None:
        """Subscribe to a site's tree; returns once subscribed, so nothing after this is missed."""
        await self.ask({"op": "watch", "site": site, "port": port, "tls": tls}, within_s=20)

    async def stats(self, within_s: float = 2.0) -> dict[str, Any] | None:
        """Records seen, devices online, model versions; None if the observer is too busy to say."""
        try:
            return await self.ask({"op": "stats"}, within_s=within_s)
        except TimeoutError:
            return None

    async def models(self, within_s: float = 5.0) -> dict[str, dict[str, Any]]:
        """Per device, what its last reported state says of its model and its update (small, cheap)."""
        answer = await self.ask({"op": "models"}, within_s=within_s)
        return dict(answer["models"])

    async def sync(self, within_s: float) -> bool:
        """True once the observer has read everything the brokers accepted before this call."""
        try:
            answer = await self.ask({"op": "sync", "timeout_s": within_s}, within_s=within_s + 10)
        except TimeoutError:
            return False
        return bool(answer.get("synced"))

    async def view(self) -> FleetView:
        answer = await self.ask({"op": "view"}, within_s=120)
        return await asyncio.to_thread(FleetView.from_wire, answer["view"])
