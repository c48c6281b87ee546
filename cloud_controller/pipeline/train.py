"""``train``: the recipe's network trained centrally on the job's training split (in the worker).

Trained in chunks of a few epochs with the standardisation of the first: the job's cancel and lease
are checked between chunks, so a cancel stops a long training within one chunk.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from cloud_controller.pipeline.base import StepContext, StepFailed
from cloud_controller.pipeline.dataset import TRAIN, VALIDATION, load
from cloud_controller.pipeline.recipe import load_recipe
from fleet_learning.exceptions import LearningError
from fleet_learning.recipes import build_model
from fleet_learning.trainer import Standardisation, TrainStats, evaluate, fit

WEIGHTS, STANDARDISATION = "weights.pt", "standardisation.json"
#: Epochs between two checks of cancel and lease.
CHUNK = 5


class TrainStep:
    name = "train"
    #: Steps whose files (in the job directory) this one reads.
    needs: tuple[str, ...] = ("dataset",)

    def run(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.kind == "federated":
            from cloud_controller.pipeline.federated import train_federated

            return train_federated(ctx)
        recipe = load_recipe(ctx.engine, ctx.model_id)
        x, y = load(ctx.workdir / "dataset" / TRAIN)
        # Reported on the validation split: the test split is evaluate's alone.
        hx, hy = load(ctx.workdir / "dataset" / VALIDATION)
        hp = recipe.hyperparameters
        epochs = ctx.params.epochs or hp.epochs
        try:
            model = build_model(recipe)
            std: Standardisation | None = None
            done, seconds = 0, 0.0
            stats: TrainStats | None = None
            while done < epochs:
                ctx.check()
                n = min(CHUNK, epochs - done)
                # Each chunk its own seed: the same permutations are not replayed chunk after chunk.
                stats = fit(
                    model, x, y, hp.model_copy(update={"seed": hp.seed + done}), standardisation=std, epochs=n
                )
                std, done, seconds = stats.standardisation, done + n, seconds + stats.seconds
                ctx.log(f"epoch {done}/{epochs}: loss {stats.loss:.4f}")
            assert stats is not None and std is not None
            held = evaluate(model, hx, hy, standardisation=std)
        except LearningError as exc:
            raise StepFailed(f"training failed: {exc}") from None
        out = ctx.dir(self.name)
        torch.save(model.state_dict(), out / WEIGHTS)
        (out / STANDARDISATION).write_text(
            json.dumps({"mean": std.mean.tolist(), "scale": std.scale.tolist()})
        )
        ctx.log(
            f"validation accuracy in torch {held.accuracy:.4f} on {held.n} records ({seconds:.1f} s training)"
        )
        return {
            "mode": "central",
            "recipe": recipe.model_dump(mode="json"),
            "epochs": epochs,
            "samples": stats.n,
            "loss": stats.loss,
            "validation_accuracy_torch": held.accuracy,
            "seconds": round(seconds, 2),
            "weights_sha256": hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest(),
        }

    def ready(self, ctx: StepContext) -> bool:
        done = ctx.artifacts.get(self.name)
        weights = ctx.workdir / self.name / WEIGHTS
        return (
            bool(done)
            and weights.exists()
            and hashlib.sha256(weights.read_bytes()).hexdigest() == done["weights_sha256"]
        )


def standardisation(ctx: StepContext) -> Standardisation:
    import numpy as np

    data = json.loads((ctx.workdir / "train" / STANDARDISATION).read_text())
    return Standardisation(np.asarray(data["mean"], np.float32), np.asarray(data["scale"], np.float32))
