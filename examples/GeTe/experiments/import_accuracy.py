#!/usr/bin/env python3
"""Experiment (issue 21): the seed group's float DeePMD model, imported and quantized by us, against the
216-atom GeTe AIMD frames per phase, beside its float figures.

    python examples/GeTe/experiments/import_accuracy.py [--every 10] [--out build/import]

1. `python -m model import`'s two steps in-process: the frozen graph
   ../shared/data/nvnmd-models/deepmd-GeTe-float.pb as our float model (float64: DeePMD's own numbers,
   tests/model/test_deepmd.py), then quantized by model.quantize (r_min from a scan of every 216-atom
   frame, formats from 16 calibration frames of them; no fine-tuning) -> OUT/gete-import.npz;
2. every `every`-th frame of every 216-atom system (the data README's "every 10th frame" of the same
   model's measured 6.10 meV/atom, 168.1 meV/Å), float model and bit-exact quantized reference, RMSE
   per phase (science.phases: liquid / amorphous by the folders' temperatures);
3. OUT/import-accuracy.json (+ .md, parity PNGs), OUT/import-accuracy.csv (one row per phase) and the
   table as text on stdout, with the acceptance check: quantized force RMSE within 5 % of the float's.

The group's weights are third-party data: they are read from ../shared/data and never copied; the
model file written under OUT (ignored by git) holds them and stays there.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from contract import modelfile  # noqa: E402
from contract.paths import GETE_AIMD, shared_data  # noqa: E402
from model.data import load_systems  # noqa: E402
from model.deepmd import import_graph  # noqa: E402
from model.quantize import quantize  # noqa: E402
from science import phases as ph  # noqa: E402

PB = shared_data() / "nvnmd-models" / "deepmd-GeTe-float.pb"
#: the acceptance bound of issue 21: quantized force RMSE / float force RMSE
FORCE_RATIO_BOUND = 1.05


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=int, default=10, help="every N-th frame of each system (default 10)")
    ap.add_argument("--calib-frames", type=int, default=16)
    ap.add_argument("--out", default=str(REPO / "build" / "import"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = shared_data() / GETE_AIMD
    t0 = time.time()
    model, provenance = import_graph(PB)
    systems = [s.remap_types(model.cfg.type_map) for s in load_systems([data])]
    qm = quantize(model, systems, nframes=args.calib_frames)
    qm.provenance.update(provenance)
    qm.provenance["quantization"] = {"calibration": f"{args.calib_frames} frames (seed 0) of {data}",
                                     "r_min_scan": f"every frame of {data}", "finetune": {"steps": 0}}
    path = out / "gete-import.npz"
    modelfile.save(qm, path)
    t_quant = time.time() - t0
    print(f"imported and quantized in {t_quant:.0f} s: {path} (hash {qm.hash})", flush=True)

    frames = [ph.FrameRef(s, f, ph.label_system(s), "validation") for s in systems
              for f in range(0, s.nframes, args.every)]
    t1 = time.time()
    # float_net: the float64 import (DeePMD's numbers), not the file's float32-rounded copy
    result = ph.evaluate(qm, frames, float_net=model)
    rows = result.metrics["rows"]
    ratio = {k: r["quantized"]["rmse_f"] / r["float"]["rmse_f"] for k, r in rows.items()}
    info = {"data": [str(data)], "frames": f"every {args.every}th frame of each system", "valid_fraction": None,
            "split_seed": None, "amorphous_max_K": ph.AMORPHOUS_MAX_K,
            "note": "the group model's training data are not ours: no split; every frame counts"}
    extra = {"model": str(path), "model_hash": qm.hash, "source": provenance["import"],
             "quantize_seconds": t_quant, "evaluate_seconds": time.time() - t1,
             "force_rmse_ratio_quantized_over_float": ratio,
             "acceptance": {"bound": FORCE_RATIO_BOUND, "met": all(v <= FORCE_RATIO_BOUND for v in ratio.values())}}
    command = "python examples/GeTe/experiments/import_accuracy.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    ph.write_outputs(result, info, out / "import-accuracy.json", out / "import-accuracy.md", out / "parity",
                     None, f"# The group's DeePMD GeTe model, imported and quantized\n\nWritten by `{command}`.\n",
                     extra)
    with open(out / "import-accuracy.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "frames", "float_rmse_e_meV_atom", "float_rmse_f_meV_A", "quantized_rmse_e_meV_atom",
                    "quantized_rmse_f_meV_A", "force_ratio"])
        for k, r in rows.items():
            w.writerow([k, r["frames"], *(f"{r[m][q] * 1e3:.3f}" for m in ("float", "quantized")
                                          for q in ("rmse_e", "rmse_f")), f"{ratio[k]:.4f}"])
    print(ph.markdown_table(result.metrics))
    for k in rows:
        print(f"{k:>24}: quantized/float force RMSE {ratio[k]:.4f}")
    print(json.dumps(extra["acceptance"]))
    print(f"wrote {out / 'import-accuracy.json'}, .md, .csv, parity-*.png")


if __name__ == "__main__":
    main()
