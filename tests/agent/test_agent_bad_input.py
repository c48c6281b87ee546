"""Bad input gets a clear error or a counted rejection; the daemon keeps running where it can."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.exceptions import ConfigError, InvalidReading
from edge_agent.preprocess import Preprocessor
from edge_agent.sources.synthetic import FEATURE_NAMES, make_dataset
from edge_agent.state_store import JsonStore
from fleet_protocol import Health, Preprocessing
from tests.agent.factories import agent_config, settings, write_config
from tests.utils.broker import Mosquitto
from tests.utils.subscriber import FleetSubscriber
from tests.utils.waiting import wait_until


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "not_finite"),
        (float("inf"), "not_finite"),
        ("12.5V", "not_a_number"),
        (None, "not_a_number"),
        (True, "not_a_number"),
    ],
)
def test_preprocessor_rejects_values_that_are_not_finite_numbers(value: object, reason: str) -> None:
    pre = Preprocessor(Preprocessing(feature_names=["a", "b"]))
    with pytest.raises(InvalidReading) as info:
        pre.vector({"a": 1.0, "b": value})
    assert info.value.reason == reason
    assert "feature 'b'" in str(info.value)


def test_preprocessor_rejects_missing_features_and_wrong_lengths() -> None:
    pre = Preprocessor(Preprocessing(feature_names=["a", "b"]))
    with pytest.raises(InvalidReading, match="lacks feature 'b'"):
        pre.vector({"a": 1.0})
    with pytest.raises(InvalidReading, match="has 3 values, model needs 2"):
        pre.vector([1.0, 2.0, 3.0])


async def test_bad_readings_are_counted_and_the_stream_goes_on(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    x, y = make_dataset(100, seed=21)
    lines = []
    for i, (row, label) in enumerate(zip(x, y, strict=True)):
        reading: dict[str, object] = dict(zip(FEATURE_NAMES, (float(v) for v in row), strict=True))
        if i % 10 == 3:
            reading["f05"] = "NaN-ish"
        lines.append(json.dumps({"ts": 1000.0 + i, "label": int(label), **reading}))
    lines.insert(50, '{"ts": 5000, "f00": NaN}')  # Python's json reads NaN: rejected as not finite
    lines.insert(60, "this line is not json at all")
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    config = agent_config(
        tmp_path,
        port=broker.port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        source={"kind": "replay", "path": str(tmp_path / "r.jsonl")},
    )
    agent = Agent(settings(config))
    async with FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: len(sub.records) >= 90, 20, "valid readings delivered")
        await wait_until(lambda: any(e.kind == "input.rejected" for e in sub.events), 10, "rejection event")
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert len(sub.records) == 90
    assert agent.rejected == {"not_a_number": 10, "missing_feature": 2}
    assert agent.metrics.rejected.labels("not_a_number")._value.get() == 10
    event = next(e for e in sub.events if e.kind == "input.rejected")
    example = event.data.pop("example")
    assert event.data == {"not_a_number": 10, "missing_feature": 2}
    assert example["reason"] == "not_a_number" and "feature 'f05' is 'NaN-ish'" in example["detail"]
    assert sub.states["dev-1"].health is Health.OK, "a tenth refused is no reason to degrade"


def _rows_without_the_models_features(path: Path, n: int = 300) -> Path:
    """JSON lines from another sensor: keys the model does not read."""
    path.write_text(
        "".join(json.dumps({"ts": 1000.0 + i, "temp": 20.5, "rpm": 1200 + i}) + "\n" for i in range(n))
    )
    return path


async def test_most_readings_refused_degrades_health_with_the_reason_and_an_example(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    config = agent_config(
        tmp_path,
        port=broker.port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        source={"kind": "replay", "path": str(_rows_without_the_models_features(tmp_path / "r.jsonl"))},
    )
    agent = Agent(settings(config))
    async with FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(
            lambda: "dev-1" in sub.states and sub.states["dev-1"].health is Health.DEGRADED,
            20,
            "degraded health reported",
        )
        agent.stop()
        await asyncio.wait_for(task, 15)
    state = sub.states["dev-1"]
    assert state.reason is not None
    assert "300 of 300 readings refused" in state.reason and "missing_feature" in state.reason
    assert "lacks feature 'f00' (it has 'temp', 'rpm')" in state.reason, "which feature, which keys came"
    event = next(e for e in sub.events if e.kind == "input.rejected")
    assert event.data["missing_feature"] == 300
    assert (
        "lacks feature 'f00'" in event.data["example"]["detail"]
        and "'rpm'" in event.data["example"]["detail"]
    )
    warnings = [r for r in caplog.records if "input does not fit the model" in r.getMessage()]
    assert len(warnings) == 1, "logged, once per minute at most"


def test_check_config_reads_the_sources_first_rows_and_says_they_do_not_fit(
    tmp_path: Path, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    rows = _rows_without_the_models_features(tmp_path / "r.jsonl")
    config = write_config(
        tmp_path / "a.yaml",
        agent_config(
            tmp_path,
            port=1883,
            bundle=bundles["onnx-fp32"],
            public_key=public_key_file,
            source={"kind": "replay", "path": str(rows)},
        ),
    )
    result = _cli("check-config", "--config", str(config))
    assert result.returncode == 1
    assert "source: 20 of its first 20 rows do not fit model sensor-mlp@1.0.0" in result.stderr
    assert "lacks feature 'f00' (it has 'temp', 'rpm')" in result.stderr
    assert "the model reads f00, f01" in result.stderr


async def test_an_invalid_stored_desired_state_is_logged_and_reported(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    config = agent_config(tmp_path, port=broker.port, bundle=bundles["onnx-fp32"], public_key=public_key_file)
    store = JsonStore(Path(config["data_dir"]) / "desired.json", "desired_state")
    await store.save({"device_id": "dev-1", "revision": -3})
    agent = Agent(settings(config))
    async with FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: any(e.kind == "desired.invalid_stored" for e in sub.events), 10, "event")
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert agent.desired is None
    assert any("stored desired state is invalid" in r.getMessage() for r in caplog.records)
    event = next(e for e in sub.events if e.kind == "desired.invalid_stored")
    assert "revision" in event.message


async def test_records_lost_to_an_outbox_write_error_degrade_health_and_raise_an_event(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    config = agent_config(
        tmp_path,
        port=broker.port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        source={"kind": "synthetic", "rate_hz": 50, "seed": 2},
    )
    agent = Agent(settings(config))
    async with FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: len(sub.records) >= 10, 20, "records flowing")
        conn = agent.outbox._conn
        assert conn is not None
        await agent.outbox._run(conn.execute, "PRAGMA query_only = ON")  # SQLite now refuses writes
        await wait_until(lambda: any(e.kind == "outbox.write_failed" for e in sub.events), 10, "event")
        await wait_until(lambda: sub.states["dev-1"].health is Health.DEGRADED, 10, "degraded")
        assert not task.done(), "the agent goes on"
        agent.stop()
        await asyncio.wait_for(task, 15)
    lost = agent.outbox.stats.dropped_write_error
    assert lost > 0
    assert 0 < agent.metrics.evicted.labels("write_error")._value.get() <= lost, "counted in /metrics"
    state = sub.states["dev-1"]
    assert (
        state.reason is not None and "outbox write errors lost" in state.reason and "readonly" in state.reason
    )
    event = next(e for e in sub.events if e.kind == "outbox.write_failed")
    assert "readonly" in event.data["error"]


async def test_agent_without_a_valid_model_reports_failed_health_and_keeps_running(
    tmp_path: Path, broker: Mosquitto, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    config = agent_config(
        tmp_path, port=broker.port, bundle=tmp_path / "missing-bundle", public_key=public_key_file
    )
    agent = Agent(settings(config))
    async with FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: "dev-1" in sub.states, 10, "state published")
        await wait_until(
            lambda: any(e.kind == "model.load_failed" for e in sub.events), 10, "event published"
        )
        assert not task.done(), "the daemon keeps running"
        agent.stop()
        await asyncio.wait_for(task, 15)
    state = sub.states["dev-1"]
    assert state.health is Health.FAILED
    assert state.reason is not None and "missing-bundle does not exist" in state.reason


def test_check_config_explains_every_invalid_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {"device_id": "has/slash", "site": "s", "mqtt": {"port": "abc"}, "source": {"kind": "replay"}}
        )
    )
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "invalid device id 'has/slash'" in result.stderr
    assert "mqtt.port: Input should be a valid integer" in result.stderr
    assert "data_dir: Field required" in result.stderr


def test_check_config_refuses_yaml_that_does_not_parse(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("device_id: [unclosed\n")
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "is not valid YAML" in result.stderr


def test_check_config_reports_a_missing_model_bundle(tmp_path: Path, public_key_file) -> None:  # type: ignore[no-untyped-def]
    config = write_config(
        tmp_path / "a.yaml",
        agent_config(tmp_path, port=1883, bundle=tmp_path / "nope", public_key=public_key_file),
    )
    result = _cli("check-config", "--config", str(config))
    assert result.returncode == 3
    assert "model: model bundle" in result.stderr and "does not exist" in result.stderr


def test_check_config_accepts_a_good_config_and_names_the_model(
    tmp_path: Path, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    config = write_config(
        tmp_path / "a.yaml",
        agent_config(tmp_path, port=1883, bundle=bundles["onnx-int8"], public_key=public_key_file),
    )
    result = _cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "model sensor-mlp@1.0.0 (onnxruntime)" in result.stdout


def test_environment_overrides_the_config_file(
    tmp_path: Path, public_key_file, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    config = write_config(
        tmp_path / "a.yaml", agent_config(tmp_path, port=1883, bundle=tmp_path, public_key=public_key_file)
    )
    monkeypatch.setenv("EDGEFLEET_AGENT__MQTT__PORT", "18830")
    monkeypatch.setenv("EDGEFLEET_AGENT__DEVICE_ID", "dev-from-env")
    loaded = load_settings(config)
    assert loaded.mqtt.port == 18830
    assert loaded.device_id == "dev-from-env"
    assert loaded.mqtt.reconnect_min_s == 0.05, "values the environment does not name stay from the file"
    monkeypatch.setenv("EDGEFLEET_AGENT__MQTT__PORT", "not-a-port")
    with pytest.raises(ConfigError, match="mqtt.port"):
        load_settings(config)


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, public_key_file) -> None:  # type: ignore[no-untyped-def]
    raw = agent_config(tmp_path, port=1883, bundle=tmp_path, public_key=public_key_file)
    raw["model_dir"] = "bundles/current"
    loaded = load_settings(write_config(tmp_path / "a.yaml", raw))
    assert loaded.model_dir == tmp_path / "bundles" / "current"
