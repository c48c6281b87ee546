"""Schema migrations: from an empty database and from the previous revision, data kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from cloud_controller.migrate import current_revision, head_revision, upgrade


def test_migrate_from_empty_reaches_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    upgrade(url)
    assert current_revision(url) == head_revision(url) == "0005"


@pytest.mark.parametrize("previous", ["0004", "0001"])
def test_migrate_from_the_previous_revision_keeps_data(tmp_path: Path, previous: str) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    upgrade(url, previous)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO site (id, name, created_at) VALUES ('s1', 'Plant', 1.0)"))
        conn.execute(
            text(
                "INSERT INTO device (id, site_id, hardware_profile, labels, online, last_seq, created_at)"
                " VALUES ('d1', 's1', 'rpi4', '{\"line\": \"press\"}', 1, 42, 1.0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO telemetry (device_id, seq, ts, site_id, model_id, model_version, anomaly,"
                " record, received_at) VALUES ('d1', 1, 5.0, 's1', 'm', '1.0.0', 0, '{}', 6.0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO model_version (model_id, version, stage, metrics, created_at)"
                " VALUES ('m', '1.0.0', 'PRODUCTION', '{}', 1.0)"
            )
        )
    result = subprocess.run(
        [sys.executable, "-m", "cloud_controller.cli", "migrate"],
        env={"EDGEFLEET_CONTROLLER__DATABASE_URL": url, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"schema {previous} -> 0005" in result.stdout
    with engine.connect() as conn:
        device = conn.execute(text("SELECT labels, last_seq, runtime FROM device WHERE id = 'd1'")).one()
        assert (device.last_seq, device.runtime) == (42, None)
        assert "press" in device.labels
        assert conn.execute(text("SELECT COUNT(*) FROM telemetry")).scalar() == 1
        assert conn.execute(text("SELECT COUNT(*) FROM drift")).scalar() == 0
        assert conn.execute(text("SELECT COUNT(*) FROM window_summary")).scalar() == 0
        version = conn.execute(text("SELECT stage, drift_reference FROM model_version")).one()
        assert (version.stage, version.drift_reference) == ("PRODUCTION", None)
    engine.dispose()


def test_admin_creates_tokens_that_authenticate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    upgrade(url)
    result = subprocess.run(
        [sys.executable, "-m", "cloud_controller.cli", "admin", "create-token", "--role", "viewer"],
        env={"EDGEFLEET_CONTROLLER__DATABASE_URL": url, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("ef_viewer_")
    from sqlmodel import Session

    from cloud_controller.auth import lookup
    from cloud_controller.db import make_engine

    with Session(make_engine(url)) as session:
        found = lookup(session=session, token=token)
        assert found is not None and found.role.value == "viewer"
        assert lookup(session=session, token=token + "x") is None
