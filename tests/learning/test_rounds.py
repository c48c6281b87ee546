from __future__ import annotations

from collections.abc import Iterable

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fleet_learning.config import FederatedConfig
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
