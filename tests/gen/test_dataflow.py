"""The dataflow fitting stages (gen/stages/dataflow.py), each alone, against model.reference (==).

Each stage gets the reference's own intermediates (evaluate(..., trace=) on real records, and
model.reference._fitting on synthetic descriptors that reach every format's limits) as its input
stream, with its weight memory, and must give the reference's next intermediates and saturation bit,
without stalls, with idle input cycles and with output backpressure (seeds in the test ids).
The whole pipeline with arch="dataflow" is in tests/gen/test_pipeline.py.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

import cases
from contract import wire
from contract.fixedpoint import Fmt
from contract.flags import FLAG_BAD_TYPE, FLAG_SATURATED
from gen.ir import Design, DesignError, Knobs
from gen.stages import dataflow as df
from model import reference
from model.reference import NeighborRecords
from streams import run_stream
from support import tiny_qm

MODES = {"plain": (0.0, 0.0), "idle": (0.3, 0.0), "backpressure": (0.0, 0.4)}


def rotate(values, default):
    """pytest params of `values` x MODES; the pairs in `default` run by default, the rest under -m slow
    (the default run sees every stage, and every mode, at least once)."""
    out = []
    for v in values:
        for mode in MODES:
            marks = [] if (v, mode) in default else [pytest.mark.slow]
            out.append(pytest.param(v, mode, marks=marks, id=f"{v}-{mode}"))
    return out


def design(qm=None, pe=(4, 2, 8), simd=(16, 32, 8), energy_simd=16, desc_par=4):
    return Design(qm or tiny_qm(), Knobs.dataflow(pe=pe, simd=simd, energy_simd=energy_simd, desc_par=desc_par))


@functools.lru_cache(maxsize=None)
def narrow_qm():
    """The test model with narrow activation, gradient and energy formats (same fraction bits, fewer
    integer bits), so that every requantization of the fitting stages saturates on some atoms."""
    qm = copy.copy(tiny_qm())
    F = qm.formats
    qm.formats = {**F, "A": Fmt(25, F["A"].frac), "GA": Fmt(24, F["GA"].frac), "DELTA": Fmt(23, F["DELTA"].frac),
                  "E": Fmt(28, F["E"].frac), "dD": Fmt(21, F["dD"].frac)}
    return qm


class Harness(wiring.Component):
    """A stage with its weight memory; its side streams joined to its main ones, so that one driver
    and one monitor run it: in = {main, side} (side_i), out = {main, side} (side_o)."""

    def __init__(self, stage, rows=None):
        self.stage, self.rows = stage, rows
        mem = stage.signature.members
        self.has_si, self.has_so = "side_i" in mem, "side_o" in mem
        ins = {"main": mem["i"].signature.members["payload"].shape}
        outs = {"main": mem["o"].signature.members["payload"].shape}
        if self.has_si:
            ins["side"] = mem["side_i"].signature.members["payload"].shape
        if self.has_so:
            outs["side"] = mem["side_o"].signature.members["payload"].shape
        super().__init__({"i": In(stream.Signature(data.StructLayout(ins))),
                          "o": Out(stream.Signature(data.StructLayout(outs)))})

    def elaborate(self, platform):
        m = Module()
        s = m.submodules.stage = self.stage
        if self.rows is not None:
            m.submodules.w = w = Memory(shape=s.w_width, depth=len(self.rows), init=self.rows)
            rp = w.read_port()
            m.d.comb += [rp.addr.eq(s.w_addr), rp.en.eq(1), s.w_data.eq(rp.data)]
        m.d.comb += s.i.payload.eq(self.i.payload.main)
        if self.has_si:
            # the stage joins i and side_i itself (both taken in the same cycle): offer both together
            m.d.comb += [s.side_i.payload.eq(self.i.payload.side), s.i.valid.eq(self.i.valid),
                         s.side_i.valid.eq(self.i.valid), self.i.ready.eq(s.i.ready)]
        else:
            m.d.comb += [s.i.valid.eq(self.i.valid), self.i.ready.eq(s.i.ready)]
        if self.has_so:
            # side_o leaves with o (MatVec stages) or before it (DescriptorStage pushes GR when it takes
            # the atom): a FIFO on each lines them up, as the pipeline's FIFOs do
            m.submodules.side = side = df.VectorFIFO(s.side_o.payload.shape(), 64)
            m.submodules.main = main = df.VectorFIFO(s.o.payload.shape(), 64)
            wiring.connect(m, s.side_o, side.i)
            wiring.connect(m, s.o, main.i)
            m.d.comb += [self.o.payload.main.eq(main.o.payload), self.o.payload.side.eq(side.o.payload),
                         self.o.valid.eq(main.o.valid & side.o.valid),
                         main.o.ready.eq(self.o.ready & side.o.valid), side.o.ready.eq(self.o.ready & main.o.valid)]
        else:
            m.d.comb += [self.o.payload.main.eq(s.o.payload), self.o.valid.eq(s.o.valid), s.o.ready.eq(self.o.ready)]
        return m


def run(harness, inputs: list[dict], seed: int, mode: str):
    """Drive one beat per atom (a dict of field -> ints per path), return the output beats as Views
    read back into nested Python lists."""
    layout = harness.signature.members["i"].signature.members["payload"].shape
    out_layout = harness.signature.members["o"].signature.members["payload"].shape
    beats = [_pack(layout, b) for b in inputs]
    outs, cycles, _ = run_stream(harness, beats, n_out=len(inputs), idle=MODES[mode][0],
                                 backpressure=MODES[mode][1], seed=seed)
    return [_unpack(out_layout, int(v)) for v in outs], cycles


def _pack(layout, value, at=0) -> int:
    from amaranth.hdl import Shape
    if isinstance(layout, data.Layout):
        if isinstance(layout, data.StructLayout):
            return sum(_pack(f.shape, value[name]) << f.offset for name, f in layout) << at
        size = _size(layout.elem_shape)
        return sum(_pack(layout.elem_shape, v) << (k * size) for k, v in enumerate(value)) << at
    shape = Shape.cast(layout)
    return (int(value) & ((1 << shape.width) - 1)) << at


def _size(shape):
    from amaranth.hdl import Shape
    return data.Layout.cast(shape).size if isinstance(shape, data.Layout) else Shape.cast(shape).width


def _unpack(layout, v: int):
    from amaranth.hdl import Shape
    if isinstance(layout, data.Layout):
        if isinstance(layout, data.StructLayout):
            return {name: _unpack(f.shape, v >> f.offset) for name, f in layout}
        size = _size(layout.elem_shape)
        return [_unpack(layout.elem_shape, v >> (k * size)) for k in range(layout.length)]
    shape = Shape.cast(layout)
    x = v & ((1 << shape.width) - 1)
    return x - (1 << shape.width) if shape.signed and x >> (shape.width - 1) else x


@functools.lru_cache(maxsize=None)
def narrow_descriptor_qm():
    """The test model with D and dE/dGR two and four bits narrower: some real atoms saturate them."""
    qm = copy.copy(tiny_qm())
    F = qm.formats
    qm.formats = {**F, "D": Fmt(23, F["D"].frac), "dGR": Fmt(23, F["dGR"].frac)}
    return qm


# ---- reference intermediates -------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def record_trace(seed: int = 0):
    """Intermediates of real atoms (random structure, edge records) through model.reference.evaluate
    (narrow_descriptor_qm: D and dGR saturate on some)."""
    qm = narrow_descriptor_qm()
    parts = [cases.random_atoms(qm, 1, seed, n_atoms=4), cases.edge_atoms(qm, 1, seed)]
    rec = [wire.decode_atoms(c.beats)[:3] for c in parts]
    m = max(r[1].shape[1] for r in rec)
    ct = np.concatenate([r[0] for r in rec])
    nt = np.concatenate([np.pad(r[1], ((0, 0), (0, m - r[1].shape[1])), constant_values=-1) for r in rec])
    nd = np.concatenate([np.pad(r[2], ((0, 0), (0, m - r[2].shape[1]), (0, 0))) for r in rec])
    trace = {}
    reference.evaluate(qm, NeighborRecords(ct, nt, nd), trace=trace)
    return trace


@functools.lru_cache(maxsize=None)
def synthetic_trace(seed: int, n_atoms: int = 6):
    """model.reference._fitting on random descriptors over the whole D range (some at its limits,
    so that activations, gradients and the energy saturate), both centre types."""
    qm = narrow_qm()
    fD = qm.formats["D"]
    rng = np.random.default_rng(seed)
    scale = [2 ** (fD.frac - 4), 2 ** (fD.frac + 1), fD.hi]  # small, large, the format's limits
    D = np.stack([np.clip(rng.integers(-int(s), int(s) + 1, size=len(qm.fit[0][0].W)), fD.lo, fD.hi)
                  for s in (scale * n_atoms)[:n_atoms]]).astype(np.int64)
    ct = np.arange(n_atoms) % qm.config.ntypes
    trace = {"D": D, "ctype": ct}
    fit = {}
    for t in range(qm.config.ntypes):
        rows = np.flatnonzero(ct == t)
        reference._fitting(qm, t, D[rows], reference._Saturation(n_atoms), rows, fit)
    for key, parts in fit.items():
        full = np.zeros((n_atoms,) + parts[0][1].shape[1:], dtype=parts[0][1].dtype)
        for rows, v in parts:
            full[rows] = v
        trace[key] = full
    return trace


def atom(k, ctype, flags=0):
    return {"tag": k, "ctype": int(ctype), "n": 1, "flags": flags}


TRACES = {"records": lambda seed: record_trace(0), "synthetic": synthetic_trace}


# ---- the stages --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer,mode", rotate([0, 1, 2], {(0, "plain"), (1, "idle"), (2, "backpressure")}))
def test_fwd_layer_seed0(layer, mode):
    d = design(narrow_qm())
    k = d.knobs
    tr = synthetic_trace(0)
    stage = df.FwdLayer(d, layer, pe=k.pe[layer], simd=k.simd[layer])
    h = Harness(stage, df.layer_tiles(d, layer, k.pe[layer], k.simd[layer]))
    x_in = tr["D"] if layer == 0 else tr[f"fit_x{layer - 1}"]
    sat_in = np.arange(len(x_in)) % 4 == 3  # an upstream saturation must survive
    inputs = [{"main": {"atom": atom(a, tr["ctype"][a]), "sat": int(sat_in[a]), "x": list(x_in[a])}}
              for a in range(len(x_in))]
    out, _ = run(h, inputs, 0, mode)
    last = layer == d.n_layers - 1
    assert layer == 0 or tr[f"fit_sat_fwd{layer}"].any()  # the narrow formats saturate (layer 0: no resnet)
    for a, o in enumerate(out):
        assert o["main"]["atom"]["tag"] == a
        assert o["main"]["x"] == list(tr[f"fit_x{layer}"][a])
        if last:
            assert o["main"]["delta"] == list(tr[f"fit_delta{layer}"][a])
        else:
            assert o["side"] == list(tr[f"fit_dphi{layer}"][a])
        assert o["main"]["sat"] == int(sat_in[a] | tr[f"fit_sat_fwd{layer}"][a])


@pytest.mark.parametrize("source,mode", rotate(["synthetic"], {("synthetic", "backpressure")}))
def test_energy_stage_seed0(source, mode):
    d = design(narrow_qm())
    tr = synthetic_trace(0)
    L = d.n_layers
    h = Harness(df.EnergyStage(d, simd=d.knobs.energy_simd), df.energy_tiles(d, d.knobs.energy_simd))
    n = len(tr["D"])
    inputs = [{"main": {"atom": atom(a, tr["ctype"][a]), "sat": 0, "x": list(tr[f"fit_x{L - 1}"][a]),
                        "delta": list(tr[f"fit_delta{L - 1}"][a])}} for a in range(n)]
    out, _ = run(h, inputs, 0, mode)
    assert tr["fit_sat_energy"].any() and not tr["fit_sat_energy"].all()
    for a, o in enumerate(out):
        assert o["main"]["energy"] == tr["fit_energy"][a]
        assert o["main"]["delta"] == list(tr[f"fit_delta{L - 1}"][a])
        assert o["main"]["sat"] == int(tr["fit_sat_energy"][a])


@pytest.mark.parametrize("layer,mode", rotate([2, 1, 0], {(2, "plain"), (1, "idle"), (0, "backpressure")}))
def test_bwd_layer_seed0(layer, mode):
    bwd_layer(layer, mode, "synthetic")


@pytest.mark.slow
@pytest.mark.parametrize("layer", [2, 1, 0])
def test_bwd_layer_records_seed0(layer):
    """Real atoms (random structure, edge records) without stalls; stalls: the synthetic ones."""
    bwd_layer(layer, "plain", "records")


def bwd_layer(layer, mode, source):
    d = design(narrow_qm() if source == "synthetic" else narrow_descriptor_qm())
    k = d.knobs
    tr = TRACES[source](0)
    L = d.n_layers
    stage = df.BwdLayer(d, layer, fwd_pe=k.pe[layer], fwd_simd=k.simd[layer])
    h = Harness(stage, df.layer_tiles(d, layer, k.pe[layer], k.simd[layer]))
    n = len(tr["D"])
    energy = tr["fit_energy"] if "fit_energy" in tr else np.zeros(n, dtype=np.int64)
    inputs = []
    for a in range(n):
        main = {"atom": atom(a, tr["ctype"][a]), "sat": 0, "energy": int(energy[a]),
                "delta": list(tr[f"fit_delta{layer}"][a])}
        if layer < L - 1:
            main["g"] = list(tr[f"fit_g{layer + 1}"][a])
        beat = {"main": main}
        if layer > 0:
            beat["side"] = list(tr[f"fit_dphi{layer - 1}"][a])
        inputs.append(beat)
    out, _ = run(h, inputs, 0, mode)
    if source == "synthetic":  # some atoms saturate (layer 0: all of them, with dD 21 bits wide)
        assert tr[f"fit_sat_bwd{layer}"].any() and (layer == 0 or not tr[f"fit_sat_bwd{layer}"].all())
    for a, o in enumerate(out):
        main = o["main"]
        assert main["energy"] == energy[a]
        if layer == 0:
            assert main["dD"] == list(tr["dD"][a] if "dD" in tr and source == "records" else _dD(tr, a))
        else:
            assert main["g"] == list(tr[f"fit_g{layer}"][a])
            assert main["delta"] == list(tr[f"fit_delta{layer - 1}"][a])
        assert main["sat"] == int(tr[f"fit_sat_bwd{layer}"][a])


def _dD(tr, a):
    """dE/dD of a synthetic atom: _fitting's return value, recomputed (it is not in the trace)."""
    qm = narrow_qm()
    t = int(tr["ctype"][a])
    _, dD = reference._fitting(qm, t, tr["D"][a:a + 1], reference._Saturation(1), np.array([0]))  # noqa
    return dD[0]


#: (desc_par, desc_rows) of the descriptor stages' tests: unfolded rows, and rows folded by 2 and by 4
DESC_FOLDS = [(4, 4), (8, 2), (4, 1)]


@pytest.mark.parametrize("desc_par,desc_rows", DESC_FOLDS, ids=lambda v: str(v))
@pytest.mark.parametrize("source,mode", rotate(["records"], {("records", "idle")}))
def test_descriptor_stage_seed0(source, mode, desc_par, desc_rows):
    d = design(narrow_descriptor_qm())
    tr = record_trace(0)
    assert tr["D_sat"].any() and not tr["D_sat"].all()
    h = Harness(df.DescriptorStage(d, desc_par=desc_par, desc_rows=desc_rows))
    n = len(tr["GR"])
    inputs = [{"main": {"atom": atom(a, tr["ctype"][a]), "GR": [list(r) for r in tr["GR"][a]]}} for a in range(n)]
    out, _ = run(h, inputs, 0, mode)
    for a, o in enumerate(out):
        assert o["main"]["x"] == list(tr["D"][a])
        assert o["main"]["sat"] == int(tr["D_sat"][a])
        assert o["side"] == [list(r) for r in tr["GR"][a]]


@pytest.mark.parametrize("desc_par,desc_rows", DESC_FOLDS, ids=lambda v: str(v))
@pytest.mark.parametrize("source,mode", rotate(["records"], {("records", "backpressure")}))
def test_gradient_stage_seed0(source, mode, desc_par, desc_rows):
    d = design(narrow_descriptor_qm())
    tr = record_trace(0)
    assert tr["dGR_sat"].any() and not tr["dGR_sat"].all()
    h = Harness(df.GradientStage(d, desc_par=desc_par, desc_rows=desc_rows))
    n = len(tr["GR"])
    flags = [FLAG_BAD_TYPE if a == 1 else 0 for a in range(n)]  # a dropped atom: zeros, its drop flag only
    sat_in = [a % 3 == 2 for a in range(n)]
    inputs = [{"main": {"atom": atom(a, tr["ctype"][a], flags[a]), "sat": int(sat_in[a]), "energy": 1000 + a,
                        "dD": list(tr["dD"][a])},
               "side": [list(r) for r in tr["GR"][a]]} for a in range(n)]
    out, _ = run(h, inputs, 0, mode)
    for a, o in enumerate(out):
        o = o["main"]
        if flags[a]:
            assert (o["energy"], o["atom"]["flags"]) == (0, flags[a])
            assert o["dGR"] == [[0] * d.cfg.m1] * 4
            continue
        assert o["dGR"] == [list(r) for r in tr["dGR"][a]]
        assert o["energy"] == 1000 + a
        assert o["atom"]["flags"] == (FLAG_SATURATED if sat_in[a] or tr["dGR_sat"][a] else 0)


# ---- folding parameters --------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"pe": 129, "simd": 16}, "FwdLayer 0: pe=129 exceeds the vector length 128"),
    ({"pe": 4, "simd": 0}, "FwdLayer 0: simd must be a positive integer, got 0"),
    ({"pe": 4, "simd": 2.0}, "FwdLayer 0: simd must be a positive integer, got 2.0"),
    ({"pe": True, "simd": 2}, "FwdLayer 0: pe must be a positive integer, got True"),
])
def test_fold_rejects_bad_values(kwargs, message):
    with pytest.raises(df.FoldingError, match=message):
        df.FwdLayer(design(), 0, **kwargs)


def test_fold_is_keyword_only():
    with pytest.raises(TypeError):
        df.FwdLayer(design(), 0, 4, 16)
    with pytest.raises(df.FoldingError, match="EnergyStage: simd=200 exceeds the vector length 128"):
        df.EnergyStage(design(), simd=200)
    with pytest.raises(df.FoldingError, match="DescriptorStage: desc_par=5 must divide 32"):
        df.DescriptorStage(design(), desc_par=5)
    with pytest.raises(df.FoldingError, match="GradientStage: desc_rows=3 must divide 4"):
        df.GradientStage(design(), desc_par=4, desc_rows=3)


@pytest.mark.parametrize("knobs,message", [
    (Knobs(arch="dataflow", pe=(1, 1), simd=(1, 1, 1)), r"pe must give one value per fitting layer \(3\)"),
    (Knobs(arch="dataflow", pe=(1, 0, 1), simd=(1, 1, 1)), r"pe\[1\]=0 must be an integer from 1 to the fitting"),
    (Knobs(arch="dataflow", pe=(1,) * 3, simd=(1,) * 3, engines=2), "fit_par and engines are knobs of arch 'engines'"),
    (Knobs(pe=(1,) * 3), "pe, simd and energy_simd are knobs of arch 'dataflow'"),
    (Knobs(arch="systolic"), "arch must be one of engines, dataflow, got 'systolic'"),
    (Knobs(desc_rows=3), r"desc_rows must be one of 1, 2, 4 \(rows of GR per cycle\), got 3"),
    (Knobs(desc_rows=True), r"desc_rows must be one of 1, 2, 4"),
])
def test_knobs_reject_bad_values(knobs, message):
    with pytest.raises(DesignError, match=message):
        Design(tiny_qm(), knobs)


def test_weights_stored_once_per_layer():
    """One memory per fitting layer (and one for out_w), read by both its stages: as many weight bits
    as the model has, whatever the folding."""
    d = design()
    qm, wb = d.qm, d.F["W"].bits
    for l in range(d.n_layers):
        for pe, simd in ((4, 16), (128, 1), (1, 128)):
            rows = df.layer_tiles(d, l, pe, simd)
            assert len(rows) * pe * simd == sum(qm.fit[t][l].W.size for t in range(d.cfg.ntypes))
            # tile (ob, ib) of type 1 holds W_1[ib*simd + s, ob*pe + p] at (p*simd + s)
            t, ob, ib, p, s = 1, 0, 1 % (128 // simd), pe - 1, simd - 1
            row = rows[t * (128 // pe) * (128 // simd) + ob * (128 // simd) + ib]
            w = (row >> ((p * simd + s) * wb)) & ((1 << wb) - 1)
            assert w - ((w >> (wb - 1)) << wb) == qm.fit[t][l].W[ib * simd + s, ob * pe + p]


def test_dataflow_refuses_model_options():
    """The dataflow design computes no model option (contract.config.IMPLEMENTED_OPTIONS["rtl-dataflow"]):
    an imported DeePMD-kit model (env_norm, pad_slots, fit_activation tanh) is refused by name, not built
    with tanh4; the engines design takes it."""
    from deepmd_graph import imported_qm
    qm, _ = imported_qm("tanh")
    with pytest.raises(DesignError, match=r"rtl-dataflow implementation does not compute .*env_norm.*fit_activation='tanh'"):
        Design(qm, Knobs.dataflow(pe=(4, 4, 4), simd=(8, 8, 8), desc_par=2, energy_simd=8))
    Design(qm, Knobs(lanes=1, fit_par=4, desc_par=2))
