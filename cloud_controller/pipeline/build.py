"""``build``: `model_compiler.build` of the trained weights: ONNX fp32 and int8, OpenVINO int8 by
NNCF (pruned first when the recipe asks), measured on the validation split (the test split is left
to ``evaluate``), signed with the controller's key."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session

from cloud_controller.pipeline.base import StepContext, StepFailed
from cloud_controller.pipeline.dataset import TRAIN, VALIDATION, load
from cloud_controller.pipeline.train import WEIGHTS, standardisation
from cloud_controller.pipeline.versions import next_version, production
from fleet_learning.recipes import TrainingRecipe, write_compiler_factory
from fleet_protocol.exceptions import SignatureError
from fleet_protocol.signing import load_private_key

TARGETS = ["onnx-fp32", "onnx-int8", "openvino-int8"]
#: Calibration samples for int8 (the compilers take up to 300).
_CALIBRATION = 300


class BuildStep:
    name = "build"
    #: Steps whose files (in the job directory) this one reads.
    needs: tuple[str, ...] = ("dataset", "train")

    def run(self, ctx: StepContext) -> dict[str, Any]:
        from model_compiler.build import BuildRequest, build
        from model_compiler.exceptions import CompilerError

        key = _signing_key(ctx)
        recipe = TrainingRecipe.model_validate(ctx.artifacts["train"]["recipe"])
        out = ctx.dir(self.name)
        previous = ctx.artifacts.get(self.name, {})
        with Session(ctx.engine) as session:
            parent = production(session, ctx.model_id)
            # Kept from a first run: a re-run builds the same version, not the next one.
            version = previous.get("version") or next_version(session, ctx.model_id)
        std = standardisation(ctx)
        x, y = load(ctx.workdir / "dataset" / TRAIN)
        # Measured on the validation split: the test split is evaluate's alone.
        hx, hy = load(ctx.workdir / "dataset" / VALIDATION)
        meta = {"feature_names": np.array(recipe.feature_names), "mean": std.mean, "scale": std.scale}
        np.savez(out / "eval.npz", x=std.apply(hx), y=hy, **meta)
        np.savez(out / "calibration.npz", x=std.apply(x[:_CALIBRATION]), **meta)
        np.savez(out / "train.npz", x=std.apply(x), y=y, **meta)
        spec = write_compiler_factory(recipe, out / "factory")
        bundles = out / "bundles"
        if bundles.exists():
            shutil.rmtree(bundles)

        def progress(step: str, finished: bool) -> None:
            ctx.check()
            if finished:
                ctx.log(f"{step} built")

        prune = recipe.hyperparameters.prune_ratio
        ctx.log(
            f"building {ctx.model_id}@{version}: {', '.join(TARGETS)}"
            + (f", pruned {prune:.0%}" if prune else "")
        )
        try:
            report = build(
                BuildRequest(
                    model=spec,
                    eval_data=out / "eval.npz",
                    out=bundles,
                    key=key,
                    weights=ctx.workdir / "train" / WEIGHTS,
                    calibration=out / "calibration.npz",
                    train_data=out / "train.npz",
                    training_data_sha256=ctx.artifacts["dataset"]["train_sha256"],
                    targets=TARGETS,
                    model_id=ctx.model_id,
                    version=version,
                    parent=f"{parent.model_id}@{parent.version}" if parent else None,
                    prune_ratio=prune,
                    labels=recipe.class_names,
                    anomaly_classes=recipe.anomaly_classes,
                ),
                progress,
            )
        except CompilerError as exc:
            raise StepFailed(f"model_compiler refused the model: {exc}") from None
        for row in report.rows:
            ctx.log(
                f"{row.target}: accuracy {row.accuracy:.4f}, {row.size_bytes / 1024:.1f} KB, "
                f"p95 {row.latency_p95_ms:.3f} ms"
            )
        return {
            "version": version,
            "parent": f"{parent.model_id}@{parent.version}" if parent else None,
            "bundles": {t: str(p.with_suffix(".tar")) for t, p in report.bundles.items()},
            "targets": [r.as_dict() for r in report.rows],
            "pruning": report.pruning,
            "seconds": round(report.seconds, 2),
        }

    def ready(self, ctx: StepContext) -> bool:
        done = ctx.artifacts.get(self.name)
        return bool(done) and all(Path(p).exists() for p in done["bundles"].values())


def _signing_key(ctx: StepContext):  # type: ignore[no-untyped-def]
    path = ctx.settings.signing_key
    if path is None:
        raise StepFailed(
            "the worker has no signing key to sign bundles with: set signing_key "
            "(EDGEFLEET_CONTROLLER__SIGNING_KEY) to an ed25519 PEM whose public key is trusted"
        )
    try:
        return load_private_key(path)
    except (OSError, ValueError, SignatureError) as exc:
        raise StepFailed(f"cannot read the signing key {path}: {exc}") from None
