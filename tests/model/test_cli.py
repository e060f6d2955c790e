"""`python -m model`: every command end to end on small generated data, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contract import modelfile
from contract.paths import EXAMPLE_MODEL
from model.data import System, write_deepmd
from support import REPO, random_structure, tiny_model, tiny_qm


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "model", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=600)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Frames labelled by the tiny float model itself (so its own RMSE is zero up to float rounding)."""
    from model.batch import make_batch
    from model.network import evaluate
    model, _ = tiny_model()
    frames = [random_structure(natoms=32, box=9.0, seed=40 + k, triclinic=False) for k in range(6)]
    types = frames[0][2]
    coords = np.stack([f[0] for f in frames])
    cells = np.stack([f[1] for f in frames])
    s = System(name="synthetic", type_map=["Ge", "Te"], types=types, coords=coords, cells=cells, pbc=True)
    b = make_batch([(s, k) for k in range(len(frames))], model.cfg.rcut)
    e, f, v, _ = evaluate(model, b.rij, b.center, b.neighbor, b.atype, b.frame_of_atom, b.nframes)
    s.energies, s.forces, s.virials = e.numpy(), f.numpy().reshape(len(frames), -1, 3), v.numpy()
    path = tmp_path_factory.mktemp("data") / "sys"
    write_deepmd(s, path)
    return path


def test_no_arguments_explains_itself():
    r = run()
    assert r.returncode == 0
    for cmd in ("train", "quantize", "test", "info", "example"):
        assert f"python -m model {cmd}" in r.stdout


def test_example_prints_an_existing_model():
    r = run("example")
    assert r.returncode == 0
    path = Path(r.stdout.strip())
    assert path.is_absolute() and path == EXAMPLE_MODEL and path.exists()
    modelfile.load(path)  # loads and validates


def test_test_command_writes_metrics_and_plot(labelled, tmp_path):
    model_path = tmp_path / "tiny.npz"
    modelfile.save(tiny_qm(), model_path)
    r = run("test", model_path, labelled, "--json", tmp_path / "m.json", "--plot", tmp_path / "p.png",
            "--csv", tmp_path / "e.csv")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    # Labels come from this float model; the file stores its weights rounded to float32 (~1e-8 relative).
    assert m["float"]["rmse_e"] < 1e-6 and m["float"]["rmse_f"] < 1e-5
    assert 0 < m["quantized"]["rmse_f"] < 1e-3 and m["quantized"]["rmse_e"] < 1e-4
    assert m["frames"] == 6 and m["model_hash"] == tiny_qm().hash
    assert (tmp_path / "p.png").stat().st_size > 10000
    assert len((tmp_path / "e.csv").read_text().splitlines()) == 7


def test_train_then_quantize(labelled, tmp_path):
    cfg = {"model": {"type_map": ["Ge", "Te"], "sel": [40, 40], "fit_neurons": [32, 32, 32]},
           "data": {"systems": [str(labelled)], "valid_fraction": 0.34, "seed": 1},
           "training": {"steps": 6, "disp_freq": 3, "save_freq": 3, "decay_steps": 2}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    r = run("train", tmp_path / "cfg.json", "-o", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    for f in ("model.pt", "ckpt-3.pt", "ckpt-6.pt", "lcurve.out", "lcurve.png", "train.json"):
        assert (tmp_path / "run" / f).exists(), f
    assert len((tmp_path / "run" / "lcurve.out").read_text().splitlines()) == 1 + 3
    r = run("quantize", tmp_path / "run" / "model.pt", "-o", tmp_path / "q.npz", "--finetune-steps", "2",
            "--eval-frames", "2", "--calib-frames", "2")
    assert r.returncode == 0, r.stderr
    qm = modelfile.load(tmp_path / "q.npz")
    q = qm.provenance["quantization"]
    assert {"float", "quantized_before_finetune", "quantized_after_finetune"} <= set(q)
    assert qm.fit[0][0].W.shape == (128, 32)
    r = run("info", tmp_path / "q.npz")
    assert r.returncode == 0 and "formats:" in r.stdout and qm.hash in r.stdout
    # r_min comes from the training split's every frame, recorded with the distance it came from
    rec = qm.provenance["r_min"]
    assert rec["r_min"] == qm.config.r_min < rec["training_min_distance"] and rec["frames"] >= 1
    assert f"training data's shortest distance {rec['training_min_distance']:.4f} Å" in r.stdout


def test_info_of_the_bundled_model_shows_r_min_and_the_training_data_shortest_distance():
    r = run("info", EXAMPLE_MODEL)
    assert r.returncode == 0, r.stderr
    assert "r_min 1.85 Å: the tables start here" in r.stdout
    assert "training data's shortest distance 2.0633 Å (3840 frames" in r.stdout


def test_errors_are_one_clear_line(tmp_path):
    r = run("info", tmp_path / "missing.npz")
    assert r.returncode == 2 and "no such model file" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    r = run("test", bad, tmp_path)
    assert r.returncode == 2 and "corrupt or truncated" in r.stderr


def test_demo_main_job(tmp_path):
    r = run("demo", "--no-dft", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["reference"]["flags"] == 0
    assert abs(report["reference_minus_float"]["energy_meV_per_atom"]) < 0.1
    assert (tmp_path / "forces.csv").exists()
