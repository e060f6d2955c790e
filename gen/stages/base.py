"""Building blocks shared by the pipeline stages.

`SlotStage`: a fixed-latency stage over beats of `lanes` record slots.  Every register of the stage
advances together when the output can move (`advance = ~o.valid | o.ready`), so backpressure
freezes the stage as a whole: nothing is lost or duplicated, and `i.ready` never depends on
`i.valid`.  Subclasses describe one slot's datapath with `self.reg()` between register stages and
set `latency`; the base class carries `last` and the atom information alongside.

`StreamFork`: one stream into two, each output handshaking independently (AXI-style, valid never
depends on the same output's ready).
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


def like(value, name=None):
    """A new signal with the shape (or layout) of `value`."""
    if isinstance(value, data.View):
        return Signal(data.Layout.cast(value.shape()), name=name)
    return Signal(Value.cast(value).shape(), name=name)


class SlotStage(wiring.Component):
    """Fixed-latency stage over beats of record slots.

    Interface contract: `i` and `o` are valid/ready streams of `beat_layout(in_slot)` and
    `beat_layout(out_slot)`.  Latency is `self.latency` cycles with `o.ready` high; one beat per cycle.
    """

    latency: int = 1

    def __init__(self, design, in_slot, out_slot):
        self.design = design
        self.in_slot, self.out_slot = in_slot, out_slot
        super().__init__({"i": In(stream.Signature(design.beat_layout(in_slot))),
                          "o": Out(stream.Signature(design.beat_layout(out_slot)))})

    def reg(self, value, name=None):
        """Register `value`; it advances with the stage."""
        sig = like(value, name)
        with self._m.If(self.advance):
            self._m.d.sync += sig.eq(value)
        return sig

    def delay(self, value, n: int, name=None):
        for _ in range(n):
            value = self.reg(value, name)
        return value

    def slot_datapath(self, m: Module, slot, lane: int, out):
        """Drive the fields of `out` (an out_slot View) from `slot`, `self.latency` registers later."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = self._m = Module()
        self.advance = Signal()
        m.d.comb += [self.advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(self.advance)]
        for lane in range(self.design.knobs.lanes):
            self.slot_datapath(m, self.i.payload.slots[lane], lane, self.o.payload.slots[lane])
        m.d.comb += [self.o.payload.last.eq(self.delay(self.i.payload.last, self.latency)),
                     self.o.payload.atom.eq(self.delay(self.i.payload.atom, self.latency)),
                     self.o.valid.eq(self.delay(self.i.valid, self.latency))]
        return m


class StreamFork(wiring.Component):
    """Copies each beat of `i` to both `a` and `b`; a beat is consumed once both have taken it."""

    def __init__(self, layout):
        super().__init__({"i": In(stream.Signature(layout)), "a": Out(stream.Signature(layout)),
                          "b": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        done_a, done_b = Signal(), Signal()
        take_a = self.a.valid & self.a.ready
        take_b = self.b.valid & self.b.ready
        m.d.comb += [
            self.a.payload.eq(self.i.payload), self.b.payload.eq(self.i.payload),
            self.a.valid.eq(self.i.valid & ~done_a), self.b.valid.eq(self.i.valid & ~done_b),
            self.i.ready.eq((done_a | self.a.ready) & (done_b | self.b.ready)),
        ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [done_a.eq(0), done_b.eq(0)]
        with m.Else():
            m.d.sync += [done_a.eq(done_a | take_a), done_b.eq(done_b | take_b)]
        return m
