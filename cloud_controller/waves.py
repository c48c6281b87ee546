"""Which devices a rollout's waves hold: deterministic, and stable while the group changes.

Each device has a position in ``[0, 2**64)``: the first 8 bytes of sha256(rollout id, device id),
the same in every process and after every restart. When a wave starts, its cumulative target
(a percent or a count of the group's devices at that moment) becomes a *threshold*: the position
just past the target-th device. A device is in the waves started so far when its position is
below the current threshold. Thresholds are stored and only grow, so a device that got the new
version keeps it, and a device that joins the group later is in or out by the same rule.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

#: Above every position: the threshold of a 100 % wave (every device, joiners included).
FULL = 2**64


def position(rollout_id: str, device_id: str) -> int:
    """The device's place in the rollout's order."""
    return int.from_bytes(hashlib.sha256(f"{rollout_id}/{device_id}".encode()).digest()[:8], "big")


def target(wave: dict[str, Any], devices: int) -> int:
    """How many of ``devices`` the wave's cumulative target names (a percent rounds up: 1 % of 10 is 1)."""
    if "count" in wave:
        return min(int(wave["count"]), devices)
    # round(): 7 % of 100 is 7.000000000000001 in binary, which must not become 8.
    return min(devices, math.ceil(round(float(wave["percent"]) * devices / 100, 9)))


def threshold(wave: dict[str, Any], positions: Iterable[int], previous: int) -> tuple[int, int]:
    """``(threshold, target)`` of a wave starting now over the group's devices at ``positions``."""
    ordered = sorted(positions)
    count = target(wave, len(ordered))
    if "percent" in wave and float(wave["percent"]) >= 100:
        return FULL, count
    if count == 0:
        return previous, 0
    return max(previous, ordered[count - 1] + 1), count


def member(rollout_id: str, device_id: str, threshold_: int) -> bool:
    return position(rollout_id, device_id) < threshold_
