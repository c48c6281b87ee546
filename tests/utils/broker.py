"""A real Mosquitto on a free port for tests: the simulators' own site broker."""

from __future__ import annotations

import random
import socket

from simulators.brokers import SiteBroker as Mosquitto
from simulators.brokers import free_port


def port_for_an_outage() -> int:
    """A free port below the kernel's ephemeral range, for a peer that is down for a long while.

    Thousands of connection attempts to a closed port inside the ephemeral range end, sooner
    or later, with the kernel picking that very port as the client's own: TCP connects the
    socket to itself, and the port is taken when the real server starts.
    """
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            low = int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(10_000, max(10_001, low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


__all__ = ["Mosquitto", "free_port", "port_for_an_outage"]
