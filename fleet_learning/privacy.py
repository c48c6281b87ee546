"""How much privacy a federated job spent: an (epsilon, delta) bound for its central DP.

The server clips each update to ``clip_norm`` and adds Gaussian noise of standard deviation
``noise_multiplier * clip_norm / n`` to the aggregate of ``n`` updates (Flower's
``DifferentialPrivacyServerSideFixedClipping``). Our aggregate is weighted by examples, so one
client moves it by at most ``clip_norm * share``, where ``share`` is the largest example share of
that round: each round is a Gaussian mechanism with noise multiplier ``noise_multiplier / (n *
share)`` (exactly ``noise_multiplier`` when every client has as many examples). Rounds compose
under Rényi DP (Mironov 2017: order ``a`` costs ``a / (2 sigma^2)`` a round), converted to
``(epsilon, delta)``. No amplification by client sampling is claimed, so the bound is loose but
safe. The unit of privacy is one client: a device, or a whole site in hierarchical mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Rényi orders searched; the conversion takes the best of them.
_ORDERS = [1 + x / 20 for x in range(1, 100)] + [6 + x / 2 for x in range(0, 100)] + [60, 80, 128, 256, 512]


def round_noise_multiplier(noise_multiplier: float, updates: int, largest_share: float) -> float:
    """The Gaussian mechanism's noise multiplier of one round of an example-weighted mean."""
    if updates <= 0 or largest_share <= 0:
        raise ValueError("a round needs at least one update with examples")
    return noise_multiplier / (updates * largest_share)


def gaussian_epsilon(sigmas: Sequence[float], delta: float) -> float:
    """Epsilon at ``delta`` for Gaussian mechanisms of noise multipliers ``sigmas``, composed.

    ``math.inf`` when a round had no noise.
    """
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    if not sigmas:
        return 0.0
    if any(s <= 0 for s in sigmas):
        return math.inf
    cost = sum(1 / (2 * s * s) for s in sigmas)  # RDP per unit of order
    return min(a * cost + math.log(1 / delta) / (a - 1) for a in _ORDERS)
