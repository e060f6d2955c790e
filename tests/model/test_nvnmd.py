"""NVNMD v0 hardware files (model/nvnmd.py) and the options their import needs (desc_band, embed_table).

Without ../shared: the options on small random models (the reference == the scalar reference, integer
for integer; quantized close to float; the implementations without an option refuse it), and the table
embedding's range rule.  With ../shared: the seed group's MDPU-era GeTe file: its structure, corrupted
copies refused naming the field, the float64 evaluator's self-consistency, and the import against it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from contract.config import ModelConfig
from model.deepmd import UnsupportedModel
from model.network import DeepPot, TableEmbedding, evaluate
from support import SHARED_DATA, as_system, records_for, require_shared, tiny_model

MDPU_FILE = SHARED_DATA / "nvnmd-models" / "mdpu-v0-GeTe.pb"


# ---- the options, on small random models -----------------------------------------------------------

def test_descriptor_columns_are_nvnmds_band():
    from model.nvnmd import band_index
    cfg = ModelConfig(desc_band=True)
    rows, cols = band_index(cfg.m1, cfg.axis_neurons)
    assert np.array_equal(np.asarray(cfg.descriptor_columns()), cols) and np.array_equal(rows[:, 0], np.arange(cfg.m1))
    assert cfg.descriptor_columns()[cfg.m1 - 1] == [31, 0, 1, 2]
    assert ModelConfig().descriptor_columns()[5] == [0, 1, 2, 3]
    assert "desc_band" not in ModelConfig().to_dict() and ModelConfig(desc_band=True).to_dict()["desc_band"] is True


@pytest.fixture(scope="module")
def band_qm():
    """The tiny random model with the banded descriptor, quantized."""
    from model.quantize import quantize
    model, systems = tiny_model()
    m = DeepPot(dataclasses.replace(model.cfg, desc_band=True))
    m.load_state_dict(model.state_dict())
    return quantize(m, systems, nframes=2, r_min=m.cfg.r_min), m


def test_desc_band_reference_equals_scalar(band_qm):
    import scalar_reference
    from model.reference import evaluate as ref_evaluate
    qm, _ = band_qm
    rec, _, _ = records_for(qm, seed=4)
    res = ref_evaluate(qm, rec)
    for a in (0, 9, 30):
        recs = [(int(t), *map(int, d)) for t, d in zip(rec.nbr_type[a], rec.nbr_d[a]) if t >= 0]
        e, forces, flags = scalar_reference.atom(qm, int(rec.center_type[a]), recs)
        assert e == int(res.energy[a])
        assert forces == [tuple(map(int, f)) for f in res.dEdr[a, :len(recs)]]
        assert flags == int(res.flags[a])


def test_desc_band_changes_the_descriptor_and_stays_close_to_float(band_qm):
    """The banded D is not DeePMD's (so the option is computed, not ignored), and the quantized model
    stays as close to its float model as the plain one (bounds of test_reference's)."""
    from model.assembly import compute
    from model.batch import make_batch
    from model.reference import evaluate as ref_evaluate
    qm, model = band_qm
    rec, _, (pos, cell, types) = records_for(qm, seed=5)
    trace, plain = {}, {}
    ref_evaluate(qm, rec, trace=trace)
    qm_plain = dataclasses.replace(qm, config=dataclasses.replace(qm.config, desc_band=False))
    ref_evaluate(qm_plain, rec, trace=plain)
    assert np.array_equal(trace["GR"], plain["GR"]) and not np.array_equal(trace["D"], plain["D"])
    a = compute(qm, pos, cell, True, types)
    b = make_batch([(as_system(pos, cell, types), 0)], qm.config.rcut)
    e, f, _, _ = evaluate(model, b.rij, b.center, b.neighbor, b.atype, b.frame_of_atom, 1)
    assert abs(a.energy - float(e)) / len(types) < 1e-4
    assert np.abs(a.forces - f.numpy()).max() < 1e-3 * np.abs(f.numpy()).max()


def test_which_implementations_compute_desc_band(band_qm, monkeypatch):
    """The engines design and the cpu device compute it (tests/gen/test_pipeline.py,
    tests/host/test_native_cpu.py); the dataflow design has not been verified with it and refuses it by
    name; an implementation marked without it refuses rather than compute the model unbanded."""
    from contract import config
    from gen.ir import Design, DesignError, Knobs
    from host.native import host_model_text
    qm, _ = band_qm
    Design(qm, Knobs(fit_par=4, desc_par=2))
    with pytest.raises(DesignError, match=r"rtl-dataflow implementation does not compute .*desc_band=True"):
        Design(qm, Knobs.dataflow(pe=(4, 4, 4), simd=(8, 8, 8), desc_par=2, energy_simd=8))
    assert "pipeline_options desc_band" in host_model_text(qm, pipeline=True)
    monkeypatch.setitem(config.IMPLEMENTED_OPTIONS, "cpu", frozenset(config.OPTIONS) - {"desc_band"})
    monkeypatch.setitem(config.IMPLEMENTED_OPTIONS, "rtl", frozenset(config.OPTIONS) - {"desc_band"})
    with pytest.raises(ValueError, match=r"cpu implementation does not compute the model option\(s\) desc_band=True"):
        host_model_text(qm, pipeline=True)
    with pytest.raises(DesignError, match=r"rtl implementation does not compute the model option\(s\) desc_band=True"):
        Design(qm, Knobs(fit_par=4, desc_par=2))


def test_table_embedding_ranges_and_gradient():
    """The first range holding x is used, else the last one, clamped at both ends (map_flt_nvnmd's rule);
    the cubic is evaluated at the offset into its segment, and autograd gives its derivative."""
    spec = {"x0": -0.5, "ranges": [[0.25, 4], [1.0, 3]]}  # fine [-0.5, 0.5], coarse [-0.5, 2.5]
    emb = TableEmbedding(spec, 2)
    rng = np.random.default_rng(0)
    coef = torch.as_tensor(rng.normal(size=(7, 2, 4)))
    emb.coef = coef
    cubic = lambda row, t: ((coef[row, :, 0] * t + coef[row, :, 1]) * t + coef[row, :, 2]) * t + coef[row, :, 3]
    cases = [(-0.5, 0, 0.0), (-0.3, 0, 0.2), (0.1, 2, 0.1), (0.5, 3, 0.25),  # fine, its end included
             (0.6, 5, 0.1), (2.4, 6, 0.9), (-0.9, 4, 0.0), (3.7, 6, 1.0)]  # coarse, below and past it
    x = torch.tensor([c[0] for c in cases], dtype=torch.float64, requires_grad=True)
    y = emb(x[:, None])
    for k, (_, row, t) in enumerate(cases):
        assert torch.allclose(y[k], cubic(row, torch.tensor(t, dtype=torch.float64)), rtol=0, atol=1e-12), cases[k]
    (g,) = torch.autograd.grad(y[:, 0].sum(), x)
    a, b, c = coef[2, 0, 0], coef[2, 0, 1], coef[2, 0, 2]
    assert abs(float(g[2]) - float(3 * a * 0.01 + 2 * b * 0.1 + c)) < 1e-12
    assert float(g[6]) == 0.0 and float(g[7]) == 0.0  # clamped outside the table
    with pytest.raises(ValueError, match="embed_neurons must be \\[M1\\]"):
        ModelConfig(embed_table=spec)
    with pytest.raises(ValueError, match="embed_table\\['ranges'\\]"):
        ModelConfig(embed_neurons=[32], embed_table={"x0": 0.0, "ranges": [[0.1, 0]]})


def test_embed_table_model_quantizes_exactly(tmp_path):
    """A model whose embedding is a table (sampled from the tiny model's nets as cubic Hermite
    segments, as NVNMD's mapt does) and with the banded descriptor: the float model follows its nets, its
    reference == the scalar reference, and its file round-trips with the table in its float state."""
    import scalar_reference
    from contract import modelfile
    from model.quantize import quantize
    from model.reference import evaluate as ref_evaluate
    net, systems = tiny_model()
    x0, ranges = -0.2, [[1 / 64, 64], [1 / 8, 40]]
    cfg = dataclasses.replace(net.cfg, embed_neurons=[net.cfg.m1], embed_table={"x0": x0, "ranges": ranges},
                              desc_band=True)
    model = DeepPot(cfg)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("embed.")}
    with torch.no_grad():
        for t in range(cfg.ntypes):
            rows = []
            for dx, n in ranges:
                left = torch.tensor(x0 + dx * np.arange(n + 1), dtype=torch.float64)
                y, dy = torch.func.jvp(lambda v, t=t: net.embed[t](v[:, None]), (left,), (torch.ones_like(left),))
                y0, y1, d0, d1 = y[:-1], y[1:], dy[:-1], dy[1:]
                a = (dx * d1 - 2 * y1 + dx * d0 + 2 * y0) / dx ** 3
                b = (3 * y1 - dx * d1 - 2 * dx * d0 - 3 * y0) / dx ** 2
                rows.append(torch.stack([a, b, d0, y0], dim=-1))
            state[f"embed.{t}.coef"] = torch.cat(rows)
    model.load_state_dict(state)
    s = torch.linspace(0.0, 1.5, 101, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model.embed[0](s[:, None]), net.embed[0](s[:, None]), atol=1e-4)
    qm = quantize(model, systems, nframes=2, r_min=cfg.r_min)
    modelfile.save(qm, tmp_path / "m.npz")
    qm = modelfile.load(tmp_path / "m.npz")
    assert qm.config.embed_table == cfg.embed_table
    assert torch.equal(modelfile_float_coef(qm), model.embed[0].coef.float().double())
    rec, _, _ = records_for(qm, seed=6)
    res = ref_evaluate(qm, rec)
    for a in (3, 17):
        recs = [(int(t), *map(int, d)) for t, d in zip(rec.nbr_type[a], rec.nbr_d[a]) if t >= 0]
        e, forces, _ = scalar_reference.atom(qm, int(rec.center_type[a]), recs)
        assert e == int(res.energy[a]) and forces == [tuple(map(int, f)) for f in res.dEdr[a, :len(recs)]]


def modelfile_float_coef(qm) -> torch.Tensor:
    """The table embedding of neighbour type 0 as the model file stores it (its float state)."""
    return torch.as_tensor(qm.float_state["embed.0.coef"])


# ---- the seed group's MDPU-era file ----------------------------------------------------------------

@pytest.fixture(scope="module")
def mdpu():
    require_shared(MDPU_FILE)
    from model.nvnmd import read_nvnmd
    return read_nvnmd(MDPU_FILE)


def test_mdpu_file_structure(mdpu):
    """What its train json says (sel [60, 60], rcut 7, rcut_smth 2), recovered from the file alone."""
    from model.nvnmd import fit_env_norm
    nv = mdpu
    assert (nv.ntypes, nv.sel, nv.rcut, nv.nix) == (2, [60, 60], 7.0, 128)
    assert [w.shape for w in nv.fit_w[0]] == [(128, 128)] * 3 + [(128, 1)]
    assert all(b == 0 for b in nv.fit_b[1][-1]) and set(nv.fit_expo[0][0]) <= set(range(8))
    assert nv.checks["bps_vs_fps_max_lsb"] <= 1.0
    env = fit_env_norm(nv)
    assert env["rcut_smth"] == 2.0 and env["residual_s"] < 1e-6 and env["residual_h"] < 1e-6
    assert env["padding_row_vs_fit"] < 1e-6


def _corrupt(tmp_path, edit):
    raw = bytearray(MDPU_FILE.read_bytes())
    edit(raw)
    p = tmp_path / "bad.pb"
    p.write_bytes(bytes(raw))
    return p


HEAD = 128  # bytes
CFG_ROWS, ROW72 = 229, 12


@pytest.mark.parametrize("edit, field", [
    (lambda r: r.__delitem__(slice(len(r) - 100, None)), "file size"),
    (lambda r: r.__setitem__(slice(7 * 4, 8 * 4), (19).to_bytes(4, "little")), "head width of cfg"),
    (lambda r: r.__setitem__(slice(14 * 4, 15 * 4), (9 << 23).to_bytes(4, "little")), "head rcut"),
    # SEL[0] (bits 9-16 of cfg): 60 -> 188 no longer gives NIX = 128
    (lambda r: r.__setitem__(HEAD + 2, r[HEAD + 2] ^ 0x01), "cfg NEXPO_DIV_NI"),
    # a bit of type 3's s-table (a, b) rows
    (lambda r: r.__setitem__(HEAD + CFG_ROWS * ROW72 + 2 * 50176 * ROW72 + (3 * 512 + 7) * 16, 1), "swt"),
    # a high bit of a row-normalised weight of type 0, layer 0 (bps): the copies disagree
    (lambda r: r.__setitem__(HEAD + CFG_ROWS * ROW72 + 50176 * ROW72 + 2, r[HEAD + CFG_ROWS * ROW72 + 50176 * ROW72 + 2] ^ 0x02),
     "bps type 0 layer 0"),
])
def test_mdpu_file_corrupted_copies_are_refused_by_field(mdpu, tmp_path, edit, field):
    from model.nvnmd import read_nvnmd
    with pytest.raises(UnsupportedModel, match=f"NVNMD v0 {field}"):
        read_nvnmd(_corrupt(tmp_path, edit))


def test_mdpu_import_needs_a_type_map_and_a_frozen_graph_reader_names_the_file(mdpu, tmp_path):
    from model.deepmd import read_graph
    from model.nvnmd import import_nvnmd, is_nvnmd_file
    assert is_nvnmd_file(MDPU_FILE)
    with pytest.raises(UnsupportedModel, match="does not name its 2 types"):
        import_nvnmd(MDPU_FILE, None)
    with pytest.raises(UnsupportedModel, match="2 types, but the type map names"):
        import_nvnmd(MDPU_FILE, ["Ge"])
    with pytest.raises(UnsupportedModel, match="NVNMD hardware file"):
        read_graph(MDPU_FILE)


def _structure(seed=0):
    from ase.build import bulk
    atoms = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((2, 2, 2))
    atoms.positions += np.random.default_rng(seed).normal(0.0, 0.1, atoms.positions.shape)
    types = np.array([{"Ge": 0, "Te": 1}[e] for e in atoms.get_chemical_symbols()])
    return atoms.positions.copy(), atoms.cell.array.copy(), types


def _continuous(coef: np.ndarray, dx: float) -> np.ndarray:
    """The same cubics, each shifted to start where the one before it ends (segment axis 0)."""
    c = coef.copy()
    for k in range(1, len(c)):
        a, b, cc, d = (c[k - 1, ..., j] for j in range(4))
        c[k, ..., 3] = ((a * dx + b) * dx + cc) * dx + d
    return c


def test_mdpu_tables_jump_at_their_knots(mdpu):
    """The file's cubics are not continuous: FLT29 truncates each coefficient, so a segment ends a little
    off where the next begins (measured: 7.6e-6 in s~, 1.5e-5 in h~, 2.1e-6 in G).  The energy of the
    decoded file is then piecewise smooth only, which is why the gradient check below uses continuous
    copies of the tables."""
    from model.nvnmd import G_FINE_DX, U_DX
    def jump(c, dx):
        a, b, cc, d = (c[..., j] for j in range(4))
        return float(np.abs((((a * dx + b) * dx + cc) * dx + d)[:-1] - d[1:]).max())

    assert 1e-7 < jump(mdpu.s_coef[0][2:], U_DX) < 1e-4
    assert 1e-7 < jump(mdpu.g_coef[0][:256], G_FINE_DX) < 1e-5


def test_mdpu_evaluator_forces_are_the_energy_gradient_and_invariant(mdpu):
    from model.nvnmd import G_COARSE_DX, G_FINE_DX, G_FINE_N, U_DX, NvnmdModel, predict
    nv = dataclasses.replace(mdpu)
    nv.s_coef = np.stack([np.concatenate([c[:2], _continuous(c[2:], U_DX)]) for c in mdpu.s_coef])
    nv.h_coef = np.stack([np.concatenate([c[:2], _continuous(c[2:], U_DX)]) for c in mdpu.h_coef])
    nv.g_coef = np.stack([np.concatenate([_continuous(c[:G_FINE_N], G_FINE_DX), _continuous(c[G_FINE_N:], G_COARSE_DX)])
                          for c in mdpu.g_coef])
    ev = NvnmdModel(nv)
    pos, cell, types = _structure()
    e, f, _ = predict(ev, as_system(pos, cell, types), 0)
    h = 1e-4
    for i, k in ((0, 0), (13, 2), (40, 1)):
        p1, p2 = pos.copy(), pos.copy()
        p1[i, k] += h
        p2[i, k] -= h
        fd = -(predict(ev, as_system(p1, cell, types), 0)[0] - predict(ev, as_system(p2, cell, types), 0)[0]) / (2 * h)
        assert abs(fd - f[i, k]) < 1e-6 * max(1.0, abs(f[i, k])), (i, k, fd, f[i, k])
    # translation, and a rotation of the whole periodic system (cell included)
    e_t, f_t, _ = predict(ev, as_system(pos + np.array([0.3, -1.1, 2.0]), cell, types), 0)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    e_r, f_r, _ = predict(ev, as_system(pos @ q.T, cell @ q.T, types), 0)
    assert abs(e_t - e) < 1e-9 * abs(e) and abs(e_r - e) < 1e-9 * abs(e)
    assert np.abs(f_r - f @ q.T).max() < 1e-9 and np.abs(f_t - f).max() < 1e-9


def test_mdpu_import_is_the_file(mdpu, tmp_path):
    """Our float import (env_norm fitted to the u-tables, computed exactly; G tables as embed_table;
    banded D) against the float64 evaluation of the file: measured 1.0e-6 eV/atom, 2e-5 eV/Å here."""
    from model.metrics import predict_float
    from model.nvnmd import NvnmdModel, import_nvnmd, predict
    from model.train import load_checkpoint, save_checkpoint
    model, prov = import_nvnmd(MDPU_FILE, ["Ge", "Te"])
    save_checkpoint(model, tmp_path / "m.pt", {"provenance": prov})
    model = load_checkpoint(tmp_path / "m.pt")  # the table embedding travels in the checkpoint
    assert set(model.cfg.options()) == {"env_norm", "pad_slots", "desc_band", "embed_table"}
    assert prov["import"]["sha256"] == mdpu.sha256
    pos, cell, types = _structure(seed=2)
    system = as_system(pos, cell, types)
    e0, f0, _ = predict(NvnmdModel(mdpu), system, 0)
    e1, f1, _ = predict_float(model, system, 0)
    assert abs(e1 - e0) / len(types) < 1e-5
    assert np.abs(f1 - f0).max() < 2e-4
    assert np.abs(f0).max() > 0.1  # a real test: the structure has forces


def test_mdpu_quantized_import_reference_equals_scalar(mdpu, tmp_path):
    """The real file's options together (env_norm, pad_slots, desc_band, embed_table) through our
    quantizer: the reference == the scalar reference, and the model file round-trips."""
    import scalar_reference
    from contract import modelfile
    from model.assembly import compute
    from model.metrics import predict_float
    from model.nvnmd import import_nvnmd
    from model.quantize import quantize
    from model.reference import evaluate as ref_evaluate
    model, prov = import_nvnmd(MDPU_FILE, ["Ge", "Te"])
    calib = [as_system(*_structure(seed=k)) for k in (3, 4)]
    qm = quantize(model, calib, nframes=2)
    qm.provenance.update(prov)
    modelfile.save(qm, tmp_path / "m.npz")
    back = modelfile.load(tmp_path / "m.npz")
    assert back.hash == qm.hash and back.config.embed_table == model.cfg.embed_table
    rec, _, (pos, cell, types) = records_for(back, seed=7, natoms=20)
    res = ref_evaluate(back, rec)
    for a in (0, 11):
        recs = [(int(t), *map(int, d)) for t, d in zip(rec.nbr_type[a], rec.nbr_d[a]) if t >= 0]
        e, forces, flags = scalar_reference.atom(back, int(rec.center_type[a]), recs)
        assert e == int(res.energy[a]) and flags == int(res.flags[a])
        assert forces == [tuple(map(int, f)) for f in res.dEdr[a, :len(recs)]]
    pos, cell, types = _structure(seed=5)
    a = compute(back, pos, cell, True, types)
    e, f, _ = predict_float(model, as_system(pos, cell, types), 0)
    assert abs(a.energy - e) / len(types) < 1e-4 and np.abs(a.forces - f).max() < 1e-2


# ---- files written here (tests/model/nvnmd_file.py): the decoder without ../shared ------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A random two-type file from our own writer, its GS made consistent with its tables."""
    from model.nvnmd import g_table, u_table
    from nvnmd_file import random_spec, write_nvnmd
    spec = random_spec(seed=1)
    nt = len(spec["sel"])
    with torch.no_grad():
        x0 = u_table(spec["s_coef"], torch.zeros(nt, dtype=torch.float64), torch.arange(nt))
        gs = torch.stack([x0[:, None] * g_table(spec["g_coef"], x0, torch.full((nt,), t), -spec["shift_idx"] / 256)
                          for t in range(nt)], dim=1).numpy()
    spec["gs"] = np.round(gs * 2 ** 23).astype(np.int64)
    return spec, write_nvnmd(tmp_path_factory.mktemp("nvnmd") / "synthetic.pb", spec)


def test_synthetic_file_decodes_to_what_was_written(synthetic):
    from model.nvnmd import is_nvnmd_file, read_nvnmd
    spec, path = synthetic
    assert is_nvnmd_file(path)
    nv = read_nvnmd(path)
    assert (nv.ntypes, nv.sel, nv.rcut, nv.nix_shift, nv.s0) == (2, spec["sel"], spec["rcut"], 6, -106 / 256)
    assert np.array_equal(nv.s_coef, spec["s_coef"]) and np.array_equal(nv.h_coef, spec["h_coef"])
    assert np.array_equal(nv.g_coef, spec["g_coef"])
    assert np.array_equal(nv.gs, spec["gs"] * 2.0 ** -23)
    for t in range(2):
        for layer in range(4):
            W = np.asarray(spec["W_int"][t][layer]) * np.exp2(np.asarray(spec["expo"][t][layer])[None, :] - 16.0)
            assert np.array_equal(nv.fit_w[t][layer], W), (t, layer)
            assert np.array_equal(nv.fit_b[t][layer], np.asarray(spec["bias"][t][layer]) * 2.0 ** -23)
            assert nv.fit_expo[t][layer] == list(spec["expo"][t][layer])
    assert nv.checks["bps_vs_fps_max_lsb"] <= 1.0


@pytest.mark.parametrize("where, field", [
    ("truncate", "file size"),
    ("unused-type-weight", "fps/bps"),
    ("above-width", "fps: row"),
    ("final-bias", "fps type 1 final layer"),
    ("tables-not-deepmds", "swt s table"),
])
def test_synthetic_file_refusals_name_the_field(synthetic, tmp_path, where, field):
    from model.nvnmd import fit_env_norm, read_nvnmd
    _, path = synthetic
    raw = bytearray(path.read_bytes())
    fps = 128 + 229 * 12
    if where == "truncate":
        del raw[-1]
    elif where == "unused-type-weight":
        raw[fps + 2 * 64 * 196 * 12 + 5] ^= 1  # type 2's first stream
    elif where == "above-width":
        raw[fps + 11] = 0x80  # bit 95 of a 72-bit row
    elif where == "final-bias":  # stream (type 1, lane 0): the final layer's bias, bits 14016 + 39 on
        bit = (64 * 196 * 72) + 14016 + 2 * 18 + 3
        row, k = divmod(bit, 72)
        raw[fps + row * 12 + k // 8] ^= 1 << (k % 8)
    bad = tmp_path / "bad.pb"
    bad.write_bytes(bytes(raw))
    with pytest.raises(UnsupportedModel, match=f"NVNMD v0 {field}"):
        nv = read_nvnmd(bad)
        fit_env_norm(nv)  # random u-tables are no normalised s: refused by name
