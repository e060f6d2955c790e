"""examples/GeTe/structure.py --short end to end: LAMMPS (pair_style nvnmd, reference device) runs the
42-step smoke version of examples/GeTe/in.structure, then the structure analysis against AIMD.

The MD part and our own curves are checked always; the comparison with the AIMD frames and reference
curves only when ../shared/data is present (skipped with the reason otherwise)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import REPO, SHARED_DATA, require_shared

SCRIPT = REPO / "examples" / "GeTe" / "structure.py"
TIMEOUT = 240.0  # s: ~20 s on the shared 2-core machine
SHORT_STEPS = 1 + 2 + 5 + 2 + 2 + 5 + 18 + 2 + 5  # in.structure's nine stages at scale 0.002
CURVES = ["total", "Ge-Ge", "Ge-Te", "Te-Te"]


def run_script(*args, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--short", "--out", str(out), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("structure-short")
    proc = run_script("--aimd-start", "4", out=out)  # + 4 steps from the AIMD a-GeTe (when the data is there)
    assert proc.returncode == 0, f"structure.py --short failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, proc, json.loads((out / "structure.json").read_text())


def read_csv(path: Path) -> dict[str, np.ndarray]:
    names = path.read_text().splitlines()[0].split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    return {n: data[:, k] for k, n in enumerate(names)}


def test_md_outputs(short_run):
    out, proc, report = short_run
    for name in ("liquid.lammpstrj", "amorphous.lammpstrj", "log.lammps", "lammps.out", "structure.md",
                 "liquid-rdf.csv", "amorphous-rdf.csv", "amorphous-altbc.npy"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in ("liquid-rdf", "amorphous-rdf", "amorphous-altbc", "thermo"):
        data = (out / f"gete-structure-{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    # progress: one line per stage, and the table printed
    assert sum(f"STAGE {k}/9 " in proc.stdout for k in range(1, 10)) == 9 and "STAGE done" in proc.stdout
    assert "first peak r (g)" in proc.stdout and "MD: 42 steps" in proc.stdout

    md = report["md"]
    assert md["steps"] == SHORT_STEPS and md["natoms"] == 216 and md["scale"] == 0.002
    assert [st["stage"] for st in md["stages"]] == list(range(1, 10))
    assert [st["steps"] for st in md["stages"]] == [1, 2, 5, 2, 2, 5, 18, 2, 5]
    assert md["wall_s"] > 0 and md["ms_per_step"] > 0 and len(md["model_hash"]) == 12
    for st in md["stages"]:
        assert 0 < st["T_mean"] < 3000 and -170 < st["pe_per_atom"] < -160, st
    # dumps every step in the short run: 5 steps + the run's first frame
    assert report["liquid"]["frames"] == 6 and report["amorphous"]["frames"] == 6

    # our curves: the CSV is science.analysis.rdf of the dumped frames
    from science import analysis as an
    for phase in ("liquid", "amorphous"):
        mine = an.rdf(an.read_frames(out / f"{phase}.lammpstrj"), 8.0, 160, ["Ge", "Te"])
        csv = read_csv(out / f"{phase}-rdf.csv")
        np.testing.assert_allclose(csv["r"], mine.r, rtol=1e-7)
        for name in CURVES:
            np.testing.assert_allclose(csv[f"g_{name}"], mine.curve(name), rtol=1e-6, atol=1e-8, err_msg=name)
        peak = report[phase]["rdf"]["model"]["total"]["first_peak"]
        assert abs(peak["position"] - an.first_peak(mine.r, mine.total).position) < 1e-9
    # a 42-step run never melts: the smoke "amorphous" is still rock salt, and the script says so
    cl = report["amorphous"]["crystal_like"]["model"]
    assert cl["fraction"] > 0.9 and cl["unlike_neighbours"] > 5.5
    assert any("recrystallised" in o for o in report["observations"])
    alt = report["amorphous"]["altbc"]["model"]
    assert set(alt) >= {"ratio", "ratio_mid", "offdiag_peak", "global_peak", "local_max", "present"}
    md_text = (out / "structure.md").read_text()
    assert "## Protocol" in md_text and "gete-structure-amorphous-altbc.png" in md_text


def test_reference_comparison(short_run):
    require_shared(SHARED_DATA / "GeTe-aimd-reference")
    require_shared(SHARED_DATA / "GeTe-aimd" / "216atom-melt-quench")
    out, proc, report = short_run
    from science import analysis as an
    from model.data import load_deepmd

    assert report["shared_data"]
    # the AIMD liquid curves the script wrote are science.analysis.rdf of the same 40 frames
    system = load_deepmd(SHARED_DATA / "GeTe-aimd/216atom-melt-quench/s2-melt-1000K/temp-1200K")
    aimd = an.rdf(an.frames_from_system(system), 8.0, 160, ["Ge", "Te"])
    assert aimd.nframes == report["liquid"]["aimd_frames"] == 40
    csv = read_csv(out / "liquid-aimd-rdf.csv")
    for name in CURVES:
        np.testing.assert_allclose(csv[f"g_{name}"], aimd.curve(name), rtol=1e-6, atol=1e-8, err_msg=name)
    # and the liquid comparison is against those curves
    liq = report["liquid"]["rdf"]["vs_aimd_frames"]
    assert set(liq) == set(CURVES)
    ref_peak = an.first_peak(aimd.r, aimd.total)
    assert abs(liq["total"]["reference_first_peak"]["position"] - ref_peak.position) < 1e-9
    assert 2.7 < ref_peak.position < 2.95  # liquid GeTe's Ge-Te shell

    amo = report["amorphous"]
    assert amo["aimd_frames"] == 40
    for key in ("vs_aimd_curves", "vs_aimd_frames", "aimd_frames_vs_aimd_curves"):
        for name in CURVES:
            m = amo["rdf"][key][name]
            assert math.isfinite(m["l1"]) and m["l1"] >= 0 and m["range"][0] == 2.0, (key, name)
            assert m["peak_shift"] is not None
    # the two AIMD sides agree (same simulation, two extraction codes): a check of the measurement itself
    assert abs(amo["rdf"]["aimd_frames_vs_aimd_curves"]["total"]["peak_shift"]) < 0.03
    assert amo["rdf"]["aimd_frames_vs_aimd_curves"]["total"]["l1"] < 0.5

    # Peierls criterion: present in both AIMD maps (fixed data), with the reference's known peak
    alt = amo["altbc"]
    for key in ("reference", "aimd_frames"):
        assert alt[key]["present"] and alt[key]["local_max"] and alt[key]["ratio"] > 5, (key, alt[key])
        r1, r2 = alt[key]["offdiag_peak"]
        assert 2.7 < r1 < 2.85 and 3.5 < r2 < 3.8, (key, r1, r2)
    assert alt["reference"]["global_peak"] == pytest.approx([2.775, 3.675])
    # the rock-salt smoke run has no Peierls peaks (its collinear pairs are symmetric)
    assert not alt["model"]["present"]
    assert 0 <= alt["model"]["shape_l1"] <= 2

    cn = amo["coordination"]
    assert cn["aimd_frames"]["Ge"] == pytest.approx(cn["reference"]["Ge"], abs=0.15)
    assert cn["aimd_frames"]["Te"] == pytest.approx(cn["reference"]["Te"], abs=0.15)
    assert amo["crystal_like"]["aimd_frames"]["fraction"] < 0.2

    # a smoke run computes the figures but judges nothing, and says so instead of "ACCEPTANCE NOT met"
    acc = report["acceptance"]
    assert set(acc) == {"rdf_first_peak", "altbc_peierls"} and report["smoke"] is True
    assert all(a["met"] is None for a in acc.values())
    assert acc["rdf_first_peak"]["shift"] == amo["rdf"]["vs_aimd_curves"]["total"]["peak_shift"]
    assert len(report["rdf_table"]) == 16
    assert "ACCEPTANCE" not in proc.stdout
    assert proc.stdout.count("smoke run: numbers not meaningful, acceptance not evaluated") == 2  # start and end
    assert "not evaluated" in (out / "structure.md").read_text()

    # --aimd-start: LAMMPS started from the AIMD frame (the data file is exact; dumps carry 6 digits)
    st = report["aimd_start"]
    assert st["steps"] == 4 and st["frame"] == 399 and len(st["windows"]) == 2
    first = next(an.read_frames(out / "aimd-start.lammpstrj"))
    aimd = load_deepmd(SHARED_DATA / "GeTe-aimd/216atom-melt-quench/s3-quench-300K/temp-300K")
    expect = next(an.frames_from_system(aimd, 399, 1))
    assert first.get_chemical_symbols() == expect.get_chemical_symbols()
    d = first.positions - expect.positions
    d -= np.round(d / expect.cell.lengths()) * expect.cell.lengths()  # a wrap across the box edge is no difference
    assert np.abs(d).max() < 1e-3
    for w in st["windows"]:
        assert w["coordination"]["Ge"] > 3 and set(w["altbc"]) >= {"ratio", "present"}
    assert "Does the model keep the AIMD amorphous structure?" in (out / "structure.md").read_text()


def test_a_full_run_states_its_acceptance():
    """The other side of the smoke note: a run of the whole protocol (scale 1) gets one ACCEPTANCE line
    per target, met or not."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("structure_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    acc = {"a": {"target": "peak", "value": "shift +0.01 Å", "met": True},
           "b": {"target": "Peierls", "value": "ratio 1.0", "met": False}}
    full = {"smoke": False, "md": {"scale": 1.0, "steps": 21000}, "acceptance": acc}
    assert mod.acceptance_lines(full) == ["ACCEPTANCE met    : peak: shift +0.01 Å", "ACCEPTANCE NOT met: Peierls: ratio 1.0"]
    smoke = {**full, "smoke": True, "md": {"scale": 0.002, "steps": 42}}
    assert mod.acceptance_lines(smoke) == [f"{mod.SMOKE_NOTE} (scale 0.002 of in.structure's protocol, 42 MD steps)"]


def test_lammps_error_is_shown(tmp_path):
    proc = run_script("--device", "nosuch", out=tmp_path)
    assert proc.returncode == 1
    assert "LAMMPS failed" in proc.stderr and "ERROR" in proc.stderr and "unknown device 'nosuch'" in proc.stderr
