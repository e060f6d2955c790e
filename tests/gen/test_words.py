"""gen/words.py: the gateware's reading and building of wire words equals the NumPy codec, bit for bit
(both from contract/wire.py), including narrow signed values sign-extended into their fields."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from contract import wire
from gen.words import field, kind, pack

N = 40


def simulate(m, bench):
    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_fields_are_the_codecs():
    rng = np.random.default_rng(1)
    words = [int(w) for w in rng.integers(0, 2 ** 63, N, dtype=np.uint64) | (rng.integers(0, 2, N, dtype=np.uint64) << np.uint64(63))]
    m = Module()
    word = Signal(wire.WORD_BITS)
    outs = {(w.name, f.name): Signal(f.width if not f.signed else signed(f.width), name=f"{w.name}_{f.name}")
            for w in wire.WORDS for f in w if not f.reserved}
    for (wname, fname), s in outs.items():
        layout = next(w for w in wire.WORDS if w.name == wname)
        m.d.comb += s.eq(field(word, layout[fname]))
    k = Signal(2)
    m.d.comb += k.eq(kind(word))

    async def bench(ctx):
        for value in words:
            ctx.set(word, value)
            assert ctx.get(k) == wire.kind(value)
            for (wname, fname), s in outs.items():
                layout = next(w for w in wire.WORDS if w.name == wname)
                assert ctx.get(s) == layout[fname].get(value), (wname, fname, hex(value))

    simulate(m, bench)


@pytest.mark.parametrize("force_bits", [wire.FORCE_BITS, 16])
def test_packed_words_are_the_codecs(force_bits):
    rng = np.random.default_rng(2)
    m = Module()
    tag, n, fl = Signal(wire.TAG_BITS), Signal(wire.COUNT_BITS), Signal(8)
    energy = Signal(signed(wire.ENERGY_BITS))
    f = [Signal(signed(force_bits), name=f"f{a}") for a in range(3)]
    sat = Signal()
    head, rec = Signal(64), Signal(64)
    m.d.comb += [head.eq(pack(wire.OUTPUT_HEADER, tag=tag, n=n, flags=fl, energy=energy)),
                 rec.eq(pack(wire.OUTPUT_RECORD, dEdx=f[0], dEdy=f[1], dEdz=f[2], saturated=sat))]
    lim = 1 << (force_bits - 1)

    async def bench(ctx):
        for _ in range(N):
            t, c, g = int(rng.integers(0, 1 << 12)), int(rng.integers(0, 1 << 10)), int(rng.integers(0, 32))
            e = int(rng.integers(-(1 << 31), 1 << 31))
            fv = rng.integers(-lim, lim, 3)
            s = int(rng.integers(0, 2))
            for sig, v in ((tag, t), (n, c), (fl, g), (energy, e), (sat, s), *zip(f, fv.tolist())):
                ctx.set(sig, v)
            assert ctx.get(head) == int(wire.output_header(t, c, g, e))
            assert ctx.get(rec) == int(wire.output_record(fv, s))

    simulate(m, bench)


def test_pack_refuses_missing_unknown_and_too_wide_values():
    with pytest.raises(KeyError, match="energy"):
        pack(wire.OUTPUT_HEADER, tag=Signal(12), n=Signal(10), flags=Signal(8))
    with pytest.raises(KeyError, match="bogus"):
        pack(wire.OUTPUT_HEADER, tag=Signal(12), n=Signal(10), flags=Signal(8), energy=Signal(32), bogus=Signal())
    with pytest.raises(ValueError, match="13-bit value"):
        pack(wire.OUTPUT_HEADER, tag=Signal(13), n=Signal(10), flags=Signal(8), energy=Signal(32))
