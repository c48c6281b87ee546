"""``edge-agent check-config``: everything ``run`` would refuse, found before it runs."""

from __future__ import annotations

import sys

from edge_agent.config import ReplaySourceConfig, load_settings
from edge_agent.exceptions import AgentError, ModelLoadError
from edge_agent.model import load_model, load_trusted_keys


def check_config(path: str) -> int:
    """Print what is wrong with a config (or a one-line summary); return the exit code."""
    try:
        settings = load_settings(path)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    problems: list[str] = []
    source = settings.source
    if isinstance(source, ReplaySourceConfig) and not source.path.is_file():
        problems.append(f"source.path: {source.path} does not exist")
    model = None
    try:
        keys = load_trusted_keys(settings.trusted_keys)
        model = load_model(settings.model_dir, keys, threads=settings.inference.threads)
    except ModelLoadError as exc:
        problems.append(f"model: {exc}")
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return ModelLoadError.exit_code if model is None else 1
    assert model is not None
    manifest = model.manifest
    model.close()
    print(
        f"ok: device {settings.device_id} at site {settings.site}, model {manifest.ref}"
        f" ({manifest.runtime.value}), broker {settings.mqtt.host}:{settings.mqtt.port},"
        f" source {settings.source.kind}"
    )
    return 0
