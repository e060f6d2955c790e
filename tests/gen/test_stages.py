"""Unit tests of the pipeline stages in Amaranth's simulator, each against the matching step of the
NumPy reference (integers compared with ==), with idle input cycles and output backpressure."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from gen.ir import Design, Knobs
from gen.stages.atom_engine import AtomEngine, Tanh4
from gen.stages.base import StreamFork
from gen.stages.pair_forward import EmbeddingTable, EnvRow, PairGeometry, RadialTable
from model.assembly import neighbor_blocks, quantize_records
from contract.fixedpoint import Fmt, requant
from model.reference import evaluate, table_lookup, tanh4
from streams import run_stream
from support import random_structure, tiny_qm


def records(seed=1):
    qm = tiny_qm()
    pos, cell, types = random_structure(seed=seed)
    return quantize_records(qm, neighbor_blocks(qm, pos, cell, True, types))


class ForwardChain(wiring.Component):
    """PairGeometry -> RadialTable -> EnvRow -> EmbeddingTable, as in the pipeline."""

    def __init__(self, design):
        self.stages = [PairGeometry(design), RadialTable(design), EnvRow(design), EmbeddingTable(design)]
        super().__init__({"i": wiring.In(self.stages[0].i.signature.flip()),
                          "o": wiring.Out(self.stages[-1].o.signature)})

    def elaborate(self, platform):
        m = Module()
        for k, s in enumerate(self.stages):
            m.submodules[f"s{k}"] = s
        for a, b in zip(self.stages, self.stages[1:]):
            wiring.connect(m, a.o, b.i)
        wiring.connect(m, wiring.flipped(self.i), self.stages[0].i)
        wiring.connect(m, self.stages[-1].o, wiring.flipped(self.o))
        return m


@pytest.mark.parametrize("lanes,seed", [(1, 0), (2, 1)])
def test_forward_record_stages(lanes, seed):
    """u, s, h, ds/du, dh/du, R, G, G' per record, including a pair below r_min and one past rcut."""
    qm, F = tiny_qm(), tiny_qm().formats
    rec = records(seed)
    valid = rec.nbr_type >= 0
    T = np.concatenate([rec.nbr_type[valid][:150], [0, 1]])
    D = np.concatenate([rec.nbr_d[valid][:150], [[3000, 0, 0], [60000, 0, 0]]])
    n = len(T)
    u = (D * D).sum(1)
    s, ds, below, _, _ = table_lookup(qm.table_s, u)
    h, dh, *_ = table_lookup(qm.table_h, u)
    s, ds, h, dh = s[:, 0], ds[:, 0], h[:, 0], dh[:, 0]
    R = np.concatenate([requant(s, F["s"].frac, F["R"])[0][:, None],
                        requant(h[:, None] * D, F["h"].frac + F["coord"].frac, F["R"])[0]], axis=1)
    G = np.zeros((n, 32), dtype=np.int64)
    dG = np.zeros_like(G)
    for t in range(2):
        g, dg, *_ = table_lookup(qm.table_g[t], s[T == t])
        G[T == t], dG[T == t] = g, dg

    dut = ForwardChain(Design(qm, Knobs(lanes=lanes)))
    beats = []
    for k in range(0, n, lanes):
        def beat(ctx, p, k=k):
            for l in range(lanes):
                sl = p.slots[l]
                ctx.set(sl.valid, int(k + l < n))
                if k + l < n:
                    ctx.set(sl.type, int(T[k + l]))
                    for a in range(3):
                        ctx.set(sl.d[a], int(D[k + l, a]))
            ctx.set(p.last, 0)
        beats.append(beat)
    out, _, _ = run_stream(dut, beats, len(beats), idle=0.2, backpressure=0.3, seed=seed, raw=False)
    got = [sl for p in out for sl in p.slots if sl.valid]
    assert len(got) == n
    for k, sl in enumerate(got):
        assert (sl.s, sl.ds, sl.h, sl.dh, sl.below) == (s[k], ds[k], h[k], dh[k], below[k]), k
        assert [sl.R[i] for i in range(4)] == list(R[k])
        assert [sl.G[c] for c in range(32)] == list(G[k]) and [sl.dG[c] for c in range(32)] == list(dG[k])


@pytest.mark.parametrize("fit_par,desc_par", [(8, 4), (4, 2)])
def test_atom_engine_energy_and_gradient(fit_par, desc_par):
    """Descriptor, fitting net forward/backward and dE/dGR from GR, for atoms of both centre types."""
    qm = tiny_qm()
    rec = records(2)
    trace = {}
    res = evaluate(qm, rec, trace=trace)
    atoms = [0, 1, 2, 3]
    dut = AtomEngine(Design(qm, Knobs(fit_par=fit_par, desc_par=desc_par)))

    def beat(a):
        def set_(ctx, p):
            ctx.set(p.atom.tag, a)
            ctx.set(p.atom.ctype, int(rec.center_type[a]))
            ctx.set(p.atom.n, 3)
            ctx.set(p.atom.flags, 0)
            for k in range(4):
                for c in range(32):
                    ctx.set(p.GR[k][c], int(trace["GR"][a, k, c]))
        return set_
    out, _, _ = run_stream(dut, [beat(a) for a in atoms], len(atoms), backpressure=0.5, raw=False)
    assert {int(rec.center_type[a]) for a in atoms} == {0, 1}
    for a, p in zip(atoms, out):
        assert p.energy == res.energy[a]
        assert [[p.dGR[k][c] for c in range(32)] for k in range(4)] == trace["dGR"][a].tolist()
        assert p.atom.flags == res.flags[a]


def test_tanh4_unit_matches_reference():
    f = Fmt(27, 23)
    z = np.concatenate([np.arange(-(3 << 23), 3 << 23, 12345), [0, 1, -1, 2 << 23, -(2 << 23), f.hi, f.lo]])
    y_ref, d_ref = tanh4(z, 23)
    dut = Tanh4(f)
    got = []

    async def tb(ctx):
        for k, v in enumerate(list(z) + [0] * Tanh4.LATENCY):
            ctx.set(dut.z, int(v))
            await ctx.tick()
            if k >= Tanh4.LATENCY - 1:
                got.append((ctx.get(dut.y), ctx.get(dut.dphi)))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    got = np.array(got[: len(z)])
    assert (got[:, 0] == y_ref).all() and (got[:, 1] == d_ref).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_stream_fork_loses_and_duplicates_nothing(seed):
    """Both outputs see every beat once, in order, under independent random backpressure."""
    import random
    dut = StreamFork(16)
    got = {"a": [], "b": []}
    rng = random.Random(seed)

    async def tb(ctx):
        k = 0
        while len(got["a"]) < 200 or len(got["b"]) < 200:
            ctx.set(dut.i.valid, int(k < 200 and rng.random() < 0.7))
            ctx.set(dut.i.payload, k)
            for name in "ab":
                ctx.set(getattr(dut, name).ready, int(rng.random() < 0.5))
            *_, iv, ir, av, ar, ap, bv, br, bp = await ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.a.valid, dut.a.ready, dut.a.payload, dut.b.valid, dut.b.ready, dut.b.payload)
            if av and ar:
                got["a"].append(ap)
            if bv and br:
                got["b"].append(bp)
            if iv and ir:
                k += 1
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert got["a"] == list(range(200)) and got["b"] == list(range(200))
