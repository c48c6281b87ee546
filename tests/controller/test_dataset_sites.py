"""The dataset step's `sites` param: a job retrains on the labelled records of the sites it names."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session

from cloud_controller.db import make_engine
from cloud_controller.job_models import JobParams, ModelRecipe
from cloud_controller.label_models import RecordLabel
from cloud_controller.migrate import upgrade
from cloud_controller.models import Telemetry
from cloud_controller.pipeline.base import Signals, StepContext, StepFailed
from cloud_controller.pipeline.dataset import HELDOUT, TRAIN, VALIDATION, DatasetStep, load, load_devices
from cloud_controller.settings import ControllerSettings
from fleet_learning import default_recipe

MODEL = "sensor-mlp"


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A migrated SQLite store with 40 labelled records at each of two sites, and the model's recipe."""
    url = f"sqlite:///{tmp_path / 'controller.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    recipe = default_recipe()
    now = time.time()
    rng = np.random.default_rng(0)
    with Session(engine) as session:
        session.add(ModelRecipe(model_id=MODEL, recipe=recipe.model_dump(mode="json"), updated_by="test"))
        for site in ("site-0", "site-1"):
            for seq in range(40):
                device = f"{site}-dev-{seq % 4}"
                features = rng.normal(size=recipe.n_features).round(3).tolist()
                session.add(
                    Telemetry(
                        device_id=device,
                        seq=seq,
                        ts=now - 60 + seq,
                        site_id=site,
                        model_id=MODEL,
                        model_version="1.0.0",
                        predicted=seq % 4,
                        record={"features": features},
                        received_at=now - 50,
                    )
                )
                session.add(
                    RecordLabel(
                        device_id=device,
                        seq=seq,
                        label=seq % 4,
                        labelled_at=now - 50,
                        received_at=now - 50,
                        site_id=site,
                    )
                )
        session.commit()
    yield engine
    engine.dispose()


def _context(engine, tmp_path: Path, **params: object) -> StepContext:  # type: ignore[no-untyped-def]
    return StepContext(
        job_id="j-test",
        kind="retrain",
        model_id=MODEL,
        params=JobParams.model_validate({"min_samples": 10, **params}),
        artifacts={},
        workdir=tmp_path / "job",
        engine=engine,
        settings=ControllerSettings(),
        signals=Signals(),
        log=lambda line: None,
    )


def test_dataset_takes_only_the_records_of_the_sites_the_job_names(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = _context(engine, tmp_path, sites=["site-1"])

    result = DatasetStep().run(ctx)

    assert result["sites"] == {"site-1": 40}
    splits = [ctx.workdir / "dataset" / name for name in (TRAIN, VALIDATION, HELDOUT)]
    devices = {d for split in splits for d in load_devices(split)}
    assert devices and all(d.startswith("site-1-") for d in devices)
    assert sum(len(load(split)[1]) for split in splits) == 40


def test_dataset_without_sites_takes_every_site(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = DatasetStep().run(_context(engine, tmp_path))

    assert result["sites"] == {"site-0": 40, "site-1": 40}


def test_dataset_of_a_site_with_too_few_records_fails_naming_the_site(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = _context(engine, tmp_path, sites=["site-9"])

    with pytest.raises(StepFailed, match=r"not enough labelled data \(0 < 10\).* of site\(s\) site-9"):
        DatasetStep().run(ctx)
