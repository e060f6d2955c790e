#!/usr/bin/env python3
"""Error of model files against a recipe's teacher labels, per dataset and phase, on the recipe's held-out
split.  (Issue 9; a measurement, not a recipe.)

    python examples/Sb/experiments/per_dataset.py examples/Sb/recipe.json MODEL.npz [MODEL.npz ...] [--json OUT]

Prints, per dataset of the recipe's data.systems and per phase, the frames, the energy RMSE and mean
error (model - teacher, meV/atom) and the force RMSE (meV/Å) of the quantized model (the bit-exact
reference).  A model trained on fewer datasets than the recipe lists sees the others' frames for the first
time.  docs/figures/sb-accuracy-per-dataset.json holds the figures for the 500-frame and the 2,000-frame
Sb models.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from contract import modelfile  # noqa: E402
from model.metrics import collect, predict_quantized, rmse_of  # noqa: E402
from science import phases as ph  # noqa: E402
from science.recipe import load_recipe  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("recipe")
ap.add_argument("models", nargs="+")
ap.add_argument("--json", help="write the figures here")
args = ap.parse_args()

recipe = load_recipe(args.recipe)
out = {"recipe": str(Path(args.recipe).resolve()), "split": {"valid_fraction": recipe.data.valid_fraction,
                                                            "seed": recipe.data.seed}, "models": {}}
for path in args.models:
    qm = modelfile.load(path)
    frames = ph.load_frames(recipe.data.systems, recipe.data.valid_fraction, recipe.data.seed,
                            qm.config.type_map).frames
    rows = {}
    for dataset in recipe.data.systems:
        for phase in ("amorphous", "liquid", None):
            picked = [(f.system, f.frame) for f in frames if f.system.name.startswith(dataset)
                      and (phase is None or f.label.phase == phase)]
            c = collect(lambda system, k: predict_quantized(qm, system, k), picked, Path(dataset).name)
            m = rmse_of(c)
            key = f"{Path(dataset).name} {phase or 'all'}"
            rows[key] = {"frames": len(picked), "rmse_e_meV_atom": m["rmse_e"] * 1e3,
                         "mean_e_error_meV_atom": m["mean_error_e"] * 1e3,
                         "rmse_f_meV_A": m["rmse_f"] * 1e3}
            r = rows[key]
            print(f"{Path(path).name} {key:32s} {r['frames']:4d} frames  E {r['rmse_e_meV_atom']:7.2f} "
                  f"(mean {r['mean_e_error_meV_atom']:+7.2f}) meV/atom  F {r['rmse_f_meV_A']:6.1f} meV/Å")
    out["models"][str(path)] = {"hash": qm.hash, "trained_on": (qm.provenance or {}).get("data"), "rows": rows}
if args.json:
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
