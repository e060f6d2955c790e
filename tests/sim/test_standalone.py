"""The generated Verilog in the standalone Verilator harness (sim/standalone.py), integer for integer
against the NumPy reference: the same stimulus as the cocotb benches, at full Verilator speed, plus
a real GeTe stream whose cycle count is checked against the analytical model.

The long regression: `pytest tests/sim/test_standalone.py -m slow --records 1000000` streams that many
real GeTe neighbour records and writes its figures to build/benchmarks/long_verilator.json.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import cases
from contract import wire
from gen import cycles
from gen.ir import Knobs
from sim import runner, standalone
from support import GETE_216, REPO, require_shared, seed_rate_dataflow, tiny_qm

pytestmark = pytest.mark.verilator

KNOBS = Knobs(lanes=1, fit_par=2, desc_par=4)  # the cocotb benches' design: one Verilog file for both
#: arch "dataflow" at the seed's 70 cycles per atom as `--cycles-per-atom 70` folds the bundled model's
#: shape (the test model has its shape), so that the long regression runs the design that command builds
DATAFLOW = seed_rate_dataflow()
MODES = {"plain": (0.0, 0.0), "idle": (0.3, 0.0), "backpressure": (0.0, 0.4)}


DESIGNS = {"engines": KNOBS, "dataflow": DATAFLOW}


@pytest.fixture(scope="module", params=list(DESIGNS))
def design(request):
    """(knobs, harness) of each architecture: every test below runs on both."""
    try:
        runner.check_simulator("verilator")
    except runner.SimulatorMissing as e:
        pytest.skip(str(e))
    knobs = DESIGNS[request.param]
    return knobs, standalone.build_harness(runner.pipeline_verilog(tiny_qm(), knobs))


@pytest.fixture
def harness(design):
    return design[1]


def run_and_compare(harness, case: cases.Case, idle: float, backpressure: float, seed: int) -> dict:
    out, stats = standalone.run_harness(harness, case.beats, KNOBS.lanes, idle, backpressure, seed)
    energy, dEdr, flags, tags = wire.decode_results(out, case.n_atoms, case.max_records)
    exp = case.expected
    assert stats["error"] is None and stats["atoms_out"] == case.n_atoms, stats
    stats["mismatches"] = {"tags": int((tags != wire.tag_of(np.arange(case.n_atoms))).sum()),
                           "flags": int((flags != exp.flags).sum()), "energy": int((energy != exp.energy).sum()),
                           "records": int((dEdr != exp.dEdr[:, :dEdr.shape[1]]).any(-1).sum())}
    assert not any(stats["mismatches"].values()), stats["mismatches"]
    return stats


@pytest.mark.parametrize("mode", list(MODES))
def test_mixed_stream_seed0(harness, mode):
    qm = tiny_qm()
    case = cases.concat([cases.random_atoms(qm, 1, 0, n_atoms=2), cases.edge_atoms(qm, 1, 0),
                         cases.stream_errors(qm, 1, 0)])
    run_and_compare(harness, case, *MODES[mode], seed=0)


@pytest.mark.parametrize("seed", [3, 4, 5, 6], ids=lambda s: f"seed{s}")
def test_random_atoms(harness, seed):
    run_and_compare(harness, cases.random_atoms(tiny_qm(), 1, seed, n_atoms=8), 0.2, 0.3, seed)


def test_all_modes_same_output(harness):
    """No stalls, idle insertion and backpressure give the same words, not just the same decode."""
    case = cases.random_atoms(tiny_qm(), 1, 7, n_atoms=5)
    outs = [standalone.run_harness(harness, case.beats, 1, i, b, seed=7)[0] for i, b in MODES.values()]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_stall_is_reported(harness):
    """An atom whose records never come: the harness stops with a stall error instead of hanging."""
    case = cases.random_atoms(tiny_qm(), 1, 8, n_atoms=1)
    with pytest.raises(standalone.HarnessError, match="stall"):
        standalone.run_harness(harness, case.beats[:-3], 1, stall_cycles=5000)


def gete_run(design, records: int, idle=0.05, backpressure=0.1, seed=11):
    require_shared(GETE_216)
    knobs, harness = design
    case = cases.gete_stream(tiny_qm(), knobs.lanes, records)
    stats = run_and_compare(harness, case, idle, backpressure, seed)
    counts = wire.decode_input_header(case.beats[wire.kind(case.beats[:, 0]) == wire.HEADER, 0])[1]
    model = cycles.cycles_per_atom(counts, knobs)
    return case, stats, model


@pytest.mark.shared_data
def test_gete_stream_matches_cycle_model(design):
    """20,000 real GeTe records: bit-exact, and cycles per atom within 2 % of gen.cycles, once the
    pipeline's fill (gen.cycles.latency_cycles less one atom's steady-state cycles: ~1 atom's worth for
    the engines, ~10 for the dataflow chain's nine stages) is taken out of the ~420 atoms' total."""
    case, stats, model = gete_run(design, 20_000)
    counts = wire.decode_input_header(case.beats[wire.kind(case.beats[:, 0]) == wire.HEADER, 0])[1]
    fill = cycles.latency_cycles(int(round(float(counts.mean()))), design[0]) - model
    measured = (stats["cycles"] - fill) / case.n_atoms
    assert abs(measured - model) / model < 0.02, (measured, model)


@pytest.mark.slow
@pytest.mark.shared_data
def test_long_regression(request, design):
    """--records N (default 1e6) real GeTe records, zero mismatches; figures to JSON (one per design)."""
    target = request.config.getoption("--records") or 1_000_000
    case, stats, model = gete_run(design, target)
    records = int((wire.kind(case.beats) == wire.RECORD).sum())
    figures = {"records": records, "atoms": case.n_atoms, "mismatches": sum(stats["mismatches"].values()), "cycles": stats["cycles"],
               "sim_seconds": stats["wall_seconds"], "cycles_per_second": stats["cycles"] / stats["wall_seconds"],
               "records_per_second": records / stats["wall_seconds"],
               "cycles_per_atom": stats["cycles"] / case.n_atoms, "model_cycles_per_atom": model,
               "knobs": design[0].__dict__, "idle": 0.05, "backpressure": 0.1}
    out = REPO / "build" / "benchmarks" / ("long_verilator.json" if design[0].arch == "engines"
                                           else f"long_verilator_{design[0].arch}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))
