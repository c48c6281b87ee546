"""`fleet_learning.deployment.run_deployed` against a SuperLink played by the test: how it follows a
run (rounds as they are written, the result), and when it stops one (cancel, timeout) or does not
(the run failed on its own). The real thing is in tests/controller/test_jobs_deployment.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fleet_learning import deployment
from fleet_learning.config import FederatedConfig
from fleet_learning.deployment import RunEnded, RunFailed, SuperLink, run_deployed
from fleet_learning.recipes import TrainingRecipe
from fleet_learning.rounds import RoundStats
from fleet_learning.server_app import RESULT_FILE, RESULT_STATE_FILE, ROUNDS_FILE, ServerJob
from fleet_learning.trainer import Standardisation


class FakeSuperLink:
    """Answers ``flwr ls`` / ``flwr stop`` for run 7; ``step`` plays the ServerApp at each status."""

    def __init__(self, work: Path, statuses: list[str], step: Callable[[Path, int], None] | None = None):
        self.work, self.statuses, self.step = work, statuses, step
        self.stopped: list[int] = []
        self.asked = 0

    def job_dir(self) -> Path:
        (path,) = self.work.glob("job-*")
        return path

    def status(self, run_id: int) -> tuple[str, str]:
        if self.step is not None:
            self.step(self.job_dir(), self.asked)
        status = self.statuses[min(self.asked, len(self.statuses) - 1)]
        self.asked += 1
        return status, "ServerApp failed with exception: 1 node(s) online, the job needs 2; giving up"

    def stop(self, run_id: int) -> bool:
        self.stopped.append(run_id)
        return True


@pytest.fixture
def job(recipe: TrainingRecipe, initial_state: dict[str, torch.Tensor]) -> ServerJob:
    std = Standardisation(np.zeros(4, np.float32), np.ones(4, np.float32))
    return ServerJob(FederatedConfig(rounds=2), recipe, initial_state, std)


def _play(monkeypatch: pytest.MonkeyPatch, fake: FakeSuperLink) -> None:
    monkeypatch.setattr(deployment, "_submit", lambda *_: 7)
    monkeypatch.setattr(deployment.FlwrCli, "status", lambda _cli, run_id: fake.status(run_id))
    monkeypatch.setattr(deployment.FlwrCli, "stop", lambda _cli, run_id: fake.stop(run_id))


def _round(n: int) -> dict:
    return RoundStats(round=n, sampled=2, responded=2, declined=0, failed=0, aggregated=True).as_dict()


def _run(job: ServerJob, work: Path, **kwargs: object) -> deployment.DeployedRun:
    args: dict = {"timeout_s": 30.0, "poll_s": 0.01, "status_every_s": 0.0, **kwargs}
    return run_deployed(job, SuperLink("127.0.0.1:9093", None), work, **args)


def test_rounds_are_handed_on_as_written_and_the_result_is_the_run_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: ServerJob
) -> None:
    work = tmp_path / "work"

    def server_app(job_dir: Path, asked: int) -> None:
        with (job_dir / ROUNDS_FILE).open("a") as out:
            if asked == 0:
                out.write(json.dumps(_round(1)) + "\n" + json.dumps(_round(2))[:20])  # round 2 half written
            elif asked == 1:
                out.write(json.dumps(_round(2))[20:] + "\n")
            else:
                torch.save(job.initial_state, job_dir / RESULT_STATE_FILE)
                summary = {
                    "mean": [0.0] * 4,
                    "scale": [1.0] * 4,
                    "rounds": [_round(1), _round(2)],
                    "privacy": {},
                    "stopped_because": "ran 2 rounds",
                    "best_round": 2,
                    "initial_accuracy": 0.3,
                    "final_accuracy": 0.9,
                    "seconds": 1.0,
                }
                (job_dir / RESULT_FILE).write_text(json.dumps(summary))

    fake = FakeSuperLink(work, ["running"], server_app)
    _play(monkeypatch, fake)
    seen: list[tuple[int, int]] = []
    run = _run(job, work, on_round=lambda stats: seen.append((stats.round, fake.asked)))

    assert seen == [(1, 1), (2, 2)], "each round once, as soon as its line is whole"
    assert (run.run_id, run.result.best_round, run.result.final_accuracy) == (7, 2, 0.9)
    assert fake.stopped == []
    config = (work / "flwr-home" / "config.toml").read_text()
    assert 'address = "127.0.0.1:9093"' in config and "insecure = true" in config


def test_a_check_that_raises_stops_the_run_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: ServerJob
) -> None:
    fake = FakeSuperLink(tmp_path, ["running"])
    _play(monkeypatch, fake)

    class Cancelled(Exception):
        pass

    def check() -> None:
        if fake.asked >= 2:
            raise Cancelled("cancelled while running")

    with pytest.raises(Cancelled):
        _run(job, tmp_path, check=check)
    assert fake.stopped == [7]


def test_a_run_past_its_timeout_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: ServerJob
) -> None:
    fake = FakeSuperLink(tmp_path, ["running"])
    _play(monkeypatch, fake)
    with pytest.raises(RunFailed, match=r"run 7 did not end within 0 s \(0 round\(s\) done\): stopped"):
        _run(job, tmp_path, timeout_s=0.3, status_every_s=0.05)
    assert fake.stopped == [7]


def test_a_run_that_failed_on_the_superlink_says_why_and_is_not_stopped_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: ServerJob
) -> None:
    fake = FakeSuperLink(tmp_path, ["running", "finished:failed"])
    _play(monkeypatch, fake)
    with pytest.raises(
        RunEnded, match="run 7 failed on the SuperLink: ServerApp failed with exception: 1 node"
    ):
        _run(job, tmp_path)
    assert fake.stopped == []


def test_a_run_of_an_earlier_attempt_still_going_is_stopped_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: ServerJob
) -> None:
    statuses = {3: "finished:completed", 4: "running"}
    stopped: list[int] = []
    monkeypatch.setattr(deployment.FlwrCli, "status", lambda _cli, run_id: (statuses[run_id], ""))
    monkeypatch.setattr(deployment.FlwrCli, "stop", lambda _cli, run_id: stopped.append(run_id) or True)
    monkeypatch.setattr(deployment, "_submit", lambda *_: (_ for _ in ()).throw(RunFailed("unreachable")))
    notes: list[str] = []
    with pytest.raises(RunFailed, match="unreachable"):
        _run(job, tmp_path, earlier_runs=[3, 4], note=notes.append)
    assert stopped == [4] and notes == ["run 4 of an earlier attempt was running: stopped"]


def test_a_ca_file_that_is_no_certificate_is_refused_before_flwr_reads_it(
    tmp_path: Path, job: ServerJob
) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$salt$hash:19000::::::\n")
    with pytest.raises(RunFailed, match=f"the SuperLink's CA file {secret} holds no PEM certificate"):
        run_deployed(job, SuperLink("127.0.0.1:9093", secret), tmp_path / "work", timeout_s=5)
    with pytest.raises(RunFailed, match="cannot read the SuperLink's CA file"):
        run_deployed(job, SuperLink("127.0.0.1:9093", tmp_path / "nope.pem"), tmp_path / "work", timeout_s=5)
