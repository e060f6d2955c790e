"""Piecewise-quadratic table evaluation, shared by the radial and embedding tables.

Hardware twin of `model.reference.table_lookup`.  Four register stages after the input:

    0 -> 1  clamp the input, split it into segment index and xi, read the coefficient ROM
    1 -> 2  t = round(c * xi)
    2 -> 3  y' = a + round((b + t) * xi),  dy' = b + 2t
    3 -> 4  requantize y' and dy' to their formats (saturation flagged), zero past the last segment,
            dy = 0 below x_min (the clamped table is constant there: forces stay the energy's gradient)
"""

from __future__ import annotations

from amaranth.hdl import Const, Mux, Signal, signed
from amaranth.lib.memory import Memory

from contract.modelfile import Table
from ..fixed import requant, shift_round

LATENCY = 4


def coef_fields(row, nch: int, bits: int):
    """(a, b, c) signed slices per channel of a packed ROM row."""
    out = []
    for ch in range(nch):
        base = ch * 3 * bits
        out.append(tuple(row[base + i * bits: base + (i + 1) * bits].as_signed() for i in range(3)))
    return out


def table_rom(m, design, tabs: list[Table], name: str) -> Memory:
    rows, nseg = design.table_rows(tabs)
    width = tabs[0].nch * 3 * tabs[0].coef_fmt.bits
    mem = Memory(shape=width, depth=len(rows), init=rows)
    m.submodules[name] = mem
    return mem


def evaluate(stage, m, mem: Memory, tab: Table, x, type_index=0, nseg=None, channels=None):
    """Emit the table pipeline for input `x` (a value with tab.x_frac fraction bits).

    Returns per channel [(y, dy)] after LATENCY registers, plus (below, past, sat) registered alike.
    `channels` lists (coef Table, out fmt, dout fmt) per channel when they differ (radial table).
    """
    nseg = nseg or tab.nseg
    x_min = Const(tab.x_min)
    below = x < x_min
    xc = Mux(below, x_min, x)
    idx = (xc >> tab.index_shift) - tab.first_seg  # >= 0: xc >= x_min >= first_seg's first input
    xi = (xc >> (tab.index_shift - tab.xi_bits))[: tab.xi_bits]
    past = idx >= nseg
    addr = Mux(past, nseg - 1, idx[: max(1, (nseg - 1).bit_length())]) + type_index * nseg
    rp = mem.read_port()
    m.d.comb += [rp.addr.eq(addr), rp.en.eq(stage.advance)]
    # stage 1: ROM data is registered; carry xi and flags alongside.
    xi1 = stage.reg(xi, "xi")
    xi1s = Signal(signed(tab.xi_bits + 1))
    m.d.comb += xi1s.eq(xi1)
    below1, past1 = stage.reg(below), stage.reg(past)
    chans = channels or [(tab, tab.out_fmt, tab.dout_fmt)] * tab.nch
    coefs = coef_fields(rp.data, len(chans), tab.coef_fmt.bits)
    stage2, xi2 = [], stage.reg(xi1s)
    for (a, b, c) in coefs:
        t = shift_round(c * xi1s, tab.xi_bits)
        stage2.append((stage.reg(a), stage.reg(b), stage.reg(t)))
    below2, past2 = stage.reg(below1), stage.reg(past1)
    stage3 = []
    for (a, b, t) in stage2:
        yc = a + shift_round((b + t) * xi2, tab.xi_bits)
        stage3.append((stage.reg(yc), stage.reg(b + 2 * t)))
    below3, past3 = stage.reg(below2), stage.reg(past2)
    outs, sats = [], []
    for (yc, dyc), (ctab, fo, fd) in zip(stage3, chans):
        y, sy = requant(m, yc, ctab.coef_fmt.frac, fo)
        dy, sd = requant(m, dyc, ctab.coef_fmt.frac - ctab.seg_shift, fd)
        outs.append((stage.reg(Mux(past3, 0, y)), stage.reg(Mux(past3 | below3, 0, dy))))
        sats.append((sy & ~past3) | (sd & ~(past3 | below3)))
    sat = 0
    for s in sats:
        sat = sat | s
    return outs, stage.reg(below3), stage.reg(past3), stage.reg(sat)
