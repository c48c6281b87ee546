"""Desired state, down: poll the controller (with ETags), publish retained ``desired`` per device.

The bundle address a device gets is the gateway's own (``/bundles/{sha256}`` on the site
network), so a rollout to a thousand devices crosses the uplink once; the relay starts that
download as soon as it sees a new bundle. Every desired state is published again after each
new broker connection: a broker that lost its store lost the retained messages with it.
"""

from __future__ import annotations

import asyncio
import logging

from edge_gateway.bundles import BundleCache, BundleNotAvailable
from edge_gateway.controller_client import ControllerClient
from edge_gateway.exceptions import LinkError, UpstreamError
from edge_gateway.metrics import GatewayMetrics
from edge_gateway.mqtt_link import MqttLink
from fleet_protocol import DesiredState, desired_topic, encode

log = logging.getLogger(__name__)


class DesiredRelay:
    def __init__(
        self,
        *,
        site: str,
        client: ControllerClient,
        link: MqttLink,
        cache: BundleCache,
        public_url: str,
        poll_s: float,
        metrics: GatewayMetrics,
    ) -> None:
        self.site, self.client, self.link, self.cache = site, client, link, cache
        self.public_url, self.poll_s, self.metrics = public_url, poll_s, metrics
        self.states: dict[str, DesiredState] = {}
        self._etag: str | None = None
        self._published: dict[str, bytes] = {}
        self._generation = -1
        self._prefetch: dict[str, asyncio.Task[None]] = {}
        self.last_error: str | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
                self.last_error = None
            except UpstreamError as exc:
                self.last_error = str(exc)
                log.warning("%s; keeping the last desired state", exc)
            await asyncio.sleep(self.poll_s)

    async def poll_once(self) -> None:
        answer = await self.client.desired(self.site, self._etag)
        if answer is not None:
            self.states = {s.device_id: self._localised(s) for s in answer.states.states}
            self._etag = answer.etag
        await self._publish()

    def _localised(self, state: DesiredState) -> DesiredState:
        if state.model is None or not state.model.bundle_url:
            return state
        sha = state.model.bundle_url.rstrip("/").rsplit("/", 1)[-1]
        if sha not in self._prefetch:
            self._prefetch[sha] = asyncio.create_task(self._warm(sha))
        # The site cache first; the controller itself when the gateway cannot serve the bundle.
        upstream = state.model.bundle_url
        if upstream.startswith("/"):
            upstream = f"{self.client.base_url}{upstream}"
        model = state.model.model_copy(
            update={"bundle_url": f"{self.public_url}/bundles/{sha}", "fallback_url": upstream}
        )
        return state.model_copy(update={"model": model})

    async def _warm(self, sha: str) -> None:
        try:
            await self.cache.get(sha)
        except BundleNotAvailable as exc:
            log.warning("could not cache bundle %s yet: %s", sha[:12], exc)
            self._prefetch.pop(sha, None)  # the next poll tries again

    async def _publish(self) -> None:
        if not self.link.connected:
            return
        if self.link.generation != self._generation:
            self._published.clear()
            self._generation = self.link.generation
        for device, state in self.states.items():
            payload = encode(state)
            if self._published.get(device) == payload:
                continue
            try:
                await self.link.publish(desired_topic(self.site, device), payload, qos=1, retain=True)
            except LinkError as exc:
                log.warning("publishing desired state stopped: %s", exc)
                return
            self._published[device] = payload
            self.metrics.desired_published.inc()
