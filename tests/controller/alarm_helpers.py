"""What the alarm tests share: waiting on the evaluator's own clock, reading alarms through the API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_controller.models import Role
from simulators.controller import ControllerProcess
from tests.controller.conftest import database_url


def alarm_controller(
    store: str, tmp_path_factory: pytest.TempPathFactory, public_key_file: Path, name: str
) -> Iterator[ControllerProcess]:
    """A controller on ``store`` whose alarm evaluator passes every 0.2 s, with a gateway of site-a."""
    tmp = tmp_path_factory.mktemp(f"{name}-{store}")
    for url in database_url(store, tmp):
        process = ControllerProcess(tmp, public_key_file, database_url=url, token_prefix="test")
        process.env["EDGEFLEET_CONTROLLER__ALARM_TICK_S"] = "0.2"
        process.start((("gateway", Role.GATEWAY, "site-a"),))
        try:
            yield process
        finally:
            process.stop()


def until(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy (the evaluator runs on its own clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alarms(ctl: ControllerProcess, model: str, **params: str) -> list[dict[str, Any]]:
    with ctl.client("viewer") as client:
        response = client.get("/api/v1/alarms", params={"model_id": model, **params})
    assert response.status_code == 200, response.text
    return response.json()["data"]
