"""Analytical cycle model of the pipeline (checked against simulated cycle counts in the tests).

Three parts work on different atoms at the same time, so in steady state an atom costs as many cycles
as the slowest part:

* forward record stages (framer input):  1 header beat + ceil(n / lanes) record beats (1 if n = 0);
* atom engines: T_B cycles per atom each, `engines` of them in round robin -> T_B / engines;
* backward record stage (output): 1 header beat + ceil(n / lanes) record beats (1 if n = 0).

T_B, from the AtomEngine/FittingEngine sequencers (gen/stages/atom_engine.py):

    T_B = 2 * n_layers * (n_hidden / fit_par)     MAC-array steps, forward and backward
        + (2 * n_layers + 1) * PASS_OVERHEAD      fill and drain of each pass (+1 step: energy)
        + 1                                       the energy step
        + 2 * (m1 / desc_par)                     descriptor products and their gradient
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


def engine_cycles(knobs, shape: Shape = Shape()) -> int:
    steps = shape.n_hidden // knobs.fit_par
    return (2 * shape.n_layers * steps + (2 * shape.n_layers + 1) * PASS_OVERHEAD + 1
            + 2 * (shape.m1 // knobs.desc_par) + ENGINE_OVERHEAD)


def record_cycles(n, lanes: int):
    n = np.asarray(n)
    return 1 + np.maximum(1, -(-n // lanes))


def cycles_per_atom(n, knobs, shape: Shape = Shape()) -> float:
    """Steady-state cycles per atom for neighbour counts n (scalar or array: the mean is used)."""
    rec = float(np.mean(record_cycles(n, knobs.lanes)))
    return max(rec, engine_cycles(knobs, shape) / knobs.engines)


def bottleneck(n, knobs, shape: Shape = Shape()) -> str:
    rec = float(np.mean(record_cycles(n, knobs.lanes)))
    eng = engine_cycles(knobs, shape) / knobs.engines
    return "record stages (raise lanes)" if rec >= eng else "atom engines (raise fit_par or engines)"


def seconds_per_atom(n, knobs, clock_hz: float = 250e6, shape: Shape = Shape()) -> float:
    return cycles_per_atom(n, knobs, shape) / clock_hz


def shape_of(design) -> Shape:
    return Shape(n_layers=design.n_layers, n_hidden=design.n_hidden, m1=design.cfg.m1)


def latency_cycles(n: int, knobs, shape: Shape = Shape()) -> int:
    """First input beat of an atom to its last output beat, pipeline otherwise empty (approximate:
    stage latencies of the record path plus the engine time)."""
    forward = 1 + 1 + 4 + 1 + 4 + 2  # framer, geometry, radial, env, embedding, accumulator
    backward = 5
    return forward + math.ceil(max(n, 1) / knobs.lanes) + engine_cycles(knobs, shape) + backward + \
        math.ceil(max(n, 1) / knobs.lanes)
