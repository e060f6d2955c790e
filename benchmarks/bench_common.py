"""Small pieces every benchmark script uses: timing repeated runs and writing the JSON figures."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path


def timed(fn, repeat: int):
    """Run fn `repeat` times: (its last result, the list of wall-clock seconds)."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def timed_median(fn, repeat: int):
    """(fn's last result, the median seconds of `repeat` runs)."""
    out, times = timed(fn, repeat)
    return out, statistics.median(times)


def write_json(result: dict, path) -> Path:
    """Write the figures (non-JSON values as strings) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"JSON: {path}")
    return path
