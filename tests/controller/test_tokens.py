"""API tokens: lifetimes, listing and revoking (API and CLI), gateway tokens bound to a site."""

from __future__ import annotations

import json
import time

import pytest
from sqlmodel import Session

from cloud_controller.auth import DAY_S, create_token, hash_token
from cloud_controller.db import make_engine
from cloud_controller.models import ApiToken, Role
from tests.controller.conftest import Controller
from tests.controller.factories import batch


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_operator_creates_lists_and_revokes_a_token_and_each_change_is_audited(
    shared_controller: Controller,
) -> None:
    with shared_controller.client("operator") as client:
        created = client.post("/api/v1/tokens", json={"role": "viewer", "name": "alice", "expires_in": "30d"})
        assert created.status_code == 201, created.text
        token = created.json()
        assert token["token"].startswith("ef_viewer_")
        assert token["expires_at"] - token["created_at"] == pytest.approx(30 * DAY_S)
        assert client.get("/api/v1/sites", headers=_bearer(token["token"])).status_code == 200

        listed = client.get("/api/v1/tokens").json()
        row = next(t for t in listed["data"] if t["id"] == token["id"])
        assert (row["name"], row["role"], row["state"], row["revoked"]) == (
            "alice",
            "viewer",
            "active",
            False,
        )
        assert row["last_used_at"] is not None, "the request above used it"
        assert token["token"] not in json.dumps(listed) and "sha256" not in json.dumps(listed)

        revoked = client.delete(f"/api/v1/tokens/{token['id']}")
        assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
        refused = client.get("/api/v1/sites", headers=_bearer(token["token"]))
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]

        trail = client.get("/api/v1/audit", params={"resource": f"token/{token['id']}"}).json()
    assert [(e["actor"], e["action"]) for e in trail] == [
        ("operator:test-operator", "revoke"),
        ("operator:test-operator", "create"),
    ]
    assert trail[0]["before"]["revoked"] is False and trail[0]["after"]["revoked"] is True
    assert token["token"] not in json.dumps(trail) and hash_token(token["token"]) not in json.dumps(trail)


def test_tokens_live_90_days_for_people_365_for_machines_unless_told(shared_controller: Controller) -> None:
    bodies = {
        "operator": {"role": "operator", "name": "ops"},
        "gateway": {"role": "gateway", "name": "gw-north", "site_id": "site-a"},
        "device": {"role": "device", "name": "dev"},
        "never": {"role": "viewer", "name": "wallboard", "expires_in": "never"},
        "12h": {"role": "gateway", "name": "gw-short", "site_id": "site-a", "expires_in": "12h"},
    }
    with shared_controller.client("operator") as client:
        made = {k: client.post("/api/v1/tokens", json=body).json() for k, body in bodies.items()}
    lifetimes = {k: t["expires_at"] and t["expires_at"] - t["created_at"] for k, t in made.items()}
    assert lifetimes == pytest.approx(
        {"operator": 90 * DAY_S, "gateway": 365 * DAY_S, "device": 365 * DAY_S, "never": None, "12h": 43200}
    )
    assert made["gateway"]["site_id"] == "site-a"


def test_api_refuses_a_gateway_token_without_a_site(shared_controller: Controller) -> None:
    with shared_controller.client("operator") as client:
        refused = client.post("/api/v1/tokens", json={"role": "gateway", "name": "gw-anywhere"})
        bad_lifetime = client.post(
            "/api/v1/tokens", json={"role": "viewer", "name": "v", "expires_in": "3 weeks"}
        )
        listed = client.get("/api/v1/tokens").json()
    assert refused.status_code == 422
    assert "site_id" in json.dumps(refused.json()["detail"])
    assert bad_lifetime.status_code == 422 and "expires_in" in json.dumps(bad_lifetime.json()["detail"])
    assert "gw-anywhere" not in {t["name"] for t in listed["data"]}


def test_only_operators_manage_tokens_and_a_token_cannot_revoke_itself(shared_controller: Controller) -> None:
    for role in ("viewer", "gateway", "device"):
        with shared_controller.client(role) as client:
            assert client.get("/api/v1/tokens").status_code == 403
            assert client.post("/api/v1/tokens", json={"role": "operator", "name": "x"}).status_code == 403
            assert client.delete("/api/v1/tokens/1").status_code == 403
    with shared_controller.client("operator") as client:
        me = next(t for t in client.get("/api/v1/tokens").json()["data"] if t["name"] == "test-operator")
        refused = client.delete(f"/api/v1/tokens/{me['id']}")
        missing = client.delete("/api/v1/tokens/999999")
        assert client.get("/api/v1/tokens").status_code == 200, "still signed in"
    assert refused.status_code == 409 and "cannot revoke itself" in refused.json()["detail"]
    assert missing.status_code == 404 and missing.json()["detail"] == "Token not found"


def test_expired_token_gets_401_saying_it_expired(shared_controller: Controller) -> None:
    engine = make_engine(shared_controller.database_url)
    with Session(engine) as session:
        # Issued two hours ago for one hour: the clock is driven through `now`, not slept.
        expired = create_token(
            session=session, name="old-viewer", role=Role.VIEWER, expires_in_s=3600, now=time.time() - 7200
        )
    engine.dispose()
    with shared_controller.client(None) as client:
        answer = client.get("/api/v1/sites", headers=_bearer(expired))
        unknown = client.get("/api/v1/sites", headers=_bearer("ef_viewer_nothing"))
    assert answer.status_code == 401
    assert answer.json()["detail"].startswith("Token expired at ")
    assert "expired" not in unknown.json()["detail"]


def test_gateway_token_without_a_site_from_before_is_refused_at_ingest(shared_controller: Controller) -> None:
    engine = make_engine(shared_controller.database_url)
    with Session(engine) as session:
        # As `admin create-token --role gateway` made them before sites were required.
        secret = "ef_gateway_issued-before-0011"
        session.add(ApiToken(name="gw-legacy", role=Role.GATEWAY, token_sha256=hash_token(secret)))
        session.commit()
    engine.dispose()
    with shared_controller.client(None) as client:
        refused = client.post(
            "/api/v1/ingest",
            content=batch(devices={"dev-legacy": range(1, 4)}).model_dump_json(),
            headers=_bearer(secret),
        )
        desired = client.get("/api/v1/sites/site-a/desired", headers=_bearer(secret))
    with shared_controller.client("operator") as client:
        stored = client.get("/api/v1/devices/dev-legacy/telemetry")
    assert refused.status_code == 403
    assert "names no site" in refused.json()["detail"] and "--site" in refused.json()["detail"]
    assert desired.status_code == 403
    assert stored.status_code == 404 or stored.json() == []


def test_admin_cli_creates_lists_and_revokes_tokens(sqlite_controller: Controller) -> None:
    ctl = sqlite_controller
    no_site = ctl.cli("admin", "create-token", "--role", "gateway", "--name", "gw-x")
    assert no_site.returncode == 2 and "must name its site" in no_site.stderr
    made = ctl.cli("admin", "create-token", "--role", "gateway", "--site", "site-a", "--name", "gw-cli",
                   "--expires-in", "12h")  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    with ctl.client(None) as client:
        ok = client.post("/api/v1/ingest", content=batch().model_dump_json(), headers=_bearer(secret))
        assert ok.status_code == 200, ok.text

    listed = ctl.cli("admin", "list-tokens", "--json")
    assert listed.returncode == 0, listed.stderr
    row = next(t for t in json.loads(listed.stdout)["data"] if t["name"] == "gw-cli")
    assert (row["role"], row["site_id"], row["state"]) == ("gateway", "site-a", "active")
    assert row["expires_at"] - row["created_at"] == pytest.approx(12 * 3600)
    assert row["last_used_at"] is not None
    table = ctl.cli("admin", "list-tokens")
    assert "gw-cli" in table.stdout and "never" not in table.stdout.split("gw-cli")[1].splitlines()[0]
    assert secret not in listed.stdout + table.stdout

    revoked = ctl.cli("admin", "revoke-token", "gw-cli")
    assert revoked.returncode == 0 and f"token {row['id']} (gw-cli, gateway) revoked" in revoked.stdout
    assert ctl.cli("admin", "revoke-token", "no-such-token").returncode == 1
    with ctl.client(None) as client:
        refused = client.post("/api/v1/ingest", content=batch().model_dump_json(), headers=_bearer(secret))
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    with ctl.client("operator") as client:
        trail = client.get("/api/v1/audit", params={"resource": f"token/{row['id']}"}).json()
    assert [(e["actor"], e["action"]) for e in trail] == [("admin", "revoke"), ("admin", "create")]
