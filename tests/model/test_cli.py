"""`python -m model`: every command end to end on small generated data, and its errors."""

from __future__ import annotations

import json
import os
import re
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
    # no --threads, no training.threads: one torch thread (contract.cli.default_threads), not every core
    assert json.loads((tmp_path / "run" / "train.json").read_text())["torch_threads"] == 1
    for f in ("model.pt", "ckpt-3.pt", "ckpt-6.pt", "lcurve.out", "lcurve.png", "train.json"):
        assert (tmp_path / "run" / f).exists(), f
    assert len((tmp_path / "run" / "lcurve.out").read_text().splitlines()) == 1 + 3
    r = run("quantize", tmp_path / "run" / "model.pt", "-o", tmp_path / "q.npz", "--finetune-steps", "2",
            "--eval-frames", "2", "--calib-frames", "2", "--threads", "2")
    assert r.returncode == 0, r.stderr
    # --threads holds through the fine-tuning (train.json's training.threads does not override it)
    assert json.loads(r.stdout[:r.stdout.index("model file:")])["torch_threads"] == 2
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
    # the provenance without --json: data and split, checkpoint, fine-tuning, RMSE before/after
    assert "training data: " in r.stdout and "(validation fraction 0.4, split seed 1" in r.stdout
    assert "QAT fine-tuning 3000 steps at lr 1e-06" in r.stdout
    assert re.search(r"quantized, after QAT +energy RMSE 8\.21 meV/atom, force RMSE 203\.9 meV/Å on 64", r.stdout)
    assert "calibration_ranges" in r.stdout and '"calibration_ranges"' not in r.stdout  # named, not dumped


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


#: every command that runs torch (trains, quantizes or evaluates the float model)
TORCH_COMMANDS = ("train", "quantize", "test", "demo")


def test_every_torch_command_has_threads_defaulting_to_one():
    from contract.cli import default_threads
    from model.cli import cli
    parser = cli.parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    for name in TORCH_COMMANDS:
        option = next((a for a in sub.choices[name]._actions if a.dest == "threads"), None)
        assert option is not None and option.option_strings == ["--threads"], name
        # train's default is the config's training.threads, else default_threads() (resolved in cmd_train)
        assert option.default == (None if name == "train" else default_threads()) == (None if name == "train" else 1)


def test_demo_runs_on_the_threads_asked_for(tmp_path):
    """The default fits a 2-core machine (1 thread: 5-7x faster training there than torch's every-core
    default); --threads N is what torch runs on."""
    for args, want in (((), 1), (("--threads", "2"), 2)):
        r = run("demo", "--no-dft", "-o", tmp_path, *args)
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / "demo.json").read_text())["torch_threads"] == want, args
    r = run("demo", "--no-dft", "-o", tmp_path, "--threads", "-1")
    assert r.returncode == 2 and r.stderr.startswith("error: --threads must be >= 0") and "Traceback" not in r.stderr


def test_parity_plot_tick_labels_do_not_overlap():
    """Energies per atom of a GeTe melt-quench (-164.75 .. -164.45 eV/atom): six-digit tick labels."""
    from model.metrics import parity_figure
    rng = np.random.default_rng(0)
    e = rng.uniform(-164.75, -164.45, 16) * 216
    f = rng.normal(0, 1, 16 * 216 * 3)
    c = {"e_ref": e, "e_pred": e + rng.normal(0, 2, 16), "natoms": np.full(16, 216), "f_ref": f,
         "f_pred": f + rng.normal(0, 0.2, f.size), "v_ref": np.full((16, 9), np.nan), "v_pred": np.zeros((16, 9))}
    fig = parity_figure({"float": c, "quantized": c})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [t.get_window_extent(renderer) for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            assert len(boxes) >= 2
            for a, b in zip(boxes, boxes[1:]):
                assert not a.overlaps(b), (ax.get_xlabel(), axis.axis_name, [t.get_text() for t in axis.get_ticklabels()])


@pytest.mark.shared_data
def test_demo_compares_with_frames_the_model_never_trained_on(tmp_path):
    """The frames of the DFT comparison are named, all on the validation side of the bundled model's own
    split (the model file's provenance), and the README quotes the figures the demo prints."""
    from support import GETE_216, require_shared
    from model.data import load_systems, split_indices
    require_shared(GETE_216)
    r = run("demo", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "demo.json").read_text())["vs_dft"]
    assert m["frames"] == len(m["frame_list"]) == 16 and "never trained on" in r.stdout
    split = modelfile.load(EXAMPLE_MODEL).provenance["data"]
    systems = load_systems(GETE_216)
    sides = {Path(s.name).resolve().relative_to(GETE_216.resolve()).as_posix(): (set(t), set(v)) for s, (t, v) in
             zip(systems, split_indices(systems, split["valid_fraction"], split["seed"]))}
    for frame in m["frame_list"]:
        trained, held_out = sides[frame["system"]]
        assert frame["frame"] in held_out and frame["frame"] not in trained, frame
    readme = (REPO / "README.md").read_text()
    for name in ("float", "quantized"):
        figures = f"{m[name]['rmse_e'] * 1e3:.2f} meV/atom, force RMSE {m[name]['rmse_f'] * 1e3:.1f} meV/Å"
        assert figures in r.stdout and figures in readme, (name, figures)


def test_import_with_calib_writes_the_quantized_model_the_library_makes(tmp_path, capsys):
    """`python -m model import X.pb --calib DATA -o X.npz` == import_graph + quantize on the same frames:
    the same configuration (options included), tables and weights, the same reference integers, and the
    graph's provenance in the file."""
    from deepmd_graph import small_se_a, write_graph
    from model.cli import main
    from model.deepmd import import_graph, read_graph
    from model.quantize import quantize
    from model.reference import evaluate as reference
    from support import as_system, records_for

    pb = write_graph(tmp_path / "m.pb", small_se_a(seed=7, sel=(16, 16), fit=(8, 8)))
    systems = [as_system(*random_structure(natoms=30, box=9.0, dmin=2.0, seed=k), type_map=("A", "B"), name=f"s{k}")
               for k in range(2)]
    for k, s in enumerate(systems):
        write_deepmd(s, tmp_path / "calib" / f"s{k}")
    out = tmp_path / "m.npz"
    assert main(["import", str(pb), "--calib", str(tmp_path / "calib"), "--calib-frames", "2", "-o", str(out)]) == 0
    assert str(out.resolve()) in capsys.readouterr().out

    back = modelfile.load(out)
    model, _ = import_graph(pb)
    direct = quantize(model, [s.remap_types(model.cfg.type_map) for s in systems], nframes=2)
    assert back.config == direct.config and back.config.env_norm and back.config.pad_slots
    assert back.provenance["import"]["sha256"] == read_graph(pb).sha256
    assert back.formats == direct.formats
    a_back, a_direct = modelfile._file_arrays(back), modelfile._file_arrays(direct)
    assert a_back.keys() == a_direct.keys()
    for name in a_direct:
        assert np.array_equal(a_back[name], a_direct[name]), name
    rec, _, _ = records_for(back, seed=4, natoms=30)
    r_back, r_direct = reference(back, rec), reference(direct, rec)
    assert np.array_equal(r_back.energy, r_direct.energy) and np.array_equal(r_back.dEdr, r_direct.dEdr)


def test_import_with_calib_names_missing_data(tmp_path, capsys):
    from deepmd_graph import small_se_a, write_graph
    from model.cli import main
    pb = write_graph(tmp_path / "m.pb", small_se_a(seed=7, sel=(16, 16), fit=(8, 8)))
    missing = tmp_path / "no-such-data"
    assert main(["import", str(pb), "--calib", str(missing), "-o", str(tmp_path / "m.npz")]) != 0
    assert str(missing) in capsys.readouterr().err and not (tmp_path / "m.npz").exists()
