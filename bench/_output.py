"""Benchmarks print one JSON object on stdout; all else (theirs and their children's) goes to stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def stdout_for_json_only() -> Iterator[Callable[[str], None]]:
    """Point fd 1 at stderr for the run (children inherit it); yield a writer to the real stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(saved), "w") as out:

            def write(text: str) -> None:
                out.write(text + "\n")
                out.flush()

            yield write
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
