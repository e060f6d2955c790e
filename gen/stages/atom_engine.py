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

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from contract.fixedpoint import requant as np_requant
from contract.flags import FLAG_BAD_TYPE, FLAG_MALFORMED, FLAG_NEIGHBOR_OVERFLOW, FLAG_SATURATED

from ..fixed import any_of, requant, saturate, shift_round, tree_sum
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
    """D[a*M2 + b] = rq(sum_k GR[k,a] GR[k,b]), desc_par columns a per cycle.  32/desc_par + 1 cycles."""

    def __init__(self, design):
        self.design = design
        m1, m2 = design.cfg.m1, design.cfg.axis_neurons
        super().__init__({"start": In(1), "done": Out(1), "sat": Out(1),
                          "GR": In(data.ArrayLayout(data.ArrayLayout(design.fmt_shape("GR"), m1), 4)),
                          "D": Out(vec_layout(design.fmt_shape("D"), m1 * m2))})

    def elaborate(self, platform):
        m = Module()
        d, F = self.design, self.design.F
        m1, m2, dp = d.cfg.m1, d.cfg.axis_neurons, d.knobs.desc_par
        steps = m1 // dp
        step = Signal(range(steps + 1))
        busy = Signal()
        with m.If(self.start):
            m.d.sync += [step.eq(0), busy.eq(1), self.sat.eq(0), self.done.eq(0)]
        with m.Elif(busy):
            sats = []
            for j in range(dp):
                # column a = step * dp + j, selected by a mux over the steps
                col = [pick(m, [self.GR[k][s * dp + j] for s in range(steps)], step, self.GR[k][0].shape(),
                            f"col{k}_{j}") for k in range(4)]
                for b in range(m2):
                    acc = tree_sum(col[k] * self.GR[k][b] for k in range(4))
                    q, sat = requant(m, acc, 2 * F["GR"].frac - d.cfg.desc_shift, F["D"])
                    sats.append(sat)
                    for s in range(steps):
                        with m.If(step == s):
                            m.d.sync += self.D[(s * dp + j) * m2 + b].eq(q)
            m.d.sync += self.sat.eq(self.sat | any_of(sats))
            m.d.sync += step.eq(step + 1)
            with m.If(step == steps - 1):
                m.d.sync += [busy.eq(0), self.done.eq(1)]
        return m


# ---------------------------------------------------------------------------------------------------
class DescriptorGradient(wiring.Component):
    """dGR[k,c] = rq(sum_b GR[k,b] dD[c*M2+b] + [c<M2] sum_a GR[k,a] dD[a*M2+c]).  32/desc_par + 1 cycles."""

    ACC_BITS = 64

    def __init__(self, design):
        self.design = design
        m1, m2 = design.cfg.m1, design.cfg.axis_neurons
        super().__init__({"start": In(1), "done": Out(1), "sat": Out(1),
                          "GR": In(data.ArrayLayout(data.ArrayLayout(design.fmt_shape("GR"), m1), 4)),
                          "dD": In(vec_layout(design.fmt_shape("dD"), m1 * m2)),
                          "dGR": Out(data.ArrayLayout(data.ArrayLayout(design.fmt_shape("dGR"), m1), 4))})

    def elaborate(self, platform):
        m = Module()
        d, F = self.design, self.design.F
        m1, m2, dp = d.cfg.m1, d.cfg.axis_neurons, d.knobs.desc_par
        steps = m1 // dp
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
            # Operands of this step's columns are selected first (one mux each), so the unit has
            # 32 * desc_par multipliers whatever the number of steps.
            sel = lambda vals, shape, name: pick(m, vals + [vals[-1]], step, shape, name)  # step == steps: idle
            for j in range(dp):
                col = [s * dp + j for s in range(steps)]  # c for the first term, a for the second
                gr_a = [sel([GR[k][a] for a in col], GR[k][0].shape(), f"gra{k}_{j}") for k in range(4)]
                dd_c = [sel([dD[a * m2 + b] for a in col], dD[0].shape(), f"ddc{b}_{j}") for b in range(m2)]
                for k in range(4):
                    first = tree_sum(GR[k][b] * dd_c[b] for b in range(m2))  # sum_b GR[k,b] dD[c,b]
                    for s in range(steps):
                        with m.If(step == s):
                            m.d.sync += acc1[k][col[s]].eq(first)
                self_parts = [[gr_a[k] * dd_c[c] for c in range(m2)] for k in range(4)]  # GR[k,a] dD[a,c]
                if j == 0:
                    parts = self_parts
                else:
                    parts = [[parts[k][c] + self_parts[k][c] for c in range(m2)] for k in range(4)]
            with m.If(step < steps):
                for k in range(4):
                    for c in range(m2):
                        m.d.sync += acc2[k][c].eq(acc2[k][c] + parts[k][c])
            with m.If(step == steps):
                sats = []
                for k in range(4):
                    for c in range(m1):
                        total = acc1[k][c] + (acc2[k][c] if c < m2 else 0)
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


# ---------------------------------------------------------------------------------------------------
class FittingEngine(wiring.Component):
    """Forward layers, energy and backward layers of the centre type's fitting net for one atom.

    A MAC array of fit_par dot products (each n_in long: fit_par x n_in multipliers) is swept over the
    layers in passes: FWD 0..L-1, ENERGY, BWD L-1..0.  A pass issues n/fit_par steps (one ROM row of
    weights each); the next pass starts when the previous one has written all its results (the
    layers depend on each other).  Per-output units requantize, apply tanh4 and the resnet sum
    (forward) or form the next delta (backward).  Cycles per atom: see gen.cycles.fitting_cycles.
    """

    def __init__(self, design):
        self.design = design
        n = design.n_hidden
        super().__init__({"start": In(1), "ctype": In(4), "done": Out(1), "sat": Out(1),
                          "x0": In(vec_layout(design.fmt_shape("D"), n)),
                          "energy": Out(design.fmt_shape("E")),
                          "dD": Out(vec_layout(design.fmt_shape("dD"), n))})

    # -- ROM contents -----------------------------------------------------------------------------
    def passes(self):
        """(kind, layer) in execution order: forward layers, the energy dot product, backward layers."""
        L = self.design.n_layers
        return [("fwd", l) for l in range(L)] + [("out", 0)] + [("bwd", l) for l in range(L - 1, -1, -1)]

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

    def elaborate(self, platform):
        m = Module()
        d, F = self.design, self.design.F
        qm, cfg = d.qm, d.cfg
        n, mp, L = d.n_hidden, d.knobs.fit_par, d.n_layers
        nt = cfg.ntypes
        steps = n // mp
        wbits, zb = F["W"].bits, F["Z"].bits
        fz, fa = F["Z"].frac, F["A"].frac
        S = lambda name: signed(F[name].bits)

        # Vector registers.
        X = [[Signal(S("A"), name=f"x{b}_{k}") for k in range(n)] for b in range(2)]
        DL = [[Signal(S("DELTA"), name=f"delta{b}_{k}") for k in range(n)] for b in range(2)]
        G = [Signal(S("GA"), name=f"g_{k}") for k in range(n)]
        DPHI = [[Signal(S("Z"), name=f"dphi{l}_{k}") for k in range(n)] for l in range(L)]
        m.d.comb += [self.dD[k].eq(X[L % 2][k]) for k in range(n)]

        # Constant backward seed g_out = rq(out_w) per type (saturation, if any, is a per-type constant).
        g_out, g_out_sat = [], []
        for t in range(nt):
            q, bad = np_requant(qm.out_w[t], qm.out_wfrac[t], F["GA"])
            g_out.append([int(x) for x in q])
            g_out_sat.append(int(bad.any()))

        passes = self.passes()
        npass = len(passes)
        rows, base = self.rom_rows()
        rps = []
        for i in range(mp):
            rom = Memory(shape=n * wbits + zb, depth=len(rows[i]), init=rows[i])
            m.submodules[f"weights{i}"] = rom
            rps.append(rom.read_port())
        depth = len(rows[0])

        # ---- sequencer ----------------------------------------------------------------------------
        cur_pass = Signal(range(npass + 1))
        step = Signal(range(steps + 1))
        issuing, draining = Signal(), Signal()
        ctype = Signal(4)
        in_flight = Signal()  # any pipeline stage holds a valid step (driven below)
        last_step = Signal(range(steps), name="last_step")  # steps in the current pass, minus one
        for p, (kind, _) in enumerate(passes):
            with m.If(cur_pass == p):
                m.d.comb += last_step.eq(self.pass_rows(kind) - 1)
        with m.If(self.start):
            m.d.sync += [cur_pass.eq(0), step.eq(0), issuing.eq(1), draining.eq(0), ctype.eq(self.ctype),
                         self.done.eq(0), self.sat.eq(0)]
        with m.Elif(issuing):
            m.d.sync += step.eq(step + 1)
            with m.If(step == last_step):
                m.d.sync += [issuing.eq(0), draining.eq(1)]
        with m.Elif(draining & ~in_flight):
            with m.If(cur_pass == npass - 1):
                m.d.sync += [draining.eq(0), self.done.eq(1)]
            with m.Else():
                m.d.sync += [cur_pass.eq(cur_pass + 1), step.eq(0), issuing.eq(1), draining.eq(0)]

        # ---- MAC pipeline: c0 issue -> c1 ROM data -> c2 products -> c3 partial sums -> c4 acc ------
        row = Signal(range(depth))
        for p, (kind, _) in enumerate(passes):
            with m.If(cur_pass == p):
                m.d.comb += row.eq(base[p] + ctype * self.pass_rows(kind) + (0 if kind == "out" else step))
        m.d.comb += [rp.addr.eq(row) for rp in rps] + [rp.en.eq(1) for rp in rps]
        tag_layout = data.StructLayout({"v": 1, "p": range(npass + 1), "s": range(steps + 1)})
        t1, t2, t3, t4 = (Signal(tag_layout, name=f"tag{i}") for i in range(1, 5))
        m.d.sync += [t1.v.eq(issuing), t1.p.eq(cur_pass), t1.s.eq(step), t2.eq(t1), t3.eq(t2), t4.eq(t3)]

        # operand vector for the pass in stage c1 (all passes of a kind read fixed buffers)
        def vec_of(kind, l, k):
            if kind == "fwd":
                return self.x0[k] if l == 0 else X[(l - 1) % 2][k]
            if kind == "out":
                return X[(L - 1) % 2][k]
            return DL[(L - 1 - l) % 2][k]

        GROUP = 16
        partial = [[Signal(signed(64), name=f"part{i}_{g}") for g in range((n + GROUP - 1) // GROUP)] for i in range(mp)]
        acc = [Signal(signed(64), name=f"acc{i}") for i in range(mp)]
        bias = [[Signal(S("Z"), name=f"bias{i}_{st}") for i in range(mp)] for st in range(3)]
        def decode(tag, name):
            """One signal per pass: tag.p == p (named, so each comparison exists once)."""
            sigs = [Signal(name=f"{name}_is{p}") for p in range(npass)]
            m.d.comb += [sig.eq(tag.p == p) for p, sig in enumerate(sigs)]
            return sigs
        t1_is = decode(t1, "t1")

        # The operand vector depends on the pass only: one mux per input element, shared by the units.
        vsel = []
        for j in range(n):
            v = 0
            for p, (kind, l) in enumerate(passes):
                v = Mux(t1_is[p], vec_of(kind, l, j), v)
            sig = Signal(signed(max(F[k].bits for k in ("D", "A", "DELTA"))), name=f"operand{j}")
            m.d.comb += sig.eq(v)
            vsel.append(sig)
        for i in range(mp):
            prods = []
            for j in range(n):
                w = rps[i].data[(j * wbits):((j + 1) * wbits)].as_signed()
                pr = Signal(signed(46), name=f"prod{i}_{j}")
                m.d.sync += pr.eq(vsel[j] * w)
                prods.append(pr)
            for g in range(len(partial[i])):
                grp = prods[g * GROUP:(g + 1) * GROUP]
                m.d.sync += partial[i][g].eq(tree_sum(grp))
            m.d.sync += acc[i].eq(tree_sum(partial[i]))
            # bias travels with the products (zero in non-forward rows)
            m.d.sync += [bias[0][i].eq(rps[i].data[(n * wbits):(n * wbits + zb)].as_signed()),
                         bias[1][i].eq(bias[0][i]), bias[2][i].eq(bias[1][i])]

        # ---- output units: u1 .. u5 after the accumulator (tag t4 aligns with acc) -------------------
        u = [Signal(tag_layout, name=f"utag{i}") for i in range(1, 6)]
        m.d.sync += [u[0].eq(t4)] + [u[i].eq(u[i - 1]) for i in range(1, 5)]
        t4_is = decode(t4, "t4")
        u_is = [decode(u[k], f"u{k}") for k in range(4)]
        pass_is = lambda dec, kinds: any_of(dec[p] for p, (kd, _) in enumerate(passes) if kd in kinds)
        m.d.comb += in_flight.eq(any_of(t.v for t in (t1, t2, t3, t4, *u)))
        sat_any = []
        writes = {}
        # Decoded write enables (pass, step) of the last unit stage, shared by all units.
        write_at = [[Signal(name=f"we_p{p}_s{s}") for s in range(steps)] for p in range(npass)]
        for p in range(npass):
            for s in range(steps):
                m.d.comb += write_at[p][s].eq(u[3].v & u_is[3][p] & (u[3].s == s))
        for i in range(mp):
            # index of this unit's output in stage tags
            kidx = lambda tag: tag.s * mp + i
            # u1: requantize the dot product according to the pass
            z1 = Signal(S("Z"), name=f"z1_{i}")
            e1 = Signal(S("E"), name=f"e1_{i}")
            b1 = Signal(signed(max(F["GA"].bits, F["dD"].bits)), name=f"b1_{i}")
            s1 = Signal(name=f"s1_{i}")
            zsel, esel, bsel, ssel = 0, 0, 0, 0
            for p, (kind, l) in enumerate(passes):
                if kind == "fwd":
                    xfrac = F["D"].frac if l == 0 else fa
                    z_t = [saturate(m, shift_round(acc[i], xfrac + qm.fit[t][l].wfrac - fz) + bias[2][i], F["Z"])[0]
                           for t in range(nt)]
                    zsel = Mux(t4_is[p], per_type(ctype, z_t), zsel)
                elif kind == "out" and i == 0:
                    e_t = [requant(m, acc[i], fa + qm.out_wfrac[t], F["E"]) for t in range(nt)]
                    esel = Mux(t4_is[p], per_type(ctype, [e for e, _ in e_t]), esel)
                    ssel = Mux(t4_is[p], per_type(ctype, [s for _, s in e_t]), ssel)
                elif kind == "bwd":
                    fmt = F["GA"] if l > 0 else F["dD"]
                    b_t = [requant(m, acc[i], F["DELTA"].frac + qm.fit[t][l].wfrac, fmt) for t in range(nt)]
                    bsel = Mux(t4_is[p], per_type(ctype, [b for b, _ in b_t]), bsel)
                    ssel = Mux(t4_is[p], per_type(ctype, [s for _, s in b_t]), ssel)
            m.d.sync += [z1.eq(zsel), e1.eq(esel), b1.eq(bsel), s1.eq(ssel & t4.v)]

            # forward path: tanh4 (3 stages: u2..u4)
            th = Tanh4(F["Z"])
            m.submodules[f"tanh4_{i}"] = th
            m.d.comb += th.z.eq(z1)
            # backward path aligned to the same stages
            b2, b3, b4 = (Signal.like(b1, name=f"b{k}_{i}") for k in (2, 3, 4))
            gnew3 = Signal(S("GA"), name=f"gnew3_{i}")
            s2, s3, s4 = (Signal(name=f"s{k}_{i}") for k in (2, 3, 4))
            e2, e3, e4 = (Signal.like(e1, name=f"e{k}_{i}") for k in (2, 3, 4))
            m.d.sync += [b2.eq(b1), b3.eq(b2), b4.eq(b3), e2.eq(e1), e3.eq(e2), e4.eq(e3)]
            # u3: g_new = sat(g_prev + back) for backward layers l > 0
            gsel, gs = 0, 0
            for p, (kind, l) in enumerate(passes):
                if kind == "bwd" and l > 0:
                    k2 = kidx(u[1])
                    gprev = (pick(m, [Const(g_out[t][k], S("GA")) for t in range(nt) for k in range(n)],
                                  ctype * n + k2, S("GA"), f"gout2_{i}")
                             if l == L - 1 else pick(m, G, k2, S("GA"), f"gprev{l}_{i}"))
                    gv, gsat = saturate(m, gprev + b2, F["GA"])
                    gsel = Mux(u_is[1][p], gv, gsel)
                    gs = Mux(u_is[1][p], gsat, gs)
            m.d.sync += [gnew3.eq(gsel), s2.eq(s1), s3.eq(s2 | (gs & u[1].v)), s4.eq(s3)]
            # u4: delta_next = rq(dphi[l-1] * g_new) for backward l > 0;  forward: y, phi' ready (th)
            dn4 = Signal(S("DELTA"), name=f"dn4_{i}")
            gnew4 = Signal.like(gnew3)
            dphi_sel = 0
            for p, (kind, l) in enumerate(passes):
                if kind == "bwd" and l > 0:
                    dphi_sel = Mux(u_is[2][p], pick(m, DPHI[l - 1], kidx(u[2]), S("Z"), f"dphi{l}_{i}"), dphi_sel)
            dsel, dsat_c = requant(m, dphi_sel * gnew3, fz + F["GA"].frac, F["DELTA"])
            dsat = Signal(name=f"dsat4_{i}")
            m.d.sync += dsat.eq(dsat_c & pass_is(u_is[2], ("bwd",)) & u[2].v)
            m.d.sync += [dn4.eq(dsel), gnew4.eq(gnew3)]
            # u4 (forward): resnet sum with the layer input
            y4 = Signal(S("A"), name=f"y4_{i}")
            dphi4 = Signal(S("Z"), name=f"dphi4_{i}")
            ysel, ysat = 0, 0
            for p, (kind, l) in enumerate(passes):
                if kind == "fwd":
                    k3 = kidx(u[3])
                    y = shift_round(th.y, fz - fa)
                    if l > 0:
                        yv, ys = saturate(m, pick(m, X[(l - 1) % 2], k3, S("A"), f"xin{l}_{i}") + y, F["A"])
                    else:
                        yv, ys = y, 0
                    ysel = Mux(u_is[3][p], yv, ysel)
                    ysat = Mux(u_is[3][p], ys, ysat)
            m.d.comb += [y4.eq(ysel), dphi4.eq(th.dphi)]
            # u5: forward last layer seeds the backward pass: delta = rq(phi' * g_out); then write.
            k4 = kidx(u[3])
            g_seed = pick(m, [Const(g_out[t][k], S("GA")) for t in range(nt) for k in range(n)], ctype * n + k4,
                          S("GA"), f"gseed_{i}")
            seed_v, seed_sat = requant(m, dphi4 * g_seed, fz + F["GA"].frac, F["DELTA"])
            seed = Signal(S("DELTA"), name=f"seed_{i}")
            m.d.comb += seed.eq(seed_v)
            is_last_fwd = u_is[3][L - 1]
            stage_sat = (s4 | (ysat & pass_is(u_is[3], ("fwd",))) | dsat
                         | (seed_sat & is_last_fwd))
            sat_any.append(stage_sat & u[3].v)
            # Writes: collect (condition, value) per target register, emitted flat below so that each
            # register gets one enable and one small mux (not a copy of the whole pass/step decode).
            for p, (kind, l) in enumerate(passes):
                for s in range(steps):
                    k = s * mp + i
                    cond = write_at[p][s]
                    if kind == "fwd":
                        writes.setdefault(("X", l % 2, k), []).append((cond, y4))
                        writes.setdefault(("DPHI", l, k), []).append((cond, dphi4))
                        if l == L - 1:
                            writes.setdefault(("DL", 0, k), []).append((cond, seed))
                    elif kind == "bwd" and l > 0:
                        writes.setdefault(("G", 0, k), []).append((cond, gnew4))
                        writes.setdefault(("DL", (L - l) % 2, k), []).append((cond, dn4))
                    elif kind == "bwd":
                        writes.setdefault(("X", L % 2, k), []).append((cond, b4))
                    elif kind == "out" and i == 0 and s == 0:
                        writes.setdefault(("E", 0, 0), []).append((cond, e4))
        regs = {"X": X, "DPHI": DPHI, "DL": DL, "G": [G], "E": [[self.energy]]}
        for (name, b, k), pairs in writes.items():
            value = pairs[-1][1]
            for cond, v in reversed(pairs[:-1]):
                value = Mux(cond, v, value)
            with m.If(any_of(c for c, _ in pairs)):
                m.d.sync += regs[name][b][k].eq(value)
        with m.If(~self.start):
            m.d.sync += self.sat.eq(self.sat | any_of(sat_any) | (per_type(ctype, [Const(x) for x in g_out_sat]) & issuing))
        return m


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
