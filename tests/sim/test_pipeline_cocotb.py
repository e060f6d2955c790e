"""The generated Verilog under cocotb on Icarus and Verilator, checked integer for integer against the
NumPy reference (sim/bench/pipeline_bench.py does the driving and the comparison).

Every stream runs without stalls, with random idle cycles and with random backpressure.  The long
mode (`pytest tests/sim -m slow --records 1000000`) streams real GeTe neighbour records through
Verilator and reports records, seconds and mismatches.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import cases
from gen.ir import Knobs
from sim import runner
from support import GETE_216, REPO, require_shared, tiny_qm

KNOBS = Knobs(lanes=1, fit_par=2, desc_par=4)
MODES = {"plain": (0.0, 0.0), "idle": (0.3, 0.0), "backpressure": (0.0, 0.4)}
SIMS = [pytest.param("icarus", marks=pytest.mark.icarus), pytest.param("verilator", marks=pytest.mark.verilator)]


@pytest.fixture(scope="session")
def verilog():
    return runner.pipeline_verilog(tiny_qm(), KNOBS)


def run_case(sim, verilog, case: cases.Case, name: str, idle: float, backpressure: float, seed: int) -> dict:
    try:
        runner.check_simulator(sim)
    except runner.SimulatorMissing as e:
        pytest.skip(str(e))
    path = runner.write_case(verilog.parent / "cases" / f"{name}.npz", case.beats, case.expected, case.n_atoms,
                             case.max_records, idle=idle, backpressure=backpressure, seed=seed)
    result = runner.run_bench(sim, verilog, path, name)
    assert result["mismatches"] == 0, result
    assert not result["bench_failed"], result
    return result


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("sim", SIMS)
def test_mixed_stream_seed0(sim, mode, verilog):
    """Random atoms, edge records (no neighbours, exactly sel, r at rcut and r_min, extreme words,
    type overflow, bad types) and stream errors with recovery, in one stream."""
    qm = tiny_qm()
    case = cases.concat([cases.random_atoms(qm, 1, 0, n_atoms=2), cases.edge_atoms(qm, 1, 0),
                         cases.stream_errors(qm, 1, 0)])
    run_case(sim, verilog, case, f"mixed-seed0-{mode}", *MODES[mode], seed=0)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("seed", [1, 2])
def test_random_atoms(sim, seed, verilog):
    case = cases.random_atoms(tiny_qm(), 1, seed, n_atoms=4)
    run_case(sim, verilog, case, f"random-seed{seed}", 0.2, 0.3, seed)


@pytest.mark.shared_data
@pytest.mark.parametrize("sim", SIMS)
def test_gete_frame(sim, verilog):
    require_shared(GETE_216)
    case = cases.gete_atoms(tiny_qm(), 1, n_atoms=4)
    run_case(sim, verilog, case, "gete-frame0", 0.1, 0.2, 4)


@pytest.mark.slow
@pytest.mark.verilator
def test_long_verilator_regression(request, verilog):
    """--records N real GeTe neighbour records through Verilator, zero mismatches; figures to JSON."""
    target = request.config.getoption("--records") or 20000
    require_shared(GETE_216)
    from model.assembly import neighbor_blocks, quantize_records
    from model.data import load_deepmd
    from model.reference import NeighborRecords
    qm = tiny_qm()
    parts, total, frame = [], 0, 0
    systems = [load_deepmd(p).remap_types(qm.config.type_map)
               for p in sorted((GETE_216 / "s3-quench-300K").iterdir()) + sorted((GETE_216 / "s2-melt-1000K").iterdir())]
    while total < target:
        s = systems[frame % len(systems)]
        f = (frame // len(systems)) % s.nframes
        rec = quantize_records(qm, neighbor_blocks(qm, s.coords[f], s.cells[f], True, s.types))
        parts.append(rec)
        total += int((rec.nbr_type >= 0).sum())
        frame += 1
    m = max(r.nbr_type.shape[1] for r in parts)
    pad = lambda a, v: np.concatenate([a, np.full(a.shape[:1] + (m - a.shape[1],) + a.shape[2:], v)], axis=1)
    rec = NeighborRecords(np.concatenate([r.center_type for r in parts]),
                          np.concatenate([pad(r.nbr_type, -1) for r in parts]),
                          np.concatenate([pad(r.nbr_d, 0) for r in parts]))
    case = cases.from_records(qm, rec, KNOBS.lanes)
    result = run_case("verilator", verilog, case, f"long-{total}", 0.05, 0.1, 11)
    out = REPO / "build" / "benchmarks" / "long_verilator.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"records": result["records_in"], "atoms": result["atoms"],
                               "seconds": result["wall_seconds"], "cycles": result["cycles"],
                               "mismatches": result["mismatches"], "knobs": KNOBS.__dict__}, indent=1))
    print(f"long run: {result['records_in']} records, {result['atoms']} atoms, {result['cycles']} cycles, "
          f"{result['wall_seconds']:.0f} s, {result['mismatches']} mismatches")
