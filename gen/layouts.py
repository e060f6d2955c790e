"""Record-slot layouts of the per-record stages (what each stage adds to a record).

A record flows  record -> geometry (+u) -> radial (+s, h, ds/du, dh/du) -> env row (+R) ->
embedding (+G, G').  The embedding slot is also what the record buffer keeps for the backward pass.
"""

from __future__ import annotations

from amaranth.hdl import unsigned
from amaranth.lib import data

from contract.wire import TYPE_BITS

from .ir import Design


def record_slot(d: Design):
    return data.StructLayout({"valid": 1, "type": TYPE_BITS, "d": data.ArrayLayout(d.fmt_shape("coord"), 3)})


def geometry_slot(d: Design):
    return data.StructLayout({**record_slot(d).members, "u": unsigned(d.u_bits)})


def radial_slot(d: Design):
    return data.StructLayout({**record_slot(d).members, "s": d.fmt_shape("s"), "ds": d.fmt_shape("ds"),
                              "h": d.fmt_shape("h"), "dh": d.fmt_shape("dh"), "below": 1, "sat": 1})


def env_slot(d: Design):
    return data.StructLayout({**radial_slot(d).members, "R": data.ArrayLayout(d.fmt_shape("R"), 4)})


def embed_slot(d: Design):
    m1 = d.cfg.m1
    return data.StructLayout({**env_slot(d).members, "G": data.ArrayLayout(d.fmt_shape("G"), m1),
                              "dG": data.ArrayLayout(d.fmt_shape("dG"), m1)})


def force_slot(d: Design):
    return data.StructLayout({"valid": 1, "f": data.ArrayLayout(d.fmt_shape("F"), 3)})
