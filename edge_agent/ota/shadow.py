"""Champion against challenger on the device: the same live inputs through both models.

Only the champion's records go to the outbox; the challenger's outputs are compared and
counted, then dropped. The gates a rollout sets are judged on what the shadow period saw.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field

import numpy as np

from edge_agent.model import Predictions
from fleet_protocol import RolloutDirective, RunStats, ShadowStats

#: A shadow that has not seen ``min_samples`` inputs is judged on what it saw after this many soaks.
_PATIENCE = 10
#: Batches whose latency is not counted: the first runs of a freshly loaded model pay for its warm-up.
_WARM_UP_BATCHES = 3


def rss_mb() -> float:
    """The process's resident memory now, in MB (Linux ``/proc``; peak RSS where that is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize() / 1e6
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


@dataclass
class _Side:
    latencies_ms: list[float] = field(default_factory=list)  # per reading, one value per batch
    batches: int = 0
    confidence_sum: float = 0.0
    confidence_n: int = 0
    non_finite: int = 0
    peak_rss_mb: float = 0.0

    def add(self, predictions: Predictions, seconds: float, rows: int) -> None:
        self.batches += 1
        if self.batches > _WARM_UP_BATCHES:  # a model's first runs are cold: not its latency
            self.latencies_ms.append(seconds * 1000.0 / max(rows, 1))
        if predictions.confidence is not None:
            finite = predictions.confidence[np.isfinite(predictions.confidence)]
            self.confidence_sum += float(finite.sum())
            self.confidence_n += len(finite)
        self.non_finite += int((~np.isfinite(predictions.outputs)).any(axis=1).sum())

    def stats(self) -> RunStats:
        p95 = float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else None
        return RunStats(
            mean_confidence=min(1.0, self.confidence_sum / self.confidence_n) if self.confidence_n else None,
            p95_latency_ms=round(p95, 4) if p95 is not None else None,
            peak_rss_mb=round(self.peak_rss_mb, 1) if self.peak_rss_mb else None,
            non_finite=self.non_finite,
        )


class ShadowRun:
    """What one shadow period measured; `verdict` judges it against the rollout's gates."""

    def __init__(self, directive: RolloutDirective, *, rss_before_mb: float) -> None:
        self.directive = directive
        self.started = time.monotonic()
        self.samples = 0
        self.agreed = 0
        self.champion = _Side(peak_rss_mb=rss_before_mb)
        self.challenger = _Side(peak_rss_mb=rss_mb())

    def add(
        self,
        champion: Predictions,
        champion_s: float,
        challenger: Predictions,
        challenger_s: float,
    ) -> None:
        rows = len(champion.outputs)
        self.samples += rows
        self.champion.add(champion, champion_s, rows)
        self.challenger.add(challenger, challenger_s, rows)
        if champion.predicted is not None and challenger.predicted is not None:
            self.agreed += int((champion.predicted == challenger.predicted).sum())
        else:  # regression: agreement within 10 % of the champion's magnitude
            close = np.isclose(challenger.outputs, champion.outputs, rtol=0.1, atol=1e-3).all(axis=1)
            self.agreed += int(close.sum())
        self.challenger.peak_rss_mb = max(self.challenger.peak_rss_mb, rss_mb())

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def due(self) -> bool:
        """The soak is over: its time has passed with enough samples, or ten times its time has."""
        elapsed = self.seconds
        if elapsed < self.directive.shadow_s:
            return False
        return self.samples >= self.directive.min_samples or elapsed >= _PATIENCE * self.directive.shadow_s

    def stats(self) -> ShadowStats:
        return ShadowStats(
            samples=self.samples,
            agreement=round(self.agreed / self.samples, 4) if self.samples else None,
            seconds=round(self.seconds, 3),
            champion=self.champion.stats(),
            challenger=self.challenger.stats(),
        )

    def verdict(self) -> str | None:
        """Why the challenger failed its gates, or None when it passed."""
        stats = self.stats()
        d = self.directive
        if not stats.samples:
            # No evidence is no pass: a rollout that asks for a shadow gets one or a refusal.
            return f"no input came during {stats.seconds:.0f} s of shadow: nothing to judge the new model on"
        if stats.challenger.non_finite:
            return f"{stats.challenger.non_finite} of {stats.samples} shadow outputs were not finite"
        if stats.agreement is not None and stats.agreement < d.min_agreement:
            return f"agreement {stats.agreement:.3f} with the running model is below {d.min_agreement}"
        mine, theirs = stats.challenger.p95_latency_ms, stats.champion.p95_latency_ms
        if d.max_latency_ratio is not None and mine is not None and theirs:
            ratio = mine / theirs
            if not math.isfinite(ratio) or ratio > d.max_latency_ratio:
                return (
                    f"p95 latency {mine:.3f} ms is {ratio:.1f}x the running model's {theirs:.3f} ms"
                    f" (at most {d.max_latency_ratio}x)"
                )
        return None
