"""``train`` of a federated job: Flower rounds (`fleet_learning.federated.run_simulation`) in the worker.

Each device whose labelled records are in the job's training split is one client of Flower's
simulation engine, holding only its own records; the server evaluates every round's global model
on the job's validation split (the best round is picked there, never on the test split that
``evaluate`` judges the candidate on), with the input standardisation fitted on the training split,
and each round is written to ``job_round`` as soon as it ends (the
dashboard draws them while the job runs). The result is weights and a standardisation, as central
training leaves them, so that ``build`` and the steps after it do not know how the model was trained.

With ``engine: deployment`` the rounds run on a real federation instead
(`fleet_learning.deployment.run_deployed`): edgefleet's ServerApp on the SuperLink the job names,
the devices' SuperNodes training on their own training buffers, so no raw input of the rounds
reaches the cloud; the uploaded records serve only to fit the standardisation (training split) and
to judge each round (validation split), as in the simulation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from sqlalchemy import delete
from sqlmodel import Session

from cloud_controller.job_models import ENGINE_FIELDS, FederatedParams, Job, JobRound
from cloud_controller.pipeline.base import Cancelled, StepContext, StepFailed
from cloud_controller.pipeline.dataset import TRAIN, VALIDATION, load, load_devices
from cloud_controller.pipeline.recipe import load_recipe
from fleet_learning.exceptions import LearningError
from fleet_learning.recipes import build_model
from fleet_learning.trainer import Standardisation

WEIGHTS, STANDARDISATION = "weights.pt", "standardisation.json"


def federated_config(params: FederatedParams | None) -> Any:
    """The job's `fleet_learning.FederatedConfig`, or `StepFailed` saying what is wrong with it."""
    from fleet_learning.config import FederatedConfig

    try:
        settings = (params or FederatedParams()).model_dump(exclude=set(ENGINE_FIELDS))
        # The API bounds num_cpus without knowing this worker's cores: never more than it has.
        settings["num_cpus"] = max(1, min(settings["num_cpus"], os.cpu_count() or 1))
        return FederatedConfig.model_validate(settings)
    except ValidationError as exc:
        raise StepFailed(f"the job's federated settings are invalid: {exc}") from None


def train_federated(ctx: StepContext) -> dict[str, Any]:
    from fleet_learning.federated import ClientSpec, run_simulation

    params = ctx.params.federated or FederatedParams()
    config = federated_config(params)
    recipe = load_recipe(ctx.engine, ctx.model_id)
    x, y = load(ctx.workdir / "dataset" / TRAIN)
    devices = load_devices(ctx.workdir / "dataset" / TRAIN)
    # Rounds are judged on the validation split; the test split is evaluate's alone.
    held = load(ctx.workdir / "dataset" / VALIDATION)
    with Session(ctx.engine) as session:  # a re-run starts its rounds again
        session.execute(delete(JobRound).where(JobRound.job_id == ctx.job_id))  # type: ignore[arg-type]
        session.commit()
    torch.manual_seed(recipe.hyperparameters.seed)
    initial = {k: v.detach().clone() for k, v in build_model(recipe).state_dict().items()}
    standardisation = Standardisation.of(x)  # the training split's, as central training fits it
    on_round = _round_recorder(ctx)
    if params.engine == "deployment":
        return _train_deployed(ctx, params, config, recipe, initial, standardisation, held, on_round, len(y))
    sites = ctx.artifacts["dataset"].get("device_sites", {})
    clients = [
        ClientSpec(
            node_id=str(device),
            site=sites.get(str(device), "site"),
            data=(x[devices == device], y[devices == device]),
        )
        for device in sorted(set(devices.tolist()))
    ]
    ctx.log(
        f"{config.strategy} over {len(clients)} clients (devices), up to {config.rounds} rounds, "
        f"{config.local_epochs} local epoch(s), min {config.min_clients} clients"
        + (", hierarchical by site" if config.hierarchical else "")
    )
    try:
        result = run_simulation(
            config,
            recipe,
            initial,
            clients,
            standardisation=standardisation,
            held_out=held,
            on_round=on_round,
        )
    except LearningError as exc:
        ctx.check()  # cancelled: the simulation ended because on_round raised
        raise StepFailed(f"federated training failed: {exc}") from None
    except Cancelled:
        raise
    ctx.check()
    return {
        **_save(ctx, result),
        "recipe": recipe.model_dump(mode="json"),
        "config": config.model_dump(mode="json"),
        "engine": "simulation",
        "clients": len(clients),
        "samples": len(y),
        "validation_records": len(held[1]),
    }


def _train_deployed(
    ctx: StepContext,
    params: FederatedParams,
    config: Any,
    recipe: Any,
    initial: dict[str, torch.Tensor],
    standardisation: Standardisation,
    held: tuple[np.ndarray, np.ndarray],
    on_round: Callable[[Any], None],
    standardisation_records: int,
) -> dict[str, Any]:
    """The rounds on the job's federation: ``flwr run`` on its SuperLink, followed to the result."""
    from fleet_learning.deployment import SuperLink, default_timeout, run_deployed
    from fleet_learning.server_app import ServerJob

    federation = params.federation
    assert federation is not None  # FederatedParams refuses engine deployment without one
    link = SuperLink(federation.superlink, Path(federation.ca_file) if federation.ca_file else None)
    timeout = federation.timeout_s or default_timeout(config.rounds, config.round_timeout_s)
    transport = (
        f"TLS verified with CA {link.ca_file}"
        if link.ca_file is not None
        else "INSECURE: a plain link without TLS, as the job's params say (insecure: true)"
    )
    ctx.log(
        f"{config.strategy} on the federation of SuperLink {link.address} ({transport}), up to "
        f"{config.rounds} rounds, {config.local_epochs} local epoch(s), min {config.min_clients} clients"
        + (", hierarchical by site" if config.hierarchical else "")
        + f"; waiting at most {timeout:.0f} s"
    )
    job = ServerJob(config, recipe, initial, standardisation, held)
    earlier = _earlier_runs(ctx, link.address)

    def started(run_id: int) -> None:
        ctx.log(f"run {run_id} submitted to SuperLink {link.address}")

    try:
        run = run_deployed(
            job,
            link,
            ctx.dir("train") / "federation",
            timeout_s=timeout,
            on_round=on_round,
            on_started=started,
            check=ctx.check,
            earlier_runs=earlier,
            note=ctx.log,
        )
    except LearningError as exc:
        raise StepFailed(f"federated training on SuperLink {link.address} failed: {exc}") from None
    result = run.result
    return {
        **_save(ctx, result),
        "recipe": recipe.model_dump(mode="json"),
        "config": config.model_dump(mode="json"),
        "engine": "deployment",
        "superlink": link.address,
        "tls": link.ca_file is not None,
        "run_id": str(run.run_id),
        # The nodes (devices, or gateways) a round sampled at most; their samples stayed on them.
        "clients": max((r.sampled for r in result.rounds), default=0),
        "samples": max((r.examples for r in result.rounds), default=0),
        "standardisation_records": standardisation_records,
        "validation_records": len(held[1]),
    }


def _earlier_runs(ctx: StepContext, address: str) -> list[int]:
    """Runs this step submitted to ``address`` in an earlier attempt (its step log says so)."""
    with Session(ctx.engine) as session:
        job = session.get(Job, ctx.job_id)
    lines = next((s.get("log", []) for s in (job.steps if job else []) if s.get("name") == "train"), [])
    pattern = re.compile(rf"run (\d+) submitted to SuperLink {re.escape(address)}$")
    return [int(m.group(1)) for line in lines if (m := pattern.search(line))]


def _round_recorder(ctx: StepContext) -> Callable[[Any], None]:
    """Each round into ``job_round`` and the step's log as it ends; then a cancel stops the rounds."""

    def on_round(stats: Any) -> None:
        loss = stats.central_loss if stats.central_loss is not None else stats.loss
        accuracy = stats.central_accuracy if stats.central_accuracy is not None else stats.accuracy
        with Session(ctx.engine) as session:
            session.add(
                JobRound(
                    job_id=ctx.job_id,
                    round=stats.round,
                    loss=_finite(loss),
                    accuracy=_finite(accuracy),
                    sampled=stats.sampled,
                    responded=stats.responded,
                    declined=stats.declined,
                    failed=stats.failed,
                    seconds=stats.seconds,
                )
            )
            session.commit()
        ctx.log(
            f"round {stats.round}: accuracy {accuracy if accuracy is not None else float('nan'):.4f}, "
            f"{stats.responded}/{stats.sampled} clients responded, {stats.failed} failed, "
            f"{stats.declined} declined"
        )
        ctx.check()  # a cancel stops the rounds here

    return on_round


def _save(ctx: StepContext, result: Any) -> dict[str, Any]:
    """The weights and standardisation where ``build`` reads them; what the rounds came to."""
    out = ctx.dir("train")
    torch.save(result.state_dict, out / WEIGHTS)
    (out / STANDARDISATION).write_text(json.dumps({"mean": list(result.mean), "scale": list(result.scale)}))
    ctx.log(
        f"stopped: {result.stopped_because}; best round {result.best_round}, validation accuracy "
        f"{result.initial_accuracy} -> {result.final_accuracy}"
    )
    return {
        "mode": "federated",
        "rounds": len(result.rounds),
        "best_round": result.best_round,
        "stopped_because": result.stopped_because,
        "privacy": result.privacy,
        "initial_accuracy": result.initial_accuracy,
        "final_accuracy": result.final_accuracy,
        "seconds": round(result.seconds, 2),
        "weights_sha256": hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest(),
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and np.isfinite(value) else None
