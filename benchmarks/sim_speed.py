"""Simulation speed of the generated pipeline (cocotb on Verilator and Icarus, and the standalone
Verilator harness) and cycles/atom vs lanes.

    python benchmarks/sim_speed.py [--model M.npz] [--records 2000] [--icarus-records 300]
                                   [--fit-par 2] [--desc-par 4] [--json OUT.json]

Streams real GeTe neighbour records (or random ones without ../shared/data) through the cocotb bench
with 10 % idle input cycles and 10 % backpressure, checks zero mismatches against the reference, and
reports records/s and cycles/s per simulator, build times included.  The cycles/atom-vs-lanes table
is the analytical model (gen.cycles) on the measured GeTe neighbour-count distribution, next to the
simulated steady-state cycles/atom of the configuration run here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import write_json  # noqa: E402
from contract.paths import shared_data  # noqa: E402
from contract import wire  # noqa: E402
from gen import cycles  # noqa: E402
from gen.ir import Knobs  # noqa: E402
from contract import modelfile  # noqa: E402
from model.assembly import neighbor_blocks, quantize_records  # noqa: E402
from contract.paths import EXAMPLE_MODEL  # noqa: E402
from model.reference import NeighborRecords, evaluate  # noqa: E402
from sim import runner, standalone  # noqa: E402

GETE = shared_data() / "GeTe-aimd" / "216atom-melt-quench" / "s3-quench-300K" / "temp-300K"


#: the cocotb bench measures steady-state cycles/atom between the first and the last atom's output
#: header: with one atom there is no interval, and it reported None ("steady None cycles/atom")
MIN_ATOMS = 2


def gete_records(qm, n_records: int, min_atoms: int = MIN_ATOMS) -> NeighborRecords:
    """Whole atoms of real GeTe frames up to `n_records` neighbour records, at least `min_atoms` atoms."""
    from model.data import load_deepmd
    s = load_deepmd(GETE).remap_types(qm.config.type_map)
    parts, total, f = [], 0, 0
    while total < n_records or sum(len(r) for r in parts) < min_atoms:
        rec = quantize_records(qm, neighbor_blocks(qm, s.coords[f], s.cells[f], True, s.types))
        parts.append(rec)
        total += int((rec.nbr_type >= 0).sum())
        f += 1
    m = max(r.nbr_type.shape[1] for r in parts)
    pad = lambda a, v: np.concatenate([a, np.full(a.shape[:1] + (m - a.shape[1],) + a.shape[2:], v)], axis=1)
    rec = NeighborRecords(np.concatenate([r.center_type for r in parts]),
                          np.concatenate([pad(r.nbr_type, -1) for r in parts]),
                          np.concatenate([pad(r.nbr_d, 0) for r in parts]))
    keep = np.cumsum((rec.nbr_type >= 0).sum(axis=1)) <= n_records
    keep[:min_atoms] = True
    return rec.take(keep)


def run(sim, qm, knobs, rec, name):
    verilog = runner.pipeline_verilog(qm, knobs)
    t = time.time()
    runner.build_simulator(sim, verilog)
    build_s = time.time() - t
    res = evaluate(qm, rec)
    beats = wire.encode_atoms(rec.center_type, rec.nbr_type, rec.nbr_d, knobs.lanes)
    case = runner.write_case(verilog.parent / "cases" / f"{name}.npz", beats, res, len(rec), rec.nbr_type.shape[1],
                             idle=0.1, backpressure=0.1, seed=1)
    r = runner.run_bench(sim, verilog, case, name)
    r["build_seconds_incl_cache"] = build_s
    r["records_per_second"] = r["records_in"] / r["wall_seconds"]
    return r


def run_standalone(qm, knobs, rec):
    verilog = runner.pipeline_verilog(qm, knobs)
    t = time.time()
    exe = standalone.build_harness(verilog)
    build_s = time.time() - t
    res = evaluate(qm, rec)
    beats = wire.encode_atoms(rec.center_type, rec.nbr_type, rec.nbr_d, knobs.lanes)
    out, stats = standalone.run_harness(exe, beats, knobs.lanes, idle=0.1, backpressure=0.1, seed=1)
    energy, dEdr, flags, _ = wire.decode_results(out, len(rec), rec.nbr_type.shape[1])
    mism = int((energy != res.energy).sum() + (flags != res.flags).sum()
               + (dEdr != res.dEdr[:, :dEdr.shape[1]]).any(-1).sum())
    records = int((rec.nbr_type >= 0).sum())
    return {"records_in": records, "atoms": len(rec), "cycles": stats["cycles"], "wall_seconds": stats["wall_seconds"],
            "cycles_per_second": stats["cycles"] / stats["wall_seconds"],
            "records_per_second": records / stats["wall_seconds"], "mismatches": mism,
            "steady_cycles_per_atom": stats["cycles"] / len(rec), "build_seconds_incl_cache": build_s}


def steady_text(cycles_per_atom) -> str:
    return f"{cycles_per_atom:.1f} cycles/atom" if cycles_per_atom is not None else \
        "cycles/atom n/a (one atom: no interval between output headers)"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(EXAMPLE_MODEL))
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--icarus-records", type=int, default=300)
    p.add_argument("--standalone-records", type=int, default=100000)
    p.add_argument("--fit-par", type=int, default=2)
    p.add_argument("--desc-par", type=int, default=4)
    p.add_argument("--json", default=str(REPO / "build" / "benchmarks" / "sim_speed.json"))
    args = p.parse_args(argv)
    qm = modelfile.load(args.model)
    knobs = Knobs(lanes=1, fit_par=args.fit_par, desc_par=args.desc_par)
    if not GETE.exists():
        sys.exit(f"needs the GeTe AIMD data at {GETE}")
    result = {"benchmark": "sim_speed", "model_hash": qm.hash, "knobs": knobs.__dict__, "simulators": {}}
    for sim, n in (("verilator", args.records), ("icarus", args.icarus_records)):
        try:
            runner.check_simulator(sim)
        except runner.SimulatorMissing as e:
            result["simulators"][sim] = {"skipped": str(e)}
            continue
        rec = gete_records(qm, n)
        r = run(sim, qm, knobs, rec, f"speed-{sim}-{n}")
        result["simulators"][sim] = r
        print(f"{sim:9s}: {r['records_in']} records, {r['atoms']} atoms, {r['cycles']} cycles in "
              f"{r['wall_seconds']:.1f} s -> {r['records_per_second']:.0f} records/s, "
              f"{r['cycles_per_second']:.0f} cycles/s; mismatches {r['mismatches']}; "
              f"steady {steady_text(r['steady_cycles_per_atom'])}")
    rec = gete_records(qm, args.standalone_records)
    r = run_standalone(qm, knobs, rec)
    result["simulators"]["verilator-standalone"] = r
    print(f"verilator standalone: {r['records_in']} records, {r['atoms']} atoms, {r['cycles']} cycles in "
          f"{r['wall_seconds']:.1f} s -> {r['records_per_second']:.0f} records/s, {r['cycles_per_second']:.0f} "
          f"cycles/s; mismatches {r['mismatches']}; {r['steady_cycles_per_atom']:.1f} cycles/atom (incl. fill)")
    ns = (gete_records(qm, 5000).nbr_type >= 0).sum(axis=1)
    shape = cycles.Shape(n_layers=len(qm.fit[0]), n_hidden=qm.fit[0][0].W.shape[1], m1=qm.config.m1)
    table = []
    print(f"\ncycles/atom (analytical, GeTe mean n = {ns.mean():.1f}) at 250 MHz; seed 2.8e-7 s/atom = 70 cycles")
    for lanes in (1, 2, 4):
        for fp, dp, e in ((2, 4, 1), (8, 4, 1), (8, 4, 3), (16, 8, 2), (16, 8, 4)):
            k = Knobs(lanes=lanes, fit_par=fp, desc_par=dp, engines=e)
            c = cycles.cycles_per_atom(ns, k, shape)
            table.append({"knobs": k.__dict__, "cycles_per_atom": c, "s_per_atom_250MHz": c / 250e6,
                          "bottleneck": cycles.bottleneck(ns, k, shape)})
            print(f"  lanes {lanes} fit_par {fp:2d} desc_par {dp} engines {e}: {c:7.1f} cycles/atom "
                  f"= {c / 250e6:.2e} s  ({cycles.bottleneck(ns, k, shape)})")
    result["cycles_vs_lanes"] = table
    result["simulated_vs_model"] = {
        sim: {"simulated": r.get("steady_cycles_per_atom"),
              "model": cycles.cycles_per_atom((gete_records(qm, r["records_in"]).nbr_type >= 0).sum(axis=1), knobs, shape)}
        for sim, r in result["simulators"].items() if "records_in" in r}
    write_json(result, args.json)


if __name__ == "__main__":
    main()
