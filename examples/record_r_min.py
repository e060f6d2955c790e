"""Record the training data's shortest pair distance in a model file quantized before dpfpga did.

    python examples/record_r_min.py model/examples/GeTe-example.npz [--data DIR ...] [-o OUT.npz]

The quantizer now chooses r_min from every training frame and writes both into the model file's
provenance (`provenance["r_min"]`, shown by `python -m model info`).  Older files carry only r_min,
chosen from 64 sampled frames.  This script searches every frame of the file's training split (its
provenance names the data, the validation fraction and the split seed; `--data` points elsewhere when
the data moved), checks that no training pair lies below r_min, and adds the record.  Only the
provenance changes: tables and weights, hence every result bit, stay as they are; the content hash
changes with the header.  Without the data it stops with a message and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from contract import modelfile
from model.data import load_systems, split_frames
from model.quantize import R_MIN_GRID, R_MIN_MARGIN, choose_r_min, shortest_distance


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
    train, _ = split_frames(systems, data.get("valid_fraction", 0.4), data.get("seed", 0))
    seen = shortest_distance(train, qm.config.rcut)
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
    out = args.out or args.model
    old_hash = qm.hash
    qm.hash = ""
    modelfile.save(qm, out)
    after = modelfile.load(out).arrays()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before), \
        "the record must not change a table or a weight"
    print(f"{out}: r_min {qm.config.r_min} Å, training data's shortest distance {seen['distance']:.4f} Å "
          f"({seen['frames']} frames); hash {old_hash[:12]} -> {qm.hash[:12]} (arrays unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
