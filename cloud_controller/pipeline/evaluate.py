"""``evaluate``: candidate against production on the held-out test split, each bundle run as a device runs it.

The test split is read by no other step: a federated job picks its best round, and the build
measures its bundles, on the validation split, so the margin check is not biased by that choice.

A bundle is verified (signature and digests, with the controller's trusted keys), its
preprocessing applied to the raw features, and its model run one record at a time by onnxruntime.
The candidate is judged by its int8 ONNX bundle (the compressed one the fleet gets); production by
the best of its ONNX bundles, so that a candidate wins only against production's best.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session, select

from cloud_controller.models import Bundle
from cloud_controller.pipeline.base import StepContext, StepFailed
from cloud_controller.pipeline.dataset import HELDOUT, load
from cloud_controller.pipeline.versions import production
from fleet_protocol import BundleError, BundleManifest
from fleet_protocol.signing import load_public_key, verify_bundle

CANDIDATE_TARGET = "onnx-int8"


def bundle_accuracy(
    archive: Path, x: np.ndarray, y: np.ndarray, keys: list[Any]
) -> tuple[float, BundleManifest]:
    """Accuracy of a bundle archive on raw features ``x`` and labels ``y``, run one record at a time."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")
            manifest = verify_bundle(tmp, keys)
        except (tarfile.TarError, OSError, BundleError) as exc:
            raise StepFailed(f"bundle {archive.name} does not verify: {exc}") from None
        pre = manifest.preprocessing
        xs = x.astype(np.float32)
        if pre.mean is not None:
            xs = xs - np.asarray(pre.mean, np.float32)
        if pre.scale is not None:
            xs = xs / np.asarray(pre.scale, np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(Path(tmp) / manifest.entrypoint), options, providers=["CPUExecutionProvider"]
            )
            name = session.get_inputs()[0].name
            predicted = np.array([int(np.argmax(session.run(None, {name: row[None, :]})[0])) for row in xs])
        except Exception as exc:  # onnxruntime's errors have no common base class worth naming
            raise StepFailed(f"bundle {archive.name} does not run on the held-out records: {exc}") from None
    return float((predicted == y).mean()), manifest


class EvaluateStep:
    name = "evaluate"
    #: Steps whose files (in the job directory) this one reads.
    needs: tuple[str, ...] = ("dataset", "build")

    def run(self, ctx: StepContext) -> dict[str, Any]:
        keys = [load_public_key(p) for p in ctx.settings.trusted_keys]
        if not keys:
            raise StepFailed("the controller trusts no key (trusted_keys): no bundle can be verified")
        x, y = load(ctx.workdir / "dataset" / HELDOUT)
        built = ctx.artifacts["build"]["bundles"]
        candidate = {}
        for target, archive in sorted(built.items()):
            if target.startswith("onnx"):
                ctx.check()
                candidate[target], _ = bundle_accuracy(Path(archive), x, y, keys)
                ctx.log(f"candidate {target}: accuracy {candidate[target]:.4f} on {len(y)} held-out records")
        if CANDIDATE_TARGET not in candidate:
            raise StepFailed(f"the build made no {CANDIDATE_TARGET} bundle to judge the candidate by")
        result: dict[str, Any] = {
            "heldout": len(y),
            "validation": ctx.artifacts["dataset"].get("validation"),
            "candidate": candidate,
            "candidate_accuracy": candidate[CANDIDATE_TARGET],
            "production_version": None,
            "production": {},
            "production_accuracy": None,
        }
        with Session(ctx.engine) as session:
            current = production(session, ctx.model_id)
            bundles = (
                session.exec(
                    select(Bundle).where(
                        Bundle.model_version_id == current.id, Bundle.runtime == "onnxruntime"
                    )
                ).all()
                if current
                else []
            )
        if current is None:
            ctx.log(f"{ctx.model_id} has no production version to compare with")
            return result
        result["production_version"] = current.version
        for bundle in bundles:
            ctx.check()
            try:
                accuracy, _ = bundle_accuracy(Path(ctx.settings.bundle_dir) / bundle.sha256, x, y, keys)
            except StepFailed as exc:
                ctx.log(f"production {current.version}: {exc}; not compared")
                continue
            result["production"][bundle.sha256[:12]] = accuracy
            ctx.log(f"production {current.version} ({bundle.sha256[:12]}): accuracy {accuracy:.4f}")
        if not result["production"]:
            ctx.log(f"production {current.version} has no ONNX bundle to compare with")
            return result
        result["production_accuracy"] = max(result["production"].values())
        return result

    def ready(self, ctx: StepContext) -> bool:
        return self.name in ctx.artifacts
