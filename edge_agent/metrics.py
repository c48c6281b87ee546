"""The agent's Prometheus metrics, in a registry of its own (a simulator runs many agents)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.inferences = Counter("edge_agent_inferences", "Readings inferred", registry=r)
        self.inference_seconds = Histogram(
            "edge_agent_inference_batch_seconds",
            "Time of one model call (a micro-batch)",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
            registry=r,
        )
        self.inference_batches = Counter(
            "edge_agent_inference_batches",
            "Model calls, by where they ran: loop (inline) or thread",
            ["where"],
            registry=r,
        )
        self.batch_size = Histogram(
            "edge_agent_micro_batch_size",
            "Readings per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.rejected = Counter("edge_agent_rejected_readings", "Readings refused", ["reason"], registry=r)
        self.outbox_depth = Gauge("edge_agent_outbox_records", "Records waiting for a PUBACK", registry=r)
        self.outbox_bytes = Gauge("edge_agent_outbox_bytes", "Bytes of records in the outbox", registry=r)
        self.evicted = Counter(
            "edge_agent_outbox_evicted",
            "Records the outbox dropped: evicted by its bound (routine, flagged), disk_full, write_error",
            ["kind"],
            registry=r,
        )
        self.ota_updates = Counter(
            "edge_agent_ota_updates", "Model updates that ended, by outcome", ["outcome"], registry=r
        )
        self.swap_gap = Gauge(
            "edge_agent_model_swap_gap_seconds",
            "Last model switch: time between the old model's last batch and the new model's first",
            registry=r,
        )
        self.records_sent = Counter("edge_agent_records_acked", "Records the broker acknowledged", registry=r)
        self.bytes_sent = Counter("edge_agent_sent_bytes", "Telemetry payload bytes acknowledged", registry=r)
        self.publishes = Counter("edge_agent_publishes", "Telemetry publishes acknowledged", registry=r)
        self.connected = Gauge("edge_agent_mqtt_connected", "1 while connected to the broker", registry=r)
        self.connects = Counter("edge_agent_mqtt_connects", "Successful broker connections", registry=r)
        self.link_errors = Counter(
            "edge_agent_mqtt_link_errors", "Connection attempts or links that failed", registry=r
        )
        self.rejected_desired = Counter(
            "edge_agent_rejected_desired", "Desired-state messages refused", ["reason"], registry=r
        )

        self.training_samples = Gauge(
            "edge_agent_training_samples", "Samples in the local training buffer", registry=r
        )
        self.training_labelled = Gauge(
            "edge_agent_training_labelled", "Samples of the training buffer that have a label", registry=r
        )
        self.training_labels = Counter(
            "edge_agent_training_labels",
            "Labels received: matched (joined with a sample), unmatched (sample gone), refused (batch)",
            ["outcome"],
            registry=r,
        )
        self.training_evicted = Counter(
            "edge_agent_training_evicted", "Samples the training buffer's bound dropped", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(metrics: AgentMetrics, host: str, port: int) -> web.AppRunner:
    """Serve ``/metrics`` on ``host:port`` (localhost by default); returns the runner to clean up."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
