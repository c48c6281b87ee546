"""The build pipeline: torch model -> (pruned) -> every target -> measured -> signed bundles.

The Python API the cloud controller's retraining pipeline calls; the CLI is a thin wrapper.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_protocol import Lineage, Postprocessing, Preprocessing, TensorSpec
from fleet_protocol.bundle import SEMVER_PATTERN
from fleet_protocol.reference import DRIFT_REFERENCE_FILE
from model_compiler import __version__
from model_compiler.archive import pack
from model_compiler.bundle import write_bundle
from model_compiler.evaluate import Row, evaluate
from model_compiler.exceptions import BudgetError, InputError
from model_compiler.inputs import DataSet, load_dataset, load_model
from model_compiler.profiles import Profile
from model_compiler.reference import drift_reference, write_reference
from model_compiler.targets.base import OPSET, Artifact, BuildContext

log = logging.getLogger(__name__)

#: Called with (step name, finished?) so a CLI can show progress.
Progress = Callable[[str, bool], None]


@dataclass
class BuildRequest:
    model: str  # path/to/model.py:factory
    eval_data: Path
    out: Path
    key: Ed25519PrivateKey
    weights: Path | None = None
    calibration: Path | None = None
    #: Data for the pruning fine-tune; its digest is the lineage's training data when no other is given.
    train_data: Path | None = None
    #: sha256 of the data set the weights were trained on, as the trainer knows it (a training job,
    #: ``--trained-on``). The compiler never sees that set otherwise, so without it the lineage says
    #: nothing rather than name the calibration or eval set as training data.
    training_data_sha256: str | None = None
    targets: list[str] = field(
        default_factory=lambda: ["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"]
    )
    model_id: str = "model"
    version: str = "1.0.0"
    parent: str | None = None
    profile: Profile | None = None
    prune_ratio: float | None = None
    finetune_steps: int = 100
    max_drop_pts: float | None = None
    labels: list[str] | None = None
    anomaly_classes: list[int] = field(default_factory=list)
    tflite_python: Path | None = None
    #: Versions of ``model_id`` this release withdraws: signed into every bundle's manifest, and a
    #: device that installs one of them refuses those versions from then on.
    withdrawn_versions: list[str] = field(default_factory=list)


@dataclass
class BuildReport:
    model_id: str
    version: str
    rows: list[Row]
    torch_accuracy: float | None
    bundles: dict[str, Path]
    seconds: float
    pruning: dict[str, Any] | None = None
    refused: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "version": self.version,
            "compiler_version": __version__,
            "torch_accuracy": self.torch_accuracy,
            "targets": [r.as_dict() for r in self.rows],
            "bundles": {k: str(v) for k, v in self.bundles.items()},
            "refused_by_profile": self.refused,
            "pruning": self.pruning,
            "build_seconds": round(self.seconds, 2),
        }


def check_withdrawn(version: str, withdrawn: list[str]) -> None:
    """Refuse, before any work, withdrawn versions the manifest would refuse after the build."""
    bad = [v for v in withdrawn if not re.match(SEMVER_PATTERN, v)]
    if bad:
        raise InputError(f"withdrawn version(s) {', '.join(bad)} are not semantic versions (like 1.2.0)")
    if version in withdrawn:
        raise InputError(f"a release cannot withdraw its own version {version}")


def select_targets(requested: list[str], profile: Profile | None) -> list[str]:
    from model_compiler.targets.registry import TARGETS

    unknown = [t for t in requested if t not in TARGETS]
    if unknown:
        raise InputError(f"unknown target(s) {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    if profile is None:
        return requested
    chosen = [t for t in requested if profile.allows(TARGETS[t].runtime, TARGETS[t].precision)]
    if not chosen:
        raise BudgetError(
            f"profile {profile.name} runs {', '.join(r.value for r in profile.runtimes)} in"
            f" {', '.join(profile.precisions)}: none of {', '.join(requested)} fits"
        )
    return chosen


def build(request: BuildRequest, progress: Progress | None = None) -> BuildReport:
    """Build, measure, sign and pack every requested target.

    Parameters
    ----------
    request : BuildRequest
        What to build and where.
    progress : callable, optional
        Told about each step as it starts and ends.

    Returns
    -------
    BuildReport
        The table, the bundles, what the profile refused.

    Raises
    ------
    InputError, BudgetError, TargetError
        With a message for the operator.
    """
    from model_compiler.targets.registry import TARGETS

    started = time.perf_counter()
    say = progress or (lambda step, done: None)
    check_withdrawn(request.version, request.withdrawn_versions)
    targets = select_targets(request.targets, request.profile)
    model = load_model(request.model, request.weights)
    eval_data = load_dataset(request.eval_data)
    calibration = load_dataset(request.calibration) if request.calibration else None
    pruning = None
    if request.prune_ratio:
        if request.train_data is None:
            raise InputError("--prune needs --train data for the fine-tune")
        from model_compiler.prune import prune

        say("prune", False)
        before = _torch_accuracy(model, eval_data)
        result = prune(
            model, load_dataset(request.train_data), ratio=request.prune_ratio, steps=request.finetune_steps
        )
        model = result.model
        pruning = {
            "api": "nncf.prune UNSTRUCTURED_MAGNITUDE_LOCAL + nncf.strip IN_PLACE",
            "ratio": request.prune_ratio,
            "sparsity": round(result.sparsity, 4),
            "finetune_steps": result.finetune_steps,
            "accuracy_before": before,
            "accuracy_after": _torch_accuracy(model, eval_data),
        }
        say("prune", True)
    with torch.no_grad():
        torch_outputs = model(torch.from_numpy(eval_data.x)).numpy()
    torch_accuracy = (
        float((torch_outputs.argmax(1) == eval_data.y).mean()) if eval_data.y is not None else None
    )

    request.out.mkdir(parents=True, exist_ok=True)
    rows, bundles, refused = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="model-compiler-") as tmp:
        ctx = BuildContext(
            model,
            calibration,
            eval_data,
            Path(tmp),
            request.model,
            request.weights,
            request.max_drop_pts,
            request.tflite_python,
        )
        if pruning is not None:
            # The TFLite worker rebuilds the model from its factory: hand it the pruned weights.
            ctx.weights = Path(tmp) / "pruned.pt"
            torch.save(model.state_dict(), ctx.weights)
        for name in targets:
            say(name, False)
            artifact = TARGETS[name].build(ctx)
            row = evaluate(artifact, eval_data, torch_outputs, torch_accuracy)
            reason = _over_budget(row, request.profile)
            if reason:
                refused[name] = reason
            else:
                rows.append(row)
                bundles[name] = _bundle(request, artifact, row, eval_data, calibration, pruning)
            say(name, True)
    if request.profile is not None and not rows:
        raise BudgetError(
            f"{request.model_id} does not fit profile {request.profile.name}: "
            + "; ".join(f"{t}: {why}" for t, why in refused.items())
        )
    report = BuildReport(
        request.model_id,
        request.version,
        rows,
        torch_accuracy,
        bundles,
        time.perf_counter() - started,
        pruning,
        refused,
    )
    (request.out / "report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def _torch_accuracy(model: torch.nn.Module, data: DataSet) -> float | None:
    if data.y is None:
        return None
    with torch.no_grad():
        return float((model(torch.from_numpy(data.x)).numpy().argmax(1) == data.y).mean())


def _over_budget(row: Row, profile: Profile | None) -> str | None:
    if profile is None:
        return None
    if row.size_bytes > profile.flash_kb * 1024:
        return f"{row.size_bytes / 1024:.0f} KB of model, budget {profile.flash_kb:.0f} KB"
    if row.memory_mb > profile.memory_mb:
        return f"{row.memory_mb:.0f} MB while running, budget {profile.memory_mb:.0f} MB"
    return None


def _bundle(
    request: BuildRequest,
    artifact: Artifact,
    row: Row,
    data: DataSet,
    calibration: DataSet | None,
    pruning: dict[str, Any] | None,
) -> Path:
    out = request.out / artifact.target
    if out.exists():
        shutil.rmtree(out)
    features = int(np.prod(data.x.shape[1:]))
    names = (
        data.feature_names
        or (calibration.feature_names if calibration else None)
        or [f"x{i}" for i in range(features)]
    )
    mean = data.mean or (calibration.mean if calibration else None)
    scale = data.scale or (calibration.scale if calibration else None)
    batch = 1 if artifact.runtime.value == "litert" else None
    n_out = row_outputs(artifact, data)
    metrics: dict[str, Any] = {
        k: v for k, v in row.as_dict().items() if k not in ("target", "runtime", "precision")
    }
    metrics.update(artifact.notes)
    if pruning:
        metrics["pruning"] = pruning
    # What the model was measured and calibrated on, named for what it is.
    metrics["eval_data_sha256"] = data.sha256
    if calibration is not None:
        metrics["calibration_data_sha256"] = calibration.sha256
    files: dict[str, str | Path] = dict(artifact.files)
    # A context manager: a bundle that fails to write leaves no staging directory behind.
    with tempfile.TemporaryDirectory(prefix="reference-") as staging:
        if data.x.ndim == 2 and len(names) == data.x.shape[1]:
            # Tabular inputs: ship the training distribution so gateways can measure drift.
            source = calibration or data
            raw = source.x * np.asarray(scale or 1.0) + np.asarray(mean or 0.0)
            files[DRIFT_REFERENCE_FILE] = write_reference(
                drift_reference(raw, names), Path(staging) / DRIFT_REFERENCE_FILE
            )
        write_bundle(
            out,
            files,
            request.key,
            model_id=request.model_id,
            version=request.version,
            runtime=artifact.runtime,
            entrypoint=artifact.entrypoint,
            inputs=[TensorSpec(name="input", shape=[batch, *data.x.shape[1:]], dtype=artifact.input_dtype)],
            outputs=[TensorSpec(name="output", shape=[batch, n_out], dtype=artifact.output_dtype)],
            preprocessing=Preprocessing(feature_names=names, mean=mean, scale=scale),
            postprocessing=Postprocessing(
                task="classification" if data.y is not None else "regression",
                labels=request.labels,
                anomaly_classes=request.anomaly_classes,
            ),
            opset=OPSET if artifact.runtime.value == "onnxruntime" else None,
            metrics=metrics,
            lineage=Lineage(
                parent=request.parent,
                training_data_sha256=request.training_data_sha256 or _digest(request.train_data),
                compiler_version=__version__,
            ),
            withdrawn_versions=list(request.withdrawn_versions),
        )
    pack(out)
    return out


def _digest(path: Path | None) -> str | None:
    return load_dataset(path).sha256 if path is not None else None


def row_outputs(artifact: Artifact, data: DataSet) -> int:
    from model_compiler.evaluate import open_runner

    return int(open_runner(artifact)(data.x[:1]).shape[-1])
