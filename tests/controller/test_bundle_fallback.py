"""A device whose site gateway cannot serve a bundle downloads it from the controller, with its token.

A real controller process serves the uploaded bundle at ``/api/v1/bundles/{sha256}``; a real agent
is told a gateway URL nothing listens on first and the controller's as the fallback, and installs it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt

from edge_agent.agent import Agent
from edge_agent.ota.slots import manifest_sha256
from fleet_protocol import DesiredState, ModelAssignment, desired_topic, encode
from model_compiler.archive import pack
from simulators.brokers import free_port
from simulators.model_factory import build_bundles
from tests.agent.factories import agent_config, settings
from tests.controller.conftest import Controller
from tests.utils.broker import Mosquitto
from tests.utils.subscriber import FleetSubscriber
from tests.utils.waiting import wait_until


async def test_an_agent_falls_back_to_the_controller_and_installs_the_bundle_it_serves(
    sqlite_controller: Controller,
    broker: Mosquitto,
    bundles,
    trained_mlp,
    signing_key,
    public_key_file,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    v2 = build_bundles(trained_mlp, tmp_path / "v2", signing_key, version="2.0.0")["onnx-fp32"]
    with sqlite_controller.client("operator") as client:
        stored = client.post("/api/v1/bundles", content=pack(v2).read_bytes())
    assert stored.status_code == 201, stored.text
    sha = stored.json()["sha256"]
    away = f"http://127.0.0.1:{free_port()}/bundles/{sha}"  # the site gateway's cache, not answering
    desired = DesiredState(
        device_id="dev-1",
        revision=2,
        model=ModelAssignment(
            model_id="sensor-mlp",
            version="2.0.0",
            manifest_sha256=manifest_sha256(v2),
            bundle_url=away,
            fallback_url=f"{sqlite_controller.url}/api/v1/bundles/{sha}",
        ),
    )
    config = agent_config(
        tmp_path,
        port=broker.port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        ota={"token": sqlite_controller.tokens["device"], "retry_min_s": 0.2, "retry_max_s": 0.5},
    )
    agent = Agent(settings(config))
    async with FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port) as mqtt:
                await mqtt.publish(desired_topic("site-a", "dev-1"), encode(desired), qos=1, retain=True)
            await wait_until(lambda: any(e.kind == "ota.promoted" for e in sub.events), 40, "promoted")
            await wait_until(lambda: sub.states["dev-1"].model_version == "2.0.0", 10, "reported")
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
    assert not any(e.kind in ("ota.refused", "ota.rolled_back") for e in sub.events)
    assert agent.model is not None and agent.model.manifest.version == "2.0.0"
