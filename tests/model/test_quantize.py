"""Quantization: table accuracy, formats that map to DSP48E2 ports, weights, fake quantization."""

from __future__ import annotations

import numpy as np
import torch

from model.fixedpoint import Fmt
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
