"""Analytical cycle model of the pipeline (checked against simulated cycle counts in the tests).

Three parts work on different atoms at the same time, so in steady state an atom costs as many cycles
as the slowest part:

* forward record stages (framer input):  1 header beat + ceil(n / lanes) record beats (1 if n = 0);
* atom engines: T_B cycles per atom each, `engines` of them in round robin -> T_B / engines
  (arch "dataflow": the slowest stage of the fitting chain, `dataflow_stages`);
* backward record stage (output): 1 header beat + ceil(n / lanes) record beats (1 if n = 0).

T_B, from the AtomEngine/FittingEngine sequencers (gen/stages/atom_engine.py):

    T_B = 2 * n_layers * (n_hidden / fit_par)     MAC-array steps, forward and backward
        + (2 * n_layers + 1) * PASS_OVERHEAD      fill and drain of each pass (+1 step: energy)
        + 1                                       the energy step
        + 2 * (m1 / desc_par) * (4 / desc_rows)   descriptor products and their gradient
        + ENGINE_OVERHEAD                         accept, hand-offs, output beat
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PASS_OVERHEAD = 10  # MAC pipeline (ROM, product, partial sums, sum) + output unit (5) + hand-off
ENGINE_OVERHEAD = 7


@dataclass(frozen=True)
class Shape:
    n_layers: int = 3
    n_hidden: int = 128
    m1: int = 32


# ---- arch "dataflow" (gen/stages/dataflow.py) --------------------------------------------------------
#: register stages of a MatVec stage from issuing a step to its accumulator (weights, products,
#: partial sums, sum, accumulate)
DATAFLOW_MAC_LATENCY = 5
#: register stages of each MatVec stage's output units after the accumulator
DATAFLOW_EPILOGUE = {"fwd": 3, "energy": 0, "bwd": 2, "bwd0": 0}


def _blocks(n: int, lanes: int) -> int:
    return -(-n // lanes)


def matvec_cycles(steps: int, epilogue: int) -> int:
    """Steady-state cycles per atom of a MatVec stage of `steps` steps: `steps`, unless an atom's
    drain (MAC pipeline, output units, the hand-off) outlasts two atoms' issue; each of its two
    input and output slots is then reused only after that drain."""
    return max(steps, -(-(steps + DATAFLOW_MAC_LATENCY + epilogue + 2) // 2))


def descriptor_steps(knobs, shape: Shape = Shape()) -> int:
    """Steps of DescriptorProduct and DescriptorGradient: column blocks times row blocks."""
    return shape.m1 // knobs.desc_par * (4 // knobs.desc_rows)


def dataflow_stages(knobs, shape: Shape = Shape()) -> dict[str, dict]:
    """Per stage of the chain, in order: {"cycles", "multipliers" (of its MAC array), "steps"}."""
    n, L = shape.n_hidden, shape.n_layers
    desc = descriptor_steps(knobs, shape)
    out = {"descriptor": {"cycles": desc + 1, "steps": desc, "multipliers": None}}
    for l in range(L):
        steps = _blocks(n, knobs.pe[l]) * _blocks(n, knobs.simd[l])
        out[f"fwd{l}"] = {"cycles": matvec_cycles(steps, DATAFLOW_EPILOGUE["fwd"]), "steps": steps,
                          "multipliers": knobs.pe[l] * knobs.simd[l]}
    steps = _blocks(n, knobs.energy_simd)
    out["energy"] = {"cycles": matvec_cycles(steps, DATAFLOW_EPILOGUE["energy"]), "steps": steps,
                     "multipliers": knobs.energy_simd}
    for l in range(L - 1, -1, -1):
        steps = out[f"fwd{l}"]["steps"]
        out[f"bwd{l}"] = {"cycles": matvec_cycles(steps, DATAFLOW_EPILOGUE["bwd" if l else "bwd0"]), "steps": steps,
                          "multipliers": knobs.pe[l] * knobs.simd[l]}
    out["gradient"] = {"cycles": desc + 2, "steps": desc, "multipliers": None}
    return out


def atom_cycles(knobs, shape: Shape = Shape()) -> float:
    """Steady-state cycles per atom of the per-atom part (atom engines or the dataflow chain)."""
    if knobs.arch == "dataflow":
        return max(s["cycles"] for s in dataflow_stages(knobs, shape).values())
    return engine_cycles(knobs, shape) / knobs.engines


def engine_cycles(knobs, shape: Shape = Shape()) -> int:
    """T_B of one atom engine (arch "engines"); for arch "dataflow" the slowest stage's cycles."""
    if knobs.arch == "dataflow":
        return atom_cycles(knobs, shape)
    steps = shape.n_hidden // knobs.fit_par
    return (2 * shape.n_layers * steps + (2 * shape.n_layers + 1) * PASS_OVERHEAD + 1
            + 2 * descriptor_steps(knobs, shape) + ENGINE_OVERHEAD)


def record_cycles(n, lanes: int):
    n = np.asarray(n)
    return 1 + np.maximum(1, -(-n // lanes))


def cycles_per_atom(n, knobs, shape: Shape = Shape()) -> float:
    """Steady-state cycles per atom for neighbour counts n (scalar or array: the mean is used)."""
    rec = float(np.mean(record_cycles(n, knobs.lanes)))
    return max(rec, atom_cycles(knobs, shape))


def bottleneck(n, knobs, shape: Shape = Shape()) -> str:
    rec = float(np.mean(record_cycles(n, knobs.lanes)))
    eng = atom_cycles(knobs, shape)
    if rec >= eng:
        return "record stages (raise lanes)"
    if knobs.arch == "dataflow":
        stages = dataflow_stages(knobs, shape)
        slow = [k for k, v in stages.items() if v["cycles"] == eng]
        return f"fitting stage {', '.join(slow)} (raise its folding)"
    return "atom engines (raise fit_par or engines)"


def seconds_per_atom(n, knobs, clock_hz: float = 250e6, shape: Shape = Shape()) -> float:
    return cycles_per_atom(n, knobs, shape) / clock_hz


def shape_of(design) -> Shape:
    return Shape(n_layers=design.n_layers, n_hidden=design.n_hidden, m1=design.cfg.m1)


def latency_cycles(n: int, knobs, shape: Shape = Shape()) -> int:
    """First input beat of an atom to its last output beat, pipeline otherwise empty (approximate:
    stage latencies of the record path plus the engine time)."""
    forward = 1 + 1 + 4 + 1 + 4 + 2  # framer, geometry, radial, env, embedding, accumulator
    backward = 5
    if knobs.arch == "dataflow":
        atom = sum(v["steps"] + 2 + (DATAFLOW_MAC_LATENCY + 3 if v["multipliers"] else 0)
                   for v in dataflow_stages(knobs, shape).values())
    else:
        atom = engine_cycles(knobs, shape)
    return forward + math.ceil(max(n, 1) / knobs.lanes) + atom + backward + math.ceil(max(n, 1) / knobs.lanes)
