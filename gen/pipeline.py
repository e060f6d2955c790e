"""The whole pipeline: wire words in, wire words out (contract.wire), every constant from the model file.

    i ─► RecordFramer ─► PairGeometry ─► RadialTable ─► EnvRow ─► EmbeddingTable ─► fork
                                                                                     │      │
                              ┌───────────── DescriptorAccumulator ◄─────────────────┘      │
                              ▼                                                             ▼
                        AtomEngines (descriptor, fitting net fwd/bwd, dE/dGR)      RecordBuffer (FIFO)
                              │                                                             │
                              └──────────────────────► PairBackward ◄───────────────────────┘ ─► o

Three atoms are in flight: one in the forward record stages, one (per engine) in the atom engines,
one in the backward record stage.  Buffering is bounded by sum(sel) records per atom in flight, so
resources never depend on the number of atoms.  Handshakes are valid/ready throughout.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from . import layouts
from .ir import Design
from .stages.atom_engine import AtomEngine, atom_out_layout
from .stages.base import StreamFork
from .stages.dataflow import FittingPipeline
from .stages.descriptor_accumulator import DescriptorAccumulator, atom_gr_layout
from .stages.pair_backward import PairBackward
from .stages.pair_forward import EmbeddingTable, EnvRow, PairGeometry, RadialTable
from .stages.record_framer import RecordFramer, word_beat_layout


class RecordBuffer(wiring.Component):
    """FIFO of embedded record beats between the forward and the backward pass (depth from Design)."""

    def __init__(self, design):
        self.design = design
        self.layout = design.beat_layout(layouts.embed_slot(design))
        super().__init__({"i": In(stream.Signature(self.layout)), "o": Out(stream.Signature(self.layout))})

    def elaborate(self, platform):
        m = Module()
        width = data.Layout.cast(self.layout).size
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=width, depth=self.design.record_fifo_beats)
        m.d.comb += [fifo.w_data.eq(self.i.payload.as_value()), fifo.w_en.eq(self.i.valid),
                     self.i.ready.eq(fifo.w_rdy),
                     self.o.payload.as_value().eq(fifo.r_data), self.o.valid.eq(fifo.r_rdy),
                     fifo.r_en.eq(self.o.ready)]
        return m


class AtomEngines(wiring.Component):
    """`engines` AtomEngines served round robin: atom k goes to engine k mod E, results leave in order."""

    def __init__(self, design):
        self.design = design
        super().__init__({"i": In(stream.Signature(atom_gr_layout(design))),
                          "o": Out(stream.Signature(atom_out_layout(design)))})

    def elaborate(self, platform):
        m = Module()
        n = self.design.knobs.engines
        engines = [AtomEngine(self.design) for _ in range(n)]
        for k, e in enumerate(engines):
            m.submodules[f"engine{k}"] = e
        if n == 1:
            wiring.connect(m, wiring.flipped(self.i), engines[0].i)
            wiring.connect(m, engines[0].o, wiring.flipped(self.o))
            return m
        w_sel, r_sel = Signal(range(n)), Signal(range(n))
        for k, e in enumerate(engines):
            m.d.comb += [e.i.payload.eq(self.i.payload), e.i.valid.eq(self.i.valid & (w_sel == k)),
                         e.o.ready.eq(self.o.ready & (r_sel == k))]
            with m.If(w_sel == k):
                m.d.comb += self.i.ready.eq(e.i.ready)
            with m.If(r_sel == k):
                m.d.comb += [self.o.payload.eq(e.o.payload), self.o.valid.eq(e.o.valid)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += w_sel.eq(Mux(w_sel == n - 1, 0, w_sel + 1))
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += r_sel.eq(Mux(r_sel == n - 1, 0, r_sel + 1))
        return m


class Pipeline(wiring.Component):
    """Interface: `i`, `o` are streams of `lanes` 64-bit words per beat (contract.wire)."""

    def __init__(self, design: Design):
        self.design = design
        super().__init__({"i": In(stream.Signature(word_beat_layout(design))),
                          "o": Out(stream.Signature(word_beat_layout(design)))})

    def elaborate(self, platform):
        m = Module()
        d = self.design
        m.submodules.framer = framer = RecordFramer(d)
        m.submodules.geometry = geometry = PairGeometry(d)
        m.submodules.radial = radial = RadialTable(d)
        m.submodules.env = env = EnvRow(d)
        m.submodules.embedding = embedding = EmbeddingTable(d)
        m.submodules.fork = fork = StreamFork(d.beat_layout(layouts.embed_slot(d)))
        m.submodules.accumulator = acc = DescriptorAccumulator(d)
        m.submodules.buffer = buf = RecordBuffer(d)
        # the per-atom part: replicated atom engines, or the layer-pipelined fitting net (knob arch)
        m.submodules.engines = engines = FittingPipeline(d) if d.knobs.arch == "dataflow" else AtomEngines(d)
        m.submodules.backward = back = PairBackward(d)
        wiring.connect(m, wiring.flipped(self.i), framer.i)
        wiring.connect(m, framer.o, geometry.i)
        wiring.connect(m, geometry.o, radial.i)
        wiring.connect(m, radial.o, env.i)
        wiring.connect(m, env.o, embedding.i)
        wiring.connect(m, embedding.o, fork.i)
        wiring.connect(m, fork.a, acc.i)
        wiring.connect(m, fork.b, buf.i)
        wiring.connect(m, acc.o, engines.i)
        wiring.connect(m, engines.o, back.atom)
        wiring.connect(m, buf.o, back.rec)
        wiring.connect(m, back.o, wiring.flipped(self.o))
        return m
