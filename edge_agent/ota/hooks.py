"""Crash points for tests: ``EDGEFLEET_AGENT_CRASH_AT=download`` kills the agent there with SIGKILL.

Tests of "kill -9 at any instant leaves a runnable model" pick the instant with this hook
instead of sleeping and hoping; it does nothing unless the variable names the point.
"""

from __future__ import annotations

import os
import signal

#: Where the update can be cut, in the order it passes them.
POINTS = ("download", "unpack", "verified", "shadow", "switch", "promoted")


def crash_point(name: str) -> None:
    if os.environ.get("EDGEFLEET_AGENT_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
