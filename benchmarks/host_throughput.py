"""Host throughput: encoder, decoder, neighbour lists, end-to-end ASE steps, the rtl device.

    python benchmarks/host_throughput.py [--model M.npz] [--sizes 4096 32768] [--rtl-records 20000]
                                         [--json OUT.json]

Single thread (BLAS and OpenMP pinned to one).  Structures: rock-salt GeTe supercells with thermal
displacements at the density of the bundled model's training data.  Prints a table and writes JSON
(default build/benchmarks/host_throughput.json).  Each figure is the median of --repeat runs.

* encoder: wire.encode_atoms on a chunk of quantized records (atoms/s, records/s);
* decoder: wire.decode_results on the matching output beats;
* neighbour lists: host.neighbors.NeighborChunks over the whole structure (atoms/s);
* end to end: host.ase.Calculator(device="reference") energy + forces + stress, s/step/atom;
* link: bytes/atom each way for the measured neighbour counts and the link-bound s/step/atom at
  13 GB/s (PCIe 3.0 x16) and 26 GB/s (PCIe 4.0 x16);
* rtl: records/s through the standalone Verilator device (the test design, when Verilator is there).
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import timed_median, write_json  # noqa: E402
from contract import wire  # noqa: E402
from host.neighbors import NeighborChunks  # noqa: E402
from contract import modelfile  # noqa: E402
from model.assembly import quantize_displacements  # noqa: E402
from contract.paths import EXAMPLE_MODEL  # noqa: E402
from model.reference import evaluate, NeighborRecords  # noqa: E402

LINKS = {"PCIe3 x16 (13 GB/s)": 13e9, "PCIe4 x16 (26 GB/s)": 26e9}


def gete_box(n_atoms: int, seed: int = 0):
    """Rock-salt GeTe (a = 6.0 Å) repeated to at least n_atoms, displaced by 0.15 Å RMS."""
    from ase.build import bulk
    reps = int(np.ceil((n_atoms / 8) ** (1 / 3)))
    atoms = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((reps, reps, reps))
    atoms.rattle(0.15, seed=seed)
    return atoms


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(EXAMPLE_MODEL))
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 32768])
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--rtl-records", type=int, default=20000)
    p.add_argument("--json", default=str(REPO / "build" / "benchmarks" / "host_throughput.json"))
    args = p.parse_args(argv)
    qm = modelfile.load(args.model)
    from model.assembly import map_types
    result = {"benchmark": "host_throughput", "model_hash": qm.hash, "threads": 1, "sizes": {}}

    # -- encoder / decoder on one chunk of real-looking records ------------------------------------
    atoms = gete_box(args.chunk)
    types = map_types(atoms.get_chemical_symbols(), qm.config.type_map)
    nc = NeighborChunks(atoms.positions, atoms.cell.array, True, qm.config.rcut, types, chunk_atoms=args.chunk)
    ch = next(iter(nc))
    b = ch.blocks
    d = quantize_displacements(b.nbr_vec, qm.formats["coord"])
    d[b.nbr_type < 0] = 0
    k = len(ch.centers)
    records = int((b.nbr_type >= 0).sum())
    beats, t_enc = timed_median(lambda: wire.encode_atoms(b.center_type, b.nbr_type, d, 1, tags=ch.centers), args.repeat)
    res = evaluate(qm, NeighborRecords(b.center_type, b.nbr_type, d))
    out = wire.encode_results(res.energy, res.dEdr, res.flags, (b.nbr_type >= 0).sum(1), ch.centers, 1)
    _, t_dec = timed_median(lambda: wire.decode_results(out, k, b.nbr_type.shape[1]), args.repeat)
    mean_n = records / k
    bytes_in, bytes_out = beats.size * 8 / k, out.size * 8 / k
    result["encoder"] = {"atoms": k, "records": records, "seconds": t_enc, "atoms_per_s": k / t_enc,
                         "records_per_s": records / t_enc}
    result["decoder"] = {"atoms": k, "seconds": t_dec, "atoms_per_s": k / t_dec}
    result["link"] = {"mean_neighbours": mean_n, "bytes_per_atom_in": bytes_in, "bytes_per_atom_out": bytes_out,
                      **{name: max(bytes_in, bytes_out) / bw for name, bw in LINKS.items()}}
    print(f"encoder: {k / t_enc:,.0f} atoms/s ({records / t_enc:,.0f} records/s), goal 2e7 atoms/s")
    print(f"decoder: {k / t_dec:,.0f} atoms/s")
    print(f"wire: {bytes_in:.1f} B/atom in, {bytes_out:.1f} B/atom out at {mean_n:.1f} neighbours/atom; link-bound "
          + ", ".join(f"{name} {max(bytes_in, bytes_out) / bw:.2e} s/atom" for name, bw in LINKS.items()))

    # -- neighbour lists and end-to-end ASE steps --------------------------------------------------
    from host.ase import Calculator
    for n in args.sizes:
        atoms = gete_box(n)
        types = map_types(atoms.get_chemical_symbols(), qm.config.type_map)
        _, t_nl = timed_median(lambda: sum(len(c.centers) for c in NeighborChunks(
            atoms.positions, atoms.cell.array, True, qm.config.rcut, types, chunk_atoms=args.chunk)), args.repeat)
        calc = Calculator(model=args.model, device="reference", chunk_atoms=args.chunk)

        def step():
            atoms.positions += 1e-4  # a new configuration each time (no cached results)
            calc.calculate(atoms, ["energy", "forces", "stress"])
            return calc.last_result.timings

        timings, t_step = timed_median(step, args.repeat)
        calc.close()
        na = len(atoms)
        result["sizes"][na] = {"neighbour_list_atoms_per_s": na / t_nl, "ase_step_seconds": t_step,
                               "s_per_step_per_atom": t_step / na, "stage_seconds": timings}
        print(f"{na:7d} atoms: neighbour list {na / t_nl:,.0f} atoms/s; ASE step (reference device) {t_step:.2f} s "
              f"= {t_step / na:.2e} s/step/atom; stages " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))

    # -- rtl device ---------------------------------------------------------------------------------
    try:
        from sim import runner
        runner.check_simulator("verilator")
        result["rtl"] = rtl_speed(args.rtl_records)
        r = result["rtl"]
        print(f"rtl device (test design {r['knobs']}): {r['records']} records in {r['seconds']:.1f} s = "
              f"{r['records_per_s']:,.0f} records/s")
    except Exception as e:  # noqa: BLE001 (reported, the rest of the figures stand)
        result["rtl"] = {"skipped": str(e)}
        print(f"rtl device: skipped ({e})")

    write_json(result, args.json)


def rtl_speed(n_records: int) -> dict:
    """The rtl device on the tests' small model and design (compiled once, cached under build/sim)."""
    sys.path.insert(0, str(REPO / "tests"))
    from gen.ir import Knobs
    from host.devices import open_device
    from support import random_structure, tiny_qm
    qm = tiny_qm()
    knobs = Knobs(lanes=1, fit_par=2, desc_par=4)
    pos, cell, types = random_structure(natoms=64, box=13.0, seed=3)
    nc = NeighborChunks(pos, cell, True, qm.config.rcut, types, chunk_atoms=64)
    ch = next(iter(nc))
    d = quantize_displacements(ch.blocks.nbr_vec, qm.formats["coord"])
    d[ch.blocks.nbr_type < 0] = 0
    beats = wire.encode_atoms(ch.blocks.center_type, ch.blocks.nbr_type, d, 1)
    per_chunk = int((ch.blocks.nbr_type >= 0).sum())
    chunks = max(1, n_records // per_chunk)
    with open_device("rtl", qm, knobs=knobs) as dev:
        t = time.perf_counter()
        in_flight = 0
        for _ in range(chunks):
            if in_flight == dev.depth:
                dev.collect(600)
                in_flight -= 1
            dev.submit(beats, len(ch.centers))
            in_flight += 1
        for _ in range(in_flight):
            dev.collect(600)
        seconds = time.perf_counter() - t
    records = per_chunk * max(1, n_records // per_chunk)
    return {"knobs": knobs.__dict__, "records": records, "seconds": seconds, "records_per_s": records / seconds}


if __name__ == "__main__":
    main()
