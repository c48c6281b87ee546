"""A site gateway as one node of the cloud's federation: it runs the round over its own devices.

The gateway is a SuperNode towards the cloud's SuperLink (node config ``site="site-a"
site-superlink="HOST:PORT"``) and runs a SuperLink of its own that its devices' SuperNodes connect
to. When the cloud's training instruction arrives, edgefleet's ClientApp on the gateway starts one
round of edgefleet's ServerApp on the site's SuperLink (``flwr run``) from the cloud's global
weights, waits for it, and replies with the site's aggregate and the examples behind it. One update
per site per round crosses the cloud link; device updates stay at the site, raw features on devices.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fleet_learning import messages as m
from fleet_learning.config import FederatedConfig
from fleet_learning.exceptions import LearningError
from fleet_learning.recipes import TrainingRecipe
from fleet_learning.server_app import RESULT_FILE, RESULT_STATE_FILE, ServerJob, write_job_dir
from fleet_learning.trainer import Standardisation

APP_DIR = Path(__file__).resolve().parent / "flower_app"

#: Share of the cloud round's timeout the site's own round may take (node config
#: ``site-round-share``): the site round ends first and the gateway replies with what it has
#: before the cloud stops waiting.
DEFAULT_SITE_ROUND_SHARE = 0.8

log = logging.getLogger(__name__)
_warned_plain_link = False


@dataclass(frozen=True)
class Gateway:
    """A SuperNode that aggregates a site: its site and its own SuperLink's address."""

    site: str
    superlink: str
    min_devices: int = 1
    round_share: float = DEFAULT_SITE_ROUND_SHARE
    #: The CA of the site SuperLink's TLS certificate (node config ``site-superlink-ca``); None: plain.
    superlink_ca: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.round_share < 1:
            raise LearningError(f"site-round-share must be in (0, 1), got {self.round_share}")

    def site_timeout(self, cloud_timeout: float) -> float:
        """How long the site's round waits for its devices: a share of the cloud round's timeout."""
        return cloud_timeout * self.round_share


def gateway_from_config(context: Context) -> Gateway | None:
    """A gateway if the node config names a site SuperLink, else None (a device)."""
    config = context.node_config
    if "site-superlink" not in config:
        return None
    return Gateway(
        site=str(config.get("site", "")),
        superlink=str(config["site-superlink"]),
        min_devices=int(config.get("site-min-devices", 1)),
        round_share=float(config.get("site-round-share", DEFAULT_SITE_ROUND_SHARE)),
        superlink_ca=str(config["site-superlink-ca"]) if config.get("site-superlink-ca") else None,
    )


def _site_job(msg: Message, config: ConfigRecord, gateway: Gateway, timeout: float) -> ServerJob:
    mu = float(config.get(m.PROXIMAL_MU, 0.0))
    site_config = FederatedConfig(
        strategy="fedprox" if mu > 0 else "fedavg",
        mu=mu,
        rounds=1,
        min_clients=gateway.min_devices,
        local_epochs=int(config.get(m.LOCAL_EPOCHS, 1)),
        min_samples=int(config.get(m.MIN_SAMPLES, 1)),
        max_samples=int(config.get(m.MAX_SAMPLES, 5000)),
        federated_evaluation=False,
        round_timeout_s=timeout,
    )
    return ServerJob(
        site_config,
        TrainingRecipe.model_validate_json(str(config[m.RECIPE])),
        msg.content[m.ARRAYS].to_torch_state_dict(),
        Standardisation(
            np.asarray(config[m.MEAN], dtype=np.float32), np.asarray(config[m.SCALE], dtype=np.float32)
        ),
    )


def _warn_plain_link(gateway: Gateway) -> None:
    """Once per process: the link to the site SuperLink is not encrypted (no ``site-superlink-ca``)."""
    global _warned_plain_link
    if gateway.superlink_ca is None and not _warned_plain_link:
        _warned_plain_link = True
        log.warning(
            "site %s: the link to the site SuperLink %s is plain (insecure, no TLS): weights and"
            " the recipe cross it unencrypted; give the node config site-superlink-ca for TLS",
            gateway.site,
            gateway.superlink,
        )


def _run_on_site(job: ServerJob, gateway: Gateway, timeout: float, work: Path) -> tuple[dict, dict]:
    """``flwr run`` edgefleet's app on the site SuperLink; the round's record and the weights.

    ``timeout`` is the cloud round's: the site round itself ends earlier (``job.config``).
    """
    job_dir = write_job_dir(work / "job", job)
    _warn_plain_link(gateway)
    home = work / "flwr-home"
    home.mkdir()
    transport = (
        "insecure = true" if gateway.superlink_ca is None else f'root-certificates = "{gateway.superlink_ca}"'
    )
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "site"\n\n[superlink.site]\naddress = "{gateway.superlink}"\n{transport}\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    deadline = time.monotonic() + timeout
    flwr = Path(sys.executable).parent / "flwr"
    run = subprocess.run(
        [str(flwr), "run", str(APP_DIR), "site", "--run-config", f'job-dir="{job_dir}"'],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if run.returncode != 0:
        raise LearningError(f"site {gateway.site}: flwr run failed: {(run.stdout + run.stderr)[-400:]}")
    while not (job_dir / RESULT_FILE).exists():
        if time.monotonic() > deadline:
            raise LearningError(f"site {gateway.site}: its round did not end within {timeout:.0f} s")
        time.sleep(0.5)
    (stats,) = json.loads((job_dir / RESULT_FILE).read_text())["rounds"]
    state = torch.load(job_dir / RESULT_STATE_FILE, map_location="cpu", weights_only=True)
    return stats, state


def site_reply(msg: Message, gateway: Gateway) -> RecordDict:
    """The site's one update for this cloud round (or declined, if no device of it could train)."""
    config = msg.content[m.CONFIG]
    groups = [g for g in str(config.get(m.GROUPS, "")).split(",") if g]
    if groups and gateway.site not in groups:
        return m.declined(f"site {gateway.site!r} is not in this job's groups", gateway.site)
    timeout = float(config.get(m.ROUND_TIMEOUT, 600.0))
    job = _site_job(msg, config, gateway, gateway.site_timeout(timeout))
    with tempfile.TemporaryDirectory(prefix="site-round-") as tmp:
        stats, state = _run_on_site(job, gateway, timeout, Path(tmp))
    if not stats["aggregated"] or not stats["examples"]:
        return m.declined(f"{stats['responded']} device(s) of the site trained: no site update", gateway.site)
    return RecordDict(
        {
            m.ARRAYS: ArrayRecord(state),
            m.METRICS: MetricRecord(
                {m.NUM_EXAMPLES: int(stats["examples"]), "train-loss": float(stats["train_loss"] or 0.0)}
            ),
            m.NODE: ConfigRecord({"site": gateway.site, "devices": int(stats["responded"])}),
        }
    )
