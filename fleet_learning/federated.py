"""The pipeline's entry point for federated training on Flower's simulation engine (Ray).

``run_simulation(config, recipe, initial_state, clients)`` runs edgefleet's ServerApp and ClientApp
in this process with one virtual SuperNode per :class:`ClientSpec`; each reads only its own data
(an agent training buffer ``.sqlite``, an ``.npz``, or arrays written to a private ``.npz``).
The deployed path (real SuperLink and SuperNodes) runs the same apps: see ``server_app``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fleet_learning.client_app import NodeSource, make_client_app
from fleet_learning.config import FederatedConfig
from fleet_learning.exceptions import LearningError
from fleet_learning.recipes import TrainingRecipe
from fleet_learning.rounds import RoundStats
from fleet_learning.server_app import FederatedResult, ServerJob, make_server_app
from fleet_learning.trainer import Standardisation

__all__ = ["ClientSpec", "FederatedConfig", "FederatedResult", "RoundStats", "run_simulation"]


@dataclass
class ClientSpec:
    """One simulated node: its name, its site, and its labelled data (a file, or raw ``(x, y)``)."""

    node_id: str
    site: str
    data: Path | tuple[np.ndarray, np.ndarray]


_FLOWER_DEFAULTS = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


@contextmanager
def _flower_environment() -> Iterator[None]:
    """No telemetry, no update check, Flower's state under a temp dir (unless the caller chose).

    For the run only: the variables it set are removed and its temp dir deleted when it ends
    (the worker runs many jobs in one process).
    """
    added = {name: value for name, value in _FLOWER_DEFAULTS.items() if name not in os.environ}
    home = None
    if "FLWR_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="flwr-home-")
        added["FLWR_HOME"] = home
    os.environ.update(added)
    try:
        yield
    finally:
        for name, value in added.items():
            if os.environ.get(name) == value:
                del os.environ[name]
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)


def run_simulation(
    config: FederatedConfig,
    recipe: TrainingRecipe,
    initial_state: dict[str, torch.Tensor],
    clients: list[ClientSpec],
    *,
    standardisation: Standardisation | None = None,
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
    on_round: Callable[[RoundStats], None] | None = None,
) -> FederatedResult:
    """Federated training of ``recipe`` from ``initial_state`` over ``clients``.

    Parameters
    ----------
    config : FederatedConfig
        Strategy, rounds, sampling, eligibility, DP, hierarchical mode, stop rule.
    recipe : TrainingRecipe
        The network and its hyperparameters (batch size, learning rate; epochs per round come
        from ``config.local_epochs``).
    initial_state : dict
        Starting weights (the production model's, usually).
    clients : list of ClientSpec
        The simulated nodes.
    standardisation : Standardisation, optional
        The global input mean/scale (the production bundle's ``Preprocessing``); fitted on
        ``held_out`` if not given.
    held_out : tuple of np.ndarray, optional
        Raw features and labels the server evaluates each round on; drives the stop rule.
    on_round : callable, optional
        Called with each round's :class:`RoundStats` as soon as the round ends.

    Returns
    -------
    FederatedResult
        The best global weights, mean/scale, round records and privacy settings.

    Raises
    ------
    LearningError
        Without clients, without a standardisation, or when the run produced no result.
    """
    from flwr.simulation import run_simulation as flower_run_simulation

    if not clients:
        raise LearningError("a federated job needs at least one client")
    if standardisation is None:
        if held_out is None:
            raise LearningError("give the global standardisation (the bundle's mean/scale) or a held-out set")
        standardisation = Standardisation.of(held_out[0])
    job = ServerJob(config, recipe, initial_state, standardisation, held_out)
    results: list[FederatedResult] = []
    with _flower_environment(), tempfile.TemporaryDirectory(prefix="fl-sim-") as tmp:
        nodes = []
        for index, spec in enumerate(clients):
            path = spec.data
            if not isinstance(path, Path):
                path = Path(tmp) / f"node-{index}.npz"
                np.savez(path, x=spec.data[0], y=spec.data[1])
            nodes.append(NodeSource(spec.node_id, spec.site, path))
        flower_run_simulation(
            server_app=make_server_app(job, results, on_round),
            client_app=make_client_app(nodes),
            num_supernodes=len(nodes),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {
                    "num_cpus": config.num_cpus,
                    "include_dashboard": False,
                    "logging_level": logging.ERROR,
                    "log_to_driver": False,
                },
            },
        )
    if not results:
        raise LearningError("the federated simulation ended without a result: see the Flower log above")
    return results[0]
