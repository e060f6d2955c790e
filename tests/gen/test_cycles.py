"""Analytical cycle model (gen.cycles) against simulated cycle counts (Amaranth simulator).

Tolerance: the steady-state cycles per atom (spacing of consecutive output headers) must match the
model within 3 %: the model ignores only the few cycles of pipeline fill and hand-off jitter.
"""

from __future__ import annotations

import numpy as np
import pytest

import cases
from contract import wire
from gen import cycles
from gen.ir import Design, Knobs
from gen.pipeline import Pipeline
from model.reference import NeighborRecords
from streams import run_stream
from support import tiny_qm


def dense_atoms(qm, n_atoms, n_records, seed=0):
    rng = np.random.default_rng(seed)
    q = 2.0 ** qm.formats["coord"].frac
    nt = np.tile(np.arange(n_records) % 2, (n_atoms, 1))
    d = np.stack([cases._sphere(rng, n_records, 2.2, qm.config.rcut - 0.2) for _ in range(n_atoms)])
    return NeighborRecords(np.zeros(n_atoms, dtype=np.int64), nt, np.floor(d * q + 0.5).astype(np.int64))


def measured_cycles_per_atom(knobs, rec):
    qm = tiny_qm()
    case = cases.from_records(qm, rec, knobs.lanes)
    dut = Pipeline(Design(qm, knobs))
    beats = [sum(int(w) << (64 * l) for l, w in enumerate(b)) for b in case.beats]
    n_atoms = len(rec)

    def all_headers(out):
        return sum(wire.kind(int(p) & (2 ** 64 - 1)) == wire.HEADER for p in out) >= n_atoms
    out, _, arrivals = run_stream(dut, beats, n_out=10 ** 9, done=all_headers)
    header_cycles = [c for p, c in zip(out, arrivals) if wire.kind(int(p) & (2 ** 64 - 1)) == wire.HEADER]
    gaps = np.diff(header_cycles[1:])  # skip the first atom (pipeline fill)
    return float(np.mean(gaps)), case


@pytest.mark.parametrize("knobs,n_records,bound", [
    (Knobs(lanes=1, fit_par=8, desc_par=4), 40, "engine"),
    (Knobs(lanes=1, fit_par=8, desc_par=4, engines=3), 75, "record"),
])
def test_cycle_model_matches_simulation(knobs, n_records, bound):
    rec = dense_atoms(tiny_qm(), 6, n_records)
    sim, _ = measured_cycles_per_atom(knobs, rec)
    model = cycles.cycles_per_atom(np.full(6, n_records), knobs)
    assert bound in cycles.bottleneck(n_records, knobs)
    assert abs(sim - model) <= 0.03 * model, (sim, model)


# ---- arch "dataflow": the slowest stage of the fitting chain --------------------------------------------
DATAFLOW_CASES = {
    "fwd-bound": (Knobs.dataflow(pe=(4, 2, 8), simd=(16, 32, 8), desc_par=4, energy_simd=16), 40, "fwd0"),
    "padded-lanes": (Knobs.dataflow(pe=(5, 16, 16), simd=(40, 16, 16), desc_par=4, energy_simd=16), 40, "fwd0"),
    "energy-bound": (Knobs.dataflow(pe=(8, 8, 8), simd=(16, 16, 16), desc_par=4, energy_simd=1), 40, "energy"),
    "record-bound": (Knobs.dataflow(pe=(16, 16, 16), simd=(16, 16, 16), desc_par=4, energy_simd=16), 75, "record"),
    # GR's rows folded: 32 column blocks x 4 row blocks, the descriptor and gradient stages the slowest
    "descriptor-rows": (Knobs.dataflow(pe=(8, 8, 8), simd=(16, 16, 16), desc_par=1, desc_rows=1, energy_simd=16),
                        40, "gradient"),
}


QUICK = ("fwd-bound", "descriptor-rows")


@pytest.mark.parametrize("case", [pytest.param(c, marks=[] if c in QUICK else [pytest.mark.slow])
                                  for c in DATAFLOW_CASES])
def test_dataflow_cycle_model_matches_simulation(case):
    knobs, n_records, bound = DATAFLOW_CASES[case]
    rec = dense_atoms(tiny_qm(), 6, n_records)
    sim, _ = measured_cycles_per_atom(knobs, rec)
    model = cycles.cycles_per_atom(np.full(6, n_records), knobs)
    assert bound in cycles.bottleneck(n_records, knobs)
    assert abs(sim - model) <= 0.03 * model, (sim, model)
