"""The model registry: versions with lineage and metrics, stages, bundles by sha256."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlmodel import Session, select

from cloud_controller import audit
from cloud_controller.api.deps import (
    CurrentToken,
    IntId,
    Operator,
    Reader,
    SessionDep,
    Sha256Path,
    text_query,
)
from cloud_controller.api.errors import BODY, errors
from cloud_controller.audit import who
from cloud_controller.bundles import BundleRejected, verify_upload
from cloud_controller.job_models import ModelRecipe, RecipePublic
from cloud_controller.models import (
    TEXT_PATTERN,
    ApiToken,
    Bundle,
    BundlePublic,
    ModelVersion,
    ModelVersionPublic,
    ModelVersionUpdate,
    Stage,
)
from fleet_protocol.codec import describe_validation_error

router = APIRouter(tags=["registry"], responses=errors(401))

_MAX_BUNDLE = 512 * 1024 * 1024
_TAR = {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}


@router.get("/models", responses=errors(403))
def list_models(session: SessionDep, _: Reader) -> list[dict[str, object]]:
    """Every model id with its versions and their stages."""
    models: dict[str, list[dict[str, object]]] = {}
    for v in session.exec(select(ModelVersion).order_by(ModelVersion.model_id, ModelVersion.id)).all():
        models.setdefault(v.model_id, []).append({"id": v.id, "version": v.version, "stage": v.stage.value})
    return [{"model_id": model_id, "versions": versions} for model_id, versions in models.items()]


@router.get("/models/versions", response_model=list[ModelVersionPublic], responses=errors(403))
def list_versions(
    session: SessionDep,
    _: Reader,
    model_id: Annotated[str | None, text_query(128)] = None,
    stage: Annotated[Stage | None, Query()] = None,
) -> list:  # type: ignore[type-arg]
    """List model versions, filtered by model or stage."""
    query = select(ModelVersion)
    if model_id is not None:
        query = query.where(ModelVersion.model_id == model_id)
    if stage is not None:
        query = query.where(ModelVersion.stage == stage)
    return list(session.exec(query.order_by(ModelVersion.id)).all())


@router.get("/models/versions/{version_id}", response_model=ModelVersionPublic, responses=errors(403, 404))
def get_version(session: SessionDep, _: Reader, version_id: IntId) -> ModelVersion:
    """Get a model version with its compiler metrics."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise HTTPException(404, "Model version not found")
    return version


@router.patch(
    "/models/versions/{version_id}", response_model=ModelVersionPublic, responses=errors(*BODY, 403, 404)
)
def set_stage(
    session: SessionDep, caller: Operator, version_id: IntId, body: ModelVersionUpdate
) -> ModelVersion:
    """Move a version between candidate, staging, production and archived."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise HTTPException(404, "Model version not found")
    before = audit.snapshot(version)
    version.stage = body.stage
    audit.record(
        session=session,
        actor=caller,
        action="stage",
        resource=f"model_version/{version_id}",
        before=before,
        after=audit.snapshot(version),
    )
    session.commit()
    session.refresh(version)
    return version


@router.post(
    "/bundles",
    response_model=BundlePublic,
    status_code=201,
    # The route reads the archive itself: FastAPI validates no parameter, every 422 is ours.
    responses=errors(403, 413, 422),
    openapi_extra={"requestBody": {"required": True, "content": _TAR}},
)
async def upload_bundle(request: Request, session: SessionDep, caller: Operator) -> Bundle:
    """Upload a signed bundle .tar; it is verified, stored under its sha256 and registered."""
    store = Path(request.app.state.settings.bundle_dir)
    part, sha, size = await _receive(request, store)
    # Verification and the database are blocking work: off the loop.
    return await run_in_threadpool(_register, request, session, caller, part, sha, size, store)


async def _receive(request: Request, store: Path) -> tuple[Path, str, int]:
    await asyncio.to_thread(store.mkdir, parents=True, exist_ok=True)
    handle = await asyncio.to_thread(tempfile.NamedTemporaryFile, dir=store, delete=False, suffix=".part")
    digest, size = hashlib.sha256(), 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > _MAX_BUNDLE:
                raise HTTPException(413, "Bundle is larger than 512 MiB")
            digest.update(chunk)
            await asyncio.to_thread(handle.write, chunk)
    except BaseException:
        handle.close()
        await asyncio.to_thread(os.unlink, handle.name)
        raise
    handle.close()
    return Path(handle.name), digest.hexdigest(), size


def _register(
    request: Request, session: Session, caller: ApiToken, part: Path, sha: str, size: int, store: Path
) -> Bundle:
    try:
        verified = verify_upload(part, request.app.state.trusted_keys)
    except BundleRejected as exc:
        part.unlink(missing_ok=True)
        raise HTTPException(422, f"Bundle refused: {exc}") from None
    manifest = verified.manifest
    existing = session.get(Bundle, sha)
    if existing is not None:
        part.unlink(missing_ok=True)
        return existing
    os.replace(part, store / sha)
    version = session.exec(
        select(ModelVersion).where(
            ModelVersion.model_id == manifest.model_id, ModelVersion.version == manifest.version
        )
    ).first()
    if version is None:
        version = ModelVersion(
            model_id=manifest.model_id,
            version=manifest.version,
            parent=manifest.lineage.parent,
            training_data_sha256=manifest.lineage.training_data_sha256,
            compiler_version=manifest.lineage.compiler_version,
            metrics={},
        )
        session.add(version)
        session.flush()
    # One entry per bundle (an fp32 and an int8 bundle share a runtime): "<runtime> <sha prefix>".
    version.metrics = {**version.metrics, f"{manifest.runtime.value} {sha[:12]}": manifest.metrics}
    if verified.drift_reference is not None:
        # A version's bundles share its training data, hence its reference: the newest one is kept.
        version.drift_reference = verified.drift_reference.model_dump(mode="json")
    assert version.id is not None
    bundle = Bundle(
        sha256=sha,
        manifest_sha256=verified.manifest_sha256,
        model_version_id=version.id,
        runtime=manifest.runtime.value,
        size=size,
    )
    session.add(bundle)
    audit.record(
        session=session, actor=caller, action="upload", resource=f"bundle/{sha}", after=audit.snapshot(bundle)
    )
    session.commit()
    session.refresh(bundle)
    return bundle


@router.get(
    "/bundles/{sha256}",
    response_class=FileResponse,
    responses={
        200: {"content": _TAR, "description": "The bundle archive"},
        206: {"content": _TAR, "description": "The range asked for"},
        416: {"description": "The range asked for is outside the archive"},
        **errors(404),
    },
)
def download_bundle(
    request: Request, session: SessionDep, _: CurrentToken, sha256: Sha256Path
) -> FileResponse:
    """Download a bundle; range requests resume an interrupted download."""
    if session.get(Bundle, sha256) is None:
        raise HTTPException(404, "Bundle not found")
    path = Path(request.app.state.settings.bundle_dir) / sha256
    return FileResponse(path, media_type="application/x-tar", headers={"ETag": f'"{sha256}"'})


# -- training recipes ----------------------------------------------------------------------------

#: A recipe's JSON body at most (a larger one is answered 413 before it is all read).
MAX_RECIPE_BYTES = 64 * 1024

_RECIPE_BODY = {
    "required": True,
    "description": "A `fleet_learning.TrainingRecipe`: entry_point (one of "
    "fleet_learning.models.ARCHITECTURES), architecture, "
    "hyperparameters (epochs, batch_size, lr, weight_decay, seed, prune_ratio), feature_names, "
    f"class_names, anomaly_classes; at most {MAX_RECIPE_BYTES} bytes (413 beyond)",
    "content": {"application/json": {"schema": {"type": "object"}}},
}


def _model_id(model_id: str) -> str:
    """The path's model id, checked here: the route answers every 422 itself, in one shape."""
    if not 1 <= len(model_id) <= 128 or not re.fullmatch(TEXT_PATTERN, model_id):
        raise HTTPException(422, "model_id must be 1 to 128 characters without control characters")
    return model_id


@router.put(
    "/models/{model_id}/recipe",
    response_model=RecipePublic,
    # The route reads and checks the body itself (validating a recipe needs fleet_learning, which
    # loads torch: only when a recipe is set, not when the API starts), so every 422 is ours.
    responses=errors(*BODY, 403, 413, 422),
    openapi_extra={"requestBody": _RECIPE_BODY},
)
async def put_recipe(request: Request, session: SessionDep, caller: Operator, model_id: str) -> RecipePublic:
    """Set the training recipe a retraining job of this model trains from."""
    model_id = _model_id(model_id)
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > MAX_RECIPE_BYTES:
            raise HTTPException(413, f"A recipe is at most {MAX_RECIPE_BYTES} bytes")
    try:
        body = json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(400, f"The body is not JSON: {exc}") from None
    recipe = await run_in_threadpool(_check_recipe, body)
    return await run_in_threadpool(_store_recipe, session, caller, model_id, recipe)


def _check_recipe(body: object) -> dict[str, Any]:
    from pydantic import ValidationError

    from fleet_learning.recipes import TrainingRecipe

    try:
        return TrainingRecipe.model_validate(body).model_dump(mode="json")
    except ValidationError as exc:
        raise HTTPException(422, f"Not a training recipe: {describe_validation_error(exc)}") from None


def _store_recipe(session: Session, caller: ApiToken, model_id: str, recipe: dict[str, Any]) -> RecipePublic:
    row = session.get(ModelRecipe, model_id)
    before = audit.snapshot(row)
    if row is None:
        row = ModelRecipe(model_id=model_id, recipe=recipe, updated_by=who(caller))
        session.add(row)
    else:
        row.recipe, row.updated_by, row.updated_at = recipe, who(caller), time.time()
    audit.record(
        session=session,
        actor=caller,
        action="recipe",
        resource=f"model/{model_id}",
        before=before,
        after=audit.snapshot(row),
    )
    session.commit()
    session.refresh(row)
    return RecipePublic.model_validate(row, from_attributes=True)


@router.get("/models/{model_id}/recipe", response_model=RecipePublic, responses=errors(403, 404, 422))
def get_recipe(session: SessionDep, _: Reader, model_id: str) -> RecipePublic:
    """The training recipe of a model."""
    row = session.get(ModelRecipe, _model_id(model_id))
    if row is None:
        raise HTTPException(404, f"Model {model_id} has no training recipe")
    return RecipePublic.model_validate(row, from_attributes=True)
