"""Small pieces the benchmark scripts share: timing repeated runs, writing the JSON figures, and the float
model's evaluation of a structure (the baseline the quantized paths are compared with)."""

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


def float_evaluation(qm, nb, types):
    """A call that evaluates the float model the quantized `qm` came from on neighbour blocks `nb`
    (model.assembly.neighbor_blocks) with model.network.evaluate: (energy, forces, virial, ...)."""
    import numpy as np
    import torch

    from model.network import evaluate
    from model.quantize import float_model
    fm = float_model(qm)
    n = len(types)
    valid = nb.nbr_type >= 0
    center = torch.as_tensor(np.broadcast_to(np.arange(n)[:, None], valid.shape)[valid])
    neighbor = torch.as_tensor(nb.nbr_index[valid])
    rij = torch.as_tensor(nb.nbr_vec[valid])
    atype = torch.as_tensor(types)
    zeros = torch.zeros(n, dtype=torch.long)
    return lambda: evaluate(fm, rij, center, neighbor, atype, zeros, 1)
