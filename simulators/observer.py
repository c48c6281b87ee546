"""The fleet's observer: a process of its own following every site's ``fleet/{site}/#``.

Why a process: on the simulator's loop, beside hundreds of agents, it fell behind, and a
verdict judged on what it had seen so far reported records lost that the controller had.
Here it has its own interpreter; each site is a persistent session (QoS 1), so what it has
not read yet waits at the broker. `sync` tells when it has read everything: it publishes a
marker to each broker and waits for it to come back. A broker queues a client's messages in
the order it accepted them, so the marker comes after every record a device had been
acknowledged for before the sync began.

Commands, one JSON object a line on stdin; each answer is a line on stdout with the same ``id``:

- ``{"op": "watch", "site", "port"}``: subscribe to a site; answers once subscribed.
- ``{"op": "stats"}``: records seen, devices online, online devices per model version.
- ``{"op": "models"}``: per device, the model and update its last reported state names.
- ``{"op": "sync", "timeout_s"}``: ``{"synced": true}`` once every site's marker came back.
- ``{"op": "view"}``: the whole view (`FleetView.to_wire`).

End of stdin or SIGTERM ends it; SIGINT is the runner's to handle (it closes stdin).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from edge_agent.exceptions import LinkError
from edge_agent.mqtt_link import LinkSettings, MqttLink
from fleet_protocol.pacing import Backoff
from fleet_protocol.tls import MqttTls
from simulators.fleet_view import FleetView
from simulators.json_lines import run_child, serve

log = logging.getLogger(__name__)


class SiteObserver:
    """One site's broker: ``fleet/{site}/#`` and this observer's marker topic, persistent session."""

    def __init__(self, site: str, port: int, view: FleetView, tls: dict[str, str] | None = None) -> None:
        self.view = view
        client_id = f"observer-{site}-{uuid.uuid4().hex[:6]}"
        self.topic = f"fleet/{site}/#"
        self.marker_topic = f"fleet-sim/observer/{client_id}/sync"
        context = MqttTls.model_validate(tls).context() if tls else None
        self.link = MqttLink(LinkSettings(host="127.0.0.1", port=port, client_id=client_id, tls=context))
        self.ready = asyncio.Event()
        self._markers: dict[str, asyncio.Future[None]] = {}

    async def run(self) -> None:
        backoff = Backoff(0.1, 1.0)
        await self.link.subscribe(self.topic, qos=1)
        await self.link.subscribe(self.marker_topic, qos=1)
        while True:
            try:
                async with self.link:
                    self.ready.set()
                    backoff.reset()
                    async for message in self.link.messages():
                        if message.topic == self.marker_topic:
                            self._marker_back(message.payload.decode())
                        else:
                            self.view.add(message.topic, message.payload)
            except LinkError as exc:
                log.debug("observer: %s", exc)
                await asyncio.sleep(backoff.next_delay())

    async def sync(self) -> None:
        """Return once a marker published now has come back: all that was queued before is read."""
        token = uuid.uuid4().hex
        back = self._markers[token] = asyncio.get_running_loop().create_future()
        try:
            while True:
                try:
                    await self.link.publish(self.marker_topic, token.encode(), qos=1)
                    break
                except LinkError:
                    await asyncio.sleep(0.2)  # the broker is restarting: try again
            await back
        finally:
            self._markers.pop(token, None)

    def _marker_back(self, token: str) -> None:
        back = self._markers.get(token)
        if back is not None and not back.done():
            back.set_result(None)


class Observer:
    def __init__(self) -> None:
        self.view = FleetView()
        self.sites: dict[str, SiteObserver] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def answer(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command.get("op")
        if op == "watch":
            site = SiteObserver(command["site"], int(command["port"]), self.view, command.get("tls"))
            self.sites[command["site"]] = site
            self.tasks.append(asyncio.create_task(site.run(), name=f"observe-{command['site']}"))
            async with asyncio.timeout(10):
                await site.ready.wait()
            return {"ok": True}
        if op == "stats":
            return self.view.stats()
        if op == "models":
            return {"models": self.view.models()}
        if op == "sync":
            try:
                async with asyncio.timeout(float(command.get("timeout_s", 30))):
                    await asyncio.gather(*(site.sync() for site in self.sites.values()))
            except TimeoutError:
                return {"synced": False}
            return {"synced": True}
        if op == "view":
            return {"view": self.view.to_wire()}
        return {"error": f"unknown op {op!r}"}


async def _serve() -> None:
    observer = Observer()
    try:
        await serve(observer.answer)
    finally:
        for task in observer.tasks:
            task.cancel()
        # Cancelling a site's task leaves its `async with link`: a clean disconnect, the session kept.
        await asyncio.gather(*observer.tasks, return_exceptions=True)


def main() -> None:
    run_child(_serve)


if __name__ == "__main__":
    main()
