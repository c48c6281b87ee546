"""What a federated round's messages carry, in one place for the ServerApp and the ClientApp.

Instruction: ``arrays`` (global weights) + ``config`` (the keys below).
Reply: ``arrays`` (trained weights, train only) + ``metrics`` (``num-examples`` first) + ``node``
(a ConfigRecord naming the node's site, so a site aggregator can group replies). A node that is not
eligible replies ``metrics`` with ``declined = 1`` and no arrays.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

ARRAYS, CONFIG, METRICS, NODE = "arrays", "config", "metrics", "node"
NUM_EXAMPLES, DECLINED = "num-examples", "declined"

# Instruction config keys.
RECIPE = "recipe"  # TrainingRecipe JSON
MEAN, SCALE = "mean", "scale"  # the global standardisation: every client trains in the same space
LOCAL_EPOCHS = "local-epochs"
MIN_SAMPLES = "min-samples"
MAX_SAMPLES = "max-samples"
PROXIMAL_MU = "proximal-mu"  # the key Flower's FedProx sets
GROUPS = "groups"  # comma-separated sites taking part; empty: every site
ROUND_TIMEOUT = "round-timeout"  # seconds; a gateway's own site round must end within it


def declined(reason: str, site: str, available: int = 0) -> RecordDict:
    """A reply saying 'not eligible this round' (not an error: the server counts it as declined)."""
    return RecordDict(
        {
            METRICS: MetricRecord({NUM_EXAMPLES: 0, DECLINED: 1, "available": available}),
            NODE: ConfigRecord({"site": site, "reason": reason}),
        }
    )


def is_declined(reply: Message) -> bool:
    if reply.has_error() or METRICS not in reply.content.metric_records:
        return False
    return bool(reply.content.metric_records[METRICS].get(DECLINED, 0))


def site_of(reply: Message) -> str:
    node = reply.content.config_records.get(NODE)
    return str(node["site"]) if node is not None and "site" in node else ""


def array_bytes(record: ArrayRecord) -> int:
    """Bytes of the weights a message carries (what crosses the link, before framing)."""
    return sum(len(array.data) for array in record.values())


def reply_bytes(reply: Message) -> int:
    if reply.has_error():
        return 0
    return sum(array_bytes(record) for record in reply.content.array_records.values())


def is_finite(reply: Message) -> bool:
    """Every weight and every metric of the reply is a finite number."""
    content = reply.content
    for record in content.array_records.values():
        for array in record.values():
            if not np.isfinite(array.numpy()).all():
                return False
    for metrics in content.metric_records.values():
        for value in metrics.values():
            values = value if isinstance(value, list) else [value]
            if not all(math.isfinite(float(v)) for v in values):
                return False
    return True
