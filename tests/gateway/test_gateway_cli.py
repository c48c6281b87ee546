"""`edge-gateway` as an operator meets it: help, check-config, and the broker it manages itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
import yaml

from tests.gateway.conftest import GatewayProcess
from tests.gateway.factories import telemetry
from tests.utils.broker import free_port


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _config(tmp_path: Path, **values: object) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"gateway_id": "gw-a", "site": "site-a", "data_dir": "data", **values}))
    return path


def test_help_explains_the_commands() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    assert (
        "run" in result.stdout and "check-config" in result.stdout and "EDGEFLEET_GATEWAY__" in result.stdout
    )
    run = _cli("run", "--help")
    assert run.returncode == 0 and "Mosquitto" in run.stdout


def test_check_config_accepts_a_good_config(tmp_path: Path, public_key_file: Path) -> None:
    path = _config(tmp_path, trusted_keys=[str(public_key_file)], broker={"host": "10.0.0.2"})
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "ok: gateway gw-a of site site-a, broker 10.0.0.2:1883" in result.stdout


def test_check_config_names_each_invalid_field(tmp_path: Path) -> None:
    path = _config(
        tmp_path, upstream={"url": "http://cloud:8000"}, device_classes=[{"name": "x", "sample_rate": 2}]
    )
    result = _cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "upstream.token is required" in result.stderr
    assert "device_classes.0.sample_rate" in result.stderr


def test_check_config_rejects_broken_yaml_and_unreadable_keys(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("gateway_id: [unclosed")
    result = _cli("check-config", "--config", str(broken))
    assert result.returncode == 2 and "is not valid YAML" in result.stderr
    key = tmp_path / "not-a-key.pem"
    key.write_text("hello")
    result = _cli("check-config", "--config", str(_config(tmp_path, trusted_keys=[str(key)])))
    assert (
        result.returncode == 1 and "trusted_keys" in result.stderr and "not a PEM public key" in result.stderr
    )


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = _config(tmp_path, broker={"host": "10.0.0.2"})
    result = _cli("check-config", "--config", str(path), env={"EDGEFLEET_GATEWAY__BROKER__PORT": "8883"})
    assert result.returncode == 0 and "10.0.0.2:8883" in result.stdout


def _mosquitto_pid(config: Path) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(config).encode() in cmdline:
                return int(entry.name)
    return None


def _publish(port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def _wait(predicate, within: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.mark.slow
def test_gateway_runs_and_supervises_its_own_broker(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    gateway: GatewayProcess = gateway_factory({"broker": {"listen": "127.0.0.1", "port": port}})
    broker_config = Path(gateway.config["data_dir"]) / "broker" / "mosquitto.conf"
    assert "max_queued_messages 0" in broker_config.read_text()
    _publish(port, "fleet/site-a/dev-1/telemetry", telemetry("dev-1", range(1, 6)))
    _wait(lambda: gateway.metric("edge_gateway_records_total") == 5)

    pid = _mosquitto_pid(broker_config)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: gateway.metric("edge_gateway_broker_restarts_total") >= 1)
    gateway.wait_healthy()
    _publish(port, "fleet/site-a/dev-1/telemetry", telemetry("dev-1", range(6, 9)))
    _wait(lambda: gateway.metric("edge_gateway_records_total") == 8)

    health = httpx.get(f"{gateway.url}/healthz").json()
    assert health["mqtt_connected"] is True and health["store_ok"] is True
    assert gateway.stop() == 0
    _wait(lambda: _mosquitto_pid(broker_config) is None, 10)


def test_the_example_config_is_valid() -> None:
    from edge_gateway.config import load_settings

    example = Path(__file__).resolve().parents[2] / "fleet_configs" / "gateway.example.yaml"
    settings = load_settings(example)
    assert settings.site == "plant-berlin" and settings.broker.host is None
    assert [c.name for c in settings.device_classes] == ["presses", "everything-else"]


@pytest.mark.slow
def test_a_device_publishing_from_the_instant_a_new_site_broker_listens_loses_nothing(
    gateway_factory,
) -> None:  # type: ignore[no-untyped-def]
    """On a broker without a store, a QoS 1 publish before the gateway has subscribed would be
    acknowledged and dropped (the device then deletes its record): the gateway opens its session
    first, on a listener devices cannot reach, and only then opens the site port."""
    port = free_port()
    gateway: GatewayProcess = gateway_factory({"broker": {"listen": "127.0.0.1", "port": port}}, start=False)
    acked: list[int] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-1")
    gateway.start(wait=False)
    deadline = time.monotonic() + 30
    while True:  # connect the moment the site port opens
        try:
            client.connect("127.0.0.1", port)
            break
        except OSError:
            assert time.monotonic() < deadline, "the site broker never listened"
            time.sleep(0.002)
    client.loop_start()
    for seq in range(1, 41):
        client.publish("fleet/site-a/dev-1/telemetry", telemetry("dev-1", [seq]), qos=1).wait_for_publish(10)
        acked.append(seq)
    client.loop_stop()
    client.disconnect()
    gateway.wait_healthy()
    _wait(lambda: gateway.metric("edge_gateway_records_total") >= len(acked))
    assert gateway.metric("edge_gateway_records_total") == len(acked) == 40
    log = (Path(gateway.config["data_dir"]) / "broker" / "mosquitto.log").read_text()
    assert log.count(" starting") == 2, "a first start primes the store, then opens the site port"
    assert gateway.stop() == 0
