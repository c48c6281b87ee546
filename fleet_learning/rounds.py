"""The server's round loop: sample, train, filter, aggregate (flat or per site), evaluate, stop.

Flower's ``Strategy.start`` runs a fixed number of rounds and hands every reply to the strategy.
A fleet job needs more, so this loop drives the strategy's own ``configure_*``/``aggregate_*``:
- replies are sorted first: errors, malformed replies (weights whose names, shapes or dtypes are
  not the global model's, missing metrics) and non-finite weights are *failed*, ineligible nodes
  *declined*, missing replies *timed out*; only valid updates reach the aggregation, rebuilt with
  the same records and metric keys so Flower's consistency checks hold;
- in (emulated) hierarchical mode device updates are folded per site before the cloud strategy sees
  them (the deployed form is a gateway node: ``gateway_round``);
- a round with fewer than ``min_clients`` valid updates keeps the global model;
- it stops at a target accuracy or after ``patience`` rounds without improvement;
- each round's numbers go to a callback, so a job can log them as they come.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from fleet_learning import messages as m
from fleet_learning.config import FederatedConfig
from fleet_learning.exceptions import LearningError
from fleet_learning.site_aggregator import aggregate_by_site
from fleet_learning.strategies import make_strategy, privacy_settings, with_central_dp

log = logging.getLogger(__name__)

#: Central evaluation of the global weights on the job's held-out set: (round, arrays) -> (acc, loss).
EvaluateFn = Callable[[int, ArrayRecord], tuple[float, float]]

#: Metrics a valid reply carries (``num-examples`` an integer >= 1); others are dropped.
TRAIN_METRICS = (m.NUM_EXAMPLES, "train-loss")
EVALUATE_METRICS = (m.NUM_EXAMPLES, "eval-loss", "eval-acc")

#: The global model's arrays: name -> (shape, dtype). A reply's weights must match it exactly.
ArraySpec = dict[str, tuple[tuple[int, ...], str]]


class NotEnoughClients(LearningError):
    """Fewer nodes online than ``min_clients`` within the round timeout."""


@dataclass
class RoundStats:
    """One round, as the job records it and the dashboard shows it."""

    round: int
    sampled: int
    responded: int  # valid updates
    declined: int
    failed: int  # errors, non-finite weights, or no reply within the timeout
    aggregated: bool
    examples: int = 0  # labelled samples behind the valid updates
    train_loss: float | None = None
    loss: float | None = None  # federated evaluation (clients' held-out samples)
    accuracy: float | None = None
    central_loss: float | None = None  # the job's held-out set, evaluated by the server
    central_accuracy: float | None = None
    bytes_down: int = 0  # global weights sent to sampled nodes
    bytes_up: int = 0  # device updates (from nodes that replied)
    cloud_uplink_bytes: int = 0  # what crosses into the cloud: device updates, or one per site
    updates_to_cloud: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        """The accuracy the stop rule watches: held-out if there is one, else federated."""
        return self.central_accuracy if self.central_accuracy is not None else self.accuracy

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RoundsOutcome:
    arrays: ArrayRecord
    rounds: list[RoundStats]
    stopped_because: str
    best_round: int
    privacy: dict


@dataclass
class _Sorted:
    valid: list[Message] = field(default_factory=list)
    declined: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)


def _last_line(reason: str) -> str:
    """The exception's own message, not the remote traceback around it."""
    lines = [line.strip(" '>") for line in reason.splitlines() if line.strip(" '>")]
    return (lines[-1] if lines else reason)[:300]


def array_spec(arrays: ArrayRecord) -> ArraySpec:
    return {name: (tuple(array.shape), array.dtype) for name, array in arrays.items()}


def _weights_problem(reply: Message, spec: ArraySpec) -> str:
    records = reply.content.array_records
    if m.ARRAYS not in records:
        return "reply without weights"
    if len(records) != 1:
        return f"{len(records)} array records, expected only {m.ARRAYS!r}"
    arrays = records[m.ARRAYS]
    missing, extra = sorted(set(spec) - set(arrays)), sorted(set(arrays) - set(spec))
    if missing or extra:
        return f"weights are not the global model's (missing {missing}, unexpected {extra})"
    for name, (shape, dtype) in spec.items():
        got = (tuple(arrays[name].shape), arrays[name].dtype)
        if got != (shape, dtype):
            return f"weight {name!r} is {got[1]}{list(got[0])}, the global model's is {dtype}{list(shape)}"
    return ""


def _metrics_problem(reply: Message, required: tuple[str, ...]) -> str:
    record = reply.content.metric_records.get(m.METRICS)
    if record is None:
        return f"reply without {m.METRICS!r}"
    missing = [key for key in required if key not in record]
    if missing:
        return f"metrics lack {missing}"
    lists = [key for key in required if isinstance(record[key], list)]
    if lists:
        return f"metrics {lists} are lists, not numbers"
    examples = record[m.NUM_EXAMPLES]
    if not isinstance(examples, int) or examples < 1:
        return f"{m.NUM_EXAMPLES} is {examples!r}, not an integer >= 1"
    return ""


def _canonical(reply: Message, required: tuple[str, ...], *, with_arrays: bool) -> Message:
    """The reply with only what aggregation reads: weights, the required metrics, the node record."""
    content = reply.content
    records: dict = {m.METRICS: MetricRecord({key: content[m.METRICS][key] for key in required})}
    if with_arrays:
        records[m.ARRAYS] = content[m.ARRAYS]
    if m.NODE in content.config_records:
        records[m.NODE] = content[m.NODE]
    return Message(content=RecordDict(records), metadata=reply.metadata)


def _malformed(reply: Message, spec: ArraySpec | None, metrics: tuple[str, ...]) -> str:
    """Why the reply cannot be aggregated with the others, or ""."""
    return (spec is not None and _weights_problem(reply, spec)) or _metrics_problem(reply, metrics)


def _sort(
    replies: list[Message], expected: int, *, spec: ArraySpec | None, metrics: tuple[str, ...]
) -> _Sorted:
    """Valid updates (with ``spec``: weights of exactly the global model's arrays), the rest counted."""
    out = _Sorted()
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            out.failures.append(f"node {node}: {_last_line(reply.error.reason)}")
        elif m.is_declined(reply):
            out.declined += 1
        elif problem := _malformed(reply, spec, metrics):
            out.failures.append(f"node {node}: malformed reply: {problem}")
            log.warning("node %s: malformed reply, counted as failed: %s", node, problem)
        elif not m.is_finite(canonical := _canonical(reply, metrics, with_arrays=spec is not None)):
            out.failures.append(f"node {node}: non-finite weights or metrics")
        else:
            out.valid.append(canonical)
    missing = expected - len(replies)
    if missing > 0:
        out.failures.append(f"{missing} node(s) did not reply within the round timeout")
    out.failed = len(replies) - len(out.valid) - out.declined + max(missing, 0)
    return out


def _wait_for_nodes(grid: Grid, minimum: int, timeout: float, sleep: Callable[[float], None]) -> None:
    """Flower's sampling waits forever for nodes; a job waits for one round timeout, then fails."""
    deadline = time.monotonic() + timeout
    while (online := len(list(grid.get_node_ids()))) < minimum:
        if time.monotonic() > deadline:
            raise NotEnoughClients(f"{online} node(s) online, the job needs {minimum}; giving up")
        sleep(0.5)


def _metric(record: MetricRecord | None, key: str) -> float | None:
    if record is None or key not in record:
        return None
    value = float(record[key])  # type: ignore[arg-type]
    return value if math.isfinite(value) else None


def _evaluate_on_nodes(
    grid: Grid,
    strategy: Strategy,
    server_round: int,
    arrays: ArrayRecord,
    train_config: ConfigRecord,
    config: FederatedConfig,
    stats: RoundStats,
) -> None:
    """Federated evaluation: nodes score the global model on samples they never train on."""
    evaluation = list(strategy.configure_evaluate(server_round, arrays, train_config.copy(), grid))
    replies = list(grid.send_and_receive(evaluation, timeout=config.round_timeout_s))
    evaluated = _sort(replies, len(evaluation), spec=None, metrics=EVALUATE_METRICS)
    if evaluated.valid:
        metrics = strategy.aggregate_evaluate(server_round, evaluated.valid)
        stats.loss, stats.accuracy = _metric(metrics, "eval-loss"), _metric(metrics, "eval-acc")


def run_rounds(
    grid: Grid,
    config: FederatedConfig,
    initial: ArrayRecord,
    train_config: ConfigRecord,
    *,
    evaluate_fn: EvaluateFn | None = None,
    on_round: Callable[[RoundStats], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RoundsOutcome:
    """Run up to ``config.rounds`` rounds on ``grid`` from ``initial`` weights.

    ``train_config`` goes to every sampled node with each instruction (recipe, standardisation,
    local epochs, eligibility); the strategy adds ``server-round`` (and FedProx ``proximal-mu``).
    Returns the best weights (by held-out, else federated, accuracy; the last if none was measured).
    """
    base: Strategy = make_strategy(
        config.strategy,
        fraction=config.fraction,
        min_clients=config.min_clients,
        mu=config.mu,
        trim_fraction=config.trim_fraction,
    )
    strategy: Strategy = base
    dp: DifferentialPrivacyServerSideFixedClipping | None = None
    if config.clip_norm is not None:
        dp = with_central_dp(
            base,
            clip_norm=config.clip_norm,
            noise_multiplier=config.noise_multiplier,
            expected_updates=config.min_clients,
        )
        strategy = dp
    arrays, best_arrays = initial, initial
    spec = array_spec(initial)  # the job's model: every update must have exactly its arrays
    best_score, best_round, since_best = -math.inf, 0, 0
    rounds: list[RoundStats] = []
    dp_updates: list[int] = []
    dp_shares: list[float] = []
    stopped = f"ran {config.rounds} rounds"
    for server_round in range(1, config.rounds + 1):
        started = time.monotonic()
        _wait_for_nodes(grid, config.min_clients, config.round_timeout_s, sleep)
        instructions = list(strategy.configure_train(server_round, arrays, train_config.copy(), grid))
        replies = list(grid.send_and_receive(instructions, timeout=config.round_timeout_s))
        train = _sort(replies, len(instructions), spec=spec, metrics=TRAIN_METRICS)
        updates = aggregate_by_site(train.valid) if config.hierarchical else train.valid
        bytes_up = sum(m.reply_bytes(r) for r in replies)
        stats = RoundStats(
            round=server_round,
            sampled=len(instructions),
            responded=len(train.valid),
            examples=sum(int(r.content[m.METRICS][m.NUM_EXAMPLES]) for r in train.valid),
            declined=train.declined,
            failed=train.failed,
            aggregated=False,
            bytes_down=m.array_bytes(arrays) * len(instructions),
            bytes_up=bytes_up,
            # Flat: every device update crosses into the cloud. Hierarchical: each site's gateway
            # filters its devices' updates and sends one aggregate.
            cloud_uplink_bytes=sum(m.reply_bytes(u) for u in updates) if config.hierarchical else bytes_up,
            updates_to_cloud=len(updates),
            failures=train.failures,
        )
        if len(train.valid) >= config.min_clients and updates:
            if dp is not None:
                dp.num_sampled_clients = len(updates)
                dp_updates.append(len(updates))
                counts = [int(u.content[m.METRICS][m.NUM_EXAMPLES]) for u in updates]
                dp_shares.append(max(counts) / sum(counts) if sum(counts) else 1.0)
            new_arrays, train_metrics = strategy.aggregate_train(server_round, updates)
            if new_arrays is not None:
                arrays, stats.aggregated = new_arrays, True
            stats.train_loss = _metric(train_metrics, "train-loss")
        else:
            log.warning(
                "round %d: %d valid update(s), the job needs %d; the global model is kept",
                server_round,
                len(train.valid),
                config.min_clients,
            )
        if config.federated_evaluation:
            _evaluate_on_nodes(grid, strategy, server_round, arrays, train_config, config, stats)
        if evaluate_fn is not None:
            stats.central_accuracy, stats.central_loss = evaluate_fn(server_round, arrays)
        stats.seconds = time.monotonic() - started
        rounds.append(stats)
        if on_round is not None:
            on_round(stats)
        score = stats.score
        if score is not None and score > best_score:
            best_score, best_round, best_arrays, since_best = score, server_round, arrays, 0
        else:
            since_best += 1
        if config.target_accuracy is not None and score is not None and score >= config.target_accuracy:
            stopped = f"reached target accuracy {config.target_accuracy} in round {server_round}"
            break
        if config.patience is not None and since_best >= config.patience:
            stopped = f"no better accuracy for {config.patience} round(s) after round {best_round}"
            break
    if best_round == 0:
        best_arrays, best_round = arrays, rounds[-1].round if rounds else 0
    privacy = privacy_settings(
        config.clip_norm,
        config.noise_multiplier,
        dp_updates,
        dp_shares,
        strategy=config.strategy,
        unit="site" if config.hierarchical else "device",
    )
    return RoundsOutcome(best_arrays, rounds, stopped, best_round, privacy)
