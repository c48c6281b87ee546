"""Model updates over the air on one device: real bundles, a real HTTP server, a real broker.

The agent downloads (resuming a cut download), verifies, smoke-tests, shadows and switches in
the running process; every bad bundle is refused or rolled back with a reason from the closed
list, and the old model never stops.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.agent import Agent
from edge_agent.model import load_model, output_problem
from edge_agent.ota.hooks import POINTS
from edge_agent.ota.slots import Slots, manifest_sha256
from fleet_protocol import (
    DesiredState,
    ModelAssignment,
    ModelReason,
    OtaState,
    RolloutDirective,
    desired_topic,
    encode,
)
from simulators.defects import build_defective_bundle
from simulators.model_factory import build_bundles
from tests.agent.factories import agent_config, settings, write_config
from tests.utils.broker import Mosquitto
from tests.utils.bundle_server import BundleServer
from tests.utils.subscriber import FleetSubscriber
from tests.utils.waiting import wait_until

pytestmark = pytest.mark.slow

RATE_HZ = 50.0


@pytest.fixture(scope="session")
def bundles_v2(tmp_path_factory: pytest.TempPathFactory, trained_mlp, signing_key) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """The same trained model, released again as 2.0.0: it agrees with 1.0.0 everywhere."""
    return build_bundles(trained_mlp, tmp_path_factory.mktemp("bundles-v2"), signing_key, version="2.0.0")


def _desired(sha_url: str, bundle: Path, version: str, revision: int, **rollout: object) -> DesiredState:
    directive = RolloutDirective(rollout_id="r1", **rollout) if rollout else None  # type: ignore[arg-type]
    return DesiredState(
        device_id="dev-1",
        revision=revision,
        model=ModelAssignment(
            model_id="sensor-mlp",
            version=version,
            manifest_sha256=manifest_sha256(bundle),
            bundle_url=sha_url,
            rollout=directive,
        ),
    )


async def _publish_desired(port: int, desired: DesiredState) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(desired_topic("site-a", "dev-1"), encode(desired), qos=1, retain=True)


def _config(tmp_path: Path, broker: Mosquitto, bundles, public_key_file, **ota: object) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return agent_config(
        tmp_path,
        port=broker.port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        source={"kind": "synthetic", "rate_hz": RATE_HZ, "seed": 5},
        ota={"retry_min_s": 0.05, "retry_max_s": 0.5, **ota},
    )


# solo: judged against one reading period / a latency ratio; run alone, not beside other tests.
@pytest.mark.solo
async def test_a_new_version_is_downloaded_resumed_shadowed_and_switched_live(
    tmp_path: Path, broker: Mosquitto, bundles, bundles_v2, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    agent = Agent(settings(_config(tmp_path, broker, bundles, public_key_file)))
    async with BundleServer() as server, FleetSubscriber(broker.port) as sub:
        sha = server.add(bundles_v2["onnx-fp32"])
        server.cut_after = 1000  # the first download breaks off: the next one resumes from there
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: len(sub.records) >= 20, 20, "records of 1.0.0")
        desired = _desired(
            server.url(sha), bundles_v2["onnx-fp32"], "2.0.0", 3, shadow_s=1.0, min_agreement=0.95
        )
        await _publish_desired(broker.port, desired)
        await wait_until(lambda: any(e.kind == "ota.promoted" for e in sub.events), 30, "promoted")
        await wait_until(
            lambda: any(r.model_version == "2.0.0" for r in sub.records[-5:]), 10, "2.0.0 records"
        )
        await wait_until(lambda: sub.states["dev-1"].model_version == "2.0.0", 10, "reported")
        agent.stop()
        await asyncio.wait_for(task, 15)
    kinds = [e.kind for e in sub.events if e.kind.startswith("ota.")]
    assert kinds == ["ota.downloading", "ota.verified", "ota.shadow", "ota.shadow", "ota.promoted"]
    assert [r for _, r in server.requests][:2] == [None, "bytes=1000-"], "the cut download resumed"
    # The second ota.shadow event closes the shadow period with its figures.
    shadow = [e for e in sub.events if e.kind == "ota.shadow"][-1]
    stats = shadow.data["shadow"]
    assert stats["agreement"] == 1.0 and stats["samples"] >= 20
    for side in ("champion", "challenger"):
        assert stats[side]["p95_latency_ms"] > 0 and stats[side]["peak_rss_mb"] > 0
    versions = [r.model_version for r in sorted(sub.records, key=lambda r: r.seq)]
    first_new = versions.index("2.0.0")
    assert set(versions[:first_new]) == {"1.0.0"} and set(versions[first_new:]) == {"2.0.0"}
    seqs = sorted(r.seq for r in sub.records)
    assert seqs == list(range(1, len(seqs) + 1)), "no reading lost across the switch"
    assert agent.swap_gap_s is not None and agent.swap_gap_s <= 1.5 / RATE_HZ, (
        f"inference paused {agent.swap_gap_s * 1000:.1f} ms at the switch, a reading comes every"
        f" {1000 / RATE_HZ:.0f} ms"
    )
    # Beside it, the gaps between batches before the switch: about one reading period each.
    assert agent.steady_gap_s is not None and 0.5 / RATE_HZ <= agent.steady_gap_s <= 1.5 / RATE_HZ
    state = sub.states["dev-1"]
    assert state.ota is not None and state.ota.state is OtaState.PROMOTED and state.model_reason is None
    # Restarted, it runs 2.0.0 from its slot; the previous slot is kept.
    again = Agent(settings(_config(tmp_path, broker, bundles, public_key_file)))
    assert again._load_model().manifest.version == "2.0.0"
    assert again.slots.previous() == bundles["onnx-fp32"], "1.0.0 (the provisioned bundle) is the way back"


# solo: judged against one reading period / a latency ratio; run alone, not beside other tests.
@pytest.mark.solo
@pytest.mark.parametrize(
    ("defect", "state", "reason"),
    [
        ("nan_outputs", OtaState.ROLLED_BACK, ModelReason.SMOKE_TEST_FAILED),
        ("slow_10x", OtaState.ROLLED_BACK, ModelReason.SHADOW_GATE_FAILED),
        ("disagrees", OtaState.ROLLED_BACK, ModelReason.SHADOW_GATE_FAILED),
        ("tampered_signature", OtaState.REFUSED, ModelReason.SIGNATURE_INVALID),
    ],
)
async def test_a_defective_version_is_stopped_on_the_device_and_the_old_model_runs_on(
    tmp_path: Path,
    broker: Mosquitto,
    bundles,
    trained_mlp,
    signing_key,
    public_key_file,
    defect,
    state,
    reason,
) -> None:  # type: ignore[no-untyped-def]
    bad = await asyncio.to_thread(
        build_defective_bundle, trained_mlp, defect, tmp_path / "bad", signing_key, version="2.0.0"
    )
    agent = Agent(settings(_config(tmp_path, broker, bundles, public_key_file)))
    async with BundleServer() as server, FleetSubscriber(broker.port) as sub:
        sha = server.add(bad)
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: len(sub.records) >= 10, 20, "records of 1.0.0")
        desired = _desired(
            server.url(sha), bad, "2.0.0", 4, shadow_s=1.0, min_agreement=0.9, max_latency_ratio=3.0
        )
        await _publish_desired(broker.port, desired)
        ended = ("ota.rolled_back", "ota.refused", "ota.promoted")
        await wait_until(lambda: any(e.kind in ended for e in sub.events), 30, "an outcome")
        await wait_until(
            lambda: sub.states["dev-1"].model_reason is not None,
            10,
            f"reported ({[e.kind for e in sub.events]})",
        )
        count = len(sub.records)
        await wait_until(lambda: len(sub.records) > count + 10, 10, "inference goes on")
        agent.stop()
        await asyncio.wait_for(task, 15)
    outcome = next(e for e in sub.events if e.kind in ended)
    assert outcome.kind == f"ota.{state.value}"
    assert outcome.data["reason"] == reason.value and outcome.data["detail"]
    reported = sub.states["dev-1"]
    assert reported.model_version == "1.0.0" and reported.model_reason is reason
    assert {r.model_version for r in sub.records} == {"1.0.0"}, "no record ever came from the bad model"
    assert agent.metrics.ota_updates.labels(state.value)._value.get() == 1


async def test_a_bundle_for_a_runtime_the_device_lacks_or_another_manifest_is_refused(
    tmp_path: Path, broker: Mosquitto, bundles, bundles_v2, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    config = _config(tmp_path, broker, bundles, public_key_file, runtimes=["onnxruntime"])
    agent = Agent(settings(config))
    async with BundleServer() as server, FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: "dev-1" in sub.states, 20, "online")
        openvino = bundles_v2["openvino-fp32"]
        await _publish_desired(broker.port, _desired(server.url(server.add(openvino)), openvino, "2.0.0", 5))
        await wait_until(lambda: any(e.kind == "ota.refused" for e in sub.events), 30, "refused")
        # A bundle whose manifest is not the one the desired state names.
        onnx = bundles_v2["onnx-fp32"]
        wrong = _desired(server.url(server.add(onnx)), bundles_v2["onnx-int8"], "2.0.0", 6)
        await _publish_desired(broker.port, wrong)
        await wait_until(lambda: sum(e.kind == "ota.refused" for e in sub.events) == 2, 30, "refused again")
        agent.stop()
        await asyncio.wait_for(task, 15)
    reasons = [e.data["reason"] for e in sub.events if e.kind == "ota.refused"]
    assert reasons == [ModelReason.RUNTIME_UNSUPPORTED.value, ModelReason.MANIFEST_MISMATCH.value]
    assert not list(agent.slots.root.glob("*.partial")), "nothing refused stays on disk half unpacked"


def _run_agent(config_path: Path, crash_at: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ}
    env.pop("EDGEFLEET_AGENT_CRASH_AT", None)
    if crash_at:
        env["EDGEFLEET_AGENT_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("point", POINTS)
async def test_kill_9_at_each_point_of_an_update_leaves_a_runnable_model_and_the_update_completes(
    tmp_path: Path, broker: Mosquitto, bundles, bundles_v2, public_key_file, point: str
) -> None:  # type: ignore[no-untyped-def]
    provisioned = tmp_path / "provisioned"
    shutil.copytree(bundles["onnx-fp32"], provisioned)
    config = _config(tmp_path, broker, {"onnx-fp32": provisioned}, public_key_file)
    path = write_config(tmp_path / "agent.yaml", config)
    async with BundleServer() as server, FleetSubscriber(broker.port) as sub:
        bundle = bundles_v2["onnx-fp32"]
        desired = _desired(server.url(server.add(bundle)), bundle, "2.0.0", 9, shadow_s=0.5)
        await _publish_desired(broker.port, desired)
        first = await asyncio.to_thread(_run_agent, path, point)
        code = await asyncio.to_thread(first.wait, 60)
        assert code == -9, (
            f"killed at {point}: {first.stderr.read().decode()[-2000:] if first.stderr else ''}"
        )
        second = await asyncio.to_thread(_run_agent, path, None)
        try:
            await wait_until(
                lambda: "dev-1" in sub.states and sub.states["dev-1"].model_version == "2.0.0", 60, "on 2.0.0"
            )
            count = len(sub.records)
            await wait_until(lambda: len(sub.records) > count + 10, 20, "inferring")
        finally:
            second.terminate()
            await asyncio.to_thread(second.wait, 20)
    assert sub.records[-1].model_version == "2.0.0"
    assert sub.states["dev-1"].ota is not None and sub.states["dev-1"].ota.state is OtaState.PROMOTED


KILLS = 12


async def test_kill_9_at_random_instants_of_updates_always_leaves_a_runnable_model(
    tmp_path: Path, broker: Mosquitto, bundles, bundles_v2, public_key_file, signing_key
) -> None:  # type: ignore[no-untyped-def]
    """Not at the hook points: SIGKILL at seeded random instants after each start of the same
    device, while updates go back and forth between 1.0.0 and 2.0.0 (a slow download, unpacking,
    verification, a shadow period, the switch). After every kill, the bundle the agent would run at
    its next start is whole, verified and infers; no kill makes an update roll back or be refused;
    an uninterrupted run then finishes the last update."""
    provisioned = tmp_path / "provisioned"
    shutil.copytree(bundles["onnx-fp32"], provisioned)
    config = _config(tmp_path, broker, {"onnx-fp32": provisioned}, public_key_file)
    path = write_config(tmp_path / "agent.yaml", config)
    data_dir = Path(config["data_dir"])
    slots = Slots(data_dir / "models", provisioned)
    rng = random.Random(20261201)
    # About a second to start (more on a loaded machine), 1.5 s of download (resumed across kills),
    # a 1 s shadow (started over after a kill): kills 0.8-4 s after the start land in every part.
    delays = [rng.uniform(0.8, 4.0) for _ in range(KILLS)]
    landed: list[str] = []
    async with BundleServer() as server, FleetSubscriber(broker.port) as sub:
        server.seconds_per_download = 1.5
        releases = [(bundles_v2["onnx-fp32"], "2.0.0"), (bundles["onnx-fp32"], "1.0.0")]
        urls = [server.url(server.add(bundle)) for bundle, _ in releases]
        updates = 0

        async def next_update() -> tuple[Path, str]:
            nonlocal updates
            bundle, version = releases[updates % 2]
            desired = _desired(urls[updates % 2], bundle, version, 10 + updates, shadow_s=1.0)
            await _publish_desired(broker.port, desired)
            updates += 1
            return bundle, version

        target, version = await next_update()
        for delay in delays:
            process = await asyncio.to_thread(_run_agent, path, None)
            await asyncio.sleep(delay)
            process.kill()
            code = await asyncio.to_thread(process.wait, 20)
            assert code == -9, f"the agent ended by itself: {process.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
            landed.append(f"{version}: {_where_the_update_stood(data_dir, slots)}")
            _assert_runnable(slots, signing_key.public_key())
            if slots.active() == slots.slot(manifest_sha256(target)):
                target, version = await next_update()  # this one is done: the next kills cut another
        final = await asyncio.to_thread(_run_agent, path, None)
        try:
            on_target = lambda: "dev-1" in sub.states and sub.states["dev-1"].model_version == version  # noqa: E731
            await wait_until(on_target, 60, f"on {version}")
            count = len(sub.records)
            await wait_until(lambda: len(sub.records) > count + 10, 20, "inferring")
        finally:
            final.terminate()
            await asyncio.to_thread(final.wait, 20)
    print(f"{updates} updates; kills landed at:", *landed, sep="\n  ")
    assert updates >= 2, f"the kills cut only {updates} update: {landed}"
    assert sub.records[-1].model_version == version
    assert sub.states["dev-1"].ota is not None and sub.states["dev-1"].ota.state is OtaState.PROMOTED
    assert not [e for e in sub.events if e.kind in ("ota.rolled_back", "ota.refused")]
    assert slots.active() == slots.slot(manifest_sha256(target))
    assert slots.previous() is not None, "the previous model is kept until the next update"
    under_way = [where for where in landed if "journal done" not in where]
    assert len(under_way) >= 3, f"too few kills landed while an update was under way: {landed}"
    leftovers = sorted(p.name for p in slots.root.iterdir() if p.name.endswith((".partial", ".part", ".tar")))
    assert not leftovers, f"the finished update left {leftovers} on disk"


def _where_the_update_stood(data_dir: Path, slots: Slots) -> str:
    journal = data_dir / "ota.json"
    phase = json.loads(journal.read_text())["data"]["phase"] if journal.exists() else "none"
    parts = (
        {p.name.split(".", 1)[1]: p.stat().st_size for p in slots.root.glob("*.*")}
        if slots.root.exists()
        else {}
    )
    return f"journal {phase}, active {slots.active().name[:8]}, files {parts}"


def _assert_runnable(slots: Slots, key: Ed25519PublicKey) -> None:
    """What the next start loads first (`Slots.candidates`) verifies, loads and infers."""
    active = slots.active()
    model = load_model(active, [key], allow_retired=True)
    try:
        mean = model.manifest.preprocessing.mean or [0.0] * len(model.preprocessor.feature_names)
        batch = model.preprocessor.scale(np.asarray([mean], dtype=np.float32))
        assert output_problem(model, model.predict(batch).outputs, 1) is None, active
    finally:
        model.close()


@pytest.mark.parametrize(
    ("breakage", "reason", "detail"),
    [
        # What a native runtime failure looks like from Python (none can be caused on demand here).
        ("raise", ModelReason.RUNTIME_ERROR, "out of memory"),
        ("nan", ModelReason.SMOKE_TEST_FAILED, "non-finite outputs"),
        ("narrow", ModelReason.SMOKE_TEST_FAILED, "gave outputs of shape"),
    ],
)
async def test_a_promoted_model_that_fails_while_running_is_rolled_back_to_the_previous_slot(
    tmp_path: Path,
    broker: Mosquitto,
    bundles,
    bundles_v2,
    public_key_file,
    breakage: str,
    reason: ModelReason,
    detail: str,
) -> None:  # type: ignore[no-untyped-def]
    """It passed its smoke test; then, on live inputs, it raises, or goes wrong without raising."""
    agent = Agent(settings(_config(tmp_path, broker, bundles, public_key_file)))
    async with BundleServer() as server, FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        v2 = bundles_v2["onnx-fp32"]
        await _publish_desired(broker.port, _desired(server.url(server.add(v2)), v2, "2.0.0", 3))
        await wait_until(lambda: any(e.kind == "ota.promoted" for e in sub.events), 30, "promoted")
        assert agent.model is not None and agent.model.manifest.version == "2.0.0"
        infer = agent.model.runtime.infer

        def broken(batch):  # type: ignore[no-untyped-def]
            if breakage == "raise":
                raise RuntimeError("ORT: out of memory")
            return infer(batch) * np.nan if breakage == "nan" else infer(batch)[:, :2]

        agent.model.runtime.infer = broken  # type: ignore[method-assign]
        await wait_until(lambda: any(e.kind == "ota.rolled_back" for e in sub.events), 20, "rolled back")
        await wait_until(lambda: sub.records[-1].model_version == "1.0.0", 20, "1.0.0 records again")
        agent.stop()
        await asyncio.wait_for(task, 15)
    event = next(e for e in sub.events if e.kind == "ota.rolled_back")
    assert event.data["reason"] == reason.value and detail in event.data["detail"]
    assert agent.rejected["runtime_error"] > 0, "the readings of the failed batches are counted"
    assert agent.slots.active() == bundles["onnx-fp32"]
    for r in sub.records:  # no record carries outputs that mean nothing
        assert all(math.isfinite(v) for v in r.outputs), r


async def test_an_update_is_cancelled_when_the_desired_state_goes_back_to_the_running_version(
    tmp_path: Path, broker: Mosquitto, bundles, bundles_v2, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    """A rollout aborted while a device shadows the new version: the device stops there, says so."""
    agent = Agent(settings(_config(tmp_path, broker, bundles, public_key_file)))
    async with BundleServer() as server, FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: len(sub.records) >= 10, 20, "records of 1.0.0")
        v2 = bundles_v2["onnx-fp32"]
        await _publish_desired(broker.port, _desired(server.url(server.add(v2)), v2, "2.0.0", 3, shadow_s=60))
        await wait_until(lambda: any(e.kind == "ota.shadow" for e in sub.events), 30, "shadowing 2.0.0")
        v1 = bundles["onnx-fp32"]
        await _publish_desired(broker.port, _desired(server.url(server.add(v1)), v1, "1.0.0", 4))
        await wait_until(lambda: any(e.kind == "ota.cancelled" for e in sub.events), 10, "cancelled")
        await wait_until(lambda: sub.states["dev-1"].model_reason is None, 10, "on its desired model")
        # The stopped shadow is not reported as under way, neither now nor after a restart.
        await wait_until(lambda: sub.states["dev-1"].ota.state == OtaState.IDLE, 10, "idle after the cancel")
        assert agent.updater is not None and not agent.updater.busy and agent.updater.challenger is None
        agent.stop()
        await asyncio.wait_for(task, 15)
        assert (await agent.updater.journal.load())["phase"] == "done"
    assert not any(e.kind == "ota.promoted" for e in sub.events)
    assert {r.model_version for r in sub.records} == {"1.0.0"}


def test_the_steady_gap_is_the_longest_of_the_last_five_to_ten_seconds() -> None:
    from edge_agent.agent import _RecentMax

    gaps = _RecentMax(5.0)
    assert gaps.value() is None
    gaps.add(1.0, 0.30)
    gaps.add(2.0, 0.10)
    assert gaps.value() == 0.30
    gaps.add(7.0, 0.12)  # a new window: the previous one still counts
    assert gaps.value() == 0.30
    gaps.add(12.5, 0.11)  # two windows on: the 0.30 is forgotten
    assert gaps.value() == 0.12
    gaps.add(40.0, 0.09)  # after a silence, only what came since
    assert gaps.value() == 0.09
