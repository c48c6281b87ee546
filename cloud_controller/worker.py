"""The jobs worker: claims jobs from the controller's database and runs their steps in this process.

One job at a time. While a job runs, a thread renews its lease every third of it and reads whether
the job was cancelled; the steps check both between steps and inside long ones. Each step's state
is written before and after it runs: a worker that dies leaves a running job whose lease passes,
and the next worker to claim it resumes at its first unfinished step (or earlier, when an earlier
step's files are not on its disk). SIGTERM / Ctrl-C puts the running job back in the queue.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import col

from cloud_controller import jobs
from cloud_controller.job_models import Job, JobParams, JobState, StepState
from cloud_controller.pipeline import PIPELINE
from cloud_controller.pipeline.base import (
    Cancelled,
    Interrupted,
    LeaseLost,
    Signals,
    Skip,
    StepContext,
    StepFailed,
)
from cloud_controller.settings import ControllerSettings

log = logging.getLogger("cloud_controller.worker")

#: Lines kept per step log (the newest).
MAX_LOG_LINES = 500


@dataclass
class WorkerOptions:
    worker_id: str
    lease_s: float = 30.0
    poll_s: float = 2.0
    #: Stop after this many jobs (None: run until stopped); with ``once``, after the queue is empty.
    max_jobs: int | None = None
    once: bool = False
    alarms: bool = True
    #: Seconds between two looks for a cancel while a job runs.
    cancel_poll_s: float = 1.0
    #: ``(model_id, every_s)``: a retraining job of the model every so many seconds.
    schedules: tuple[tuple[str, float], ...] = ()


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    def __init__(
        self,
        settings: ControllerSettings,
        engine: Engine,
        options: WorkerOptions,
        *,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.settings, self.engine, self.options = settings, engine, options
        self.say = say or log.info
        self.signals = Signals()

    def stop(self) -> None:
        self.signals.stop.set()

    def run(self) -> int:
        """Claim and run jobs until stopped; the number of jobs run."""
        ran = 0
        self.say(f"worker {self.options.worker_id} polling every {self.options.poll_s:g} s")
        while not self.signals.stop.is_set():
            try:
                job = self._next()
            except Exception as exc:  # the database away a moment: the worker waits, it does not exit
                log.warning("cannot reach the jobs in the database (%s); trying again", exc)
                self.say(f"database error, trying again in {self.options.poll_s:g} s: {exc}")
                self.signals.stop.wait(self.options.poll_s)
                continue
            if job is None:
                if self.options.once:
                    break
                self.signals.stop.wait(self.options.poll_s)
                continue
            try:
                self.run_job(job)
            except Exception:
                # Its state could not be written (the database went away mid-job): the lease passes
                # and the job is resumed, by this worker or another.
                log.exception("job %s stopped without its state written; its lease will pass", job.id)
            ran += 1
            if self.options.max_jobs is not None and ran >= self.options.max_jobs:
                break
        return ran

    def _next(self) -> Job | None:
        """Start the jobs alarms and schedules ask for, then claim one."""
        actor = f"worker:{self.options.worker_id}"
        if self.options.alarms:
            for alarm_id, job_id in jobs.start_for_alarms(self.engine, actor=actor):
                self.say(f"alarm {alarm_id}: job {job_id}")
        for model_id, every_s in self.options.schedules:
            made = jobs.start_scheduled(self.engine, model_id, every_s, actor=actor)
            if made is not None:
                self.say(f"schedule of {model_id} every {every_s:g} s: job {made}")
        return jobs.claim(self.engine, self.options.worker_id, lease_s=self.options.lease_s)

    def run_job(self, job: Job) -> None:
        signals = Signals(stop=self.signals.stop)
        done = threading.Event()
        lease = threading.Thread(target=self._hold, args=(job.id, signals, done), daemon=True, name="lease")
        lease.start()
        try:
            _Run(self, job, signals).run()
        finally:
            done.set()
            lease.join()

    def _hold(self, job_id: str, signals: Signals, done: threading.Event) -> None:
        """Renew the lease every third of it until the job is done, and look for a cancel every
        ``cancel_poll_s`` (a cheap read) in between; tell the steps what was learnt."""
        every = self.options.lease_s / 3
        renewed = time.monotonic()
        while not done.wait(min(every, self.options.cancel_poll_s)):
            try:
                if time.monotonic() - renewed >= every:
                    lease = jobs.renew(
                        self.engine, job_id, self.options.worker_id, lease_s=self.options.lease_s
                    )
                    renewed = time.monotonic()
                else:
                    lease = jobs.Lease(held=True, cancel_requested=jobs.cancel_requested(self.engine, job_id))
            except Exception as exc:  # the database may be away a moment: the lease has margin
                log.warning("job %s: lease not renewed (%s); trying again", job_id, exc)
                continue
            if not lease.held:
                signals.lost.set()
                return
            if lease.cancel_requested:
                signals.cancel.set()


class _Run:
    """One claim of one job: its steps from the first unfinished one."""

    def __init__(self, worker: Worker, job: Job, signals: Signals) -> None:
        self.worker, self.job, self.signals = worker, job, signals
        self.engine, self.me = worker.engine, worker.options.worker_id
        self.steps: list[dict[str, Any]] = [dict(s) for s in job.steps]
        self.artifacts: dict[str, Any] = dict(job.artifacts)
        self.current: dict[str, Any] | None = None

    def run(self) -> None:
        job, say = self.job, self.worker.say
        workdir = Path(self.worker.settings.job_dir) / job.id
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = StepContext(
            job_id=job.id,
            kind=job.kind,
            model_id=job.model_id,
            params=JobParams.model_validate(job.params),
            artifacts=self.artifacts,
            workdir=workdir,
            engine=self.engine,
            settings=self.worker.settings,
            signals=self.signals,
            log=self._log,
        )
        first = self._resume_at(ctx)
        at = self.steps[first]["name"] if first < len(self.steps) else "the end"
        say(f"job {job.id}: {job.kind} of {job.model_id}, attempt {job.attempts}, from {at}")
        try:
            if job.cancel_requested:
                raise Cancelled("cancelled before it ran")
            for entry in self.steps[first:]:
                ctx.check()
                self._start(entry)
                say(f"job {job.id}: {entry['name']} ...")
                try:
                    produced = PIPELINE[entry["name"]].run(ctx)
                except Skip as skip:
                    self._log(str(skip))
                    self._end(StepState.SKIPPED, {"skipped": str(skip)}, outcome=str(skip))
                    say(f"job {job.id}: {entry['name']} skipped: {skip}")
                    continue
                self._end(StepState.SUCCEEDED, produced)
                say(f"job {job.id}: {entry['name']} done")
            self._finish(JobState.SUCCEEDED, None, self._outcome())
            say(f"job {job.id}: succeeded: {self._outcome()}")
        except StepFailed as exc:
            self._fail(f"{self.job.step}: {exc}", exc)
        except Cancelled as exc:
            self._cancel(str(exc))
            say(f"job {job.id}: cancelled at {self.job.step}")
        except Interrupted:
            self._release()
            say(f"job {job.id}: put back in the queue at {self.job.step}")
        except LeaseLost as exc:
            say(f"job {job.id}: {exc}; this worker stops it")
        except Exception as exc:  # a bug or an unexpected failure: the job says what, and the trace is logged
            log.error("job %s failed at %s:\n%s", job.id, self.job.step, traceback.format_exc())
            self._fail(f"{self.job.step}: unexpected {type(exc).__name__}: {exc}", exc)

    def _resume_at(self, ctx: StepContext) -> int:
        """The first unfinished step, or an earlier one whose files a step still to run needs but this
        worker's disk lacks (another worker ran it: its job directory is not shared)."""
        finished = (StepState.SUCCEEDED.value, StepState.SKIPPED.value)
        names = [s["name"] for s in self.steps]
        start = next((i for i, s in enumerate(self.steps) if s["state"] not in finished), len(self.steps))
        while True:
            missing = {
                names.index(need)
                for name in names[start:]
                for need in PIPELINE[name].needs
                if names.index(need) < start and not PIPELINE[need].ready(ctx)
            }
            if not missing:
                return start
            start = min(missing)
            self._log_to(self.steps[start], f"its files are not on this worker ({self.me}): run again")

    # -- writes, each fenced on this worker still holding the job --------------------------------

    def _write(self, **values: Any) -> None:
        if not jobs.write(
            self.engine, self.job.id, self.me, steps=self.steps, artifacts=self.artifacts, **values
        ):
            # Cancelled meanwhile (the API cancels a job whose lease passed) or taken over.
            self.signals.lost.set()
            raise LeaseLost(f"job {self.job.id} is no longer this worker's")

    def _start(self, entry: dict[str, Any]) -> None:
        self.current = entry
        entry.update(state=StepState.RUNNING.value, started_at=time.time(), ended_at=None)
        self.job.step = entry["name"]
        self._write(step=entry["name"])

    def _end(self, state: StepState, produced: dict[str, Any], *, outcome: str | None = None) -> None:
        assert self.current is not None
        self.current.update(state=state.value, ended_at=time.time())
        self.artifacts[self.current["name"]] = produced
        values: dict[str, Any] = {}
        if outcome is not None:
            values["outcome"] = outcome
        self._write(**values)

    def _log(self, line: str) -> None:
        if self.current is None:
            return
        self._log_to(self.current, line)
        self._write()

    def _log_to(self, entry: dict[str, Any], line: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        entry["log"] = [*entry.get("log", []), f"{stamp} {line}"][-MAX_LOG_LINES:]

    def _finish(self, state: JobState, error: str | None, outcome: str | None) -> None:
        now = time.time()
        values: dict[str, Any] = {"state": state.value, "error": error, "ended_at": now, "lease_until": None}
        if outcome is not None:
            values["outcome"] = outcome
        self._write(**values)

    def _fail(self, error: str, exc: BaseException) -> None:
        if self.current is not None and self.current["state"] == StepState.RUNNING.value:
            self._log_to(self.current, f"failed: {exc}")
            self.current.update(state=StepState.FAILED.value, ended_at=time.time())
        try:
            self._finish(JobState.FAILED, error, f"failed at {self.job.step}; production untouched")
        except LeaseLost:
            return
        self.worker.say(f"job {self.job.id}: failed: {error}")

    def _cancel(self, why: str) -> None:
        now = time.time()
        for entry in self.steps:
            if entry["state"] in (StepState.PENDING.value, StepState.RUNNING.value):
                if entry["state"] == StepState.RUNNING.value:
                    self._log_to(entry, why)
                entry.update(state=StepState.CANCELLED.value, ended_at=now)
        try:
            self._finish(JobState.CANCELLED, why, f"cancelled at {self.job.step}")
        except LeaseLost:
            return

    def _release(self) -> None:
        if self.current is not None and self.current["state"] == StepState.RUNNING.value:
            self._log_to(self.current, f"worker {self.me} stopped: back to the queue")
            self.current.update(state=StepState.PENDING.value, started_at=None)
        try:
            # Not an attempt lost: the worker stopped in order.
            self._write(
                state=JobState.QUEUED.value, worker_id=None, lease_until=None, attempts=col(Job.attempts) - 1
            )
        except LeaseLost:
            return

    def _outcome(self) -> str:
        rollout = self.artifacts.get("rollout", {})
        if "rollout_id" in rollout:
            return (
                f"{self.job.model_id}@{self.artifacts['register']['version']} rolling out to group "
                f"{rollout['group']} as {rollout['rollout_id']}"
            )
        return rollout.get("skipped") or "done"
