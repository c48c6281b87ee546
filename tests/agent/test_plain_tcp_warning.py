"""The warning that a device's MQTT is plain TCP: said at start, once per broker in a process.

A simulator runs hundreds of agents in one process on one site broker: once per agent buried the
report under hundreds of identical lines.
"""

from __future__ import annotations

import logging

import pytest

from edge_agent import sync
from edge_agent.config import MqttConfig


def test_plain_tcp_is_warned_once_per_broker_per_process(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync, "_WARNED_PLAIN", set())  # as a fresh process
    site_a, site_b = MqttConfig(host="127.0.0.1", port=18831), MqttConfig(host="127.0.0.1", port=18832)
    with caplog.at_level(logging.WARNING, logger="edge_agent.sync"):
        for _ in range(300):
            assert sync.tls_context(site_a) is None
        assert sync.tls_context(site_b) is None
    warned = [r.getMessage() for r in caplog.records if "plain TCP" in r.getMessage()]
    assert warned == [
        "MQTT to 127.0.0.1:18831 is plain TCP without a client certificate: for a lab only (anyone on"
        " the network can read and publish as this device); set mqtt.tls for production",
        "MQTT to 127.0.0.1:18832 is plain TCP without a client certificate: for a lab only (anyone on"
        " the network can read and publish as this device); set mqtt.tls for production",
    ]
