"""Forward per-record stages: PairGeometry -> RadialTable -> EnvRow -> EmbeddingTable.

Each is one `SlotStage` (see base.py for the handshake contract) and the hardware twin of one step of
`model.reference._evaluate_chunk` (stages 1 to 4).  Invalid slots flow through with valid = 0 and
are ignored downstream.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from amaranth.hdl import Mux

from .. import layouts
from ..fixed import requant
from . import table
from .base import SlotStage


class PairGeometry(SlotStage):
    """u = dx^2 + dy^2 + dz^2, exact.  Latency 1."""

    latency = 1

    def __init__(self, design):
        super().__init__(design, layouts.record_slot(design), layouts.geometry_slot(design))

    def slot_datapath(self, m, slot, lane, out):
        d = slot.d
        u = self.reg(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
        for name in ("valid", "type", "d"):
            m.d.comb += getattr(out, name).eq(self.reg(getattr(slot, name)))
        m.d.comb += out.u.eq(u)


class RadialTable(SlotStage):
    """u -> s, h = s/r, ds/du, dh/du from one ROM (both functions share the segment geometry).

    Pairs with u < r_min^2 are clamped and marked `below`; u beyond the last segment (r >= rcut) gives
    zeros.  With the env_norm option the tables have one channel per centre type: the ROM holds one
    block of rows per centre type, addressed by the atom's ctype.  Latency 4 (table.LATENCY)."""

    latency = table.LATENCY

    def __init__(self, design):
        super().__init__(design, layouts.geometry_slot(design), layouts.radial_slot(design))
        ts, th = design.qm.table_s, design.qm.table_h
        geom = lambda t: (t.x_frac, t.seg_shift, t.xi_bits, t.x_min, t.nseg, t.nch, t.coef_fmt.bits)
        if geom(ts) != geom(th):
            raise ValueError("s and h tables must share their segment geometry")
        # one (s, h) table per u-table channel (per centre type with env_norm, else one)
        self.rom_tables = [dataclasses.replace(ts, coef=np.concatenate([ts.coef[:, c:c + 1], th.coef[:, c:c + 1]], axis=1))
                           for c in range(ts.nch)]

    def slot_datapath(self, m, slot, lane, out):
        qm = self.design.qm
        if lane == 0:
            self.mem = table.table_rom(m, self.design, self.rom_tables, "rom")
        chans = [(qm.table_s, qm.table_s.out_fmt, qm.table_s.dout_fmt),
                 (qm.table_h, qm.table_h.out_fmt, qm.table_h.dout_fmt)]
        n = len(self.rom_tables)
        ctype = self.i.payload.atom.ctype
        block = Mux(ctype < n, ctype, 0) if n > 1 else 0  # a bad ctype drops the atom downstream
        outs, below, past, sat = table.evaluate(self, m, self.mem, self.rom_tables[0], slot.u, type_index=block,
                                                channels=chans)
        (sv, dsv), (hv, dhv) = outs
        valid = self.delay(slot.valid, self.latency)
        m.d.comb += [out.valid.eq(valid), out.type.eq(self.delay(slot.type, self.latency)),
                     out.d.eq(self.delay(slot.d, self.latency)),
                     out.s.eq(sv), out.ds.eq(dsv), out.h.eq(hv), out.dh.eq(dhv),
                     out.below.eq(below & valid), out.sat.eq(sat & valid)]


class EnvRow(SlotStage):
    """R = (s, h dx, h dy, h dz) in the R format.  Latency 1."""

    latency = 1

    def __init__(self, design):
        super().__init__(design, layouts.radial_slot(design), layouts.env_slot(design))

    def slot_datapath(self, m, slot, lane, out):
        F = self.design.F
        r0, sat0 = requant(m, slot.s, F["s"].frac, F["R"])
        rs, sats = [r0], [sat0]
        for a in range(3):
            r, s = requant(m, slot.h * slot.d[a], F["h"].frac + F["coord"].frac, F["R"])
            rs.append(r)
            sats.append(s)
        for name in ("valid", "type", "d", "s", "ds", "h", "dh", "below"):
            m.d.comb += getattr(out, name).eq(self.reg(getattr(slot, name)))
        for k in range(4):
            m.d.comb += out.R[k].eq(self.reg(rs[k]))
        m.d.comb += out.sat.eq(self.reg(slot.sat | (slot.valid & (sats[0] | sats[1] | sats[2] | sats[3]))))


class EmbeddingTable(SlotStage):
    """s -> G(s), G'(s) (M1 channels) from the neighbour type's table.  Latency 4 (table.LATENCY)."""

    latency = table.LATENCY

    def __init__(self, design):
        super().__init__(design, layouts.env_slot(design), layouts.embed_slot(design))
        tabs = design.qm.table_g
        if len({(t.nseg, t.x_frac, t.seg_shift, t.xi_bits, t.coef_fmt) for t in tabs}) != 1:
            raise ValueError("every neighbour type's G table must share its geometry")

    def slot_datapath(self, m, slot, lane, out):
        tabs = self.design.qm.table_g
        if lane == 0:
            self.mem = table.table_rom(m, self.design, tabs, "rom")
        ntypes = len(tabs)
        ty = Mux(slot.type < ntypes, slot.type, 0)
        outs, _, past, sat = table.evaluate(self, m, self.mem, tabs[0], slot.s, type_index=ty)
        valid = self.delay(slot.valid, self.latency)
        for name in ("type", "d", "s", "ds", "h", "dh", "below", "R"):
            m.d.comb += getattr(out, name).eq(self.delay(getattr(slot, name), self.latency))
        for c, (g, dg) in enumerate(outs):
            m.d.comb += [out.G[c].eq(g), out.dG[c].eq(dg)]
        m.d.comb += [out.valid.eq(valid),
                     out.sat.eq(self.delay(slot.sat, self.latency) | (valid & (sat | past)))]
