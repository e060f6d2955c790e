"""Writes tests/model/data/dpmodel-*: small DeePMD-kit v3 models in its native format, written by DeePMD-kit
itself, and the energies and forces DeePMD-kit computes for them, for tests/model/test_dpmodel.py.

Run by hand where deepmd-kit is installed (it is not a dependency: its wheel registers a LAMMPS plugin
that this project's LAMMPS must not load), from the repository root:

    python tests/model/make_dpmodel_fixture.py        # deepmd-kit 3.2.0, pure NumPy backend (dpmodel)

Models (random weights, DeePMD's statistics set per centre type as its training sets them; fitting
resnet_dt false: a timestep on residual layers, DeePMD's default, is refused by our import):
  dpmodel-se_e2_a.dp / .yaml   se_e2_a, sel [9, 8], embedding [2, 4], axis 2, fitting [6, 6] (importable)
  dpmodel-fit-resnet0.dp       the same with fitting [8, 8] from 8 inputs: DeePMD's layer-0 residual,
                               which our fitting net does not have (refused)
Expected (dpmodel-expected.json): per structure the positions, cell and types, DeePMD's total and atomic
energies (its dpmodel `call`) and forces as central differences of that energy (h = 1e-5 Å, float64:
error ~1e-9 eV/Å).
"""

import json
import sys
from pathlib import Path

import numpy as np
from deepmd import __version__ as deepmd_version
from deepmd.dpmodel.model.model import get_model
from deepmd.dpmodel.utils.serialization import save_dp_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from support import random_structure  # noqa: E402

OUT = HERE / "data"


def model(fit, seed):
    m = get_model({"type_map": ["A", "B"], "descriptor": {"type": "se_e2_a", "sel": [9, 8], "rcut": 4.0,
                   "rcut_smth": 1.5, "neuron": [2, 4], "axis_neuron": 2, "seed": seed},
                   "fitting_net": {"neuron": list(fit), "resnet_dt": False, "seed": seed + 1}})
    d = m.serialize()
    rng = np.random.default_rng(seed)
    nnei = 17
    davg = np.zeros((2, nnei, 4))
    davg[:, :, 0] = rng.uniform(0.2, 0.4, (2, 1))
    dstd = np.repeat(rng.uniform(0.25, 0.4, (2, 1, 2)), [1, 3], axis=2) * np.ones((2, nnei, 4))
    d["descriptor"]["@variables"]["davg"], d["descriptor"]["@variables"]["dstd"] = davg, dstd
    d["fitting"]["@variables"]["bias_atom_e"] = np.array([[-4.25], [-3.5]])
    d["@variables"]["out_bias"] = np.array([[[0.125], [-0.0625]]])
    return type(m).deserialize(d), d


def energy(m, pos, cell, types):
    out = m.call(pos.reshape(1, -1), types.reshape(1, -1), cell.reshape(1, 9))
    return float(out["energy"][0, 0]), out["atom_energy"][0, :, 0]


def main():
    OUT.mkdir(exist_ok=True)
    m, d = model((6, 6), seed=11)
    meta = {"software": "deepmd-kit", "version": deepmd_version}
    for suffix in (".dp", ".yaml"):
        save_dp_model(str(OUT / f"dpmodel-se_e2_a{suffix}"), {"model": d, "model_def_script": {},
                                                            "@variables": {"min_nbor_dist": 1.9}})
    _, d0 = model((8, 8), seed=12)
    save_dp_model(str(OUT / "dpmodel-fit-resnet0.dp"), {"model": d0, "model_def_script": {}})
    cases = []
    for seed in (6, 7):
        pos, cell, types = random_structure(natoms=12, box=7.0, dmin=1.9, seed=seed)
        e, e_atom = energy(m, pos, cell, types)
        f = np.zeros_like(pos)
        h = 1e-5
        for a in range(len(pos)):
            for x in range(3):
                p = pos.copy()
                p[a, x] += h
                ep = energy(m, p, cell, types)[0]
                p[a, x] -= 2 * h
                em = energy(m, p, cell, types)[0]
                f[a, x] = -(ep - em) / (2 * h)
        cases.append({"positions": pos.tolist(), "cell": cell.tolist(), "types": types.tolist(), "energy": e,
                      "atom_energy": e_atom.tolist(), "forces": f.tolist()})
    (OUT / "dpmodel-expected.json").write_text(json.dumps({**meta, "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
