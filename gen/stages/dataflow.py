"""The layer-pipelined fitting net (knob arch="dataflow"): one stage per fitting layer and direction.

    GR ─► DescriptorStage ─► FwdLayer 0 ─► ... ─► FwdLayer L-1 ─► EnergyStage ─► BwdLayer L-1 ─► ... ─► BwdLayer 0 ─► GradientStage ─► out
            │  D = GR^T GR'     │ dphi_0 ────────────────────────────────────────────► (BwdLayer 1)      │ dGR
            └─ GR ──────────────┼──────────────────────────────────────────────────────────────────────► ┘
                          weights W_0 (one memory, two read ports) ◄──────────────────────── BwdLayer 0

Atoms stream through; each stage works on a different atom (FINN's dataflow, the seed's non-von-Neumann
pipeline).  Each fitting layer's weights W_l are stored once, in one memory of tiles that both FwdLayer l
and BwdLayer l read (a true dual-port block RAM): a tile holds W[ib*simd + s, ob*pe + p] for the pe x simd
pair (p, s) of tile (ob, ib).  FwdLayer l computes pe outputs from simd inputs per cycle with the tile;
BwdLayer l reads the same tile transposed (simd outputs from pe inputs: dE/dx = delta W^T), so both take
(n/pe)(n/simd) cycles per atom and balance by construction.

Per-stage folding is FINN's: `pe` output lanes and `simd` input lanes (hls4ml's reuse factor is
n_in/simd x n_out/pe).  A MatVec stage has pe x simd multipliers and takes `steps` = (n_out/pe)(n_in/simd)
cycles per atom in steady state (two input slots and two output slots: the next atom is issued in the
cycle after the last step of the previous one, while that one drains).

Side streams carry what a later stage needs and the stages between do not: phi'(z) of FwdLayer l to
BwdLayer l+1 and GR from DescriptorStage to GradientStage, each through a FIFO of whole vectors (block RAM).
Every value is the reference's integer (model.reference._fitting and stages 6, 9); the stage docstrings
say which line each computes.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from contract.fixedpoint import requant as np_requant
from contract.flags import FLAG_SATURATED

from ..cycles import DATAFLOW_EPILOGUE, DATAFLOW_MAC_LATENCY
from ..fixed import any_of, requant, saturate, shift_round, tree_sum
from ..widths import FIT_GROUP, product_bits, sum_bits
from .atom_engine import (DROP_FLAGS, DescriptorGradient, DescriptorProduct, Tanh4, atom_out_layout,
                          descriptor_blocks, per_type)
from .descriptor_accumulator import atom_gr_layout

#: register stages from the cycle a step is issued to the cycle its accumulator holds the sum:
#: weights (memory read, operands), products, partial sums, sum, accumulate (gen.cycles: the cycle model)
MAC_LATENCY = DATAFLOW_MAC_LATENCY


class FoldingError(ValueError):
    """A folding parameter that the stage cannot use; the message names it and its value."""


def check_fold(name: str, value, n: int, where: str, divides: bool = False) -> int:
    """`value` must be an int from 1 to n (the vector length), a divisor of n where `divides`.  MatVec
    lanes that do not divide n leave some lanes idle in the last block (zero weights and operands
    there, the outputs unused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FoldingError(f"{where}: {name} must be a positive integer, got {value!r}")
    if value > n:
        raise FoldingError(f"{where}: {name}={value} exceeds the vector length {n}")
    if divides and n % value:
        raise FoldingError(f"{where}: {name}={value} must divide {n}")
    return value


def blocks(n: int, lanes: int) -> int:
    return -(-n // lanes)


def vec(shape, n):
    return data.ArrayLayout(shape, n)


def gr_layout(design):
    return data.ArrayLayout(data.ArrayLayout(design.fmt_shape("GR"), design.cfg.m1), 4)


def payload(design, **vectors):
    """Stream payload between fitting stages: the atom, its saturation so far, and named fields."""
    return data.StructLayout({"atom": design.atom_layout(), "sat": 1, **vectors})


def _signed(design, name):
    return signed(design.F[name].bits)


def fitting_layouts(design):
    """Payload layout of every link of the chain, by the name of the stage that produces it."""
    d, n, L = design, design.n_hidden, design.n_layers
    E = d.fmt_shape("E")
    out = {"descriptor": payload(d, x=vec(d.fmt_shape("D"), d.cfg.m1 * d.cfg.axis_neurons))}
    for l in range(L):
        fields = {"x": vec(d.fmt_shape("A"), n)}
        if l == L - 1:
            fields["delta"] = vec(d.fmt_shape("DELTA"), n)
        out[f"fwd{l}"] = payload(d, **fields)
    out["energy"] = payload(d, energy=E, delta=vec(d.fmt_shape("DELTA"), n))
    for l in range(L - 1, 0, -1):
        out[f"bwd{l}"] = payload(d, energy=E, delta=vec(d.fmt_shape("DELTA"), n), g=vec(d.fmt_shape("GA"), n))
    out["bwd0"] = payload(d, energy=E, dD=vec(d.fmt_shape("dD"), n))
    return out


# ---------------------------------------------------------------------------------------------------
def layer_tiles(design, layer: int, pe: int, simd: int) -> list[int]:
    """Rows of fitting layer `layer`'s weight memory, for forward folding (pe, simd): row
    t * tiles + ob * ceil(n_in/simd) + ib holds W_t[ib*simd + s, ob*pe + p] at bits [(p*simd + s) * wbits,
    +wbits), zero past the matrix's edge."""
    qm, wb = design.qm, design.F["W"].bits
    mask = (1 << wb) - 1
    rows = []
    for t in range(design.cfg.ntypes):
        W = qm.fit[t][layer].W
        n_in, n_out = W.shape
        for ob in range(blocks(n_out, pe)):
            for ib in range(blocks(n_in, simd)):
                v = 0
                for p in range(min(pe, n_out - ob * pe)):
                    for s in range(min(simd, n_in - ib * simd)):
                        v |= (int(W[ib * simd + s, ob * pe + p]) & mask) << ((p * simd + s) * wb)
                rows.append(v)
    return rows


def energy_tiles(design, simd: int) -> list[int]:
    """Rows of the energy weights out_w: row t * (n/simd) + ib holds out_w_t[ib*simd + s] at bits s*wbits."""
    qm, wb = design.qm, design.F["W"].bits
    mask = (1 << wb) - 1
    rows = []
    for t in range(design.cfg.ntypes):
        w = qm.out_w[t]
        for ib in range(blocks(len(w), simd)):
            rows.append(sum((int(w[ib * simd + s]) & mask) << (s * wb) for s in range(min(simd, len(w) - ib * simd))))
    return rows


def const_rom(m, name, values_per_row: list[list[int]], bits: int, addr):
    """Small ROM of constants (one row of several `bits`-wide values), read one cycle after `addr`.
    Returns the row's values as signed expressions."""
    mask = (1 << bits) - 1
    init = [sum((int(v) & mask) << (k * bits) for k, v in enumerate(row)) for row in values_per_row]
    width = bits * len(values_per_row[0])
    mem = Memory(shape=width, depth=len(init), init=init)
    m.submodules[name] = mem
    rp = mem.read_port()
    m.d.comb += [rp.addr.eq(addr), rp.en.eq(1)]
    return [rp.data[k * bits:(k + 1) * bits].as_signed() for k in range(len(values_per_row[0]))]


def g_out(design):
    """Per centre type: (g_out = rq(out_w) in GA, whether that saturated), as model.reference._fitting."""
    out = []
    for t in range(design.cfg.ntypes):
        q, bad = np_requant(design.qm.out_w[t], design.qm.out_wfrac[t], design.F["GA"])
        out.append(([int(x) for x in q], bool(bad.any())))
    return out


# ---------------------------------------------------------------------------------------------------
class MatVecStage(wiring.Component):
    """One matrix-vector product per atom, folded onto pe x simd multipliers, and its output units.

    Interface contract:
      i        In stream of `in_layout` (one beat per atom: the whole input vector); taken into one of
               two input slots when that slot is free (`i.ready` does not depend on `i.valid`).
      side_i   (if `side_in`) In stream of one vector per atom, joined with `i`: both are taken together.
      o        Out stream of `out_layout` (one beat per atom, atoms in input order).
      side_o   (if `side_out`) Out stream of one vector per atom, leaving together with `o`.
      w_addr   Out: weight memory address of the step being issued; `w_data` (In) must hold that row
               one cycle later (a synchronous read port).
    Latency: an atom's output is valid MAC_LATENCY + epilogue latency + steps cycles after its issue
    starts; steady state: one atom every `steps` = (n_out/pe)(n_in/simd) cycles (the next atom issues
    right after the last step of the previous one, given a free input and output slot).

    Subclasses set the geometry, the layouts and `epilogue()`: the output units that turn a finished
    dot product (one per output lane) into the stage's output elements.
    """

    #: register stages of the output units, after the accumulator (subclasses)
    EPILOGUE = 0

    def __init__(self, design, *, n_in, n_out, pe, simd, in_layout, out_layout, operand, w_rows, w_width,
                 side_in=None, side_out=None, carry=(), where="MatVecStage"):
        self.design = design
        self.n_in, self.n_out = n_in, n_out
        self.pe = check_fold("pe", pe, n_out, where)
        self.simd = check_fold("simd", simd, n_in, where)
        self.steps = blocks(n_out, pe) * blocks(n_in, simd)
        self.in_layout, self.out_layout = in_layout, out_layout
        self.operand, self.carry = operand, carry
        self.side_in, self.side_out = side_in, side_out  # (field name, vector layout) or None
        self.w_rows, self.w_width = w_rows, w_width
        sig = {"i": In(stream.Signature(in_layout)), "o": Out(stream.Signature(out_layout)),
               "w_addr": Out(range(max(w_rows, 2))), "w_data": In(w_width)}
        if side_in:
            sig["side_i"] = In(stream.Signature(side_in[1]))
        if side_out:
            sig["side_o"] = Out(stream.Signature(side_out[1]))
        super().__init__(sig)

    @property
    def multipliers(self) -> int:
        return self.pe * self.simd

    # -- hooks ----------------------------------------------------------------------------------------
    def address(self, ctype, ob, ib):
        raise NotImplementedError

    def weight_index(self, p: int, s: int) -> int:
        """Position of the weight of output lane p and input lane s in a memory row."""
        raise NotImplementedError

    def start_sat(self, ctype):
        """Saturation counted when an atom starts (a per-type constant); none by default."""
        return Const(0)

    def epilogue(self, m, lane, acc, ctx):
        """Output unit `lane`: returns ({out field: value at the write stage}, saturation at the write
        stage).  `acc` holds the finished dot product in stage 0 (ctx.tag(0)); ctx.tag(k) is the step's
        tag k cycles later, ctx.index(k) the output element it computes, ctx.ctype(k) the atom's centre
        type, ctx.elem(field, k) the input slot's element at that index, ctx.reg(v) a register."""
        raise NotImplementedError

    # -- the hardware ----------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        d = self.design
        P, S, n_in, n_out = self.pe, self.simd, self.n_in, self.n_out
        nob, nib = blocks(n_out, P), blocks(n_in, S)
        in_fields = dict(self.in_layout.members)
        if self.side_in:
            in_fields[self.side_in[0]] = self.side_in[1]
        out_fields = dict(self.out_layout.members)
        if self.side_out:
            out_fields[self.side_out[0]] = self.side_out[1]
        in_slot_l, out_slot_l = data.StructLayout(in_fields), data.StructLayout(out_fields)
        ins = [Signal(in_slot_l, name=f"in{k}") for k in range(2)]
        outs = [Signal(out_slot_l, name=f"out{k}") for k in range(2)]
        busy = [Signal(name=f"busy{k}") for k in range(2)]        # input slot holds an atom
        fresh = [Signal(name=f"fresh{k}") for k in range(2)]      # ... not yet issued
        free = [Signal(init=1, name=f"free{k}") for k in range(2)]  # output slot can take an atom
        done = [Signal(name=f"done{k}") for k in range(2)]        # output slot complete
        fill, iss, ep = Signal(name="fill"), Signal(name="iss"), Signal(name="ep")

        # ---- input: take a beat (and its side vector) into the free slot ----
        can_take = ~Mux(fill, busy[1], busy[0])
        if self.side_in:
            m.d.comb += [self.i.ready.eq(can_take & self.side_i.valid),
                         self.side_i.ready.eq(can_take & self.i.valid)]
        else:
            m.d.comb += self.i.ready.eq(can_take)
        take = self.i.valid & self.i.ready
        with m.If(take):
            for k in range(2):
                with m.If(fill == k):
                    for name in self.in_layout.members:
                        m.d.sync += ins[k][name].eq(self.i.payload[name])
                    if self.side_in:
                        m.d.sync += ins[k][self.side_in[0]].eq(self.side_i.payload)
                    m.d.sync += [busy[k].eq(1), fresh[k].eq(1)]
            m.d.sync += fill.eq(~fill)

        # ---- issue: steps (ob, ib) of the atom in slot iss ----
        issuing = Signal()
        ob, ib = Signal(range(nob + 1), name="ob"), Signal(range(nib + 1), name="ib")
        last_ib, last_ob = ib == nib - 1, ob == nob - 1
        last_step = issuing & last_ib & last_ob
        nxt = Signal()
        m.d.comb += nxt.eq(Mux(issuing, ~iss, iss))
        start = Signal()
        m.d.comb += start.eq((~issuing | last_step) & Mux(nxt, fresh[1] & free[1], fresh[0] & free[0]))

        def ctype_of(slot_sel):
            ct = Mux(slot_sel, ins[1].atom.ctype, ins[0].atom.ctype)
            return Mux(ct < d.cfg.ntypes, ct, 0)  # dropped atoms: any type; their results are discarded

        with m.If(issuing):
            m.d.sync += ib.eq(Mux(last_ib, 0, ib + 1))
            with m.If(last_ib):
                m.d.sync += ob.eq(Mux(last_ob, 0, ob + 1))
            with m.If(last_step):
                m.d.sync += [issuing.eq(0), iss.eq(~iss)]
        with m.If(start):
            m.d.sync += [issuing.eq(1), ob.eq(0), ib.eq(0), iss.eq(nxt)]
            for k in range(2):
                with m.If(nxt == k):
                    m.d.sync += [fresh[k].eq(0), free[k].eq(0), outs[k].atom.eq(ins[k].atom),
                                 outs[k].sat.eq(ins[k].sat | self.start_sat(ctype_of(k)))]
                    m.d.sync += [outs[k][name].eq(ins[k][name]) for name in self.carry]
        m.d.comb += self.w_addr.eq(self.address(ctype_of(iss), ob, ib))

        # ---- tags down the MAC pipeline ----
        tag_l = data.StructLayout({"v": 1, "par": 1, "ob": range(nob + 1), "first": 1, "last": 1, "end": 1})
        tag0 = Signal(tag_l, name="tag_issue")
        m.d.comb += [tag0.v.eq(issuing), tag0.par.eq(iss), tag0.ob.eq(ob), tag0.first.eq(ib == 0),
                     tag0.last.eq(last_ib), tag0.end.eq(last_ib & last_ob)]
        tags = [tag0]
        for k in range(1, MAC_LATENCY + self.EPILOGUE + 1):
            t = Signal(tag_l, name=f"tag{k}")
            m.d.sync += t.eq(tags[-1])
            tags.append(t)

        # ---- MAC array: operands and weights (1), products (2), partials (3), sum (4), acc (5) ----
        op_shape = self.in_layout.members[self.operand].elem_shape
        opw = op_shape.width
        wb = d.F["W"].bits
        operands = []
        for s in range(S):
            reg = Signal(signed(opw), name=f"operand{s}")
            choices = [ins[k][self.operand][b * S + s] if b * S + s < n_in else Const(0, signed(opw))
                       for k in range(2) for b in range(nib)]
            sel = iss * nib + ib if nib > 1 else iss
            m.d.sync += reg.eq(_array_pick(choices, sel))
            operands.append(reg)
        pbits = product_bits(opw, wb)
        group = min(FIT_GROUP, S)
        gbits, sbits = sum_bits(pbits, group), sum_bits(pbits, S)
        abits = sum_bits(pbits, n_in)
        self.acc_bits = abits
        accs = []
        for p in range(P):
            prods = []
            for s in range(S):
                w = self.w_data[self.weight_index(p, s) * wb:(self.weight_index(p, s) + 1) * wb].as_signed()
                pr = Signal(signed(pbits), name=f"prod{p}_{s}")
                m.d.sync += pr.eq(operands[s] * w)
                prods.append(pr)
            parts = []
            for g in range(0, S, group):
                pt = Signal(signed(gbits), name=f"part{p}_{g // group}")
                m.d.sync += pt.eq(tree_sum(prods[g:g + group]))
                parts.append(pt)
            sm = Signal(signed(sbits), name=f"sum{p}")
            m.d.sync += sm.eq(tree_sum(parts))
            acc = Signal(signed(abits), name=f"acc{p}")
            t4 = tags[4]
            with m.If(t4.v):
                m.d.sync += acc.eq(Mux(t4.first, 0, acc) + sm)
            accs.append(acc)

        # ---- output units ----
        ctx = _Context(self, m, tags, ins, nob)
        K = self.EPILOGUE
        tw = tags[MAC_LATENCY + K]
        lane_writes, lane_sats = [], []
        for p in range(P):
            ctx.lane = p
            writes, sat = self.epilogue(m, p, accs[p], ctx)
            lane_writes.append(writes)
            lane_sats.append(sat)
        wv = tw.v & tw.last
        for k in range(2):
            for b in range(nob):
                hit = Signal(name=f"write{k}_{b}")
                m.d.comb += hit.eq(wv & (tw.par == k) & (tw.ob == b))
                with m.If(hit):
                    for p in range(min(P, n_out - b * P)):  # lanes past the vector's end: idle
                        for name, value in lane_writes[p].items():
                            if isinstance(out_fields[name], data.ArrayLayout):
                                m.d.sync += outs[k][name][b * P + p].eq(value)
                            else:  # a scalar output (the energy): one output lane, one block
                                m.d.sync += outs[k][name].eq(value)
        # a lane idle in the last block (pe not dividing n_out) computes nothing that counts
        idle_from = n_out - (nob - 1) * P
        sat_now = any_of(sat if p < idle_from else sat & (tw.ob != nob - 1) for p, sat in enumerate(lane_sats))
        for k in range(2):
            with m.If(wv & (tw.par == k)):
                m.d.sync += outs[k].sat.eq(outs[k].sat | sat_now)
            with m.If(tw.v & tw.end & (tw.par == k)):
                m.d.sync += [done[k].eq(1), busy[k].eq(0)]
        # A slot's sat is set at start (for that slot) and ORed at writes: both never hit one slot at once.

        # ---- output: the slot ep, when complete ----
        ready_all = self.o.ready & (self.side_o.ready if self.side_out else 1)
        cur_done = Mux(ep, done[1], done[0])
        if self.side_out:
            m.d.comb += [self.o.valid.eq(cur_done & self.side_o.ready), self.side_o.valid.eq(cur_done & self.o.ready)]
            m.d.comb += self.side_o.payload.eq(Mux(ep, outs[1][self.side_out[0]], outs[0][self.side_out[0]]))
        else:
            m.d.comb += self.o.valid.eq(cur_done)
        for name in self.out_layout.members:
            m.d.comb += self.o.payload[name].eq(Mux(ep, outs[1][name], outs[0][name]))
        fire = cur_done & ready_all
        with m.If(fire):
            for k in range(2):
                with m.If(ep == k):
                    m.d.sync += [done[k].eq(0), free[k].eq(1)]
            m.d.sync += ep.eq(~ep)
        return m


def _at(values, k):
    """values[k] as an int, 0 past the end (idle lanes of a last block)."""
    return int(values[k]) if k < len(values) else 0


def _array_pick(choices, index):
    from amaranth.hdl import Array
    if len(choices) == 1:
        return choices[0]
    return Array(choices)[index]


class _Context:
    """What an epilogue sees of its stage: tags, element index, centre type, input slot elements."""

    def __init__(self, stage, m, tags, ins, nob):
        self.stage, self.m, self.tags, self.ins, self.nob = stage, m, tags, ins, nob
        self.lane = 0
        self._cache = {}

    def tag(self, k):
        return self.tags[MAC_LATENCY + k]

    def index(self, k):
        return self.tag(k).ob * self.stage.pe + self.lane

    def ctype(self, k):
        t = self.tag(k)
        ct = Mux(t.par, self.ins[1].atom.ctype, self.ins[0].atom.ctype)
        return Mux(ct < self.stage.design.cfg.ntypes, ct, 0)

    def block(self, k):
        """(centre type, output block) of the step in epilogue stage k: a ROM address t * nob + ob."""
        return self.ctype(k) * self.nob + self.tag(k).ob

    def elem(self, field, k):
        """Input slot element `field`[index] of the step in epilogue stage k (one mux per lane)."""
        t = self.tag(k)
        n = len(self.ins[0][field])
        idx = [b * self.stage.pe + self.lane for b in range(self.nob)]
        vals = [self.ins[s][field][i] if i < n else self.ins[s][field][0] for s in range(2) for i in idx]
        sig = Signal(vals[0].shape(), name=f"{field}_in{self.lane}_{k}")
        self.m.d.comb += sig.eq(_array_pick(vals, t.par * self.nob + t.ob if self.nob > 1 else t.par))
        return sig

    def reg(self, v, name, shape=None):
        sig = Signal(shape if shape is not None else v.shape(), name=f"{name}{self.lane}")
        self.m.d.sync += sig.eq(v)
        return sig


# ---------------------------------------------------------------------------------------------------
class FwdLayer(MatVecStage):
    """Forward fitting layer l (model.reference._fitting, forward loop):
    z = sat(round(x W_t 2^-(xfrac + wfrac - fz)) + b_t) in Z (saturation exact, no flag),
    y = tanh4(z) rounded to A; x' = rq(x + y) in A for resnet layers (l > 0), else y; phi'(z) to the
    side stream (BwdLayer l+1 needs it); the last layer also seeds the backward pass:
    delta = rq(phi'(z) g_out_t) in DELTA.  Epilogue latency 3 (tanh4).  pe x simd multipliers.

    i: {atom, sat, x} (D for l = 0, A after);  o: {atom, sat, x} (+ delta for the last layer);
    side_o: phi'(z) (n x Z) for l < L-1.  Weights: `layer_tiles(design, l, pe, simd)` through w_addr/w_data.
    """

    EPILOGUE = DATAFLOW_EPILOGUE["fwd"]

    def __init__(self, design, layer, *, pe, simd):
        n, L = design.n_hidden, design.n_layers
        self.layer = layer
        lay = fitting_layouts(design)
        in_l = lay["descriptor"] if layer == 0 else lay[f"fwd{layer - 1}"]
        side = ("dphi", vec(design.fmt_shape("Z"), n)) if layer < L - 1 else None
        where = f"FwdLayer {layer}"
        check_fold("pe", pe, n, where), check_fold("simd", simd, n, where)
        super().__init__(design, n_in=n, n_out=n, pe=pe, simd=simd, in_layout=in_l, out_layout=lay[f"fwd{layer}"],
                         operand="x", w_rows=design.cfg.ntypes * blocks(n, pe) * blocks(n, simd),
                         w_width=pe * simd * design.F["W"].bits, side_out=side, where=where)

    def address(self, ctype, ob, ib):
        nib = blocks(self.n_in, self.simd)
        return ctype * (blocks(self.n_out, self.pe) * nib) + ob * nib + ib

    def weight_index(self, p, s):
        return p * self.simd + s

    def epilogue(self, m, lane, acc, ctx):
        d, F, qm, l = self.design, self.design.F, self.design.qm, self.layer
        fz, fa = F["Z"].frac, F["A"].frac
        xfrac = F["D"].frac if l == 0 else fa
        nt = d.cfg.ntypes
        ctx.lane = lane
        # stage 0: bias row (ROM addressed one cycle earlier, from the sum stage's tag), z
        bias_rows = [[_at(qm.fit[t][l].b, ob * self.pe + p) for p in range(self.pe)]
                     for t in range(nt) for ob in range(blocks(self.n_out, self.pe))]
        if lane == 0:
            prev = ctx.tags[MAC_LATENCY - 1]
            ct = Mux(prev.par, ctx.ins[1].atom.ctype, ctx.ins[0].atom.ctype)
            ct = Mux(ct < nt, ct, 0)
            self._bias = const_rom(m, "bias", bias_rows, F["Z"].bits, ct * ctx.nob + prev.ob)
            if l == d.n_layers - 1:
                go = g_out(d)
                rows = [[_at(go[t][0], ob * self.pe + p) for p in range(self.pe)] for t in range(nt)
                        for ob in range(blocks(self.n_out, self.pe))]
                self._gout = const_rom(m, "g_out", rows, F["GA"].bits, ctx.block(2))
        z_t = [saturate(m, shift_round(acc, xfrac + qm.fit[t][l].wfrac - fz) + self._bias[lane], F["Z"])[0]
               for t in range(nt)]
        z = Signal(signed(F["Z"].bits), name=f"z{lane}")
        m.d.comb += z.eq(per_type(ctx.ctype(0), z_t))
        tanh = Tanh4(F["Z"])
        m.submodules[f"tanh4_{lane}"] = tanh
        m.d.comb += tanh.z.eq(z)
        # stage 3: y, phi'; activation (+ resnet input), seed delta
        y = shift_round(tanh.y, fz - fa)
        writes, sat = {}, Const(0)
        if l > 0:
            act, sat = saturate(m, ctx.elem("x", 3) + y, F["A"])
        else:
            act = y
        writes["x"] = act
        if l < d.n_layers - 1:
            writes["dphi"] = tanh.dphi
        else:
            seed, seed_sat = requant(m, tanh.dphi * self._gout[lane], fz + F["GA"].frac, F["DELTA"])
            writes["delta"] = seed
            sat = sat | seed_sat
        return writes, sat


class EnergyStage(MatVecStage):
    """Energy: E = rq(x . out_w_t) in E, as model.reference._fitting; 1 x simd multipliers, n/simd
    cycles per atom.  i: FwdLayer L-1's {atom, sat, x, delta}; o: {atom, sat, energy, delta}."""

    EPILOGUE = DATAFLOW_EPILOGUE["energy"]

    def __init__(self, design, *, simd):
        n = design.n_hidden
        lay = fitting_layouts(design)
        where = "EnergyStage"
        check_fold("simd", simd, n, where)
        super().__init__(design, n_in=n, n_out=1, pe=1, simd=simd, in_layout=lay[f"fwd{design.n_layers - 1}"],
                         out_layout=lay["energy"], operand="x", w_rows=design.cfg.ntypes * blocks(n, simd),
                         w_width=simd * design.F["W"].bits, carry=("delta",), where=where)

    def address(self, ctype, ob, ib):
        return ctype * blocks(self.n_in, self.simd) + ib

    def weight_index(self, p, s):
        return s

    def epilogue(self, m, lane, acc, ctx):
        d, F, qm = self.design, self.design.F, self.design.qm
        e_t = [requant(m, acc, F["A"].frac + qm.out_wfrac[t], F["E"]) for t in range(d.cfg.ntypes)]
        ct = ctx.ctype(0)
        return {"energy": per_type(ct, [e for e, _ in e_t])}, per_type(ct, [s for _, s in e_t])


class BwdLayer(MatVecStage):
    """Backward fitting layer l (model.reference._fitting, backward loop), weights W_l shared with
    FwdLayer l (the same tiles, read transposed: pe = the forward simd, simd = the forward pe):
      back = rq(delta W_t^T) in GA (layer 0: dE/dD in dD, the stage's output);
      l > 0:  g' = rq(g + back) in GA (g = g_out_t for the last layer: its saturation counts at
              start), delta' = rq(phi'_{l-1} g') in DELTA with phi'_{l-1} from FwdLayer l-1 (side_i).
    Epilogue latency 2 (l > 0) or 0.  i: {atom, sat, energy, delta (, g)};  o: the next layer's input,
    {atom, sat, energy, delta, g}, or {atom, sat, energy, dD} for l = 0.
    """

    def __init__(self, design, layer, *, fwd_pe, fwd_simd):
        n, L = design.n_hidden, design.n_layers
        self.layer = layer
        self.EPILOGUE = DATAFLOW_EPILOGUE["bwd" if layer > 0 else "bwd0"]
        lay = fitting_layouts(design)
        in_l = lay["energy"] if layer == L - 1 else lay[f"bwd{layer + 1}"]
        side = ("dphi", vec(design.fmt_shape("Z"), n)) if layer > 0 else None
        where = f"BwdLayer {layer}"
        check_fold("fwd_pe", fwd_pe, n, where), check_fold("fwd_simd", fwd_simd, n, where)
        self.fwd_pe, self.fwd_simd = fwd_pe, fwd_simd
        super().__init__(design, n_in=n, n_out=n, pe=fwd_simd, simd=fwd_pe, in_layout=in_l,
                         out_layout=lay[f"bwd{layer}"], operand="delta",
                         w_rows=design.cfg.ntypes * blocks(n, fwd_pe) * blocks(n, fwd_simd),
                         w_width=fwd_pe * fwd_simd * design.F["W"].bits, side_in=side, carry=("energy",), where=where)

    def address(self, ctype, ob, ib):
        # output block ob = the forward input block, input block ib = the forward output block
        nob_f, nib_f = blocks(self.n_in, self.fwd_pe), blocks(self.n_out, self.fwd_simd)
        return ctype * (nob_f * nib_f) + ib * nib_f + ob

    def weight_index(self, p, s):
        return s * self.fwd_simd + p  # forward lane (p_f, s_f) = (s, p)

    def start_sat(self, ctype):
        if self.layer != self.design.n_layers - 1:
            return Const(0)
        return per_type(ctype, [Const(int(bad)) for _, bad in g_out(self.design)])

    def epilogue(self, m, lane, acc, ctx):
        d, F, qm, l = self.design, self.design.F, self.design.qm, self.layer
        nt = d.cfg.ntypes
        fmt = F["GA"] if l > 0 else F["dD"]
        b_t = [requant(m, acc, F["DELTA"].frac + qm.fit[t][l].wfrac, fmt) for t in range(nt)]
        ct = ctx.ctype(0)
        back = per_type(ct, [b for b, _ in b_t])
        bsat = per_type(ct, [s for _, s in b_t])
        if l == 0:
            return {"dD": back}, bsat
        if lane == 0 and l == d.n_layers - 1:
            go = g_out(d)
            rows = [[_at(go[t][0], ob * self.pe + p) for p in range(self.pe)] for t in range(nt)
                    for ob in range(blocks(self.n_out, self.pe))]
            self._gout = const_rom(m, "g_out", rows, F["GA"].bits, ctx.block(0))
        back1 = ctx.reg(back, "back", signed(fmt.bits))
        sat1 = ctx.reg(bsat, "back_sat", 1)
        g_in = self._gout[lane] if l == d.n_layers - 1 else ctx.elem("g", 1)
        g_new_v, gsat = saturate(m, g_in + back1, F["GA"])
        g_new = ctx.reg(g_new_v, "g_new", signed(F["GA"].bits))
        sat2 = ctx.reg(sat1 | gsat, "g_sat", 1)
        delta, dsat = requant(m, ctx.elem("dphi", 2) * g_new, F["Z"].frac + F["GA"].frac, F["DELTA"])
        return {"delta": delta, "g": g_new}, sat2 | dsat


# ---------------------------------------------------------------------------------------------------
class DescriptorStage(wiring.Component):
    """D = rq(2^desc_shift GR^T GR[:, :M2]) (model.reference stage 6) as a stream stage.

    i: atom beat {atom, GR} (DescriptorAccumulator);  o: {atom, sat (D saturated), x = D};
    side_o: GR, to GradientStage (pushed when the atom is taken, so `i.ready` needs `side_o.ready`).
    Cycles per atom: (M1/desc_par) (4/desc_rows) + 1 (DescriptorProduct's steps, and one to hand over).
    """

    def __init__(self, design, *, desc_par, desc_rows=4):
        self.design = design
        self.desc_par = check_fold("desc_par", desc_par, design.cfg.m1, "DescriptorStage", divides=True)
        self.desc_rows = check_fold("desc_rows", desc_rows, 4, "DescriptorStage", divides=True)
        self.steps = len(descriptor_blocks(design.cfg.m1, desc_par, desc_rows)) + 1  # cycles per atom
        super().__init__({"i": In(stream.Signature(atom_gr_layout(design))),
                          "o": Out(stream.Signature(fitting_layouts(design)["descriptor"])),
                          "side_o": Out(stream.Signature(gr_layout(design)))})

    def elaborate(self, platform):
        m = Module()
        d = self.design
        m.submodules.dprod = dprod = DescriptorProduct(d, desc_par=self.desc_par, desc_rows=self.desc_rows)
        gr = Signal(gr_layout(d))
        atom = Signal(d.atom_layout())
        running = Signal()
        finishing = Signal()
        m.d.comb += [dprod.GR.eq(gr),
                     finishing.eq(running & dprod.done & (~self.o.valid | self.o.ready)),
                     self.i.ready.eq((~running | finishing) & self.side_o.ready),
                     self.side_o.valid.eq(self.i.valid & (~running | finishing)),
                     self.side_o.payload.eq(self.i.payload.GR)]
        take = self.i.valid & self.i.ready
        m.d.comb += dprod.start.eq(take)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(finishing):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.atom.eq(atom), self.o.payload.sat.eq(dprod.sat),
                         self.o.payload.x.eq(dprod.D), running.eq(0)]
        with m.If(take):
            m.d.sync += [gr.eq(self.i.payload.GR), atom.eq(self.i.payload.atom), running.eq(1)]
        return m


class GradientStage(wiring.Component):
    """dGR = rq(2^desc_shift (GR[:, :M2] dD^T + GR dD[:, :M2])) (model.reference stage 9), and the
    atom's final flags and energy, exactly as AtomEngine: an atom dropped upstream leaves with zero
    energy and dGR and only its drop flags; otherwise SATURATED if anything saturated.

    i: BwdLayer 0's {atom, sat, energy, dD};  side_i: the atom's GR (DescriptorStage), taken with it;
    o: atom_out_layout (PairBackward).  Cycles per atom: (M1/desc_par) (4/desc_rows) + 2.
    """

    def __init__(self, design, *, desc_par, desc_rows=4):
        self.design = design
        self.desc_par = check_fold("desc_par", desc_par, design.cfg.m1, "GradientStage", divides=True)
        self.desc_rows = check_fold("desc_rows", desc_rows, 4, "GradientStage", divides=True)
        self.steps = len(descriptor_blocks(design.cfg.m1, desc_par, desc_rows)) + 2  # cycles per atom
        super().__init__({"i": In(stream.Signature(fitting_layouts(design)["bwd0"])),
                          "side_i": In(stream.Signature(gr_layout(design))),
                          "o": Out(stream.Signature(atom_out_layout(design)))})

    def elaborate(self, platform):
        m = Module()
        d = self.design
        m.submodules.dgrad = dgrad = DescriptorGradient(d, desc_par=self.desc_par, desc_rows=self.desc_rows)
        lay = fitting_layouts(d)["bwd0"]
        held = Signal(lay)
        gr = Signal(gr_layout(d))
        running, finishing = Signal(), Signal()
        m.d.comb += [dgrad.GR.eq(gr), dgrad.dD.eq(held.dD),
                     finishing.eq(running & dgrad.done & (~self.o.valid | self.o.ready))]
        can = ~running | finishing
        m.d.comb += [self.i.ready.eq(can & self.side_i.valid), self.side_i.ready.eq(can & self.i.valid)]
        take = self.i.valid & self.i.ready
        m.d.comb += dgrad.start.eq(take)
        out = self.o.payload
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(finishing):
            atom = held.atom
            dropped = (atom.flags & DROP_FLAGS) != 0
            sat = held.sat | dgrad.sat
            flags = Mux(dropped, atom.flags & DROP_FLAGS, atom.flags | (sat * FLAG_SATURATED))
            m.d.sync += [out.atom.tag.eq(atom.tag), out.atom.ctype.eq(atom.ctype), out.atom.n.eq(atom.n),
                         out.atom.flags.eq(flags), out.energy.eq(Mux(dropped, 0, held.energy)),
                         self.o.valid.eq(1), running.eq(0)]
            for k in range(4):
                for c in range(d.cfg.m1):
                    m.d.sync += out.dGR[k][c].eq(Mux(dropped, 0, dgrad.dGR[k][c]))
        with m.If(take):
            m.d.sync += [held.eq(self.i.payload), gr.eq(self.side_i.payload), running.eq(1)]
        return m


# ---------------------------------------------------------------------------------------------------
class VectorFIFO(wiring.Component):
    """FIFO of whole vectors (one per atom) between two stages that are several atoms apart; block RAM.
    i/o: streams of `layout`; depth: atoms (the most that can be between producer and consumer)."""

    def __init__(self, layout, depth):
        self.layout, self.depth = layout, depth
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    #: widest FIFO memory: a wider vector is split over several FIFOs that move together (Amaranth's
    #: simulator cannot compile one memory row of thousands of bits: RecursionError)
    CHUNK = 1024

    def elaborate(self, platform):
        m = Module()
        width = data.Layout.cast(self.layout).size
        iv, ov = self.i.payload.as_value(), self.o.payload.as_value()
        fifos = []
        for k, lo in enumerate(range(0, width, self.CHUNK)):
            hi = min(width, lo + self.CHUNK)
            fifo = SyncFIFOBuffered(width=hi - lo, depth=self.depth)
            m.submodules[f"fifo{k}"] = fifo
            m.d.comb += [fifo.w_data.eq(iv[lo:hi]), fifo.w_en.eq(self.i.valid), ov[lo:hi].eq(fifo.r_data),
                         fifo.r_en.eq(self.o.ready)]
            fifos.append(fifo)
        # identical FIFOs written and read in the same cycles: their levels are always equal
        m.d.comb += [self.i.ready.eq(fifos[0].w_rdy), self.o.valid.eq(fifos[0].r_rdy)]
        return m


#: The weight memories are block RAM: rows pe x simd x 18 bits wide and only ntypes x steps deep are
#: what Yosys' memory_libmap (synth_xilinx, its ROM logic cost) otherwise maps to flip-flops and LUTs
#: ("using FF mapping"), several Mbit of ROM as logic; measured on a 360 x 140 two-port ROM, the
#: attribute gives $__XILINX_BLOCKRAM_TDP_ (both ports read, as FwdLayer and BwdLayer l do).
WEIGHT_MEMORY_ATTRS = {"rom_style": "block"}

#: atoms a MatVec stage can hold (two input slots, two output slots)
STAGE_ATOMS = 4


class FittingPipeline(wiring.Component):
    """The per-atom part of the pipeline as a chain of stages (module docstring): same interface as
    AtomEngines, i: atom beats {atom, GR} in, o: atom_out_layout beats out, atoms in order.

    Folding comes from the design's knobs: forward layer l has pe[l] x simd[l] multipliers (its
    backward stage the same, transposed), the energy stage energy_simd, the descriptor stages desc_par
    columns.  Cycles per atom: gen.cycles.dataflow_stage_cycles (the slowest stage)."""

    def __init__(self, design):
        self.design = design
        super().__init__({"i": In(stream.Signature(atom_gr_layout(design))),
                          "o": Out(stream.Signature(atom_out_layout(design)))})

    def stages(self):
        """The chain, in order (not yet elaborated): [(name, component)]."""
        d, k = self.design, self.design.knobs
        L = d.n_layers
        chain = [("descriptor", DescriptorStage(d, desc_par=k.desc_par, desc_rows=k.desc_rows))]
        chain += [(f"fwd{l}", FwdLayer(d, l, pe=k.pe[l], simd=k.simd[l])) for l in range(L)]
        chain += [("energy", EnergyStage(d, simd=k.energy_simd))]
        chain += [(f"bwd{l}", BwdLayer(d, l, fwd_pe=k.pe[l], fwd_simd=k.simd[l])) for l in range(L - 1, -1, -1)]
        chain += [("gradient", GradientStage(d, desc_par=k.desc_par, desc_rows=k.desc_rows))]
        return chain

    def elaborate(self, platform):
        m = Module()
        d, k = self.design, self.design.knobs
        L = d.n_layers
        chain = self.stages()
        st = dict(chain)
        for name, c in chain:
            m.submodules[name] = c
        wiring.connect(m, wiring.flipped(self.i), chain[0][1].i)
        for (_, a), (_, b) in zip(chain, chain[1:]):
            wiring.connect(m, a.o, b.i)
        wiring.connect(m, chain[-1][1].o, wiring.flipped(self.o))
        # weights: one memory per layer, read by its forward and its backward stage
        for l in range(L):
            fwd, bwd = st[f"fwd{l}"], st[f"bwd{l}"]
            rows = layer_tiles(d, l, k.pe[l], k.simd[l])
            mem = Memory(shape=fwd.w_width, depth=len(rows), init=rows, attrs=WEIGHT_MEMORY_ATTRS)
            m.submodules[f"weights{l}"] = mem
            for stage in (fwd, bwd):
                rp = mem.read_port()
                m.d.comb += [rp.addr.eq(stage.w_addr), rp.en.eq(1), stage.w_data.eq(rp.data)]
        rows = energy_tiles(d, k.energy_simd)
        mem = Memory(shape=st["energy"].w_width, depth=len(rows), init=rows, attrs=WEIGHT_MEMORY_ATTRS)
        m.submodules.energy_weights = mem
        rp = mem.read_port()
        m.d.comb += [rp.addr.eq(st["energy"].w_addr), rp.en.eq(1), st["energy"].w_data.eq(rp.data)]
        # side streams: GR from the descriptor stage to the gradient stage, phi'_l from fwd l to bwd l+1
        names = [n for n, _ in chain]
        between = lambda a, b: names.index(b) - names.index(a) + 1  # noqa: E731
        gr_fifo = VectorFIFO(gr_layout(d), STAGE_ATOMS * between("descriptor", "gradient"))
        m.submodules.gr_fifo = gr_fifo
        wiring.connect(m, st["descriptor"].side_o, gr_fifo.i)
        wiring.connect(m, gr_fifo.o, st["gradient"].side_i)
        for l in range(L - 1):
            f = VectorFIFO(vec(d.fmt_shape("Z"), d.n_hidden), STAGE_ATOMS * between(f"fwd{l}", f"bwd{l + 1}"))
            m.submodules[f"dphi_fifo{l}"] = f
            wiring.connect(m, st[f"fwd{l}"].side_o, f.i)
            wiring.connect(m, f.o, st[f"bwd{l + 1}"].side_i)
        return m
