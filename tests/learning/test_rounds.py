from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fleet_learning import messages as m
from fleet_learning.config import FederatedConfig
from fleet_learning.models import MLP
from fleet_learning.rounds import NotEnoughClients, run_rounds


class OnlineNodes(Grid):
    """A Grid that only answers which nodes are online: the loop must give up before sending."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    @property
    def run(self) -> None:
        raise AssertionError("not reached")

    def set_run(self, *args: object) -> None:
        raise AssertionError("not reached")

    def create_message(self, *args: object, **kwargs: object) -> Message:
        raise AssertionError("not reached")

    def push_messages(self, *args: object) -> Iterable[str]:
        raise AssertionError("no message may be sent")

    def pull_messages(self, *args: object) -> Iterable[Message]:
        raise AssertionError("no message may be sent")

    def send_and_receive(self, *args: object, **kwargs: object) -> Iterable[Message]:
        raise AssertionError("no message may be sent")


def test_job_fails_clearly_when_too_few_nodes_are_online() -> None:
    waited: list[float] = []
    config = FederatedConfig(rounds=1, min_clients=2, round_timeout_s=0.01)

    with pytest.raises(NotEnoughClients, match=r"1 node\(s\) online, the job needs 2; giving up"):
        run_rounds(OnlineNodes([7]), config, ArrayRecord(), ConfigRecord(), sleep=waited.append)

    assert waited  # it waited for nodes to come online before giving up


def _weights(hidden: int = 64, fill: float = 0.0, extra: bool = False) -> ArrayRecord:
    state = {name: torch.full_like(value, fill) for name, value in MLP(16, 4, hidden).state_dict().items()}
    if extra:
        state["extra"] = torch.zeros(3)
    return ArrayRecord(state)


def _train_reply(node: int) -> RecordDict | Error:
    """Node 1 and 2 send good updates (2 with a metric of its own); the others are malformed."""
    site = ConfigRecord({"site": "site-a" if node % 2 else "site-b"})
    metrics = {m.NUM_EXAMPLES: 100 * node, "train-loss": 0.5}
    arrays = _weights(fill=float(node))
    if node == 2:
        metrics["newer-client-metric"] = 1.0
    elif node == 3:
        del metrics[m.NUM_EXAMPLES]
    elif node == 4:
        arrays = _weights(fill=4.0, extra=True)
    elif node == 5:
        arrays = _weights(hidden=32, fill=5.0)  # a device on another model version
    elif node == 6:
        metrics[m.NUM_EXAMPLES] = 0
    elif node == 7:
        return Error(code=0, reason="Traceback ...\nDataError: buffer unreadable")
    return RecordDict({m.ARRAYS: arrays, m.METRICS: MetricRecord(metrics), m.NODE: site})


def _evaluate_reply(node: int) -> RecordDict:
    metrics = {m.NUM_EXAMPLES: 50, "eval-loss": 0.3, "eval-acc": 0.9}
    if node != 1:
        del metrics["eval-acc"]  # every other node: malformed, so the round's accuracy is node 1's
    return RecordDict({m.METRICS: MetricRecord(metrics), m.NODE: ConfigRecord({"site": "site-a"})})


class ScriptedNodes(OnlineNodes):
    """A Grid whose nodes answer each instruction with a scripted reply (no Flower processes)."""

    def send_and_receive(
        self, messages: Iterable[Message], *args: object, **kwargs: object
    ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            content = _train_reply(node) if kind == MessageType.TRAIN else _evaluate_reply(node)
            replies.append(Message(content, reply_to=msg))
        return replies


@pytest.mark.parametrize("hierarchical", [False, True])
def test_malformed_replies_count_as_failed_and_the_round_aggregates_the_rest(
    hierarchical: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for attribute in ("_run_id", "_node_id", "_task_id"):  # what a ServerApp process sets
        monkeypatch.setattr(TaskIdentity, attribute, 1)
    config = FederatedConfig(rounds=1, min_clients=2, round_timeout_s=1, hierarchical=hierarchical)

    outcome = run_rounds(
        ScriptedNodes(list(range(1, 8))), config, _weights(), ConfigRecord(), sleep=lambda _: None
    )

    (stats,) = outcome.rounds
    assert (stats.sampled, stats.responded, stats.failed, stats.declined) == (7, 2, 5, 0)
    assert stats.aggregated and stats.examples == 300
    assert stats.updates_to_cloud == 2  # hierarchical: nodes 1 and 2 are of different sites
    mean = outcome.arrays.to_torch_state_dict()["fc1.weight"]
    torch.testing.assert_close(mean, torch.full_like(mean, (1 * 100 + 2 * 200) / 300))
    assert stats.train_loss == pytest.approx(0.5)
    failures = "\n".join(stats.failures)
    assert "node 3: malformed reply: metrics lack ['num-examples']" in failures
    assert (
        "node 4: malformed reply: weights are not the global model's (missing [], unexpected ['extra'])"
        in failures
    )
    assert (
        "node 5: malformed reply: weight 'fc1.weight' is float32[32, 16], the global model's is " in failures
    )
    assert "node 6: malformed reply: num-examples is 0, not an integer >= 1" in failures
    assert "node 7: DataError: buffer unreadable" in failures
    assert "node 3: malformed reply, counted as failed: metrics lack ['num-examples']" in caplog.text
    assert stats.accuracy == pytest.approx(0.9) and stats.loss == pytest.approx(0.3)  # node 1's alone
