"""Peak memory of a whole-system evaluation through the reference device, per atom, at the seed's size.

    python benchmarks/host_memory.py [--sizes 216000 1728000] [--chunk 4096] [--json OUT.json]

Each size runs in a fresh subprocess (so ru_maxrss is its own): build a rock-salt GeTe box (60^3 cells
of 8 atoms = 1,728,000 atoms, the seed's 1.7M), then one energy + forces + virial evaluation with
host.evaluate.Evaluator and the reference device.  Reported: RSS after building the structure
(baseline), peak RSS, and (peak - baseline) / atom.  The host holds per-atom arrays (positions,
forces, per-atom energies, the cell list) plus `depth` chunks; if memory were not bounded by the
chunk, the pair list alone (~48 pairs/atom x ~100 B) would add ~5 KB/atom.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import write_json  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one(n_atoms: int, chunk: int) -> dict:
    import numpy as np
    from ase.build import bulk

    from host.devices import open_device
    from host.evaluate import Evaluator
    from contract import modelfile
    from model.assembly import map_types
    from contract.paths import EXAMPLE_MODEL
    qm = modelfile.load(EXAMPLE_MODEL)
    reps = int(np.ceil((n_atoms / 8) ** (1 / 3)))
    atoms = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((reps, reps, reps))
    atoms.rattle(0.15, seed=0)
    types = map_types(atoms.get_chemical_symbols(), qm.config.type_map)
    pos, cell = atoms.positions.copy(), atoms.cell.array.copy()
    del atoms
    base = rss_mb()
    t = time.perf_counter()
    with open_device("reference", qm) as dev:
        r = Evaluator(qm, dev, chunk_atoms=chunk, progress=sys.stderr.isatty()).compute(pos, cell, True, types)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = len(types)
    return {"atoms": n, "chunk_atoms": chunk, "baseline_rss_mb": base, "peak_rss_mb": peak,
            "extra_bytes_per_atom": (peak - base) * 2**20 / n, "peak_bytes_per_atom": peak * 2**20 / n,
            "seconds": seconds, "s_per_atom": seconds / n, "energy_eV": r.energy, "timings": r.timings}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[216000, 1728000])
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--json", default=str(REPO / "build" / "benchmarks" / "host_memory.json"))
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.chunk)))
        return
    runs = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--chunk", str(args.chunk)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append(r)
        print(f"{r['atoms']:9,d} atoms: baseline {r['baseline_rss_mb']:7.0f} MB, peak {r['peak_rss_mb']:7.0f} MB, "
              f"extra {r['extra_bytes_per_atom']:6.0f} B/atom, peak {r['peak_bytes_per_atom']:6.0f} B/atom; "
              f"{r['seconds']:.0f} s ({r['s_per_atom']:.2e} s/atom, reference device, 1 thread)")
    write_json({"benchmark": "host_memory", "runs": runs}, args.json)


if __name__ == "__main__":
    main()
