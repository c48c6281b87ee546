"""Jobs on the timeline: an operator answers a site's alarm with a retraining or federated job.

The job runs in the run's `cloud-controller worker` process (a scenario with `learning`). Its data
is the site's labelled records since the site drifted, and its candidate goes to a device group of
that site only (`simulators.learning` says why). The event lasts until the job and its rollout have
ended, and ``observe_s`` more, so that the accuracy after recovery is measured on the new model.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import Field, ValidationError, field_validator

from simulators.events import Event, event
from simulators.learning import JobOutcome, follow_job, site_group, wait_alarm
from simulators.releases import MODEL_ID

if TYPE_CHECKING:
    from simulators.fleet import FleetRun, Site


class Job(Event):
    job: Literal["retrain", "federated"] = Field(
        default="retrain", description="retrain (central, in the worker) or federated (Flower simulation)"
    )
    on_alarm: Literal["data_drift", "accuracy"] | None = Field(
        default=None, description="Wait for the site's alarm of this kind first (null: start at once)"
    )
    alarm_within_s: float = Field(default=90.0, gt=0, description="How long to wait for that alarm")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The job's params (POST /api/v1/jobs); sites, group and window_s default to the"
        " site, its device group and the time since its drift",
    )
    data_s: float = Field(
        default=0.0,
        ge=0,
        description="Wait for the site to drift, answer only an alarm open since then, and start the"
        " job this many seconds after the drift: its labelled records gather meanwhile (0: at once,"
        " on any alarm of the kind)",
    )
    within_s: float = Field(default=300.0, gt=0, description="How long the run waits for job and rollout")
    observe_s: float = Field(
        default=15.0, ge=0, description="Seconds the fleet keeps streaming after the rollout ended"
    )

    @field_validator("params")
    @classmethod
    def _job_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        from cloud_controller.job_models import JobParams

        try:  # the controller's own rules: a typo is an error before the fleet starts
            JobParams.model_validate(value)
        except ValidationError as exc:
            raise ValueError(f"params: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
        return value


def data_wait(now: float, drifted_at: list[float | None], data_s: float) -> float:
    """Seconds until ``data_s`` have passed since the first of the sites drifted (0 when they
    have, or when none drifted: a job then has nothing to wait for)."""
    drifted = [t for t in drifted_at if t is not None]
    if not drifted or data_s <= 0:
        return 0.0
    return max(0.0, min(drifted) + data_s - now)


async def wait_drift(run: FleetRun, sites: list[Site], within_s: float) -> float | None:
    """When the first of ``sites`` drifted (run clock), once one has; None if none did in time."""
    deadline = run.elapsed() + within_s
    while True:
        drifted = [s.drifted_at for s in sites if s.drifted_at is not None]
        if drifted:
            return min(drifted)
        if run.elapsed() >= deadline:
            return None
        await asyncio.sleep(0.5)


@event("job", Job)
async def job(run: FleetRun, spec: Job) -> str:
    """A retraining or federated job for the site (after its alarm), rolled out to the site's devices."""
    if spec.site == "all":
        sites, scoped = run.sites, False
    else:
        sites, scoped = run.sites_for(spec.site), True
    site = sites[0]
    name = site.name if scoped else "all sites"
    outcome = JobOutcome(spec.job, name, alarm=spec.on_alarm)
    run.jobs.append(outcome)
    if run.worker is None:
        outcome.error = "the scenario has no `learning` section: no jobs worker runs"
        return outcome.line()
    headers = {"Authorization": f"Bearer {run.controller.tokens['operator']}"}
    since: float | None = None  # Unix time of the drift the job answers
    if spec.data_s > 0:
        # An alarm from before the drift (a fault can skew a PSI window) is not the drift's.
        drifted_at = await wait_drift(run, sites, spec.alarm_within_s)
        if drifted_at is None:
            outcome.error = f"{name} did not drift within {spec.alarm_within_s:.0f}s"
            return outcome.line()
        since = time.time() - run.elapsed() + drifted_at
    async with httpx.AsyncClient(base_url=run.controller.url, headers=headers, timeout=30) as client:
        if spec.on_alarm is not None:
            alarm = await wait_alarm(client, site.name, spec.on_alarm, spec.alarm_within_s, since=since)
            if alarm is None:
                after = " after its drift" if since is not None else ""
                outcome.error = (
                    f"no {spec.on_alarm} alarm at {site.name}{after} within {spec.alarm_within_s:.0f}s"
                )
                return outcome.line()
            outcome.alarm_id = alarm["id"]
        await asyncio.sleep(data_wait(run.elapsed(), [s.drifted_at for s in sites], spec.data_s))
        params = dict(spec.params)
        if scoped:
            params.setdefault("sites", [site.name])
            params.setdefault("group", await asyncio.to_thread(site_group, run.controller, site))
        drifted = [s.drifted_at for s in sites if s.drifted_at is not None]
        if drifted and "window_s" not in params:
            # The records since the drift: what the site means now.
            params["window_s"] = max(1.0, run.elapsed() - min(drifted))
        answer = await client.post(
            "/api/v1/jobs", json={"kind": spec.job, "model_id": MODEL_ID, "params": params}
        )
        if answer.status_code != 201:
            outcome.error = f"the controller refused the job: {answer.status_code} {answer.text}"
            return outcome.line()
        created = answer.json()
        outcome.job_id, outcome.created_at, outcome.state = (
            created["id"],
            created["created_at"],
            created["state"],
        )
        await follow_job(run, client, outcome, spec.within_s)
    if outcome.rolled_out():
        # Devices finish their switch, then stream on the new version for a while.
        await run.settle_updates(30.0, version=outcome.version)
        await asyncio.sleep(spec.observe_s)
    return outcome.line()
