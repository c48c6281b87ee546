"""Issue #13 on one device: signing keys rotate, and signed manifests withdraw versions.

The real agent, a real broker, real bundles of a trained model served over HTTP, as in
test_agent_ota.py. Releases are the same model under other versions, written and signed the way
``model-compiler build``/``sign`` write them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent import Agent
from edge_agent.ota.slots import manifest_sha256
from fleet_protocol import (
    MANIFEST_FILE,
    BundleManifest,
    DesiredState,
    Health,
    ModelAssignment,
    ModelReason,
    desired_topic,
    encode,
)
from fleet_protocol.signing import generate_private_key, key_id, public_key_pem
from model_compiler.bundle import write_bundle
from tests.agent.factories import agent_config, settings
from tests.utils.broker import Mosquitto
from tests.utils.bundle_server import BundleServer
from tests.utils.subscriber import FleetSubscriber
from tests.utils.waiting import wait_until

pytestmark = pytest.mark.slow


def _release(source: Path, out: Path, key: Ed25519PrivateKey, **changes: Any) -> Path:
    """``source``'s model files under a new manifest (``changes``), signed by ``key``."""
    manifest = BundleManifest.model_validate_json((source / MANIFEST_FILE).read_bytes())
    fields = manifest.model_dump(exclude={"files", "schema_version"}) | {"created_at": 1.0, **changes}
    write_bundle(out, {name: source / name for name in manifest.files}, key, **fields)
    return out


def _desired(url: str, bundle: Path, version: str, revision: int) -> DesiredState:
    return DesiredState(
        device_id="dev-1",
        revision=revision,
        model=ModelAssignment(
            model_id="sensor-mlp", version=version, manifest_sha256=manifest_sha256(bundle), bundle_url=url
        ),
    )


async def _publish(port: int, desired: DesiredState) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(desired_topic("site-a", "dev-1"), encode(desired), qos=1, retain=True)


def _config(tmp_path: Path, broker: Mosquitto, bundle: Path, public_key_file: Path) -> dict[str, Any]:
    return agent_config(
        tmp_path,
        port=broker.port,
        bundle=bundle,
        public_key=public_key_file,
        source={"kind": "synthetic", "rate_hz": 50.0, "seed": 5},
        ota={"retry_min_s": 0.05, "retry_max_s": 0.5},
    )


def _outcomes(sub: FleetSubscriber) -> list[tuple[str, str, str | None]]:
    ended = ("ota.promoted", "ota.refused", "ota.rolled_back")
    return [(e.kind, e.data["version"], e.data.get("reason")) for e in sub.events if e.kind in ended]


async def test_an_update_signed_by_a_retired_key_is_refused_after_the_retirement_and_the_new_key_installs(
    tmp_path: Path, broker: Mosquitto, bundles, signing_key, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    old_id = key_id(signing_key.public_key())
    new_key = generate_private_key()
    new_pub = tmp_path / "fleet-2.pub"
    new_pub.write_bytes(public_key_pem(new_key.public_key()))
    v1 = bundles["onnx-fp32"]  # provisioned, signed by the old key
    v2_old = _release(v1, tmp_path / "v2-old", signing_key, version="2.0.0")
    v3_old = _release(v1, tmp_path / "v3-old", signing_key, version="3.0.0")
    v3_new = _release(v1, tmp_path / "v3-new", new_key, version="3.0.0")
    # The same release signed again with the new key: the same manifest, only the key differs.
    assert manifest_sha256(v3_old) == manifest_sha256(v3_new)
    config = _config(tmp_path, broker, v1, public_key_file)

    # Step 1 of a rotation: devices trust the new key beside the old one, whose retirement is set
    # ahead. Until then a bundle signed by the old key installs.
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    old_entry = {"path": str(public_key_file), "retired_at": tomorrow.isoformat()}
    config["trusted_keys"] = [old_entry, str(new_pub)]
    agent = Agent(settings(config))
    async with BundleServer() as server, FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: len(sub.records) >= 5, 20, "records of 1.0.0")
        await _publish(broker.port, _desired(server.url(server.add(v2_old)), v2_old, "2.0.0", 3))
        await wait_until(lambda: _outcomes(sub), 30, "an outcome for 2.0.0")
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert _outcomes(sub) == [("ota.promoted", "2.0.0", None)]
    assert not any(e.kind == "model.signer_retired" for e in sub.events)

    # The retirement has passed (the device clock). 2.0.0, installed before it, runs on and is
    # reported; a new bundle signed by the old key is refused; the new key's installs.
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    config["trusted_keys"][0]["retired_at"] = an_hour_ago.isoformat()
    agent = Agent(settings(config))
    async with BundleServer() as server, FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: any(e.kind == "model.signer_retired" for e in sub.events), 20, "reported")
        await wait_until(lambda: sub.states.get("dev-1") is not None, 10, "a state")
        await wait_until(lambda: sub.states["dev-1"].health is Health.DEGRADED, 10, "degraded")
        state = sub.states["dev-1"]
        assert state.model_version == "2.0.0", "a device never stops its installed model for a rotation"
        assert f"signed by key {old_id}, retired at {an_hour_ago.isoformat()}" in (state.reason or "")
        await wait_until(lambda: any(r.model_version == "2.0.0" for r in sub.records), 20, "2.0.0 infers")

        await _publish(broker.port, _desired(server.url(server.add(v3_old)), v3_old, "3.0.0", 4))
        await wait_until(lambda: _outcomes(sub), 30, "an outcome for 3.0.0 signed by the old key")
        refused = next(e for e in sub.events if e.kind == "ota.refused")
        assert refused.data["reason"] == ModelReason.SIGNATURE_INVALID.value
        assert f"signed by key {old_id}, retired at {an_hour_ago.isoformat()}" in refused.data["detail"]
        assert not any(e.kind == "ota.verified" for e in sub.events), "never loaded"
        await wait_until(
            lambda: sub.states["dev-1"].model_reason is ModelReason.SIGNATURE_INVALID, 10, "reported"
        )

        await _publish(broker.port, _desired(server.url(server.add(v3_new)), v3_new, "3.0.0", 5))
        await wait_until(lambda: len(_outcomes(sub)) == 2, 30, "an outcome for 3.0.0 signed by the new key")
        await wait_until(lambda: sub.states["dev-1"].model_version == "3.0.0", 10, "on 3.0.0")
        await wait_until(lambda: sub.states["dev-1"].health is Health.OK, 10, "no longer degraded")
        await wait_until(lambda: sub.records[-1].model_version == "3.0.0", 20, "3.0.0 infers")
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert _outcomes(sub) == [
        ("ota.refused", "3.0.0", ModelReason.SIGNATURE_INVALID.value),
        ("ota.promoted", "3.0.0", None),
    ]
    state = sub.states["dev-1"]
    assert state.model_reason is None and state.reason is None
    assert [e.kind for e in sub.events].count("model.signer_retired") == 1


async def test_a_version_withdrawn_by_an_installed_manifest_is_refused_but_a_rollback_to_it_stays_allowed(
    tmp_path: Path, broker: Mosquitto, bundles, signing_key, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    v1 = bundles["onnx-fp32"]
    v2 = _release(v1, tmp_path / "v2", signing_key, version="2.0.0")
    v3 = _release(v1, tmp_path / "v3", signing_key, version="3.0.0", withdrawn_versions=["1.0.0", "2.0.0"])
    config = _config(tmp_path, broker, v1, public_key_file)
    agent = Agent(settings(config))
    async with BundleServer() as server, FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: len(sub.records) >= 5, 20, "records of 1.0.0")
        await _publish(broker.port, _desired(server.url(server.add(v3)), v3, "3.0.0", 3))
        await wait_until(lambda: _outcomes(sub), 30, "3.0.0 installed")
        assert _outcomes(sub) == [("ota.promoted", "3.0.0", None)]
        assert agent.updater is not None
        assert agent.updater.withdrawn_by("sensor-mlp", "2.0.0") == "sensor-mlp@3.0.0"
        await wait_until(lambda: any(r.model_version == "3.0.0" for r in sub.records), 20, "records of 3.0.0")

        # 3.0.0 fails while running: the way back to the previous slot is local and stays open,
        # though 3.0.0's manifest withdrew 1.0.0.
        assert agent.model is not None

        def broken(batch):  # type: ignore[no-untyped-def]
            raise RuntimeError("ORT: out of memory")

        agent.model.runtime.infer = broken  # type: ignore[method-assign]
        await wait_until(lambda: len(_outcomes(sub)) == 2, 20, "rolled back")
        await wait_until(lambda: sub.records[-1].model_version == "1.0.0", 20, "1.0.0 records again")

        # A desired state naming a withdrawn version: refused at once, nothing fetched.
        v2_sha = server.add(v2)
        await _publish(broker.port, _desired(server.url(v2_sha), v2, "2.0.0", 4))
        await wait_until(lambda: len(_outcomes(sub)) == 3, 20, "2.0.0 refused")
        assert not any(sha == v2_sha for sha, _ in server.requests), "a withdrawn version is not downloaded"
        await wait_until(lambda: sub.states["dev-1"].model_reason is ModelReason.WITHDRAWN, 10, "reported")
        refused = [e for e in sub.events if e.kind == "ota.refused"][-1]
        assert "2.0.0 is withdrawn by the signed manifest of sensor-mlp@3.0.0" in refused.data["detail"]

        # The same bundle under another name in the desired state: the signed manifest says 2.0.0.
        await _publish(broker.port, _desired(server.url(v2_sha), v2, "2.0.1", 5))
        await wait_until(lambda: len(_outcomes(sub)) == 4, 30, "2.0.0 named 2.0.1 refused")
        refused = [e for e in sub.events if e.kind == "ota.refused"][-1]
        assert "sensor-mlp@2.0.0 is withdrawn" in refused.data["detail"]

        # The desired state naming the version that runs (1.0.0, withdrawn) asks for nothing.
        await _publish(broker.port, _desired(server.url(server.add(v1)), v1, "1.0.0", 6))
        await wait_until(lambda: sub.states["dev-1"].desired_revision == 6, 10, "revision 6 applied")
        await wait_until(lambda: sub.states["dev-1"].model_reason is None, 10, "on its desired model")
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert _outcomes(sub) == [
        ("ota.promoted", "3.0.0", None),
        ("ota.rolled_back", "3.0.0", ModelReason.RUNTIME_ERROR.value),
        ("ota.refused", "2.0.0", ModelReason.WITHDRAWN.value),
        ("ota.refused", "2.0.1", ModelReason.WITHDRAWN.value),
    ]
    assert {r.model_version for r in sub.records} == {"1.0.0", "3.0.0"}
    # Remembered in the state dir: a restarted agent refuses them as well.
    again = Agent(settings(config))
    assert again.updater is not None
    await again.updater.resume()
    assert again.updater.withdrawn_by("sensor-mlp", "1.0.0") == "sensor-mlp@3.0.0"
    assert again.updater.withdrawn_by("sensor-mlp", "2.0.0") == "sensor-mlp@3.0.0"
    assert (Path(config["data_dir"]) / "withdrawn.json").is_file()
