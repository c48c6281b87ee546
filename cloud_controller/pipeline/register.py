"""``register``: the built bundles into the registry as one version at stage ``candidate``, with lineage.

Verified as an upload is (`cloud_controller.bundles.verify_upload`, the controller's trusted keys)
and stored the same way (the archive under its sha256 in ``bundle_dir``). The version's metrics
hold each bundle's measures, the evaluation, and the lineage the bundle manifest has no room for:
the job, its data window and counts, its federated rounds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, func, select

from cloud_controller import audit
from cloud_controller.bundles import BundleRejected, verify_upload
from cloud_controller.job_models import JobRound
from cloud_controller.models import Bundle, ModelVersion, Stage
from cloud_controller.pipeline.base import StepContext, StepFailed
from fleet_protocol.signing import load_public_key


def lineage(ctx: StepContext) -> dict[str, Any]:
    data = ctx.artifacts["dataset"]
    with Session(ctx.engine) as session:
        rounds = session.exec(
            select(func.count()).select_from(JobRound).where(JobRound.job_id == ctx.job_id)
        ).one()
    train = ctx.artifacts.get("train") or {}
    federated: dict[str, Any] = {}
    if train.get("mode") == "federated":  # where the rounds ran: the simulation, or a real federation's run
        federated["fl_engine"] = train.get("engine", "simulation")
        if federated["fl_engine"] == "deployment":
            federated.update(fl_superlink=train["superlink"], fl_run_id=train["run_id"])
    return {
        "job_id": ctx.job_id,
        "kind": ctx.kind,
        "parent": ctx.artifacts["build"]["parent"],
        "data_window": data["window"],
        "records": data["records"],
        "train_records": data["train"],
        "validation_records": data.get("validation"),
        "heldout_records": data["heldout"],
        "sites": data["sites"],
        "training_data_sha256": data["train_sha256"],
        "fl_rounds": rounds,
        **federated,
    }


class RegisterStep:
    name = "register"
    #: Steps whose files (in the job directory) this one reads.
    needs: tuple[str, ...] = ("build",)

    def run(self, ctx: StepContext) -> dict[str, Any]:
        keys = [load_public_key(p) for p in ctx.settings.trusted_keys]
        build, evaluation = ctx.artifacts["build"], ctx.artifacts["evaluate"]
        version_name = build["version"]
        store = Path(ctx.settings.bundle_dir)
        store.mkdir(parents=True, exist_ok=True)
        verified = []
        for target, archive in sorted(build["bundles"].items()):
            try:
                checked = verify_upload(Path(archive), keys)
            except BundleRejected as exc:
                raise StepFailed(
                    f"the {target} bundle is refused by the controller's trusted keys: {exc} "
                    "(is the public key of signing_key among trusted_keys?)"
                ) from None
            verified.append((target, Path(archive), checked))
        ctx.check()
        with Session(ctx.engine) as session:
            version = session.exec(
                select(ModelVersion).where(
                    ModelVersion.model_id == ctx.model_id, ModelVersion.version == version_name
                )
            ).first()
            if version is not None and (version.metrics.get("lineage") or {}).get("job_id") != ctx.job_id:
                raise StepFailed(f"{ctx.model_id}@{version_name} exists already and was not made by this job")
            if version is None:
                manifest = verified[0][2].manifest
                version = ModelVersion(
                    model_id=ctx.model_id,
                    version=version_name,
                    stage=Stage.CANDIDATE,
                    parent=manifest.lineage.parent,
                    training_data_sha256=manifest.lineage.training_data_sha256,
                    compiler_version=manifest.lineage.compiler_version,
                    metrics={},
                )
                session.add(version)
                try:
                    session.flush()
                except IntegrityError:
                    raise StepFailed(
                        f"{ctx.model_id}@{version_name} was registered meanwhile by another job"
                    ) from None
            metrics: dict[str, Any] = {"lineage": lineage(ctx), "evaluation": evaluation}
            shas = []
            for target, archive, checked in verified:
                sha = _sha256(archive)
                shas.append(sha)
                metrics[f"{checked.manifest.runtime.value} {sha[:12]}"] = {
                    "target": target,
                    **checked.manifest.metrics,
                }
                if checked.drift_reference is not None:
                    version.drift_reference = checked.drift_reference.model_dump(mode="json")
                if session.get(Bundle, sha) is not None:
                    continue
                part = store / f"{sha}.{ctx.job_id}.part"
                shutil.copyfile(archive, part)
                os.replace(part, store / sha)
                assert version.id is not None
                bundle = Bundle(
                    sha256=sha,
                    manifest_sha256=checked.manifest_sha256,
                    model_version_id=version.id,
                    runtime=checked.manifest.runtime.value,
                    size=archive.stat().st_size,
                )
                session.add(bundle)
                audit.record(
                    session=session,
                    actor=ctx.actor,
                    action="upload",
                    resource=f"bundle/{sha}",
                    after=audit.snapshot(bundle),
                )
            version.metrics = metrics
            session.commit()
            session.refresh(version)
            ctx.log(f"registered {ctx.model_id}@{version_name} (id {version.id}), {len(shas)} bundles")
            return {"version_id": version.id, "version": version_name, "bundles": shas}

    def ready(self, ctx: StepContext) -> bool:
        return self.name in ctx.artifacts


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
