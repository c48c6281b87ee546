"""Every endpoint x every role: allowed, or 401/403 — nothing else."""

from __future__ import annotations

import pytest

from tests.controller.conftest import Controller
from tests.controller.factories import batch

ROLES = [None, "viewer", "operator", "gateway", "device"]

# method, path, json body (or raw bytes for ingest), roles allowed
ENDPOINTS: list[tuple[str, str, object, set[str]]] = [
    ("GET", "/api/v1/sites", None, {"viewer", "operator"}),
    ("POST", "/api/v1/sites", {"id": "site-m", "name": "m"}, {"operator"}),
    ("GET", "/api/v1/sites/site-a", None, {"viewer", "operator"}),
    ("PATCH", "/api/v1/sites/site-a", {"name": "renamed"}, {"operator"}),
    ("GET", "/api/v1/devices", None, {"viewer", "operator"}),
    ("POST", "/api/v1/devices", {"id": "dev-m", "site_id": "site-a"}, {"operator"}),
    ("GET", "/api/v1/devices/dev-1", None, {"viewer", "operator"}),
    ("PATCH", "/api/v1/devices/dev-1", {"labels": {"a": "b"}}, {"operator"}),
    ("GET", "/api/v1/devices/dev-1/desired", None, {"viewer", "operator"}),
    ("GET", "/api/v1/devices/dev-1/telemetry", None, {"viewer", "operator"}),
    ("GET", "/api/v1/devices/dev-1/summaries", None, {"viewer", "operator"}),
    ("GET", "/api/v1/gateways", None, {"viewer", "operator"}),
    ("POST", "/api/v1/gateways", {"id": "gw-m", "site_id": "site-a"}, {"operator"}),
    ("GET", "/api/v1/gateways/gw-m", None, {"viewer", "operator"}),
    ("PATCH", "/api/v1/gateways/gw-m", {"name": "north"}, {"operator"}),
    ("GET", "/api/v1/models", None, {"viewer", "operator"}),
    ("GET", "/api/v1/groups", None, {"viewer", "operator"}),
    ("GET", "/api/v1/groups/1", None, {"viewer", "operator"}),
    ("PATCH", "/api/v1/groups/1", {"selector": {"line": "a"}}, {"operator"}),
    ("POST", "/api/v1/groups", {"name": "g-m", "selector": {}}, {"operator"}),
    ("GET", "/api/v1/deployments", None, {"viewer", "operator"}),
    ("POST", "/api/v1/deployments", {"group_id": 1, "model_id": "x", "version": "1.0.0"}, {"operator"}),
    ("GET", "/api/v1/rollouts", None, {"viewer", "operator"}),
    (
        "POST",
        "/api/v1/rollouts",
        {"model_id": "x", "version": "1.0.0", "group": "g-m", "waves": [{"percent": 100}]},
        {"operator"},
    ),
    ("GET", "/api/v1/rollouts/r-00000000", None, {"viewer", "operator"}),
    ("POST", "/api/v1/rollouts/r-00000000/pause", None, {"operator"}),
    ("POST", "/api/v1/rollouts/r-00000000/resume", None, {"operator"}),
    ("POST", "/api/v1/rollouts/r-00000000/abort", None, {"operator"}),
    ("GET", "/api/v1/models/versions", None, {"viewer", "operator"}),
    ("GET", "/api/v1/models/versions/1", None, {"viewer", "operator"}),
    ("PATCH", "/api/v1/models/versions/1", {"stage": "staging"}, {"operator"}),
    ("POST", "/api/v1/bundles", b"not a tar", {"operator"}),
    ("GET", "/api/v1/bundles/" + "0" * 64, None, {"viewer", "operator", "gateway", "device"}),
    ("POST", "/api/v1/ingest", batch(site="site-a").model_dump_json().encode(), {"gateway"}),
    ("GET", "/api/v1/sites/site-a/desired", None, {"viewer", "operator", "gateway"}),
    ("GET", "/api/v1/audit", None, {"operator"}),
]


@pytest.fixture
def seeded(sqlite_controller: Controller) -> Controller:
    with sqlite_controller.client("operator") as client:
        client.post("/api/v1/sites", json={"id": "site-a"})
        client.post("/api/v1/devices", json={"id": "dev-1", "site_id": "site-a"})
    return sqlite_controller


def test_role_matrix(seeded: Controller) -> None:
    wrong = []
    for method, path, body, allowed in ENDPOINTS:
        for role in ROLES:
            with seeded.client(role) as client:
                kwargs = (
                    {"content": body}
                    if isinstance(body, bytes)
                    else {"json": body}
                    if body is not None
                    else {}
                )
                status = client.request(method, path, **kwargs).status_code  # type: ignore[arg-type]
            if role is None:
                ok = status == 401
            elif role in allowed:
                ok = status not in (401, 403) and status < 500
            else:
                ok = status == 403
            if not ok:
                wrong.append(f"{method} {path} as {role}: {status}")
    assert wrong == []
