"""edgefleet's Flower ``ServerApp``: one federated job, from initial weights to the best global model.

Two ways in:
- in process (simulation): :func:`make_server_app` closes over a :class:`ServerJob` and hands the
  :class:`FederatedResult` back through a list;
- deployed (``flwr run`` against a SuperLink): the module-level ``app`` reads a job directory named
  by the run config ``job-dir`` (``job.json``, ``initial.pt``, optional ``held_out.npz``, see
  :func:`write_job_dir`), appends each round to ``rounds.jsonl`` as it ends and writes
  ``result.pt`` + ``result.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fleet_learning import messages as m
from fleet_learning.config import FederatedConfig
from fleet_learning.recipes import TrainingRecipe, build_model
from fleet_learning.rounds import EvaluateFn, RoundStats, run_rounds
from fleet_learning.trainer import Standardisation, evaluate

JOB_FILE, INITIAL_FILE, HELD_OUT_FILE = "job.json", "initial.pt", "held_out.npz"
RESULT_FILE, RESULT_STATE_FILE, ROUNDS_FILE = "result.json", "result.pt", "rounds.jsonl"


@dataclass
class ServerJob:
    """Everything the server side of one federated job needs."""

    config: FederatedConfig
    recipe: TrainingRecipe
    initial_state: dict[str, torch.Tensor]
    #: The global input standardisation (the production bundle's mean/scale): fixed for the job.
    standardisation: Standardisation
    #: Raw features and labels the server evaluates each round's global model on, if any.
    held_out: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class FederatedResult:
    """What a federated job produced: weights + the standardisation they expect + the record."""

    state_dict: dict[str, torch.Tensor]
    mean: list[float]
    scale: list[float]
    rounds: list[RoundStats]
    privacy: dict
    stopped_because: str
    best_round: int
    initial_accuracy: float | None
    final_accuracy: float | None
    seconds: float
    config: FederatedConfig = field(default_factory=FederatedConfig)

    def summary(self) -> dict:
        """JSON-ready: everything but the weights."""
        return {
            "mean": self.mean,
            "scale": self.scale,
            "rounds": [r.as_dict() for r in self.rounds],
            "privacy": self.privacy,
            "stopped_because": self.stopped_because,
            "best_round": self.best_round,
            "initial_accuracy": self.initial_accuracy,
            "final_accuracy": self.final_accuracy,
            "seconds": round(self.seconds, 2),
            "config": self.config.model_dump(mode="json"),
        }


def train_config(job: ServerJob) -> ConfigRecord:
    """What every sampled node receives with the global weights."""
    config = job.config
    return ConfigRecord(
        {
            m.RECIPE: job.recipe.model_dump_json(),
            m.MEAN: job.standardisation.mean.astype(float).tolist(),
            m.SCALE: job.standardisation.scale.astype(float).tolist(),
            m.LOCAL_EPOCHS: config.local_epochs,
            m.MIN_SAMPLES: config.min_samples,
            m.MAX_SAMPLES: config.max_samples,
            m.GROUPS: ",".join(config.groups),
            m.ROUND_TIMEOUT: config.round_timeout_s,
        }
    )


def central_evaluation(job: ServerJob) -> EvaluateFn | None:
    if job.held_out is None:
        return None
    x, y = job.held_out
    model = build_model(job.recipe)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> tuple[float, float]:
        model.load_state_dict(arrays.to_torch_state_dict())
        stats = evaluate(model, x, y, standardisation=job.standardisation)
        return stats.accuracy, stats.loss

    return evaluate_fn


def run_job(
    grid: Grid, job: ServerJob, on_round: Callable[[RoundStats], None] | None = None
) -> FederatedResult:
    """Run the job's rounds on ``grid`` and return the best global model with the round records."""
    started = time.monotonic()
    evaluate_fn = central_evaluation(job)
    initial = ArrayRecord(job.initial_state)
    initial_accuracy = evaluate_fn(0, initial)[0] if evaluate_fn else None
    outcome = run_rounds(
        grid, job.config, initial, train_config(job), evaluate_fn=evaluate_fn, on_round=on_round
    )
    best = next((r for r in outcome.rounds if r.round == outcome.best_round), None)
    return FederatedResult(
        state_dict=outcome.arrays.to_torch_state_dict(),
        mean=job.standardisation.mean.astype(float).tolist(),
        scale=job.standardisation.scale.astype(float).tolist(),
        rounds=outcome.rounds,
        privacy=outcome.privacy,
        stopped_because=outcome.stopped_because,
        best_round=outcome.best_round,
        initial_accuracy=initial_accuracy,
        final_accuracy=best.score if best else None,
        seconds=time.monotonic() - started,
        config=job.config,
    )


def make_server_app(
    job: ServerJob, results: list[FederatedResult], on_round: Callable[[RoundStats], None] | None = None
) -> ServerApp:
    """A ServerApp for one in-process job; its result is appended to ``results``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        results.append(run_job(grid, job, on_round))

    return app


def write_job_dir(directory: Path, job: ServerJob) -> Path:
    """The files the deployed ServerApp reads (``--run-config 'job-dir="<directory>"'``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / JOB_FILE).write_text(
        json.dumps(
            {
                "config": job.config.model_dump(mode="json"),
                "recipe": job.recipe.model_dump(mode="json"),
                "mean": job.standardisation.mean.astype(float).tolist(),
                "scale": job.standardisation.scale.astype(float).tolist(),
            }
        )
    )
    torch.save(job.initial_state, directory / INITIAL_FILE)
    if job.held_out is not None:
        np.savez(directory / HELD_OUT_FILE, x=job.held_out[0], y=job.held_out[1])
    return directory


def read_job_dir(directory: Path) -> ServerJob:
    spec = json.loads((directory / JOB_FILE).read_text())
    held_out = None
    if (directory / HELD_OUT_FILE).is_file():
        with np.load(directory / HELD_OUT_FILE, allow_pickle=False) as data:
            held_out = (data["x"].astype(np.float32), data["y"].astype(np.int64))
    return ServerJob(
        config=FederatedConfig.model_validate(spec["config"]),
        recipe=TrainingRecipe.model_validate(spec["recipe"]),
        initial_state=torch.load(directory / INITIAL_FILE, map_location="cpu", weights_only=True),
        standardisation=Standardisation(
            np.asarray(spec["mean"], np.float32), np.asarray(spec["scale"], np.float32)
        ),
        held_out=held_out,
    )


#: What ``flwr run`` loads on the SuperLink side (``serverapp = "fleet_learning.server_app:app"``).
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    directory = Path(str(context.run_config["job-dir"]))
    job = read_job_dir(directory)
    (directory / ROUNDS_FILE).unlink(missing_ok=True)

    def record(stats: RoundStats) -> None:
        with (directory / ROUNDS_FILE).open("a") as out:
            out.write(json.dumps(stats.as_dict()) + "\n")

    result = run_job(grid, job, on_round=record)
    torch.save(result.state_dict, directory / RESULT_STATE_FILE)
    (directory / RESULT_FILE).write_text(json.dumps(result.summary()))
