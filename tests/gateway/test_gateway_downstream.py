"""Downstream: desired state from the controller to devices' retained topics, bundles cached per site."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
import httpx
import pytest

from model_compiler.archive import pack
from simulators.netproxy import FaultyLink
from tests.controller.conftest import Controller
from tests.gateway.conftest import GatewayProcess
from tests.utils.broker import Mosquitto
from tests.utils.subscriber import FleetSubscriber
from tests.utils.waiting import wait_until

pytestmark = pytest.mark.slow


def _upload(controller: Controller, bundle: Path) -> dict[str, object]:
    with controller.client("operator") as client:
        response = client.post("/api/v1/bundles", content=pack(bundle).read_bytes())
        assert response.status_code == 201, response.text
        return response.json()


def _deploy(controller: Controller) -> None:
    with controller.client("operator") as client:
        assert client.post("/api/v1/sites", json={"id": "site-a", "name": "A"}).status_code == 201
        for device in ("press-1", "press-2"):
            body = {"id": device, "site_id": "site-a", "labels": {"line": "press"}}
            assert client.post("/api/v1/devices", json=body).status_code == 201
        group = client.post("/api/v1/groups", json={"name": "presses", "selector": {"line": "press"}}).json()
        body = {"group_id": group["id"], "model_id": "sensor-mlp", "version": "1.0.0"}
        assert client.post("/api/v1/deployments", json=body).status_code == 201


async def test_desired_state_is_published_retained_with_the_gateways_bundle_address(
    broker: Mosquitto, controller: Controller, bundles, gateway_factory
) -> None:  # type: ignore[no-untyped-def]
    uploaded = await asyncio.to_thread(_upload, controller, bundles["onnx-int8"])
    await asyncio.to_thread(_deploy, controller)
    gateway: GatewayProcess = await asyncio.to_thread(
        gateway_factory,
        {
            "broker": {"host": "127.0.0.1", "port": broker.port},
            "upstream": {"url": controller.url, "token": controller.tokens["gateway"], "desired_poll_s": 0.5},
        },
    )
    async with FleetSubscriber(broker.port, "fleet/site-a/+/desired") as sub:
        await wait_until(lambda: {"press-1", "press-2"} <= set(sub.desired), 30, "retained desired state")
    state = sub.desired["press-1"]
    assert state.model is not None and state.model.version == "1.0.0"
    assert state.model.bundle_url == f"{gateway.url}/bundles/{uploaded['sha256']}"
    assert state.model.fallback_url == f"{controller.url}/api/v1/bundles/{uploaded['sha256']}"
    # The relay warmed the cache: the bundle is there before any device asks.
    await wait_until(lambda: gateway.metric('edge_gateway_bundle_fetches_total{result="ok"}') == 1, 30)
    got = await asyncio.to_thread(httpx.get, state.model.bundle_url, timeout=10)
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == uploaded["sha256"]


async def test_fifty_devices_asking_at_once_cost_one_download_over_the_uplink(
    broker: Mosquitto, controller: Controller, bundles, gateway_factory
) -> None:  # type: ignore[no-untyped-def]
    uploaded = await asyncio.to_thread(_upload, controller, bundles["openvino-fp32"])  # not deployed
    sha, size = str(uploaded["sha256"]), int(uploaded["size"])  # type: ignore[call-overload]
    host, port = controller.url.removeprefix("http://").split(":")
    async with FaultyLink(host, int(port)) as uplink:
        uplink.set_latency(0.2)  # a slow uplink: the fifty requests overlap the one download
        gateway: GatewayProcess = await asyncio.to_thread(
            gateway_factory,
            {
                "broker": {"host": "127.0.0.1", "port": broker.port},
                "upstream": {
                    "url": f"http://127.0.0.1:{uplink.port}",
                    "token": controller.tokens["gateway"],
                    "desired_poll_s": 60,
                },
            },
        )
        before = uplink.bytes_down
        async with aiohttp.ClientSession() as session:

            async def fetch() -> bytes:
                async with session.get(f"{gateway.url}/bundles/{sha}") as response:
                    assert response.status == 200
                    return await response.read()

            bodies = await asyncio.gather(*(fetch() for _ in range(50)))
            headers = {"Range": "bytes=100-"}
            async with session.get(f"{gateway.url}/bundles/{sha}", headers=headers) as response:
                assert response.status == 206
                tail = await response.read()
        over_uplink = uplink.bytes_down - before
    assert all(hashlib.sha256(b).hexdigest() == sha for b in bodies)
    assert tail == bodies[0][100:], "an interrupted download resumes with a range request"
    assert size <= over_uplink < size * 1.5, (
        f"{over_uplink} bytes crossed the uplink for a {size}-byte bundle"
    )
    metrics = await asyncio.to_thread(gateway.metrics)
    assert metrics['edge_gateway_bundle_fetches_total{result="ok"}'] == 1
    assert metrics['edge_gateway_bundle_requests_total{result="ok"}'] == 51


async def test_unknown_or_malformed_bundle_names_get_a_clear_error(
    broker: Mosquitto, controller: Controller, gateway_factory
) -> None:  # type: ignore[no-untyped-def]
    gateway: GatewayProcess = await asyncio.to_thread(
        gateway_factory,
        {
            "broker": {"host": "127.0.0.1", "port": broker.port},
            "upstream": {"url": controller.url, "token": controller.tokens["gateway"]},
        },
    )
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        bad = await client.get("/bundles/not-a-sha")
        missing = await client.get(f"/bundles/{'0' * 64}")
    assert bad.status_code == 400 and "sha256" in bad.text
    assert missing.status_code == 503 and "404" in missing.text
