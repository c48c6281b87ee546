"""Per-device identity on a real site broker: the gateway's managed Mosquitto on its generated config.

Every client shows a certificate of the fleet CA; the broker's ACL ties the certificate's name to
topics. What a user checks: a device cannot publish as another or read another's desired state, a
client without a certificate or with a revoked one is refused, the gateway dead-letters a payload
that names another device, and a real agent delivers its records over TLS.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud_controller.pki import FleetPki
from edge_agent.agent import Agent
from edge_agent.exceptions import ConfigError
from simulators.gateways import GatewayProcess
from tests.agent.factories import agent_config, settings
from tests.gateway.factories import telemetry
from tests.security.pki_fixtures import SITE, Identity, Session, issue, running_gateway, site_pki
from tests.utils.waiting import wait_until


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A fleet CA, the identities of site-a, and its gateway running a TLS-only broker."""
    pki, out, ids = site_pki(
        tmp_path,
        {
            "dev-1": ("dev-1", "device", {}),
            "dev-2": ("dev-2", "device", {}),
            "labeller": ("line-a", "labeller", {}),
            # The gateway's own name has one session at a time (the gateway's): a tool of its own.
            "writer": ("desired-writer", "observer", {}),
        },
    )
    with running_gateway(
        tmp_path,
        pki,
        ids,
        labellers=["line-a"],
        acl_extra=["user desired-writer", f"topic write fleet/{SITE}/+/desired"],
    ) as (port, gateway):
        yield {"pki": pki, "ids": ids, "port": port, "gateway": gateway, "out": out}


def _telemetry_count(gateway: GatewayProcess) -> float:
    return gateway.metric('edge_gateway_messages_total{kind="telemetry"}')


def test_a_device_publishes_only_as_itself_and_reads_only_its_own_desired_state(site) -> None:  # type: ignore[no-untyped-def]
    ids, port, gateway = site["ids"], site["port"], site["gateway"]
    forger = Session(port, ids["dev-1"], "agent-dev-1")
    assert forger.connect(), forger.refused
    # dev-1 publishes a valid batch of dev-2 on dev-2's topic (a seq dev-2 has not reached): the
    # broker drops it and cuts dev-1 off. Then dev-1 sends its own batch: once the gateway has that,
    # it would have had the first.
    forger.publish_denied(f"fleet/{SITE}/dev-2/telemetry", telemetry("dev-2", range(1, 4), site=SITE))
    dev1 = Session(port, ids["dev-1"], "agent-dev-1")
    assert dev1.connect(), dev1.refused
    try:
        dev1.publish(f"fleet/{SITE}/dev-1/telemetry", telemetry("dev-1", range(1, 4), site=SITE))
        deadline = time.monotonic() + 15
        while _telemetry_count(gateway) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert _telemetry_count(gateway) == 1, "only dev-1's own batch reached the gateway"
        assert set(gateway.in_transit().highest_seq) == {"dev-1"}, "nothing was stored for dev-2"
        assert gateway.dead_letters() == [], "the forged batch never reached the gateway"

        # A writer of desired states (acl_extra) writes both; dev-1 reads only its own.
        gw = Session(port, ids["writer"], "test-desired-writer")
        assert gw.connect(), gw.refused
        try:
            for device in ("dev-1", "dev-2"):
                gw.publish(f"fleet/{SITE}/{device}/desired", f"desired of {device}".encode(), retain=True)
        finally:
            gw.close()
        dev1.client.subscribe(f"fleet/{SITE}/+/desired", qos=1)
        dev1.client.subscribe(f"fleet/{SITE}/dev-2/#", qos=1)
        deadline = time.monotonic() + 10
        while not dev1.received and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert [topic for topic, _ in dev1.received] == [f"fleet/{SITE}/dev-1/desired"]

        # A device cannot write desired states or labels, even its own.
        dev1.publish_denied(f"fleet/{SITE}/dev-1/desired", b"forged", retain=True)
    finally:
        dev1.close()
    reader = Session(port, ids["dev-1"], "agent-dev-1-again")
    assert reader.connect(), reader.refused
    try:
        reader.client.subscribe(f"fleet/{SITE}/dev-1/desired", qos=1)
        deadline = time.monotonic() + 10
        while not reader.received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        reader.close()
    assert reader.received == [(f"fleet/{SITE}/dev-1/desired", b"desired of dev-1")], "not overwritten"


def test_clients_without_a_fleet_certificate_are_refused(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids, port = site["ids"], site["port"]
    no_cert = Session(port, None, "anonymous", ca=ids["dev-1"].ca)
    assert not no_cert.connect(3), "a TLS client without a certificate got in"
    no_cert.close()

    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plain")
    accepted = threading.Event()
    plain.on_connect = lambda c, u, f, reason, p: None if reason.is_failure else accepted.set()
    try:
        plain.connect("127.0.0.1", port, keepalive=5)
        plain.loop_start()
        assert not accepted.wait(3), "a plain TCP client got in"
    except OSError:
        pass
    finally:
        plain.loop_stop()

    # A certificate from another CA, with a name of this fleet, is refused too.
    rogue = FleetPki.init(tmp_path / "rogue-ca")
    forged = issue(rogue, tmp_path / "rogue", "dev-1", "device")
    impostor = Session(port, Identity(forged.name, forged.cert, forged.key, ids["dev-1"].ca), "agent-dev-1")
    assert not impostor.connect(3), "a certificate of another CA got in"
    impostor.close()


def test_a_revoked_certificate_is_cut_off_and_refused(site) -> None:  # type: ignore[no-untyped-def]
    ids, port, pki = site["ids"], site["port"], site["pki"]
    dev2 = Session(port, ids["dev-2"], "agent-dev-2")
    assert dev2.connect(), dev2.refused
    pki.revoke("dev-2")
    # The gateway sees the new CRL and restarts its broker: the open session ends.
    deadline = time.monotonic() + 15
    while dev2.client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    dev2.close()
    assert not dev2.client.is_connected(), "the revoked device's session was not cut"
    # Give the broker time to listen again, then try: dev-2 stays out, dev-1 gets in.
    for _ in range(100):
        dev1 = Session(port, ids["dev-1"], "agent-dev-1")
        if dev1.connect(1):
            dev1.close()
            break
        dev1.close()
    else:
        pytest.fail("dev-1 could not connect after the broker restarted")
    again = Session(port, ids["dev-2"], "agent-dev-2")
    assert not again.connect(3), "a revoked certificate got in"
    again.close()


def test_the_gateway_dead_letters_a_payload_naming_another_device(site) -> None:  # type: ignore[no-untyped-def]
    ids, port, gateway = site["ids"], site["port"], site["gateway"]
    dev1 = Session(port, ids["dev-1"], "agent-dev-1")
    assert dev1.connect(), dev1.refused
    try:
        # The ACL lets dev-1 publish on its own topic only; the payload inside claims dev-2.
        dev1.publish(f"fleet/{SITE}/dev-1/telemetry", telemetry("dev-2", range(1, 4), site=SITE))
        deadline = time.monotonic() + 15
        while not gateway.dead_letters() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dev1.close()
    assert gateway.dead_letters() == [(f"fleet/{SITE}/dev-1/telemetry", "device_mismatch")]
    assert gateway.in_transit().highest_seq == {}, "nothing stored for either device"


def test_a_labelling_system_writes_labels_of_its_site_and_a_device_cannot(site) -> None:  # type: ignore[no-untyped-def]
    ids, port = site["ids"], site["port"]
    watcher = Session(port, ids["dev-1"], "agent-dev-1")
    assert watcher.connect(), watcher.refused
    watcher.client.subscribe(f"fleet/{SITE}/dev-1/labels", qos=1)
    time.sleep(0.3)
    try:
        for name in ("dev-2", "labeller"):
            other = Session(port, ids[name], f"writer-{name}")
            assert other.connect(), other.refused
            label = json.dumps({"from": name}).encode()
            if name == "labeller":
                other.publish(f"fleet/{SITE}/dev-1/labels", label)
                other.close()
            else:
                other.publish_denied(f"fleet/{SITE}/dev-1/labels", label)
        deadline = time.monotonic() + 10
        while not watcher.received and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        watcher.close()
    assert [json.loads(p)["from"] for _, p in watcher.received] == ["labeller"]


async def test_an_agent_delivers_over_mutual_tls(site, tmp_path: Path, bundles, public_key_file) -> None:  # type: ignore[no-untyped-def]
    ids, port, gateway = site["ids"], site["port"], site["gateway"]
    config = agent_config(
        tmp_path,
        port=port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        site=SITE,
        source={"kind": "synthetic", "rate_hz": None, "limit": 300, "seed": 5},
        mqtt={"tls": ids["dev-1"].tls()},
    )
    agent = Agent(settings(config))
    task = asyncio.create_task(agent.run())
    try:
        await wait_until(
            lambda: gateway.in_transit().highest_seq.get("dev-1") == 300, 60, "300 records at the gateway"
        )
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert gateway.dead_letters() == []


def test_an_agent_refuses_a_key_others_can_read(site, tmp_path: Path, bundles, public_key_file) -> None:  # type: ignore[no-untyped-def]
    identity: Identity = site["ids"]["dev-1"]
    identity.key.chmod(0o640)
    config = agent_config(
        tmp_path,
        port=site["port"],
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        site=SITE,
        mqtt={"tls": identity.tls()},
    )
    with pytest.raises(ConfigError, match="readable by group or others"):
        Agent(settings(config))


def test_a_device_cannot_take_over_another_devices_session_by_its_client_id(site) -> None:  # type: ignore[no-untyped-def]
    ids, port = site["ids"], site["port"]
    dev2 = Session(port, ids["dev-2"], "agent-dev-2")
    assert dev2.connect(), dev2.refused
    dropped = threading.Event()
    dev2.client.on_disconnect = lambda *args: dropped.set()
    try:
        # With client ids taken from the client, this would end dev-2's connection and resume its
        # persistent session; the broker names the session after the certificate instead.
        thief = Session(port, ids["dev-1"], "agent-dev-2")
        assert thief.connect(), thief.refused
        thief.close()
        assert not dropped.wait(2), "dev-2 was kicked off by a client using its client id"
    finally:
        dev2.close()
