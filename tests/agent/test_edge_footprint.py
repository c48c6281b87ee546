"""An edge device must not need torch: the agent's import graph stays free of it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_agent_imports_no_training_stack() -> None:
    code = (
        "import sys, edge_agent.cli, edge_agent.agent, edge_agent.runtimes.onnxruntime, "
        "edge_agent.runtimes.openvino, edge_agent.runtimes.litert\n"
        "heavy = ('torch', 'nncf', 'flwr', 'fastapi', 'sqlmodel', 'onnx')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""


def test_edge_extra_and_its_lock_leave_out_torch() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    edge = " ".join(extras["edge"]).lower()
    assert "torch" not in edge and "nncf" not in edge and "flwr" not in edge
    lock = (ROOT / "requirements" / "edge.txt").read_text().lower()
    assert "onnxruntime==" in lock and "openvino==" in lock and "ai-edge-litert==" in lock
    assert "torch" not in lock
