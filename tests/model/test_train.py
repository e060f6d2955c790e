"""model.train: data-derived hyper-parameters."""

from __future__ import annotations

import numpy as np
import pytest
from support import as_system, random_structure

from contract.config import ModelConfig
from model.data import write_deepmd
from model.train import DataConfig, prepare


def _sb_data(tmp_path, dmin=2.9):
    pos, cell, types = random_structure(natoms=24, box=11.0, dmin=dmin, seed=1, ntypes=1)
    system = as_system(pos, cell, types, type_map=("Sb",))
    system.energies = np.array([-100.0])
    system.forces = pos[None] * 0.0
    write_deepmd(system, tmp_path / "sb")
    return DataConfig(systems=[str(tmp_path / "sb")], valid_fraction=0.0)


def test_prepare_sets_the_s_statistics_and_leaves_r_min_to_the_quantizer(tmp_path):
    cfg = ModelConfig(type_map=["Sb"], sel=[60], rcut=6.0, rcut_smth=2.0, r_min=1.23)
    _, _, stats = prepare(cfg, _sb_data(tmp_path), seed=0)
    assert stats["min_distance"] >= 2.9
    assert cfg.r_min == 1.23  # the tables' start is chosen by model.quantize from every training frame
    assert cfg.s_std == stats["s_std"] > 0 and cfg.s_mean == stats["s_mean"] > 0


def test_prepare_refuses_data_with_more_neighbours_than_sel(tmp_path):
    cfg = ModelConfig(type_map=["Sb"], sel=[4], rcut=6.0, rcut_smth=2.0)
    with pytest.raises(ValueError, match=r"neighbours of type Sb inside rcut=6.0, more than sel\[0\]=4"):
        prepare(cfg, _sb_data(tmp_path), seed=0)
