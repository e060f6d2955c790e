"""Record the training data's shortest pair distance and neighbour statistics in a model file
quantized before dpfpga recorded them.

    python examples/record_r_min.py model/examples/GeTe-example.npz [--data DIR ...] [-o OUT.npz]

The quantizer now chooses r_min from every training frame and, in the same pass, counts the
neighbours within rcut per atom; both go into the model file's provenance (`provenance["r_min"]`,
shown by `python -m model info`, and `provenance["neighbors"]`, the throughput estimate of
`python -m gen build`).  Older files carry only r_min, chosen from 64 sampled frames.  This script
makes that one pass (model.quantize.scan_training_frames) over every frame of the file's training
split (its provenance names the data, the validation fraction and the split seed; `--data` points
elsewhere when the data moved), checks that no training pair lies below r_min, and adds both
records.  Only the provenance changes: tables and weights, hence every result bit, stay as they are;
the content hash changes with the header.  Without the data it stops with a message and writes
nothing (examples/record_neighbours.py records statistics from a material's crystal instead).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from contract import modelfile
from model.data import load_systems, split_frames
from model.quantize import R_MIN_GRID, R_MIN_MARGIN, choose_r_min, scan_training_frames


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", nargs="+", help="training data folders (default: those the model file names)")
    ap.add_argument("-o", "--out", help="output model file (default: rewrite MODEL)")
    args = ap.parse_args(argv)
    qm = modelfile.load(args.model)
    before = {k: np.array(v) for k, v in qm.arrays().items()}
    data = qm.provenance.get("data") or {}
    paths = args.data or data.get("systems")
    if not paths:
        sys.exit(f"error: {args.model} names no training data; give --data")
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        sys.exit(f"error: training data not found: {', '.join(missing)} (give --data); nothing written")
    systems = [s.remap_types(qm.config.type_map) for s in load_systems(paths)]
    fraction, seed = data.get("valid_fraction", 0.4), data.get("seed", 0)
    train, _ = split_frames(systems, fraction, seed)
    seen, neighbours = scan_training_frames(
        train, qm.config.rcut, source=f"training split (validation fraction {fraction}, seed {seed}) of "
                                      f"{', '.join(map(str, paths))}; recorded after quantization")
    if not seen["distance"] > qm.config.r_min:
        sys.exit(f"error: the training data has a pair {seen['distance']:.4f} Å apart, below r_min "
                 f"{qm.config.r_min} Å ({seen['system']} frame {seen['frame']}); re-quantize instead")
    rule = choose_r_min(seen["distance"], qm.config)
    qm.provenance["r_min"] = {
        "r_min": qm.config.r_min, "training_min_distance": seen["distance"], "system": seen["system"],
        "frame": seen["frame"], "frames": seen["frames"],
        "rule": f"{R_MIN_MARGIN} x shortest distance on a {R_MIN_GRID} A grid, at most rcut_smth - {R_MIN_GRID}",
        "note": (f"r_min was chosen at training from 64 sampled frames; the rule over every training frame "
                 f"gives {rule}" if rule != qm.config.r_min else "recorded after quantization; the rule agrees")}
    qm.provenance["neighbors"] = neighbours
    out = args.out or args.model
    old_hash = qm.hash
    qm.hash = ""
    modelfile.save(qm, out)
    after = modelfile.load(out).arrays()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before), \
        "the record must not change a table or a weight"
    per_type = ", ".join(f"{t} {v['mean']}" for t, v in neighbours["per_type"].items())
    print(f"{out}: r_min {qm.config.r_min} Å, training data's shortest distance {seen['distance']:.4f} Å "
          f"({seen['frames']} frames); neighbours within {qm.config.rcut} Å per atom: mean {neighbours['mean']}, "
          f"max {neighbours['max']} ({per_type}); "
          f"hash {old_hash[:12]} -> {qm.hash[:12]} (arrays unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
