"""Work done once per test run and shared by the pytest-xdist workers (a model trained and built)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from filelock import FileLock

T = TypeVar("T")


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], T]) -> T:
    """``make(directory)`` once per run: the first worker to ask makes it under a file lock and
    pickles the result beside what it wrote; the others wait for that and load it.

    The directory lives under the run's base temporary directory, which the workers share (each
    worker's own is one level down). What ``make`` returns must pickle, and tests must not change
    what it wrote (copy first), as for any session fixture.
    """
    root = tmp_path_factory.getbasetemp()
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    # A worker's base temp is <run>/popen-<worker>; a pytest started by a test inherits the variable
    # but has a base temp of its own, which it must not climb out of.
    if worker and root.name.endswith(worker):
        root = root.parent
    directory = root / "once-per-run" / name
    directory.mkdir(parents=True, exist_ok=True)
    result = directory / "result.pickle"
    with FileLock(str(directory) + ".lock"):
        if result.exists():
            return pickle.loads(result.read_bytes())  # written by this run, never from elsewhere
        value = make(directory)
        result.write_bytes(pickle.dumps(value))
        return value
