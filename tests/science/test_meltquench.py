"""science.meltquench and science.teachers: teacher-labelled melt-quench data, resumable, with provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.data import load_systems
from science.meltquench import MeltQuench, MeltQuenchError, build_structure, load_config
from science.phases import label_from_folders
from science.teachers import TeacherError, make_teacher
from support import require_teacher

REPO = Path(__file__).resolve().parents[2]

TOY = {
    "structure": {"builder": "rocksalt", "anion": "Te", "cations": {"Ge": 2, "Sb": 2, "vacancy": 1},
                  "a": 6.05, "repeat": [1, 1, 5]},
    "teacher": "lj:2.6:0.05", "seed": 3, "type_map": ["Ge", "Sb", "Te"],
    "protocol": {"timestep_fs": 2.0, "sample_every": 5, "checkpoint_every": 7,
                 "stages": [{"folder": "s1-heat", "T": [300, 1500], "steps": 40},
                            {"folder": "s2-melt-1500K", "T": 1500, "steps": 32},
                            {"folder": "s3-quench-300K", "T": [1500, 300], "steps": 50}]},
}


def write_config(tmp_path: Path, cfg: dict = TOY, name: str = "mq.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return path


def generate(tmp_path: Path, out: str = "out", cfg: dict = TOY, **kw) -> tuple[Path, dict]:
    config = load_config(write_config(tmp_path, cfg))
    prov = MeltQuench(config, tmp_path / out, progress=False, log=lambda s: None, **kw).run()
    return tmp_path / out, prov


def arrays(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(root.rglob("set.*/*.npy")):
        rel = f.relative_to(root)
        key = f"{rel.parts[0]}/{rel.parts[1]}/{rel.name}"
        out[key] = np.concatenate([out[key], np.load(f)]) if key in out else np.load(f)
    return out


def test_dataset_layout_labels_and_provenance(tmp_path):
    out, prov = generate(tmp_path)
    systems = load_systems(out)
    # A frame at every full `sample_every` interval: 40/5 + floor(32/5) + 50/5 (the 2-step tail is not one).
    assert sum(s.nframes for s in systems) == 8 + 6 + 10 == prov["total_frames"]
    assert {Path(s.name).parent.name for s in systems} == {"s1-heat", "s2-melt-1500K", "s3-quench-300K"}
    assert all(s.type_map == ["Ge", "Sb", "Te"] for s in systems)
    assert list(np.bincount(systems[0].types)) == [2, 2, 5]  # Ge2Sb2Te5: 1 in 5 cation sites vacant
    # Every label belongs to its coordinates: recompute with the same teacher.
    calc = make_teacher(TOY["teacher"]).calculator
    for s in systems[:3]:
        for f in range(s.nframes):
            atoms = s.to_atoms(f)
            atoms.calc = calc
            assert atoms.get_potential_energy() == pytest.approx(s.energies[f], rel=1e-12, abs=1e-12)
            np.testing.assert_allclose(atoms.get_forces(), s.forces[f], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(-atoms.get_stress(voigt=False) * atoms.get_volume(), s.virials[f],
                                       rtol=1e-10, atol=1e-12)
    # The target temperature names the folder: the melt hold is one system, the quench ends at 300 K.
    assert (out / "s2-melt-1500K" / "temp-1500K").is_dir() and (out / "s3-quench-300K" / "temp-300K").is_dir()
    assert prov["complete"] and prov["teacher"]["spec"] == "lj:2.6:0.05"
    assert prov["labels"] == "teacher potential (not DFT)"
    assert prov["structure"]["counts"] == {"Ge": 2, "Sb": 2, "Te": 5}
    assert [st["steps_done"] for st in prov["stages"]] == [40, 32, 50]
    assert all(-1 <= st["force_cosine_consecutive_frames"] <= 1 for st in prov["stages"])
    assert json.loads((out / "provenance.json").read_text())["total_frames"] == prov["total_frames"]


def test_folders_carry_the_phase_labels(tmp_path):
    out, _ = generate(tmp_path)
    assert label_from_folders(out / "s2-melt-1500K" / "temp-1500K").phase == "liquid"
    assert label_from_folders(out / "s3-quench-300K" / "temp-300K").phase == "amorphous"
    assert label_from_folders(out / "s1-heat" / "temp-600K").phase is None


@pytest.mark.parametrize("stop_after", [3, 13, 23])
def test_interrupted_run_resumes_to_identical_frames(tmp_path, monkeypatch, stop_after):
    straight, _ = generate(tmp_path, "straight")
    real_label = MeltQuench._label
    calls = {"n": 0}

    def flaky(self, where):
        calls["n"] += 1
        if calls["n"] > stop_after:
            raise KeyboardInterrupt
        return real_label(self, where)

    monkeypatch.setattr(MeltQuench, "_label", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, "resumed")
    partial = sum(json.loads((tmp_path / "resumed" / "state.json").read_text())["frames"].values())
    assert partial < 24
    monkeypatch.setattr(MeltQuench, "_label", real_label)
    _, prov = generate(tmp_path, "resumed")
    a, b = arrays(straight), arrays(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert prov["total_frames"] == 24
    # A finished dataset is not run again.
    assert generate(tmp_path, "resumed")[1]["total_frames"] == 24


def test_sets_written_after_the_last_checkpoint_are_dropped_on_resume(tmp_path):
    out, _ = generate(tmp_path)
    state = json.loads((out / "state.json").read_text())
    state.pop("done")
    state["sets"]["s3-quench-300K/temp-300K"] = 0  # as if the crash came between the set and the checkpoint
    (out / "state.json").write_text(json.dumps(state))
    config = load_config(tmp_path / "mq.json")
    MeltQuench(config, out, progress=False, log=lambda s: None)._resume()
    assert not list((out / "s3-quench-300K" / "temp-300K").glob("set.*"))


def test_another_config_or_a_foreign_folder_is_refused(tmp_path):
    out, _ = generate(tmp_path)
    other = json.loads(json.dumps(TOY))
    other["seed"] = 4
    with pytest.raises(MeltQuenchError, match="another config"):
        MeltQuench(load_config(write_config(tmp_path, other, "other.json")), out, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("mine")
    with pytest.raises(MeltQuenchError, match="not empty"):
        MeltQuench(load_config(tmp_path / "mq.json"), tmp_path / "junk", progress=False)
    with pytest.raises(MeltQuenchError, match="refusing to delete"):
        MeltQuench(load_config(tmp_path / "mq.json"), tmp_path / "junk", progress=False, fresh=True)
    assert (tmp_path / "junk" / "x.txt").read_text() == "mine"
    # --fresh starts over.
    _, prov = generate(tmp_path, "out", other, fresh=True)
    assert prov["seed"] == 4


def test_a_blown_up_run_stops_with_where_and_which_atom(tmp_path):
    cfg = json.loads(json.dumps(TOY))
    cfg["protocol"]["max_force"] = 1e-6
    with pytest.raises(MeltQuenchError, match=r"stage 0 \(s1-heat\), step 5: force .* on atom \d+ \((Ge|Sb|Te)\)"):
        generate(tmp_path, cfg=cfg)


@pytest.mark.parametrize("spec, match", [
    ("dft:vasp", "unknown teacher"),
    ("mace:/nonexistent/model.model", "not found"),
    ("sevenn:", "name a SevenNet model"),
    ("lj:x", "lj:SIGMA:EPSILON"),
])
def test_bad_teacher_specs(spec, match):
    with pytest.raises(TeacherError, match=match):
        make_teacher(spec)


def test_a_missing_teacher_package_names_the_extra(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_sevenn(name, *a, **k):
        if name.startswith("sevenn"):
            raise ImportError("No module named 'sevenn'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_sevenn)
    with pytest.raises(TeacherError, match=r"\.\[teachers\]"):
        make_teacher("sevenn:7net-0")


@pytest.mark.parametrize("structure, match", [
    ({"builder": "rocksalt", "anion": "Te", "cations": {"Ge": 2, "Sb": 2, "vacancy": 1}, "repeat": [2, 2, 2]},
     "multiple of 5"),
    ({"builder": "rocksalt", "cations": {"Ge": 1}}, "anion"),
    ({"builder": "fcc"}, "unknown structure builder"),
    ({"file": "/nonexistent.xyz"}, "cannot read structure file"),
])
def test_bad_structures(structure, match):
    with pytest.raises(MeltQuenchError, match=match):
        build_structure(structure, seed=0)


def test_bad_configs(tmp_path):
    cfg = json.loads(json.dumps(TOY))
    cfg["protocol"]["stages"][1]["steps"] = 0
    with pytest.raises(MeltQuenchError, match="steps >= 1"):
        load_config(write_config(tmp_path, cfg))
    cfg = json.loads(json.dumps(TOY))
    del cfg["teacher"]
    with pytest.raises(MeltQuenchError, match="missing key 'teacher'"):
        load_config(write_config(tmp_path, cfg))
    cfg = json.loads(json.dumps(TOY))
    cfg["protocol"]["timestep"] = 1
    with pytest.raises(MeltQuenchError, match="bad protocol key"):
        load_config(write_config(tmp_path, cfg))
    cfg = json.loads(json.dumps(TOY))
    cfg["type_map"] = ["Ge", "Te"]
    with pytest.raises(MeltQuenchError, match=r"elements \['Sb'\]"):
        generate(tmp_path, cfg=cfg)


def test_a7_antimony_has_its_short_and_long_bonds():
    atoms = build_structure({"builder": "a7", "element": "Sb", "repeat": [2, 2, 1]}, seed=0)
    assert len(atoms) == 24 and set(atoms.get_chemical_symbols()) == {"Sb"}
    d = atoms.get_all_distances(mic=True)
    first = np.sort(d[0])[1:7]
    # A7 Sb: three bonds at 2.91 Å, three at 3.36 Å (the Peierls-distorted simple cubic).
    np.testing.assert_allclose(first[:3], 2.91, atol=0.03)
    np.testing.assert_allclose(first[3:], 3.36, atol=0.03)


def test_cli_generates_and_reports_errors(tmp_path, capsys):
    from science.cli import main
    path = write_config(tmp_path)
    assert main(["data", "melt-quench", str(path), "-o", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert "24 frames" in capsys.readouterr().out
    bad = json.loads(json.dumps(TOY))
    bad["teacher"] = "dft:vasp"
    assert main(["data", "melt-quench", str(write_config(tmp_path, bad, "bad.json")), "-o",
                 str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "unknown teacher" in capsys.readouterr().err


@pytest.mark.parametrize("material", ["Sb", "GST"])
def test_shipped_configs_load_and_build(material):
    cfg = load_config(REPO / "examples" / material / "melt-quench.json")
    short = load_config(REPO / "examples" / material / "melt-quench.json", short=True)
    atoms = build_structure(cfg.structure, cfg.seed)
    assert 64 <= len(atoms) <= 108
    assert short.protocol.total_steps < cfg.protocol.total_steps
    temps = [s.t_end for s in cfg.protocol.stages]
    assert max(temps) >= 1200 and temps[-1] == 300  # melt, then the glass at 300 K


@pytest.mark.parametrize("config, liquid_K", [("Sb/liquid-1200K.json", 1200), ("GST/liquid-990K.json", 990)])
def test_shipped_liquid_configs_end_in_a_hold_at_the_seeds_temperature(config, liquid_K):
    """The liquid configs build the melt-quench configs' crystals and end in a melt-stage hold at the seed's
    liquid temperature, filed where `data compare --systems` finds it."""
    material = config.split("/")[0]
    cfg = load_config(REPO / "examples" / config)
    mq = load_config(REPO / "examples" / material / "melt-quench.json")
    assert cfg.structure == mq.structure and cfg.teacher == mq.teacher
    last = cfg.protocol.stages[-1]
    assert last.t_start == last.t_end == liquid_K and "-melt" in last.folder
    assert max(s.t_end for s in cfg.protocol.stages) >= 2000  # the crystal is melted first
    assert liquid_K % cfg.protocol.bin_K == 0  # the hold's folder is temp-<liquid_K>K


@pytest.mark.slow
@pytest.mark.parametrize("material", ["Sb", "GST"])
def test_short_run_with_the_real_teacher(tmp_path, material):
    """The shipped configs' short protocol with their real teacher (needs the [teachers] extra)."""
    cfg = load_config(REPO / "examples" / material / "melt-quench.json", short=True)
    require_teacher(cfg.teacher)
    prov = MeltQuench(cfg, tmp_path / "out", progress=False, log=lambda s: None).run()
    systems = load_systems(tmp_path / "out")
    assert sum(s.nframes for s in systems) == prov["total_frames"] > 0
    e = np.concatenate([s.energies / s.natoms for s in systems])
    assert np.isfinite(e).all() and e.std() < 0.5  # one material, one energy scale


def test_teacher_test_command_measures_the_teacher_against_labels(tmp_path, capsys):
    """A teacher checked against its own labels has zero error; against shifted labels, the shift."""
    from science.cli import main
    out, _ = generate(tmp_path)
    path = tmp_path / "m.json"
    assert main(["data", "teacher-test", TOY["teacher"], str(out), "--json", str(path)]) == 0
    m = json.loads(path.read_text())
    assert m["frames"] == 24 and m["force_rmse_meV_per_A"] < 1e-6 and m["energy_rmse_meV_per_atom"] < 1e-6
    systems = load_systems(out / "s3-quench-300K")
    for s in systems:
        s.energies = s.energies + 0.5 * s.natoms  # labels 0.5 eV/atom higher
        s.forces = s.forces + 0.1
    from science.teachers import teacher_errors
    m = teacher_errors(make_teacher(TOY["teacher"]), systems)
    assert m["energy_rmse_meV_per_atom"] == pytest.approx(500, rel=1e-9)
    assert m["energy_rmse_offset_removed_meV_per_atom"] < 1e-6
    assert m["force_rmse_meV_per_A"] == pytest.approx(100, rel=1e-9)
    assert m["energy_mean_error_meV_per_atom"] == pytest.approx(-500, rel=1e-9)


def test_scale_multiplies_every_stage_and_changes_the_fingerprint(tmp_path):
    path = write_config(tmp_path)
    full, third = load_config(path), load_config(path, scale=1 / 3)
    assert [s.steps for s in third.protocol.stages] == [13, 11, 17]
    assert third.fingerprint() != full.fingerprint() and third.source["scale"] == 1 / 3
    with pytest.raises(MeltQuenchError, match="scale must be > 0"):
        load_config(path, scale=0)


def test_volume_per_atom_sets_the_density_and_changes_the_fingerprint(tmp_path):
    path = write_config(tmp_path)
    base, dense = load_config(path), load_config(path, volume_per_atom=27.5)
    atoms = build_structure(dense.structure, dense.seed)
    assert atoms.get_volume() / len(atoms) == pytest.approx(27.5, rel=1e-12)
    assert len(atoms) == len(build_structure(base.structure, base.seed))
    assert dense.fingerprint() != base.fingerprint() and dense.source["structure"]["volume_per_atom"] == 27.5
    with pytest.raises(MeltQuenchError, match="volume per atom must be > 0"):
        load_config(path, volume_per_atom=-1)


def test_the_student_runs_the_same_protocol(tmp_path):
    """dpfpga:MODEL runs the quantized model (reference device) through the protocol: its frames are the
    host calculator's results, so teacher and student MD can be compared stage by stage."""
    from host.ase import Calculator
    from contract.modelfile import save
    from support import tiny_qm
    model = tmp_path / "tiny.npz"
    save(tiny_qm(), model)
    cfg = {"structure": {"builder": "rocksalt", "anion": "Te", "cations": {"Ge": 1}, "a": 6.0,
                         "repeat": [2, 2, 2]},
           "teacher": f"dpfpga:{model}", "seed": 1, "type_map": ["Ge", "Te"],
           "protocol": {"sample_every": 4, "checkpoint_every": 3,
                        "stages": [{"folder": "s2-melt-1000K", "T": 1000, "steps": 8},
                                   {"folder": "s3-quench-300K", "T": [1000, 300], "steps": 8}]}}
    out, prov = generate(tmp_path, cfg=cfg)
    assert prov["total_frames"] == 4 and prov["teacher"]["model_hash"] == tiny_qm().hash
    calc = Calculator(model=str(model), device="reference")
    for s in load_systems(out):
        for f in range(s.nframes):
            atoms = s.to_atoms(f)
            atoms.calc = calc
            assert atoms.get_potential_energy() == s.energies[f]
            assert np.array_equal(atoms.get_forces(), s.forces[f])
    with pytest.raises(TeacherError, match="not found"):
        make_teacher(f"dpfpga:{tmp_path / 'none.npz'}")


def test_teacher_override_resolves_against_the_working_directory(tmp_path, monkeypatch):
    path = write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, teacher="mace:models/x.model")
    assert cfg.teacher == f"mace:{tmp_path / 'models' / 'x.model'}" and cfg.source["teacher"] == cfg.teacher
    assert cfg.fingerprint() != load_config(path).fingerprint()
    gst = load_config(REPO / "examples" / "GST" / "melt-quench.json")
    assert gst.teacher == f"mace:{(REPO.parent / 'shared' / 'data' / 'GST' / 'GST-mace-swa.model').resolve()}"
    assert gst.source["teacher"].startswith("mace:../")  # the fingerprint does not depend on the checkout's place


def test_compare_finds_the_holds_and_measures_the_difference(tmp_path):
    from science.cli import main
    from science.meltquench import hold_systems
    a, _ = generate(tmp_path, "a")
    assert hold_systems(a) == ["s2-melt-1500K/temp-1500K", "s3-quench-300K/temp-300K"]
    other = json.loads(json.dumps(TOY))
    other["seed"] = 9
    b, _ = generate(tmp_path, "b", other)
    assert main(["data", "compare", str(a), str(a), "-o", str(tmp_path / "same")]) == 0
    same = json.loads((tmp_path / "same.json").read_text())["systems"]
    assert all(e["rdf"]["total"]["l1"] == 0 and e["rdf"]["total"]["peak_shift"] == 0 for e in same.values())
    assert (tmp_path / "same-s3-quench-300K-temp-300K.png").is_file()
    assert main(["data", "compare", str(a), str(b), "-o", str(tmp_path / "diff")]) == 0
    diff = json.loads((tmp_path / "diff.json").read_text())["systems"]
    assert all(e["rdf"]["total"]["l1"] > 0 for e in diff.values())
    assert set(diff["s2-melt-1500K/temp-1500K"]["rdf"]) == {"total", "Ge-Ge", "Ge-Sb", "Ge-Te", "Sb-Sb",
                                                             "Sb-Te", "Te-Te"}
    assert main(["data", "compare", str(a), str(tmp_path / "none"), "-o", str(tmp_path / "x")]) == 2
