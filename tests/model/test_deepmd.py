"""DeePMD-kit import (model/deepmd.py) and the float model's options it needs (env_norm, pad_slots,
fit_activation).

Without ../shared: a small se_a model written here as a frozen graph (our own protobuf encoder, so the
reader is tested on bytes it did not write), imported and compared with a literal, slot-by-slot
implementation of DeePMD-kit's se_a (every neighbour slot of sel, padding included, normalised with
davg/dstd per centre type, GR / sum(sel)): a different algorithm from model/network.py's.  With
../shared: the seed group's frozen graph against examples/GeTe/experiments/group_model.py's
GroupModel on AIMD frames (the issue's acceptance: 1e-6 eV/atom, 1e-5 eV/Å).
"""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import torch

from contract.config import OPTIONS, ModelConfig
from model.deepmd import UnsupportedModel, import_graph, read_graph
from model.network import ACTIVATIONS, evaluate
from model.neighbors import edges
from deepmd_graph import imported_qm, small_se_a, write_graph
from support import GETE_216, REPO, SHARED_DATA, random_structure, require_shared

GROUP_PB = SHARED_DATA / "nvnmd-models" / "deepmd-GeTe-float.pb"


def deepmd_energy(c: dict, pos: torch.Tensor, cell: np.ndarray, types: np.ndarray) -> torch.Tensor:
    """DeePMD-kit se_a, slot by slot: each atom's sum(sel) neighbour slots (type sections, the empty ones
    zero rows), normalised (row - davg[t_i]) / dstd[t_i], embedded by the section's net, GR = sum / nnei."""
    script = json.loads(c["train_attr/training_script"])["model"]
    desc, fit = script["descriptor"], script["fitting_net"]
    sel, rcut, rs, axis = desc["sel"], desc["rcut"], desc["rcut_smth"], desc["axis_neuron"]
    nt, nnei = len(sel), sum(sel)
    avg = torch.as_tensor(c["descrpt_attr/t_avg"]).reshape(nt, nnei, 4)
    std = torch.as_tensor(c["descrpt_attr/t_std"]).reshape(nt, nnei, 4)
    act = ACTIVATIONS[fit["activation_function"]]
    e = edges(pos.detach().numpy(), cell, True, rcut)
    T = lambda a: torch.as_tensor(a)

    def net(x, layers, phi, resnet_fit):
        for k, (W, b) in enumerate(layers):
            y = phi(x @ T(W) + T(b))
            if resnet_fit:
                x = x + y if k >= 1 and W.shape[0] == W.shape[1] else y
            elif W.shape[1] == W.shape[0]:
                x = x + y
            elif W.shape[1] == 2 * W.shape[0]:
                x = torch.cat([x, x], -1) + y
            else:
                x = y
        return x

    total = pos.new_zeros(())
    for i in range(len(types)):
        ti = int(types[i])
        rows = []
        for t in range(nt):
            js = [k for k in range(len(e.i)) if e.i[k] == i and types[e.j[k]] == t]
            assert len(js) <= sel[t]
            for k in js:
                rij = pos[e.j[k]] - pos[i] + T(e.vec[k] - (pos[e.j[k]] - pos[i]).detach().numpy())
                r = torch.linalg.norm(rij)
                u = torch.clamp((r - rs) / (rcut - rs), 0, 1)
                s = (u ** 3 * (-6 * u * u + 15 * u - 10) + 1) / r
                rows.append((t, torch.cat([s[None], s / r * rij])))
            rows += [(t, pos.new_zeros(4))] * (sel[t] - len(js))
        GR = pos.new_zeros((4, desc["neuron"][-1]))
        for slot, (t, row) in enumerate(rows):
            nrow = (row - avg[ti, slot]) / std[ti, slot]
            layers = [(c[f"filter_type_all/matrix_{k}_{t}"], c[f"filter_type_all/bias_{k}_{t}"])
                      for k in range(1, len(desc["neuron"]) + 1)]
            G = net(nrow[:1][None], layers, torch.tanh, False)[0]
            GR = GR + nrow[:, None] * G[None, :]
        GR = GR / nnei
        D = (GR.T @ GR[:, :axis]).reshape(-1)
        layers = [(c[f"layer_{k}_type_{ti}/matrix"], c[f"layer_{k}_type_{ti}/bias"]) for k in range(len(fit["neuron"]))]
        x = net(D[None], layers, act, True)
        total = total + (x @ T(c[f"final_layer_type_{ti}/matrix"]) + T(c[f"final_layer_type_{ti}/bias"]))[0, 0]
    return total


def ours(model, pos, cell, types):
    e = edges(pos, cell, True, model.cfg.rcut)
    E, F, _, _ = evaluate(model, torch.tensor(e.vec), torch.tensor(e.i), torch.tensor(e.j), torch.tensor(types),
                          torch.zeros(len(types), dtype=torch.long), 1)
    return float(E[0]), F.numpy()


# ---- the reader -----------------------------------------------------------------------------------------

def test_reader_reads_every_kind_of_constant(tmp_path):
    consts = {"f": np.arange(6.0).reshape(2, 3), "d": np.float64(-2.5), "i": np.int32(-7),
              "iv": np.array([3, -1, 60], np.int32), "s": "Ge Te"}
    g = read_graph(write_graph(tmp_path / "g.pb", consts, ops=("ProdEnvMatA",)))
    assert g.ops == {"Const": 5, "ProdEnvMatA": 1}
    assert np.array_equal(g.consts["f"], consts["f"]) and g.consts["f"].dtype == np.float64
    assert g.consts["d"] == -2.5 and g.consts["i"] == -7 and g.consts["s"] == "Ge Te"
    assert g.consts["iv"].tolist() == [3, -1, 60]


def test_reader_refuses_what_is_no_graph(tmp_path):
    p = tmp_path / "x.pb"
    p.write_bytes(b"\x0f\xff\xff")  # wire type 7
    with pytest.raises(UnsupportedModel, match="not a readable frozen TensorFlow graph"):
        read_graph(p)


# ---- the import against DeePMD's formulas ------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["tanh", "tanh4"])
def test_import_equals_deepmd_se_a_slot_by_slot(tmp_path, activation):
    c = small_se_a(seed=1, activation=activation)
    model, prov = import_graph(write_graph(tmp_path / "m.pb", c))
    on = {"env_norm", "pad_slots"} | ({"fit_activation"} if activation == "tanh" else set())
    assert model.cfg.options().keys() == on and prov["import"]["options"].keys() == on
    # 12 atoms in 343 Å^3, ~9 neighbours within 4 Å and sel 9 + 8: empty slots in every atom
    pos, cell, types = random_structure(natoms=12, box=7.0, dmin=1.9, seed=4)
    E, F = ours(model, pos, cell, types)
    p = torch.tensor(pos, requires_grad=True)
    E_ref = deepmd_energy(c, p, cell, types)
    (g,) = torch.autograd.grad(E_ref, p)
    assert abs(E - E_ref.item()) / len(types) < 1e-12
    assert np.abs(F + g.numpy()).max() < 1e-10


def test_padding_is_what_changes_the_energy(tmp_path):
    """The empty slots matter (else the test above could not see a padding bug): without pad_slots the
    same weights give another energy."""
    model, _ = import_graph(write_graph(tmp_path / "m.pb", small_se_a(seed=2)))
    pos, cell, types = random_structure(natoms=12, box=7.0, dmin=1.9, seed=5)
    E, _ = ours(model, pos, cell, types)
    nopad = copy.deepcopy(model)
    nopad.cfg.pad_slots = False
    assert abs(ours(nopad, pos, cell, types)[0] - E) > 1e-3


def test_more_neighbours_than_sel_is_an_error(tmp_path):
    model, _ = import_graph(write_graph(tmp_path / "m.pb", small_se_a(seed=1, sel=(2, 2))))
    pos, cell, types = random_structure(natoms=12, box=7.0, dmin=1.9, seed=4)
    with pytest.raises(ValueError, match=r"more than sel\[\d\]=2"):
        ours(model, pos, cell, types)


def _script_edit(c, path, value):
    script = json.loads(c["train_attr/training_script"])
    d = script
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return {**c, "train_attr/training_script": json.dumps(script)}


REFUSED = {
    "fparam": (lambda c: {**c, "fitting_attr/dfparam": np.int32(2)}, "fitting_attr/dfparam"),
    "aparam": (lambda c: {**c, "fitting_attr/daparam": np.int32(1)}, "fitting_attr/daparam"),
    "se_r": (lambda c: _script_edit(c, ("model", "descriptor", "type"), "se_e2_r"), "model.descriptor.type"),
    "se_atten op": (lambda c: c, "graph ops"),
    "type embedding": (lambda c: _script_edit(c, ("model", "type_embedding"), {"neuron": [8]}), "model.type_embedding"),
    "two-side": (lambda c: _script_edit(c, ("model", "descriptor", "type_one_side"), False),
                 "model.descriptor.type_one_side"),
    "resnet_dt": (lambda c: _script_edit(c, ("model", "fitting_net", "resnet_dt"), True), "model.fitting_net.resnet_dt"),
    "activation": (lambda c: _script_edit(c, ("model", "fitting_net", "activation_function"), "gelu"),
                   "model.fitting_net.activation_function"),
    "dipole": (lambda c: {**c, "model_attr/model_type": "dipole"}, "model_attr/model_type"),
    "too many types": (lambda c: {**c, "descrpt_attr/ntypes": np.int32(17), "model_attr/tmap": " ".join("X" * 17)},
                       "descrpt_attr/ntypes"),
    "too many neighbours": (lambda c: {**c, "descrpt_attr/sel": np.array([1000, 24], np.int32)}, "descrpt_attr/sel"),
    "xyz mean": (lambda c: {**c, "descrpt_attr/t_avg": c["descrpt_attr/t_avg"] + 0.01}, "descrpt_attr/t_avg"),
    "compressed": (lambda c: {k: v for k, v in c.items() if k != "filter_type_all/matrix_2_1"},
                   "filter_type_all/matrix_2_1"),
    "no script": (lambda c: {k: v for k, v in c.items() if k != "train_attr/training_script"},
                  "train_attr/training_script"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_cannot_be_represented_is_refused_by_name(tmp_path, case):
    edit, field = REFUSED[case]
    ops = ("ProdEnvMatAMix",) if case == "se_atten op" else ("ProdEnvMatA",)
    path = write_graph(tmp_path / "m.pb", edit(small_se_a()), ops=ops)
    with pytest.raises(UnsupportedModel, match=f"{path}: {field.replace('.', '[.]')}: "):
        import_graph(path)


def test_cli_import_writes_a_float_checkpoint_with_provenance(tmp_path, capsys):
    from model.cli import main
    from model.train import load_checkpoint
    pb = write_graph(tmp_path / "m.pb", small_se_a(seed=3))
    assert main(["import", str(pb), "-o", str(tmp_path / "m.pt")]) == 0
    back = load_checkpoint(tmp_path / "m.pt")
    model, _ = import_graph(pb)
    pos, cell, types = random_structure(natoms=12, box=7.0, dmin=1.9, seed=6)
    assert ours(back, pos, cell, types)[0] == ours(model, pos, cell, types)[0]
    ck = torch.load(tmp_path / "m.pt", weights_only=False)
    assert ck["provenance"]["import"]["sha256"] == read_graph(pb).sha256
    assert main(["import", str(pb), "-o", str(tmp_path / "m.npz")]) != 0  # needs --calib
    assert "--calib" in capsys.readouterr().err


# ---- the options: off by default, no trace in the file; refused by the quantized pipeline --------------

def test_options_are_left_out_of_the_config_when_off():
    d = ModelConfig().to_dict()
    assert not set(OPTIONS) & set(d)
    on = ModelConfig(env_norm={"s_avg": [0.1, 0.2], "s_std": [1.0, 2.0], "r_std": [1.0, 1.0]}, pad_slots=True,
                     fit_activation="tanh", desc_band=True, embed_neurons=[32],
                     embed_table={"x0": -0.5, "ranges": [[0.25, 8], [1.0, 4]]})
    assert ModelConfig.from_dict(on.to_dict()) == on and set(OPTIONS) <= set(on.to_dict())


@pytest.mark.parametrize("kwargs, match", [
    ({"pad_slots": True}, "pad_slots needs env_norm"),
    ({"fit_activation": "relu"}, "fit_activation must be one of"),
    ({"env_norm": {"s_avg": [0.1], "s_std": [1.0], "r_std": [1.0]}}, r"env_norm\['r_std'\] must list one"),
    ({"env_norm": {"s_avg": [0.1, 0.1], "s_std": [1.0, 0.0], "r_std": [1.0, 1.0]}}, r"env_norm\['s_std'\] entries"),
    ({"env_norm": {"s_avg": [0.1, 0.1], "s_std": [1.0, 1.0], "r_std": [1.0, 1.0]}, "s_std": 0.5}, "normalises the embedding input itself"),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


# ---- the seed group's model (../shared) -------------------------------------------------------------------

def test_group_model_import_equals_deepmd_on_aimd_frames():
    """Acceptance: the imported float model equals DeePMD's se_a on the group's graph (group_model.py's
    GroupModel, DeePMD's formulas) to 1e-6 eV/atom and 1e-5 eV/Å, on a melt and a quench frame."""
    require_shared(GROUP_PB)
    require_shared(GETE_216)
    sys.path.insert(0, str(REPO / "examples" / "GeTe" / "experiments"))
    import group_model
    from model.data import load_systems
    from model.metrics import predict_float
    model, prov = import_graph(GROUP_PB)
    assert prov["import"]["options"]["fit_activation"] == "tanh"
    group = group_model.GroupModel(group_model.read_constants(GROUP_PB))
    for sub, frame in (("s2-melt-1000K/temp-1500K", 17), ("s3-quench-300K/temp-300K", 399)):
        (system,) = load_systems([GETE_216 / sub])
        e, f, _ = predict_float(model, system, frame)
        e_ref, f_ref, _ = predict_float(group, system, frame)
        assert abs(e - e_ref) / system.natoms < 1e-6
        assert np.abs(f - f_ref).max() < 1e-5
        assert abs(e - system.energies[frame]) / system.natoms < 0.05  # and it is the model of this data


# ---- the quantized import: the reference computes the options ------------------------------------------------

def _records(qm, seed):
    from model.assembly import neighbor_blocks, quantize_records
    pos, cell, types = random_structure(natoms=30, box=9.0, dmin=2.0, seed=seed)
    return quantize_records(qm, neighbor_blocks(qm, pos, cell, True, types)), (pos, cell, types)


@pytest.mark.parametrize("activation", ["tanh", "tanh4"])
def test_quantized_import_vectorized_equals_scalar(activation):
    """The reference's options (per-centre u-table channels, a G table starting below zero, padding
    slots, the tanh table) == the naive scalar implementation, integer for integer."""
    import scalar_reference
    from model.reference import evaluate as ref_evaluate
    qm, _ = imported_qm(activation)
    assert qm.table_s.nch == 2 and qm.table_g[0].first_seg < 0 and (qm.table_act is not None) == (activation == "tanh")
    rec, _ = _records(qm, seed=20)
    res = ref_evaluate(qm, rec)
    for a in range(0, len(rec), 5):
        recs = [(int(t), *map(int, d)) for t, d in zip(rec.nbr_type[a], rec.nbr_d[a]) if t >= 0]
        e, forces, flags = scalar_reference.atom(qm, int(rec.center_type[a]), recs)
        assert len(recs) < sum(qm.config.sel)  # padding slots in use
        assert e == int(res.energy[a])
        assert forces == [tuple(map(int, f)) for f in res.dEdr[a, :len(recs)]]
        assert flags == int(res.flags[a])


def test_quantized_import_close_to_float():
    """Bounds for this small random model, a factor ~5 above what it measures (2.0e-5 eV/atom, 1.9e-4 of
    max|F|), so that a lost bit or a wrong shift fails."""
    from model.assembly import compute
    qm, model = imported_qm()
    pos, cell, types = random_structure(natoms=30, box=9.0, dmin=2.0, seed=21)
    a = compute(qm, pos, cell, True, types)
    e, f = ours(model, pos, cell, types)
    de, df = abs(a.energy - e) / len(types), np.abs(a.forces - f).max() / np.abs(f).max()
    assert de < 1e-4, de
    assert df < 1e-3, df


def test_a_record_at_rcut_is_an_empty_slot():
    """A neighbour in the u-tables' last segment (past rcut) gives exactly what an empty slot gives:
    the same energy words as without it, and no force: DeePMD's continuity at rcut, bit for bit."""
    from model.reference import NeighborRecords, evaluate as ref_evaluate
    qm, _ = imported_qm()
    rec, _ = _records(qm, seed=22)
    a = 3
    free = int(np.flatnonzero(rec.nbr_type[a] < 0)[0]) if (rec.nbr_type[a] < 0).any() else None
    t, d = rec.nbr_type.copy(), rec.nbr_d.copy()
    if free is None:
        t, d = np.pad(t, ((0, 0), (0, 1)), constant_values=-1), np.pad(d, ((0, 0), (0, 1), (0, 0)))
        free = t.shape[1] - 1
    u_end = (qm.table_s.nseg - 1) << qm.table_s.index_shift
    t[a, free], d[a, free] = 1, (int(np.ceil(np.sqrt(u_end))) + 1, 0, 0)
    before = ref_evaluate(qm, rec)
    after = ref_evaluate(qm, NeighborRecords(rec.center_type, t, d))
    assert np.array_equal(before.energy, after.energy)
    assert after.dEdr[a, free].tolist() == [0, 0, 0]


def test_tanh_table_is_odd_and_within_two_lsb_of_tanh():
    from model.reference import activation
    qm, _ = imported_qm()
    f = qm.formats["Z"].frac
    z = np.concatenate([np.arange(-(1 << 26), 1 << 26, 4099), [qm.formats["Z"].lo, qm.formats["Z"].hi]])
    y, dy = activation(qm, z, f)
    y2, dy2 = activation(qm, -z[z > -(1 << 26)], f)
    assert np.array_equal(y2, -y[z > -(1 << 26)]) and np.array_equal(dy2, dy[z > -(1 << 26)])
    zf = z * 2.0 ** -f
    assert np.abs(y * 2.0 ** -f - np.tanh(zf)).max() < 2 * 2.0 ** -f
    assert np.abs(dy * 2.0 ** -f - (1 - np.tanh(zf) ** 2)).max() < 1e-4


def test_quantized_import_file_round_trip(tmp_path):
    from contract import modelfile
    from contract.paths import EXAMPLE_MODEL
    qm, _ = imported_qm()
    h = modelfile.save(qm, tmp_path / "m.npz")
    back = modelfile.load(tmp_path / "m.npz")
    assert back.hash == h and back.config == qm.config and back.table_g[0].first_seg == qm.table_g[0].first_seg
    assert np.array_equal(back.table_act.coef, qm.table_act.coef)
    head = json.loads(modelfile._read_archive(tmp_path / "m.npz")["header"].tobytes())
    assert "act" in head["tables"] and "first_seg" in head["tables"]["g"][0] and "env_norm" in head["config"]
    # a model without options carries none of them
    plain = json.loads(modelfile._read_archive(EXAMPLE_MODEL)["header"].tobytes())
    assert "act" not in plain["tables"] and "first_seg" not in plain["tables"]["g"][0]
    assert not set(OPTIONS) & set(plain["config"])


def test_implementations_without_the_options_refuse_the_model(monkeypatch):
    from contract import config
    from gen.ir import Design, DesignError, Knobs
    from host.native import host_model_text
    qm, _ = imported_qm()
    Design(qm, Knobs(fit_par=4, desc_par=2))  # the generator computes them (tests/gen/test_pipeline.py)
    monkeypatch.setitem(config.IMPLEMENTED_OPTIONS, "rtl", frozenset({"env_norm"}))
    with pytest.raises(DesignError, match="rtl implementation does not compute .*pad_slots=True, fit_activation"):
        Design(qm, Knobs(fit_par=4, desc_par=2))
    assert "pipeline_options env_norm fit_activation pad_slots" in host_model_text(qm, pipeline=True)
    monkeypatch.setitem(config.IMPLEMENTED_OPTIONS, "cpu", frozenset())
    with pytest.raises(ValueError, match="cpu implementation does not compute"):
        host_model_text(qm, pipeline=True)
    assert host_model_text(qm).startswith("dpfpga-host-model")  # the host core itself needs no option


def test_group_model_quantized_import_keeps_the_float_force_rmse():
    """Acceptance (issue 21): the quantized import's force RMSE against DFT within 5 % of the float
    model's, here on 6 frames of three phases (calibration and r_min from two other systems);
    examples/GeTe/experiments/import_accuracy.py measures every 10th frame of every system."""
    require_shared(GROUP_PB)
    require_shared(GETE_216)
    from model.data import load_systems
    from model.metrics import predict_float, predict_quantized
    from model.quantize import quantize
    model, _ = import_graph(GROUP_PB)
    calib = load_systems([GETE_216 / "s3-quench-300K/temp-500K", GETE_216 / "s2-melt-1000K/temp-1200K"])
    qm = quantize(model, calib, nframes=4)
    sq = {"float": 0.0, "quantized": 0.0}
    for sub in ("s3-quench-300K/temp-300K", "s3-quench-300K/temp-800K", "s2-melt-1000K/temp-1800K"):
        (system,) = load_systems([GETE_216 / sub])
        for frame in (5, system.nframes - 5):
            ref = system.forces[frame].reshape(-1, 3)
            sq["float"] += float(((predict_float(model, system, frame)[1] - ref) ** 2).sum())
            sq["quantized"] += float(((predict_quantized(qm, system, frame)[1] - ref) ** 2).sum())
    assert np.sqrt(sq["quantized"] / sq["float"]) < 1.05
