#!/usr/bin/env python3
"""Experiment (issue 21): the seed group's NVNMD v0 hardware model file (MDPU era), decoded and imported
by us, against the 216-atom GeTe AIMD frames per phase.

    python examples/GeTe/experiments/nvnmd_accuracy.py [--every 40] [--out build/nvnmd]

1. ../shared/data/nvnmd-models/mdpu-v0-GeTe.pb decoded (model.nvnmd.read_nvnmd) and evaluated in
   float64 as the file's tables and weights define it (NvnmdModel: no FLT29 rounding; forces the exact
   gradient);
2. the same file imported as our float model (`python -m model import --type-map Ge Te`: options
   env_norm, pad_slots, desc_band, embed_table) and quantized by model.quantize (r_min from a scan of
   every 216-atom frame, formats from 16 calibration frames of them) -> OUT/nvnmd-import.npz, evaluated
   by the bit-exact reference;
3. every `every`-th frame of every 216-atom system: energy and force RMSE vs DFT per phase
   (science.phases: liquid / amorphous by the folders' temperatures) -> OUT/nvnmd-accuracy.json and the
   table as text (OUT/nvnmd-accuracy.txt, stdout).

The MDPU-era file has no energy shift (its final-layer bias is zeroed and the head holds no per-type
energy), so its energies are off by a constant per type.  Every 216-atom frame has 108 Ge and 108 Te, so
only the sum of the two constants is determined: the energy RMSE is given raw and with one constant per
atom fitted (least squares over the frames evaluated, for each model separately).

The group's weights are third-party data: read from ../shared/data, never copied; the model file written
under OUT (ignored by git) holds them and stays there.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from contract import modelfile  # noqa: E402
from contract.paths import GETE_AIMD, shared_data  # noqa: E402
from model.data import load_systems  # noqa: E402
from model.metrics import predict_float, predict_quantized  # noqa: E402
from model.nvnmd import NvnmdModel, import_nvnmd, read_nvnmd  # noqa: E402
from model.nvnmd import predict as nvnmd_predict  # noqa: E402
from model.quantize import quantize  # noqa: E402
from science import phases as ph  # noqa: E402

NVNMD_FILE = shared_data() / "nvnmd-models" / "mdpu-v0-GeTe.pb"
TYPE_MAP = ["Ge", "Te"]
MODELS = ("nvnmd_float", "import_float", "quantized")


def rmse_rows(rows: list[dict]) -> dict:
    """Per phase and overall: energy RMSE raw and with one per-atom constant fitted, force RMSE."""
    out = {}
    for key in sorted({r["phase"] for r in rows}) + ["all"]:
        sel = [r for r in rows if key == "all" or r["phase"] == key]
        out[key] = {"frames": len(sel)}
        for m in MODELS:
            de = np.array([(r[m]["e"] - r["e_dft"]) / r["natoms"] for r in sel])
            sse = sum(r[m]["sse_f"] for r in sel)
            ncomp = sum(3 * r["natoms"] for r in sel)
            out[key][m] = {"rmse_e_raw": float(np.sqrt(np.mean(de ** 2))), "mean_offset_e": float(np.mean(de)),
                           "rmse_f": float(np.sqrt(sse / ncomp))}
    # the constant per atom is fitted once over all frames (the same shift for every phase)
    for m in MODELS:
        c = float(np.mean([(r[m]["e"] - r["e_dft"]) / r["natoms"] for r in rows]))
        for key, v in out.items():
            sel = [r for r in rows if key == "all" or r["phase"] == key]
            de = np.array([(r[m]["e"] - r["e_dft"]) / r["natoms"] - c for r in sel])
            v[m]["rmse_e_shifted"] = float(np.sqrt(np.mean(de ** 2)))
            v[m]["shift_eV_per_atom"] = c
    return out


def text_table(res: dict) -> str:
    lines = ["| phase | frames | model | E RMSE raw (meV/atom) | E RMSE, constant fitted (meV/atom) | F RMSE (meV/Å) |",
             "|---|---|---|---|---|---|"]
    names = {"nvnmd_float": "NVNMD file, float64", "import_float": "our float import", "quantized": "our quantized import"}
    for key, v in res.items():
        for m in MODELS:
            r = v[m]
            lines.append(f"| {key} | {v['frames']} | {names[m]} | {r['rmse_e_raw'] * 1e3:.1f} | "
                         f"{r['rmse_e_shifted'] * 1e3:.2f} | {r['rmse_f'] * 1e3:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=int, default=40, help="every N-th frame of each system (default 40)")
    ap.add_argument("--calib-frames", type=int, default=16)
    ap.add_argument("--out", default=str(REPO / "build" / "nvnmd"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = shared_data() / GETE_AIMD
    t0 = time.time()
    nv = read_nvnmd(NVNMD_FILE)
    evaluator = NvnmdModel(nv)
    model, provenance = import_nvnmd(NVNMD_FILE, TYPE_MAP)
    systems = [s.remap_types(TYPE_MAP) for s in load_systems([data])]
    qm = quantize(model, systems, nframes=args.calib_frames)
    qm.provenance.update(provenance)
    qm.provenance["quantization"] = {"calibration": f"{args.calib_frames} frames (seed 0) of {data}",
                                     "r_min_scan": f"every frame of {data}", "finetune": {"steps": 0}}
    path = out / "nvnmd-import.npz"
    modelfile.save(qm, path)
    t_quant = time.time() - t0
    print(f"decoded, imported and quantized in {t_quant:.0f} s: {path} (hash {qm.hash})", flush=True)

    rows = []
    t1 = time.time()
    for s in systems:
        phase = ph.label_system(s).phase or "other"
        for f in range(0, s.nframes, args.every):
            ref = s.forces[f].reshape(-1, 3)
            row = {"system": str(Path(s.name).relative_to(data)), "frame": f, "phase": phase, "natoms": s.natoms,
                   "e_dft": float(s.energies[f])}
            for name, pred, m in (("nvnmd_float", nvnmd_predict, evaluator), ("import_float", predict_float, model),
                                  ("quantized", predict_quantized, qm)):
                e, force, _ = pred(m, s, f)
                row[name] = {"e": float(e), "sse_f": float(((np.asarray(force) - ref) ** 2).sum()),
                             "max_abs_f_minus_nvnmd": None}
                row[name]["_f"] = np.asarray(force)
            for name in ("import_float", "quantized"):
                row[name]["max_abs_f_minus_nvnmd"] = float(np.abs(row[name]["_f"] - row["nvnmd_float"]["_f"]).max())
            for name in MODELS:
                del row[name]["_f"]
            rows.append(row)
        print(f"{s.name}: {len(rows)} frames so far, {time.time() - t1:.0f} s", flush=True)
    res = rmse_rows(rows)
    diff = {name: {"max_abs_force_eV_per_A": max(r[name]["max_abs_f_minus_nvnmd"] for r in rows),
                   "max_abs_energy_meV_per_atom": 1e3 * max(abs(r[name]["e"] - r["nvnmd_float"]["e"]) / r["natoms"]
                                                            for r in rows)}
            for name in ("import_float", "quantized")}
    command = "python examples/GeTe/experiments/nvnmd_accuracy.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    report = {"command": command, "source": provenance["import"], "model": str(path), "model_hash": qm.hash,
              "data": str(data), "frames": f"every {args.every}th frame of each of {len(systems)} systems",
              "energy_note": ("no energy shift in the MDPU-era file: raw energies are off by a constant per type; "
                              "every frame has 108 Ge + 108 Te, so one constant per atom is fitted (over all "
                              "frames, per model) for the 'shifted' RMSE"),
              "rmse": res, "vs_nvnmd_float": diff, "quantize_seconds": t_quant, "evaluate_seconds": time.time() - t1,
              "frames_list": rows}
    (out / "nvnmd-accuracy.json").write_text(json.dumps(report, indent=1))
    table = text_table(res)
    text = (f"# NVNMD v0 GeTe file vs DFT (216-atom AIMD)\n\nWritten by `{command}`.\n\n{table}\n\n"
            f"largest difference from the NVNMD float64 evaluation: "
            + "; ".join(f"{k}: {v['max_abs_energy_meV_per_atom']:.4f} meV/atom, {v['max_abs_force_eV_per_A'] * 1e3:.2f} "
                        f"meV/Å (force component)" for k, v in diff.items()) + "\n")
    (out / "nvnmd-accuracy.txt").write_text(text)
    print(text)
    print(f"wrote {out / 'nvnmd-accuracy.json'}, {out / 'nvnmd-accuracy.txt'}")


if __name__ == "__main__":
    main()
