"""The controller's API over a real server process, on SQLite and on PostgreSQL."""

from __future__ import annotations

import gzip
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fleet_protocol import DeviceEvent, Severity
from model_compiler.archive import pack
from tests.controller.conftest import Controller
from tests.controller.factories import batch, drift, records, state


def _ingest(ctl: Controller, body: bytes, role: str = "gateway", **headers: str):  # type: ignore[no-untyped-def]
    with ctl.client(role) as client:
        return client.post(
            "/api/v1/ingest", content=body, headers={"Content-Type": "application/json", **headers}
        )


def test_ingest_is_idempotent_on_device_and_seq(controller: Controller) -> None:
    first = batch(devices={"dev-1": range(1, 11)})
    response = _ingest(controller, first.model_dump_json().encode())
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 10 and response.json()["duplicates"] == 0
    again = first.model_copy(update={"batch_id": "retry"})
    response = _ingest(controller, again.model_dump_json().encode())
    assert response.json()["accepted"] == 0 and response.json()["duplicates"] == 10
    overlapping = batch(devices={"dev-1": range(6, 16)})
    assert _ingest(controller, overlapping.model_dump_json().encode()).json()["accepted"] == 5
    with controller.client("viewer") as client:
        rows = client.get("/api/v1/devices/dev-1/telemetry", params={"limit": 100}).json()
    assert sorted(r["seq"] for r in rows) == list(range(1, 16))
    with controller.client("viewer") as client:
        gateway = client.get("/api/v1/gateways/gw-1").json()
    assert (gateway["site_id"], gateway["records_ingested"], gateway["last_batch_id"]) == (
        "site-a",
        15,
        overlapping.batch_id,
    )


def test_ingest_under_concurrent_duplicate_batches_stores_each_record_once(controller: Controller) -> None:
    batches = [batch(devices={"dev-2": range(1 + 50 * (i % 3), 101 + 50 * (i % 3))}) for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda b: _ingest(controller, b.model_dump_json().encode()), batches))
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]
    accepted = sum(r.json()["accepted"] for r in results)
    assert accepted == 200, "seq 1..200 stored once each, whatever the interleaving"
    with controller.client("viewer") as client:
        rows = client.get("/api/v1/devices/dev-2/telemetry", params={"limit": 1000}).json()
    assert sorted(r["seq"] for r in rows) == list(range(1, 201))


def test_ingest_rejects_unknown_schema_version_and_stores_nothing(controller: Controller) -> None:
    body = json.loads(batch(devices={"dev-3": range(1, 6)}).model_dump_json())
    body["schema_version"] = 9
    response = _ingest(controller, json.dumps(body).encode())
    assert response.status_code == 422
    assert "schema_version 9 is not supported" in response.json()["detail"]
    body["schema_version"] = 1
    body["records"][3]["seq"] = -1  # one bad record: the whole batch is refused
    response = _ingest(controller, json.dumps(body).encode())
    assert response.status_code == 422
    assert "records.3.seq" in response.json()["detail"]
    with controller.client("viewer") as client:
        assert client.get("/api/v1/devices/dev-3/telemetry").json() == []


def test_ingest_accepts_gzip_and_refuses_a_gzip_bomb(sqlite_controller: Controller) -> None:
    ctl = sqlite_controller
    body = gzip.compress(batch(devices={"dev-4": range(1, 101)}).model_dump_json().encode())
    response = _ingest(ctl, body, **{"Content-Encoding": "gzip"})
    assert response.status_code == 200 and response.json()["accepted"] == 100
    bomb = gzip.compress(b"{" + b" " * (40 * 1024 * 1024) + b"}")
    response = _ingest(ctl, bomb, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413
    response = _ingest(ctl, b"\x1f\x8b not gzip", **{"Content-Encoding": "gzip"})
    assert response.status_code == 400


def test_gateway_token_is_bound_to_its_site(sqlite_controller: Controller) -> None:
    response = _ingest(sqlite_controller, batch(site="site-a").model_dump_json().encode(), role="gateway-b")
    assert response.status_code == 403
    assert response.json()["detail"] == "This gateway token is for site site-b, not site-a"


def test_device_presence_drift_and_events_from_ingest_show_in_api_and_metrics(controller: Controller) -> None:
    payload = batch(devices={"dev-5": range(1, 3)}).model_copy(
        update={
            "devices": [state("dev-5"), state("dev-6", online=False)],
            "drift": [drift(0.0), drift(60.0)],
            "events": [
                DeviceEvent(
                    device_id="dev-5",
                    kind="outbox.evicted",
                    severity=Severity.WARNING,
                    message="outbox bound reached",
                )
            ],
        }
    )
    result = _ingest(controller, payload.model_dump_json().encode()).json()
    assert (result["devices_updated"], result["drift_stored"], result["events_stored"]) == (2, 2, 1)
    retry = _ingest(
        controller, payload.model_copy(update={"batch_id": "x", "events": []}).model_dump_json().encode()
    )
    assert retry.json()["drift_stored"] == 0, "a drift window is stored once"
    with controller.client("viewer") as client:
        device = client.get("/api/v1/devices/dev-5").json()
        online = client.get("/api/v1/devices", params={"site_id": "site-a", "online": True}).json()
        metrics = client.get("/metrics").text
    assert (device["online"], device["model_version"], device["runtime"]) == (True, "1.0.0", "onnxruntime")
    assert [d["id"] for d in online["data"]] == ["dev-5"]
    assert 'edgefleet_devices{online="true",site="site-a"} 1.0' in metrics
    assert 'edgefleet_devices{online="false",site="site-a"} 1.0' in metrics
    assert "edgefleet_ingest_records_total 2.0" in metrics
    # Window 60's first feature mean moved 6 reference std: (6 + 0) / 2 features = 3.
    assert 'edgefleet_drift_score{model="sensor-mlp@1.0.0",site="site-a"} 3.0' in metrics


def _upload(ctl: Controller, bundle_dir: Path, role: str = "operator"):  # type: ignore[no-untyped-def]
    archive = pack(bundle_dir)
    with ctl.client(role) as client:
        return client.post("/api/v1/bundles", content=archive.read_bytes())


def test_registry_deployment_and_desired_state_with_etags(controller: Controller, bundles) -> None:  # type: ignore[no-untyped-def]
    with controller.client("operator") as client:
        assert client.post("/api/v1/sites", json={"id": "site-a", "name": "Plant A"}).status_code == 201
        for device, line in (("dev-7", "press"), ("dev-8", "lathe")):
            response = client.post(
                "/api/v1/devices", json={"id": device, "site_id": "site-a", "labels": {"line": line}}
            )
            assert response.status_code == 201, response.text
        uploaded = _upload(controller, bundles["onnx-int8"])
        assert uploaded.status_code == 201, uploaded.text
        bundle = uploaded.json()
        versions = client.get("/api/v1/models/versions", params={"model_id": "sensor-mlp"}).json()
        assert [(v["version"], v["stage"]) for v in versions] == [("1.0.0", "candidate")]
        assert list(versions[0]["metrics"]) == [f"onnxruntime {bundle['sha256'][:12]}"]
        group = client.post("/api/v1/groups", json={"name": "presses", "selector": {"line": "press"}}).json()
        with controller.client("gateway") as gw:
            before = gw.get("/api/v1/sites/site-a/desired")
            assert before.status_code == 200
            tag = before.headers["ETag"]
            assert gw.get("/api/v1/sites/site-a/desired", headers={"If-None-Match": tag}).status_code == 304
            deployed = client.post(
                "/api/v1/deployments",
                json={"group_id": group["id"], "model_id": "sensor-mlp", "version": "1.0.0"},
            )
            assert deployed.status_code == 201, deployed.text
            after = gw.get("/api/v1/sites/site-a/desired", headers={"If-None-Match": tag})
        assert after.status_code == 200 and after.headers["ETag"] != tag
        states = {s["device_id"]: s for s in after.json()["states"]}
        assert states["dev-7"]["model"]["version"] == "1.0.0"
        assert states["dev-7"]["model"]["manifest_sha256"] == bundle["manifest_sha256"]
        assert states["dev-7"]["revision"] > 0 and states["dev-8"]["revision"] == 0
        assert states["dev-8"]["model"] is None, "the group selects presses only"
        with controller.client("gateway-b") as other:
            assert other.get("/api/v1/sites/site-a/desired").status_code == 403


def test_bundle_download_supports_range_requests(sqlite_controller: Controller, bundles) -> None:  # type: ignore[no-untyped-def]
    uploaded = _upload(sqlite_controller, bundles["openvino-fp32"]).json()
    with sqlite_controller.client("gateway") as client:
        whole = client.get(f"/api/v1/bundles/{uploaded['sha256']}")
        part = client.get(f"/api/v1/bundles/{uploaded['sha256']}", headers={"Range": "bytes=100-"})
    assert whole.status_code == 200 and hashlib.sha256(whole.content).hexdigest() == uploaded["sha256"]
    assert part.status_code == 206 and part.content == whole.content[100:]


def test_tampered_bundle_upload_is_refused_with_the_reason(
    sqlite_controller: Controller, bundles, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundles["onnx-fp32"], copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[200] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    response = _upload(sqlite_controller, copy)
    assert response.status_code == 422
    assert "model.onnx does not match its sha256" in response.json()["detail"]
    with sqlite_controller.client("viewer") as client:
        assert client.get("/api/v1/models/versions").json() == []


def test_changes_are_audited_with_before_and_after(sqlite_controller: Controller) -> None:
    with sqlite_controller.client("operator") as client:
        client.post("/api/v1/sites", json={"id": "site-z", "name": "old"})
        client.patch("/api/v1/sites/site-z", json={"name": "new"})
        entries = client.get("/api/v1/audit", params={"resource": "site/site-z"}).json()
    assert [e["action"] for e in entries] == ["update", "create"]
    assert entries[0]["before"]["name"] == "old" and entries[0]["after"]["name"] == "new"
    assert entries[0]["actor"] == "operator:test-operator"


def test_api_errors_say_what_is_missing(sqlite_controller: Controller) -> None:
    with sqlite_controller.client("viewer") as client:
        assert client.get("/api/v1/devices/nope").json() == {"detail": "Device not found"}
    with sqlite_controller.client(None) as client:
        response = client.get("/api/v1/devices")
    assert response.status_code == 401 and response.json() == {"detail": "Missing bearer token"}
    with sqlite_controller.client("operator") as client:
        response = client.post("/api/v1/devices", json={"id": "d", "site_id": "no-such-site"})
    assert response.status_code == 404 and response.json() == {"detail": "Site not found"}


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_endpoints(sqlite_controller: Controller, path: str) -> None:
    with sqlite_controller.client(None) as client:
        assert client.get(path).status_code == 200


def test_ingest_refuses_integers_no_database_can_store(sqlite_controller: Controller) -> None:
    body = json.loads(batch(devices={"dev-9": range(1, 3)}).model_dump_json())
    body["records"][0]["seq"] = 2**64
    response = _ingest(sqlite_controller, json.dumps(body).encode())
    assert response.status_code == 422
    assert (
        "records.0.seq: Input should be less than or equal to 9223372036854775807"
        in response.json()["detail"]
    )


def test_ingest_stores_sequence_numbers_and_counts_beyond_32_bits(controller: Controller) -> None:
    seq = 2**40
    record = records("dev-10", range(seq, seq + 1))[0].model_copy(update={"predicted": 2**31})
    payload = batch().model_copy(
        update={
            "records": [record],
            "devices": [state("dev-10").model_copy(update={"last_seq": seq})],
            "drift": [drift(0.0).model_copy(update={"count": seq})],
        }
    )
    response = _ingest(controller, payload.model_dump_json().encode())
    assert response.status_code == 200, response.text
    assert (response.json()["accepted"], response.json()["drift_stored"]) == (1, 1)
    retry = _ingest(controller, payload.model_copy(update={"batch_id": "retry"}).model_dump_json().encode())
    assert (retry.json()["accepted"], retry.json()["duplicates"]) == (0, 1)
    with controller.client("viewer") as client:
        device = client.get("/api/v1/devices/dev-10").json()
        rows = client.get("/api/v1/devices/dev-10/telemetry").json()
        gateway = client.get("/api/v1/gateways/gw-1").json()
    assert device["last_seq"] == seq
    assert [(r["seq"], r["predicted"]) for r in rows] == [(seq, 2**31)]
    assert gateway["records_ingested"] == 1


def test_ids_beyond_32_bits_are_not_found(controller: Controller) -> None:
    with controller.client("operator") as client:
        group = client.get(f"/api/v1/groups/{2**40}")
        version = client.patch(f"/api/v1/models/versions/{2**40}", json={"stage": "staging"})
        deployment = client.post(
            "/api/v1/deployments", json={"group_id": 2**40, "model_id": "sensor-mlp", "version": "1.0.0"}
        )
    assert (group.status_code, group.json()["detail"]) == (404, "Group not found")
    assert (version.status_code, version.json()["detail"]) == (404, "Model version not found")
    assert (deployment.status_code, deployment.json()["detail"]) == (404, "Group not found")


def test_listing_refuses_offsets_beyond_64_bits(sqlite_controller: Controller) -> None:
    with sqlite_controller.client("viewer") as client:
        assert client.get("/api/v1/sites", params={"skip": 2**70}).status_code == 422
        assert client.get(f"/api/v1/models/versions/{2**70}").status_code == 422
