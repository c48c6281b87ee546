"""A gateway's site round, without Flower processes: its deadline and its plain link's warning."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, Context, MessageType, RecordDict

from fleet_learning import gateway_round
from fleet_learning import messages as m
from fleet_learning.config import FederatedConfig
from fleet_learning.exceptions import LearningError
from fleet_learning.gateway_round import Gateway, gateway_from_config, site_reply
from fleet_learning.recipes import build_model, default_recipe
from fleet_learning.server_app import ServerJob, train_config
from fleet_learning.trainer import Standardisation
from tests.learning.conftest import instruction


def _gateway(**node_config: str) -> Gateway:
    config = {"site": "site-a", "site-superlink": "127.0.0.1:9", **node_config}
    context = Context(run_id=1, node_id=1, node_config=config, state=RecordDict(), run_config={})
    gateway = gateway_from_config(context)
    assert gateway is not None
    return gateway


def _job() -> ServerJob:
    recipe = default_recipe()
    config = FederatedConfig(round_timeout_s=100.0)
    return ServerJob(config, recipe, build_model(recipe).state_dict(), Standardisation.identity(16))


@pytest.mark.parametrize(("node_config", "site_timeout"), [({}, 80.0), ({"site-round-share": "0.5"}, 50.0)])
def test_the_site_round_ends_before_the_cloud_round(
    monkeypatch: pytest.MonkeyPatch, node_config: dict[str, str], site_timeout: float
) -> None:
    """One slow device must not make the whole site miss the cloud's deadline."""
    job = _job()
    seen: list[tuple[float, float]] = []

    def run_on_site(site_job: ServerJob, gateway: Gateway, timeout: float, work: Path) -> tuple[dict, dict]:
        seen.append((site_job.config.round_timeout_s, timeout))
        stats = {"aggregated": True, "examples": 10, "responded": 1, "train_loss": 0.5}
        return stats, {k: v.clone() for k, v in job.initial_state.items()}

    monkeypatch.setattr(gateway_round, "_run_on_site", run_on_site)
    content = RecordDict({m.ARRAYS: ArrayRecord(job.initial_state), m.CONFIG: train_config(job)})

    reply = site_reply(instruction(content, MessageType.TRAIN), _gateway(**node_config))

    assert seen == [(site_timeout, 100.0)]  # the site round's own timeout; the cloud's bounds the wait
    assert reply[m.METRICS][m.NUM_EXAMPLES] == 10


def test_a_site_round_share_outside_zero_one_is_refused() -> None:
    with pytest.raises(LearningError, match=r"site-round-share must be in \(0, 1\), got 1.5"):
        _gateway(**{"site-round-share": "1.5"})


def test_the_plain_link_to_the_site_superlink_is_warned_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gateway_round, "_warned_plain_link", False)
    homes: list[Path] = []

    def refused(
        args: list[str], *, env: dict[str, str], **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        homes.append(Path(env["FLWR_HOME"]))
        return subprocess.CompletedProcess(args, 1, "", "connection refused")

    monkeypatch.setattr(gateway_round.subprocess, "run", refused)
    for attempt in range(2):
        work = tmp_path / str(attempt)
        work.mkdir()
        with pytest.raises(LearningError, match="flwr run failed"):
            gateway_round._run_on_site(_job(), _gateway(), 1.0, work)

    warnings = [r.getMessage() for r in caplog.records if "plain" in r.getMessage()]
    assert warnings == [
        "site site-a: the link to the site SuperLink 127.0.0.1:9 is plain (insecure, no TLS): "
        "weights and the recipe cross it unencrypted; give the node config site-superlink-ca for TLS"
    ]
    assert all("insecure = true" in (home / "config.toml").read_text() for home in homes)
