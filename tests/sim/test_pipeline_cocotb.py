"""The generated Verilog under cocotb on Icarus and Verilator, checked integer for integer against the
NumPy reference (sim/bench/pipeline_bench.py does the driving and the comparison).

Every stream runs without stalls, with random idle cycles and with random backpressure.  Icarus
simulates this design at about 100 cycles/s, so the default run gives it one case per kind of stream
(edges and errors without stalls; random atoms with idle and backpressure; a GeTe frame) and leaves
the rest to `-m slow`; Verilator runs everything.  The long regression (`--records N`) uses the
standalone Verilator harness: tests/sim/test_standalone.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import cases
from gen.ir import Knobs
from sim import runner
from support import GETE_216, REPO, require_shared, seed_rate_dataflow, tiny_qm

KNOBS = Knobs(lanes=1, fit_par=2, desc_par=4)
#: the layer-pipelined fitting net (arch "dataflow") as `--cycles-per-atom 70` folds this model's shape
#: (13 x 19 lanes: some idle in each last block; GR's rows 2 at a time); tests/sim/test_standalone.py
#: runs the same Verilog
DATAFLOW = seed_rate_dataflow()
MODES = {"plain": (0.0, 0.0), "idle": (0.3, 0.0), "backpressure": (0.0, 0.4)}
SIMS = [pytest.param("icarus", marks=pytest.mark.icarus), pytest.param("verilator", marks=pytest.mark.verilator)]


def sims(icarus_slow: bool):
    """Both simulators; Icarus only under -m slow when `icarus_slow` (it runs ~100 cycles/s here)."""
    marks = [pytest.mark.icarus] + ([pytest.mark.slow] if icarus_slow else [])
    return [pytest.param("icarus", marks=marks), pytest.param("verilator", marks=pytest.mark.verilator)]


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


@pytest.mark.parametrize("sim,mode", [pytest.param(*p.values, mode, marks=p.marks)
                                      for mode in MODES for p in sims(icarus_slow=mode != "plain")])
def test_mixed_stream_seed0(sim, mode, verilog):
    """Random atoms, edge records (no neighbours, exactly sel, r at rcut and r_min, extreme words,
    type overflow, bad types) and stream errors with recovery, in one stream."""
    qm = tiny_qm()
    case = cases.concat([cases.random_atoms(qm, 1, 0, n_atoms=2), cases.edge_atoms(qm, 1, 0),
                         cases.stream_errors(qm, 1, 0)])
    run_case(sim, verilog, case, f"mixed-seed0-{mode}", *MODES[mode], seed=0)


@pytest.mark.parametrize("sim,seed", [pytest.param(*p.values, seed, marks=p.marks, id=f"{p.values[0]}-seed{seed}")
                                      for seed in (1, 2) for p in sims(icarus_slow=seed != 1)])
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
def test_imported_deepmd_model_verilator():
    """A quantized DeePMD-kit import (options env_norm, pad_slots, fit_activation tanh): the Verilog under
    cocotb on Verilator == the reference (random atoms, edge records, stream errors; idle, backpressure).
    Slow: its own Verilog and Verilator build (3.7 min on 2 busy cores); the Amaranth simulation of the
    same model is in the default run (tests/gen/test_pipeline.py)."""
    from deepmd_graph import imported_qm
    qm, _ = imported_qm()
    verilog = runner.pipeline_verilog(qm, Knobs(lanes=1, fit_par=4, desc_par=2))
    case = cases.concat([cases.random_atoms(qm, 1, 5, n_atoms=3), cases.edge_atoms(qm, 1, 5),
                         cases.stream_errors(qm, 1, 5)])
    run_case("verilator", verilog, case, "imported-deepmd-mixed", 0.2, 0.3, seed=5)


@pytest.mark.parametrize("sim", [pytest.param("icarus", marks=pytest.mark.icarus),
                                 pytest.param("verilator", marks=[pytest.mark.verilator, pytest.mark.slow])])
def test_banded_descriptor_model(sim):
    """NVNMD's banded descriptor (desc_band, with env_norm and pad_slots): the Verilog == the reference on
    two random atoms (Icarus: 36 s here; Verilator: -m slow, its own build)."""
    import copy
    import dataclasses
    from contract import modelfile
    from deepmd_graph import imported_qm
    base = imported_qm("tanh4")[0]
    qm = dataclasses.replace(copy.deepcopy(base), config=dataclasses.replace(base.config, desc_band=True))
    qm.hash = ""
    qm.hash = modelfile.content_hash(qm)
    verilog = runner.pipeline_verilog(qm, Knobs(lanes=1, fit_par=4, desc_par=2))
    run_case(sim, verilog, cases.random_atoms(qm, 1, 6, n_atoms=2), "banded-random", 0.1, 0.2, seed=6)


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.verilator
def test_group_model_import_on_gete_atoms_verilator():
    """The seed group's GeTe model, imported and quantized (calibration: two AIMD systems), on atoms of a
    216-atom AIMD frame: the Verilog == the reference.  Slow: its G ROMs hold 7,274 segments x 32 channels
    per neighbour type (the normalised s reaches 7.3); 40 min here (2 busy cores), nearly all of it the
    Verilator build."""
    from model.data import load_systems
    from model.deepmd import import_graph
    from model.quantize import quantize
    pb = require_shared(GETE_216.parents[1] / "nvnmd-models" / "deepmd-GeTe-float.pb")
    require_shared(GETE_216)
    model, _ = import_graph(pb)
    qm = quantize(model, load_systems([GETE_216 / "s3-quench-300K/temp-500K", GETE_216 / "s2-melt-1000K/temp-1200K"]),
                  nframes=4)
    verilog = runner.pipeline_verilog(qm, Knobs(lanes=1, fit_par=8, desc_par=8))
    run_case("verilator", verilog, cases.gete_atoms(qm, 1, n_atoms=3), "group-import-gete", 0.1, 0.2, 6)


# ---- arch "dataflow" (gen/stages/dataflow.py): the same stream, the same bench -------------------------
@pytest.fixture(scope="session")
def verilog_dataflow():
    return runner.pipeline_verilog(tiny_qm(), DATAFLOW)


@pytest.mark.parametrize("sim,mode", [pytest.param(*p.values, mode, marks=p.marks)
                                      for mode in MODES for p in sims(icarus_slow=True)])
def test_dataflow_mixed_stream_seed0(sim, mode, verilog_dataflow):
    """The mixed stream of test_mixed_stream_seed0 through the dataflow design.  Icarus only under
    -m slow: its plain case took 36 min here (load 7 on 2 cores)."""
    qm = tiny_qm()
    case = cases.concat([cases.random_atoms(qm, 1, 0, n_atoms=2), cases.edge_atoms(qm, 1, 0),
                         cases.stream_errors(qm, 1, 0)])
    run_case(sim, verilog_dataflow, case, f"dataflow-mixed-seed0-{mode}", *MODES[mode], seed=0)


@pytest.mark.parametrize("sim,seed", [pytest.param(*p.values, seed, marks=p.marks, id=f"{p.values[0]}-seed{seed}")
                                      for seed in (1, 2) for p in sims(icarus_slow=True)])
def test_dataflow_random_atoms(sim, seed, verilog_dataflow):
    case = cases.random_atoms(tiny_qm(), 1, seed, n_atoms=6)
    run_case(sim, verilog_dataflow, case, f"dataflow-random-seed{seed}", 0.2, 0.3, seed)
