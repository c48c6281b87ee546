"""kill -9 the agent process mid-stream, restart it: nothing lost, nothing re-sent as new."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.sources.synthetic import FEATURE_NAMES, make_dataset
from tests.agent.factories import agent_config, write_config
from tests.utils.broker import Mosquitto
from tests.utils.subscriber import FleetSubscriber
from tests.utils.waiting import wait_until

TOTAL = 3000


def _replay_file(path: Path) -> list[float]:
    x, y = make_dataset(TOTAL, seed=11)
    stamps = [1_700_000_000.0 + i for i in range(TOTAL)]
    with path.open("w") as handle:
        for ts, row, label in zip(stamps, x, y, strict=True):
            reading = dict(zip(FEATURE_NAMES, (round(float(v), 6) for v in row), strict=True))
            handle.write(json.dumps({"ts": ts, "label": int(label), **reading}) + "\n")
    return stamps


def _start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)])


@pytest.mark.slow
async def test_kill_9_mid_stream_loses_nothing_and_never_repeats_a_seq(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    stamps = _replay_file(tmp_path / "readings.jsonl")
    config = write_config(
        tmp_path / "agent.yaml",
        agent_config(
            tmp_path,
            port=broker.port,
            bundle=bundles["onnx-fp32"],
            public_key=public_key_file,
            source={"kind": "replay", "path": str(tmp_path / "readings.jsonl"), "rate_hz": 600},
            mqtt={"batch_max_records": 20},
        ),
    )
    async with FleetSubscriber(broker.port) as sub:
        agent = _start(config)
        try:
            await wait_until(lambda: len(sub.seqs("dev-1")) >= 800, 60, "800 records delivered")
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
            # The broker saw the TCP connection die without a DISCONNECT: the Last Will fires.
            await wait_until(lambda: not sub.states["dev-1"].online, 10, "Last Will published")
            killed_at = len(sub.seqs("dev-1"))
            assert killed_at < TOTAL, "the kill happened mid-stream"

            agent = _start(config)
            await wait_until(lambda: len({r.ts for r in sub.records}) >= TOTAL, 90, "every reading delivered")
            await wait_until(lambda: sub.states["dev-1"].online and sub.states["dev-1"].outbox_depth == 0, 15)
        finally:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(20) == 0, "a clean stop exits 0"
    assert sub.errors == []
    by_seq = sub.by_seq("dev-1")
    # A record re-sent after the crash is the same record under the same seq.
    for seq, copies in by_seq.items():
        assert len({c.ts for c in copies}) == 1, f"seq {seq} was reused for different readings"
    seq_of = {copies[0].ts: seq for seq, copies in by_seq.items()}
    assert sorted(seq_of) == stamps, "every reading arrived, none was lost"
    assert len(seq_of) == len(by_seq), "no reading was stored twice under two seqs"
    assert sorted(by_seq) == list(range(1, TOTAL + 1)), "seqs are contiguous and never repeat"
    assert [seq_of[ts] for ts in stamps] == list(range(1, TOTAL + 1)), "seq order follows reading order"
