#!/usr/bin/env python3
"""The seed's scale on this machine: 1,728,000-atom crystalline GeTe (60^3 rock-salt cells, 37.2 nm a side,
the seed's 37 x 37 x 37 nm^3 box) through LAMMPS with the quantized model on the cpu device, NVT steps of
the melt-quench-anneal protocol's first stage (heating from 300 K).

    python examples/GeTe/seed_scale.py                 # 1,728,000 atoms, 10 steps (about 15 min on 2 cores)
    python examples/GeTe/seed_scale.py --cells 20 --steps 20 -o build/seed-scale-small
    python examples/GeTe/seed_scale.py --watts 240 --power-cores 64   # another stated power figure

Reports, and writes to --out/seed_scale.json:

* s/step/atom of the timed `run` (LAMMPS's loop time; the setup `run 0` and its first evaluation left out);
* peak RSS of the LAMMPS process (its VmHWM, read at every line it prints, and getrusage of the waited-for
  children: the larger);
* eta_t and eta_p as the seed's Table II defines them: eta_t = wall time per MD step per atom (s), eta_p =
  eta_t x the power drawn (J per step per atom).  The power is measured where RAPL is readable
  (/sys/class/powercap/intel-rapl:0/energy_uj over the timed run) and is otherwise a *stated* figure:
  --watts for --power-cores cores, scaled to the cores this run used (the default is AMD's 280 W TDP
  of the 64-core EPYC 7763, a part of this machine's CPU family (Zen 3), per core; the cloud does not name
  the SKU).
  The JSON says which.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from contract.paths import EXAMPLE_MODEL  # noqa: E402
from science.melt import LATTICE, crystal_lines, is_thermo, run_lammps  # noqa: E402

RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


def lammps_input(cells: int, model: Path, threads: int, steps: int, seed: int, skin: float) -> str:
    return "\n".join(crystal_lines(cells) + [
        f"neighbor {skin} bin",
        f"pair_style nvnmd {model} device cpu" + (f" threads {threads}" if threads else ""),
        "pair_coeff * * Ge Te",
        "timestep 0.002",
        f"velocity all create 300.0 {seed} dist gaussian mom yes rot yes loop geom",
        "thermo_style custom step temp pe etotal press", "thermo 1", "thermo_modify flush yes",
        # the protocol's first stage: NVT heating of the crystal from 300 K toward the melt (2000 K)
        "fix nvt all nvt temp 300.0 2000.0 0.2",
        'print "STAGE setup"', "run 0",
        'print "STAGE timed"', f"run {steps}",
    ]) + "\n"


def vm_hwm_kb(pid: int) -> int:
    """The process's peak resident set so far (VmHWM, kB), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def rapl_joules() -> float | None:
    try:
        return int(RAPL.read_text()) * 1e-6
    except (OSError, ValueError):
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=60, help="rock-salt cells per side, 8 atoms each (60: 1,728,000)")
    p.add_argument("--steps", type=int, default=10, help="timed MD steps (2 fs)")
    p.add_argument("--threads", type=int, default=0, help="cpu device threads (0: every core allowed)")
    p.add_argument("--skin", type=float, default=2.0, help="LAMMPS neighbour skin, Å (LAMMPS's metal default 2.0)")
    p.add_argument("--seed", type=int, default=20261207)
    p.add_argument("--model", default=str(EXAMPLE_MODEL))
    p.add_argument("--watts", type=float, default=280.0, help="stated power of --power-cores cores, W")
    p.add_argument("--power-cores", type=int, default=64)
    p.add_argument("--timeout", type=float, default=7200.0, help="stop LAMMPS after this many seconds")
    p.add_argument("-o", "--out", default=str(REPO / "build" / "seed-scale"))
    args = p.parse_args(argv)
    if args.cells < 2 or args.steps < 1 or args.threads < 0 or args.skin <= 0:
        p.error("need --cells >= 2, --steps >= 1, --threads >= 0, --skin > 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atoms = 8 * args.cells ** 3
    threads = args.threads or len(os.sched_getaffinity(0))
    print(f"seed scale: {atoms:,} GeTe atoms ({args.cells}^3 rock-salt cells, {args.cells * LATTICE / 10:.1f} nm a "
          f"side), {args.steps} NVT steps through LAMMPS, device cpu, {threads} thread(s); in {out}", flush=True)
    t0 = time.monotonic()
    seen = {"hwm_kb": 0, "joules": None}

    def on_line(s: str, pid: int):
        # LAMMPS's peak resident set, read at every line it prints; the energy counter as timing starts
        seen["hwm_kb"] = max(seen["hwm_kb"], vm_hwm_kb(pid))
        if s == "STAGE timed":
            seen["joules"] = rapl_joules()
            print(f"  [{time.monotonic() - t0:6.0f} s] set up; timing {args.steps} steps", flush=True)
        elif is_thermo(s):
            print(f"  [{time.monotonic() - t0:6.0f} s] step {s}", flush=True)

    text = lammps_input(args.cells, Path(args.model).resolve(), args.threads, args.steps, args.seed, args.skin)
    try:
        loops = run_lammps(text, out, "seed-scale", timeout=args.timeout, on_line=on_line)
    except RuntimeError as e:
        sys.exit(str(e))
    if len(loops) < 2:
        sys.exit(f"LAMMPS ended without the timed run; see {out / 'seed-scale.out'}")
    end_joules, joules = rapl_joules(), seen["joules"]
    wall = time.monotonic() - t0
    loop_s, _, steps, _ = loops[-1]
    eta_t = loop_s / steps / atoms
    # LAMMPS's own peak (read while it ran, at every output line), or the largest child's as the kernel
    # kept it (getrusage: KiB), whichever is larger
    peak_rss_gb = max(seen["hwm_kb"], resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024 / 1e9
    if joules is not None and end_joules is not None and end_joules > joules:
        watts, power = (end_joules - joules) / loop_s, "measured (RAPL package energy over the timed run)"
    else:
        watts = args.watts * threads / args.power_cores
        power = (f"stated, not measured (no readable RAPL): {args.watts:g} W for {args.power_cores} cores, "
                 f"x {threads} core(s) used = {watts:.2f} W")
    result = {"atoms": atoms, "cells": args.cells, "box_nm": args.cells * LATTICE / 10, "steps": steps,
              "threads": threads, "skin_A": args.skin, "loop_s": loop_s, "wall_s": wall,
              "s_per_step_atom": eta_t, "eta_t_s_per_step_atom": eta_t, "power_W": watts, "power": power,
              "eta_p_J_per_step_atom": eta_t * watts, "peak_rss_GB": peak_rss_gb, "model": args.model,
              "lammps_log": str(out / "seed-scale.log")}
    (out / "seed_scale.json").write_text(json.dumps(result, indent=1))
    print(f"\n{atoms:,} atoms, {steps} steps: {eta_t:.3g} s/step/atom (eta_t), eta_p {eta_t * watts:.3g} J/step/atom "
          f"at {watts:.2f} W ({power}); peak RSS {peak_rss_gb:.2f} GB; wall {wall:.0f} s\n{out / 'seed_scale.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
