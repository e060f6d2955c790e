"""DescriptorAccumulator: GR = 2**-norm_shift * sum_j R_j^T G_j over an atom's records.

Consumes beats of embedded records; emits one atom beat per atom (on the beat marked `last`) with
the requantized GR (4 x M1, format GR) and the atom's flags so far (record saturation, pairs below
r_min, GR saturation).  Products and the running sum are exact (a 48-bit accumulator holds
lanes * sum(sel) products of two 18-bit words).  Latency: 2 cycles from the last beat.

With the pad_slots option the atom's empty neighbour slots join the sum on its last beat: (sel[t] -
records of type t) times the constant product of one empty slot (model.reference.padding_products, per
centre and neighbour type; GR's first row only).  Records and empty slots together are sum(sel)
products, so the accumulator's bound holds.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from contract.flags import FLAG_BAD_TYPE, FLAG_NEIGHBOR_OVERFLOW, FLAG_R_BELOW_MIN, FLAG_SATURATED
from model.reference import padding_products

from .. import layouts
from ..fixed import any_of, requant, tree_sum
from ..widths import DESCRIPTOR_ACC_BITS


def atom_gr_layout(design):
    m1 = design.cfg.m1
    return data.StructLayout({"atom": design.atom_layout(),
                              "GR": data.ArrayLayout(data.ArrayLayout(design.fmt_shape("GR"), m1), 4)})


class DescriptorAccumulator(wiring.Component):
    ACC_BITS = DESCRIPTOR_ACC_BITS  # gen.ir.Design checks that R x G summed over sum(sel) records fits

    def __init__(self, design):
        self.design = design
        super().__init__({"i": In(stream.Signature(design.beat_layout(layouts.embed_slot(design)))),
                          "o": Out(stream.Signature(atom_gr_layout(design)))})

    def elaborate(self, platform):
        m = Module()
        d, F = self.design, self.design.F
        m1, lanes = d.cfg.m1, d.knobs.lanes
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
        beat = self.i.payload

        # stage 1: lane sums of R (x) G for this beat, masked by slot validity; records per type (pad_slots).
        prod = [[Signal(signed(self.ACC_BITS), name=f"p{k}_{c}") for c in range(m1)] for k in range(4)]
        pad, nt = d.cfg.pad_slots, d.cfg.ntypes
        cnt_bits = (sum(d.cfg.sel) + lanes).bit_length() + 1
        cnt1 = [Signal(signed(cnt_bits), name=f"cnt1_{t}") for t in range(nt if pad else 0)]
        cnt = [Signal(signed(cnt_bits), name=f"cnt_{t}") for t in range(nt if pad else 0)]
        v1, last1 = Signal(), Signal()
        atom1 = Signal(d.atom_layout())
        sat1, below1 = Signal(), Signal()
        with m.If(advance):
            for k in range(4):
                for c in range(m1):
                    # Mask invalid slots with a mux, not a multiply by `valid`: a third factor makes
                    # the product wider than one DSP48E2 (Yosys spent 3 DSPs per product).
                    terms = [Mux(beat.slots[l].valid, beat.slots[l].R[k] * beat.slots[l].G[c], 0)
                             for l in range(lanes)]
                    m.d.sync += prod[k][c].eq(tree_sum(terms))
            for t in range(nt if pad else 0):
                m.d.sync += cnt1[t].eq(tree_sum((beat.slots[l].valid & (beat.slots[l].type == t)).as_unsigned()
                                                for l in range(lanes)))
            m.d.sync += [v1.eq(self.i.valid), last1.eq(beat.last), atom1.eq(beat.atom),
                         sat1.eq(self.i.valid & any_of(beat.slots[l].sat & beat.slots[l].valid for l in range(lanes))),
                         below1.eq(self.i.valid & any_of(beat.slots[l].below & beat.slots[l].valid for l in range(lanes)))]

        # stage 2: accumulate; on the atom's last beat requantize and emit.
        acc = [[Signal(signed(self.ACC_BITS), name=f"acc{k}_{c}") for c in range(m1)] for k in range(4)]
        sat_acc, below_acc = Signal(), Signal()
        out = self.o.payload
        gr_sat = []
        with m.If(advance):
            m.d.sync += self.o.valid.eq(v1 & last1)
            with m.If(v1):
                with m.If(last1):
                    extra = self._padding(m, atom1, [c + c1 for c, c1 in zip(cnt, cnt1)]) if pad else None
                    for k in range(4):
                        for c in range(m1):
                            total = acc[k][c] + prod[k][c] + (extra[c] if pad and k == 0 else 0)
                            q, s = requant(m, total, F["R"].frac + F["G"].frac + d.cfg.norm_shift, F["GR"])
                            gr_sat.append(s)
                            m.d.sync += [out.GR[k][c].eq(q), acc[k][c].eq(0)]
                    sat = sat_acc | sat1 | any_of(gr_sat)
                    below = below_acc | below1
                    m.d.sync += [
                        out.atom.tag.eq(atom1.tag), out.atom.ctype.eq(atom1.ctype), out.atom.n.eq(atom1.n),
                        out.atom.flags.eq(atom1.flags | (sat * FLAG_SATURATED) | (below * FLAG_R_BELOW_MIN)),
                        sat_acc.eq(0), below_acc.eq(0)] + [c.eq(0) for c in cnt]
                with m.Else():
                    for k in range(4):
                        for c in range(m1):
                            m.d.sync += acc[k][c].eq(acc[k][c] + prod[k][c])
                    m.d.sync += [sat_acc.eq(sat_acc | sat1), below_acc.eq(below_acc | below1)]
                    m.d.sync += [c.eq(c + c1) for c, c1 in zip(cnt, cnt1)]
        return m

    def _padding(self, m, atom, counts):
        """The empty slots' sum for GR's first row, per channel: sum_t (sel[t] - counts[t]) GS[ctype, t];
        none for an atom the pipeline drops (bad type, more than sel records), as in the reference."""
        d = self.design
        gs = padding_products(d.qm)[:, :, 0, :]  # (centre type, neighbour type, M1), frac R + G
        dropped = (atom.flags & (FLAG_BAD_TYPE | FLAG_NEIGHBOR_OVERFLOW)) != 0
        out = []
        for c in range(d.cfg.m1):
            terms = []
            for t, n in enumerate(counts):
                const = Const(int(gs[0, t, c]), signed(self.ACC_BITS))
                for ct in range(1, d.cfg.ntypes):
                    const = Mux(atom.ctype == ct, Const(int(gs[ct, t, c]), signed(self.ACC_BITS)), const)
                terms.append((d.cfg.sel[t] - n) * const)
            out.append(Mux(dropped, 0, tree_sum(terms)))
        return out


