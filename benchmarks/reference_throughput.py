"""Throughput of the bit-exact NumPy reference vs the float PyTorch model, single thread, same run.

    python benchmarks/reference_throughput.py [--model M.npz] [--repeat 5] [--json OUT.json]

Structure: a 4096-atom GeTe box, the first 64-atom frame of the shared AIMD data replicated 4x4x4
(a rock-salt-like cell at high temperature); without ../shared/data, a thermally displaced rock-salt
8x8x8 supercell.  Prints atoms/s for each stage and writes JSON (default build/benchmarks/).
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # single thread, before NumPy loads BLAS

import argparse
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import float_evaluation, timed, write_json  # noqa: E402
from contract.paths import shared_data  # noqa: E402
from contract import modelfile  # noqa: E402
from model.assembly import assemble, neighbor_blocks, quantize_records  # noqa: E402
from contract.paths import EXAMPLE_MODEL  # noqa: E402
from model.reference import evaluate  # noqa: E402

SHARED = shared_data() / "GeTe-aimd" / "64atom-npt" / "data.002"


def gete_4096():
    if SHARED.exists():
        from model.data import load_deepmd
        s = load_deepmd(SHARED)
        atoms = s.to_atoms(0).repeat((4, 4, 4))
        source = f"{SHARED} frame 0 x 4x4x4"
    else:
        from ase.build import bulk
        atoms = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((8, 8, 8))
        atoms.positions += np.random.default_rng(0).normal(0, 0.1, atoms.positions.shape)
        source = "rock-salt GeTe 8x8x8, a=6.0 Å, 0.1 Å random displacements (shared data absent)"
    return atoms, source


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(EXAMPLE_MODEL))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default=str(REPO / "build" / "benchmarks" / "reference_throughput.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    qm = modelfile.load(args.model)
    atoms, source = gete_4096()
    n = len(atoms)
    types = np.array([qm.config.type_map.index(e) for e in atoms.get_chemical_symbols()])
    pos, cell = atoms.positions, atoms.cell.array

    nb, t_nl = timed(lambda: neighbor_blocks(qm, pos, cell, True, types), args.repeat)
    rec, t_q = timed(lambda: quantize_records(qm, nb), args.repeat)
    res, t_ref = timed(lambda: evaluate(qm, rec), args.repeat)
    asm, t_asm = timed(lambda: assemble(qm, rec, res, nb.nbr_index, n), args.repeat)

    (ef, ff, vf, _), t_float = timed(float_evaluation(qm, nb, types), args.repeat)

    med = statistics.median
    stages = {"neighbor_list": t_nl, "quantize_records": t_q, "reference": t_ref, "assembly": t_asm,
              "float_torch_energy_forces": t_float}
    result = {
        "benchmark": "reference_throughput", "structure": source, "atoms": n,
        "mean_neighbors": float(nb.count.mean()), "threads": 1, "repeat": args.repeat,
        "model": str(Path(args.model).resolve()), "model_hash": qm.hash,
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine()},
        "seconds_median": {k: med(v) for k, v in stages.items()},
        "atoms_per_s": {k: n / med(v) for k, v in stages.items()},
        "reference_end_to_end_atoms_per_s": n / (med(t_nl) + med(t_q) + med(t_ref) + med(t_asm)),
        "reference_over_float_time": med(t_ref) / med(t_float),
        "quantized_minus_float": {"energy_per_atom_eV": (asm.energy - float(ef[0])) / n,
                                  "force_max_abs_eV_per_A": float(np.abs(asm.forces - ff.numpy()).max())},
    }
    print(f"{n} atoms ({source}), {result['mean_neighbors']:.1f} neighbours/atom, 1 thread, "
          f"median of {args.repeat}")
    for k, v in stages.items():
        print(f"  {k:28s} {med(v) * 1e3:9.1f} ms   {n / med(v):12,.0f} atoms/s")
    print(f"  reference end to end (nl+quantize+reference+assembly): "
          f"{result['reference_end_to_end_atoms_per_s']:,.0f} atoms/s")
    print(f"  reference / float-model time: {result['reference_over_float_time']:.2f}")
    write_json(result, args.json)


if __name__ == "__main__":
    main()
