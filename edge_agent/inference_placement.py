"""Where a model call runs: on the agent's event loop, or on its inference thread."""

from __future__ import annotations

import weakref
from typing import Literal

from edge_agent.model import LoadedModel


class InferencePlacement:
    """Where a model call runs: on the event loop, or on the inference thread.

    A hop to the thread and back costs tens of microseconds and a GIL handover each way: more than
    a tiny model's whole batch (a 16-64-4 MLP runs 256 readings in about 20 us on its own), and
    about 10 % of the agent's throughput in `bench/agent.py`. Holding the loop for a long call would
    delay MQTT keepalives and every other task, so ``auto`` runs a batch inline only when the
    model's earlier calls bound this one under ``inline_max_ms``; a model not yet timed (a new one,
    a challenger) starts on the thread.

    The bound: a call costs about ``a + b * rows`` (a fixed part, a part per reading), so a call of
    ``n`` readings that took ``t`` bounds one of ``rows`` readings by ``t * max(1, rows / n)``. The
    last call and the last of the largest size seen each give such a bound; the tighter one counts
    (after a one-reading call, the per-reading share of its fixed cost would otherwise overstate a
    full batch a hundredfold). A model that gets slower is seen at its next call.
    """

    __slots__ = ("_largest", "_last", "_max_s", "_mode")

    def __init__(self, mode: Literal["auto", "thread", "inline"], inline_max_ms: float) -> None:
        self._mode = mode
        self._max_s = inline_max_ms / 1000.0
        #: Per model (they come and go with updates): its last call and the last of its largest
        #: size, as (readings, seconds).
        self._last: weakref.WeakKeyDictionary[LoadedModel, tuple[int, float]] = weakref.WeakKeyDictionary()
        self._largest: weakref.WeakKeyDictionary[LoadedModel, tuple[int, float]] = weakref.WeakKeyDictionary()

    def inline(self, model: LoadedModel, rows: int) -> bool:
        if self._mode != "auto":
            return self._mode == "inline"
        seen = [o for o in (self._last.get(model), self._largest.get(model)) if o is not None]
        if not seen:
            return False
        return min(seconds * max(1.0, rows / n) for n, seconds in seen) <= self._max_s

    def observe(self, model: LoadedModel, rows: int, seconds: float) -> None:
        rows = max(1, rows)
        self._last[model] = (rows, seconds)
        largest = self._largest.get(model)
        if largest is None or rows >= largest[0]:
            self._largest[model] = (rows, seconds)
