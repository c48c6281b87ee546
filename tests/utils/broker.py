"""A real Mosquitto on a free port for tests: the simulators' own site broker."""

from __future__ import annotations

from simulators.brokers import SiteBroker as Mosquitto
from simulators.brokers import free_port

__all__ = ["Mosquitto", "free_port"]
