"""Input outside the published schema is refused with a 422 naming it, on both stores: never a 500.

PostgreSQL refused these inside the query (a value outside an enum type, a NUL byte in text) and the
controller answered 500 where SQLite answered 200.
"""

from __future__ import annotations

import pytest

from tests.controller.conftest import Controller

CASES = [
    ("GET", "/api/v1/models/versions?stage=live", None, ["query", "stage"]),
    ("GET", "/api/v1/models/versions?model_id=m%00", None, ["query", "model_id"]),
    ("GET", "/api/v1/devices?model_version=1.0%00", None, ["query", "model_version"]),
    ("GET", "/api/v1/devices?label=line", None, ["query", "label", 0]),
    ("GET", "/api/v1/audit?resource=site/%00", None, ["query", "resource"]),
    ("GET", "/api/v1/sites/a%00b", None, ["path", "site_id"]),
    ("GET", "/api/v1/devices/%20dev", None, ["path", "device_id"]),
    ("GET", "/api/v1/bundles/ABC", None, ["path", "sha256"]),
    ("POST", "/api/v1/sites", {"id": ""}, ["body", "id"]),
    ("PATCH", "/api/v1/sites/site-a", {"name": "Plant\u0000A"}, ["body", "name"]),
    (
        "POST",
        "/api/v1/devices",
        {"id": "d1", "site_id": "site-a", "labels": {"li ne": "a"}},
        ["body", "labels"],
    ),
    ("POST", "/api/v1/groups", {"name": "g", "selector": {"line": "a\u0000"}}, ["body", "selector"]),
    (
        "POST",
        "/api/v1/deployments",
        {"group_id": 1, "model_id": "m\u0000", "version": "1"},
        ["body", "model_id"],
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "where"), CASES, ids=[f"{m} {p}" for m, p, _, _ in CASES])
def test_input_outside_the_schema_is_refused_naming_it(
    shared_controller: Controller, method: str, path: str, body: object, where: list[object]
) -> None:
    # One controller per store for every case: each request is refused before it changes anything.
    with shared_controller.client("operator") as client:
        client.post("/api/v1/sites", json={"id": "site-a"})
        response = client.request(method, path, json=body)
    assert response.status_code == 422, response.text
    assert [error["loc"][: len(where)] for error in response.json()["detail"]] == [where]


def test_dashboard_refuses_a_device_id_that_cannot_exist(shared_controller: Controller) -> None:
    with shared_controller.client(None) as client:
        client.cookies.set("edgefleet_token", shared_controller.tokens["viewer"])
        response = client.get("/devices/a%00b")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "device_id"]
