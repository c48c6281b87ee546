"""Schema migrations: from an empty database and from the previous revision, data kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import IntegrityError

from cloud_controller.migrate import current_revision, head_revision, upgrade
from tests.controller.conftest import database_url


def test_migrate_from_empty_reaches_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    upgrade(url)
    assert current_revision(url) == head_revision(url) == "0012"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.parametrize("previous", ["0008", "0006", "0001"])
def test_migrate_from_the_previous_revision_keeps_data(tmp_path: Path, previous: str, kind: str) -> None:
    for url in database_url(kind, tmp_path):
        _migrate_keeping_data(url, previous)


def _migrate_keeping_data(url: str, previous: str) -> None:
    """Rows written at ``previous`` survive `cloud-controller migrate`, which then stores 64-bit values
    and a device's model reason; ota.* events already stored name their rollout."""
    upgrade(url, previous)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO site (id, name, created_at) VALUES ('s1', 'Plant', 1.0)"))
        conn.execute(
            text(
                "INSERT INTO api_token (name, role, site_id, token_sha256, created_at, revoked)"
                " VALUES ('old-gw', 'GATEWAY', 's1', 'ab', 1.0, FALSE)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO device (id, site_id, hardware_profile, labels, online, last_seq, created_at)"
                " VALUES ('d1', 's1', 'rpi4', '{\"line\": \"press\"}', TRUE, 42, 1.0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO telemetry (device_id, seq, ts, site_id, model_id, model_version, anomaly,"
                " record, received_at) VALUES ('d1', 1, 5.0, 's1', 'm', '1.0.0', FALSE, '{}', 6.0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO model_version (model_id, version, stage, metrics, created_at)"
                " VALUES ('m', '1.0.0', 'PRODUCTION', '{}', 1.0)"
            )
        )
        if previous != "0001":  # events came with 0003
            conn.execute(
                text(
                    "INSERT INTO event (device_id, ts, kind, severity, message, data) VALUES"
                    " ('d1', 2.0, 'ota.promoted', 'info', 'ok', '{\"rollout_id\": \"r-0123abcd\"}'),"
                    " ('d1', 3.0, 'outbox.evicted', 'warning', 'full', '{\"rollout_id\": \"r-0123abcd\"}')"
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
    assert f"schema {previous} -> 0012" in result.stdout
    with engine.begin() as conn:
        device = conn.execute(
            text(
                "SELECT CAST(labels AS TEXT) AS labels, last_seq, runtime, model_reason, ota FROM device"
                " WHERE id = 'd1'"
            )
        ).one()
        assert (device.last_seq, device.runtime, device.model_reason, device.ota) == (42, None, None, None)
        assert "press" in device.labels
        conn.execute(text("UPDATE device SET model_reason = 'signature_invalid' WHERE id = 'd1'"))
        assert conn.execute(text("SELECT model_reason FROM device")).scalar() == "signature_invalid"
        conn.execute(text("UPDATE device SET last_seq = :seq WHERE id = 'd1'"), {"seq": 2**40})
        conn.execute(
            text(
                "INSERT INTO telemetry (device_id, seq, ts, site_id, model_id, model_version, predicted,"
                " anomaly, record, received_at) VALUES ('d1', :seq, 7.0, 's1', 'm', '1.0.0', :predicted,"
                " FALSE, '{}', 8.0)"
            ),
            {"seq": 2**40, "predicted": 2**31},
        )
        assert conn.execute(text("SELECT MAX(last_seq) FROM device")).scalar() == 2**40
        assert conn.execute(text("SELECT seq, predicted FROM telemetry ORDER BY seq")).all() == [
            (1, None),
            (2**40, 2**31),
        ]
        assert conn.execute(text("SELECT COUNT(*) FROM drift")).scalar() == 0
        # A token issued before expiry existed never expires (and was never seen in use).
        token = conn.execute(text("SELECT name, expires_at, last_used_at FROM api_token")).one()
        assert tuple(token) == ("old-gw", None, None)
        assert conn.execute(text("SELECT COUNT(*) FROM window_summary")).scalar() == 0
        if "0001" < previous < "0008":
            # An ota.* event's rollout, read from its data, so that the rollout's events are found.
            rollouts = conn.execute(text("SELECT kind, rollout_id FROM event ORDER BY ts")).all()
            assert rollouts == [("ota.promoted", "r-0123abcd"), ("outbox.evicted", None)]
        assert conn.execute(text("SELECT COUNT(*) FROM rollout")).scalar() == 0
        # Labels of a record stored before the labels came, and 64-bit seqs and classes.
        conn.execute(
            text(
                "INSERT INTO label (device_id, seq, label, labelled_at, received_at, site_id)"
                " VALUES ('d1', 1, 3, 9.0, 9.5, 's1'), ('d1', :seq, :label, 9.0, 9.5, 's1')"
            ),
            {"seq": 2**40, "label": 2**31},
        )
        joined = conn.execute(
            text(
                "SELECT t.seq, l.label FROM telemetry t JOIN label l"
                " ON l.device_id = t.device_id AND l.seq = t.seq ORDER BY t.seq"
            )
        ).all()
        assert joined == [(1, 3), (2**40, 2**31)]
        assert conn.execute(text("SELECT COUNT(*) FROM alarm")).scalar() == 0
        version = conn.execute(text("SELECT stage, drift_reference FROM model_version")).one()
        assert (version.stage, version.drift_reference) == ("PRODUCTION", None)
    _one_open_alarm_per_model_site_and_kind(engine)
    engine.dispose()


def _one_open_alarm_per_model_site_and_kind(engine: Engine) -> None:
    insert = text(
        "INSERT INTO alarm (model_id, site_id, kind, value, threshold, samples, action, fired_at,"
        " last_value, evaluated_at, resolved_at) VALUES ('m', 's1', 'accuracy', 0.5, 0.8, 40, 'auto',"
        " 1.0, 0.5, 1.0, :resolved)"
    )
    with engine.begin() as conn:
        conn.execute(insert, {"resolved": 2.0})
        conn.execute(insert, {"resolved": None})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert, {"resolved": None})


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_alarms_from_before_the_webhook_count_as_delivered(tmp_path: Path, kind: str) -> None:
    """An upgrade replays no history: fired (and resolved) alarms stored at 0011 are delivered; an
    alarm open now will notify its resolution."""
    for url in database_url(kind, tmp_path):
        upgrade(url, "0011")
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO alarm (model_id, site_id, kind, value, threshold, samples, action, fired_at,"
                    " last_value, evaluated_at, resolved_at) VALUES ('m', 's1', 'accuracy', 0.5, 0.8, 40,"
                    " 'auto', 1.0, 0.5, 1.0, 2.0), ('m', 's1', 'accuracy', 0.5, 0.8, 40, 'auto', 3.0, 0.5,"
                    " 3.0, NULL)"
                )
            )
        upgrade(url)
        with engine.begin() as conn:
            notices = conn.execute(text("SELECT fired_notice, resolved_notice FROM alarm ORDER BY id")).all()
        engine.dispose()
        assert [tuple(n) for n in notices] == [("delivered", "delivered"), ("delivered", None)]


def test_migrate_on_postgresql_makes_every_integer_64_bit(tmp_path: Path) -> None:
    for url in database_url("postgres", tmp_path):
        upgrade(url, "0005")
        upgrade(url)  # through 0006 (64-bit integers) and on
        engine = create_engine(url)
        with engine.begin() as conn:
            columns = conn.execute(
                text(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND data_type IN ('smallint', 'integer', 'bigint')"
                )
            ).all()
            sequences = conn.execute(
                text("SELECT sequence_name, data_type FROM information_schema.sequences")
            ).all()
            conn.execute(text("SELECT setval(pg_get_serial_sequence('event', 'id'), :id)"), {"id": 2**40})
            event_id = conn.execute(
                text(
                    "INSERT INTO event (device_id, ts, kind, severity, message, data)"
                    " VALUES ('d1', 1.0, 'ota.verified', 'info', 'ok', '{}') RETURNING id"
                )
            ).scalar()
        engine.dispose()
        assert [c for c in columns if c.data_type != "bigint"] == []
        assert {("telemetry", "seq"), ("device", "last_seq"), ("deployment", "group_id")} <= {
            (c.table_name, c.column_name) for c in columns
        }
        assert sorted(sequences) == [
            ("alarm_id_seq", "bigint"),
            ("api_token_id_seq", "bigint"),
            ("audit_log_id_seq", "bigint"),
            ("deployment_id_seq", "bigint"),
            ("device_group_id_seq", "bigint"),
            ("drift_id_seq", "bigint"),
            ("event_id_seq", "bigint"),
            ("job_round_id_seq", "bigint"),
            ("model_version_id_seq", "bigint"),
            ("rollout_decision_id_seq", "bigint"),
        ]
        assert event_id == 2**40 + 1


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
