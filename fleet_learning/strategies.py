"""The cloud's aggregation strategies, all Flower 1.41 Message-API strategies, and their DP wrapper.

``fedavg`` and ``fedprox`` (Flower's FedProx sends ``proximal-mu`` to clients, which add the
proximal term), ``trimmed_mean`` (FedTrimmedAvg: per coordinate, the ``beta`` share of highest and
lowest values is cut before averaging).
Central DP: Flower's server-side fixed clipping clips each update around the current global model
and adds Gaussian noise to the aggregate.
"""

from __future__ import annotations

from typing import Any, Literal

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
    FedTrimmedAvg,
    Strategy,
)

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


def privacy_settings(clip_norm: float | None, noise_multiplier: float, updates_per_round: list[int]) -> dict:
    """What a job records about privacy: mechanism, clipping, noise; no epsilon is computed."""
    if clip_norm is None:
        return {"mechanism": "none"}
    return {
        "mechanism": "central DP: server-side fixed clipping + Gaussian noise"
        " (flwr DifferentialPrivacyServerSideFixedClipping)",
        "clipping_norm": clip_norm,
        "noise_multiplier": noise_multiplier,
        "updates_per_round": updates_per_round,
        "noise_stddev_per_round": [
            noise_multiplier * clip_norm / n if n else None for n in updates_per_round
        ],
        "accounting": "not computed (Flower's accountant needs uniform client weights; ours are"
        " weighted by examples)",
    }
