"""The bit-exact fixed-point reference: the integers the hardware must produce, and nothing else.

Input, per centre atom (exactly what the pipeline receives): its type and its neighbour records
(type, dx, dy, dz) with r_ij = (dx, dy, dz) = x_j - x_i in the `coord` format.  Output, per atom:
the atomic energy word (format `E`, *without* the per-type energy bias, which the host adds), one
dE/dr_ij word triple per record (format `F`), and status flags.

The stages below are the hardware's stages, in order; each docstring says which integer operation
it performs.  Arithmetic rules (rounding half up, saturation with a flag, exact products) are in
`fixedpoint`.  Everything is vectorized over atoms and records (no Python loop per atom or pair);
atoms are processed in chunks so that memory stays bounded for any system size.

Accumulations are exact integer sums, so results do not depend on the order of the records; records
may come in any order and with any mix of types, as long as no type has more records than `sel`.

The model options (contract.config.OPTIONS) of imported DeePMD-kit models change three steps:
env_norm: the u-tables have one channel per centre type (the normalised s and h of that centre type,
so R is DeePMD's normalised row and G's input the normalised s); pad_slots: GR's sum also holds each
atom's sel[t] - n_t empty slots, each exactly the product a record at r = rcut would give
(`padding_products`); fit_activation "tanh": the fitting activation is a table (`activation`);
desc_band: D[a, k] = T[a, (a + k) mod M1] (stages 6 and 9).  embed_table changes nothing here: the G
tables are made from the float model's tables as from nets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.fixedpoint import Fmt, imatmul, requant, saturate, shift_round
from contract.flags import FLAG_BAD_TYPE, FLAG_NEIGHBOR_OVERFLOW, FLAG_R_BELOW_MIN, FLAG_SATURATED
from contract.modelfile import QuantizedModel, Table


@dataclass
class NeighborRecords:
    """The pipeline's input: per atom its type and up to M records (type -1 marks an empty slot)."""

    center_type: np.ndarray  # (N,) int64
    nbr_type: np.ndarray  # (N, M) int64, -1 = empty slot
    nbr_d: np.ndarray  # (N, M, 3) int64, coord format

    def __len__(self) -> int:
        return len(self.center_type)

    def take(self, sl) -> "NeighborRecords":
        return NeighborRecords(self.center_type[sl], self.nbr_type[sl], self.nbr_d[sl])


@dataclass
class ReferenceResult:
    energy: np.ndarray  # (N,) int64, format E, excluding the per-type bias
    dEdr: np.ndarray  # (N, M, 3) int64, format F, zero in empty slots
    flags: np.ndarray  # (N,) int64 bit mask


# ---- stage helpers ---------------------------------------------------------------------------------

class _Saturation:
    """Collects per-atom saturation from every requantization of a chunk."""

    def __init__(self, n: int):
        self.any = np.zeros(n, dtype=bool)

    def add(self, mask: np.ndarray):
        m = np.asarray(mask)
        self.any |= m.reshape(len(self.any), -1).any(axis=1) if m.ndim > 1 else m
        return self

    def rq(self, v, from_frac: int, fmt: Fmt):
        out, bad = requant(v, from_frac, fmt)
        self.add(bad)
        return out


def table_lookup(tab: Table, x: np.ndarray):
    """Piecewise-quadratic table: returns (y, dy/dx, below_min, past_end, saturated).

    idx = (x >> index_shift) - first_seg; xi = next xi_bits bits;  t = c xi, v = b + t, y = a + v xi (each product
    rounded back to the coefficient format); dy/dx = (b + 2t) * 2**seg_shift.

    Below x_min the table is constant: y = y(x_min) and dy/dx = 0, so that a force computed through it
    is the exact gradient of the energy computed through it (a clamped value with the slope at x_min
    would push atoms as if the energy kept changing).  Past the last segment y = dy/dx = 0.
    """
    below = x < tab.x_min
    x = np.maximum(x, tab.x_min)
    idx = (x >> tab.index_shift) - tab.first_seg
    xi = (x >> (tab.index_shift - tab.xi_bits)) & ((1 << tab.xi_bits) - 1)
    past = idx >= tab.nseg
    coef = tab.coef[np.minimum(idx, tab.nseg - 1)]  # (..., nch, 3)
    a, b, c = coef[..., 0], coef[..., 1], coef[..., 2]
    xi = xi[..., None]
    t = shift_round(c * xi, tab.xi_bits)
    y_c = a + shift_round((b + t) * xi, tab.xi_bits)
    y, sat_y = requant(y_c, tab.coef_fmt.frac, tab.out_fmt)
    dy, sat_d = requant(b + 2 * t, tab.coef_fmt.frac - tab.seg_shift, tab.dout_fmt)
    keep = ~past[..., None]
    slope = keep & ~below[..., None]
    return y * keep, dy * slope, below, past, (sat_y & keep) | (sat_d & slope)


def tanh4(z: np.ndarray, f: int):
    """Integer tanh4 and its derivative, both with f fraction bits (|z| >= 2 gives +-1 and 0).

    phi(z)  = sign(z) (za + xx (xx/16 - za/4)),  za = min(|z|, 2), xx = za^2
    phi'(z) = 1 + xx (za/4 - 3/4)  for |z| < 2, else 0
    """
    one, two = 1 << f, 2 << f
    za = np.minimum(np.abs(z), two)
    xx = shift_round(za * za, f)
    q = shift_round(xx * (shift_round(xx, 4) - shift_round(za, 2)), f)
    ya = za + q
    y = np.where(z < 0, -ya, ya)
    dq = shift_round(xx * (shift_round(za, 2) - 3 * (1 << (f - 2))), f)
    dphi = np.where(np.abs(z) >= two, 0, one + dq)
    return y, dphi


def activation(qm: QuantizedModel, z: np.ndarray, f: int):
    """The fitting activation of z (f fraction bits) and its derivative, both with f fraction bits:
    tanh4, or for fit_activation "tanh" the odd table: sign(z) T(|z|), T'(|z|) (T = qm.table_act)."""
    if qm.table_act is None:
        return tanh4(z, f)
    y, dy, _, _, _ = table_lookup(qm.table_act, np.abs(z))
    y, dy = y[..., 0], dy[..., 0]
    # the table's formats are the Z format (checked on load); the requantization is the identity here
    return np.where(z < 0, -y, y), dy


def by_centre(v: np.ndarray, ct: np.ndarray) -> np.ndarray:
    """Channel ct[i] of v[i, ...] (a u-table lookup of atom i's records, (n, m, nch)) -> (n, m)."""
    if v.shape[-1] == 1:
        return v[..., 0]
    return np.take_along_axis(v, ct[:, None, None], axis=-1)[..., 0]


def padding_products(qm: QuantizedModel) -> np.ndarray:
    """pad_slots: R_pad^T G_pad of one empty slot, (centre type, neighbour type, 4, M1), frac R + G.

    An empty slot is what a record at the u-tables' last segment gives (their constant continuation
    past rcut, where DeePMD's environment row is its normalised zero row): so a neighbour leaving rcut
    becomes exactly a padding slot, as in DeePMD."""
    cfg, F = qm.config, qm.formats
    u_end = np.array([(qm.table_s.nseg - 1) << qm.table_s.index_shift])
    s, _, _, _, _ = table_lookup(qm.table_s, u_end)  # (1, ntypes): one channel per centre type
    h, _, _, _, _ = table_lookup(qm.table_h, u_end)
    if np.any(h):
        raise ValueError("pad_slots: the h table's last segment is not zero (a padding row has no direction)")
    out = np.zeros((cfg.ntypes, cfg.ntypes, 4, cfg.m1), dtype=np.int64)
    for ti in range(cfg.ntypes):
        R0, _ = requant(s[:, ti], F["s"].frac, F["R"])
        for tj, tab in enumerate(qm.table_g):
            g, _, _, _, _ = table_lookup(tab, s[:, ti])
            out[ti, tj, 0] = R0[0] * g[0]
    return out


# ---- the pipeline ------------------------------------------------------------------------------------

def evaluate(qm: QuantizedModel, rec: NeighborRecords, chunk: int = 1024, trace: dict | None = None) -> ReferenceResult:
    """Run the reference over all atoms, `chunk` atoms at a time.

    `trace`, if given, receives the per-atom intermediates (GR, D, dD, dGR, the centre type the
    fitting net used, the saturation of D and of dGR, and per fitting stage its values and saturation:
    `_fitting`'s fit_* keys) concatenated over chunks: the unit tests of the hardware stages compare
    against them.
    """
    n, m = rec.nbr_type.shape
    energy = np.zeros(n, dtype=np.int64)
    dEdr = np.zeros((n, m, 3), dtype=np.int64)
    flags = np.zeros(n, dtype=np.int64)
    for lo in range(0, n, chunk):
        sl = slice(lo, min(n, lo + chunk))
        part = {} if trace is not None else None
        r = _evaluate_chunk(qm, rec.take(sl), part)
        if trace is not None:
            for k, v in part.items():
                trace.setdefault(k, []).append(v)
        energy[sl], dEdr[sl], flags[sl] = r.energy, r.dEdr, r.flags
    if trace is not None:
        for k in list(trace):
            trace[k] = np.concatenate(trace[k])
    return ReferenceResult(energy, dEdr, flags)


def _evaluate_chunk(qm: QuantizedModel, rec: NeighborRecords, trace: dict | None = None) -> ReferenceResult:
    cfg, F = qm.config, qm.formats
    ct, nt, d = rec.center_type.astype(np.int64), rec.nbr_type.astype(np.int64), rec.nbr_d.astype(np.int64)
    n, m = nt.shape
    sat = _Saturation(n)

    # -- stream checks: types and neighbour counts ---------------------------------------------------
    bad_type = (ct < 0) | (ct >= cfg.ntypes) | ((nt < -1) | (nt >= cfg.ntypes)).any(axis=1)
    counts = np.stack([(nt == t).sum(axis=1) for t in range(cfg.ntypes)], axis=1)
    overflow = (counts > np.asarray(cfg.sel)[None, :]).any(axis=1)
    dropped = bad_type | overflow
    valid = (nt >= 0) & ~dropped[:, None]  # (n, m) records that take part
    ct = np.where(dropped, 0, ct)
    d = d * valid[..., None]

    # -- stage 1: r^2, exact --------------------------------------------------------------------------
    u = (d * d).sum(axis=-1)  # frac 2 * coord.frac

    # -- stage 2: u -> s, h and their derivatives (tables) ----------------------------------------
    s, ds, below, _, sat_s = table_lookup(qm.table_s, u)
    h, dh, _, _, sat_h = table_lookup(qm.table_h, u)
    s, ds, h, dh, sat_s, sat_h = (by_centre(v, ct) for v in (s, ds, h, dh, sat_s, sat_h))
    s, ds, h, dh = s * valid, ds * valid, h * valid, dh * valid
    sat.add((sat_s | sat_h) & valid)
    r_small = (below & valid).any(axis=1)

    # -- stage 3: environment rows R = (s, h dx, h dy, h dz) --------------------------------------------
    R = np.empty((n, m, 4), dtype=np.int64)
    R[..., 0] = sat.rq(s, F["s"].frac, F["R"])
    R[..., 1:] = sat.rq(h[..., None] * d, F["h"].frac + F["coord"].frac, F["R"])

    # -- stage 4: s -> G(s), G'(s) per neighbour type (tables) ---------------------------------------
    G = np.zeros((n, m, cfg.m1), dtype=np.int64)
    dG = np.zeros_like(G)
    for t, tab in enumerate(qm.table_g):
        sel_t = valid & (nt == t)
        if sel_t.any():
            g, dg, _, past, st = table_lookup(tab, s[sel_t])
            G[sel_t], dG[sel_t] = g, dg
            sat_rec = np.zeros((n, m), dtype=bool)
            sat_rec[sel_t] = st.any(axis=-1) | past
            sat.add(sat_rec)

    # -- stage 5: GR = 2**-norm_shift sum_j R_j^T G_j ---------------------------------------------
    acc = imatmul(R.transpose(0, 2, 1), G)  # (n, 4, M1)
    if cfg.pad_slots:
        npad = np.asarray(cfg.sel)[None, :] - counts  # >= 0 for every atom not dropped
        acc += np.einsum("nt,ntkc->nkc", np.where(dropped[:, None], 0, npad), padding_products(qm)[ct])
    GR = sat.rq(acc, F["R"].frac + F["G"].frac + cfg.norm_shift, F["GR"])

    # -- stage 6: D = 2**desc_shift GR^T GR[:, :M2] -------------------------------------------------
    m2 = cfg.axis_neurons
    if cfg.desc_band:  # D[a, k] = sum_r GR[r, a] GR[r, (a + k) mod M1]
        cols = np.asarray(cfg.descriptor_columns())
        accD = (GR[:, :, :, None] * GR[:, :, cols]).sum(axis=1)  # (n, M1, M2), exact int64
    else:
        accD = imatmul(GR.transpose(0, 2, 1), GR[:, :, :m2])  # (n, M1, M2)
    d_sat = _Saturation(n)
    D = d_sat.rq(accD, 2 * F["GR"].frac - cfg.desc_shift, F["D"]).reshape(n, -1)
    sat.add(d_sat.any)

    # -- stages 7-8: fitting net forward and backward, per centre type ---------------------------
    energy = np.zeros(n, dtype=np.int64)
    dD = np.zeros_like(D)
    fit_trace = {} if trace is not None else None
    for t in range(cfg.ntypes):
        at = np.flatnonzero(ct == t)
        if len(at):
            energy[at], dD[at] = _fitting(qm, t, D[at], sat, at, fit_trace)

    # -- stage 9: dE/dGR --------------------------------------------------------------------------------
    dDm = dD.reshape(n, cfg.m1, m2)
    if cfg.desc_band:
        # sum_k GR[r, (c + k) mod M1] dD[c, k]  +  sum_k GR[r, a] dD[a, k] over a = (c - k) mod M1
        cols = np.asarray(cfg.descriptor_columns())
        acc = (GR[:, :, cols] * dDm[:, None]).sum(axis=-1)
        for k in range(m2):
            acc += np.roll(GR * dDm[:, None, :, k], k, axis=2)
    else:
        acc = imatmul(GR[:, :, :m2], dDm.transpose(0, 2, 1))  # (n, 4, M1): sum_b GR[k,b] dD[c,b]
        acc[:, :, :m2] += imatmul(GR, dDm)  # (n, 4, M2): sum_a GR[k,a] dD[a,c]
    dgr_sat = _Saturation(n)
    dGR = dgr_sat.rq(acc, F["GR"].frac + F["dD"].frac - cfg.desc_shift, F["dGR"])
    sat.add(dgr_sat.any)

    # -- stage 10: per-record backward pass -> dE/dr_ij ------------------------------------------
    ns = cfg.norm_shift
    dR = sat.rq(imatmul(G, dGR.transpose(0, 2, 1)), F["G"].frac + F["dGR"].frac + ns, F["dR"])  # (n, m, 4)
    dGj = sat.rq(imatmul(R, dGR), F["R"].frac + F["dGR"].frac + ns, F["dGj"])  # (n, m, M1)
    dS_g = shift_round((dGj * dG).sum(axis=-1), F["dGj"].frac + F["dG"].frac - F["dS"].frac)
    dS = sat.rq(shift_round(dR[..., 0], F["dR"].frac - F["dS"].frac) + dS_g, F["dS"].frac, F["dS"])
    dH = sat.rq((dR[..., 1:] * d).sum(axis=-1), F["dR"].frac + F["coord"].frac, F["dH"])
    dU = sat.rq(shift_round(dS * ds, F["dS"].frac + F["ds"].frac - F["dU"].frac)
                + shift_round(dH * dh, F["dH"].frac + F["dh"].frac - F["dU"].frac), F["dU"].frac, F["dU"])
    ff = F["F"].frac
    force = (shift_round(dR[..., 1:] * h[..., None], F["dR"].frac + F["h"].frac - ff)
             # d(r^2)/dx = 2 dx: the factor 2 is one less bit of shift
             + shift_round(dU[..., None] * d, F["dU"].frac + F["coord"].frac - 1 - ff))
    dEdr = sat.rq(force, ff, F["F"]) * valid[..., None]

    flags = (np.where(overflow, FLAG_NEIGHBOR_OVERFLOW, 0) | np.where(bad_type, FLAG_BAD_TYPE, 0)
             | np.where(sat.any & ~dropped, FLAG_SATURATED, 0) | np.where(r_small, FLAG_R_BELOW_MIN, 0))
    energy = np.where(dropped, 0, energy)
    if trace is not None:
        trace.update(GR=GR, D=D, dD=dD, dGR=dGR, ctype=ct, D_sat=d_sat.any, dGR_sat=dgr_sat.any)
        for key, parts in fit_trace.items():  # per fitting stage, scattered back to the chunk's atoms
            full = np.zeros((n,) + parts[0][1].shape[1:], dtype=parts[0][1].dtype)
            for rows, v in parts:
                full[rows] = v
            trace[key] = full
    return ReferenceResult(energy=energy, dEdr=dEdr, flags=flags.astype(np.int64))


def _fitting(qm: QuantizedModel, t: int, x: np.ndarray, sat: _Saturation, rows: np.ndarray,
             trace: dict | None = None):
    """Forward (energy) and backward (dE/dD) through centre type t's fitting net.

    `trace`, if given, receives (rows, value) pairs per intermediate, named after the hardware stage
    that computes it (gen/stages/dataflow.py): fit_x{l}, fit_dphi{l} (forward layer l), fit_energy,
    fit_delta{l} (the delta backward layer l multiplies), fit_g{l} (g after backward layer l > 0),
    and each stage's saturation, fit_sat_fwd{l}, fit_sat_energy, fit_sat_bwd{l}.  The arithmetic is
    the same with or without it."""
    F = qm.formats
    fz, fa = F["Z"].frac, F["A"].frac
    L = len(qm.fit[t])
    stage = {}  # saturation per hardware stage

    def rq(key, v, from_frac, fmt):
        return stage.setdefault(key, _Saturation(len(x))).rq(v, from_frac, fmt)

    def note(key, v):
        if trace is not None:
            trace.setdefault(key, []).append((rows, np.asarray(v)))

    xfrac = F["D"].frac
    cache = []
    for k, layer in enumerate(qm.fit[t]):
        acc = imatmul(x, layer.W)
        # Saturating z is exact for tanh4 (flat beyond +-2, far inside the Z range); tanh at the Z
        # bound (|z| = 8) is within 2.3e-7 of +-1, so the saturation moves it by less than 2 LSB.
        z, _ = saturate(shift_round(acc, xfrac + layer.wfrac - fz) + layer.b, F["Z"])
        y, dphi = activation(qm, z, fz)
        y = shift_round(y, fz - fa)
        stage.setdefault(f"fwd{k}", _Saturation(len(x)))
        x = rq(f"fwd{k}", x + y, fa, F["A"]) if layer.resnet else y
        cache.append(dphi)
        note(f"fit_x{k}", x), note(f"fit_dphi{k}", dphi)
        xfrac = fa
    energy = rq("energy", imatmul(x, qm.out_w[t][:, None])[:, 0], fa + qm.out_wfrac[t], F["E"])
    note("fit_energy", energy)

    g = rq(f"bwd{L - 1}", np.broadcast_to(qm.out_w[t], x.shape), qm.out_wfrac[t], F["GA"])
    for k in range(L - 1, -1, -1):
        layer = qm.fit[t][k]
        # the seed delta is made by the last forward stage, every other delta by the backward stage above
        delta = rq(f"fwd{k}" if k == L - 1 else f"bwd{k + 1}", cache[k] * g, fz + F["GA"].frac, F["DELTA"])
        note(f"fit_delta{k}", delta)
        back = imatmul(delta, layer.W.T)  # frac DELTA + wfrac
        if k == 0:
            dD = rq("bwd0", back, F["DELTA"].frac + layer.wfrac, F["dD"])
        else:
            back = rq(f"bwd{k}", back, F["DELTA"].frac + layer.wfrac, F["GA"])
            g = rq(f"bwd{k}", g + back, F["GA"].frac, F["GA"]) if layer.resnet else back
            note(f"fit_g{k}", g)
    local = np.zeros(len(x), dtype=bool)
    for key, s in stage.items():
        local |= s.any
        note(f"fit_sat_{key}", s.any)
    sat.any[rows] |= local
    return energy, dD


# ---- the pipeline's view: wire words in, wire words out ---------------------------------------------

def process_beats(qm: QuantizedModel, beats: np.ndarray, n_atoms: int, lanes: int) -> np.ndarray:
    """What the pipeline answers to a chunk of input beats (contract/wire.py), computed by the reference:
    the `reference` device, and the expected output of the hardware's self-check.  An atom with more
    records than the pipeline can buffer (count > sum(sel)) is dropped before the pipeline: no records
    come back, flag NEIGHBOR_OVERFLOW."""
    from contract import wire
    ctype, nbr_type, nbr_d, tags = wire.decode_atoms(np.asarray(beats, dtype=np.uint64))
    if len(ctype) != n_atoms:
        raise ValueError(f"chunk announces {n_atoms} atoms, stream has {len(ctype)}")
    count = (nbr_type >= 0).sum(axis=1)
    over = count > sum(qm.config.sel)
    res = evaluate(qm, NeighborRecords(ctype, np.where(over[:, None], -1, nbr_type), nbr_d))
    flags = np.where(over, FLAG_NEIGHBOR_OVERFLOW, res.flags)
    return wire.encode_results(np.where(over, 0, res.energy), res.dEdr, flags, np.where(over, 0, count), tags, lanes)
