"""The native host core against the Python path, measured in one run: ASE calculator with the zero
device (everything but the pipeline's arithmetic), per evaluation.  The native core keeps its pairs (searched to
rcut + skin) between evaluations while no atom has moved skin/2: the repeated evaluations reuse them;
measured also with every evaluation searching (atoms moved 0.6 Å each time) and in an MD run.

    taskset -c 0 python benchmarks/host_native.py [--sizes 4096 32768] [--repeat 5] [--json OUT.json]

Structures: rock-salt GeTe (a = 6.0 Å, 0.15 Å RMS displacements), the bundled GeTe model (rcut 7 Å,
~60 neighbours per atom).  For each size and path: seconds per atom of one evaluation (energy, forces,
stress) through host.ase.Calculator(device="zero"), the median of --repeat runs after one warm-up, the
core's own split (neighbours + encode, device, fold), and the ratio Python / native; where the CPU has
AVX-512, the native path again with the portable build of the record kernels (host/native/records.h),
in the same run.  Also the MD-code
path (Evaluator.compute_neighbors: given neighbour list, as LAMMPS gives it).  Pin it to one core
(taskset -c 0) for one-core figures.  Writes JSON (default build/benchmarks/host_native.json).
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import timed_median, write_json  # noqa: E402
from contract import modelfile  # noqa: E402
from contract.paths import EXAMPLE_MODEL  # noqa: E402
from host import native  # noqa: E402
from host.ase import Calculator  # noqa: E402
from host.devices import open_device  # noqa: E402
from host.evaluate import Evaluator  # noqa: E402
from model.neighbors import edges  # noqa: E402


def gete_box(n_atoms: int, seed: int = 0):
    """Rock-salt GeTe (a = 6.0 Å) repeated to at least n_atoms, displaced by 0.15 Å RMS."""
    from ase.build import bulk
    reps = int(np.ceil((n_atoms / 8) ** (1 / 3)))
    atoms = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((reps, reps, reps))
    atoms.rattle(0.15, seed=seed)
    return atoms


def ase_step(atoms, calc):
    atoms.calc = calc
    calc.reset()
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    return calc.last_result


def md_run(atoms, calc, steps: int) -> dict:
    """`steps` of velocity Verlet (2 fs, 300 K) with the zero device (no forces: atoms fly at thermal
    speeds, as fast as in a real run; pairs below r_min allowed): seconds per step per atom (the
    integrator's own Python included), and how often the pairs were searched."""
    import time

    from ase import units
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet
    thermalize_momenta(atoms, 300, rng=np.random.default_rng(1))
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=2 * units.fs)
    lists = []
    dyn.attach(lambda: lists.append(calc.last_result.pair_list), interval=1)
    dyn.run(1)  # its first evaluation searches: not timed
    lists.clear()
    t = time.perf_counter()
    dyn.run(steps)
    dt = time.perf_counter() - t
    return {"steps": steps, "s_per_step_per_atom": dt / steps / len(atoms),
            "searches": lists.count("built"), "reuses": lists.count("reused")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(EXAMPLE_MODEL))
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 32768])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--md-steps", type=int, default=40, help="velocity Verlet steps of the MD case")
    p.add_argument("--json", default=str(REPO / "build" / "benchmarks" / "host_native.json"))
    args = p.parse_args(argv)
    if not native.available():
        sys.exit(f"the native core is not available: {native.why_not()}")
    qm = modelfile.load(args.model)
    cores = sorted(os.sched_getaffinity(0))
    kernels = native.record_kernels()
    print(f"model {Path(args.model).name}, CPU cores available to this process: {cores}; record kernels: {kernels}")
    rows = []
    for n in args.sizes:
        atoms = gete_box(n)
        row = {"atoms": len(atoms)}
        results = {}
        for path, flag in (("python", False), ("native", True)):
            calc = Calculator(model=args.model, device="zero", native=flag)
            ase_step(atoms, calc)  # warm-up: builds, caches, first allocations
            res, t = timed_median(lambda: ase_step(atoms, calc), args.repeat)
            results[path] = res
            row[f"ase_{path}_s_per_atom"] = t / len(atoms)
            row[f"ase_{path}_split_s"] = {k: round(v, 6) for k, v in res.timings.items()}
            calc.close()
        assert (results["python"].forces_int == results["native"].forces_int).all()
        row["ase_ratio_python_over_native"] = row["ase_python_s_per_atom"] / row["ase_native_s_per_atom"]
        row["ase_native_pair_list"] = results["native"].pair_list
        # The native core's other cases: every evaluation searching its pairs afresh (the atoms moved by
        # more than skin/2 each time), and an MD run (its list searched again when needed).
        calc = Calculator(model=args.model, device="zero", native=True)
        sign = [1.0]

        def moved_step():  # every atom 0.6 Å from where the last search saw it, back and forth
            atoms.positions[:, 0] += 0.6 * sign[0]
            sign[0] = -sign[0]
            return ase_step(atoms, calc)
        res, t = timed_median(moved_step, args.repeat)
        assert res.pair_list == "built", res.pair_list
        row["ase_native_search_s_per_atom"] = t / len(atoms)
        calc.close()
        # (without forces atoms meet below r_min, as in lammps_loop.py's zero-device runs: allowed)
        calc = Calculator(model=args.model, device="zero", native=True, allow_below_rmin=True)
        row["ase_md"] = md_run(atoms.copy(), calc, args.md_steps)
        calc.close()
        if kernels == "avx512":  # the portable build of the record kernels, in the same run: same bits
            native.record_kernels(False)
            calc = Calculator(model=args.model, device="zero", native=True)
            ase_step(atoms, calc)
            res, t = timed_median(lambda: ase_step(atoms, calc), args.repeat)
            calc.close()
            native.record_kernels(True)
            assert (res.forces_int == results["native"].forces_int).all()
            row["ase_native_portable_s_per_atom"] = t / len(atoms)
        # The MD-code path: a given full neighbour list of the same structure (no ghosts: periodic
        # images folded into the index, as a one-rank MD code's ghosts would be).
        e = edges(atoms.positions, atoms.cell.array, True, qm.config.rcut)
        types = np.array([qm.config.type_map.index(s) for s in atoms.get_chemical_symbols()])
        # ghosts: one per pair image, placed where it is seen from the centre
        x = np.concatenate([atoms.positions, atoms.positions[e.i] + e.vec])
        nbrs = len(atoms) + np.arange(len(e.i))
        numneigh = np.bincount(e.i, minlength=len(atoms))
        t_all = np.concatenate([types, types[e.j]])
        with open_device("zero", qm) as dev:
            for path, flag in (("python", False), ("native", True)):
                ev = Evaluator(qm, dev, native=flag)
                ev.compute_neighbors(x, t_all, len(atoms), numneigh, nbrs)
                res, t = timed_median(lambda: ev.compute_neighbors(x, t_all, len(atoms), numneigh, nbrs), args.repeat)
                row[f"md_{path}_s_per_atom"] = t / len(atoms)
                row[f"md_{path}_split_s"] = {k: round(v, 6) for k, v in res.timings.items()}
        row["md_ratio_python_over_native"] = row["md_python_s_per_atom"] / row["md_native_s_per_atom"]
        row["records_per_atom"] = len(e.i) / len(atoms)
        rows.append(row)
        print(f"{len(atoms):>7} atoms, {row['records_per_atom']:.1f} records/atom | ASE + zero: python "
              f"{row['ase_python_s_per_atom']:.3g} s/atom, native {row['ase_native_s_per_atom']:.3g} s/atom "
              f"(x{row['ase_ratio_python_over_native']:.0f}) | given list + zero: python "
              f"{row['md_python_s_per_atom']:.3g}, native {row['md_native_s_per_atom']:.3g} s/atom "
              f"(x{row['md_ratio_python_over_native']:.0f})")
        print(f"         native split (s): ASE {row['ase_native_split_s']}, given list {row['md_native_split_s']}")
        md = row["ase_md"]
        print(f"         ASE + zero, native: {row['ase_native_s_per_atom']:.3g} s/atom with its pair list kept "
              f"({row['ase_native_pair_list']}), {row['ase_native_search_s_per_atom']:.3g} searching every time; "
              f"MD (velocity Verlet, {md['steps']} steps): {md['s_per_step_per_atom']:.3g} s/step/atom, "
              f"{md['searches']} search(es), {md['reuses']} reuse(s)")
        if "ase_native_portable_s_per_atom" in row:
            print(f"         ASE + zero, native with the portable record kernels: "
                  f"{row['ase_native_portable_s_per_atom']:.3g} s/atom")
    write_json({"model": args.model, "cores": cores, "repeat": args.repeat, "record_kernels": kernels, "rows": rows},
               args.json)


if __name__ == "__main__":
    main()
