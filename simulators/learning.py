"""The learning loop in a run: the model's recipe and alarm policy, jobs followed to their rollout's
end, and at the end what the controller stored (alarms, accuracy per site from delayed labels).

A job is started the way an operator answers an alarm (`simulators.events.jobs`): the site's
devices get a group of their own, the job's data is the site's labelled records since its drift,
and its candidate is rolled out to that group only. Why per site: concept drift swaps two classes
at ONE site, so after it no single model fits every site; data drift (covariate shift) could be
learned by one model for the whole fleet, but a job scoped to the drifted site's recent data is
the smaller, faster change and leaves the healthy sites alone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from simulators.releases import MODEL_ID
from simulators.rollouts import ENDED as ROLLOUT_ENDED
from simulators.rollouts import RolloutOutcome
from simulators.scenario import Learning, SimError

if TYPE_CHECKING:
    from simulators.controller import ControllerProcess
    from simulators.fleet import FleetRun, Site

#: Job states a job does not leave.
JOB_ENDED = ("succeeded", "failed", "cancelled")


@dataclass
class JobOutcome:
    """What one `job` event did: its alarm, its job's steps, its rollout, in Unix times."""

    kind: str  # retrain | federated
    site: str
    alarm: str | None = None  # the alarm kind it answered
    alarm_id: int | None = None
    job_id: str | None = None
    state: str = "not started"
    error: str | None = None
    outcome: str | None = None
    version: str | None = None
    created_at: float | None = None
    ended_at: float | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    rollout_id: str | None = None
    rollout_state: str | None = None
    rollout_waves: list[dict[str, Any]] = field(default_factory=list)
    rollout_ended_at: float | None = None

    def rolled_out(self) -> bool:
        return self.state == "succeeded" and self.rollout_state == "succeeded"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        what = f"{self.kind} job {self.job_id or '-'} for {self.site}"
        if self.alarm:
            what += f" (answering its {self.alarm} alarm {self.alarm_id})"
        if self.error:
            return f"{what}: {self.error}"
        took = f" in {self.ended_at - self.created_at:.0f}s" if self.ended_at and self.created_at else ""
        rollout = f"; rollout of {self.version} {self.rollout_state}" if self.rollout_id else ""
        return f"{what} {self.state}{took}: {self.outcome or ''}{rollout}"


def mark_production(client: httpx.Client, version: str) -> None:
    """Mark ``MODEL_ID@version`` production: what a job's candidate must beat. The newest version
    marked so is production (`cloud_controller.pipeline.versions.production`), so marking the
    version a good rollout gave the fleet makes it the one a job compares with."""
    versions = client.get("/api/v1/models/versions", params={"model_id": MODEL_ID}).json()
    found = next((v for v in versions if v["version"] == version), None)
    if found is None:
        raise SimError(f"cannot mark {MODEL_ID}@{version} production: the registry has no such version")
    staged = client.patch(f"/api/v1/models/versions/{found['id']}", json={"stage": "production"})
    if staged.status_code != 200:
        raise SimError(f"cannot mark {MODEL_ID}@{version} production: {staged.status_code} {staged.text}")


def set_up(controller: ControllerProcess, learning: Learning, version: str) -> None:
    """The model's training recipe and alarm policy, and ``version`` marked production (what a job's
    candidate must beat); blocking."""
    from fleet_learning import default_recipe

    with controller.client("operator") as client:
        mark_production(client, version)
        recipe = client.put(
            f"/api/v1/models/{MODEL_ID}/recipe", json=default_recipe().model_dump(mode="json")
        )
        if recipe.status_code != 200:
            raise SimError(f"the controller refused the training recipe: {recipe.status_code} {recipe.text}")
        policy = client.put(
            f"/api/v1/models/{MODEL_ID}/alarm-policy", json=learning.alarm_policy.model_dump()
        )
        if policy.status_code != 200:
            raise SimError(f"the controller refused the alarm policy: {policy.status_code} {policy.text}")


def site_group(controller: ControllerProcess, site: Site) -> str:
    """A device group of the site's devices (labelled ``site: <name>``), as an operator makes one."""
    with controller.client("operator") as client:
        for device in site.devices:
            # A device the controller has not heard of yet is not rolled out to: the rollout says so.
            client.patch(f"/api/v1/devices/{device}", json={"labels": {"site": site.name}})
        made = client.post("/api/v1/groups", json={"name": site.name, "selector": {"site": site.name}})
        if made.status_code not in (201, 409):
            raise SimError(f"cannot create the group of {site.name}: {made.status_code} {made.text}")
    return site.name


def open_since(alarm: dict[str, Any], since: float | None) -> bool:
    """Whether the alarm was open at some time from ``since`` on (Unix time; None: any alarm)."""
    if since is None:
        return True
    return alarm["fired_at"] >= since or alarm["resolved_at"] is None or alarm["resolved_at"] >= since


async def wait_alarm(
    client: httpx.AsyncClient, site: str, kind: str, within_s: float, *, since: float | None = None
) -> dict[str, Any] | None:
    """The site's alarm of ``kind`` once it is open (or was: it may have resolved since), None if none
    fired within ``within_s``. With ``since``, only an alarm open at some time from then on: one
    that fired and resolved before (a fault skewing a drift window) is not the one a drift raised."""
    deadline = time.monotonic() + within_s
    while True:
        answer = await client.get("/api/v1/alarms", params={"kind": kind, "site": site, "model_id": MODEL_ID})
        found = (
            [a for a in answer.json()["data"] if open_since(a, since)] if answer.status_code == 200 else []
        )
        if found:
            return min(found, key=lambda a: a["fired_at"])
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(1.0)


async def follow_job(run: FleetRun, client: httpx.AsyncClient, outcome: JobOutcome, within_s: float) -> None:
    """Until the job ends and then its rollout (if it made one); the outcome updated as they go."""
    deadline = time.monotonic() + within_s
    while True:
        if run.worker is not None:
            run.worker.check()
        answer = await client.get(f"/api/v1/jobs/{outcome.job_id}")
        if answer.status_code != 200:
            raise SimError(f"cannot follow job {outcome.job_id}: {answer.status_code} {answer.text}")
        job = answer.json()
        outcome.state, outcome.error, outcome.outcome = job["state"], job["error"], job["outcome"]
        outcome.steps = [{k: s[k] for k in ("name", "state", "started_at", "ended_at")} for s in job["steps"]]
        outcome.rounds = job["rounds"]
        outcome.version = (job["artifacts"].get("register") or {}).get("version") or outcome.version
        outcome.rollout_id = (job["artifacts"].get("rollout") or {}).get("rollout_id")
        if outcome.state in JOB_ENDED:
            outcome.ended_at = job["ended_at"]
            break
        if time.monotonic() >= deadline:
            outcome.error = f"still {outcome.state} at step {job['step']} after {within_s:.0f}s"
            return
        await asyncio.sleep(1.0)
    while outcome.rollout_id is not None:
        answer = await client.get(f"/api/v1/rollouts/{outcome.rollout_id}")
        if answer.status_code == 200:
            rollout = answer.json()
            outcome.rollout_state, outcome.rollout_waves = rollout["state"], rollout["waves"]
            if outcome.rollout_state in ROLLOUT_ENDED:
                outcome.rollout_ended_at = time.time()
                return
        if time.monotonic() >= deadline:
            outcome.error = f"its rollout is still {outcome.rollout_state} after {within_s:.0f}s"
            return
        await asyncio.sleep(1.0)


# -- what the controller stored, at the end of the run ------------------------------------------


@dataclass
class SiteAccuracy:
    """One site's accuracy on its labelled records (stored whole at the controller) by phase."""

    site: str
    drifted_at: float | None  # Unix time
    recovered_at: float | None  # Unix time the site's rollout ended (succeeded)
    before_drift: float | None = None
    after_drift: float | None = None
    after_recovery: float | None = None
    labelled_after_recovery: int = 0
    #: Per window of `series_s` seconds from the stream's start: accuracy (None: no labelled record).
    series: list[float | None] = field(default_factory=list)


def labelled_records(database_url: str, since: float) -> list[tuple[str, float, str, bool]]:
    """``(site, ts, version, correct)`` of every record stored whole with a label, since ``since``."""
    from sqlmodel import Session, col, select

    from cloud_controller.db import make_engine
    from cloud_controller.label_models import RecordLabel
    from cloud_controller.models import Telemetry

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            rows = session.exec(
                select(
                    Telemetry.site_id,
                    Telemetry.ts,
                    Telemetry.model_version,
                    Telemetry.predicted,
                    RecordLabel.label,
                )
                .join(
                    RecordLabel,
                    (col(RecordLabel.device_id) == col(Telemetry.device_id))
                    & (col(RecordLabel.seq) == col(Telemetry.seq)),
                )
                .where(col(Telemetry.ts) >= since, col(Telemetry.model_id) == MODEL_ID)
            ).all()
        return [(s, float(ts), str(v), p == label) for s, ts, v, p, label in rows if p is not None]
    finally:
        engine.dispose()


def site_accuracy(
    records: list[tuple[str, float, str, bool]],
    site: str,
    *,
    origin: float,
    end: float,
    drifted_at: float | None,
    recovered_at: float | None,
    series_s: float,
) -> SiteAccuracy:
    """A site's accuracy before its drift, between the drift and its recovery, and after recovery."""
    mine = [(ts, ok) for s, ts, _, ok in records if s == site]

    def share(lo: float, hi: float) -> tuple[float | None, int]:
        hits = [ok for ts, ok in mine if lo <= ts < hi]
        return (round(sum(hits) / len(hits), 4) if hits else None), len(hits)

    out = SiteAccuracy(site, drifted_at, recovered_at)
    out.before_drift = share(origin, drifted_at if drifted_at is not None else float("inf"))[0]
    if drifted_at is not None:
        out.after_drift = share(drifted_at, recovered_at if recovered_at is not None else float("inf"))[0]
    if recovered_at is not None:
        out.after_recovery, out.labelled_after_recovery = share(recovered_at, float("inf"))
    windows = max(1, int((end - origin) // series_s) + 1)
    out.series = [share(origin + i * series_s, origin + (i + 1) * series_s)[0] for i in range(windows)]
    return out


def alarms(controller: ControllerProcess) -> list[dict[str, Any]]:
    """Every alarm of the model, as the controller's API lists them."""
    with controller.client("viewer") as client:
        answer = client.get("/api/v1/alarms", params={"model_id": MODEL_ID})
        if answer.status_code != 200:
            raise SimError(f"cannot list alarms: {answer.status_code} {answer.text}")
        return list(answer.json()["data"])


def verdicts(
    learning: Learning,
    jobs: list[JobOutcome],
    fired: list[dict[str, Any]],
    accuracy: dict[str, SiteAccuracy],
    site_names: list[str],
    *,
    complete: bool,
) -> tuple[dict[str, bool | None], dict[str, list[str]]]:
    """The learning loop's invariants, and what failed each; None when the run cannot tell (the
    controller may not have every labelled record when the observer's view was incomplete)."""
    problems: dict[str, list[str]] = {"alarms": [], "jobs": [], "recovery": []}
    for index, kind in learning.expect_alarms:
        site = site_names[index % len(site_names)]
        if not any(a["site_id"] == site and a["kind"] == kind for a in fired):
            problems["alarms"].append(f"no {kind} alarm fired at {site}")
    for job in jobs:
        if not job.rolled_out():
            why = job.error or f"job {job.state}, rollout {job.rollout_state or 'none'}"
            problems["jobs"].append(f"{job.kind} job for {job.site}: {why}")
    unjudged = False
    for site, acc in sorted(accuracy.items()):
        if acc.drifted_at is None:
            continue
        if acc.recovered_at is None:
            problems["recovery"].append(f"{site} drifted and no job's rollout to it ended")
        elif acc.after_recovery is None:
            unjudged = True  # no labelled record came back after the rollout: nothing to judge by
        elif acc.after_recovery < learning.min_recovered_accuracy:
            problems["recovery"].append(
                f"{site}: {acc.after_recovery:.3f} after recovery < {learning.min_recovered_accuracy}"
                f" ({acc.labelled_after_recovery} labelled records)"
            )
    recovered: bool | None = not problems["recovery"]
    if recovered and (unjudged or not complete):
        recovered = None
    return (
        {
            "every_expected_alarm_fired": not problems["alarms"],
            "every_job_succeeded_and_rolled_out": not problems["jobs"],
            "accuracy_recovered_at_every_drifted_site": recovered,
        },
        problems,
    )


@dataclass
class LearningResult:
    """The learning loop's part of a run's result."""

    jobs: list[JobOutcome]
    alarms: list[dict[str, Any]]
    accuracy: dict[str, SiteAccuracy]
    verdicts: dict[str, bool | None]
    problems: dict[str, list[str]]
    series_s: float
    #: The timeline's own rollouts (before the drift, in a scenario that has both): on the same axis.
    rollouts: list[RolloutOutcome] = field(default_factory=list)

    def marks(self, origin: float) -> list[dict[str, Any]]:
        """Each step of the story on the run's time axis (seconds from the stream's start), in order:
        the timeline's rollouts (waves, end), drift, alarm fired / resolved, each job step's start
        and end, the jobs' rollout waves and end."""
        out: list[dict[str, Any]] = []

        def mark(at: float | None, what: str, label: str, site: str) -> None:
            if at is not None:
                out.append({"t": round(at - origin, 2), "what": what, "label": label, "site": site})

        for rollout in self.rollouts:
            name = rollout.version + (f" ({rollout.defect})" if rollout.defect else "")
            for wave in rollout.waves:
                label = f"{name} wave {wave.get('index', 0) + 1} ({wave.get('target', '?')} devices)"
                mark(wave.get("started_at"), "ota_wave", label, "all sites")
            mark(rollout.ended_at, "ota_end", f"{name} rollout {rollout.state}", "all sites")

        for site, acc in self.accuracy.items():
            mark(acc.drifted_at, "drift", f"{site} drifts", site)
        for alarm in self.alarms:
            what = f"{alarm['kind']} alarm {alarm['id']} at {alarm['site_id']}"
            mark(alarm["fired_at"], "alarm_fired", f"{what} fired ({alarm['value']:.3g})", alarm["site_id"])
            mark(alarm["resolved_at"], "alarm_resolved", f"{what} resolved", alarm["site_id"])
        for job in self.jobs:
            mark(job.created_at, "job_queued", f"{job.kind} job {job.job_id} queued", job.site)
            # A step ends when the next starts: its start is its mark, and the job's end closes the last.
            for step in job.steps:
                mark(step["started_at"], "job_step", f"{job.kind} {step['name']} started", job.site)
            mark(job.ended_at, "job_end", f"{job.kind} job {job.state}: {job.outcome or job.error}", job.site)
            for wave in job.rollout_waves:
                label = f"{job.version} wave {wave.get('index', 0) + 1} ({wave.get('target', '?')} devices)"
                mark(wave.get("started_at"), "rollout_wave", label, job.site)
            mark(job.rollout_ended_at, "rollout_end", f"{job.version} rollout {job.rollout_state}", job.site)
        return sorted(out, key=lambda m: m["t"])

    def recovery_seconds(self, site: str) -> float | None:
        """From the site's first alarm after its drift to the end of the rollout that recovered it
        (the rollout ends when its last wave's devices all promoted): None when either is missing."""
        acc = self.accuracy.get(site)
        if acc is None or acc.drifted_at is None or acc.recovered_at is None:
            return None
        fired = [
            a["fired_at"]
            for a in self.alarms
            if a["site_id"] == site and a["fired_at"] is not None and a["fired_at"] >= acc.drifted_at
        ]
        return round(acc.recovered_at - min(fired), 1) if fired else None

    def summary(self, origin: float) -> dict[str, Any]:
        return {
            "jobs": [job.as_dict() for job in self.jobs],
            "alarms": self.alarms,
            "accuracy_per_site": {
                site: {
                    "accuracy_before_drift": acc.before_drift,
                    "accuracy_after_drift": acc.after_drift,
                    "accuracy_after_recovery": acc.after_recovery,
                    "labelled_after_recovery": acc.labelled_after_recovery,
                    "drifted_at_s": None if acc.drifted_at is None else round(acc.drifted_at - origin, 2),
                    "recovered_at_s": None
                    if acc.recovered_at is None
                    else round(acc.recovered_at - origin, 2),
                    "recovery_seconds": self.recovery_seconds(site),
                }
                for site, acc in self.accuracy.items()
            },
            "accuracy_series_s": self.series_s,
            "accuracy_series": {site: acc.series for site, acc in self.accuracy.items()},
            "marks": self.marks(origin),
            "problems": {k: v for k, v in self.problems.items() if v},
        }
