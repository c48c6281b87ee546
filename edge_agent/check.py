"""``edge-agent check-config``: everything ``run`` would refuse, found before it runs."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

from edge_agent.config import AgentSettings, MqttTopicSourceConfig, ReplaySourceConfig, load_settings
from edge_agent.exceptions import AgentError, ModelLoadError
from edge_agent.model import LoadedModel, load_model, load_trusted_keys
from edge_agent.sources import Reading, SensorSource, build_source
from fleet_protocol.signing import TrustedKey

#: Rows of the source read to see whether they fit the model.
SAMPLE_ROWS = 20


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
    keys: list[TrustedKey] = []
    try:
        keys = load_trusted_keys(settings.trusted_keys)
        # As `run` does: the provisioned bundle runs even if its key was retired since (said below).
        model = load_model(settings.model_dir, keys, threads=settings.inference.threads, allow_retired=True)
    except ModelLoadError as exc:
        problems.append(f"model: {exc}")
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return ModelLoadError.exit_code if model is None else 1
    assert model is not None
    manifest = model.manifest
    if all(k.retired() for k in keys):
        print("warning: trusted_keys: every key is retired: no update can be installed", file=sys.stderr)
    signer = model.signer
    if signer is not None and signer.retired() and signer.retired_at is not None:
        print(
            f"warning: model {manifest.ref} is signed by key {signer.key_id}, retired at"
            f" {signer.retired_at.isoformat()}: it runs, but updates signed by that key are refused",
            file=sys.stderr,
        )
    fit = _sample_fit(settings, model)
    model.close()
    if fit is not None:
        print(f"error: source: {fit}", file=sys.stderr)
        return 1
    print(
        f"ok: device {settings.device_id} at site {settings.site}, model {manifest.ref}"
        f" ({manifest.runtime.value}), broker {settings.mqtt.host}:{settings.mqtt.port},"
        f" source {settings.source.kind}"
    )
    return 0


def _sample_fit(settings: AgentSettings, model: LoadedModel) -> str | None:
    """Why the source's first rows do not fit the model, or None when most of them do."""
    source = settings.source
    if isinstance(source, MqttTopicSourceConfig):
        return None  # a live topic: nothing to read before the sensor publishes
    if isinstance(source, ReplaySourceConfig):
        if not source.path.is_file():
            return None  # said above
        source = source.model_copy(update={"rate_hz": None, "loop": False})
    else:
        source = source.model_copy(update={"rate_hz": None, "limit": SAMPLE_ROWS})
    readings = asyncio.run(_first_readings(build_source(source)))
    if not readings:
        return "it yielded no readings"
    _, kept, refused = model.preprocessor.batch([r.values for r in readings])
    if len(kept) * 2 > len(readings):
        return None
    reasons = Counter(exc.reason for exc in refused)
    top = reasons.most_common(1)[0][0]
    example = next(str(exc) for exc in refused if exc.reason == top)
    return (
        f"{len(refused)} of its first {len(readings)} rows do not fit model {model.manifest.ref},"
        f" most for {top}: {example}; the model reads {', '.join(model.preprocessor.feature_names)}"
    )


async def _first_readings(source: SensorSource) -> list[Reading]:
    out: list[Reading] = []
    async for reading in source.readings():
        out.append(reading)
        if len(out) >= SAMPLE_ROWS:
            break
    await source.aclose()
    return out
