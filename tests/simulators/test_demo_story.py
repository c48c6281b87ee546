"""fleet_configs/demo.yaml tells the whole story, and the pieces of the simulator it needs.

The demo rolls out a good version and a bad one through faults, then drifts both sites once
those rollouts have ended, answers the alarms with a retraining and a federated job, and judges
the recovery. What makes that work without the whole fleet: drift that waits for the rollouts;
jobs that wait for their site's drift, an alarm open since and their data; the good rollout's
version marked production (what a job's candidate must beat); the OTA invariant that lets a
canary device move on to a job's version; and the OTA rollouts on the learning loop's time axis.
The whole run: `make demo`.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from simulators.events import drift as drift_events
from simulators.events import rollouts as rollout_events
from simulators.events.drift import ConceptDrift, Drift
from simulators.events.jobs import Job, data_wait, wait_drift
from simulators.events.rollouts import Rollout
from simulators.learning import JobOutcome, LearningResult, mark_production, open_since, wait_alarm
from simulators.releases import MODEL_ID
from simulators.rollouts import RolloutOutcome
from simulators.scenario import Learning, SimError, load_scenario

DEMO = Path(__file__).parents[2] / "fleet_configs" / "demo.yaml"


def test_the_demo_rolls_out_then_drifts_both_sites_and_answers_each_alarm_with_a_job() -> None:
    demo = load_scenario(DEMO)
    assert demo.learning is not None, "alarms, a recipe and a jobs worker"
    assert sorted(map(tuple, demo.learning.expect_alarms)) == [(0, "data_drift"), (1, "accuracy")]
    kinds = [e.kind for e in demo.events]
    for kind in ("rollout", "bad_rollout", "broker_restart", "uplink_partition", "agents_kill"):
        assert kind in kinds
    rollouts = [e for e in demo.events if e.kind in ("rollout", "bad_rollout")]
    drifts = [e for e in demo.events if e.kind in ("drift", "concept_drift")]
    assert {(e.kind, e.site) for e in drifts} == {("drift", 0), ("concept_drift", 1)}
    for e in drifts:
        assert e.after_rollouts, "the drift hits the version the rollouts settled on"
        assert e.at_s > max(r.at_s for r in rollouts)
    jobs = {(e.site, e.job, e.on_alarm) for e in demo.events if e.kind == "job"}
    assert jobs == {(0, "retrain", "data_drift"), (1, "federated", "accuracy")}
    for e in demo.events:
        if e.kind == "job":
            assert e.data_s > 0, "a job waits for labelled records since its site's drift"


def test_a_job_waits_for_its_data_since_the_first_drift_of_its_sites() -> None:
    assert data_wait(now=70.0, drifted_at=[60.0], data_s=20.0) == pytest.approx(10.0)
    assert data_wait(now=85.0, drifted_at=[60.0], data_s=20.0) == 0.0
    assert data_wait(now=70.0, drifted_at=[65.0, None, 60.0], data_s=20.0) == pytest.approx(10.0)
    assert data_wait(now=70.0, drifted_at=[None], data_s=20.0) == 0.0, "nothing drifted: nothing to wait for"
    assert data_wait(now=70.0, drifted_at=[69.0], data_s=0.0) == 0.0
    with pytest.raises(ValueError):
        Job(at_s=1, kind="job", data_s=-1)


class _Run:
    """What a drift handler touches of a `FleetRun`."""

    def __init__(self) -> None:
        self.rollout_lock = asyncio.Lock()
        self.sites = [SimpleNamespace(name=f"site-{i}", devices=[], drifted_at=None) for i in range(2)]
        self.drift_started_at: float | None = None
        self.started = time.monotonic()
        self.changed: list[dict[str, Any]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def sites_for(self, which: int) -> list[Any]:
        return [self.sites[which]]

    def devices_of(self, site: Any) -> list[str]:
        return list(site.devices)

    async def set_sources(self, devices: list[str], **change: Any) -> None:
        self.changed.append(change)


async def test_drift_after_rollouts_waits_for_the_rollouts_that_fired_before_it() -> None:
    run = _Run()
    release = asyncio.Event()

    async def rollout() -> None:
        async with run.rollout_lock:
            await release.wait()

    rolling = asyncio.create_task(rollout())
    await asyncio.sleep(0)  # the rollout holds the lock, as a rollout event does
    waiting = asyncio.create_task(
        drift_events.drift(run, Drift(at_s=0, kind="drift", site=0, shift=3.0, after_rollouts=True))  # type: ignore[arg-type]
    )
    concept = asyncio.create_task(
        drift_events.concept_drift(
            run,  # type: ignore[arg-type]
            ConceptDrift(at_s=0, kind="concept_drift", site=1, after_rollouts=True),
        )
    )
    await asyncio.sleep(0.05)
    assert not waiting.done() and not concept.done() and run.changed == []
    assert all(site.drifted_at is None for site in run.sites)
    release.set()
    lines = await asyncio.gather(waiting, concept)
    await rolling
    assert [c.get("extra_drift") for c in run.changed] == [3.0, None]
    assert all(site.drifted_at is not None and site.drifted_at >= 0.05 for site in run.sites)
    assert all("once the rollouts before it had ended" in line for line in lines)


async def test_drift_without_after_rollouts_does_not_wait() -> None:
    run = _Run()
    await run.rollout_lock.acquire()  # a rollout runs, and goes on running
    line = await asyncio.wait_for(
        drift_events.drift(run, Drift(at_s=0, kind="drift", site=0, shift=2.0)),  # type: ignore[arg-type]
        timeout=1,
    )
    assert run.sites[0].drifted_at is not None and "once the rollouts" not in line


def _registry(stage_status: int = 200) -> tuple[httpx.Client, list[tuple[str, Any]]]:
    """A controller's registry API over a mock transport: the calls it got."""
    calls: list[tuple[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/api/v1/models/versions":
            assert request.url.params["model_id"] == MODEL_ID
            return httpx.Response(200, json=[{"id": 1, "version": "1.0.0"}, {"id": 2, "version": "1.1.0"}])
        if request.method == "PATCH":
            calls.append((request.url.path, json.loads(request.content)))
            return httpx.Response(stage_status, json={"detail": "nope"})
        return httpx.Response(404)

    return httpx.Client(transport=httpx.MockTransport(handle), base_url="http://controller"), calls


def test_mark_production_stages_the_named_version() -> None:
    client, calls = _registry()
    mark_production(client, "1.1.0")
    assert calls == [("/api/v1/models/versions/2", {"stage": "production"})]
    with pytest.raises(SimError, match="no such version"):
        mark_production(client, "9.9.9")
    refusing, _ = _registry(stage_status=403)
    with pytest.raises(SimError, match="403"):
        mark_production(refusing, "1.1.0")


def _rollout_run(learning: Learning | None) -> SimpleNamespace:
    async def settle_updates(within_s: float, version: str | None = None) -> list[str]:
        return []

    return SimpleNamespace(
        releases={"1.1.0": SimpleNamespace(uploaded={"onnx-fp32": "a" * 64})},
        rollouts=[],
        rollout_lock=asyncio.Lock(),
        controller=object(),
        scenario=SimpleNamespace(learning=learning),
        settle_updates=settle_updates,
    )


@pytest.mark.parametrize(
    ("learning", "state", "marked"),
    [(Learning(), "succeeded", True), (None, "succeeded", False), (Learning(), "aborted", False)],
)
async def test_a_good_rollout_that_succeeded_is_marked_production_when_the_scenario_learns(
    monkeypatch: pytest.MonkeyPatch, learning: Learning | None, state: str, marked: bool
) -> None:
    """Jobs compare their candidate with production: after 1.1.0 succeeded, the fleet runs 1.1.0."""
    staged: list[str] = []

    async def run_rollout(controller: Any, outcome: RolloutOutcome, body: Any, *, within_s: float) -> Any:
        outcome.state = state
        return outcome

    monkeypatch.setattr(rollout_events, "run_rollout", run_rollout)
    monkeypatch.setattr(rollout_events, "_mark_production", lambda run, version: staged.append(version))
    run = _rollout_run(learning)
    line = await rollout_events.rollout(run, Rollout(at_s=5, kind="rollout", version="1.1.0"))  # type: ignore[arg-type]
    assert staged == (["1.1.0"] if marked else [])
    assert ("marked production" in line) is marked


def test_the_timeline_rollouts_share_the_learning_loops_time_axis() -> None:
    origin = 1_000.0
    good = RolloutOutcome("rollout", "1.1.0", None, {}, state="succeeded", ended_at=origin + 50)
    good.waves = [
        {"index": 0, "target": 5, "started_at": origin + 5},
        {"index": 1, "target": 25, "started_at": origin + 30},
    ]
    bad = RolloutOutcome("bad_rollout", "1.2.0", "nan_outputs", {}, state="failed", ended_at=origin + 53)
    bad.waves = [{"index": 0, "target": 3, "started_at": origin + 51}, {"index": 1, "started_at": None}]
    job = JobOutcome("retrain", "site-0", created_at=origin + 80, ended_at=origin + 90, state="succeeded")
    result = LearningResult([job], [], {}, {}, {}, series_s=5.0, rollouts=[good, bad])
    marks = result.marks(origin)
    assert [(m["t"], m["what"]) for m in marks] == [
        (5.0, "ota_wave"),
        (30.0, "ota_wave"),
        (50.0, "ota_end"),
        (51.0, "ota_wave"),
        (53.0, "ota_end"),
        (80.0, "job_queued"),
        (90.0, "job_end"),
    ]
    assert marks[4]["label"] == "1.2.0 (nan_outputs) rollout failed"
    assert LearningResult([], [], {}, {}, {}, series_s=5.0).marks(origin) == [], "learning.yaml: none"


def _alarm(fired_at: float, resolved_at: float | None, alarm_id: int = 1) -> dict[str, Any]:
    return {"id": alarm_id, "fired_at": fired_at, "resolved_at": resolved_at}


def test_an_alarm_answers_a_drift_only_if_it_was_open_at_some_time_since() -> None:
    drift = 1_000.0
    assert open_since(_alarm(990.0, 995.0), None), "without a drift to answer, any alarm"
    assert not open_since(_alarm(990.0, 995.0), drift), "fired and resolved before the drift"
    assert open_since(_alarm(990.0, None), drift), "still open when the drift came"
    assert open_since(_alarm(990.0, 1_003.0), drift), "open at the drift"
    assert open_since(_alarm(1_005.0, None), drift)


async def test_wait_alarm_skips_an_alarm_from_before_the_drift() -> None:
    """In a demo run, a fault skewed a PSI window at site-0 before its drift: that alarm fired and
    resolved, and a job that took it for the drift's started with no drifted data at all."""
    alarms = [_alarm(990.0, 995.0, alarm_id=1)]

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.params["kind"] == "data_drift" and request.url.params["site"] == "site-0"
        return httpx.Response(200, json={"data": list(alarms)})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://c") as client:
        assert (await wait_alarm(client, "site-0", "data_drift", 0.1, since=1_000.0)) is None
        assert (await wait_alarm(client, "site-0", "data_drift", 0.1))["id"] == 1  # type: ignore[index]
        alarms.append(_alarm(1_006.0, None, alarm_id=2))
        assert (await wait_alarm(client, "site-0", "data_drift", 0.1, since=1_000.0))["id"] == 2  # type: ignore[index]


async def test_a_job_waits_for_its_sites_drift() -> None:
    run = _Run()
    assert await wait_drift(run, run.sites, 0.1) is None, "no drift came"  # type: ignore[arg-type]
    waiting = asyncio.create_task(wait_drift(run, run.sites, 5.0))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert not waiting.done()
    run.sites[1].drifted_at = 42.0
    assert await waiting == 42.0
