"""Quantization: table accuracy, formats that map to DSP48E2 ports, weights, fake quantization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contract.fixedpoint import Fmt
from model.qat import QATDeepPot, fake_quant
from model.quantize import WIDTHS, quantize_weight, table_errors
from support import as_system, random_structure, tiny_model, tiny_qm


def test_table_error_is_rounding_limited():
    """Values within ~1 LSB of the float functions; derivatives within 1e-3 of their range."""
    err = table_errors(tiny_qm(), points=50001)
    for name in ("s", "h", "G[Ge]", "G[Te]"):
        assert err[name]["max_lsb"] < 1.0, (name, err[name])
    for name in ("ds", "dh", "dG[Ge]", "dG[Te]"):
        assert err[name]["max_rel"] < 1e-3, (name, err[name])


def test_formats_fit_dsp_ports():
    qm = tiny_qm()
    for k, f in qm.formats.items():
        assert f.bits == WIDTHS[k], k
    # Operands of every per-neighbour multiply: one side <= 18 bits, the other <= 27 (one DSP48E2).
    F = qm.formats
    pairs = [("R", "G"), ("h", "coord"), ("dGR", "G"), ("dGR", "R"), ("dGj", "dG"), ("dR", "coord"),
             ("dS", "ds"), ("dH", "dh"), ("dR", "h"), ("dU", "coord"), ("A", "W"), ("DELTA", "W")]
    for a, b in pairs:
        assert sorted([F[a].bits, F[b].bits]) <= [18, 27], (a, b)
    for t in [qm.table_s, qm.table_h, *qm.table_g]:
        assert t.coef_fmt.bits <= 27 and t.xi_bits <= 17


def test_weights_use_their_range():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (128, 128))
    q, frac = quantize_weight(w, 18, "w")
    assert np.abs(q).max() <= 2 ** 17 - 1 and np.abs(q).max() >= 2 ** 16  # one power of two, tight
    assert np.abs(q * 2.0 ** -frac - w).max() <= 2.0 ** -(frac + 1)
    for layers in tiny_qm().fit:
        for l in layers:
            assert 2 ** 16 <= np.abs(l.W).max() < 2 ** 17


def test_fake_quant_matches_integer_rounding():
    f = Fmt(18, 13)
    x = torch.tensor([0.3, -1.23456, 15.99, -17.0, 20.0], dtype=torch.float64, requires_grad=True)
    y = fake_quant(x, f)
    q = np.clip(np.floor(x.detach().numpy() * 2 ** 13 + 0.5), f.lo, f.hi) / 2 ** 13
    assert np.array_equal(y.detach().numpy(), q)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]  # straight through inside the range only


def test_qat_model_tracks_the_reference_and_trains_only_fitting():
    model, _ = tiny_model()
    qm = tiny_qm()
    qat = QATDeepPot(model, qm.formats)
    pos, cell, types = random_structure(seed=21)
    from model.assembly import compute
    from model.batch import make_batch
    from model.network import evaluate
    b = make_batch([(as_system(pos, cell, types), 0)], qm.config.rcut)
    e, *_ = evaluate(qat, b.rij, b.center, b.neighbor, b.atype, b.frame_of_atom, 1, create_graph=True)
    ref = compute(qm, pos, cell, True, types)
    assert abs(float(e[0]) - ref.energy) / len(types) < 2e-4
    e.sum().backward()
    assert all(p.grad is None for p in qat.embed.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in qat.fit.parameters())


# ---- r_min: chosen from the training data, recorded with it ----------------------------------------

def _frames(dmins, seed=1, natoms=24, box=11.0, ntypes=1, type_map=("Sb",)):
    """One system per entry, each with a structure whose shortest distance is about dmin."""
    from model.data import System
    out = []
    for k, dmin in enumerate(dmins):
        pos, cell, types = random_structure(natoms=natoms, box=box, dmin=dmin, seed=seed + k, ntypes=ntypes)
        out.append(System(name=f"s{k}", type_map=list(type_map), types=types, coords=pos[None], cells=cell[None],
                          pbc=True))
    return out


def test_r_min_stays_below_rcut_smth_when_the_data_has_no_short_bonds():
    """Sb has no bond under 2.8 Å: 0.85 x the shortest distance would put the tables' start above
    rcut_smth = 2.0, which the model file forbids; r_min is held just below it instead."""
    from contract.config import ModelConfig
    from model.quantize import choose_r_min, shortest_distance
    systems = _frames([2.9])
    seen = shortest_distance(systems, 6.0)
    assert seen["distance"] >= 2.9 and seen["frames"] == 1
    assert choose_r_min(seen["distance"], ModelConfig(type_map=["Sb"], sel=[60], rcut=6.0, rcut_smth=2.0)) == 1.95
    # the data's own bound (0.85 x the shortest distance, on a 0.05 Å grid) when it is below rcut_smth
    cfg = ModelConfig(type_map=["Sb"], sel=[60], rcut=6.0, rcut_smth=3.0)
    assert choose_r_min(seen["distance"], cfg) == np.floor(0.85 * seen["distance"] * 20) / 20


def test_r_min_comes_from_every_frame_and_is_recorded_with_the_shortest_distance():
    """One close pair in the last of many frames sets r_min (a 64-frame sample could miss it); the
    model file records r_min, the distance and where it was seen; `model info` prints both."""
    from contract import modelfile
    from model.quantize import quantize
    model, systems = tiny_model()
    data = _frames([2.4] * 5 + [1.9], natoms=30, box=10.0, ntypes=2, type_map=("Ge", "Te"))
    qm = quantize(model, systems, nframes=2, train_systems=data)
    rec = qm.provenance["r_min"]
    assert rec["system"] == "s5" and rec["frame"] == 0 and rec["frames"] == 6
    assert 1.9 <= rec["training_min_distance"] < 2.4
    assert qm.config.r_min == rec["r_min"] == np.floor(0.85 * rec["training_min_distance"] * 20) / 20
    # the tables start there: u_min is r_min^2 in the u format
    assert qm.table_s.x_min == int(np.ceil(qm.config.r_min ** 2 * 2.0 ** qm.table_s.x_frac))
    assert tiny_model()[0].cfg.r_min == 1.6  # the float model given is not changed


def test_an_explicit_r_min_must_lie_below_the_data():
    from model.quantize import quantize
    model, systems = tiny_model()
    data = _frames([1.9], natoms=30, box=10.0, ntypes=2, type_map=("Ge", "Te"))
    with pytest.raises(ValueError, match=r"r_min 2.5 Å is not below the data's shortest distance 1\.9\d* Å \(system s0"):
        quantize(model, systems, nframes=2, r_min=2.5, train_systems=data)
