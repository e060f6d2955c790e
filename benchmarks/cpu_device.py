"""The cpu device (host/native/cpu.cpp) against the NumPy reference device and the float PyTorch model,
per evaluation, in one run; then LAMMPS s/step/atom with `device cpu` on one core.

    python benchmarks/cpu_device.py [--sizes 4096 32768] [--threads 1 2] [--repeat 3] [--no-lammps]
                                    [--lammps-repeat 3] [--json OUT.json]

Structures: rock-salt GeTe (a = 6.0 Å, 0.15 Å RMS displacements, benchmarks/host_native.py's boxes), the
bundled GeTe model (~55 neighbours per atom).  For each size, seconds per atom of one evaluation (energy,
forces, virial), the median of --repeat runs after a warm-up:

* cpu, T threads: host.evaluate.Evaluator with the native core and device cpu (threads=T);
* reference: the same Evaluator with the reference device (model.reference.process_beats, NumPy; one
  repeat at sizes above 8192: it takes seconds);
* float torch, T threads: model.network.evaluate on the float model the quantized one came from (the
  neighbour list given, as benchmarks/reference_throughput.py does), torch.set_num_threads(T).

One-thread figures run with this process pinned to one core (os.sched_setaffinity: the first core it may
use), T > 1 on T cores; ratios are taken within this run.  Then, unless --no-lammps, benchmarks/lammps_loop.py
measures 4,096-atom GeTe through LAMMPS on one core (`--cpus 0`): pair_style zero, device cpu (native, one
thread) and device reference (service), s/step/atom from LAMMPS's loop time, --lammps-repeat runs of
each (interleaved; the fastest stands for the case, every run is kept).  Writes JSON (default
build/benchmarks/cpu_device.json; the LAMMPS figures also in build/benchmarks/lammps_cpu.json).
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import float_evaluation, timed_median, write_json  # noqa: E402
from host_native import gete_box  # noqa: E402
from contract import modelfile  # noqa: E402
from contract.paths import EXAMPLE_MODEL  # noqa: E402
from host import native  # noqa: E402
from host.devices import open_device  # noqa: E402
from host.evaluate import Evaluator  # noqa: E402


def pinned(cores: list[int]):
    """Run on these cores from now on (the caller restores)."""
    os.sched_setaffinity(0, cores)


def float_case(qm, atoms, types, threads: int, repeat: int):
    import torch

    from model.assembly import neighbor_blocks
    torch.set_num_threads(threads)
    nb = neighbor_blocks(qm, atoms.positions, atoms.cell.array, True, types)
    run = float_evaluation(qm, nb, types)
    run()
    return timed_median(run, repeat)[1] / len(atoms)


def device_case(qm, atoms, types, spec: str, repeat: int, **options):
    with open_device(spec, qm, **options) as dev:
        ev = Evaluator(qm, dev, native=True)
        run = lambda: ev.compute(atoms.positions, atoms.cell.array, atoms.pbc, types)  # noqa: E731
        first = run()
        res, t = timed_median(run, repeat)
        assert res.energy_int == first.energy_int
        return t / len(atoms), res, dev.describe()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(EXAMPLE_MODEL))
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 32768])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-lammps", action="store_true", help="skip the LAMMPS figure")
    p.add_argument("--lammps-steps", type=int, default=50, help="timed steps of device cpu through LAMMPS")
    p.add_argument("--lammps-repeat", type=int, default=3,
                   help="LAMMPS runs per case, interleaved: the fastest stands for the case (default 3)")
    p.add_argument("--json", default=str(REPO / "build" / "benchmarks" / "cpu_device.json"))
    args = p.parse_args(argv)
    if not native.available():
        sys.exit(f"the native core is not available: {native.why_not()}")
    qm = modelfile.load(args.model)
    cores = sorted(os.sched_getaffinity(0))
    print(f"model {Path(args.model).name}; cores this process may use: {cores}; load average {os.getloadavg()}")
    result = {"benchmark": "cpu_device", "model": args.model, "cores": cores, "repeat": args.repeat,
              "load_average_start": os.getloadavg(), "rows": []}
    for n in args.sizes:
        atoms = gete_box(n)
        types = np.array([qm.config.type_map.index(s) for s in atoms.get_chemical_symbols()])
        row = {"atoms": len(atoms)}
        print(f"\n{len(atoms)} atoms")
        pinned(cores[:1])
        ref_repeat = args.repeat if len(atoms) <= 8192 else 1
        t, ref, _ = device_case(qm, atoms, types, "reference", ref_repeat)
        row["reference_s_per_atom"] = t
        print(f"  reference (1 core)          {t:.3e} s/atom")
        for threads in args.threads:
            if threads > len(cores):
                continue
            pinned(cores[:threads])
            t, res, describe = device_case(qm, atoms, types, "cpu", args.repeat, threads=threads)
            assert res.energy_int == ref.energy_int and (res.forces_int == ref.forces_int).all(), "cpu != reference"
            row[f"cpu_{threads}_threads_s_per_atom"] = t
            row[f"cpu_{threads}_threads_timings_s"] = res.timings
            print(f"  cpu, {threads} thread(s)           {t:.3e} s/atom  ({describe}; split "
                  + ", ".join(f"{k} {v:.3f} s" for k, v in res.timings.items()) + ")")
            tf = float_case(qm, atoms, types, threads, args.repeat)
            row[f"float_torch_{threads}_threads_s_per_atom"] = tf
            print(f"  float torch, {threads} thread(s)   {tf:.3e} s/atom")
        pinned(cores)
        for threads in args.threads:
            if f"cpu_{threads}_threads_s_per_atom" in row:
                row[f"reference_over_cpu_{threads}_threads"] = row["reference_s_per_atom"] / row[f"cpu_{threads}_threads_s_per_atom"]
                row[f"float_over_cpu_{threads}_threads"] = (row[f"float_torch_{threads}_threads_s_per_atom"]
                                                            / row[f"cpu_{threads}_threads_s_per_atom"])
        if "cpu_1_threads_s_per_atom" in row and "cpu_2_threads_s_per_atom" in row:
            row["cpu_speedup_2_threads"] = row["cpu_1_threads_s_per_atom"] / row["cpu_2_threads_s_per_atom"]
        print("  ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if "_over_" in k or "speedup" in k))
        result["rows"].append(row)
    if not args.no_lammps:
        out = REPO / "build" / "benchmarks" / "lammps_cpu.json"
        cmd = [sys.executable, str(REPO / "benchmarks" / "lammps_loop.py"), "--sizes", "8", "--cpus", str(cores[0]),
               "--cases", "pair_zero", "nvnmd_cpu", "nvnmd_reference", "--steps-pair-zero", "500",
               "--steps-cpu", str(args.lammps_steps), "--steps-reference", "5", "--repeat", str(args.lammps_repeat),
               "--json", str(out)]
        print("\n" + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        lam = json.loads(out.read_text())
        for natoms, size in lam["sizes"].items():
            figs = {c: f["s_per_step_per_atom"] for c, f in size["cases"].items()}
            runs = {c: f["repeats_s_per_step_per_atom"] for c, f in size["cases"].items()}
            result["lammps"] = {"atoms": int(natoms), "s_per_step_per_atom": figs, "every_run": runs,
                                "cpus": lam["cpus"], "json": str(out)}
            if "nvnmd_cpu" in figs and "nvnmd_reference" in figs:
                result["lammps"]["reference_over_cpu"] = figs["nvnmd_reference"] / figs["nvnmd_cpu"]
            print(f"\nLAMMPS, {natoms} atoms, one core (the fastest of {args.lammps_repeat} runs; every run in the "
                  f"JSON): " + ", ".join(f"{c} {v:.3e}" for c, v in figs.items()) + " s/step/atom")
    result["load_average_end"] = os.getloadavg()
    write_json(result, args.json)


if __name__ == "__main__":
    main()
