"""Sensor sources: replayed files, a synthetic generator, a local MQTT topic."""

from __future__ import annotations

from edge_agent.config import MqttTopicSourceConfig, ReplaySourceConfig, SyntheticSourceConfig
from edge_agent.sources.base import Reading, SensorSource
from edge_agent.sources.mqtt_topic import MqttTopicSource
from edge_agent.sources.replay import ReplaySource
from edge_agent.sources.synthetic import SyntheticSource


def build_source(config: ReplaySourceConfig | SyntheticSourceConfig | MqttTopicSourceConfig) -> SensorSource:
    """The source a config section describes."""
    if isinstance(config, ReplaySourceConfig):
        return ReplaySource(
            config.path,
            rate_hz=config.rate_hz,
            loop=config.loop,
            ts_field=config.ts_field,
            label_field=config.label_field,
        )
    if isinstance(config, SyntheticSourceConfig):
        return SyntheticSource(
            rate_hz=config.rate_hz,
            seed=config.seed,
            anomaly_rate=config.anomaly_rate,
            noise=config.noise,
            drift_per_hour=config.drift_per_hour,
            limit=config.limit,
            class_weights=config.class_weights,
        )
    return MqttTopicSource(
        host=config.host,
        port=config.port,
        topic=config.topic,
        reconnect_min_s=config.reconnect_min_s,
        reconnect_max_s=config.reconnect_max_s,
    )


__all__ = ["Reading", "SensorSource", "build_source"]
