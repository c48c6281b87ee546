"""A model's training recipe from the registry (table ``model_recipe``)."""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_controller.job_models import ModelRecipe
from cloud_controller.pipeline.base import StepFailed
from fleet_learning.recipes import TrainingRecipe


def load_recipe(engine: Engine, model_id: str) -> TrainingRecipe:
    with Session(engine) as session:
        row = session.get(ModelRecipe, model_id)
    if row is None:
        raise StepFailed(
            f"model {model_id} has no training recipe: PUT /api/v1/models/{model_id}/recipe first"
        )
    try:
        return TrainingRecipe.model_validate(row.recipe)
    except ValidationError as exc:
        raise StepFailed(f"the training recipe of {model_id} is no longer valid: {exc}") from None
