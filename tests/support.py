"""Helpers shared by the tests: where the third-party data lives, and small generated models."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from contract.paths import GETE_AIMD, shared_data

REPO = Path(__file__).resolve().parents[1]
#: ../shared/data next to the checkout (present in CI); DPFPGA_SHARED_DATA overrides.
SHARED_DATA = shared_data()
GETE_216 = SHARED_DATA / GETE_AIMD


def require_shared(path: Path = SHARED_DATA) -> Path:
    if not path.exists():
        pytest.skip(f"third-party data not available at {path} (it lives in ../shared/data next to the checkout)")
    return path


#: the package each teacher kind of science.teachers needs (the optional [teachers] extra)
TEACHER_PACKAGES = {"sevenn": "sevenn", "mace": "mace"}


def require_teacher(spec: str) -> str:
    """Skip unless teacher `spec` (e.g. sevenn:7net-0, mace:MODEL_FILE) can be made here: its package from the
    [teachers] extra and, for a model file, the file (the GST teacher lives in ../shared/data/GST)."""
    kind, _, arg = spec.partition(":")
    if kind in TEACHER_PACKAGES and importlib.util.find_spec(TEACHER_PACKAGES[kind]) is None:
        pytest.skip(f"teacher {spec} needs the [teachers] extra (pip install -e '.[teachers]')")
    if kind == "mace":
        require_shared(Path(arg))
    return spec


def random_structure(natoms=40, box=10.0, ntypes=2, dmin=2.2, seed=0, triclinic=True):
    """Random periodic structure with no pair closer than dmin (rejection sampling)."""
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * box
    if triclinic:
        cell = cell + rng.uniform(-0.15, 0.15, (3, 3)) * box * np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0]])
    inv = np.linalg.inv(cell)
    pos, tries = [], 0
    while len(pos) < natoms:
        tries += 1
        if tries > 200 * natoms:
            raise RuntimeError(f"cannot place {natoms} atoms {dmin} Å apart in a {box} Å box")
        p = rng.random(3) @ cell
        ok = True
        for q in pos:
            d = p - q
            d = d - np.round(d @ inv) @ cell
            if d @ d < dmin * dmin:
                ok = False
                break
        if ok:
            pos.append(p)
    types = np.arange(natoms) % ntypes
    rng.shuffle(types)
    return np.array(pos), cell, types


def as_system(pos, cell, types, type_map=("Ge", "Te"), name="random"):
    from model.data import System
    return System(name=name, type_map=list(type_map), types=types, coords=pos[None], cells=cell[None], pbc=True)


@functools.lru_cache(maxsize=None)
def tiny_model(seed: int = 3, **arch):
    """A randomly initialised float model with the default architecture (or `arch`: embed_neurons,
    axis_neurons, fit_neurons), calibrated on random structures."""
    import torch
    from contract.config import ModelConfig
    from model.network import DeepPot
    from model.train import choose_desc_shift
    cfg = ModelConfig(sel=[40, 40], r_min=1.6, s_mean=0.1, s_std=0.1,
                      **{k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()})
    model = DeepPot(cfg, seed=seed)
    systems = [as_system(*random_structure(seed=k)) for k in range(2)]
    cfg.desc_shift = choose_desc_shift(model, systems)
    with torch.no_grad():
        model.bias_atom_e[:] = torch.tensor([-164.0, -165.0])
    return model, systems


@functools.lru_cache(maxsize=None)
def tiny_qm(seed: int = 3, **arch):
    """tiny_model quantized; `arch` as tiny_model's, as tuples (a cache key)."""
    from model.quantize import quantize
    model, systems = tiny_model(seed, **arch)
    return quantize(model, systems, nframes=2, r_min=model.cfg.r_min)


def seed_rate_dataflow():
    """The dataflow knobs `python -m gen build --cycles-per-atom 70` chooses for the bundled model (the
    seed's 70 cycles per atom at its 47.95 mean neighbours; the test model has the same shape)."""
    from gen import cycles
    from gen.folding import fold_for
    return fold_for(70, cycles.Shape(), 47.95)


#: the smallest architecture whose dataflow pipeline at maximum folding fits the LFE5U-85F (as
#: examples/GeTe/recipe-small.json)
ECP5_ARCH = {"embed_neurons": (4, 8, 1), "axis_neurons": 1, "fit_neurons": (1,)}


def records_for(qm, seed=0, natoms=40):
    """Quantized neighbour records of a random periodic structure: (records, blocks, (pos, cell, types))."""
    from model.assembly import neighbor_blocks, quantize_records
    pos, cell, types = random_structure(natoms=natoms, seed=seed)
    nb = neighbor_blocks(qm, pos, cell, True, types)
    return quantize_records(qm, nb), nb, (pos, cell, types)
