"""The drift reference a bundle carries: how the model's training inputs were distributed.

It travels as ``drift_reference.json`` inside a bundle, listed in the manifest's ``files``,
so the manifest's signature covers it like the model itself. Gateways histogram live inputs
over its bins (`fleet_protocol.ingest.DriftSummary.histograms`); the controller compares
those histograms with its counts, so drift is detected without raw data leaving a site.
"""

from __future__ import annotations

import itertools
import math

from pydantic import Field, model_validator

from fleet_protocol.messages import INT64_MAX, ProtocolModel

DRIFT_REFERENCE_FILE = "drift_reference.json"


class DriftReference(ProtocolModel):
    """Per-feature histogram, mean and std of the raw (unscaled) inputs a model was trained on.

    A value below the first edge counts in the first bin, one above the last edge in the
    last bin: the outer bins are open.
    """

    feature_names: list[str] = Field(min_length=1, max_length=4096)
    #: Per feature, increasing bin edges (bins + 1 of them).
    bin_edges: list[list[float]]
    #: Per feature, how many training samples fell in each bin.
    counts: list[list[int]]
    mean: list[float]
    std: list[float]
    samples: int = Field(ge=1, le=INT64_MAX)

    @model_validator(mode="after")
    def _shapes(self) -> DriftReference:
        n = len(self.feature_names)
        for name in ("bin_edges", "counts", "mean", "std"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} features")
        for i, (edges, counts) in enumerate(zip(self.bin_edges, self.counts, strict=True)):
            if len(edges) < 2 or len(counts) != len(edges) - 1:
                raise ValueError(f"feature {i}: {len(edges)} edges need {len(edges) - 1} counts")
            if any(b <= a for a, b in itertools.pairwise(edges)):
                raise ValueError(f"feature {i}: bin edges must increase")
            if any(c < 0 for c in counts):
                raise ValueError(f"feature {i}: counts must not be negative")
        return self


def population_stability_index(reference: list[int], observed: list[int], floor: float = 1e-4) -> float:
    """PSI between two histograms over the same bins: sum of (o - r) * ln(o / r) over bins.

    Shares are floored so that an empty bin does not make the index infinite. Below 0.1 is
    usually read as stable, above 0.25 as a significant shift.

    Parameters
    ----------
    reference, observed : list of int
        Counts per bin.
    floor : float
        Smallest share a bin is given.
    """
    if len(reference) != len(observed):
        raise ValueError(f"{len(reference)} reference bins, {len(observed)} observed")
    r_total, o_total = sum(reference), sum(observed)
    if r_total <= 0 or o_total <= 0:
        return 0.0
    psi = 0.0
    for r, o in zip(reference, observed, strict=True):
        rs, os_ = max(r / r_total, floor), max(o / o_total, floor)
        psi += (os_ - rs) * math.log(os_ / rs)
    return psi
