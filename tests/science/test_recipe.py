"""Phases of the GeTe data, the per-phase evaluator, the validation split, and `python -m science recipe --short`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data import System, find_systems, load_systems, write_deepmd
from science import phases as ph
from support import GETE_216, REPO, SHARED_DATA, random_structure, require_shared, require_teacher, tiny_model, tiny_qm

GETE_64 = SHARED_DATA / "GeTe-aimd" / "64atom-npt"


# ---- the phase mapping --------------------------------------------------------------------------

def test_folder_rules():
    assert ph.parse_folders("/d/216atom-melt-quench/s3-quench-300K/temp-450K") == \
        ("216atom-melt-quench", "s3-quench-300K", 450)
    assert ph.parse_folders("/d/64atom-npt/data.002") == ("64atom-npt", None, None)
    lab = ph.label_from_folders("/d/x/s3-quench-300K/temp-500K")
    assert (lab.phase, lab.group, lab.temperature) == ("amorphous", "glass", 500)
    assert ph.label_from_folders("/d/x/s3-quench-300K/temp-550K").phase == "liquid"
    assert ph.label_from_folders("/d/x/s3-quench-300K/temp-550K", amorphous_max_k=600).phase == "amorphous"
    assert ph.label_from_folders("/d/x/s2-melt-1000K/temp-1000K").group == "melt"
    # a melt stage below T_m could still be a heated crystal: no phase
    assert ph.label_from_folders("/d/x/s2-melt-1000K/temp-900K").phase is None
    assert ph.label_from_folders("/d/x/s4-anneal/temp-600K").phase is None
    assert ph.label_from_folders("/d/64atom-npt/data.002") is None


@pytest.mark.parametrize("seed", [0, 5], ids=lambda s: f"seed{s}")
def test_translational_order_tells_crystal_from_disorder(seed):
    from ase.build import bulk
    atoms = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((2, 2, 2))
    types = np.array([0 if e == "Ge" else 1 for e in atoms.get_chemical_symbols()])
    rng = np.random.default_rng(seed)
    hot = atoms.positions[None] + rng.normal(0, 0.15, (3, len(atoms), 3))
    crystal = System(name="/d/64atom-npt/data.901", type_map=["Ge", "Te"], types=types, coords=hot,
                     cells=np.repeat(atoms.cell.array[None], 3, 0))
    order = ph.translational_order(crystal)
    # Debye-Waller: exp(-k^2 <u_x^2> / 2) with k = 2pi*4/12 Å^-1, u_x = 0.15 Å
    assert np.allclose(order, np.exp(-(2 * np.pi * 4 / 12.0) ** 2 * 0.15 ** 2 / 2), atol=0.08)
    assert ph.label_system(crystal).phase == "crystalline"
    pos = np.stack([random_structure(natoms=64, box=12.0, seed=seed * 10 + k, triclinic=False)[0] for k in range(3)])
    liquid = replace(crystal, coords=pos, name="/d/64atom-npt/data.902")
    assert ph.translational_order(liquid).max() < 0.4
    lab = ph.label_system(liquid)
    assert lab.phase is None and lab.group == "disordered"
    # not a rock-salt-sized cell: cannot be classified by structure
    odd = System(name="/d/other/sys", type_map=["Ge", "Te"], types=types[:40], coords=pos[:, :40], cells=crystal.cells)
    assert ph.label_system(odd).phase is None


@pytest.mark.parametrize("seed", [0, 2], ids=lambda s: f"seed{s}")
def test_quench_evidence_tells_a_cage_from_diffusion(seed):
    rng = np.random.default_rng(seed)
    sites, cell, types = random_structure(natoms=40, box=10.0, seed=seed)
    cage = sites[None] + rng.normal(0, 0.1, (50, 40, 3))  # vibration around fixed sites
    walk = sites[None] + np.cumsum(rng.normal(0, 0.3, (50, 40, 3)), axis=0)  # diffusion, unwrapped
    wrapped = walk @ np.linalg.inv(cell) % 1.0 @ cell  # the same walk folded into the box

    def make(name, x):
        return System(name=f"/d/x/s3-quench-300K/{name}", type_map=["Ge", "Te"], types=types, coords=x,
                      cells=np.repeat(cell[None], len(x), 0))

    ev = {e["temperature_K"]: e for e in ph.quench_evidence([make("temp-300K", cage), make("temp-900K", walk),
                                                             make("temp-950K", wrapped)], lag=40)}
    assert ev[300]["lag"] == 40 and ev[300]["phase"] == "amorphous" and ev[900]["phase"] == "liquid"
    assert ev[300]["mobile_fraction"] == 0 and ev[900]["mobile_fraction"] > 0.9
    assert abs(ev[300]["msd_A2"] - 2 * 3 * 0.1 ** 2) < 0.01  # two independent positions, 3 components
    assert ev[950]["wrapped"] and ev[950]["msd_A2"] is None and not ev[900]["wrapped"]


@pytest.mark.shared_data
def test_phase_mapping_on_the_real_folders():
    root = require_shared(GETE_216)
    labels = {p.relative_to(root).as_posix(): ph.label_from_folders(p) for p in find_systems(root)}
    assert len(labels) == 34 and all(lab is not None for lab in labels.values())
    for name, lab in labels.items():
        assert name.endswith(f"temp-{lab.temperature}K") and lab.dataset == "216atom-melt-quench"
    by_phase = {}
    for name, lab in labels.items():
        by_phase.setdefault((lab.phase, lab.group), []).append(lab.temperature)
    assert sorted(by_phase[("amorphous", "glass")]) == [300, 350, 400, 450, 500]
    assert sorted(by_phase[("liquid", "supercooled")]) == list(range(550, 951, 50))
    assert sorted(by_phase[("liquid", "melt")]) == list(range(1000, 1951, 50))
    assert all(name.startswith("s2-melt") for name, lab in labels.items() if lab.group == "melt")
    # moving the cut moves the quench stages, and only them
    moved = [ph.label_from_folders(root / n, amorphous_max_k=600).phase for n in labels]
    assert moved.count("amorphous") == 7


@pytest.mark.shared_data
def test_crystalline_64_atom_systems_by_structure():
    systems = load_systems(require_shared(GETE_64))
    labels = {Path(s.name).name: ph.label_system(s) for s in systems}
    crystalline = sorted(n for n, lab in labels.items() if lab.phase == "crystalline")
    assert crystalline == ["data-train-gete", "data.001", "data.002", "data.003", "data.005", "data.006",
                           "data.007", "data.008", "data.009"]
    # a clean gap between the two groups, far from the threshold
    orders = {n: lab.order for n, lab in labels.items()}
    assert min(orders[n] for n in crystalline) > 0.65
    assert max(o for n, o in orders.items() if n not in crystalline) < 0.2
    assert all(lab.phase is None for n, lab in labels.items() if n not in crystalline)


# ---- tiny generated data: the evaluator and the split ---------------------------------------------

def _label(model, system: System, energy_shift_per_atom=0.0, noise=0.0, seed=0) -> System:
    """Energies and forces from the tiny model itself, plus noise and a per-atom energy shift."""
    from model.metrics import predict_float
    rng = np.random.default_rng(seed)
    e, f = [], []
    for k in range(system.nframes):
        ek, fk, _ = predict_float(model, system, k)
        e.append(ek + system.natoms * (energy_shift_per_atom + noise * rng.normal()))
        f.append(fk + noise * 10 * rng.normal(size=fk.shape))
    return replace(system, energies=np.array(e), forces=np.stack(f))


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    """A small on-disk copy of the data layout: melt/quench temperature folders (3 frames of 40 random
    atoms each) and a 64-atom rock-salt 'NPT' system on an energy reference 0.34 eV/atom higher."""
    from ase.build import bulk
    model, _ = tiny_model()
    root = tmp_path_factory.mktemp("tree")
    train_root = root / "216atom-melt-quench"
    for k, (stage, t) in enumerate([("s2-melt-1000K", 1200), ("s3-quench-300K", 300), ("s3-quench-300K", 450),
                                    ("s3-quench-300K", 800)]):
        frames = [random_structure(natoms=40, box=10.0, seed=100 + 10 * k + j) for j in range(3)]
        s = System(name="x", type_map=["Ge", "Te"], types=frames[0][2], coords=np.stack([f[0] for f in frames]),
                   cells=np.stack([f[1] for f in frames]))
        write_deepmd(_label(model, s, noise=0.004, seed=k), train_root / stage / f"temp-{t}K")
    atoms = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(3)
    types = np.array([0 if e == "Ge" else 1 for e in atoms.get_chemical_symbols()])
    crystal = System(name="x", type_map=["Ge", "Te"], types=types,
                     coords=atoms.positions[None] + rng.normal(0, 0.1, (3, len(atoms), 3)),
                     cells=np.repeat(atoms.cell.array[None], 3, 0))
    write_deepmd(_label(model, crystal, energy_shift_per_atom=0.34, noise=0.001, seed=9),
                 root / "64atom-npt" / "data.001")
    return root


def test_validation_frames_are_the_ones_training_held_out(tiny_tree):
    from contract.config import ModelConfig
    from model.train import DataConfig, prepare
    for seed in (1, 7):
        systems = load_systems(tiny_tree / "216atom-melt-quench")
        picked = ph.validation_frames(systems, 0.4, seed)
        _, valid, _ = prepare(ModelConfig(sel=[40, 40]), DataConfig([str(tiny_tree / "216atom-melt-quench")], 0.4,
                                                                   seed), seed)
        ours = np.stack([systems[k].coords[f] for k, f in picked])
        theirs = np.concatenate([v.coords for v in valid])
        assert ours.shape == theirs.shape == (4, 40, 3)  # round(3 * 0.4) = 1 frame of each system
        assert np.array_equal(ours, theirs), f"seed {seed}"
    assert ph.validation_frames(systems, 0.4, 1) != ph.validation_frames(systems, 0.4, 2)


@pytest.mark.shared_data
def test_validation_frames_match_training_on_the_real_data():
    from contract.config import ModelConfig
    from model.train import load_json_config, prepare
    require_shared(GETE_216)
    _, dcfg, tcfg = load_json_config(REPO / "examples" / "GeTe" / "train-example.json")
    dcfg = replace(dcfg, systems=[str(GETE_216)])
    systems = [s.remap_types(["Ge", "Te"]) for s in load_systems(dcfg.systems)]
    picked = ph.validation_frames(systems, dcfg.valid_fraction, dcfg.seed)
    _, valid, _ = prepare(ModelConfig(), dcfg, tcfg.seed)
    assert len(picked) == sum(v.nframes for v in valid) == 2560
    at = 0
    for v in valid:
        k = next(i for i, s in enumerate(systems) if s.name == v.name)
        mine = [f for kk, f in picked if kk == k]
        assert np.array_equal(systems[k].coords[mine], v.coords)
        at += v.nframes
    assert at == len(picked)


def test_per_phase_rmse_combines_to_overall(tiny_tree):
    from model.metrics import collect, predict_float, predict_quantized, rmse_of
    qm = tiny_qm()
    model, _ = tiny_model()
    loaded = ph.load_frames(tiny_tree / "216atom-melt-quench", 0.4, 1, ["Ge", "Te"],
                            test_systems=[tiny_tree / "64atom-npt"])
    assert [fr.role for fr in loaded.frames].count("test") == 3
    result = ph.evaluate(qm, loaded.frames, float_net=model)
    rows = result.metrics["rows"]
    assert set(rows) == {"overall", "crystalline", "liquid", "liquid: melt", "liquid: supercooled", "amorphous"}
    assert rows["overall"]["frames"] == 4 and rows["amorphous"]["frames"] == 2 and rows["liquid"]["frames"] == 2
    for name in ("float", "quantized"):
        # phases partition the validation frames: MSEs add up weighted by frames (energy) and atoms (force)
        parts = [rows["amorphous"], rows["liquid"]]
        mse_e = sum(r["frames"] * r[name]["rmse_e"] ** 2 for r in parts) / sum(r["frames"] for r in parts)
        mse_f = sum(r["atoms"] * r[name]["rmse_f"] ** 2 for r in parts) / sum(r["atoms"] for r in parts)
        assert np.isclose(mse_e, rows["overall"][name]["rmse_e"] ** 2, rtol=1e-12)
        assert np.isclose(mse_f, rows["overall"][name]["rmse_f"] ** 2, rtol=1e-12)
        subs = [rows["liquid: melt"], rows["liquid: supercooled"]]
        assert np.isclose(sum(r["atoms"] * r[name]["rmse_f"] ** 2 for r in subs) / rows["liquid"]["atoms"],
                          rows["liquid"][name]["rmse_f"] ** 2, rtol=1e-12)
        # the overall row equals metrics.rmse_of over the same frames, computed independently
        items = [(fr.system, fr.frame) for fr in loaded.frames if fr.role == "validation"]
        predict = (lambda s, f: predict_float(model, s, f)) if name == "float" else \
            (lambda s, f: predict_quantized(qm, s, f))
        direct = rmse_of(collect(predict, items, name))
        assert np.isclose(direct["rmse_e"], rows["overall"][name]["rmse_e"], rtol=1e-10)
        assert np.isclose(direct["rmse_f"], rows["overall"][name]["rmse_f"], rtol=1e-10)
        # the crystalline test set's own energy reference is removed, and said so
        assert rows["crystalline"]["energy"] == "offset removed for 64atom-npt"
        assert abs(result.energy_offsets[name]["64atom-npt"] + 0.34) < 0.01
        assert rows["crystalline"][name]["rmse_e"] < 0.01
        assert rows["amorphous"]["energy"] == "as labelled"
    # the labels are the float model's own plus noise: float RMSE = the noise, quantized within a hair
    assert rows["overall"]["float"]["rmse_f"] < 0.08
    assert [r["temperature_K"] for r in result.metrics["per_temperature"]] == [300, 450, 800, 1200]
    assert [(Path(r["system"]).name, r["frames"]) for r in result.metrics["per_system"]] == [("data.001", 3)]
    text = ph.markdown_table(result.metrics)
    assert "| **crystalline** (test set) | 3 |" in text and "7.51 | 149.63" in text


@pytest.mark.parametrize("seed", [0, 4], ids=lambda s: f"seed{s}")
def test_frames_per_phase_cap(tiny_tree, seed):
    loaded = ph.load_frames(tiny_tree / "216atom-melt-quench", 0.4, 1, ["Ge", "Te"],
                            test_systems=[tiny_tree / "64atom-npt"])
    picked = ph.pick_frames(loaded.frames, 1, seed)
    assert sorted(fr.label.phase for fr in picked) == ["amorphous", "crystalline", "liquid"]
    assert ph.pick_frames(loaded.frames, None) == loaded.frames


def test_phases_command(tiny_tree, tmp_path, capsys):
    from contract import modelfile
    from science.cli import main
    model_file = tmp_path / "tiny.npz"
    modelfile.save(tiny_qm(), model_file)
    threads = torch.get_num_threads()
    try:  # in-process (a subprocess costs seconds of imports); the command sets torch's thread count
        # no training data in the tiny model's provenance: the command says what it needs
        assert main(["phases", str(model_file), "-o", str(tmp_path / "none")]) == 2
        assert "records no training data" in capsys.readouterr().err
        assert main(["phases", str(model_file), "--data", str(tiny_tree / "216atom-melt-quench"), "--test-data",
                     str(tiny_tree / "64atom-npt"), "--max-frames-per-phase", "1", "-o", str(tmp_path / "out")]) == 0
    finally:
        torch.set_num_threads(threads)
    p = capsys.readouterr()
    doc = json.loads((tmp_path / "out" / "accuracy.json").read_text())
    assert {k: r["frames"] for k, r in doc["metrics"]["rows"].items()} == \
        {"overall": 2, "crystalline": 1, "liquid": 1, "amorphous": 1}
    assert doc["split_check"] is None and doc["model_hash"] == modelfile.load(model_file).hash
    for f in ("accuracy.md", "parity-all.png", "parity-crystalline.png", "parity-phases.png"):
        assert (tmp_path / "out" / f).is_file(), f
    assert "| **overall**" in p.out
    # the time it will take, said before it starts
    hint = re.search(r"^evaluating (\d+) frames with the float model and the quantized reference: about (\d+) s", p.out, re.M)
    assert hint and p.out.index(hint.group(0)) < p.out.index("| **overall**"), p.out
    assert int(hint.group(1)) == len(ph.pick_frames(ph.load_frames(
        [str(tiny_tree / "216atom-melt-quench")], 0.4, 1, ["Ge", "Te"], [str(tiny_tree / "64atom-npt")], 500).frames, 1, 0))


def test_the_evaluation_hint_uses_the_documented_measurement():
    """MEASURED_S_PER_FRAME is the docs' own evaluation (docs/figures/gete-accuracy.json), not a guess."""
    from science.recipe import MEASURED_S_PER_FRAME, evaluation_hint
    doc = json.loads((REPO / "docs" / "figures" / "gete-accuracy.json").read_text())
    assert MEASURED_S_PER_FRAME == round(doc["predict_seconds"] / doc["metrics"]["frames"], 2)
    assert evaluation_hint(2560).startswith("evaluating 2560 frames") and "about 10 min" in evaluation_hint(2560)
    assert "--max-frames-per-phase" in evaluation_hint(2560) and "--max-frames-per-phase" not in evaluation_hint(16)


# ---- the recipe -----------------------------------------------------------------------------------

def test_recipe_file_is_the_training_example_plus_its_stages():
    from science.recipe import load_recipe
    raw = json.loads((REPO / "examples" / "GeTe" / "recipe.json").read_text())
    example = json.loads((REPO / "examples" / "GeTe" / "train-example.json").read_text())
    for section in ("model", "data", "training"):
        assert raw[section] == example[section], section
    r = load_recipe(REPO / "examples" / "GeTe" / "recipe.json")
    assert r.stop_at_step == 30000 and r.float_updates == 30001 and r.quantize["finetune_steps"] == 3000
    s = load_recipe(REPO / "examples" / "GeTe" / "recipe.json", short=True)
    assert s.short and s.float_updates <= 100 and s.quantize["finetune_steps"] <= 10
    assert s.evaluation["max_frames_per_phase"] <= 10


def test_stopped_schedule_follows_the_full_runs_learning_rate():
    from science.recipe import _StoppedSchedule
    from model.train import TrainConfig
    full = TrainConfig(steps=60000, decay_steps=2000, lr_stop=3e-7)
    stopped = _StoppedSchedule(**{**full.__dict__, "steps": 30001}, schedule_steps=60000)
    for step in (0, 1999, 2000, 29999, 30000):
        assert stopped.lr(step) == full.lr(step) and stopped.prefactors(step) == full.prefactors(step)
    assert TrainConfig(steps=30001, decay_steps=2000, lr_stop=3e-7).lr(30000) != full.lr(30000)


def _run(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "science", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)


@pytest.mark.shared_data
def test_short_recipe_end_to_end(tmp_path):
    from contract import modelfile
    require_shared(GETE_216)
    require_shared(GETE_64)
    raw = json.loads((REPO / "examples" / "GeTe" / "recipe.json").read_text())
    raw["data"]["systems"] = [str(GETE_216)]
    raw["recipe"]["evaluation"]["test_systems"] = [str(GETE_64)]
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(raw))
    out = tmp_path / "run"
    p = _run("recipe", recipe, "-o", out, "--short", "--threads", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "SHORT RUN" in p.stdout
    for f in ("model.npz", "float/model.pt", "float/lcurve.out", "model-finetune/lcurve.out", "quantize.json",
              "accuracy.json", "accuracy.md", "lcurve.png", "summary.json", "stages.json", "parity-all.png",
              "parity-amorphous.png", "parity-liquid.png", "parity-crystalline.png", "parity-phases.png"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    acc = json.loads((out / "accuracy.json").read_text())
    qm = modelfile.load(out / "model.npz")
    # the metrics are measured on the model file the run wrote, which came from the checkpoint it trained
    assert summary["short"] and "NOT the model's accuracy" in summary["note"]
    assert acc["model_hash"] == summary["model_hash"] == qm.hash
    assert qm.provenance["quantization"]["checkpoint"] == str((out / "float" / "model.pt").resolve())
    assert acc["split_check"]["same_split"]
    assert "SHORT RUN" in (out / "accuracy.md").read_text()
    assert set(acc["metrics"]["rows"]) >= {"overall", "crystalline", "liquid", "amorphous"}
    assert all(r["frames"] <= 4 for k, r in acc["metrics"]["rows"].items() if k != "overall")
    # stopped at step 30 of a 60-step schedule: the final model is the step-30 checkpoint
    final = torch.load(out / "float" / "model.pt", weights_only=False)["state"]
    ckpt = torch.load(out / "float" / "ckpt-30.pt", weights_only=False)["state"]
    assert all(torch.equal(final[k], ckpt[k]) for k in final)
    lcurve = np.loadtxt(out / "float" / "lcurve.out")
    assert lcurve[-1, 0] == 31  # the lr column is the 60-step schedule's, not a 31-step one's
    assert np.isclose(lcurve[-1, 1], 1e-3 * ((3e-7 / 1e-3) ** (10 / 60)) ** 3, rtol=1e-3)
    t = summary["timing"]
    assert t["float_s_per_step"] > 0 and t["full_recipe"]["float_steps"] == 30001
    # a second run reuses both stages and evaluates the same file again
    p = _run("recipe", recipe, "-o", out, "--short", "--threads", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    again = json.loads((out / "summary.json").read_text())
    assert again["stages"]["train"]["reused"] and again["stages"]["quantize"]["reused"]
    assert again["model_hash"] == qm.hash


# ---- recipe.datasets: the teacher-labelled data made by the same command ----------------------------

TOY_MELT_QUENCH = {
    "structure": {"builder": "rocksalt", "anion": "Te", "cations": {"Ge": 2, "Sb": 2, "vacancy": 1},
                  "a": 6.05, "repeat": [1, 1, 5]},
    "teacher": "lj:2.6:0.05", "seed": 3, "type_map": ["Ge", "Sb", "Te"],
    "protocol": {"timestep_fs": 2.0, "sample_every": 4, "checkpoint_every": 5,
                 "stages": [{"folder": "s1-heat", "T": [300, 1500], "steps": 24},
                            {"folder": "s2-melt-1500K", "T": 1500, "steps": 24},
                            {"folder": "s3-quench-300K", "T": [1500, 300], "steps": 32}]},
    "short": {"protocol": {"stages": [{"folder": "s1-heat", "T": [300, 1500], "steps": 8},
                                      {"folder": "s2-melt-1500K", "T": 1500, "steps": 8},
                                      {"folder": "s3-quench-300K", "T": [1500, 300], "steps": 8}]}},
}


def toy_recipe(tmp_path: Path, datasets=None) -> Path:
    """A tiny three-element recipe whose data is one toy melt-quench (Lennard-Jones teacher) it makes itself."""
    (tmp_path / "mq.json").write_text(json.dumps(TOY_MELT_QUENCH))
    tiny = {"steps": 12, "decay_steps": 4, "disp_freq": 4, "save_freq": 6, "valid_frames": 2}
    raw = {"model": {"type_map": ["Ge", "Sb", "Te"], "rcut": 5.0, "rcut_smth": 2.0, "sel": [20, 20, 30],
                     "embed_neurons": [4, 8], "axis_neurons": 2, "fit_neurons": [8, 8]},
           "data": {"systems": ["data/toy"], "valid_fraction": 0.4, "seed": 1},
           "training": {**tiny, "lr_start": 1e-3, "lr_stop": 1e-4, "seed": 1, "threads": 1},
           "recipe": {"datasets": datasets if datasets is not None else
                      [{"melt_quench": "mq.json", "scale": 0.5, "volume_per_atom": 34.0, "output": "data/toy"}],
                      "quantize": {"finetune_steps": 2, "eval_frames": 4, "calib_frames": 2},
                      "evaluation": {"max_frames_per_phase": 4},
                      "short": {"training": tiny, "quantize": {"finetune_steps": 2, "eval_frames": 4,
                                                               "calib_frames": 2}}}}
    (tmp_path / "recipe.json").write_text(json.dumps(raw))
    return tmp_path / "recipe.json"


def test_recipe_makes_its_datasets_then_reuses_them_without_the_teacher(tmp_path, monkeypatch):
    from contract import modelfile
    from science.recipe import load_recipe, run
    torch.set_num_threads(1)
    recipe = load_recipe(toy_recipe(tmp_path))
    assert recipe.datasets[0].command().endswith(f"mq.json --scale 0.5 --volume-per-atom 34 -o {tmp_path}/data/toy")
    summary = run(recipe, tmp_path / "run")
    made = summary["stages"]["datasets"]
    assert len(made) == 1 and not made[0]["reused"] and made[0]["folder"] == str(tmp_path / "data" / "toy")
    prov = json.loads((tmp_path / "data" / "toy" / "provenance.json").read_text())
    assert prov["complete"] and made[0]["frames"] == prov["total_frames"] == 10  # 12 + 12 + 16 steps, a frame every 4
    assert abs(prov["structure"]["volume_per_atom_A3"] - 34.0) < 1e-9
    assert prov["config_fingerprint"] == made[0]["config_fingerprint"]
    qm = modelfile.load(tmp_path / "run" / "model.npz")
    assert qm.provenance["data"]["systems"] == [str(tmp_path / "data" / "toy")]

    # Second run: the complete dataset is reused without making a teacher, every stage is reused.
    def no_teacher(*a, **k):
        raise AssertionError("a complete dataset must not need its teacher")
    monkeypatch.setattr("science.meltquench.make_teacher", no_teacher)
    again = run(load_recipe(tmp_path / "recipe.json"), tmp_path / "run")
    assert again["stages"]["datasets"][0]["reused"] and again["stages"]["train"]["reused"]
    assert again["model_hash"] == summary["model_hash"]


def test_a_dataset_remade_by_another_config_retrains_and_a_stale_one_is_refused(tmp_path):
    import shutil

    from science.meltquench import MeltQuenchError
    from science.recipe import load_recipe, run
    torch.set_num_threads(1)
    path = toy_recipe(tmp_path)
    first = run(load_recipe(path), tmp_path / "run")
    config = json.loads((tmp_path / "mq.json").read_text())
    config["seed"] = 4  # another trajectory: other frames under the same folder name
    (tmp_path / "mq.json").write_text(json.dumps(config))
    with pytest.raises(MeltQuenchError, match="made with another config"):
        run(load_recipe(path), tmp_path / "run")
    shutil.rmtree(tmp_path / "data" / "toy")
    second = run(load_recipe(path), tmp_path / "run")
    assert not second["stages"]["datasets"][0]["reused"] and not second["stages"]["train"]["reused"]
    assert second["model_hash"] != first["model_hash"]


def test_short_recipe_makes_ci_sized_datasets_in_the_run_folder(tmp_path):
    from science.recipe import load_recipe, run
    torch.set_num_threads(1)
    summary = run(load_recipe(toy_recipe(tmp_path), short=True), tmp_path / "run")
    made = summary["stages"]["datasets"][0]
    assert made["short"] and made["folder"] == str(tmp_path / "run" / "datasets" / "toy")
    assert made["frames"] == 6  # the short protocol: 24 steps, a frame every 4
    assert not (tmp_path / "data").exists()  # the full dataset's folder is left alone
    assert summary["settings"]["data"]["systems"] == [made["folder"]]


def test_a_dataset_the_data_does_not_use_is_not_made(tmp_path):
    from science.recipe import load_recipe, dataset_stage
    recipe = load_recipe(toy_recipe(tmp_path, [{"melt_quench": "mq.json", "output": "data/other"}]))
    systems, made = dataset_stage(recipe, tmp_path / "run")
    assert systems == [str(tmp_path / "data" / "toy")] and made == [] and not (tmp_path / "data").exists()


@pytest.mark.parametrize("datasets, match", [
    ({"melt_quench": "mq.json"}, "must be a list"),
    ([{"melt_quench": "mq.json"}], r"datasets\[0\] needs melt_quench and output"),
    ([{"melt_quench": "mq.json", "output": "d", "scale_": 2}], r"datasets\[0\] needs"),
    ([{"melt_quench": "missing.json", "output": "d"}], "cannot read melt-quench config"),
    ([{"melt_quench": "mq.json", "output": "d", "scale": -1}], "scale must be > 0"),
    ([{"melt_quench": "mq.json", "output": "d", "volume_per_atom": 0}], "volume per atom must be > 0"),
    ([{"melt_quench": "mq.json", "output": "a/d"}, {"melt_quench": "mq.json", "output": "b/d"}], "distinct folder names"),
    ([{"melt_quench": "bad-crystal.json", "output": "d"}], "multiple of 5"),
])
def test_bad_recipe_datasets_are_refused_before_any_work(tmp_path, datasets, match):
    from science.recipe import load_recipe
    bad = json.loads(json.dumps(TOY_MELT_QUENCH))
    bad["structure"]["repeat"] = [1, 1, 4]  # 4 cation sites for a 2:2:1 ratio
    (tmp_path / "bad-crystal.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=match):
        load_recipe(toy_recipe(tmp_path, datasets))


@pytest.mark.parametrize("material", ["Sb", "GST"])
def test_material_recipe_short_with_the_real_teacher(tmp_path, material):
    """`python -m science recipe examples/<material>/recipe.json --short`: the one documented command per
    material, CI-sized, from nothing (the teacher makes the data) to a quantized model file."""
    from science.meltquench import load_config
    require_teacher(load_config(REPO / "examples" / material / "melt-quench.json").teacher)
    out = tmp_path / "run"
    p = _run("recipe", REPO / "examples" / material / "recipe.json", "-o", out, "--short", "--threads", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    made = summary["stages"]["datasets"]
    assert len(made) == 3 and all(m["short"] and m["frames"] > 0 and not m["reused"] for m in made)
    assert all(Path(s).parent == out / "datasets" for s in summary["settings"]["data"]["systems"])
    assert (out / "model.npz").is_file() and summary["accuracy"]["overall"]["frames"] > 0
