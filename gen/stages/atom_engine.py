"""AtomEngine: the per-atom part of the pipeline (descriptor, fitting net forward and backward).

    GR --DescriptorProduct--> D --FittingEngine--> energy, dE/dD --DescriptorGradient--> dE/dGR

One atom at a time; `engines` copies work on alternate atoms (see pipeline.py).  The three parts
are components with a start/done handshake and hold their results in registers until the next
start.  Each is the hardware twin of the matching lines of `model.reference`:
  DescriptorProduct   stage 6   D = rq(2**desc_shift GR^T GR[:, :M2])
  FittingEngine       stages 7-8 (`_fitting`): forward layers, energy, backward layers
  DescriptorGradient  stage 9   dGR = rq(2**desc_shift (GR[:, :M2] dD^T + GR dD[:, :M2]))
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from contract.fixedpoint import requant as np_requant
from contract.flags import FLAG_BAD_TYPE, FLAG_MALFORMED, FLAG_NEIGHBOR_OVERFLOW, FLAG_SATURATED

from ..fixed import any_of, requant, saturate, shift_round, tree_sum
from ..widths import DESCRIPTOR_GRAD_ACC_BITS, FittingWidths
from .descriptor_accumulator import atom_gr_layout

DROP_FLAGS = FLAG_NEIGHBOR_OVERFLOW | FLAG_BAD_TYPE | FLAG_MALFORMED


def vec_layout(shape, n):
    return data.ArrayLayout(shape, n)


def atom_out_layout(design):
    m1 = design.cfg.m1
    return data.StructLayout({"atom": design.atom_layout(), "energy": design.fmt_shape("E"),
                              "dGR": data.ArrayLayout(data.ArrayLayout(design.fmt_shape("dGR"), m1), 4)})


def pick(m, values, index, shape, name):
    """values[index] through one named signal: a single mux, however often the result is used."""
    sig = Signal(shape, name=name)
    m.d.comb += sig.eq(Array(values)[index])
    return sig


def to_signed(v):
    """Zero-extend an unsigned value by one bit and view it as signed (keeps its value)."""
    return Cat(v, Const(0, 1)).as_signed()


def per_type(ctype, values):
    """Select a per-type constant or expression by the (small) type index."""
    out = values[-1]
    for t in range(len(values) - 2, -1, -1):
        out = Mux(ctype == t, values[t], out)
    return out


# ---------------------------------------------------------------------------------------------------
class DescriptorProduct(wiring.Component):
    """D[a*M2 + b] = rq(sum_k GR[k,a] GR[k,col(a,b)]): desc_par columns a and desc_rows of GR's 4 rows k
    per cycle, desc_par x desc_rows x M2 products.  (M1/desc_par) (4/desc_rows) + 1 cycles.

    col(a, b) = b, or with the desc_band option (a + b) mod M1 (ModelConfig.descriptor_columns): then the
    second factor is selected per step as well.  With desc_rows < 4 the steps of a column block go over
    GR's rows, summing into one exact accumulator per output, requantized (and checked for saturation)
    at the block's last row step: the same integers in any order."""

    def __init__(self, design, *, desc_par=None, desc_rows=None):
        self.design = design
        self.desc_par = design.knobs.desc_par if desc_par is None else desc_par
        self.desc_rows = design.knobs.desc_rows if desc_rows is None else desc_rows
        m1, m2 = design.cfg.m1, design.cfg.axis_neurons
        super().__init__({"start": In(1), "done": Out(1), "sat": Out(1),
                          "GR": In(data.ArrayLayout(data.ArrayLayout(design.fmt_shape("GR"), m1), 4)),
                          "D": Out(vec_layout(design.fmt_shape("D"), m1 * m2))})

    def elaborate(self, platform):
        m = Module()
        d, F = self.design, self.design.F
        m1, m2, dp, rp = d.cfg.m1, d.cfg.axis_neurons, self.desc_par, self.desc_rows
        row_steps = 4 // rp
        blocks = descriptor_blocks(m1, dp, rp)  # (column block s, row block r) of each step, in order
        steps = len(blocks)
        step = Signal(range(steps + 1))
        busy = Signal()
        shape = self.GR[0][0].shape()
        last_rows = pick(m, [Const(r == row_steps - 1) for _, r in blocks], step, 1, "last_rows")
        first_rows = pick(m, [Const(r == 0) for _, r in blocks], step, 1, "first_rows")
        with m.If(self.start):
            m.d.sync += [step.eq(0), busy.eq(1), self.sat.eq(0), self.done.eq(0)]
        with m.Elif(busy):
            sats = []
            cols = d.cfg.descriptor_columns()
            for j in range(dp):
                # row slot i of column slot j: GR[r*rp + i][s*dp + j] at step (s, r), one mux over the steps
                col = [pick(m, [self.GR[r * rp + i][s * dp + j] for s, r in blocks], step, shape, f"col{i}_{j}")
                       for i in range(rp)]
                for b in range(m2):
                    if d.cfg.desc_band:
                        other = [pick(m, [self.GR[r * rp + i][cols[s * dp + j][b]] for s, r in blocks], step, shape,
                                      f"band{i}_{j}_{b}") for i in range(rp)]
                    elif row_steps == 1:
                        other = [self.GR[i][b] for i in range(4)]
                    else:
                        other = [pick(m, [self.GR[r * rp + i][b] for _, r in blocks], step, shape, f"row{i}_{b}")
                                 for i in range(rp)]
                    total = tree_sum(col[i] * other[i] for i in range(rp))
                    if row_steps > 1:
                        # |a sum of up to 4 products| <= 4 * 2**(2 (bits - 1)) = 2**(2 bits): 2 bits + 2 signed
                        acc = Signal(signed(2 * F["GR"].bits + 2), name=f"acc{j}_{b}")
                        total = Mux(first_rows, 0, acc) + total
                        m.d.sync += acc.eq(total)
                    q, sat = requant(m, total, 2 * F["GR"].frac - d.cfg.desc_shift, F["D"])
                    sats.append(sat)
                    for s in range(m1 // dp):
                        with m.If(step == s * row_steps + row_steps - 1):
                            m.d.sync += self.D[(s * dp + j) * m2 + b].eq(q)
            m.d.sync += self.sat.eq(self.sat | (any_of(sats) & last_rows))
            m.d.sync += step.eq(step + 1)
            with m.If(step == steps - 1):
                m.d.sync += [busy.eq(0), self.done.eq(1)]
        return m


def descriptor_blocks(m1: int, desc_par: int, desc_rows: int) -> list[tuple[int, int]]:
    """The steps of DescriptorProduct and DescriptorGradient: (column block, row block) pairs, the row
    blocks of a column block one after the other."""
    return [(s, r) for s in range(m1 // desc_par) for r in range(4 // desc_rows)]


# ---------------------------------------------------------------------------------------------------
class DescriptorGradient(wiring.Component):
    """dGR[k,c] = rq(sum_b GR[k,b] dD[c*M2+b] + [c<M2] sum_a GR[k,a] dD[a*M2+c]): desc_par columns and
    desc_rows rows k per cycle, 2 x desc_par x desc_rows x M2 products.  (M1/desc_par) (4/desc_rows) + 1
    cycles.  Row k of dGR needs only row k of GR, so folding the rows adds no accumulator.

    With desc_band (D[a, b] = T[a, (a + b) mod M1]) GR[k,c] is the first factor of row c of D and the
    second of D[(c - b) mod M1, b]: dGR[k,c] = rq(sum_b GR[k,(c+b) mod M1] dD[c*M2+b]
    + sum_b GR[k,(c-b) mod M1] dD[((c-b) mod M1)*M2+b]), both per column, from operands selected per step."""

    ACC_BITS = DESCRIPTOR_GRAD_ACC_BITS  # checked by gen.ir.Design (gen.widths.overflows)

    def __init__(self, design, *, desc_par=None, desc_rows=None):
        self.design = design
        self.desc_par = design.knobs.desc_par if desc_par is None else desc_par
        self.desc_rows = design.knobs.desc_rows if desc_rows is None else desc_rows
        m1, m2 = design.cfg.m1, design.cfg.axis_neurons
        super().__init__({"start": In(1), "done": Out(1), "sat": Out(1),
                          "GR": In(data.ArrayLayout(data.ArrayLayout(design.fmt_shape("GR"), m1), 4)),
                          "dD": In(vec_layout(design.fmt_shape("dD"), m1 * m2)),
                          "dGR": Out(data.ArrayLayout(data.ArrayLayout(design.fmt_shape("dGR"), m1), 4))})

    def elaborate(self, platform):
        m = Module()
        d, F = self.design, self.design.F
        m1, m2, dp, rp = d.cfg.m1, d.cfg.axis_neurons, self.desc_par, self.desc_rows
        blocks = descriptor_blocks(m1, dp, rp)
        steps = len(blocks)
        acc1 = [[Signal(signed(self.ACC_BITS), name=f"a1_{k}_{c}") for c in range(m1)] for k in range(4)]
        acc2 = [[Signal(signed(self.ACC_BITS), name=f"a2_{k}_{c}") for c in range(m2)] for k in range(4)]
        step = Signal(range(steps + 2))
        busy = Signal()
        GR, dD = self.GR, self.dD
        with m.If(self.start):
            m.d.sync += [step.eq(0), busy.eq(1), self.done.eq(0)]
            for k in range(4):
                for c in range(m2):
                    m.d.sync += acc2[k][c].eq(0)
        with m.Elif(busy):
            # Operands of this step's columns and rows are selected first (one mux each), so the unit has
            # 32 x desc_par x desc_rows / 4 multipliers whatever the number of steps.
            sel = lambda vals, shape, name: pick(m, vals + [vals[-1]], step, shape, name)  # step == steps: idle
            col = [[s * dp + j for s, _ in blocks] for j in range(dp)]  # per slot, per step: c (or a)
            row = [[r * rp + i for _, r in blocks] for i in range(rp)]  # per slot, per step: k
            for j in range(dp) if d.cfg.desc_band else ():
                dd_c = [sel([dD[c * m2 + b] for c in col[j]], dD[0].shape(), f"ddc{b}_{j}") for b in range(m2)]
                dd_m = [sel([dD[((c - b) % m1) * m2 + b] for c in col[j]], dD[0].shape(), f"ddm{b}_{j}")
                        for b in range(m2)]
                for i in range(rp):
                    kc = list(zip(row[i], col[j]))
                    gr_p = [sel([GR[k][(c + b) % m1] for k, c in kc], GR[0][0].shape(), f"grp{i}_{b}_{j}")
                            for b in range(m2)]
                    gr_m = [sel([GR[k][(c - b) % m1] for k, c in kc], GR[0][0].shape(), f"grm{i}_{b}_{j}")
                            for b in range(m2)]
                    both = tree_sum([gr_p[b] * dd_c[b] for b in range(m2)] + [gr_m[b] * dd_m[b] for b in range(m2)])
                    for t, (k, c) in enumerate(kc):
                        with m.If(step == t):
                            m.d.sync += acc1[k][c].eq(both)
            parts = None
            if not d.cfg.desc_band:  # GR[k, :M2] of each row slot's row k (the same for every column slot)
                gr_k = [[GR[i][b] for b in range(m2)] if rp == 4 else
                        [sel([GR[k][b] for k in row[i]], GR[0][0].shape(), f"grk{i}_{b}") for b in range(m2)]
                        for i in range(rp)]
            for j in range(dp) if not d.cfg.desc_band else ():
                dd_c = [sel([dD[a * m2 + b] for a in col[j]], dD[0].shape(), f"ddc{b}_{j}") for b in range(m2)]
                self_parts = []
                for i in range(rp):
                    kc = list(zip(row[i], col[j]))
                    gr_a = sel([GR[k][a] for k, a in kc], GR[0][0].shape(), f"gra{i}_{j}")
                    first = tree_sum(gr_k[i][b] * dd_c[b] for b in range(m2))  # sum_b GR[k,b] dD[c,b]
                    for t, (k, c) in enumerate(kc):
                        with m.If(step == t):
                            m.d.sync += acc1[k][c].eq(first)
                    self_parts.append([gr_a * dd_c[c] for c in range(m2)])  # GR[k,a] dD[a,c]
                parts = self_parts if parts is None else [[parts[i][c] + self_parts[i][c] for c in range(m2)]
                                                          for i in range(rp)]
            if parts is not None:
                row_block = sel([Const(r, 2) for _, r in blocks], 2, "row_block")
                for r in range(4 // rp):  # the rows of this step's block take their slots' sums
                    with m.If((step < steps) & (row_block == r)):
                        for i in range(rp):
                            for c in range(m2):
                                m.d.sync += acc2[r * rp + i][c].eq(acc2[r * rp + i][c] + parts[i][c])
            with m.If(step == steps):
                sats = []
                for k in range(4):
                    for c in range(m1):
                        total = acc1[k][c] + (acc2[k][c] if c < m2 and not d.cfg.desc_band else 0)
                        q, sat = requant(m, total, F["GR"].frac + F["dD"].frac - d.cfg.desc_shift, F["dGR"])
                        sats.append(sat)
                        m.d.sync += self.dGR[k][c].eq(q)
                m.d.sync += [busy.eq(0), self.done.eq(1), self.sat.eq(any_of(sats))]
            m.d.sync += step.eq(step + 1)
        return m


# ---------------------------------------------------------------------------------------------------
class Tanh4(wiring.Component):
    """Integer tanh4 and its derivative (model.reference.tanh4), 3 register stages.

    Stage 1: za = min(|z|, 2), xx = round(za^2).  Stage 2: q, dq.  Stage 3: y = sign(z)(za + q),
    phi' = 1 + dq (0 for |z| >= 2).  `en` advances the stages (the engine never stalls, en = 1).
    """

    LATENCY = 3

    def __init__(self, fmt):
        self.fmt = fmt
        super().__init__({"z": In(signed(fmt.bits)), "y": Out(signed(fmt.bits)), "dphi": Out(signed(fmt.bits))})

    def elaborate(self, platform):
        m = Module()
        f = self.fmt.frac
        two = Const(2 << f)
        za = Signal(unsigned(f + 2))
        xx = Signal(unsigned(f + 3))
        neg1, sat1 = Signal(), Signal()
        absz = Mux(self.z < 0, -self.z, self.z)
        zc = Mux(absz >= two, two, absz)
        m.d.sync += [za.eq(zc), xx.eq(shift_round(zc * zc, f)), neg1.eq(self.z < 0), sat1.eq(absz >= two)]
        za2 = Signal.like(za)
        q, dq = Signal(signed(f + 4)), Signal(signed(f + 4))
        neg2, sat2 = Signal(), Signal()
        m.d.sync += [
            q.eq(shift_round(xx * (to_signed(shift_round(xx, 4)) - to_signed(shift_round(za, 2))), f)),
            dq.eq(shift_round(xx * (to_signed(shift_round(za, 2)) - Const(3 * (1 << (f - 2)))), f)),
            za2.eq(za), neg2.eq(neg1), sat2.eq(sat1)]
        ya = za2 + q
        m.d.sync += [self.y.eq(Mux(neg2, -ya, ya)), self.dphi.eq(Mux(sat2, 0, Const(1 << f) + dq))]
        return m


class TanhTable(wiring.Component):
    """fit_activation "tanh": y = sign(z) T(|z|), phi' = T'(|z|) from the model's act table
    (model.reference.activation), with Tanh4's interface and its 3 register stages.

    Stage 1: |z| split into segment and xi, the ROM row read (registered).  Stage 2: t = round(c xi).
    Stage 3: y' = a + round((b + t) xi), dy' = b + 2t, both requantized to their formats, y signed."""

    LATENCY = 3

    def __init__(self, fmt, tab):
        self.fmt, self.tab = fmt, tab
        super().__init__({"z": In(signed(fmt.bits)), "y": Out(signed(fmt.bits)), "dphi": Out(signed(fmt.bits))})

    def elaborate(self, platform):
        m = Module()
        tab = self.tab
        bits = tab.coef_fmt.bits
        rows = []
        for seg in range(tab.nseg):
            a, b, c = (int(v) & ((1 << bits) - 1) for v in tab.coef[seg, 0])
            rows.append(a | b << bits | c << 2 * bits)
        rom = Memory(shape=3 * bits, depth=tab.nseg, init=rows)
        m.submodules.rom = rom
        rp = rom.read_port()  # registered data: stage 1
        absz = Signal(unsigned(self.fmt.bits))  # |z| <= 2**(bits-1): the Z format's lo included
        m.d.comb += absz.eq(Mux(self.z < 0, -self.z, self.z))
        idx = absz >> tab.index_shift  # x_min = 0, first_seg = 0, nseg covers every |z| (checked)
        m.d.comb += [rp.addr.eq(idx), rp.en.eq(1)]
        xi1, neg1 = Signal(unsigned(tab.xi_bits)), Signal()
        m.d.sync += [xi1.eq((absz >> (tab.index_shift - tab.xi_bits))[: tab.xi_bits]), neg1.eq(self.z < 0)]
        a1, b1, c1 = (rp.data[i * bits:(i + 1) * bits].as_signed() for i in range(3))
        xis = Signal(signed(tab.xi_bits + 1))
        m.d.comb += xis.eq(xi1)
        a2, b2, t2 = Signal(signed(bits)), Signal(signed(bits)), Signal(signed(bits + 1))
        xi2, neg2 = Signal(signed(tab.xi_bits + 1)), Signal()
        m.d.sync += [a2.eq(a1), b2.eq(b1), t2.eq(shift_round(c1 * xis, tab.xi_bits)), xi2.eq(xis), neg2.eq(neg1)]
        y, _ = requant(m, a2 + shift_round((b2 + t2) * xi2, tab.xi_bits), tab.coef_fmt.frac, tab.out_fmt)
        dy, _ = requant(m, b2 + 2 * t2, tab.coef_fmt.frac - tab.seg_shift, tab.dout_fmt)
        m.d.sync += [self.y.eq(Mux(neg2, -y, y)), self.dphi.eq(dy)]
        return m


def activation_unit(design):
    """The fitting activation of the design's model: Tanh4, or the tanh table (fit_activation "tanh")."""
    F, tab = design.F, design.qm.table_act
    if tab is None:
        return Tanh4(F["Z"])
    if (tab.nseg - 1) << tab.index_shift < 1 << (F["Z"].bits - 1) or tab.x_min or tab.first_seg or tab.nch != 1:
        raise ValueError("the act table must start at 0 and cover every |z| of the Z format in one channel")
    if tab.out_fmt != F["Z"] or tab.dout_fmt != F["Z"]:
        raise ValueError("the act table's output formats must be the Z format")
    return TanhTable(F["Z"], tab)


# ---------------------------------------------------------------------------------------------------
class FittingEngine(wiring.Component):
    """Forward layers, energy and backward layers of the centre type's fitting net for one atom.

    Interface: pulse `start` with `ctype` and `x0` (the descriptor D, held until `done`); `done` rises
    when `energy` (format E) and `dD` (dE/dD, format dD) are valid, and they stay valid until the next
    `start`; `sat` says whether any requantization saturated, as the reference's flag does.  Cycles
    from start to done: gen.cycles.engine_cycles (less the AtomEngine's hand-offs).

    A MAC array of fit_par dot products (each n_hidden long: fit_par x n_hidden multipliers) is swept
    over the layers in passes (`passes()`): FWD 0..L-1, ENERGY, BWD L-1..0.  A pass issues
    n_hidden / fit_par steps, one ROM row of weights each; the next pass starts when the previous one
    has written all its results (each layer needs the whole previous one).  Every issued step moves
    down one pipeline, one register stage per cycle, with a tag (valid, pass, step) beside it:

        MAC array      weights   ROM row out; the pass's input vector selected as operands
                       products  operand x weight, fit_par x n_hidden of them
                       partials  sums of FIT_GROUP products
                       dot       the dot products (and the row's bias, which travelled alongside)
        output units   requant   z = sat(dot + bias) (FWD), energy (ENERGY), back = rq(dot) (BWD)
        (one per MAC)  grad      g_new = sat(g + back) (BWD layers > 0); tanh4 stage 1 (FWD)
                       delta     delta_next = rq(phi'[l-1] * g_new); tanh4 stage 2
                       write     y = tanh4(z) (+ resnet input), phi'; last FWD layer: delta = rq(phi' g_out);
                                 results written to the layer buffers below
                       written   (only keeps the pass from ending before the write lands)

    Layer buffers (registers, n_hidden each): `act` (activations, two: a layer reads one, writes the
    other; after the last BWD pass act[L % 2] holds dE/dD), `dphi` (phi'(z) of each FWD layer), `delta`
    (two, alternating like act), `grad` (g of the BWD layer in progress).  Product and sum widths come
    from the formats (gen.widths.FittingWidths): every value is exact, as in the reference.
    """

    def __init__(self, design):
        self.design = design
        n = design.n_hidden
        self.widths = FittingWidths.of(design.F, n)
        super().__init__({"start": In(1), "ctype": In(4), "done": Out(1), "sat": Out(1),
                          "x0": In(vec_layout(design.fmt_shape("D"), n)),
                          "energy": Out(design.fmt_shape("E")),
                          "dD": Out(vec_layout(design.fmt_shape("dD"), n))})

    # -- passes and ROM contents ---------------------------------------------------------------------
    @staticmethod
    def schedule(design) -> list[tuple[str, int, int]]:
        """(kind, layer, ROM rows per centre type) of each pass in execution order: forward layers, the
        energy dot product, backward layers.  Usable without building the engine (gen.platforms.ulx3s)."""
        L, steps = design.n_layers, design.n_hidden // design.knobs.fit_par
        return ([("fwd", l, steps) for l in range(L)] + [("out", 0, 1)]
                + [("bwd", l, steps) for l in range(L - 1, -1, -1)])

    def passes(self):
        """(kind, layer) in execution order (`schedule`)."""
        return [(kind, layer) for kind, layer, _ in self.schedule(self.design)]

    def pass_rows(self, kind: str) -> int:
        return 1 if kind == "out" else self.design.n_hidden // self.design.knobs.fit_par

    def rom_rows(self):
        """Weight ROMs, one per MAC unit i (narrow rows map to block RAM).  Row = pass base +
        type * rows(pass) + step; unit i's row holds one weight vector of n_in W-bit words (forward:
        column s*fit_par+i of W, backward: row s*fit_par+i of W, energy: out_w for unit 0, zeros for the
        others), then that output's bias in the Z format (forward passes, zero otherwise)."""
        d = self.design
        qm, n, mp = d.qm, d.n_hidden, d.knobs.fit_par
        wbits, zb = d.F["W"].bits, d.F["Z"].bits
        wm, zm = (1 << wbits) - 1, (1 << zb) - 1
        rows, base = [[] for _ in range(mp)], []
        for kind, layer in self.passes():
            base.append(len(rows[0]))
            for t in range(d.cfg.ntypes):
                for s in range(self.pass_rows(kind)):
                    for i in range(mp):
                        v = 0
                        vec = None
                        if kind == "fwd":
                            vec = qm.fit[t][layer].W[:, s * mp + i]
                            v |= (int(qm.fit[t][layer].b[s * mp + i]) & zm) << (n * wbits)
                        elif kind == "bwd":
                            vec = qm.fit[t][layer].W[s * mp + i, :]
                        elif i == 0:
                            vec = qm.out_w[t]
                        if vec is not None:
                            for j in range(n):
                                v |= (int(vec[j]) & wm) << (j * wbits)
                        rows[i].append(v)
        return rows, base

    # -- the hardware, top-down ------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        buf = self._layer_buffers(m)
        seq = self._sequencer(m)
        weights = self._weight_roms(m, seq)
        pipe = self._pipeline_tags(m, seq)
        dots, biases = self._mac_array(m, pipe, buf, weights)
        writes, sats = {}, []
        for unit in range(self.design.knobs.fit_par):
            sats.append(self._output_unit(m, unit, pipe, seq, buf, dots[unit], biases[unit], writes))
        self._write_back(m, buf, writes)
        # g_out's own saturation (a per-type constant) counts once the atom starts, as in the reference.
        g_out_sat = [Const(int(bad)) for _, bad in self._g_out()]
        with m.If(~self.start):
            m.d.sync += self.sat.eq(self.sat | any_of(sats) | (per_type(seq.ctype, g_out_sat) & seq.issuing))
        return m

    def _shape(self, name):
        return signed(self.design.F[name].bits)

    def _g_out(self):
        """Per centre type: (g_out = rq(out_w) in GA, as ints; whether that requantization saturated)."""
        qm, F = self.design.qm, self.design.F
        out = []
        for t in range(self.design.cfg.ntypes):
            q, bad = np_requant(qm.out_w[t], qm.out_wfrac[t], F["GA"])
            out.append(([int(x) for x in q], bool(bad.any())))
        return out

    # -- layer buffers ---------------------------------------------------------------------------------
    def _layer_buffers(self, m):
        d, S = self.design, self._shape
        n, L = d.n_hidden, d.n_layers
        buf = _LayerBuffers(
            act=[[Signal(S("A"), name=f"act{b}_{k}") for k in range(n)] for b in range(2)],
            delta=[[Signal(S("DELTA"), name=f"delta{b}_{k}") for k in range(n)] for b in range(2)],
            grad=[Signal(S("GA"), name=f"grad_{k}") for k in range(n)],
            dphi=[[Signal(S("Z"), name=f"dphi{l}_{k}") for k in range(n)] for l in range(L)],
            energy=self.energy)
        m.d.comb += [self.dD[k].eq(buf.act[L % 2][k]) for k in range(n)]
        return buf

    def _pass_input(self, buf, kind, layer):
        """The vector a pass multiplies with its weights (each pass reads a fixed buffer)."""
        L = self.design.n_layers
        if kind == "fwd":
            return self.x0 if layer == 0 else buf.act[(layer - 1) % 2]
        if kind == "out":
            return buf.act[(L - 1) % 2]
        return buf.delta[(L - 1 - layer) % 2]

    # -- sequencer and ROMs ----------------------------------------------------------------------------
    def _sequencer(self, m):
        """start -> issue every step of pass 0, wait until nothing is in flight, next pass ... -> done."""
        npass, steps = len(self.passes()), self.pass_rows("fwd")
        seq = _Sequencer(pass_=Signal(range(npass + 1), name="pass"), step=Signal(range(steps + 1), name="step"),
                         issuing=Signal(name="issuing"), draining=Signal(name="draining"),
                         ctype=Signal(4, name="ctype"), in_flight=Signal(name="in_flight"))
        last_step = Signal(range(steps), name="last_step")
        for p, (kind, _) in enumerate(self.passes()):
            with m.If(seq.pass_ == p):
                m.d.comb += last_step.eq(self.pass_rows(kind) - 1)
        with m.If(self.start):
            m.d.sync += [seq.pass_.eq(0), seq.step.eq(0), seq.issuing.eq(1), seq.draining.eq(0),
                         seq.ctype.eq(self.ctype), self.done.eq(0), self.sat.eq(0)]
        with m.Elif(seq.issuing):
            m.d.sync += seq.step.eq(seq.step + 1)
            with m.If(seq.step == last_step):
                m.d.sync += [seq.issuing.eq(0), seq.draining.eq(1)]
        with m.Elif(seq.draining & ~seq.in_flight):
            with m.If(seq.pass_ == npass - 1):
                m.d.sync += [seq.draining.eq(0), self.done.eq(1)]
            with m.Else():
                m.d.sync += [seq.pass_.eq(seq.pass_ + 1), seq.step.eq(0), seq.issuing.eq(1), seq.draining.eq(0)]
        return seq

    def _weight_roms(self, m, seq):
        """One ROM per MAC unit, addressed by (pass, centre type, step); its data arrive one cycle later."""
        d = self.design
        n, wbits, zb = d.n_hidden, d.F["W"].bits, d.F["Z"].bits
        rows, base = self.rom_rows()
        ports = []
        for i in range(d.knobs.fit_par):
            rom = Memory(shape=n * wbits + zb, depth=len(rows[i]), init=rows[i])
            m.submodules[f"weights{i}"] = rom
            ports.append(rom.read_port())
        row = Signal(range(len(rows[0])), name="row")
        for p, (kind, _) in enumerate(self.passes()):
            with m.If(seq.pass_ == p):
                m.d.comb += row.eq(base[p] + seq.ctype * self.pass_rows(kind) + (0 if kind == "out" else seq.step))
        m.d.comb += [rp.addr.eq(row) for rp in ports] + [rp.en.eq(1) for rp in ports]
        return ports

    def _pipeline_tags(self, m, seq):
        """The tag of the step each stage holds, decoded once for every unit to share."""
        npass, steps = len(self.passes()), self.pass_rows("fwd")
        layout = data.StructLayout({"v": 1, "p": range(npass + 1), "s": range(steps + 1)})
        tag = {name: Signal(layout, name=f"tag_{name}") for name in STAGES}
        first = tag[STAGES[0]]
        m.d.sync += [first.v.eq(seq.issuing), first.p.eq(seq.pass_), first.s.eq(seq.step)]
        m.d.sync += [tag[b].eq(tag[a]) for a, b in itertools.pairwise(STAGES)]
        m.d.comb += seq.in_flight.eq(any_of(t.v for t in tag.values()))
        is_pass = {}
        for stage in ("weights", "dot", "grad", "delta", "write"):
            is_pass[stage] = [Signal(name=f"{stage}_is_pass{p}") for p in range(npass)]
            m.d.comb += [sig.eq(tag[stage].p == p) for p, sig in enumerate(is_pass[stage])]
        write_at = [[Signal(name=f"write_pass{p}_step{s}") for s in range(steps)] for p in range(npass)]
        for p in range(npass):
            for s in range(steps):
                m.d.comb += write_at[p][s].eq(tag["write"].v & is_pass["write"][p] & (tag["write"].s == s))
        return _PipelineTags(tag, is_pass, write_at, [kind for kind, _ in self.passes()])

    # -- MAC array -------------------------------------------------------------------------------------
    def _mac_array(self, m, pipe, buf, weights):
        """fit_par dot products of the pass's input vector with this step's weight rows, and each
        row's bias delayed to line up with its dot product."""
        d, fw = self.design, self.widths
        n, wbits, zb = d.n_hidden, d.F["W"].bits, d.F["Z"].bits
        # The operand depends on the pass only: one mux per input element, shared by the MAC units.
        operands = []
        for j in range(n):
            v = 0
            for p, (kind, layer) in enumerate(self.passes()):
                v = Mux(pipe.is_pass["weights"][p], self._pass_input(buf, kind, layer)[j], v)
            operand = Signal(signed(fw.operand), name=f"operand{j}")
            m.d.comb += operand.eq(v)
            operands.append(operand)
        dots, biases = [], []
        for i, rom in enumerate(weights):
            products = []
            for j in range(n):
                product = Signal(signed(fw.product), name=f"product{i}_{j}")
                m.d.sync += product.eq(operands[j] * rom.data[j * wbits:(j + 1) * wbits].as_signed())
                products.append(product)
            partials = []
            for g in range(0, n, fw.group):
                partial = Signal(signed(fw.partial), name=f"partial{i}_{g // fw.group}")
                m.d.sync += partial.eq(tree_sum(products[g:g + fw.group]))
                partials.append(partial)
            dot = Signal(signed(fw.dot), name=f"dot{i}")
            m.d.sync += dot.eq(tree_sum(partials))
            dots.append(dot)
            bias = rom.data[n * wbits:n * wbits + zb].as_signed()  # zero in rows of non-FWD passes
            biases.append(_delay(m, bias, ("products", "partials", "dot"), f"bias{i}", self._shape("Z"))["dot"])
        return dots, biases

    # -- output units --------------------------------------------------------------------------------
    def _output_unit(self, m, i, pipe, seq, buf, dot, bias, writes):
        """Unit i: output element step * fit_par + i of each pass, from its dot product to the layer
        buffers.  Adds its writes to `writes`; returns its saturation bit (for the write stage)."""
        d, F = self.design, self.design.F
        mp, L = d.knobs.fit_par, d.n_layers
        element = {stage: pipe.tag[stage].s * mp + i for stage in ("grad", "delta", "write")}

        z, energy, back, sat_requant = self._requantize(m, i, pipe, seq, dot, bias)
        # the activation (tanh4 or the tanh table, 3 stages) takes z through grad, delta and write; back and
        # energy wait alongside.
        tanh = activation_unit(d)
        m.submodules[f"tanh4_{i}"] = tanh
        m.d.comb += tanh.z.eq(z)
        back_at = _delay(m, back, ("grad", "delta", "write"), f"back_{i}")
        energy_at = _delay(m, energy, ("grad", "delta", "write"), f"energy_{i}")

        g_new, g_sat = self._new_gradient(m, i, pipe, seq, buf, back_at["grad"], element["grad"])
        g_new_write = _delay(m, g_new, ("write",), f"g_new_{i}")["write"]
        delta_next, delta_sat = self._next_delta(m, i, pipe, buf, g_new, element["delta"])
        act, act_sat, dphi, seed, seed_sat = self._activation(m, i, pipe, seq, buf, tanh, element["write"])

        # Saturation of every step, lined up on the write stage.
        sat_at = _delay(m, sat_requant, ("grad",), f"sat_{i}", unsigned(1))
        sat_delta, sat_write = Signal(name=f"sat_delta_{i}"), Signal(name=f"sat_write_{i}")
        m.d.sync += [sat_delta.eq(sat_at["grad"] | (g_sat & pipe.tag["grad"].v)), sat_write.eq(sat_delta)]
        unit_sat = (sat_write | (act_sat & pipe.any_pass("write", "fwd")) | delta_sat
                    | (seed_sat & pipe.is_pass["write"][L - 1]))

        # Each pass stores into fixed buffers, so the next pass's operands need no addressing:
        # FWD l -> act[l % 2], dphi[l] (the last FWD layer also delta[0]); BWD l > 0 -> grad and
        # delta[(L - l) % 2]; BWD 0 -> act[L % 2] (dE/dD); ENERGY -> energy.
        for p, (kind, layer) in enumerate(self.passes()):
            for s in range(self.pass_rows("fwd")):
                k, cond = s * mp + i, pipe.write_at[p][s]
                if kind == "fwd":
                    writes.setdefault(("act", layer % 2, k), []).append((cond, act))
                    writes.setdefault(("dphi", layer, k), []).append((cond, dphi))
                    if layer == L - 1:
                        writes.setdefault(("delta", 0, k), []).append((cond, seed))
                elif kind == "bwd" and layer > 0:
                    writes.setdefault(("grad", None, k), []).append((cond, g_new_write))
                    writes.setdefault(("delta", (L - layer) % 2, k), []).append((cond, delta_next))
                elif kind == "bwd":
                    writes.setdefault(("act", L % 2, k), []).append((cond, back_at["write"]))
                elif kind == "out" and i == 0 and s == 0:
                    writes.setdefault(("energy", None, None), []).append((cond, energy_at["write"]))
        return unit_sat & pipe.tag["write"].v

    def _requantize(self, m, i, pipe, seq, dot, bias):
        """Stage requant: the dot product in the format its pass needs, per centre type.
        FWD: z = sat(dot + bias) in Z;  ENERGY (unit 0): E;  BWD: GA (dD for layer 0)."""
        d, F, qm = self.design, self.design.F, self.design.qm
        nt, fz, fa = d.cfg.ntypes, F["Z"].frac, F["A"].frac
        z_v, energy_v, back_v, sat_v = 0, 0, 0, 0
        for p, (kind, layer) in enumerate(self.passes()):
            at = pipe.is_pass["dot"][p]
            if kind == "fwd":
                xfrac = F["D"].frac if layer == 0 else fa
                # Saturating z is exact (tanh4 is flat far below the Z limit): no flag, as the reference.
                z_t = [saturate(m, shift_round(dot, xfrac + qm.fit[t][layer].wfrac - fz) + bias, F["Z"])[0]
                       for t in range(nt)]
                z_v = Mux(at, per_type(seq.ctype, z_t), z_v)
            elif kind == "out" and i == 0:
                e_t = [requant(m, dot, fa + qm.out_wfrac[t], F["E"]) for t in range(nt)]
                energy_v = Mux(at, per_type(seq.ctype, [e for e, _ in e_t]), energy_v)
                sat_v = Mux(at, per_type(seq.ctype, [s for _, s in e_t]), sat_v)
            elif kind == "bwd":
                fmt = F["GA"] if layer > 0 else F["dD"]
                b_t = [requant(m, dot, F["DELTA"].frac + qm.fit[t][layer].wfrac, fmt) for t in range(nt)]
                back_v = Mux(at, per_type(seq.ctype, [b for b, _ in b_t]), back_v)
                sat_v = Mux(at, per_type(seq.ctype, [s for _, s in b_t]), sat_v)
        z, energy = Signal(self._shape("Z"), name=f"z_{i}"), Signal(self._shape("E"), name=f"energy_{i}")
        back = Signal(signed(max(F["GA"].bits, F["dD"].bits)), name=f"back_{i}")
        sat = Signal(name=f"sat_requant_{i}")
        m.d.sync += [z.eq(z_v), energy.eq(energy_v), back.eq(back_v), sat.eq(sat_v & pipe.tag["dot"].v)]
        return z, energy, back, sat

    def _new_gradient(self, m, i, pipe, seq, buf, back, element):
        """Stage grad (BWD layers > 0): g_new = sat(g + back), g being g_out (per type) in the first
        BWD layer and the grad buffer after.  Returns (g_new registered for the delta stage, saturation)."""
        d, F, S = self.design, self.design.F, self._shape
        n, L, nt = d.n_hidden, d.n_layers, d.cfg.ntypes
        g_out = self._g_out()
        g_new_v, g_sat = 0, 0
        for p, (kind, layer) in enumerate(self.passes()):
            if kind == "bwd" and layer > 0:
                if layer == L - 1:
                    g = pick(m, [Const(g_out[t][0][k], S("GA")) for t in range(nt) for k in range(n)],
                             seq.ctype * n + element, S("GA"), f"g_out_{i}")
                else:
                    g = pick(m, buf.grad, element, S("GA"), f"g{layer}_{i}")
                g_new_p, g_sat_p = saturate(m, g + back, F["GA"])
                g_new_v = Mux(pipe.is_pass["grad"][p], g_new_p, g_new_v)
                g_sat = Mux(pipe.is_pass["grad"][p], g_sat_p, g_sat)
        g_new = Signal(S("GA"), name=f"g_new_{i}")
        m.d.sync += g_new.eq(g_new_v)
        return g_new, g_sat

    def _next_delta(self, m, i, pipe, buf, g_new, element):
        """Stage delta (BWD layers > 0): delta_next = rq(phi'[layer - 1] * g_new) in DELTA.
        Returns (delta_next and its saturation, both registered for the write stage)."""
        F, S = self.design.F, self._shape
        dphi = 0
        for p, (kind, layer) in enumerate(self.passes()):
            if kind == "bwd" and layer > 0:
                dphi = Mux(pipe.is_pass["delta"][p], pick(m, buf.dphi[layer - 1], element, S("Z"), f"dphi{layer}_{i}"),
                           dphi)
        v, sat = requant(m, dphi * g_new, F["Z"].frac + F["GA"].frac, F["DELTA"])
        delta_next, delta_sat = Signal(S("DELTA"), name=f"delta_next_{i}"), Signal(name=f"delta_sat_{i}")
        m.d.sync += [delta_next.eq(v), delta_sat.eq(sat & pipe.any_pass("delta", "bwd") & pipe.tag["delta"].v)]
        return delta_next, delta_sat

    def _activation(self, m, i, pipe, seq, buf, tanh, element):
        """Stage write (FWD): y = tanh4(z) in A, plus the layer input in resnet layers; phi'(z); and in
        the last FWD layer the backward pass's first delta, rq(phi' * g_out).
        Returns (activation, its saturation, phi', first delta, its saturation), all combinational."""
        d, F, S = self.design, self.design.F, self._shape
        n, nt, fz, fa = d.n_hidden, d.cfg.ntypes, F["Z"].frac, F["A"].frac
        y = shift_round(tanh.y, fz - fa)
        act_v, act_sat = 0, 0
        for p, (kind, layer) in enumerate(self.passes()):
            if kind == "fwd":
                if layer > 0:
                    x_in = pick(m, buf.act[(layer - 1) % 2], element, S("A"), f"x_in{layer}_{i}")
                    a_p, a_sat_p = saturate(m, x_in + y, F["A"])
                else:
                    a_p, a_sat_p = y, 0
                act_v = Mux(pipe.is_pass["write"][p], a_p, act_v)
                act_sat = Mux(pipe.is_pass["write"][p], a_sat_p, act_sat)
        act, dphi, seed = Signal(S("A"), name=f"act_{i}"), Signal(S("Z"), name=f"dphi_{i}"), \
            Signal(S("DELTA"), name=f"seed_{i}")
        g_out = self._g_out()
        g = pick(m, [Const(g_out[t][0][k], S("GA")) for t in range(nt) for k in range(n)],
                 seq.ctype * n + element, S("GA"), f"g_seed_{i}")
        seed_v, seed_sat = requant(m, dphi * g, fz + F["GA"].frac, F["DELTA"])
        m.d.comb += [act.eq(act_v), dphi.eq(tanh.dphi), seed.eq(seed_v)]
        return act, act_sat, dphi, seed, seed_sat

    def _write_back(self, m, buf, writes):
        """Each buffer register gets one enable and one small mux over the (pass, step) writes that
        target it, rather than a copy of the whole pass/step decode."""
        regs = {"act": lambda b, k: buf.act[b][k], "dphi": lambda b, k: buf.dphi[b][k],
                "delta": lambda b, k: buf.delta[b][k], "grad": lambda b, k: buf.grad[k],
                "energy": lambda b, k: buf.energy}
        for (name, b, k), pairs in writes.items():
            value = pairs[-1][1]
            for cond, v in reversed(pairs[:-1]):
                value = Mux(cond, v, value)
            with m.If(any_of(c for c, _ in pairs)):
                m.d.sync += regs[name](b, k).eq(value)


#: Pipeline stages after the ROM address is issued, one cycle each (FittingEngine docstring).
STAGES = ("weights", "products", "partials", "dot", "requant", "grad", "delta", "write", "written")


@dataclass
class _LayerBuffers:
    act: list      # [2][n] activations, A
    delta: list    # [2][n] deltas, DELTA
    grad: list     # [n] g of the BWD layer in progress, GA
    dphi: list     # [L][n] phi'(z) of each FWD layer, Z
    energy: Signal


@dataclass
class _Sequencer:
    pass_: Signal      # index into FittingEngine.passes()
    step: Signal       # row of the pass being issued
    issuing: Signal
    draining: Signal   # all steps issued; waiting for the last write
    ctype: Signal      # centre type, held for the atom
    in_flight: Signal  # some stage holds a valid step


@dataclass
class _PipelineTags:
    tag: dict          # stage -> Signal(v, p, s)
    is_pass: dict      # stage -> [Signal: tag.p == p]
    write_at: list     # [pass][step] -> Signal: the write stage holds that valid step
    kinds: list        # kind of each pass

    def any_pass(self, stage, kind):
        return any_of(sig for sig, k in zip(self.is_pass[stage], self.kinds) if k == kind)


def _delay(m, value, stages, name, shape=None):
    """`value` registered once per stage: {stage: the signal holding it in that stage}."""
    out = {}
    for stage in stages:
        reg = Signal(shape if shape is not None else Value.cast(value).shape(), name=f"{name}_{stage}")
        m.d.sync += reg.eq(value)
        out[stage] = value = reg
    return out



# ---------------------------------------------------------------------------------------------------
class AtomEngine(wiring.Component):
    """atom beat (GR) in -> atom beat (energy, dGR, final flags) out; one atom at a time.

    Flags: record/GR saturation from upstream, saturation in D, the fitting net and dGR; atoms dropped
    upstream (neighbour overflow, bad type, malformed stream) leave with zero energy and dGR and only
    their drop flags, exactly as the reference.
    """

    def __init__(self, design):
        self.design = design
        super().__init__({"i": In(stream.Signature(atom_gr_layout(design))),
                          "o": Out(stream.Signature(atom_out_layout(design)))})

    def elaborate(self, platform):
        m = Module()
        d = self.design
        m.submodules.dprod = dprod = DescriptorProduct(d)
        m.submodules.fit = fit = FittingEngine(d)
        m.submodules.dgrad = dgrad = DescriptorGradient(d)
        GR = Signal(atom_gr_layout(d).members["GR"])
        atom = Signal(d.atom_layout())
        m.d.comb += [dprod.GR.eq(GR), dgrad.GR.eq(GR), fit.x0.eq(dprod.D), dgrad.dD.eq(fit.dD),
                     fit.ctype.eq(atom.ctype)]
        m.d.comb += [dprod.start.eq(0), fit.start.eq(0), dgrad.start.eq(0)]
        out = self.o.payload
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [GR.eq(self.i.payload.GR), atom.eq(self.i.payload.atom)]
                    m.next = "D"
            with m.State("D"):
                m.d.comb += dprod.start.eq(1)
                m.next = "D_WAIT"
            with m.State("D_WAIT"):
                with m.If(dprod.done):
                    m.d.comb += fit.start.eq(1)
                    m.next = "FIT_WAIT"
            with m.State("FIT_WAIT"):
                with m.If(fit.done):
                    m.d.comb += dgrad.start.eq(1)
                    m.next = "DGR_WAIT"
            with m.State("DGR_WAIT"):
                with m.If(dgrad.done):
                    dropped = (atom.flags & DROP_FLAGS) != 0
                    sat = dprod.sat | fit.sat | dgrad.sat
                    flags = Mux(dropped, atom.flags & DROP_FLAGS, atom.flags | (sat * FLAG_SATURATED))
                    m.d.sync += [out.atom.tag.eq(atom.tag), out.atom.ctype.eq(atom.ctype), out.atom.n.eq(atom.n),
                                 out.atom.flags.eq(flags), out.energy.eq(Mux(dropped, 0, fit.energy)),
                                 self.o.valid.eq(1)]
                    for k in range(4):
                        for c in range(d.cfg.m1):
                            m.d.sync += out.dGR[k][c].eq(Mux(dropped, 0, dgrad.dGR[k][c]))
                    m.next = "OUT"
            with m.State("OUT"):
                with m.If(self.o.ready):
                    m.d.sync += self.o.valid.eq(0)
                    m.next = "IDLE"
        return m
