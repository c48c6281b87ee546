"""The gateway's Prometheus metrics, in a registry of its own (a simulator runs several gateways)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.messages = Counter("edge_gateway_messages", "MQTT messages received", ["kind"], registry=r)
        self.bytes_in = Counter("edge_gateway_received_bytes", "MQTT payload bytes received", registry=r)
        self.rejected = Counter(
            "edge_gateway_rejected", "Messages refused and dead-lettered", ["reason"], registry=r
        )
        self.records = Counter("edge_gateway_records", "New telemetry records (after dedup)", registry=r)
        self.duplicates = Counter("edge_gateway_duplicates", "Telemetry records seen before", registry=r)
        self.stale = Counter(
            "edge_gateway_dedup_stale", "Records older than the dedup window, let through", registry=r
        )
        self.forwarded = Counter("edge_gateway_forwarded_records", "Records queued up whole", registry=r)
        self.anomalies = Counter(
            "edge_gateway_anomalies", "Records the device flagged as anomalies", registry=r
        )
        self.summaries = Counter("edge_gateway_summaries", "Window summaries queued", registry=r)
        self.drift = Counter("edge_gateway_drift_summaries", "Drift summaries queued", registry=r)
        self.events = Counter("edge_gateway_events", "Device events queued", registry=r)
        self.labels_received = Counter(
            "edge_gateway_labels_received", "Labels from the site's labelling systems, queued", registry=r
        )
        self.labels_forwarded = Counter(
            "edge_gateway_labels_forwarded", "Labels the controller took", registry=r
        )
        self.label_messages_rejected = Counter(
            "edge_gateway_label_messages_rejected",
            "Label batches refused and dead-lettered (also in edge_gateway_rejected)",
            ["reason"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "edge_gateway_store_commit_seconds",
            "One store transaction",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
            registry=r,
        )
        self.store_errors = Counter("edge_gateway_store_errors", "Store transactions that failed", registry=r)
        self.queue_depth = Gauge("edge_gateway_upstream_queue_items", "Items waiting to go up", registry=r)
        self.queue_bytes = Gauge(
            "edge_gateway_upstream_queue_bytes", "JSON bytes waiting to go up", registry=r
        )
        self.upstream_batches = Counter(
            "edge_gateway_upstream_batches", "Ingest batches accepted", registry=r
        )
        self.upstream_items = Counter("edge_gateway_upstream_items", "Items the controller took", registry=r)
        self.upstream_bytes = Counter(
            "edge_gateway_upstream_bytes", "Compressed ingest bytes the controller took", registry=r
        )
        self.upstream_raw_bytes = Counter(
            "edge_gateway_upstream_raw_bytes", "Ingest JSON bytes before compression", registry=r
        )
        self.upstream_failures = Counter(
            "edge_gateway_upstream_failures", "Ingest attempts that failed", ["reason"], registry=r
        )
        self.upstream_refused = Counter(
            "edge_gateway_upstream_refused_items", "Items the controller refused (dead-lettered)", registry=r
        )
        self.upstream_last_success = Gauge(
            "edge_gateway_upstream_last_success_timestamp", "When a batch last went up", registry=r
        )
        self.devices = Gauge("edge_gateway_devices", "Devices known to this gateway", ["state"], registry=r)
        self.mqtt_connected = Gauge(
            "edge_gateway_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.mqtt_connects = Counter(
            "edge_gateway_mqtt_connects", "Successful broker connections", registry=r
        )
        self.mqtt_link_errors = Counter(
            "edge_gateway_mqtt_link_errors", "Failed broker connections and dropped links", registry=r
        )
        self.broker_restarts = Counter(
            "edge_gateway_broker_restarts", "Times the managed broker was restarted", registry=r
        )
        self.desired_published = Counter(
            "edge_gateway_desired_published", "Desired states published to devices", registry=r
        )
        self.bundle_fetches = Counter(
            "edge_gateway_bundle_fetches", "Bundle downloads from the controller", ["result"], registry=r
        )
        self.bundle_requests = Counter(
            "edge_gateway_bundle_requests", "Bundle requests from devices", ["result"], registry=r
        )
        self.bundle_bytes_served = Counter(
            "edge_gateway_bundle_served_bytes", "Bundle bytes served to devices", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
