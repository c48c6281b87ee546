"""The edgefleet device daemon: offline inference, a durable outbox, MQTT sync."""

__version__ = "0.1.0"
