from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_learning.compiler_inputs import write_compiler_inputs
from fleet_learning.exceptions import DataError
from fleet_learning.recipes import Hyperparameters, build_model, default_recipe
from fleet_learning.trainer import Standardisation, evaluate, fit
from tests.learning.data import sensor_data

HP = Hyperparameters(epochs=5, batch_size=64, lr=0.01, seed=3)


def test_fit_learns_the_sensor_and_returns_its_standardisation() -> None:
    x, y = sensor_data(1500, seed=1)
    x_eval, y_eval = sensor_data(500, seed=2)
    model = build_model(default_recipe())
    before = evaluate(model, x_eval, y_eval, standardisation=Standardisation.of(x))

    stats = fit(model, x, y, HP)
    after = evaluate(model, x_eval, y_eval, standardisation=stats.standardisation)

    assert after.accuracy > 0.85 > before.accuracy
    assert after.loss < before.loss
    assert after.n == 500
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats.scale, x.std(axis=0), rtol=1e-4)
    assert stats.n == 1500 and stats.epochs == 5 and stats.steps == 5 * 24


def test_fit_is_deterministic_for_a_seed() -> None:
    x, y = sensor_data(400, seed=1)
    states = []
    for _ in range(2):
        torch.manual_seed(99)  # different global state before each; fit seeds its own
        model = build_model(default_recipe())
        fit(model, x, y, HP)
        states.append(model.state_dict())
        torch.rand(5)

    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name


def test_fit_keeps_a_given_standardisation() -> None:
    x, y = sensor_data(300, seed=1)
    fixed = Standardisation.identity(16)

    stats = fit(build_model(default_recipe()), x, y, HP, standardisation=fixed, epochs=1)

    assert stats.standardisation is fixed and stats.epochs == 1


def test_proximal_term_keeps_weights_near_the_global_model() -> None:
    x, y = sensor_data(600, seed=4)
    start = build_model(default_recipe()).state_dict()
    drift = {}
    for mu in (0.0, 10.0):
        model = build_model(default_recipe())
        model.load_state_dict(start)
        fit(model, x, y, HP, proximal_to={k: v.clone() for k, v in start.items()}, mu=mu)
        drift[mu] = sum(float(((model.state_dict()[k] - v) ** 2).sum()) for k, v in start.items())

    assert drift[10.0] < drift[0.0] / 2


def test_constant_feature_gets_unit_scale() -> None:
    x = np.ones((10, 3), np.float32)

    assert Standardisation.of(x).scale.tolist() == [1.0, 1.0, 1.0]


def test_fit_rejects_bad_data() -> None:
    model = build_model(default_recipe())
    x, y = sensor_data(20, seed=1)

    with pytest.raises(DataError, match="no training samples"):
        fit(model, x[:0], y[:0], HP)
    with pytest.raises(DataError, match="expected x"):
        fit(model, x, y[:5], HP)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        fit(model, bad, y, HP)


def test_compiler_builds_a_bundle_from_the_trainer_output(tmp_path: Path) -> None:
    from fleet_protocol import BundleManifest
    from model_compiler.build import BuildRequest, build

    recipe = default_recipe()
    x, y = sensor_data(1000, seed=1)
    held_out = sensor_data(300, seed=2)
    model = build_model(recipe)
    stats = fit(model, x, y, HP)
    inputs = write_compiler_inputs(recipe, model, stats.standardisation, (x, y), held_out, tmp_path / "in")

    report = build(
        BuildRequest(
            model=inputs.model,
            weights=inputs.weights,
            calibration=inputs.calibration,
            eval_data=inputs.eval_data,
            out=tmp_path / "out",
            key=Ed25519PrivateKey.generate(),
            targets=["onnx-fp32"],
            labels=inputs.labels,
            anomaly_classes=inputs.anomaly_classes,
        )
    )

    manifest = BundleManifest.model_validate_json((report.bundles["onnx-fp32"] / "manifest.json").read_text())
    assert manifest.preprocessing.mean == pytest.approx(stats.mean, rel=1e-5)
    assert manifest.preprocessing.feature_names == recipe.feature_names
    assert report.torch_accuracy == pytest.approx(
        evaluate(model, *held_out, standardisation=stats.standardisation).accuracy
    )
