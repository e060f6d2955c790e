"""The throughput estimate uses the model's own neighbour statistics (provenance["neighbors"]),
recorded by the quantizer in the same pass over the training frames that finds r_min."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from support import REPO
from test_build import run, small_qm


def rock_salt(a=2.5, n=4):
    """Simple cubic lattice, spacing a, two types alternating: 6 nearest neighbours, all of the other type."""
    from model.data import System
    idx = np.array([(i, j, k) for i in range(n) for j in range(n) for k in range(n)])
    return System(name="/data/rocksalt/frame", type_map=["Ge", "Te"], types=idx.sum(1) % 2,
                  coords=(idx * a)[None].astype(float), cells=(np.eye(3) * n * a)[None], pbc=True)


def test_scan_counts_neighbours_per_atom_and_per_type():
    from model.quantize import scan_training_frames
    s = rock_salt()
    shortest, nb = scan_training_frames([s, s], rcut=3.0)
    assert shortest["distance"] == pytest.approx(2.5) and shortest["frames"] == 2
    assert (nb["mean"], nb["max"], nb["frames"], nb["atoms"], nb["systems"]) == (6, 6, 2, 128, 2)
    # half the atoms have 6 neighbours of a type, the other half none of it
    assert nb["per_type"] == {"Ge": {"mean": 3, "max": 6}, "Te": {"mean": 3, "max": 6}}
    assert nb["rcut"] == 3.0 and nb["source"] == "2 frames of 2 systems under /data/rocksalt/frame"
    _, nb = scan_training_frames([s], rcut=3.6, source="a lattice")  # + 12 second neighbours at a sqrt(2)
    assert (nb["mean"], nb["max"], nb["source"]) == (18, 18, "a lattice")


def test_quantize_records_the_neighbours_of_its_training_frames():
    qm = small_qm()
    nb, rm = qm.provenance["neighbors"], qm.provenance["r_min"]
    assert nb["frames"] == rm["frames"] == 2 and nb["rcut"] == qm.config.rcut
    assert set(nb["per_type"]) == set(qm.config.type_map)
    assert nb["mean"] == pytest.approx(sum(v["mean"] for v in nb["per_type"].values()), abs=0.01)
    assert 0 < nb["mean"] <= nb["max"] <= sum(qm.config.sel)


@pytest.mark.parametrize("name,elements", [("GeTe-example", ["Ge", "Te"]), ("Sb-7net-0", ["Sb"]),
                                           ("GST-mace", ["Ge", "Sb", "Te"])])
def test_bundled_models_carry_their_own_neighbour_statistics(name, elements):
    from contract.modelfile import load
    from gen.flow.report import neighbour_estimate
    qm = load(REPO / "model" / "examples" / f"{name}.npz")
    nb = qm.provenance["neighbors"]
    assert nb["rcut"] == qm.config.rcut == 7.0 and list(nb["per_type"]) == elements
    assert 40 < nb["mean"] < 60 and nb["mean"] <= nb["max"]
    est = neighbour_estimate(qm)
    assert est["mean"] == nb["mean"] and est["source"] == f"model file: {nb['source']}"
    if name == "GeTe-example":  # the AIMD training split itself
        assert nb["frames"] == qm.provenance["r_min"]["frames"] == 3840 and "training split" in nb["source"]
    else:  # the training frames are not in the checkout: the material's crystal at the training densities
        assert "crystal" in nb["source"] and "not in this checkout" in nb["source"]
        vols = [s["volume_per_atom_A3"] for s in nb["structures"]]
        assert vols == ([30.2057, 30.2057, 32.0] if name == "Sb-7net-0" else [30.301, 27.5, 33.0])


def test_sb_is_costed_with_sb_neighbours():
    """Not GeTe's: the Sb file's own record (48 per atom in the A7 crystal at 30.2 and 32.0 Å^3/atom)."""
    from contract.modelfile import load
    from gen.flow.report import neighbour_estimate, throughput
    from gen.ir import Design, Knobs
    sb = load(REPO / "model" / "examples" / "Sb-7net-0.npz")
    gete = load(REPO / "model" / "examples" / "GeTe-example.npz")
    assert neighbour_estimate(sb)["mean"] != neighbour_estimate(gete)["mean"]
    tp = throughput(Design(sb, Knobs(lanes=1, engines=16)), neighbour_estimate(sb), 250.0)
    assert tp["record_cycles"] == 1 + np.ceil(sb.provenance["neighbors"]["mean"])


def test_override_and_missing_record():
    from gen.flow import BuildError
    from gen.flow.report import NO_NEIGHBOURS, neighbour_estimate
    qm = small_qm()
    assert neighbour_estimate(qm, 31.5) == {"mean": 31.5, "source": "--neighbours",
                                            "model_record": {"mean": qm.provenance["neighbors"]["mean"],
                                                             "source": qm.provenance["neighbors"]["source"]}}
    bare = copy.copy(qm)
    bare.provenance = {k: v for k, v in qm.provenance.items() if k != "neighbors"}
    assert neighbour_estimate(bare) == {"mean": None, "source": NO_NEIGHBOURS}
    assert neighbour_estimate(bare, 12)["mean"] == 12.0
    other = copy.copy(qm)
    other.provenance = {**qm.provenance, "neighbors": {**qm.provenance["neighbors"], "rcut": 6.0}}
    assert neighbour_estimate(other)["mean"] is None and "rcut 6.0" in neighbour_estimate(other)["source"]
    with pytest.raises(BuildError, match="--neighbours must be a number >= 0"):
        neighbour_estimate(qm, -1)


def test_cli_without_a_record_says_so_and_takes_neighbours(tmp_path):
    """A model file quantized before the record: no throughput numbers (never GeTe's), unless --neighbours."""
    from contract.modelfile import save
    qm = small_qm()
    qm.provenance = {k: v for k, v in qm.provenance.items() if k != "neighbors"}
    save(qm, tmp_path / "old.npz")
    p = run("build", "--model", tmp_path / "old.npz", "--out", tmp_path / "a", "--no-synth", "--no-lint")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "records no neighbour statistics" in p.stdout
    r = json.loads((tmp_path / "a" / "report.json").read_text())
    assert r["neighbours"]["mean"] is None and r["cycles_per_atom"] is None and r["seconds_per_atom"] is None
    assert r["engine_cycles"] > 0 and "unknown: the model file records no neighbour" in \
        (tmp_path / "a" / "report.md").read_text()
    p = run("build", "--model", tmp_path / "old.npz", "--out", tmp_path / "a", "--no-synth", "--no-lint",
            "--neighbours", 30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "reused pipeline.il and pipeline.v" in p.stdout  # same RTL: only the estimate changed
    r = json.loads((tmp_path / "a" / "report.json").read_text())
    assert r["neighbours"] == {"mean": 30.0, "source": "--neighbours"} and r["record_cycles"] == 31


@pytest.mark.slow
def test_cli_build_of_the_bundled_sb_model_reports_sb_neighbours(tmp_path):
    """The acceptance command: `python -m gen build --model model/examples/Sb-7net-0.npz --no-synth`."""
    from contract.modelfile import load
    p = run("build", "--model", REPO / "model" / "examples" / "Sb-7net-0.npz", "--out", tmp_path / "sb",
            "--no-synth")
    assert p.returncode == 0, p.stdout + p.stderr
    rec = load(REPO / "model" / "examples" / "Sb-7net-0.npz").provenance["neighbors"]
    r = json.loads((tmp_path / "sb" / "report.json").read_text())
    assert r["neighbours"]["mean"] == rec["mean"] and r["neighbours"]["per_type"] == rec["per_type"]
    assert "A7 crystal" in r["neighbours"]["source"] and "A7 crystal" in (tmp_path / "sb" / "report.md").read_text()
    assert r["lint"]["passed"] is True
