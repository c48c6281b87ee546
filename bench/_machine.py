"""The machine a benchmark ran on, recorded beside its figures."""

from __future__ import annotations

import os
from pathlib import Path


def machine() -> dict[str, object]:
    """``cpu_count`` (``os.cpu_count()``), ``cpu_model`` (the first "model name" of /proc/cpuinfo) and
    ``load_average_1m`` when asked (others' work on a shared machine shows there)."""
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: the count alone
        pass
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "load_average_1m": round(os.getloadavg()[0], 2)}
