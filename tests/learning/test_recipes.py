from __future__ import annotations

import pytest
from pydantic import ValidationError
from torch import nn

from fleet_learning.exceptions import RecipeError
from fleet_learning.models import MLP
from fleet_learning.recipes import TrainingRecipe, build_model, default_recipe


def test_default_recipe_builds_the_fleet_mlp() -> None:
    model = build_model(default_recipe())

    assert isinstance(model, MLP)
    assert model.fc1.in_features == 16 and model.fc2.out_features == 4
    assert model.fc1.out_features == 64


def test_recipe_round_trips_through_json() -> None:
    recipe = default_recipe().model_copy(update={"architecture": {"hidden": 8}})
    recipe.hyperparameters.prune_ratio = 0.5

    again = TrainingRecipe.model_validate_json(recipe.model_dump_json())

    assert again == recipe
    assert build_model(again).fc1.out_features == 8


def test_simulators_weights_load_into_the_recipe_model() -> None:
    from simulators.model_factory import MLP as SimulatorMLP

    build_model(default_recipe()).load_state_dict(SimulatorMLP().state_dict())


def test_build_model_rejects_unknown_entry_point() -> None:
    recipe = default_recipe().model_copy(update={"entry_point": "fleet_learning.models:nope"})

    with pytest.raises(RecipeError, match="cannot load entry point 'fleet_learning.models:nope'"):
        build_model(recipe)


def test_build_model_rejects_a_factory_that_is_not_a_module() -> None:
    recipe = default_recipe().model_copy(update={"entry_point": "builtins:dict"})

    with pytest.raises(RecipeError, match="returned dict, not a torch.nn.Module"):
        build_model(recipe)


def test_build_model_rejects_unknown_architecture_kwargs() -> None:
    recipe = default_recipe().model_copy(update={"architecture": {"depth": 3}})

    with pytest.raises(RecipeError, match="rejected its arguments"):
        build_model(recipe)


def test_recipe_rejects_bad_fields() -> None:
    data = default_recipe().model_dump()

    with pytest.raises(ValidationError, match="anomaly_classes"):
        TrainingRecipe.model_validate({**data, "anomaly_classes": [7]})
    with pytest.raises(ValidationError, match="entry_point"):
        TrainingRecipe.model_validate({**data, "entry_point": "no colon"})
    with pytest.raises(ValidationError, match="prune_ratio"):
        TrainingRecipe.model_validate({**data, "hyperparameters": {"prune_ratio": 1.5}})
    with pytest.raises(ValidationError, match="extra"):
        TrainingRecipe.model_validate({**data, "optimiser": "sgd"})


def test_models_are_plain_modules() -> None:
    assert isinstance(build_model(default_recipe()), nn.Module)
