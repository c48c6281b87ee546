"""A federated job's settings, as the controller records them on the job (pydantic, JSON)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet_learning.strategies import StrategyName


class FederatedConfig(BaseModel):
    """How a federated job runs.

    Parameters
    ----------
    strategy : {"fedavg", "fedprox", "trimmed_mean"}
        Aggregation in the cloud (over devices, or over sites when ``hierarchical``).
    rounds : int
        Maximum number of rounds.
    min_clients : int
        Nodes that must be online to start a round, and valid updates needed to aggregate one.
    fraction : float
        Share of online nodes sampled per round (at least ``min_clients``).
    round_timeout_s : float
        How long a round waits for replies; a node that has not replied by then counts as failed.
    local_epochs : int
        Epochs each client trains per round.
    mu : float
        FedProx proximal coefficient (``strategy="fedprox"``).
    trim_fraction : float
        Share cut at each end per coordinate by ``trimmed_mean`` (Flower's ``beta``).
    clip_norm, noise_multiplier : float, optional
        Central DP: clip each update's L2 distance to the global model, add Gaussian noise.
    hierarchical : bool
        Aggregate per site first and send one update per site per round upstream.
    federated_evaluation : bool
        After each round, ask the sampled nodes to evaluate the new global model on their own
        held-out samples (one more round trip per round).
    min_samples : int
        A node with fewer labelled samples declines the round.
    max_samples : int
        A node trains on at most its most recent ``max_samples`` labelled samples.
    target_accuracy : float, optional
        Stop once the global model reaches it (held-out accuracy if the job has a held-out set,
        else federated evaluation).
    patience : int, optional
        Stop after this many rounds without a better accuracy.
    groups : list of str
        Sites taking part; empty: all.
    num_cpus : int
        CPUs the simulation engine may use (Ray); each client takes one.
    """

    model_config = ConfigDict(extra="forbid")

    strategy: StrategyName = "fedavg"
    rounds: int = Field(3, ge=1, le=1000)
    min_clients: int = Field(2, ge=1)
    fraction: float = Field(1.0, gt=0, le=1)
    round_timeout_s: float = Field(600.0, gt=0)
    local_epochs: int = Field(1, ge=1)
    mu: float = Field(0.0, ge=0)
    trim_fraction: float = Field(0.2, ge=0, lt=0.5)
    clip_norm: float | None = Field(None, gt=0)
    noise_multiplier: float = Field(0.0, ge=0)
    hierarchical: bool = False
    federated_evaluation: bool = True
    min_samples: int = Field(20, ge=1)
    max_samples: int = Field(5000, ge=1)
    target_accuracy: float | None = Field(None, gt=0, le=1)
    patience: int | None = Field(None, ge=1)
    groups: list[str] = Field(default_factory=list)
    num_cpus: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _check(self) -> FederatedConfig:
        if self.strategy == "fedprox" and self.mu == 0:
            raise ValueError("fedprox needs mu > 0 (mu = 0 is fedavg)")
        if self.noise_multiplier > 0 and self.clip_norm is None:
            raise ValueError("noise_multiplier needs clip_norm (noise is scaled to the clipping norm)")
        return self
