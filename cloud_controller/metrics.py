"""Prometheus metrics in the app's own registry; fleet gauges are read from the database at scrape."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, tuple_
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud_controller.accuracy import Tally
from cloud_controller.job_models import Job, JobKind, JobState
from cloud_controller.label_models import Alarm
from cloud_controller.models import Deployment, Device, Drift
from cloud_controller.rollout_models import ACTIVE, Rollout, RolloutState


class LatestAccuracy:
    """The alarm evaluator's last tallies: /metrics exports them without querying telemetry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: list[Tally] = []

    def update(self, tallies: list[Tally]) -> None:
        with self._lock:
            self._tallies = list(tallies)

    def read(self) -> list[Tally]:
        with self._lock:
            return list(self._tallies)


class FleetCollector(Collector):
    def __init__(self, engine: Engine, accuracy: LatestAccuracy | None = None) -> None:
        self.engine = engine
        self.accuracy = accuracy or LatestAccuracy()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        online = GaugeMetricFamily(
            "edgefleet_devices", "Devices by site and online state", labels=["site", "online"]
        )
        versions = GaugeMetricFamily(
            "edgefleet_devices_by_model", "Devices by running model", labels=["model"]
        )
        off_model = GaugeMetricFamily(
            "edgefleet_devices_off_model",
            "Devices not running their desired model, by the reason they report",
            labels=["reason"],
        )
        deployments = GaugeMetricFamily("edgefleet_deployments", "Deployments made")
        drift = GaugeMetricFamily("edgefleet_drift_windows", "Drift summaries stored", labels=["model"])
        score = GaugeMetricFamily(
            "edgefleet_drift_score", "Latest drift score per model version and site", labels=["model", "site"]
        )
        rollouts = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by state", labels=["state"])
        jobs = GaugeMetricFamily(
            "edgefleet_jobs", "Pipeline jobs by kind and state", labels=["kind", "state"]
        )
        ota = GaugeMetricFamily(
            "edgefleet_devices_by_ota_state",
            "Devices by the state of their last model update",
            labels=["state"],
        )
        rollout_devices = GaugeMetricFamily(
            "edgefleet_rollout_devices",
            "Devices reporting an update of an active rollout, by its state",
            labels=["rollout", "state"],
        )
        model_accuracy = GaugeMetricFamily(
            "edgefleet_model_accuracy",
            "Accuracy over the model's alarm window (labelled records stored whole), at the alarm "
            "evaluator's last pass",
            labels=["model", "version", "site"],
        )
        labelled = GaugeMetricFamily(
            "edgefleet_model_labelled_records",
            "Labelled records edgefleet_model_accuracy is computed from",
            labels=["model", "version", "site"],
        )
        for tally in self.accuracy.read():
            names = [tally.model_id, tally.version, tally.site_id]
            model_accuracy.add_metric(names, tally.accuracy)
            labelled.add_metric(names, tally.labelled)
        alarms_open = GaugeMetricFamily(
            "edgefleet_alarms_open", "Open alarms by model and kind", labels=["model", "kind"]
        )
        with Session(self.engine) as session:
            # Every (model, kind) that ever fired: 0 once resolved, rather than a vanished series.
            for model, kind, count in session.exec(
                select(
                    Alarm.model_id,
                    Alarm.kind,
                    func.count(col(Alarm.id)).filter(col(Alarm.resolved_at).is_(None)),
                ).group_by(Alarm.model_id, Alarm.kind)
            ):
                alarms_open.add_metric([model, kind], count)
            by_state = dict(session.exec(select(Rollout.state, func.count()).group_by(Rollout.state)).all())
            job_counts = dict(
                ((kind, state), count)
                for kind, state, count in session.exec(
                    select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
                )
            )
            for job_kind in JobKind:
                for job_state in JobState:
                    jobs.add_metric(
                        [job_kind.value, job_state.value],
                        job_counts.get((job_kind.value, job_state.value), 0),
                    )
            for state in RolloutState:
                rollouts.add_metric([state.value], by_state.get(state.value, 0))
            for state, count in session.exec(
                select(Device.ota_state, func.count())
                .where(col(Device.ota_state).is_not(None))
                .group_by(Device.ota_state)
            ):
                ota.add_metric([str(state)], count)
            # Active rollouts only: a label per rollout ever made would grow without bound.
            active = select(Rollout.id).where(col(Rollout.state).in_(ACTIVE))
            for rollout, state, count in session.exec(
                select(Device.ota_rollout_id, Device.ota_state, func.count())
                .where(col(Device.ota_rollout_id).in_(active))
                .group_by(Device.ota_rollout_id, Device.ota_state)
            ):
                rollout_devices.add_metric([str(rollout), str(state)], count)
            for site, is_online, count in session.exec(
                select(Device.site_id, Device.online, func.count()).group_by(Device.site_id, Device.online)
            ):
                online.add_metric([site, str(bool(is_online)).lower()], count)
            for model, version, count in session.exec(
                select(Device.model_id, Device.model_version, func.count()).group_by(
                    Device.model_id, Device.model_version
                )
            ):
                versions.add_metric([f"{model}@{version}"], count)
            for reason, count in session.exec(
                select(Device.model_reason, func.count())
                .where(col(Device.model_reason).is_not(None))
                .group_by(Device.model_reason)
            ):
                off_model.add_metric([str(reason)], count)
            deployments.add_metric([], session.exec(select(func.count()).select_from(Deployment)).one())
            for model, count in session.exec(select(Drift.model_id, func.count()).group_by(Drift.model_id)):
                drift.add_metric([model], count)
            for site, model, version, value in latest_drift_scores(session):
                score.add_metric([f"{model}@{version}", site], value)
        yield from (online, versions, off_model, deployments, drift, score, rollouts, ota, rollout_devices)
        yield from (model_accuracy, labelled, alarms_open)
        yield jobs


def drift_keys(session: Session) -> Iterator[tuple[str, str, str]]:
    """Every ``(site, model_id, version)`` with drift windows, in order.

    A loose index scan of the drift table's unique key (site, model, version, window_start): two
    index seeks per key, so this costs the same with a million windows as with ten. The next key
    is sought past the last window of this one, with all four columns: compared on three, SQLite
    would step through every window of the key it leaves.
    """
    key_columns = (Drift.site_id, Drift.model_id, Drift.model_version)
    window = col(Drift.window_start)
    after: tuple[str, str, str, float] | None = None
    while True:
        following = select(*key_columns).order_by(*key_columns, window).limit(1)
        if after is not None:
            following = following.where(tuple_(*key_columns, window) > tuple_(*after))
        row = session.exec(following).first()
        if row is None:
            return
        site, model, version = row
        yield site, model, version
        last_window = session.exec(
            select(window)
            .where(Drift.site_id == site, Drift.model_id == model, Drift.model_version == version)
            .order_by(window.desc())
            .limit(1)
        ).one()
        after = (site, model, version, last_window)


def latest_drift_scores(session: Session) -> Iterator[tuple[str, str, str, float]]:
    """``(site, model_id, version, score)`` of the latest scored window of each model version at each site,
    by index seeks (`drift_keys`)."""
    window = col(Drift.window_start)
    for site, model, version in list(drift_keys(session)):
        in_key = (Drift.site_id == site, Drift.model_id == model, Drift.model_version == version)
        last_score = session.exec(select(Drift.score).where(*in_key).order_by(window.desc()).limit(1)).one()
        if last_score is None:  # rare: the newest window could not be scored; the latest that was
            last_score = session.exec(
                select(Drift.score)
                .where(*in_key, col(Drift.score).is_not(None))
                .order_by(window.desc())
                .limit(1)
            ).first()
        if last_score is not None:
            yield site, model, version, float(last_score)


class ControllerMetrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = r = CollectorRegistry()
        self.ingest_records = Counter("edgefleet_ingest_records", "Records stored", registry=r)
        self.ingest_duplicates = Counter("edgefleet_ingest_duplicates", "Records already stored", registry=r)
        self.ingest_rejected = Counter("edgefleet_ingest_rejected", "Batches refused", ["reason"], registry=r)
        self.ingest_summaries = Counter("edgefleet_ingest_summaries", "Window summaries stored", registry=r)
        self.alarm_notifications = Counter(
            "edgefleet_alarm_notifications",
            "Alarm webhook events by event (fired, resolved) and result: ok and failed count requests "
            "(a failed one is tried again each pass), skipped counts events given up as too old",
            ["event", "result"],
            registry=r,
        )
        for event in ("fired", "resolved"):
            for result in ("ok", "failed", "skipped"):
                self.alarm_notifications.labels(event=event, result=result)
        self.accuracy = LatestAccuracy()
        r.register(FleetCollector(engine, self.accuracy))
