"""run_simulation's Flower environment lasts for the run: the worker process runs many jobs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet_learning.federated import _flower_environment

FLOWER_VARIABLES = ("FLWR_HOME", "FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK")


def test_the_environment_and_the_temp_home_are_gone_after_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FLOWER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)

    with pytest.raises(RuntimeError, match="the run failed"), _flower_environment():
        home = Path(os.environ["FLWR_HOME"])
        assert home.is_dir() and home.name.startswith("flwr-home-")
        assert (os.environ["FLWR_TELEMETRY_ENABLED"], os.environ["FLWR_DISABLE_UPDATE_CHECK"]) == ("0", "1")
        raise RuntimeError("the run failed")

    assert dict(os.environ) == before
    assert not home.exists()


def test_the_callers_choices_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "1")
    monkeypatch.delenv("FLWR_DISABLE_UPDATE_CHECK", raising=False)

    with _flower_environment():
        assert (os.environ["FLWR_HOME"], os.environ["FLWR_TELEMETRY_ENABLED"]) == (str(tmp_path), "1")
        assert os.environ["FLWR_DISABLE_UPDATE_CHECK"] == "1"

    assert (os.environ["FLWR_HOME"], os.environ["FLWR_TELEMETRY_ENABLED"]) == (str(tmp_path), "1")
    assert "FLWR_DISABLE_UPDATE_CHECK" not in os.environ
    assert tmp_path.is_dir()
