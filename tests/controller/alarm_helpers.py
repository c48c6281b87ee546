"""What the alarm tests share: waiting on the evaluator's own clock, reading alarms through the API."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from simulators.controller import ControllerProcess


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
