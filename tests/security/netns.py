"""Hosts on one machine: network namespaces joined by veth links, for what crosses a real network."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def available() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"efp{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except subprocess.CalledProcessError as exc:
        return f"ip netns add fails here: {exc.stderr.strip()}"
    return None


@dataclass(frozen=True)
class Topology:
    """device (netns) --link d-- site (netns) --link c-- cloud (this test's own namespace)."""

    device_ns: str
    site_ns: str
    device_ip: str = "10.91.1.2"
    site_device_side_ip: str = "10.91.1.1"
    site_cloud_side_ip: str = "10.91.2.2"
    cloud_ip: str = "10.91.2.1"
    device_if: str = ""
    cloud_if: str = ""

    def run_in(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]


@contextmanager
def three_hosts() -> Iterator[Topology]:
    reason = available()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:5]
    dev, site = f"efd{tag}", f"efs{tag}"
    # veth names are at most 15 characters.
    d_dev, d_site, c_site, c_cloud = f"d{tag}a", f"d{tag}b", f"c{tag}a", f"c{tag}b"
    topo = Topology(dev, site, device_if=d_dev, cloud_if=c_cloud)
    try:
        _ip("netns", "add", dev)
        _ip("netns", "add", site)
        _ip("link", "add", d_dev, "type", "veth", "peer", "name", d_site)
        _ip("link", "set", d_dev, "netns", dev)
        _ip("link", "set", d_site, "netns", site)
        _ip("link", "add", c_site, "type", "veth", "peer", "name", c_cloud)
        _ip("link", "set", c_site, "netns", site)
        for ns, link, address in (
            (dev, d_dev, topo.device_ip),
            (site, d_site, topo.site_device_side_ip),
            (site, c_site, topo.site_cloud_side_ip),
        ):
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", link)
            _ip("-n", ns, "link", "set", link, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("addr", "add", f"{topo.cloud_ip}/24", "dev", c_cloud)
        _ip("link", "set", c_cloud, "up")
        yield topo
    finally:
        for ns in (dev, site):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", c_cloud], capture_output=True, check=False)
