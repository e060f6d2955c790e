"""Record neighbour statistics from a material's own crystal, at its training densities, in a model
file whose training frames are not at hand.

    python examples/record_neighbours.py model/examples/Sb-7net-0.npz examples/Sb/recipe.json \
           [--provenance docs/figures/sb-dataset-provenance.json] [-o OUT.npz]

`python -m gen build` costs a model with the neighbours within rcut per atom that the quantizer
records from the training frames (`provenance["neighbors"]`; examples/record_r_min.py adds them to an
older file from its training split).  The Sb and GST models' training frames are teacher melt-quench
MD that lives under data/, outside this checkout.  This script builds, for each dataset of the
recipe, the crystal its melt-quench started from (science.meltquench.build_structure: the A7 Sb
crystal, the rock-salt GST with random cation vacancies, with the dataset's seed) at the dataset's
volume per atom, counts its neighbours in the same pass the quantizer makes
(model.quantize.scan_training_frames), and records that with a source saying so.  With --provenance
(the datasets' provenance.json, collected in docs/figures/), each structure is checked against the
atom count and volume the dataset recorded.  Only the provenance changes: tables and weights, hence
every result bit, stay as they are; the content hash changes with the header.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from contract import modelfile
from model.data import System
from model.quantize import scan_training_frames


def build_structure(spec: dict, seed: int):
    try:
        from science.meltquench import build_structure as build
    except ImportError:  # before the science/ package existed
        from model.meltquench import build_structure as build
    return build(spec, seed)


def dataset_structures(recipe_path: Path, provenance: dict | None):
    """(dataset name, ase.Atoms) for each dataset of the recipe, as its melt-quench run started."""
    recipe = json.loads(recipe_path.read_text())
    out = []
    for ds in recipe["recipe"]["datasets"]:
        config = json.loads((recipe_path.parent / ds["melt_quench"]).read_text())
        spec = dict(config["structure"])
        if "volume_per_atom" in ds:
            spec["volume_per_atom"] = float(ds["volume_per_atom"])
        name = Path(ds["output"]).name
        atoms = build_structure(spec, int(config.get("seed", 1)))
        if provenance is not None:
            want = provenance[name]["structure"]
            got_v = atoms.get_volume() / len(atoms)
            if len(atoms) != want["natoms"] or abs(got_v - want["volume_per_atom_A3"]) > 1e-6:
                sys.exit(f"error: {name}: built {len(atoms)} atoms at {got_v:.4f} Å^3/atom, the dataset recorded "
                         f"{want['natoms']} at {want['volume_per_atom_A3']:.4f}; nothing written")
        out.append((name, atoms))
    return out


def as_system(name: str, atoms, type_map) -> System:
    symbols = atoms.get_chemical_symbols()
    unknown = sorted(set(symbols) - set(type_map))
    if unknown:
        sys.exit(f"error: {name}: elements {unknown} are not in the model's type map {list(type_map)}")
    types = np.array([list(type_map).index(s) for s in symbols])
    return System(name=name, type_map=list(type_map), types=types, coords=atoms.get_positions()[None],
                  cells=np.array(atoms.get_cell())[None], pbc=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("recipe", type=Path, help="the model's recipe.json (its datasets and their melt-quench configs)")
    ap.add_argument("--provenance", type=Path, help="the datasets' provenance (docs/figures/*-dataset-provenance.json)")
    ap.add_argument("-o", "--out", help="output model file (default: rewrite MODEL)")
    args = ap.parse_args(argv)
    qm = modelfile.load(args.model)
    before = {k: np.array(v) for k, v in qm.arrays().items()}
    provenance = json.loads(args.provenance.read_text()) if args.provenance else None
    structures = dataset_structures(args.recipe, provenance)
    systems = [as_system(name, atoms, qm.config.type_map) for name, atoms in structures]
    builders = sorted({json.loads((args.recipe.parent / ds["melt_quench"]).read_text())["structure"]["builder"]
                       for ds in json.loads(args.recipe.read_text())["recipe"]["datasets"]})
    crystal = {"a7": "A7 crystal", "rocksalt": "rock-salt crystal (random cation vacancies)"}
    kinds = " / ".join(crystal.get(b, f"{b} structure") for b in builders)
    volumes = ", ".join(f"{a.get_volume() / len(a):.1f}" for _, a in structures)
    source = (f"{kinds} ({', '.join(sorted({str(len(a)) for _, a in structures}))} atoms) at {volumes} Å^3/atom, "
              f"one structure per training dataset ({', '.join(n for n, _ in structures)}): the training densities; "
              "the training frames (teacher melt-quench MD under data/) are not in this checkout, so the mean is the "
              "crystals' and the max understates the melt's spread")
    _, neighbours = scan_training_frames(systems, qm.config.rcut, source=source)
    neighbours["structures"] = [
        {"dataset": n, "natoms": len(a), "volume_per_atom_A3": round(a.get_volume() / len(a), 4)} for n, a in structures]
    qm.provenance["neighbors"] = neighbours
    out = args.out or args.model
    old_hash = qm.hash
    qm.hash = ""
    modelfile.save(qm, out)
    after = modelfile.load(out).arrays()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before), \
        "the record must not change a table or a weight"
    per_type = ", ".join(f"{t} {v['mean']}" for t, v in neighbours["per_type"].items())
    print(f"{out}: neighbours within {qm.config.rcut} Å per atom: mean {neighbours['mean']}, max {neighbours['max']} "
          f"({per_type}) from {len(systems)} crystals; hash {old_hash[:12]} -> {qm.hash[:12]} (arrays unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
