"""model.train: data-derived hyper-parameters."""

from __future__ import annotations

import math

import numpy as np
from support import as_system, random_structure

from model.config import ModelConfig
from model.data import write_deepmd
from model.train import DataConfig, prepare


def test_r_min_stays_below_rcut_smth_when_the_data_has_no_short_bonds(tmp_path):
    """Sb has no bond under 2.8 Å: 0.85 x the shortest distance would put the tables' start above
    rcut_smth = 2.0, which the model file forbids; r_min is held just below it instead."""
    pos, cell, types = random_structure(natoms=24, box=11.0, dmin=2.9, seed=1, ntypes=1)
    system = as_system(pos, cell, types, type_map=("Sb",))
    system.energies = np.array([-100.0])
    system.forces = pos[None] * 0.0
    write_deepmd(system, tmp_path / "sb")
    cfg = ModelConfig(type_map=["Sb"], sel=[60], rcut=6.0, rcut_smth=2.0)
    prepare(cfg, DataConfig(systems=[str(tmp_path / "sb")], valid_fraction=0.0), seed=0)
    assert cfg.r_min == 1.95
    cfg.validate()
    cfg2 = ModelConfig(type_map=["Sb"], sel=[60], rcut=6.0, rcut_smth=3.0)
    _, _, stats = prepare(cfg2, DataConfig(systems=[str(tmp_path / "sb")], valid_fraction=0.0), seed=0)
    # the data's own bound (0.85 x the shortest distance, on a 0.05 Å grid) when it is below rcut_smth
    assert stats["min_distance"] >= 2.9 and cfg2.r_min == math.floor(0.85 * stats["min_distance"] * 20) / 20
