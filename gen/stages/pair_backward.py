"""PairBackward: second pass over an atom's buffered records -> dE/dr_ij, and the output words.

For each atom: takes the atom engine's result (energy, flags, dE/dGR), emits the output HEADER word,
then streams the atom's records from the record buffer and emits one RECORD word per valid slot
(contract.wire).  Per record (model.reference stage 10):

    s1  products dGR[k,c] G[c] and dGR[k,c] R[k]
    s2  dR[k] = rq(sum_c ...),  dGj[c] = rq(sum_k ...)
    s3  dS = sat(rq(dR0) + rq(sum_c dGj[c] G'[c])),  dH = rq(sum_a dR[a+1] dx_a)
    s4  dU = sat(rq(dS ds/du) + rq(dH dh/du))
    s5  F_a = sat(rq(dR[a+1] h) + rq(2 dU dx_a))  -> RECORD word (bit 61: any saturation in s2-s5)

Latency 5 cycles; one beat per cycle (none for a record beat without a valid slot); stalls as a whole
under backpressure.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from contract.wire import OUTPUT_HEADER, OUTPUT_RECORD

from .. import layouts
from ..fixed import any_of, requant, saturate, shift_round, tree_sum
from ..words import pack
from .atom_engine import atom_out_layout
from .base import like
from .record_framer import word_beat_layout


class PairBackward(wiring.Component):
    LATENCY = 5

    def __init__(self, design):
        self.design = design
        super().__init__({"atom": In(stream.Signature(atom_out_layout(design))),
                          "rec": In(stream.Signature(design.beat_layout(layouts.embed_slot(design)))),
                          "o": Out(stream.Signature(word_beat_layout(design)))})

    def elaborate(self, platform):
        m = Module()
        d, F = self.design, self.design.F
        cfg, lanes = d.cfg, d.knobs.lanes
        m1, ns = cfg.m1, cfg.norm_shift
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)

        def reg(v, name=None):
            s = like(v, name)
            with m.If(advance):
                m.d.sync += s.eq(v)
            return s

        # -- input selection: an atom's header, then its record beats -------------------------------
        dgr = Signal(atom_out_layout(d).members["dGR"])
        in_records = Signal()
        take_atom = advance & ~in_records & self.atom.valid
        take_rec = advance & in_records & self.rec.valid
        m.d.comb += [self.atom.ready.eq(advance & ~in_records), self.rec.ready.eq(advance & in_records)]
        a = self.atom.payload
        with m.If(take_atom):
            m.d.sync += [dgr.eq(a.dGR), in_records.eq(1)]
        with m.If(take_rec & self.rec.payload.last):
            m.d.sync += in_records.eq(0)

        header_word = pack(OUTPUT_HEADER, tag=a.atom.tag, n=a.atom.n, flags=a.atom.flags, energy=a.energy)
        # stage bookkeeping: beat valid, header?, header word.  A record beat without a valid slot (the one
        # empty beat that carries an atom with no records through the record stages) sends nothing: the
        # output is exactly a header beat and ceil(n / lanes) record beats per atom (contract.wire).
        any_slot = any_of(self.rec.payload.slots[lane].valid for lane in range(lanes))
        v = [reg(take_atom | (take_rec & any_slot), "v1")]
        hdr = [reg(take_atom, "hdr1")]
        hword = [reg(header_word, "hword1")]
        for k in range(2, self.LATENCY + 1):
            v.append(reg(v[-1], f"v{k}"))
            hdr.append(reg(hdr[-1], f"hdr{k}"))
            hword.append(reg(hword[-1], f"hword{k}"))
        m.d.comb += self.o.valid.eq(v[-1])

        for lane in range(lanes):
            slot = self.rec.payload.slots[lane]
            valid1 = reg(slot.valid & take_rec)
            # s1: products (dGR uses the value latched with this atom's header; see take_atom)
            pr_dR = [[reg(dgr[k][c] * slot.G[c]) for c in range(m1)] for k in range(4)]
            pr_dG = [[reg(dgr[k][c] * slot.R[k]) for k in range(4)] for c in range(m1)]
            keep = {name: reg(getattr(slot, name)) for name in ("d", "h", "ds", "dh", "dG")}
            # s2: sums, requantize
            sat2 = []
            dR = []
            for k in range(4):
                q, s = requant(m, tree_sum(pr_dR[k]), F["G"].frac + F["dGR"].frac + ns, F["dR"])
                dR.append(reg(q))
                sat2.append(s)
            dGj = []
            for c in range(m1):
                q, s = requant(m, tree_sum(pr_dG[c]), F["R"].frac + F["dGR"].frac + ns, F["dGj"])
                dGj.append(q)
                sat2.append(s)
            dGj = [reg(x) for x in dGj]
            valid2 = reg(valid1)
            s2 = reg(any_of(sat2) & valid1)
            keep2 = {k: reg(v_) for k, v_ in keep.items()}
            # s3: dS, dH
            dS_g = shift_round(tree_sum(dGj[c] * keep2["dG"][c] for c in range(m1)),
                               F["dGj"].frac + F["dG"].frac - F["dS"].frac)
            dS, sat_s = saturate(m, shift_round(dR[0], F["dR"].frac - F["dS"].frac) + dS_g, F["dS"])
            dH, sat_h = requant(m, tree_sum(dR[1 + a] * keep2["d"][a] for a in range(3)), F["dR"].frac + F["coord"].frac,
                                F["dH"])
            dS3, dH3 = reg(dS), reg(dH)
            dR3 = [reg(x) for x in dR[1:]]
            valid3 = reg(valid2)
            s3 = reg(s2 | ((sat_s | sat_h) & valid2))
            keep3 = {k: reg(keep2[k]) for k in ("d", "h", "ds", "dh")}
            # s4: dU
            dU, sat_u = saturate(m, shift_round(dS3 * keep3["ds"], F["dS"].frac + F["ds"].frac - F["dU"].frac)
                                 + shift_round(dH3 * keep3["dh"], F["dH"].frac + F["dh"].frac - F["dU"].frac), F["dU"])
            dU4 = reg(dU)
            dR4 = [reg(x) for x in dR3]
            valid4 = reg(valid3)
            s4 = reg(s3 | (sat_u & valid3))
            keep4 = {k: reg(keep3[k]) for k in ("d", "h")}
            # s5: dE/dr
            ff = F["F"].frac
            fs, sat_f = [], []
            for ax in range(3):
                fv, sf = saturate(m, shift_round(dR4[ax] * keep4["h"], F["dR"].frac + F["h"].frac - ff)
                                  + shift_round(dU4 * keep4["d"][ax], F["dU"].frac + F["coord"].frac - 1 - ff), F["F"])
                fs.append(fv)
                sat_f.append(sf)
            sat5 = s4 | (any_of(sat_f) & valid4)
            rec_word = pack(OUTPUT_RECORD, dEdx=fs[0], dEdy=fs[1], dEdz=fs[2], saturated=sat5)
            word = Mux(valid4, rec_word, 0)
            word5 = reg(word)
            if lane == 0:
                m.d.comb += self.o.payload[0].eq(Mux(hdr[-1], hword[-1], word5))
            else:
                m.d.comb += self.o.payload[lane].eq(Mux(hdr[-1], 0, word5))
        return m
