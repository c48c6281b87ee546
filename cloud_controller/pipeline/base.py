"""What a pipeline step gets (`StepContext`) and how it ends (a result, `Skip`, `StepFailed`).

A step is idempotent: run again on the same job (its worker died, another took the job over), it
produces the same outputs or finds them made already. Its files live in the job's directory; what
later steps and the API need goes into the job's ``artifacts`` under the step's name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from cloud_controller.job_models import JobParams
from cloud_controller.settings import ControllerSettings


class StepFailed(Exception):
    """The step cannot do its work; the message (why, and what to do) goes into its log and the job."""


class Skip(Exception):
    """The step has nothing to do; the message says why. The job goes on (and ends) normally."""


class Cancelled(Exception):
    """The job was cancelled: the step stops at its next check."""


class LeaseLost(Exception):
    """Another worker took the job over (this one stalled past its lease): stop, write nothing."""


class Interrupted(Exception):
    """The worker is shutting down: the job goes back to the queue, resumed by the next worker."""


@dataclass
class Signals:
    """Set by the worker's lease thread and its signal handlers; read by `StepContext.check`."""

    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass
class StepContext:
    job_id: str
    kind: str
    model_id: str
    params: JobParams
    #: Every earlier step's artifacts, by step name.
    artifacts: dict[str, Any]
    workdir: Path
    engine: Engine
    settings: ControllerSettings
    signals: Signals
    log: Callable[[str], None]

    @property
    def actor(self) -> str:
        return f"job:{self.job_id}"

    def dir(self, step: str) -> Path:
        path = self.workdir / step
        path.mkdir(parents=True, exist_ok=True)
        return path

    def check(self) -> None:
        """Raise if the job must stop here: cancelled, taken over, or the worker shutting down."""
        if self.signals.lost.is_set():
            raise LeaseLost(f"job {self.job_id} was taken over by another worker")
        if self.signals.cancel.is_set():
            raise Cancelled("cancelled while running")
        if self.signals.stop.is_set():
            raise Interrupted("the worker is shutting down")


class Step(Protocol):
    name: str
    needs: tuple[str, ...]

    def run(self, ctx: StepContext) -> dict[str, Any]:
        """Do the step's work; what it returns is kept as ``artifacts[name]``."""
        ...

    def ready(self, ctx: StepContext) -> bool:
        """Whether the outputs a later step reads from this worker's disk are there."""
        ...
