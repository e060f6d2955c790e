"""Folding from a target: `python -m gen build --cycles-per-atom N` (arch "dataflow").

As FINN's SetFolding, every stage is folded as far as the target allows and no further, so that all
stages balance to the bottleneck: each fitting layer gets the (pe, simd) with the fewest multipliers
whose stage cycles (gen.cycles.matvec_cycles) stay within N, the energy stage the smallest
energy_simd, the descriptor stages the fewest products (desc_par x desc_rows; at a tie the columns are
folded before GR's rows, which needs no accumulator), and the record stages the fewest lanes
whose 1 + ceil(n/lanes) cycles (n: the model's mean neighbour count) stay within N.  Where FINN raises
SIMD, then PE, step by step, this searches every (pe, simd) pair (128 x 128 for the bundled model,
milliseconds) and counts the output units too: a forward output unit (tanh4, ~COST_FWD_UNIT
multipliers) per pe lane and a backward one (phi' g, COST_BWD_UNIT) per simd lane, since the
backward stage reads the forward's tiles transposed.  Ties go to lane counts that divide the layer
(no idle lanes in the last block), then to fewer output units.
"""

from __future__ import annotations

import math

from . import cycles
from .ir import DESC_ROWS, DesignError, Knobs

#: multipliers of one forward output unit (tanh4: za^2 and two xx products) and of one backward one
#: (phi'(z) g), beside the pe x simd of the MAC array; a cost model for the search, not a count
COST_FWD_UNIT = 3
COST_BWD_UNIT = 1


def layer_folding(n_in: int, n_out: int, target: int) -> tuple[int, int]:
    """(pe, simd) of one fitting layer within `target` cycles per atom, fewest multipliers."""
    epi = max(cycles.DATAFLOW_EPILOGUE["fwd"], cycles.DATAFLOW_EPILOGUE["bwd"])
    best = None
    for pe in range(1, n_out + 1):
        nob = -(-n_out // pe)
        for simd in range(1, n_in + 1):
            steps = nob * -(-n_in // simd)
            if cycles.matvec_cycles(steps, epi) > target:
                continue
            key = (pe * simd + COST_FWD_UNIT * pe + COST_BWD_UNIT * simd,
                   (n_out % pe != 0) + (n_in % simd != 0), pe)
            if best is None or key < best[0]:
                best = (key, pe, simd)
            break  # a larger simd only costs more for this pe
    if best is None:
        raise DesignError(f"no folding of a {n_in}x{n_out} fitting layer reaches {target} cycles per atom "
                          f"(fastest: {cycles.matvec_cycles(1, epi)}, fully parallel)")
    return best[1], best[2]


def fold_for(target: int, shape: cycles.Shape, neighbours: float | None) -> Knobs:
    """Dataflow knobs for `target` cycles per atom (module docstring); DesignError naming the stage
    that cannot reach it."""
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise DesignError(f"--cycles-per-atom must be a positive integer, got {target!r}")
    if neighbours is None:
        raise DesignError("--cycles-per-atom needs the mean neighbour count (the model file's statistics or "
                          "--neighbours N) to widen the record stages")
    n = float(neighbours)
    if target < 2:
        raise DesignError(f"the record stages take at least 2 cycles per atom (header + one beat); "
                          f"--cycles-per-atom {target} is below")
    lanes = max(1, math.ceil(n / (target - 1)))
    while float(cycles.record_cycles(n, lanes)) > target:
        lanes += 1
    desc = sorted((dp * rows, -rows, dp, rows) for dp in range(1, shape.m1 + 1) if shape.m1 % dp == 0
                  for rows in DESC_ROWS
                  if cycles.descriptor_steps(Knobs(desc_par=dp, desc_rows=rows), shape) + 2 <= target)
    if not desc:
        raise DesignError(f"the descriptor stages take at least 3 cycles per atom; --cycles-per-atom {target} "
                          "is below")
    energy = next((s for s in range(1, shape.n_hidden + 1)
                   if cycles.matvec_cycles(-(-shape.n_hidden // s), cycles.DATAFLOW_EPILOGUE["energy"]) <= target),
                  None)
    if energy is None:
        raise DesignError(f"the energy stage cannot reach {target} cycles per atom")
    folds = [layer_folding(shape.n_hidden, shape.n_hidden, target) for _ in range(shape.n_layers)]
    knobs = Knobs(lanes=lanes, desc_par=desc[0][2], desc_rows=desc[0][3], arch="dataflow",
                  pe=tuple(p for p, _ in folds), simd=tuple(s for _, s in folds), energy_simd=energy)
    assert cycles.cycles_per_atom(n, knobs, shape) <= target
    return knobs
