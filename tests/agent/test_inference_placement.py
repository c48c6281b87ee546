"""Where the agent runs a model call: a tiny model on the event loop, a slow one on its thread.

The hop to the inference thread costs more than a tiny model's whole batch; holding the loop for a
long call would stall the MQTT link and every other task. ``inference.executor: auto`` (the
default) decides per call from the model's last one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.inference_placement import InferencePlacement
from simulators.defects import build_defective_bundle
from tests.agent.factories import agent_config, settings
from tests.utils.broker import free_port
from tests.utils.waiting import wait_until

READINGS = 10_000


def _batches(agent: Agent, where: str) -> float:
    return agent.metrics.inference_batches.labels(where)._value.get()


async def _run_offline(tmp_path: Path, bundle: Path, key: Path, readings: int) -> Agent:
    """An agent with the default inference settings that infers ``readings`` as fast as it can."""
    config = agent_config(
        tmp_path,
        port=free_port(),  # no broker: inference and the outbox only
        bundle=bundle,
        public_key=key,
        source={"kind": "synthetic", "rate_hz": None, "limit": readings, "seed": 3},
    )
    agent = Agent(settings(config))
    task = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: agent.outbox.stats.last_seq == readings, 120, "every reading stored")
    finally:
        agent.stop()
        await asyncio.wait_for(task, 30)
    return agent


# solo: which side of inline_max_ms a call falls depends on the machine's load (the clock runs through
# GIL waits); alone on the machine a 256-reading call of this model takes 0.2-0.7 ms here.
@pytest.mark.solo
async def test_a_tiny_model_runs_on_the_loop_once_warm(
    tmp_path: Path, bundles, public_key_file: Path
) -> None:  # type: ignore[no-untyped-def]
    agent = await _run_offline(tmp_path, bundles["onnx-int8"], public_key_file, READINGS)
    loop, thread = _batches(agent, "loop"), _batches(agent, "thread")
    assert agent.metrics.inferences._value.get() == READINGS
    assert thread >= 1, "the first call, not timed yet, goes to the thread"
    # The first few calls warm the runtime up (1-3 ms each here): on the thread.
    assert loop >= 0.6 * (loop + thread), f"{loop:.0f} calls on the loop, {thread:.0f} on the thread"


async def test_a_model_slower_than_the_budget_never_holds_the_loop(
    tmp_path: Path, trained_mlp, signing_key, public_key_file: Path
) -> None:  # type: ignore[no-untyped-def]
    # Right answers with a hundred times the work: milliseconds a reading on this machine.
    slow = await asyncio.to_thread(
        build_defective_bundle, trained_mlp, "slow_10x", tmp_path / "slow", signing_key, version="1.0.0"
    )
    agent = await _run_offline(tmp_path, slow, public_key_file, 40)
    assert agent.metrics.inferences._value.get() == 40
    assert _batches(agent, "thread") >= 1
    assert _batches(agent, "loop") == 0, "a call over inline_max_ms ran on the event loop"


class _Model:  # stands in for a LoadedModel as a key: placement only needs identity
    pass


@pytest.mark.parametrize(
    ("mode", "last", "rows", "expected"),
    [
        ("auto", None, 256, False),  # not timed yet: the thread
        ("auto", (256, 0.0002), 256, True),  # 0.2 ms for the same size: inline
        ("auto", (1, 0.00002), 256, False),  # 20 us for one reading: 5 ms for 256, over 1 ms
        ("auto", (256, 0.002), 16, False),  # 2 ms for 256 bounds 16 by 2 ms (the fixed part is unknown)
        ("thread", (256, 0.0000001), 1, False),
        ("inline", (1, 1.0), 256, True),
    ],
)
def test_placement_bounds_a_call_by_the_models_last_one(
    mode: str, last: tuple[int, float] | None, rows: int, expected: bool
) -> None:
    placement = InferencePlacement(mode, inline_max_ms=1.0)  # type: ignore[arg-type]
    model = _Model()
    if last is not None:
        placement.observe(model, *last)  # type: ignore[arg-type]
    assert placement.inline(model, rows) is expected  # type: ignore[arg-type]


def test_a_one_reading_call_does_not_send_full_batches_back_to_the_thread() -> None:
    placement = InferencePlacement("auto", inline_max_ms=1.0)
    model = _Model()
    placement.observe(model, 256, 0.0003)  # type: ignore[arg-type]
    placement.observe(model, 1, 0.0001)  # type: ignore[arg-type]  # mostly the call's fixed cost
    assert placement.inline(model, 256), "the 256-reading call still bounds the next one at 0.3 ms"
    placement.observe(model, 256, 0.004)  # type: ignore[arg-type]  # the model got slower
    assert not placement.inline(model, 256)
