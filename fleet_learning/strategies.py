"""The cloud's aggregation strategies, all Flower 1.41 Message-API strategies, and their DP wrapper.

``fedavg`` and ``fedprox`` (Flower's FedProx sends ``proximal-mu`` to clients, which add the
proximal term), ``trimmed_mean`` (FedTrimmedAvg: per coordinate, the ``beta`` share of highest and
lowest values is cut before averaging).
Central DP: Flower's server-side fixed clipping clips each update around the current global model
and adds Gaussian noise to the aggregate.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
    FedTrimmedAvg,
    Strategy,
)

from fleet_learning.privacy import gaussian_epsilon, round_noise_multiplier

StrategyName = Literal["fedavg", "fedprox", "trimmed_mean"]


def make_strategy(
    name: StrategyName,
    *,
    fraction: float,
    min_clients: int,
    mu: float = 0.0,
    trim_fraction: float = 0.2,
) -> FedAvg:
    """One of the strategies, sampling ``fraction`` of online nodes and at least ``min_clients``."""
    common: dict[str, Any] = {
        "fraction_train": fraction,
        "fraction_evaluate": fraction,
        "min_train_nodes": min_clients,
        "min_evaluate_nodes": min_clients,
        "min_available_nodes": min_clients,
    }
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=mu)
    if name == "trimmed_mean":
        return FedTrimmedAvg(**common, beta=trim_fraction)
    raise ValueError(f"unknown strategy {name!r} (known: fedavg, fedprox, trimmed_mean)")


def with_central_dp(
    strategy: Strategy, *, clip_norm: float, noise_multiplier: float, expected_updates: int
) -> DifferentialPrivacyServerSideFixedClipping:
    """Clip every update to ``clip_norm`` (L2, around the global model), add noise to the aggregate.

    The noise's standard deviation is ``noise_multiplier * clip_norm / updates``; the runner sets
    ``num_sampled_clients`` to each round's real number of updates before aggregating.
    """
    return DifferentialPrivacyServerSideFixedClipping(
        strategy,
        noise_multiplier=noise_multiplier,
        clipping_norm=clip_norm,
        num_sampled_clients=max(expected_updates, 1),
    )


def privacy_settings(
    clip_norm: float | None,
    noise_multiplier: float,
    updates_per_round: list[int],
    largest_share_per_round: list[float] | None = None,
    *,
    strategy: str = "fedavg",
    unit: str = "device",
    delta: float = 1e-5,
) -> dict[str, Any]:
    """What a job records about privacy: mechanism, clipping, noise, and the (epsilon, delta) spent.

    Epsilon is computed for the weighted means (``fedavg``, ``fedprox``) from each round's number of
    updates and largest example share (`fleet_learning.privacy`); not for ``trimmed_mean``, whose
    sensitivity to one client this bound does not cover.
    """
    if clip_norm is None:
        return {"mechanism": "none"}
    shares = largest_share_per_round or []
    settings: dict[str, Any] = {
        "mechanism": "central DP: server-side fixed clipping + Gaussian noise"
        " (flwr DifferentialPrivacyServerSideFixedClipping)",
        "clipping_norm": clip_norm,
        "noise_multiplier": noise_multiplier,
        "updates_per_round": updates_per_round,
        "largest_example_share_per_round": shares,
        "noise_stddev_per_round": [
            noise_multiplier * clip_norm / n if n else None for n in updates_per_round
        ],
        "unit_of_privacy": unit,
        "delta": delta,
    }
    if strategy not in ("fedavg", "fedprox"):
        settings["epsilon"] = None
        settings["accounting"] = f"not computed: the bound covers weighted means, not {strategy}"
    elif len(shares) != len(updates_per_round):
        settings["epsilon"] = None
        settings["accounting"] = "not computed: the rounds' example shares are unknown"
    else:
        rounds = zip(updates_per_round, shares, strict=True)
        sigmas = [round_noise_multiplier(noise_multiplier, n, s) for n, s in rounds]
        epsilon = gaussian_epsilon(sigmas, delta)
        settings["epsilon"] = epsilon if math.isfinite(epsilon) else None
        settings["accounting"] = (
            "Gaussian mechanism per round (sensitivity: clipping norm x largest example share), composed"
            " with Renyi DP, no amplification by sampling claimed"
            + ("" if math.isfinite(epsilon) else ": no noise, so no finite epsilon")
        )
    return settings
