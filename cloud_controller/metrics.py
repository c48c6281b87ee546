"""Prometheus metrics in the app's own registry; fleet gauges are read from the database at scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cloud_controller.models import Deployment, Device, Drift


class FleetCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        online = GaugeMetricFamily(
            "edgefleet_devices", "Devices by site and online state", labels=["site", "online"]
        )
        versions = GaugeMetricFamily(
            "edgefleet_devices_by_model", "Devices by running model", labels=["model"]
        )
        deployments = GaugeMetricFamily("edgefleet_deployments", "Deployments made")
        drift = GaugeMetricFamily("edgefleet_drift_windows", "Drift summaries stored", labels=["model"])
        score = GaugeMetricFamily(
            "edgefleet_drift_score", "Latest drift score per model version and site", labels=["model", "site"]
        )
        with Session(self.engine) as session:
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
            deployments.add_metric([], session.exec(select(func.count()).select_from(Deployment)).one())
            for model, count in session.exec(select(Drift.model_id, func.count()).group_by(Drift.model_id)):
                drift.add_metric([model], count)
            latest: dict[tuple[str, str], float] = {}
            for row in session.exec(
                select(Drift).where(Drift.score.is_not(None)).order_by(Drift.window_start)
            ):  # type: ignore[union-attr]
                latest[(f"{row.model_id}@{row.model_version}", row.site_id)] = float(row.score or 0.0)
            for (model, site), value in latest.items():
                score.add_metric([model, site], value)
        yield from (online, versions, deployments, drift, score)


class ControllerMetrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = r = CollectorRegistry()
        self.ingest_records = Counter("edgefleet_ingest_records", "Records stored", registry=r)
        self.ingest_duplicates = Counter("edgefleet_ingest_duplicates", "Records already stored", registry=r)
        self.ingest_rejected = Counter("edgefleet_ingest_rejected", "Batches refused", ["reason"], registry=r)
        self.ingest_summaries = Counter("edgefleet_ingest_summaries", "Window summaries stored", registry=r)
        r.register(FleetCollector(engine))
