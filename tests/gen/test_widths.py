"""gen/widths.py: product and sum widths derived from the formats, and the DesignError for a model
whose formats would overflow one of them."""

from __future__ import annotations

import copy
import itertools

import pytest
from support import tiny_qm

from contract.fixedpoint import Fmt
from gen.ir import Design, DesignError, Knobs
from gen.widths import FittingWidths, overflows, product_bits, sum_bits


def with_formats(qm, **formats):
    out = copy.copy(qm)
    out.formats = {**qm.formats, **formats}
    return out


def test_widths_hold_every_extreme_product_and_sum():
    """Exhaustive over small widths: the most negative and most positive products and sums fit."""
    for a, b in itertools.product(range(2, 7), repeat=2):
        extremes = [x * y for x in (-(1 << (a - 1)), (1 << (a - 1)) - 1) for y in (-(1 << (b - 1)), (1 << (b - 1)) - 1)]
        p = product_bits(a, b)
        assert all(-(1 << (p - 1)) <= v < (1 << (p - 1)) for v in extremes), (a, b)
        assert not all(-(1 << (p - 2)) <= v < (1 << (p - 2)) for v in extremes)  # and not one bit more
    for bits, terms in itertools.product(range(2, 6), range(1, 40)):
        s = sum_bits(bits, terms)
        lo, hi = terms * -(1 << (bits - 1)), terms * ((1 << (bits - 1)) - 1)
        assert -(1 << (s - 1)) <= lo and hi < (1 << (s - 1)), (bits, terms)


def test_fitting_widths_of_the_default_formats():
    qm = tiny_qm()
    fw = FittingWidths.of(qm.formats, 128)
    # s27 operands x s18 weights: 45-bit products (one DSP48E2), 16 per partial sum, 128 per dot product
    assert (fw.operand, fw.weight, fw.product, fw.group, fw.partial, fw.dot) == (27, 18, 45, 16, 49, 52)
    assert overflows(Design(qm, Knobs())) == []


@pytest.mark.parametrize("name,fmt,what", [
    ("W", Fmt(40, 0), "fitting product (D s27.20/A s27.23/DELTA s27.24) x W s40.0 needs 67 bits"),
    ("Z", Fmt(40, 23), "fitting gradient product Z s40.23 x GA"),
    ("R", Fmt(32, 17), "descriptor accumulator: 80 records of R s32.17 x G"),
])
def test_a_model_whose_formats_overflow_is_a_design_error(name, fmt, what):
    """The fitting engine's products and sums, and the fixed accumulators, are checked before elaboration."""
    qm = with_formats(tiny_qm(), **{name: fmt})
    with pytest.raises(DesignError) as e:
        Design(qm, Knobs())
    assert what in str(e.value) and f"{name} {fmt.describe()}" in str(e.value), str(e.value)
    assert "more than the" in str(e.value)


def test_the_widest_formats_that_fit_are_accepted():
    """W s37 with s27 operands: a 64-bit product, but the 128-term dot product needs 71: refused; W s30 fits."""
    qm = tiny_qm()
    with pytest.raises(DesignError, match="fitting dot product of 128 terms"):
        Design(with_formats(qm, W=Fmt(37, 0)), Knobs())
    d = Design(with_formats(qm, W=Fmt(30, 0)), Knobs())
    assert FittingWidths.of(d.F, d.n_hidden).dot == 27 + 30 + 7 <= 64


def test_wide_weights_stay_exact_in_the_hardware():
    """Weights scaled by 2**12 into an s30 format (same values: wfrac + 12) make 57-bit products, beyond
    the fixed 46 bits the fitting engine once had; with widths from the formats the atom engine still
    gives the reference's integers, which are those of the unscaled model."""
    import dataclasses

    from streams import run_stream
    from support import random_structure
    from test_build import small_qm

    from gen.stages.atom_engine import AtomEngine
    from model.assembly import neighbor_blocks, quantize_records
    from model.reference import evaluate

    qm = small_qm()
    wide = copy.copy(with_formats(qm, W=Fmt(30, 0)))
    wide.fit = [[dataclasses.replace(l, W=l.W << 12, wfrac=l.wfrac + 12) for l in layers] for layers in qm.fit]
    assert max(int(abs(l.W).max()) for layers in wide.fit for l in layers) >= 1 << 27  # needs the width
    pos, cell, types = random_structure(natoms=24, seed=4)  # within small_qm's sel of 12 per type
    rec = quantize_records(qm, neighbor_blocks(qm, pos, cell, True, types))
    trace, trace_wide = {}, {}
    ref, ref_wide = evaluate(qm, rec, trace=trace), evaluate(wide, rec, trace=trace_wide)
    assert (ref.energy == ref_wide.energy).all() and (trace["dGR"] == trace_wide["dGR"]).all()

    atoms = [0, 1, 2]
    dut = AtomEngine(Design(wide, Knobs(fit_par=4, desc_par=2)))
    assert FittingWidths.of(dut.design.F, dut.design.n_hidden).product == 57

    def beat(a):
        def set_(ctx, p):
            ctx.set(p.atom.tag, a)
            ctx.set(p.atom.ctype, int(rec.center_type[a]))
            ctx.set(p.atom.n, 3)
            ctx.set(p.atom.flags, 0)
            for k in range(4):
                for c in range(qm.config.m1):
                    ctx.set(p.GR[k][c], int(trace["GR"][a, k, c]))
        return set_
    out, _, _ = run_stream(dut, [beat(a) for a in atoms], len(atoms), raw=False)
    for a, p in zip(atoms, out):
        assert p.energy == ref.energy[a]
        assert [[p.dGR[k][c] for c in range(qm.config.m1)] for k in range(4)] == trace["dGR"][a].tolist()
