"""The bundled GeTe model on held-out AIMD frames: quantized accuracy stays with the float model's."""

from __future__ import annotations

import pytest

from contract import modelfile
from contract.paths import EXAMPLE_MODEL
from model.data import load_systems, split_frames
from model.metrics import test_model as run_metrics
from model.quantize import float_model
from support import GETE_216, SHARED_DATA, require_shared, require_teacher

pytestmark = pytest.mark.shared_data


def test_quantized_force_rmse_within_20_percent_of_float():
    require_shared(GETE_216)
    qm = modelfile.load(EXAMPLE_MODEL)
    data = qm.provenance["data"]
    systems = [s.remap_types(qm.config.type_map) for s in load_systems(GETE_216)]
    _, valid = split_frames(systems, data["valid_fraction"], data["seed"])  # the frames training never saw
    m = run_metrics(qm, float_model(qm), valid, max_frames=6, seed=1)
    f, q = m["float"], m["quantized"]
    assert q["rmse_f"] <= 1.2 * f["rmse_f"]
    # Quantization noise itself is tiny next to the model error (measured: ~1e-4 of it).
    assert m["quantized_vs_float"]["rmse_f"] < 0.01 * f["rmse_f"]
    assert m["quantized_vs_float"]["rmse_e"] < 1e-4  # eV/atom


def test_gst_model_on_the_dft_frames_keeps_its_documented_accuracy():
    """model/examples/GST-mace.npz against the GST DFT validation frames (docs/Sb-GST.md, all 200: 54 meV/atom,
    230 meV/Å, virial 0.14 eV/atom): quantization stays negligible and the error does not regress (bounds:
    the documented figures with room for a 20-frame sample, which gives 53 / 242 / 0.15).  The energy and
    virial bounds fail for the previous one-density model (81 meV/atom, 0.42 eV/atom): they hold the
    three densities' gain."""
    gst = SHARED_DATA / "GST" / "GST-dft-validate.extxyz"
    require_shared(gst)
    qm = modelfile.load(EXAMPLE_MODEL.parent / "GST-mace.npz")
    assert qm.config.type_map == ["Ge", "Sb", "Te"]
    systems = load_systems(gst, type_map=qm.config.type_map)
    m = run_metrics(qm, float_model(qm), systems, max_frames=20, seed=0)
    assert m["quantized_vs_float"]["rmse_f"] < 0.01 * m["float"]["rmse_f"]
    assert m["quantized"]["rmse_f"] < 0.28  # eV/Å
    assert m["quantized"]["rmse_e"] < 0.07  # eV/atom
    assert m["quantized"]["rmse_v"] < 0.25  # eV/atom


def test_sb_model_quantized_follows_float_on_a7_antimony():
    """model/examples/Sb-7net-0.npz (one element type) on a rattled A7 crystal: the bit-exact reference
    stays with the float model (no Sb DFT data exists here to test against)."""
    import numpy as np

    from model.data import System
    from science.meltquench import build_structure
    from model.metrics import predict_float, predict_quantized
    qm = modelfile.load(EXAMPLE_MODEL.parent / "Sb-7net-0.npz")
    assert qm.config.type_map == ["Sb"]
    atoms = build_structure({"builder": "a7", "element": "Sb", "repeat": [3, 3, 1]}, seed=0)
    atoms.rattle(0.05, seed=1)
    system = System("A7", ["Sb"], np.zeros(len(atoms), dtype=int), atoms.positions[None], atoms.cell[:][None])
    ef, ff, _ = predict_float(float_model(qm), system, 0)
    eq, fq, _ = predict_quantized(qm, system, 0)
    rms = np.sqrt(np.mean(ff ** 2))
    assert rms > 0.05  # a rattled crystal has forces (eV/Å)
    assert np.sqrt(np.mean((fq - ff) ** 2)) < 0.01 * rms
    assert abs(eq - ef) / len(atoms) < 1e-4


def test_sb_model_follows_its_teachers_energy_volume_curve():
    """model/examples/Sb-7net-0.npz was trained at 30.2 and 32.0 Å³/atom: on a rattled A7 crystal from 30.2 to
    33 Å³/atom its energy change follows SevenNet 7net-0's within 10 meV/atom (docs/Sb-GST.md: the model
    from the 30.2 Å³/atom data alone drifted by 170 meV/atom at 33).  Needs the [teachers] extra."""
    import numpy as np

    from model.data import System
    from science.meltquench import build_structure
    from model.metrics import predict_quantized
    from science.teachers import make_teacher
    teacher = make_teacher(require_teacher("sevenn:7net-0")).calculator
    qm = modelfile.load(EXAMPLE_MODEL.parent / "Sb-7net-0.npz")
    errors = []
    for v in (30.2, 31.5, 33.0):
        atoms = build_structure({"builder": "a7", "element": "Sb", "repeat": [3, 3, 1], "volume_per_atom": v}, seed=0)
        atoms.rattle(0.1, seed=1)
        atoms.calc = teacher
        system = System("A7", ["Sb"], np.zeros(len(atoms), dtype=int), atoms.positions[None], atoms.cell[:][None])
        e, _, _ = predict_quantized(qm, system, 0)
        errors.append((e - atoms.get_potential_energy()) / len(atoms))
    assert max(errors) - min(errors) < 0.010, errors  # eV/atom
