"""A controller that comes up later, and a site gateway that forwards every record to it.

For the tests of what a gateway does while its controller is away, and once it is back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloud_controller.migrate import upgrade
from simulators.controller import ControllerProcess
from tests.gateway.conftest import GatewayProcess, controller_rows

SITE = "site-a"


def controller_on(port: int, workdir: Path, key: Path) -> ControllerProcess:
    """A controller that will listen on ``port`` once started; its database and token exist now."""
    controller = ControllerProcess(workdir, key, token_prefix="outage")
    controller.port, controller.url = port, f"http://127.0.0.1:{port}"
    controller.env["EDGEFLEET_CONTROLLER__PORT"] = str(port)
    workdir.mkdir(parents=True, exist_ok=True)
    upgrade(controller.database_url)
    controller.gateway_token(SITE)
    return controller


def forwarding_gateway(
    gateway_factory: Any,
    controller: ControllerProcess,
    broker: dict[str, Any],
    **upstream: Any,
) -> GatewayProcess:
    """A started gateway of site-a that forwards every record (``forward_all``) to ``controller``.

    Started without waiting for ``/healthz``: without its broker or controller it answers 503,
    which is what these tests are about. ``broker`` and ``upstream`` are its config sections
    (the controller's URL and token are filled in).
    """
    gateway: GatewayProcess = gateway_factory(
        {
            "broker": {"host": "127.0.0.1", **broker},
            "upstream": {"url": controller.url, "token": controller.gateway_token(SITE), **upstream},
            "device_classes": [{"name": "all", "forward_all": True, "window_s": 1}],
        },
        start=False,
    )
    gateway.start(wait=False)
    return gateway


def stored_records(db: str) -> int:
    """Telemetry records the controller stored (0 before its database exists)."""
    try:
        return int(controller_rows(db, "SELECT COUNT(*) FROM telemetry")[0][0])
    except Exception:  # the controller's database is not there yet
        return 0
