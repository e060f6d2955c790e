#!/usr/bin/env python3
"""Error of a GST model file against the 200 DFT frames, binned by volume per atom and by DFT energy.
(Issue 9; a measurement, not a recipe.)

    python examples/GST/experiments/vs_dft_by_volume.py model/examples/GST-mace.npz

Prints, per volume bin (Å³/atom), the number of frames, the mean energy error (model - DFT, meV/atom) and
the force RMSE (meV/Å) of the quantized model (the bit-exact reference), then the mean energy error per
quartile of the DFT energy per atom.  docs/Sb-GST.md and docs/figures/gst-vs-dft-by-volume.json hold the
figures for the one-density and the three-density models.
"""
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from contract.paths import shared_data  # noqa: E402
from contract import modelfile  # noqa: E402
from model.data import load_systems  # noqa: E402
from model.metrics import collect, predict_quantized  # noqa: E402

DFT = shared_data() / "GST" / "GST-dft-validate.extxyz"
BINS = [(25, 28), (28, 29.5), (29.5, 31), (31, 35)]

qm = modelfile.load(sys.argv[1])
items = [(s, f) for s in load_systems(DFT, type_map=qm.config.type_map) for f in range(s.nframes)]
c = collect(lambda system, f: predict_quantized(qm, system, f), items, "quantized reference")
per_frame_df = np.split(c["f_pred"] - c["f_ref"], np.cumsum(3 * c["natoms"])[:-1])
# volume per atom, energy error per atom, mean squared force error, DFT energy per atom
rows = np.stack([[abs(np.linalg.det(s.cells[f])) / s.natoms for s, f in items],
                 (c["e_pred"] - c["e_ref"]) / c["natoms"], [np.mean(d ** 2) for d in per_frame_df],
                 c["e_ref"] / c["natoms"]], axis=1)
by_volume = {}
for lo, hi in BINS:
    m = (rows[:, 0] >= lo) & (rows[:, 0] < hi)
    by_volume[f"{lo}-{hi}"] = {"frames": int(m.sum()), "mean_E_error_meV_atom": float(rows[m, 1].mean() * 1e3),
                               "F_rmse_meV_A": float(np.sqrt(rows[m, 2].mean()) * 1e3)}
by_energy = [{"E_dft_eV_atom": [float(rows[q, 3].min()), float(rows[q, 3].max())],
              "mean_E_error_meV_atom": float(rows[q, 1].mean() * 1e3)}
             for q in np.array_split(np.argsort(rows[:, 3]), 4)]
print(json.dumps({"model_hash": modelfile.content_hash(qm),
                  "by_volume_per_atom": by_volume, "by_dft_energy_quartile": by_energy}, indent=1))
