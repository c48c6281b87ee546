"""`fleet-sim` as a user runs it, noting each secret the simulator makes, for tests/security.

``python -m tests.utils.fleet_sim_capture run SCENARIO ...`` takes `fleet-sim`'s arguments and runs
its ``main``. Two names are wrapped, nothing else changes: every API token the simulator mints
(``simulators.controller.create_token``) and every bundle signing key it generates
(``simulators.bringup.generate_private_key``) are appended, as JSON lines ``{"kind", "secret"}``,
to the file named by ``EDGEFLEET_TEST_SECRETS``. The simulator holds these in memory only, so this
is where a test finds their plaintext. `run` keeps that file beside the run directory, not in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ENV = "EDGEFLEET_TEST_SECRETS"


def secrets_file(out: Path) -> Path:
    """Where `run` notes the secrets of the run in ``out``."""
    return out.with_name(out.name + ".secrets.jsonl")


def run(scenario: Path, out: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    """``fleet-sim run SCENARIO --out OUT ARGS``, its secrets noted in ``secrets_file(out)``."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.utils.fleet_sim_capture",
            "run",
            str(scenario),
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, ENV: str(secrets_file(out))},
        check=False,
    )


def captured(out: Path) -> list[tuple[str, str]]:
    """``(kind, secret)`` of every secret the run in ``out`` made."""
    path = secrets_file(out)
    if not path.exists():
        return []
    return [(e["kind"], e["secret"]) for e in map(json.loads, path.read_text().splitlines())]


def _note(kind: str, secret: str) -> None:
    with open(os.environ[ENV], "a") as sink:
        sink.write(json.dumps({"kind": kind, "secret": secret}) + "\n")


def _wrap() -> None:
    from fleet_protocol.signing import private_key_pem
    from simulators import bringup, controller

    make_key, make_token = bringup.generate_private_key, controller.create_token

    def generate_private_key() -> Any:
        key = make_key()
        _note("bundle signing key", private_key_pem(key).decode())
        return key

    def create_token(**kwargs: Any) -> str:
        token = make_token(**kwargs)
        _note(f"API token ({kwargs['role'].value})", token)
        return token

    bringup.generate_private_key = generate_private_key  # type: ignore[assignment]
    controller.create_token = create_token  # type: ignore[assignment]


if __name__ == "__main__":
    if os.environ.get(ENV):
        _wrap()
    from simulators.cli import main

    sys.exit(main())
