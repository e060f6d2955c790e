"""Bytes per atom on the host link for the wire format, measured on real GeTe neighbour lists, and
the link-bound s/step/atom it implies; with the alternatives the generator could adopt next.

    python benchmarks/wire_bytes.py [--model M.npz] [--frames 16] [--json OUT.json]

Formats compared (per atom, n = neighbours inside rcut):
* per-pair (implemented, contract/wire.py): in 8 (1 + n) B, out 8 (1 + n) B, padded to full beats of `lanes`
  words;
* per-pair in, forces reduced on chip (out: 3 x 4 B force + 4 B energy + 6 x 4 B virial per atom);
* chunk-indexed (NVNMD-like): in 3 x 4 B coordinates + 1 B type + 2 B per neighbour index, out as above.
PCIe is full duplex: the link bound is the larger direction divided by the bandwidth.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import write_json  # noqa: E402
from contract.paths import shared_data  # noqa: E402
from contract import modelfile  # noqa: E402
from contract.paths import EXAMPLE_MODEL  # noqa: E402
from model.neighbors import edges  # noqa: E402

GETE = shared_data() / "GeTe-aimd" / "216atom-melt-quench"
LINKS = {"PCIe3 x16 (13 GB/s)": 13e9, "PCIe4 x16 (26 GB/s)": 26e9}
SEED_S_PER_ATOM = 2.8e-7


def neighbour_counts(qm, frames: int):
    from model.data import load_deepmd
    if not GETE.exists():
        return np.full(216, 47), "constant 47 (shared data absent)"
    systems = sorted(p for stage in GETE.iterdir() for p in stage.iterdir())
    picks = np.linspace(0, len(systems) - 1, frames).astype(int)
    counts = []
    for k in picks:
        s = load_deepmd(systems[k])
        f = s.nframes // 2
        e = edges(s.coords[f], s.cells[f], s.pbc, qm.config.rcut)
        counts.append(np.bincount(e.i, minlength=s.natoms))
    return np.concatenate(counts), f"{frames} frames of {GETE}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(EXAMPLE_MODEL))
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--json", default=str(REPO / "build" / "benchmarks" / "wire_bytes.json"))
    args = p.parse_args(argv)
    qm = modelfile.load(args.model)
    n, source = neighbour_counts(qm, args.frames)
    reduced_out = 3 * 4 + 4 + 6 * 4
    formats = {}
    for lanes in (1, 2, 4, 8):
        beats = 1 + np.maximum(1, -(-n // lanes))
        per_pair = float(np.mean(8 * lanes * beats))
        formats[f"per-pair, lanes={lanes} (implemented)"] = {"in": per_pair, "out": per_pair}
    formats["per-pair in, on-chip force reduction out"] = {"in": float(np.mean(8 * (1 + n))), "out": reduced_out}
    formats["chunk-indexed in (NVNMD-like), reduced out"] = {"in": float(np.mean(13 + 2 * n)), "out": reduced_out}
    for f in formats.values():
        f["link_bound_s_per_atom"] = {k: max(f["in"], f["out"]) / bw for k, bw in LINKS.items()}
    result = {"benchmark": "wire_bytes", "neighbours_source": source, "atoms": int(len(n)),
              "mean_neighbours": float(n.mean()), "max_neighbours": int(n.max()),
              "seed_s_per_atom": SEED_S_PER_ATOM, "formats": formats}
    print(f"GeTe neighbours within rcut={qm.config.rcut} Å: mean {n.mean():.2f}, max {n.max()} ({source})")
    print(f"{'format':48s} {'in B/atom':>10s} {'out B/atom':>10s}  " + "  ".join(f"{k:>20s}" for k in LINKS))
    for name, f in formats.items():
        print(f"{name:48s} {f['in']:10.1f} {f['out']:10.1f}  "
              + "  ".join(f"{v:17.2e} s" for v in f["link_bound_s_per_atom"].values()))
    print(f"seed: {SEED_S_PER_ATOM:.1e} s/step/atom (GeTe)")
    write_json(result, args.json)


if __name__ == "__main__":
    main()
