"""Non-IID devices: a device class's `class_mix` is validated and reaches each of its agents' sensors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from edge_agent.config import load_settings
from simulators.agent_hosts import DeviceSpec
from simulators.fleet import FleetRun, Site
from simulators.paced_source import PacedSource
from simulators.scenario import SimError, device_class, load_scenario

DEMO = Path(__file__).parents[2] / "fleet_configs" / "demo.yaml"
PRESS = {"idle": 0.6, "load": 0.3, "peak": 0.1}


def _scenario(tmp_path: Path, **press: Any) -> Path:
    path = tmp_path / "s.yaml"
    classes = [{"name": "press", "share": 1, **press}, {"name": "pump", "share": 1}]
    path.write_text(yaml.safe_dump({"sites": 1, "devices_per_site": 4, "device_classes": classes}))
    return path


@pytest.mark.parametrize(
    ("mix", "says"),
    [
        ({"idle": 1, "lod": 1}, "unknown class 'lod'"),
        ({0: 1, 5: 1}, "unknown class 5"),
        ({"idle": 1, "fault": 0.1}, "'fault' is the anomaly class: anomaly_rate"),
        ({"idle": -1, "load": 1}, "class 'idle': weight -1.0 must be"),
        ({"idle": 0, "load": 0}, "the weights sum to 0"),
    ],
)
def test_a_bad_class_mix_is_refused_naming_the_field_and_the_class(
    tmp_path: Path, mix: dict[Any, float], says: str
) -> None:
    with pytest.raises(SimError) as refused:
        load_scenario(_scenario(tmp_path, class_mix=mix))
    message = str(refused.value)
    assert "device_classes.0.class_mix" in message
    assert says in message


def test_without_a_class_mix_devices_draw_uniformly_and_the_demo_mixes_differ(tmp_path: Path) -> None:
    assert load_scenario(_scenario(tmp_path)).device_classes[0].class_mix is None
    demo = load_scenario(DEMO)
    mixes = [c.class_mix for c in demo.device_classes]
    assert all(mixes) and len(mixes) == 2 and mixes[0] != mixes[1], "two classes, each its own mix"


class _Host:
    """What `FleetRun.start_agent` hands a device to."""

    def __init__(self) -> None:
        self.specs: dict[str, DeviceSpec] = {}

    async def start_device(self, device: str, spec: DeviceSpec) -> None:
        self.specs[device] = spec


async def test_the_agents_of_a_class_get_its_mix_in_their_source(tmp_path: Path) -> None:
    scenario = load_scenario(_scenario(tmp_path, class_mix=PRESS))
    bundles = {runtime: tmp_path for runtime in scenario.runtimes}
    run = FleetRun(scenario, tmp_path, None, bundles, tmp_path / "key.pub", None)  # type: ignore[arg-type]
    host = _Host()
    site = Site(0, "site-0", SimpleNamespace(port=1883), None, None, hosts=[host])  # type: ignore[arg-type,list-item]
    for number in range(scenario.devices_per_site):
        await run.start_agent(site, f"site-0-dev-{number}")
    classes = {device_class(scenario, n).name for n in range(scenario.devices_per_site)}
    assert classes == {"press", "pump"}
    for number, device in enumerate(site.devices):
        expected = PRESS if device_class(scenario, number).name == "press" else None
        # As the agent process gets it: through JSON, into the agent's settings and its sensor.
        spec = json.loads(
            json.dumps({"settings": host.specs[device].settings, "source": host.specs[device].source})
        )
        settings = load_settings(None, **spec["settings"])
        assert settings.source.class_weights == expected, device
        args = {
            k: v
            for k, v in spec["source"].items()
            if k not in ("extra_drift", "relabel", "labels", "labeller_tls")
        }
        assert args["class_weights"] == expected
        sensor = PacedSource(**{**args, "rate_hz": None, "limit": 2000, "anomaly_rate": 0.0})
        labels = [r.label async for r in sensor.readings()]
        if expected is not None:
            assert labels.count(0) > labels.count(2), "a press mostly idles"
