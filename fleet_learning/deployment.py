"""One federated job on a real federation: edgefleet's Flower App run on a SuperLink by ``flwr run``.

The cloud's SuperLink has the fleet's SuperNodes connected (beside each agent, reading its training
buffer; or a site gateway aggregating its devices): :func:`run_deployed` writes the job directory
(:func:`~fleet_learning.server_app.write_job_dir`), submits the run through the SuperLink's Control
API with ``flwr run fleet_learning/flower_app`` under an ``FLWR_HOME`` of its own (its config.toml
names only that SuperLink and its CA), then follows the run: every round the ServerApp appends to
``rounds.jsonl`` is handed to ``on_round`` as it appears, ``flwr ls`` says whether the run failed or
was stopped, and ``result.pt`` + ``result.json`` are the outcome. It never waits past its timeout,
and a ``check`` that raises (the job was cancelled, or its worker is stopping) stops the run on the
SuperLink (``flwr stop``) before the exception goes on.

The ServerApp runs on the SuperLink's side and reads the job directory there: the SuperLink must see
it at the same path (the same host, or a volume both mount at that path).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from fleet_learning.exceptions import LearningError
from fleet_learning.rounds import RoundStats
from fleet_learning.server_app import (
    RESULT_FILE,
    RESULT_STATE_FILE,
    ROUNDS_FILE,
    FederatedResult,
    ServerJob,
    write_job_dir,
)

APP_DIR = Path(__file__).resolve().parent / "flower_app"
#: The name of the SuperLink in the run's own config.toml.
CONNECTION = "fleet"
#: Seconds a ``flwr`` command may take (connect, package and submit the app, or one query).
COMMAND_TIMEOUT_S = 120.0

log = logging.getLogger(__name__)
_ROUND_FIELDS = {f.name for f in fields(RoundStats)}


class RunFailed(LearningError):
    """The run could not start, failed on the SuperLink, was stopped, or did not end in time."""


class RunEnded(RunFailed):
    """The run ended on the SuperLink without a result (failed, stopped): nothing left to stop."""


@dataclass(frozen=True)
class SuperLink:
    """A SuperLink's Control API (``host:port``) and the CA of its TLS certificate (None: plain link)."""

    address: str
    ca_file: Path | None

    def check_ca(self) -> None:
        """A readable PEM certificate, or `RunFailed` saying what is wrong (before flwr reads it)."""
        if self.ca_file is None:
            return
        try:
            head = self.ca_file.read_bytes()[: 1 << 20]
        except OSError as exc:
            raise RunFailed(
                f"cannot read the SuperLink's CA file {self.ca_file}: {exc.strerror or exc}"
            ) from None
        if b"-----BEGIN CERTIFICATE-----" not in head:
            raise RunFailed(f"the SuperLink's CA file {self.ca_file} holds no PEM certificate")


class FlwrCli:
    """The ``flwr`` command against one SuperLink, with an ``FLWR_HOME`` of its own."""

    def __init__(self, link: SuperLink, home: Path) -> None:
        self.link = link
        home.mkdir(parents=True, exist_ok=True)
        transport = (
            "insecure = true"
            if link.ca_file is None
            else f"root-certificates = {json.dumps(str(link.ca_file))}"
        )
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f"address = {json.dumps(link.address)}\n{transport}\n"
        )
        self.env = {
            **os.environ,
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
        self.flwr = str(Path(sys.executable).parent / "flwr")

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [self.flwr, *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def call(self, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> dict:
        """Run ``flwr ARGS --format json`` to its end; its JSON answer (``success`` false: `RunFailed`)."""
        process = self.start(*args, "--format", "json")
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise RunFailed(
                f"flwr {args[0]} got no answer from SuperLink {self.link.address} in {timeout:.0f} s"
            ) from None
        return self.answer(args[0], process.returncode, out, err)

    def answer(self, command: str, code: int, out: str, err: str) -> dict:
        try:
            answer = json.loads(out)
        except json.JSONDecodeError:
            raise RunFailed(
                f"flwr {command} against SuperLink {self.link.address} exited {code}: {_tail(out + err)}"
            ) from None
        if not answer.get("success", False):
            raise RunFailed(f"flwr {command} on SuperLink {self.link.address}: {_reason(answer)}")
        return answer

    def status(self, run_id: int) -> tuple[str, str]:
        """The run's status (``running``, ``finished:completed``, ...) and its details."""
        answer = self.call("ls", CONNECTION, "--run-id", str(run_id))
        runs = [r for r in answer.get("runs", []) if str(r.get("run-id")) == str(run_id)]
        if not runs:
            raise RunFailed(f"SuperLink {self.link.address} does not know run {run_id}")
        return str(runs[0].get("status", "")), str(runs[0].get("status-details", ""))

    def stop(self, run_id: int) -> bool:
        """Ask the SuperLink to stop the run; False (and a warning) if it could not be asked."""
        try:
            self.call("stop", str(run_id), CONNECTION, timeout=60)
        except RunFailed as exc:
            log.warning("run %s not stopped: %s", run_id, exc)
            return False
        return True


def _reason(answer: dict) -> str:
    """flwr's error message without its "Using SuperLink: ..." preamble."""
    message = str(answer.get("error-message") or answer)
    lines = [line for line in message.splitlines() if line.strip() and not line.startswith("Using SuperLink")]
    return _tail(" ".join(lines))


def _tail(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else "..." + text[-limit:]


def default_timeout(rounds: int, round_timeout_s: float) -> float:
    """Each round may wait one round timeout for nodes, one for training, one for evaluation."""
    return rounds * 3 * round_timeout_s + 120.0


class _Rounds:
    """Reads the rounds the ServerApp appends to ``rounds.jsonl``, whole lines only."""

    def __init__(self, path: Path, on_round: Callable[[RoundStats], None] | None) -> None:
        self.path, self.on_round = path, on_round
        self.offset, self.seen = 0, set[int]()

    def poll(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        for line in data[: end + 1].splitlines():
            if line.strip():
                self.deliver(json.loads(line))

    def deliver(self, record: dict) -> None:
        stats = RoundStats(**{k: v for k, v in record.items() if k in _ROUND_FIELDS})
        if stats.round in self.seen:
            return
        self.seen.add(stats.round)
        if self.on_round is not None:
            self.on_round(stats)


@dataclass
class DeployedRun:
    """What :func:`run_deployed` produced: the job's result and the run on the SuperLink."""

    result: FederatedResult
    run_id: int


def run_deployed(
    job: ServerJob,
    link: SuperLink,
    work: Path,
    *,
    timeout_s: float,
    on_round: Callable[[RoundStats], None] | None = None,
    on_started: Callable[[int], None] | None = None,
    check: Callable[[], None] = lambda: None,
    earlier_runs: Sequence[int] = (),
    note: Callable[[str], None] = log.info,
    poll_s: float = 0.5,
    status_every_s: float = 5.0,
) -> DeployedRun:
    """Run ``job`` on the federation behind ``link``; the best global model and the round records.

    Parameters
    ----------
    job : ServerJob
        Config, recipe, initial weights, standardisation, held-out set (written to ``work/job-*``).
    link : SuperLink
        The SuperLink's Control API and its CA.
    work : Path
        This run's directory (emptied first): ``job-<token>/`` (the ServerApp reads and writes it; a
        name of its own each time, so that a run of an earlier attempt cannot write into this one's)
        and ``flwr-home/``. The SuperLink must see the job directory at the same path.
    timeout_s : float
        The longest this call waits, from submitting to the result; then the run is stopped.
    on_round : callable, optional
        Each round's :class:`RoundStats`, as soon as the ServerApp has written it.
    on_started : callable, optional
        The run's id on the SuperLink, once it is submitted.
    check : callable, optional
        Called while waiting; whatever it raises stops the run (``flwr stop``) and is re-raised.
    earlier_runs : sequence of int
        Runs an earlier attempt of the job submitted (its worker died): stopped first if still going.
    note : callable, optional
        Where to say what happened to the earlier runs.

    Raises
    ------
    RunFailed
        The SuperLink is unreachable or refuses the run, the run failed or was stopped on the
        SuperLink, ended without a result, or did not end within ``timeout_s``.
    """
    link.check_ca()
    deadline = time.monotonic() + timeout_s
    shutil.rmtree(work, ignore_errors=True)
    job_dir = write_job_dir(work / f"job-{uuid.uuid4().hex[:12]}", job)
    cli = FlwrCli(link, work / "flwr-home")
    if link.ca_file is None:
        log.warning("SuperLink %s: plain link (insecure, no TLS) as the job asks", link.address)
    for earlier in earlier_runs:
        _stop_earlier(cli, earlier, note)
        check()
    run_id = _submit(cli, job_dir, deadline, check)
    if on_started is not None:
        on_started(run_id)
    rounds = _Rounds(job_dir / ROUNDS_FILE, on_round)
    try:
        _follow(cli, run_id, job_dir, rounds, deadline, timeout_s, check, poll_s, status_every_s)
        summary = json.loads((job_dir / RESULT_FILE).read_text())
        for record in summary["rounds"]:  # any round the file showed too late
            rounds.deliver(record)
        check()
    except RunEnded:
        raise
    except BaseException:
        cli.stop(run_id)
        raise
    state = torch.load(job_dir / RESULT_STATE_FILE, map_location="cpu", weights_only=True)
    result = FederatedResult(
        state_dict=state,
        mean=summary["mean"],
        scale=summary["scale"],
        rounds=[RoundStats(**{k: v for k, v in r.items() if k in _ROUND_FIELDS}) for r in summary["rounds"]],
        privacy=summary["privacy"],
        stopped_because=summary["stopped_because"],
        best_round=summary["best_round"],
        initial_accuracy=summary["initial_accuracy"],
        final_accuracy=summary["final_accuracy"],
        seconds=summary["seconds"],
        config=job.config,
    )
    return DeployedRun(result, run_id)


def _stop_earlier(cli: FlwrCli, run_id: int, note: Callable[[str], None]) -> None:
    try:
        status, _ = cli.status(run_id)
    except RunFailed as exc:
        note(f"run {run_id} of an earlier attempt: status unknown ({exc})")
        return
    if status.startswith("finished"):
        return
    stopped = cli.stop(run_id)
    note(
        f"run {run_id} of an earlier attempt was {status}: "
        + ("stopped" if stopped else "could not be stopped")
    )


def _submit(cli: FlwrCli, job_dir: Path, deadline: float, check: Callable[[], None]) -> int:
    """``flwr run``: the run's id. A ``check`` that raises meanwhile waits (30 s at most) for flwr to
    answer, so that a run it submitted is stopped rather than left running."""
    output = job_dir.parent / "flwr-run.out"
    with output.open("w+") as out:  # a file, not a pipe: a chatty flwr cannot block on a full pipe
        process = subprocess.Popen(
            [
                cli.flwr,
                "run",
                str(APP_DIR),
                CONNECTION,
                "--run-config",
                f"job-dir={json.dumps(str(job_dir))}",
                "--format",
                "json",
            ],
            env=cli.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        started = time.monotonic()
        limit = min(deadline, started + COMMAND_TIMEOUT_S)
        stopping: BaseException | None = None
        while process.poll() is None:
            if time.monotonic() > limit:
                process.kill()
                process.wait()
                if stopping is not None:
                    raise stopping
                raise RunFailed(
                    f"flwr run got no answer from SuperLink {cli.link.address} within"
                    f" {time.monotonic() - started:.0f} s"
                )
            if stopping is None:
                try:
                    check()
                except BaseException as exc:  # re-raised once the run is stopped
                    stopping = exc
                    limit = min(limit, time.monotonic() + 30)
            time.sleep(0.2)
        out.seek(0)
        text = out.read()
    # The JSON answer starts a line (flwr may print warnings before it).
    found = re.search(r"^\{", text, re.MULTILINE)
    start = found.start() if found else len(text)
    try:
        answer = cli.answer("run", process.returncode, text[start:], text[:start])
    except RunFailed:
        if stopping is not None:
            raise stopping from None
        raise
    run_id = int(answer["run-id"])
    if stopping is not None:
        cli.stop(run_id)
        raise stopping
    return run_id


def _follow(
    cli: FlwrCli,
    run_id: int,
    job_dir: Path,
    rounds: _Rounds,
    deadline: float,
    timeout_s: float,
    check: Callable[[], None],
    poll_s: float,
    status_every_s: float,
) -> None:
    """Until the result is written: rounds as they come, the run's status now and then."""
    next_status = time.monotonic() + status_every_s
    while True:
        check()
        rounds.poll()
        if _result_written(job_dir):
            return
        if time.monotonic() > deadline:
            raise RunFailed(
                f"run {run_id} did not end within {timeout_s:.0f} s ({len(rounds.seen)} round(s) done):"
                " stopped"
            )
        if time.monotonic() >= next_status:
            status, details = cli.status(run_id)
            next_status = time.monotonic() + status_every_s
            if status.startswith("finished"):
                if status == "finished:completed":  # the summary may reach a shared volume a moment later
                    time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                rounds.poll()
                if _result_written(job_dir):
                    return
                raise RunEnded(_finished_without_result(run_id, status, details, job_dir))
        time.sleep(poll_s)


def _result_written(job_dir: Path) -> bool:
    """The ServerApp writes the weights, then the summary: a summary that parses means both are there."""
    with contextlib.suppress(OSError, json.JSONDecodeError):
        json.loads((job_dir / RESULT_FILE).read_text())
        return (job_dir / RESULT_STATE_FILE).is_file()
    return False


def _finished_without_result(run_id: int, status: str, details: str, job_dir: Path) -> str:
    if status == "finished:failed":
        return f"run {run_id} failed on the SuperLink: {_tail(details) or 'no reason given'}"
    if status == "finished:stopped":
        return f"run {run_id} was stopped on the SuperLink ({_tail(details) or 'flwr stop'})"
    return (
        f"run {run_id} ended ({status}) without a result in {job_dir}: does the SuperLink see the"
        " worker's job directory at the same path?"
    )
