"""Per-gateway ingest rate limit: over it, 429 with Retry-After and nothing stored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_controller.models import Role
from cloud_controller.rate_limit import IngestLimiter, batch_items, retry_after
from simulators.controller import ControllerProcess
from tests.controller.conftest import Controller, as_controller
from tests.controller.factories import batch, summary

#: Items per second and burst of the controller under test: small, so that a test reaches them at once.
RATE, BURST = 5, 50


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_takes_a_burst_then_the_rate_per_gateway_token() -> None:
    clock = Clock()
    limiter = IngestLimiter(RATE, BURST, clock=clock)
    assert limiter.admit(1, 50) == 0
    assert limiter.admit(1, 10) == pytest.approx(2.0), "10 items at 5/s"
    assert limiter.admit(2, 50) == 0, "another gateway token has its own bucket"
    clock.now += 2.0
    assert limiter.admit(1, 10) == 0
    assert limiter.admit(1, 1) == pytest.approx(0.2)


def test_batch_larger_than_the_burst_goes_once_the_bucket_is_full() -> None:
    clock = Clock()
    limiter = IngestLimiter(RATE, BURST, clock=clock)
    assert limiter.admit(1, 200) == 0, "a full bucket lets any batch through, or it could never go"
    assert limiter.admit(1, 1) == pytest.approx((150 + 1) / RATE), "then the debt is paid at the rate"
    assert retry_after(0.01) == 1 and retry_after(7.5) == 8


def test_every_item_of_a_batch_counts() -> None:
    payload = batch(devices={"dev-1": range(1, 11)}).model_copy(update={"summaries": [summary("dev-1", 0.0)]})
    assert batch_items(payload) == 11


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, public_key_file: Path) -> Iterator[Controller]:
    """A controller on SQLite whose gateway tokens may ingest `RATE` items/s, `BURST` at once."""
    tmp = tmp_path_factory.mktemp("limited")
    process = ControllerProcess(tmp, public_key_file, token_prefix="test")
    process.env["EDGEFLEET_CONTROLLER__INGEST_RECORDS_PER_S"] = str(RATE)
    process.env["EDGEFLEET_CONTROLLER__INGEST_BURST_RECORDS"] = str(BURST)
    process.start((("gateway", Role.GATEWAY, "site-a"), ("gateway-b", Role.GATEWAY, "site-b")))
    try:
        yield as_controller(process, tmp)
    finally:
        process.stop()


def _seqs(ctl: Controller, device: str) -> list[int]:
    with ctl.client("operator") as client:
        answer = client.get(f"/api/v1/devices/{device}/telemetry", params={"limit": 1000})
    return sorted(r["seq"] for r in answer.json()) if answer.status_code == 200 else []


def test_over_the_rate_a_batch_gets_429_with_retry_after_and_nothing_is_stored(limited: Controller) -> None:
    first = batch(devices={"dev-r1": range(1, 51)})
    over = batch(devices={"dev-r1": range(51, 61)})
    with limited.client("gateway") as gateway, limited.client("gateway-b") as other:
        assert gateway.post("/api/v1/ingest", content=first.model_dump_json()).status_code == 200
        refused = gateway.post("/api/v1/ingest", content=over.model_dump_json())
        other_site = other.post(
            "/api/v1/ingest", content=batch(site="site-b", devices={"dev-r2": range(1, 51)}).model_dump_json()
        )
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "2", "10 items at 5/s"
        assert "over its ingest rate" in refused.json()["detail"]
        assert other_site.status_code == 200, "the limit is per gateway token"
        assert _seqs(limited, "dev-r1") == list(range(1, 51)), "the refused batch stored nothing"

        time.sleep(int(refused.headers["Retry-After"]))  # a real server's clock: waited as a gateway would
        again = gateway.post("/api/v1/ingest", content=over.model_dump_json())
    assert again.status_code == 200 and again.json()["accepted"] == 10
    assert _seqs(limited, "dev-r1") == list(range(1, 61))
    with limited.client(None) as client:
        metrics = client.get("/metrics").text
    assert 'edgefleet_ingest_rejected_total{reason="rate_limited"} 1.0' in metrics
