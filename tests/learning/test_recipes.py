from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, Context, MessageType, RecordDict
from pydantic import ValidationError
from torch import nn

from fleet_learning import messages as m
from fleet_learning.client_app import NodeSource, make_client_app
from fleet_learning.config import FederatedConfig
from fleet_learning.exceptions import RecipeError
from fleet_learning.local_data import write_buffer
from fleet_learning.models import MLP
from fleet_learning.recipes import TrainingRecipe, build_model, default_recipe
from fleet_learning.server_app import ServerJob, train_config
from fleet_learning.trainer import Standardisation
from tests.learning.conftest import instruction
from tests.learning.data import sensor_data


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


PLANTED = "tests.learning.planted_entry_point"


@pytest.mark.parametrize("entry_point", ["torch.hub:load", "os:system", "builtins:dict", f"{PLANTED}:build"])
def test_recipe_refuses_an_entry_point_outside_the_registry(entry_point: str) -> None:
    data = default_recipe().model_dump()

    with pytest.raises(
        ValidationError, match=r"not an allowed architecture \(allowed: fleet_learning\.models:mlp\)"
    ):
        TrainingRecipe.model_validate({**data, "entry_point": entry_point})
    assert PLANTED not in sys.modules


def test_build_model_refuses_an_unvalidated_entry_point_without_importing_it() -> None:
    recipe = default_recipe().model_copy(update={"entry_point": f"{PLANTED}:build"})  # skips validation

    with pytest.raises(RecipeError, match="not an allowed architecture"):
        build_model(recipe)
    assert PLANTED not in sys.modules


def test_recipe_bounds_architecture_and_hyperparameters() -> None:
    data = default_recipe().model_dump()

    with pytest.raises(ValidationError, match="hidden: Input should be less than or equal to 4096"):
        TrainingRecipe.model_validate({**data, "architecture": {"hidden": 10_000_000}})
    with pytest.raises(ValidationError, match="depth: Extra inputs are not permitted"):
        TrainingRecipe.model_validate({**data, "architecture": {"depth": 3}})
    with pytest.raises(ValidationError, match="hidden: Input should be a valid integer"):
        TrainingRecipe.model_validate({**data, "architecture": {"hidden": "64; import os"}})
    with pytest.raises(ValidationError, match="batch_size"):
        TrainingRecipe.model_validate({**data, "hyperparameters": {"batch_size": 10_000_000}})
    with pytest.raises(ValidationError, match="epochs"):
        TrainingRecipe.model_validate({**data, "hyperparameters": {"epochs": 1_000_000}})


def test_build_model_rejects_unknown_architecture_kwargs() -> None:
    recipe = default_recipe().model_copy(update={"architecture": {"depth": 3}})

    with pytest.raises(RecipeError, match="architecture of fleet_learning.models:mlp: depth"):
        build_model(recipe)


def test_recipe_rejects_bad_fields() -> None:
    data = default_recipe().model_dump()

    with pytest.raises(ValidationError, match="anomaly_classes"):
        TrainingRecipe.model_validate({**data, "anomaly_classes": [7]})
    with pytest.raises(ValidationError, match="entry_point 'no colon' is not an allowed architecture"):
        TrainingRecipe.model_validate({**data, "entry_point": "no colon"})
    with pytest.raises(ValidationError, match="prune_ratio"):
        TrainingRecipe.model_validate({**data, "hyperparameters": {"prune_ratio": 1.5}})
    with pytest.raises(ValidationError, match="extra"):
        TrainingRecipe.model_validate({**data, "optimiser": "sgd"})


def test_models_are_plain_modules() -> None:
    assert isinstance(build_model(default_recipe()), nn.Module)


@pytest.mark.parametrize("entry_point", ["os:system", f"{PLANTED}:build"])
def test_client_app_replies_an_error_to_a_recipe_outside_the_registry(
    tmp_path: Path, entry_point: str
) -> None:
    """The recipe travels as JSON in the instruction: the device refuses it and imports nothing."""
    recipe = default_recipe()
    x, y = sensor_data(100, seed=1)
    buffer = write_buffer(tmp_path / "training.sqlite", recipe.feature_names, x, y)
    app = make_client_app([NodeSource("dev-0", "site-a", buffer)])
    evil = json.loads(recipe.model_dump_json())
    evil["entry_point"] = entry_point
    config = train_config(
        ServerJob(FederatedConfig(), recipe, build_model(recipe).state_dict(), Standardisation.identity(16))
    )
    config[m.RECIPE] = json.dumps(evil)
    content = RecordDict({m.ARRAYS: ArrayRecord(build_model(recipe).state_dict()), m.CONFIG: config})
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})

    for message_type in (MessageType.TRAIN, MessageType.EVALUATE):
        reply = app(instruction(content, message_type), context)

        assert reply.has_error()
        assert f"entry_point '{entry_point}' is not an allowed architecture" in reply.error.reason
    assert PLANTED not in sys.modules
