"""The gateway's processing, message batch by message batch, against a real SQLite store."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from edge_gateway.config import DeviceClass, load_settings
from edge_gateway.dedup import DedupWindow
from edge_gateway.filters import Reducer
from edge_gateway.metrics import GatewayMetrics
from edge_gateway.mqtt_link import Message
from edge_gateway.pipeline import Pipeline
from edge_gateway.store import GatewayStore
from edge_gateway.summaries import WindowStats, moments
from edge_gateway.uplink import ingest_body
from edge_gateway.validate import Rejection, validate
from fleet_protocol import decode, population_stability_index
from fleet_protocol.ingest import DriftSummary, IngestBatch, WindowSummary
from fleet_protocol.pacing import ByteBudget
from model_compiler.reference import drift_reference
from tests.gateway.factories import record, telemetry

T0 = 1_800_000_000.0


def _settings(tmp_path: Path, **extra: object):  # type: ignore[no-untyped-def]
    return load_settings(None, gateway_id="gw-1", site="site-a", data_dir=str(tmp_path), **extra)


def _messages(*pairs: tuple[str, bytes]) -> list[Message]:
    return [Message(topic, payload, False, 1, i + 1, 1) for i, (topic, payload) in enumerate(pairs)]


def _kinds(changes) -> dict[str, list[dict]]:  # type: ignore[no-untyped-def]
    out: dict[str, list[dict]] = {}
    for kind, body in changes.upstream:
        out.setdefault(kind, []).append(json.loads(body))
    return out


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("fleet/site-a/dev-1", b"{}", "invalid_topic"),
        ("fleet/site-a/dev-1/telemetry/extra", b"{}", "invalid_topic"),
        ("fleet/site-a/dev-1/gossip", b"{}", "invalid_topic"),
        ("fleet/site-b/dev-1/telemetry", telemetry("dev-1", range(1, 2), site="site-b"), "wrong_site"),
        ("fleet/site-a/dev-1/telemetry", b"\xff\x00garbage", "malformed"),
        ("fleet/site-a/dev-1/telemetry", b"[1, 2]", "malformed"),
        ("fleet/site-a/dev-1/telemetry", b"x" * (300 * 1024), "too_large"),
        (
            "fleet/site-a/dev-1/telemetry",
            json.dumps({"schema_version": 9}).encode(),
            "unknown_schema_version",
        ),
        ("fleet/site-a/dev-2/telemetry", telemetry("dev-1", range(1, 2)), "device_mismatch"),
        ("fleet/site-a/dev-1/telemetry", telemetry("dev-1", range(1, 2), site="site-b"), "site_mismatch"),
        ("fleet/site-a/dev-1/events", b"", "malformed"),
    ],
)
def test_validate_rejects_with_a_reason(topic: str, payload: bytes, reason: str) -> None:
    result = validate(topic, payload, "site-a")
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.detail


def test_validate_ignores_desired_state_and_cleared_retained_state() -> None:
    assert validate("fleet/site-a/dev-1/desired", b"anything", "site-a") is None
    assert validate("fleet/site-a/dev-1/state", b"", "site-a") is None


def test_dedup_window_remembers_recent_seqs_and_lets_stale_ones_through() -> None:
    window = DedupWindow(size=64)
    assert [window.check("d", s) for s in (1, 2, 3, 2, 5, 4, 4)] == [
        True,
        True,
        True,
        False,
        True,
        True,
        False,
    ]
    assert window.check("d", 1000) and not window.check("d", 1000)
    assert window.check("d", 10), "older than the window: let through, the controller dedups"
    assert window.stale == 1
    assert window.check("other", 2), "devices are independent"
    hwm, bits = window.export("d")
    restored = DedupWindow(size=64)
    restored.load("d", hwm, bits)
    assert not restored.check("d", 1000) and restored.check("d", 999)


def test_reducer_keeps_flagged_samples_deterministically_and_applies_the_deadband() -> None:
    reducer = Reducer([DeviceClass(name="c", sample_rate=0.1, deadband=5.0)])
    cls = reducer.class_for("dev-1", "sensor-mlp")
    assert reducer.forward(cls, record("dev-1", 1, features=[0.0, 0.0])), "first record sets the deadband"
    assert reducer.forward(cls, record("dev-1", 2, features=[0.1, 0.0], anomaly=True)), "flagged"
    moved = reducer.forward(cls, record("dev-1", 3, features=[9.0, 0.0]))
    assert moved, "past the deadband"

    def sampled() -> list[int]:
        sampler = Reducer([DeviceClass(name="c", sample_rate=0.1)])
        c = sampler.class_for("dev-1", "sensor-mlp")
        return [s for s in range(4, 2004) if sampler.forward(c, record("dev-1", s, anomaly=False))]

    first = sampled()
    assert 150 < len(first) < 250, "about a tenth"
    assert sampled() == first, "a record seen again after a restart gets the same answer"


def test_device_classes_match_first_by_device_then_model_glob() -> None:
    reducer = Reducer(
        [
            DeviceClass(name="presses", devices=["press-*"], forward_all=True),
            DeviceClass(name="cnn", models=["vib-*"]),
        ]
    )
    assert reducer.class_for("press-7", "sensor-mlp").name == "presses"
    assert reducer.class_for("lathe-1", "vib-cnn").name == "cnn"
    assert reducer.class_for("lathe-1", "sensor-mlp").name == "default"


def test_window_summary_statistics_match_numpy_and_survive_a_pack_round_trip() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(200, 4))
    stats = WindowStats(window_s=60.0, class_means=True)
    records = [record("dev-1", i + 1, features=row.tolist(), predicted=i % 2) for i, row in enumerate(x)]
    for chunk in (slice(0, 1), slice(1, 120), slice(120, 200)):  # added in pieces, as batches arrive
        (m,) = moments([records[chunk]])
        stats.add(records[chunk], [i < 5 for i in range(200)][chunk], T0, m)
    stats = WindowStats.unpack(stats.pack())
    summary = stats.summary(("dev-1", T0, "sensor-mlp", "1.0.0"), ["a", "b", "c", "d"])
    assert summary.count == 200 and summary.forwarded == 5
    assert (summary.first_seq, summary.last_seq) == (1, 200)
    assert np.allclose(summary.mean, x.mean(axis=0), atol=1e-5)
    assert np.allclose(summary.std, x.std(axis=0), atol=1e-5)
    assert np.allclose(summary.min, x.min(axis=0)) and np.allclose(summary.max, x.max(axis=0))
    assert [(c.predicted, c.count) for c in summary.classes] == [(0, 100), (1, 100)]
    assert np.allclose(summary.classes[1].mean or [], x[1::2].mean(axis=0), atol=1e-5)


def test_class_means_start_again_when_a_device_changes_its_input_width() -> None:
    stats = WindowStats(window_s=60.0, class_means=True)
    wide = [record("dev-1", i, features=[1.0, 2.0, 3.0], predicted=0) for i in range(1, 4)]
    narrow = [record("dev-1", i, features=[5.0, 7.0], predicted=0) for i in range(4, 6)]
    for batch in (wide, narrow):
        (m,) = moments([batch])
        stats.add(batch, [False] * len(batch), T0, m)
    summary = WindowStats.unpack(stats.pack()).summary(("dev-1", T0, "sensor-mlp", "1.0.0"), None)
    assert summary.count == 5 and summary.classes[0].count == 5
    assert summary.classes[0].mean == [5.0, 7.0], "the mean of the rows of the current width"


async def test_a_piece_closed_for_too_many_runs_goes_on_in_a_new_piece_that_the_store_keeps(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, device_classes=[{"name": "c", "window_s": 60}])
    store = GatewayStore(tmp_path / "gateway.sqlite")
    pipeline = Pipeline(settings, GatewayMetrics())
    pipeline.restore(await store.open())
    # Every other seq: one run each, more than a summary may list (in one window of record time).
    odd = [s for s in range(1, 2 * 300, 2)]
    changes = pipeline.process(
        _messages(*[("fleet/site-a/dev-1/telemetry", telemetry("dev-1", [s], ts=T0 + 1)) for s in odd]),
        now=T0 + 2,
    )
    await store.commit(changes)
    early = [json.loads(body) for kind, body in changes.upstream if kind == "summary"]
    assert len(early) == 1 and len(early[0]["seq_ranges"]) == 256, "the full piece went up at once"
    # Restarted from the store, the open piece holds the rest: no record is lost from the summaries.
    again = Pipeline(settings, GatewayMetrics())
    again.restore(await store.snapshot())
    rest = again.windows.close_due(T0 + 1000, {})
    assert [s.count for s in rest] == [300 - 256]
    counted = {low for piece in (*early,) for low, _ in piece["seq_ranges"]}
    counted |= {low for s in rest for low, _ in s.seq_ranges or []}
    assert counted == set(odd)
    await store.close()


def test_pipeline_forwards_flagged_summarises_the_rest_and_drops_duplicates(tmp_path: Path) -> None:
    settings = _settings(tmp_path, device_classes=[{"name": "c", "window_s": 10}])
    pipeline = Pipeline(settings, GatewayMetrics())
    first = telemetry("dev-1", range(1, 11), anomaly=False)
    flagged = telemetry("dev-1", range(11, 13), anomaly=True)
    changes = pipeline.process(
        _messages(
            ("fleet/site-a/dev-1/telemetry", first),
            ("fleet/site-a/dev-1/telemetry", flagged),
            ("fleet/site-a/dev-1/telemetry", first),  # resent after a lost PUBACK
            ("fleet/site-a/dev-1/telemetry", b"{oops"),
        ),
        now=T0 + 12,
    )
    kinds = _kinds(changes)
    assert [r["seq"] for r in kinds["record"]] == [11, 12]
    assert "summary" not in kinds, "the window is still open"
    assert [d[2] for d in changes.dead_letters] == ["malformed"]
    assert "dev-1" in changes.dedup
    later = pipeline.process([], now=T0 + 30)
    # Records are at T0 + seq: windows of 10 s hold seqs 1-9 and 10-12.
    early, late = sorted(
        (WindowSummary.model_validate(s) for s in _kinds(later)["summary"]), key=lambda s: s.window_start
    )
    assert (early.window_start, early.first_seq, early.last_seq, early.count) == (T0, 1, 9, 9)
    assert (late.window_start, late.first_seq, late.last_seq, late.count) == (T0 + 10, 10, 12, 3)
    assert (late.anomalies, late.forwarded, early.anomalies) == (2, 2, 0)
    assert later.windows_closed


def test_drift_histograms_use_the_bundles_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(0.0, 1.0, size=(5000, 2))
    reference = drift_reference(train, ["a", "b"])
    settings = _settings(tmp_path, drift_window_s=60)
    pipeline = Pipeline(settings, GatewayMetrics())
    pipeline.set_reference("sensor-mlp", "1.0.0", reference)
    same = rng.normal(0.0, 1.0, size=(400, 2))
    shifted = same + np.array([1.5, 0.0])
    drift = []
    for seqs, rows, now in ((range(1, 401), same, T0), (range(401, 801), shifted, T0 + 60)):
        payload = [
            record("dev-1", s, features=row.tolist()).model_dump(mode="json")
            for s, row in zip(seqs, rows, strict=True)
        ]
        body = json.dumps({"schema_version": 1, "device_id": "dev-1", "site": "site-a", "records": payload})
        changes = pipeline.process(_messages(("fleet/site-a/dev-1/telemetry", body.encode())), now=now)
        drift += _kinds(changes).get("drift", [])
    drift += _kinds(pipeline.process([], now=T0 + 120))["drift"]
    before, after = sorted((DriftSummary.model_validate(d) for d in drift), key=lambda d: d.window_start)
    assert before.feature_names == ["a", "b"] and before.count == 400
    assert before.histograms is not None and after.histograms is not None
    psi_same = population_stability_index(reference.counts[0], before.histograms[0])
    psi_shifted = population_stability_index(reference.counts[0], after.histograms[0])
    assert psi_same < 0.1 < 0.25 < psi_shifted
    assert population_stability_index(reference.counts[1], after.histograms[1]) < 0.1


async def test_store_commits_and_restores_everything_a_batch_changed(tmp_path: Path) -> None:
    settings = _settings(tmp_path, device_classes=[{"name": "c", "window_s": 10}])
    store = GatewayStore(tmp_path / "gateway.sqlite")
    pipeline = Pipeline(settings, GatewayMetrics())
    pipeline.restore(await store.open())
    state = json.dumps({"schema_version": 1, "device_id": "dev-1", "site": "site-a", "online": True}).encode()
    changes = pipeline.process(
        _messages(
            ("fleet/site-a/dev-1/telemetry", telemetry("dev-1", range(1, 6), anomaly=True)),
            ("fleet/site-a/dev-1/state", state),
        ),
        now=T0 + 6,
    )
    await store.commit(changes)
    await store.close()

    reopened = GatewayStore(tmp_path / "gateway.sqlite")
    fresh = Pipeline(settings, GatewayMetrics())
    fresh.restore(await reopened.open())
    assert reopened.depth == 5
    assert fresh.dedup.highest("dev-1") == 5
    assert fresh.devices["dev-1"].online
    assert not _kinds(
        fresh.process(_messages(("fleet/site-a/dev-1/telemetry", telemetry("dev-1", range(1, 6)))), T0 + 7)
    ).get("record")
    closing = fresh.process([], now=T0 + 30)
    (summary,) = _kinds(closing)["summary"]
    assert summary["count"] == 5, "the open window came back from the store"
    batch = await reopened.next_batch(100, 1 << 20)
    assert batch is not None and len(batch.items) == 5 and [d for d, _, _ in batch.devices] == ["dev-1"]
    await reopened.sent(batch)
    assert reopened.depth == 0 and await reopened.next_batch(100, 1 << 20) is None
    await reopened.close()


async def test_ingest_body_is_a_valid_ingest_batch(tmp_path: Path) -> None:
    settings = _settings(tmp_path, device_classes=[{"name": "c", "window_s": 10}])
    store = GatewayStore(tmp_path / "gateway.sqlite")
    pipeline = Pipeline(settings, GatewayMetrics())
    pipeline.restore(await store.open())
    event = json.dumps(
        {"schema_version": 1, "device_id": "dev-1", "kind": "ota.verified", "message": "ok"}
    ).encode()
    await store.commit(
        pipeline.process(
            _messages(
                ("fleet/site-a/dev-1/telemetry", telemetry("dev-1", range(1, 4), anomaly=True)),
                ("fleet/site-a/dev-1/events", event),
            ),
            now=T0 + 4,
        )
    )
    await store.commit(pipeline.process([], now=T0 + 30))
    batch = await store.next_batch(100, 1 << 20)
    assert batch is not None
    body = ingest_body(batch, site="site-a", gateway_id="gw-1")
    parsed = decode(gzip.decompress(gzip.compress(body)), IngestBatch)
    assert parsed.schema_version == 3, "seq_ranges and no labels: the lowest version that takes them"
    assert parsed.summaries[0].seq_ranges == [(1, 3)], "the summary lists the seqs it counts"
    assert [r.seq for r in parsed.records] == [1, 2, 3]
    assert len(parsed.summaries) == 1 and len(parsed.events) == 1
    assert parsed.batch_id == f"gw-1-{batch.first_id}-{batch.last_id}"
    await store.close()


def test_uplink_budget_holds_bytes_per_hour_and_lets_a_big_batch_through_once_full() -> None:
    now = [0.0]
    budget = ByteBudget(360_000, clock=lambda: now[0])  # 100 bytes a second, a 6,000-byte burst
    assert budget.delay_for(6000) == 0
    budget.spend(6000)
    assert budget.delay_for(1000) == pytest.approx(10.0), "an empty bucket refills at 100 B/s"
    now[0] += 10.0
    assert budget.delay_for(1000) == 0
    budget.spend(1000)
    assert budget.delay_for(50_000) == pytest.approx(60.0), "larger than the burst: wait for a full bucket"


async def test_an_unreadable_store_is_kept_aside_and_the_gateway_starts_clean(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    store = GatewayStore(path)
    snapshot = await store.open()
    assert snapshot.dedup == [] and store.depth == 0
    await store.close()
    kept = list(tmp_path.glob("gateway.sqlite.corrupt.*"))  # noqa: ASYNC240 - the store is closed
    assert [p.read_bytes()[:22] for p in kept] == [b"this is not a database"]


def test_each_step_of_a_devices_update_goes_up_at_once_and_shadow_figures_wait_for_the_refresh(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(_settings(tmp_path, upstream={"state_refresh_s": 60}), GatewayMetrics())
    sha = "ab" * 32

    def state(step: str | None, samples: int = 0, reason: str | None = None) -> bytes:
        body: dict[str, object] = {"device_id": "dev-1", "site": "site-a", "online": True}
        if step is not None:
            ota: dict[str, object] = {
                "state": step,
                "model_id": "m",
                "version": "2.0.0",
                "manifest_sha256": sha,
                "rollout_id": "r-1",
            }
            if step == "shadow":
                run = {"mean_confidence": 0.9}
                ota["shadow"] = {
                    "samples": samples,
                    "seconds": samples / 10,
                    "champion": run,
                    "challenger": run,
                }
            body["ota"] = ota
        if reason is not None:
            body["model_reason"] = reason
        return json.dumps(body).encode()

    sent = []
    steps = [
        (state(None), "first state"),
        (state("downloading"), "downloading"),
        (state("verified"), "verified"),
        (state("shadow", samples=10), "shadow"),
        (state("shadow", samples=20), None),  # only the shadow figures moved: with the refresh
        (state("promoted"), "promoted"),
        (state("promoted", reason="withdrawn"), "a reason"),
    ]
    for i, (payload, _) in enumerate(steps):
        changes = pipeline.process(_messages(("fleet/site-a/dev-1/state", payload)), now=T0 + i)
        sent.append("dev-1" in changes.devices)
    assert sent == [expected is not None for _, expected in steps]
