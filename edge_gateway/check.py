"""``edge-gateway check-config``: everything ``run`` would refuse, found before it runs."""

from __future__ import annotations

import os
import sys

from edge_gateway.broker import find_mosquitto
from edge_gateway.config import load_settings
from edge_gateway.exceptions import GatewayError
from fleet_protocol import ProtocolError
from fleet_protocol.signing import load_public_key


def check_config(path: str) -> int:
    """Print what is wrong with a config (or a one-line summary); return the exit code."""
    try:
        settings = load_settings(path)
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    problems: list[str] = []
    for key in settings.trusted_keys:
        try:
            load_public_key(key)
        except (ProtocolError, OSError) as exc:
            problems.append(f"trusted_keys: {exc}")
    existing = next((p for p in (settings.data_dir, *settings.data_dir.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK):
        problems.append(f"data_dir: {settings.data_dir} cannot be created or written")
    if settings.broker.host is None:
        try:
            find_mosquitto()
        except GatewayError as exc:
            problems.append(f"broker: {exc}")
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    broker = (
        f"{settings.broker.host}:{settings.broker.port}"
        if settings.broker.host
        else f"managed Mosquitto on {settings.broker.listen}:{settings.broker.port}"
    )
    print(
        f"ok: gateway {settings.gateway_id} of site {settings.site}, broker {broker},"
        f" upstream {settings.upstream.url or 'none (queue only)'}, bundles at {settings.public_url},"
        f" {len(settings.device_classes)} device classes"
    )
    return 0
