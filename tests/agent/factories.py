"""Agent configurations for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edge_agent.config import AgentSettings, load_settings


def agent_config(
    tmp: Path,
    *,
    port: int,
    bundle: Path,
    public_key: Path,
    device: str = "dev-1",
    site: str = "site-a",
    source: dict[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "device_id": device,
        "site": site,
        "data_dir": str(tmp / device / "data"),
        "model_dir": str(bundle),
        "trusted_keys": [str(public_key)],
        "source": source or {"kind": "synthetic", "rate_hz": 200, "seed": 1},
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5,
            "keepalive_s": 5,
            "state_interval_s": 1.0,
            "publish_timeout_s": 5.0,
        },
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def settings(config: dict[str, Any]) -> AgentSettings:
    return load_settings(None, **config)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path
