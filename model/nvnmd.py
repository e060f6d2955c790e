"""NVNMD v0 hardware model files in: decode the wrapped binary (`nvnmd_qnn/model.pb` of `dp train-nvnmd`,
the MDPU-era files with a 32-word head), evaluate the decoded model in float64, and build our float model
of it (`import_nvnmd`; `python -m model import --format nvnmd-v0`).

The file is no TensorFlow graph but fixed-size sections of little-endian rows (../shared/notes/nvnmd.md §4):

    head  32 words: 7 section heights, 7 section widths (hex digits), rcut * 2**23, then zeros
    cfg   72-bit rows: SHIFT_IDX_S2G (9 b), SEL[4] (8 b each), GS[4][4][M1] (32 b, Q.23), -log2 NIX (8 b)
    fps   72-bit rows: per stream (centre type, lane) the fitting layers, column-normalised weights
    bps   the same with row-normalised weights (backprop)
    swt   u -> (s~, h~) cubic tables, (a, b) then (c, d) per (centre type, segment), FLT29
    dsw   their derivative tables (backprop only)
    fea   s~ -> G cubic tables per neighbour type, (a, b) then (c, d) of 4 channels a row, FLT29
    gra   their derivative tables (backprop only)

A bit stream is packed LSB first (the first field in the lowest bits).  What the decoder recovers, and
what our float model makes of it (`model_config`, `import_nvnmd`):

* the u-tables are DeePMD's normalised s~ = (s - avg) / std and h~ = (s / r) / r_std per centre type:
  avg, std and r_std are fitted to the tables' knots (and rcut_smth, which the file does not record,
  with them); the residual is recorded, and a table that is not of that form is refused;
* the G tables become a table embedding (the `embed_table` option), evaluated as the file's cubic
  segments;
* GR / NIX, the padding slots (GS), the banded descriptor D[i, (i + k) mod M1] (the `desc_band`
  option), tanh4 and the resnet on fitting layers 1-2 are our options and fields;
* weights are W_int * 2**(expo - 16) from the column-normalised copy; the row-normalised copy must agree
  to within its rounding (checked); biases are Q.23.  The final-layer bias is zero in these files and
  there is no energy shift: energies are defined up to a constant per type.

Anything else is refused with `UnsupportedModel` naming the section and field.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .deepmd import UnsupportedModel
from .network import TableEmbedding, tanh4

# ---- the v0 layout (notes §2.1, §4): fixed by ntype_max, NSTDM and the table sizes --------------------

SECTIONS = ("cfg", "fps", "bps", "swt", "dsw", "fea", "gra")
NTYPE_MAX = 4
M1, M2 = 32, 4
NSTDM = 64  # fitting-net lanes; each computes 2 of the 128 neurons
FIT_NODES = (128, 128, 128, 128, 1)  # D, three hidden layers, energy
HEAD_WORDS = 32
U_ROWS = 512  # u -> s, h segments per centre type
U_DX = 0.125  # Å^2 (cfg_u2s = [0, 64, 0.125, 0, 512])
G_ROWS = 512  # rows 0-255 the fine range, 256-511 the coarse range
G_FINE_DX, G_FINE_N = 1.0 / 256, 256
G_COARSE_DX = 1.0 / 16
#: widths in hex digits, and the heights the MDPU-era wrap writes (cfg: at least 128 rows)
WIDTHS = {"cfg": 18, "fps": 18, "bps": 18, "swt": 29, "dsw": 29, "fea": 58, "gra": 58}
HEIGHTS = {"fps": NSTDM * NTYPE_MAX * 196, "bps": NSTDM * NTYPE_MAX * 196, "swt": 2 * NTYPE_MAX * U_ROWS,
           "dsw": 2 * NTYPE_MAX * U_ROWS, "fea": 2 * NTYPE_MAX * G_ROWS * M1 // 4,
           "gra": 2 * NTYPE_MAX * G_ROWS * M1 // 4}
NBIT_IDX_S2G, NBIT_NEIB, NBIT_FIXD, NBIT_FLTE = 9, 8, 32, 8
NBIT_W, NBIT_DISP, NBIT_B = 18, 3, 29
W_FRAC, B_FRAC, GS_FRAC, RCUT_FRAC = 16, 23, 23, 23
FLT_BITS, FLT_FRAC, FLT_BIAS = 29, 20, 128


def _fail(path, section: str, why: str):
    raise UnsupportedModel(f"{path}: NVNMD v0 {section}: {why}")


@dataclass
class NvnmdV0:
    """The decoded file: everything as float64 (tables: (a, b, c, d) per segment, y = ((a x + b) x + c) x + d
    with x the offset into the segment in input units) plus the raw integers the checks use."""

    path: Path
    sha256: str
    rcut: float
    ntypes: int
    sel: list[int]
    nix_shift: int  # GR / NIX with NIX = 2**nix_shift
    s0: float  # left edge of both G ranges
    gs: np.ndarray  # (ntypes, ntypes, M1): the padding constant s~(0) G(s~(0)) per (centre, neighbour) type
    s_coef: np.ndarray  # (ntypes, U_ROWS, 4) per centre type
    h_coef: np.ndarray  # (ntypes, U_ROWS, 4)
    g_coef: np.ndarray  # (ntypes, G_ROWS, M1, 4) per neighbour type
    fit_w: list = field(default_factory=list)  # [type][layer] (n_in, n_out) float64
    fit_b: list = field(default_factory=list)  # [type][layer] (n_out,)
    fit_expo: list = field(default_factory=list)  # [type][layer] per-column exponents (ints)
    checks: dict = field(default_factory=dict)  # what was verified, with numbers

    @property
    def nix(self) -> int:
        return 1 << self.nix_shift


# ---- bits ------------------------------------------------------------------------------------------

def _rows(raw: bytes, start: int, height: int, width_hex: int) -> np.ndarray:
    """A section's rows as bits (height, row bits), bit k = 2**k of the row's little-endian integer."""
    nbytes = math.ceil(width_hex * 4 / 32) * 4
    a = np.frombuffer(raw, dtype=np.uint8, count=height * nbytes, offset=start).reshape(height, nbytes)
    return np.unpackbits(a, axis=1, bitorder="little")


def _uint(bits: np.ndarray) -> np.ndarray:
    """Unsigned integers of bit fields (..., n), LSB first."""
    n = bits.shape[-1]
    return (bits.astype(np.int64) << np.arange(n, dtype=np.int64)).sum(axis=-1)


def _sint(bits: np.ndarray) -> np.ndarray:
    n = bits.shape[-1]
    v = _uint(bits)
    return np.where(v >= 1 << (n - 1), v - (1 << n), v)


def _fields(bits: np.ndarray, width: int) -> np.ndarray:
    """Consecutive fields of `width` bits: (..., nbits) -> (..., nbits // width, width)."""
    return bits[..., : bits.shape[-1] // width * width].reshape(bits.shape[:-1] + (-1, width))


def flt29(v: np.ndarray) -> np.ndarray:
    """FLT29 words (sign | exponent + 128 (8 b) | 20 fraction bits, hidden 1; all zeros is 0) -> float64."""
    v = np.asarray(v, dtype=np.int64)
    frac = v & ((1 << FLT_FRAC) - 1)
    expo = (v >> FLT_FRAC) & 0xFF
    sign = np.where((v >> (FLT_BITS - 1)) & 1, -1.0, 1.0)
    val = sign * (1.0 + frac * 2.0 ** -FLT_FRAC) * np.exp2(expo.astype(np.float64) - FLT_BIAS)
    return np.where(v == 0, 0.0, val)


# ---- decoding --------------------------------------------------------------------------------------

def read_nvnmd(path: str | Path) -> NvnmdV0:
    """Decode an MDPU-era NVNMD v0 model file, checking its structure; UnsupportedModel names the section and
    field of anything else."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < HEAD_WORDS * 4:
        _fail(path, "head", f"file of {len(raw)} B is shorter than the {HEAD_WORDS}-word head")
    head = np.frombuffer(raw, dtype="<u4", count=HEAD_WORDS).astype(np.int64)
    if head[1] == 128 and (head[0] & 0xFF) in (0, 1):
        _fail(path, "head", f"a 128-word head (version word {head[0]:#x}: a deepmd-kit >= 2.2 wrap with an energy "
                            "shift); only the MDPU-era 32-word head is supported")
    heights = dict(zip(SECTIONS, head[0:7].tolist()))
    widths = dict(zip(SECTIONS, head[7:14].tolist()))
    for k in SECTIONS:
        if widths[k] != WIDTHS[k]:
            _fail(path, f"head width of {k}", f"{widths[k]} hex digits, the v0 layout has {WIDTHS[k]}")
        want = HEIGHTS.get(k)
        if (want is not None and heights[k] != want) or (k == "cfg" and heights[k] < 128):
            _fail(path, f"head height of {k}", f"{heights[k]} rows, the v0 layout has "
                                              f"{want if want is not None else 'at least 128'}")
    if np.any(head[15:] != 0):
        _fail(path, "head", f"words 15-31 must be zero (MDPU-era head), word {15 + int(np.flatnonzero(head[15:])[0])} "
                            "is not")
    rcut = int(head[14]) * 2.0 ** -RCUT_FRAC
    if not 0 < rcut <= 8.0:
        _fail(path, "head rcut", f"{rcut} Å outside (0, 8] (rc_max)")
    size = HEAD_WORDS * 4 + sum(heights[k] * math.ceil(widths[k] * 4 / 32) * 4 for k in SECTIONS)
    if len(raw) != size:
        _fail(path, "file size", f"{len(raw)} B, the head's sections need {size} B (truncated or padded file)")
    offs, pos = {}, HEAD_WORDS * 4
    for k in SECTIONS:
        offs[k] = pos
        pos += heights[k] * math.ceil(widths[k] * 4 / 32) * 4
    sec = {k: _rows(raw, offs[k], heights[k], widths[k]) for k in SECTIONS}
    for k in SECTIONS:
        pad = sec[k][:, widths[k] * 4:]
        if pad.any():
            _fail(path, k, f"row {int(np.flatnonzero(pad.any(axis=1))[0])} has bits set above its "
                           f"{widths[k] * 4}-bit width")

    checks = {}
    # cfg: one bit stream over its 72-bit rows
    cfg = sec["cfg"][:, :72].reshape(-1)
    p = 0

    def take(n):
        nonlocal p
        f = cfg[p:p + n]
        p += n
        return f

    shift_idx = int(_uint(take(NBIT_IDX_S2G)))
    sel_all = [int(_uint(take(NBIT_NEIB))) for _ in range(NTYPE_MAX)]
    gs_all = _sint(take(NBIT_FIXD * NTYPE_MAX * NTYPE_MAX * M1).reshape(NTYPE_MAX, NTYPE_MAX, M1, NBIT_FIXD))
    nexpo = int(_sint(take(NBIT_FLTE)))
    if cfg[p:].any():
        _fail(path, "cfg", f"bits set after NEXPO_DIV_NI (bit {p + int(np.flatnonzero(cfg[p:])[0])})")
    ntypes = next((k for k, s in enumerate(sel_all) if s == 0), NTYPE_MAX)
    if ntypes == 0 or any(sel_all[ntypes:]):
        _fail(path, "cfg SEL", f"{sel_all}: the used types' SEL must be non-zero and come first")
    sel = sel_all[:ntypes]
    nix_shift = max(0, math.ceil(math.log2(sum(sel) / 1.5)))
    if nexpo != -nix_shift:
        _fail(path, "cfg NEXPO_DIV_NI", f"{nexpo}, but SEL {sel} gives NIX = 2^{nix_shift} (ceil(log2(sum(SEL) / 1.5)))")
    if gs_all[ntypes:].any() or gs_all[:, ntypes:].any():
        _fail(path, "cfg GS", "non-zero padding constants for an unused type")
    s0 = -shift_idx * G_FINE_DX

    # tables: (a, b) rows first, then (c, d) rows, FLT29 fields LSB first
    def table(name, nch_per_row, rows_per_type):
        v = flt29(_uint(_fields(sec[name][:, : WIDTHS[name] * 4], FLT_BITS)))  # (rows, 2 * nch_per_row)
        half = NTYPE_MAX * rows_per_type
        ab = v[:half].reshape(NTYPE_MAX, rows_per_type, nch_per_row, 2)
        cd = v[half:].reshape(NTYPE_MAX, rows_per_type, nch_per_row, 2)
        return np.concatenate([ab, cd], axis=-1)  # (type, row, channel, (a, b, c, d))

    swt = table("swt", 2, U_ROWS)  # channels s, h
    fea = table("fea", 4, G_ROWS * M1 // 4).reshape(NTYPE_MAX, G_ROWS, M1, 4)
    for name, t in (("swt", swt), ("fea", fea)):
        if np.any(t[ntypes:]):
            _fail(path, name, f"non-zero table of an unused type {ntypes + int(np.flatnonzero(t[ntypes:].reshape(NTYPE_MAX - ntypes, -1).any(axis=1))[0])}")
        if not np.all(np.isfinite(t)):
            _fail(path, name, "a coefficient that is not finite")
    s_coef, h_coef = swt[:ntypes, :, 0], swt[:ntypes, :, 1]
    g_coef = fea[:ntypes]

    # fitting nets
    fit_w, fit_b, fit_expo, bp_err = [], [], [], 0.0
    fps = sec["fps"][:, :72].reshape(NTYPE_MAX, NSTDM, -1)  # (type, lane, stream bits)
    bps = sec["bps"][:, :72].reshape(NTYPE_MAX, NSTDM, -1)
    for t in range(NTYPE_MAX):
        if t >= ntypes:
            if fps[t].any() or bps[t].any():
                _fail(path, "fps/bps", f"non-zero weights of unused type {t}")
            continue
        W_layers, b_layers, e_layers = [], [], []
        pf = pb = 0
        for l, (nr, nc) in enumerate(zip(FIT_NODES[:-1], FIT_NODES[1:])):
            if nc > 1:
                ncs = nc // NSTDM
                nw = ncs * nr
                wf = _sint(_fields(fps[t][:, pf:pf + nw * NBIT_W], NBIT_W))  # (lane, cc * nr + rr)
                ef = _uint(_fields(fps[t][:, pf + nw * NBIT_W:pf + nw * NBIT_W + ncs * NBIT_DISP], NBIT_DISP))
                o = pf + nw * NBIT_W + ncs * NBIT_DISP
                bf = _sint(_fields(fps[t][:, o:o + ncs * NBIT_B], NBIT_B))
                pf = o + ncs * NBIT_B
                W_int = wf.reshape(NSTDM, ncs, nr).transpose(2, 0, 1).reshape(nr, nc)  # column lane*ncs + cc
                expo = ef.reshape(nc)
                bias = bf.reshape(nc)
                # backprop copy: rows lane*nrs + rr, all columns, row exponents
                nrs = nr // NSTDM
                wb = _sint(_fields(bps[t][:, pb:pb + nrs * nc * NBIT_W], NBIT_W)).reshape(nr, nc)
                eb = _uint(_fields(bps[t][:, pb + nrs * nc * NBIT_W:pb + nrs * nc * NBIT_W + ncs * NBIT_DISP],
                                   NBIT_DISP)).reshape(nr)
                o = pb + nrs * nc * NBIT_W + ncs * NBIT_DISP
                bb = _sint(_fields(bps[t][:, o:o + ncs * NBIT_B], NBIT_B)).reshape(nc)
                pb = o + ncs * NBIT_B
                W = W_int * np.exp2(expo[None, :] - W_FRAC)
                Wr = wb * np.exp2(eb[:, None] - W_FRAC)
                # each copy floors |w| to its own grid: they differ by less than the coarser LSB
                lsb = np.exp2(np.maximum(expo[None, :], eb[:, None]) - W_FRAC)
                bad = np.abs(W - Wr) > lsb
                if bad.any():
                    r, c = (int(x) for x in np.argwhere(bad)[0])
                    _fail(path, f"bps type {t} layer {l}", f"row-normalised weight [{r}, {c}] = {Wr[r, c]} disagrees "
                                                          f"with the column-normalised fps copy {W[r, c]}")
                bp_err = max(bp_err, float((np.abs(W - Wr) / lsb).max()))
                if not np.array_equal(bb, bias):
                    _fail(path, f"bps type {t} layer {l}", "biases differ from the fps copy")
            else:
                nrs = nr // NSTDM
                wf = _sint(_fields(fps[t][:, pf:pf + nrs * NBIT_W], NBIT_W))  # (lane, rr): row lane*nrs + rr
                ef = _uint(fps[t][:, pf + nrs * NBIT_W:pf + nrs * NBIT_W + NBIT_DISP])
                o = pf + nrs * NBIT_W + NBIT_DISP
                bf = _sint(fps[t][:, o:o + NBIT_B])
                pf = o + NBIT_B
                if not (ef == ef[0]).all() or not (bf == bf[0]).all():
                    _fail(path, f"fps type {t} final layer", "lanes disagree on the output column's exponent or bias")
                if bf[0] != 0:
                    _fail(path, f"fps type {t} final layer bias", f"{bf[0]} is not zero: not an MDPU-era file")
                bpf = bps[t][:, pb:pb + nrs * NBIT_W + NBIT_DISP + NBIT_B]
                if not np.array_equal(bpf, fps[t][:, pf - (nrs * NBIT_W + NBIT_DISP + NBIT_B):pf]):
                    _fail(path, f"bps type {t} final layer", "differs from the fps copy")
                pb += nrs * NBIT_W + NBIT_DISP + NBIT_B
                W_int = wf.reshape(nr, 1)
                expo = ef[:1]
                bias = bf[:1]
                W = W_int * np.exp2(expo[None, :] - W_FRAC)
            W_layers.append(W)
            b_layers.append(bias * 2.0 ** -B_FRAC)
            e_layers.append(expo.tolist())
        for name, st, q in (("fps", fps[t], pf), ("bps", bps[t], pb)):
            if st[:, q:].any():
                _fail(path, f"{name} type {t}", f"bits set after the final layer (bit {q})")
        fit_w.append(W_layers)
        fit_b.append(b_layers)
        fit_expo.append(e_layers)
    checks["bps_vs_fps_max_lsb"] = bp_err

    nv = NvnmdV0(path=path, sha256=hashlib.sha256(raw).hexdigest(), rcut=rcut, ntypes=ntypes, sel=sel,
                 nix_shift=nix_shift, s0=s0, gs=gs_all[:ntypes, :ntypes] * 2.0 ** -GS_FRAC, s_coef=s_coef,
                 h_coef=h_coef, g_coef=g_coef, fit_w=fit_w, fit_b=fit_b, fit_expo=fit_expo, checks=checks)
    # the padding constant the file holds is its own tables at u = 0 (to its Q.23 rounding)
    with torch.no_grad():
        x0 = u_table(nv.s_coef, torch.zeros(ntypes, dtype=torch.float64), torch.arange(ntypes))
        gs = torch.stack([x0[:, None] * g_table(nv.g_coef, x0, torch.full((ntypes,), t), nv.s0)
                          for t in range(ntypes)], dim=1).numpy()
    # the wrap evaluated them with FLT29 arithmetic (20 fraction bits) before rounding to Q.23
    err = float(np.abs(gs - nv.gs).max())
    if err > 2.0 ** -GS_FRAC * 4 + 2.0 ** -16 * float(np.abs(nv.gs).max()):
        _fail(path, "cfg GS", f"differs from s~(0) G(s~(0)) of the file's tables by {err:.3g}")
    checks["gs_vs_tables_max_abs"] = err
    return nv


# ---- evaluation of the tables (float64, differentiable) -----------------------------------------------

def _cubic(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    a, b, c, d = coef.unbind(-1)
    return ((a * x + b) * x + c) * x + d


def u_table(coef, u: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
    """s~ or h~ of u (Å^2) for centre types ti: the file's cubic segments (past the last one: its end)."""
    coef = torch.as_tensor(coef)
    idx = torch.clamp(torch.floor(u.detach() / U_DX), 0, U_ROWS - 1).long()
    x = torch.clamp(u - idx * U_DX, max=U_DX)
    return _cubic(coef[ti, idx], x)


def g_table(coef, s: torch.Tensor, tj: torch.Tensor, s0: float) -> torch.Tensor:
    """G(s~) (..., M1) for neighbour types tj: the file's fine range [s0, s0 + 1] where it holds, else the
    coarse one, as map_flt_nvnmd picks them (network.TableEmbedding, the embed_table option's rule)."""
    coef = torch.as_tensor(coef)
    out = s.new_zeros(s.shape + (coef.shape[2],))
    for t in range(coef.shape[0]):
        m = tj == t
        if m.any():
            emb = TableEmbedding(embed_table_spec(s0), coef.shape[2])
            emb.coef = coef[t]
            out = out.index_put((m.nonzero().squeeze(-1),), emb(s[m][:, None]))
    return out


def embed_table_spec(s0: float) -> dict:
    """The embed_table option's description of the file's G tables (cfg_s2g)."""
    return {"x0": s0, "ranges": [[G_FINE_DX, G_FINE_N], [G_COARSE_DX, G_ROWS - G_FINE_N]]}


class NvnmdModel(torch.nn.Module):
    """The decoded model in float64: what the file's tables and weights compute, without NVNMD's FLT29
    and fixed-point roundings, with forces as the exact gradient of the energy (NVNMD's hardware uses
    separate derivative tables instead).  `forward` has DeepPot's signature, so network.evaluate runs it."""

    def __init__(self, nv: NvnmdV0):
        super().__init__()
        self.nv = nv
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))
        self.s_coef, self.h_coef, self.g_coef = t(nv.s_coef), t(nv.h_coef), t(nv.g_coef)
        self.gs = t(nv.gs)
        self.w = [[t(w) for w in ws] for ws in nv.fit_w]
        self.b = [[t(b) for b in bs] for bs in nv.fit_b]
        self.register_buffer("bias_atom_e", torch.zeros(nv.ntypes, dtype=torch.float64))

    def forward(self, rij, center, tj, atype):
        nv = self.nv
        n, nt = len(atype), nv.ntypes
        ti = atype[center]
        u = (rij * rij).sum(-1)
        s = u_table(self.s_coef, u, ti)
        h = u_table(self.h_coef, u, ti)
        R = torch.cat([s[:, None], h[:, None] * rij], dim=-1)
        G = g_table(self.g_coef, s, tj, nv.s0)
        outer = (R[:, :, None] * G[:, None, :]).reshape(len(R), -1)
        GR = outer.new_zeros((n, 4 * M1)).index_add(0, center, outer).reshape(n, 4, M1)
        counts = torch.zeros(n * nt, dtype=torch.long).index_add(0, center * nt + tj, torch.ones_like(tj)).reshape(n, nt)
        npad = torch.as_tensor(nv.sel)[None, :] - counts
        if bool((npad < 0).any()):
            i, k = (int(v) for v in (npad < 0).nonzero()[0])
            raise ValueError(f"atom {i} has {int(counts[i, k])} neighbours of type {k}, more than SEL {nv.sel[k]}")
        GR[:, 0, :] = GR[:, 0, :] + torch.einsum("nt,ntc->nc", npad.double(), self.gs[atype])
        GR = GR / nv.nix
        T = torch.einsum("nka,nkb->nab", GR, GR)
        rows, cols = (torch.as_tensor(np.array(x)) for x in band_index(M1, M2))
        D = T[:, rows, cols].reshape(n, M1 * M2)
        E = D.new_zeros(n)
        for t in range(nt):
            m = atype == t
            if m.any():
                E = E.index_put((m.nonzero().squeeze(-1),), self.fitting(D[m], t) + self.bias_atom_e[t])
        return E

    def fitting(self, x: torch.Tensor, t: int) -> torch.Tensor:
        for k, (w, b) in enumerate(zip(self.w[t][:-1], self.b[t][:-1])):
            y = tanh4(x @ w + b)
            x = x + y if k >= 1 else y  # DP resnet on the equal-width layers 1 and 2
        return (x @ self.w[t][-1] + self.b[t][-1]).squeeze(-1)


def band_index(m1: int, m2: int) -> tuple[np.ndarray, np.ndarray]:
    """NVNMD's banded descriptor: D[i, k] = T[i, (i + k) mod M1], as (rows, columns) of T, (M1, M2) each."""
    i = np.arange(m1)[:, None]
    return np.broadcast_to(i, (m1, m2)), (i + np.arange(m2)[None, :]) % m1


# ---- what the u-tables are: DeePMD's normalised s and h --------------------------------------------

def _knots(coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(r, value) at the segments' left knots u = k dx past the rows clamped below min_dist (the table is
    constant there; row 0 is the padding row), up to the table's end (past rcut: the switch's zero)."""
    d = coef[:, 3]
    k = np.arange(len(d))
    clamped = 1
    while clamped < len(d) - 1 and d[clamped + 1] == d[1] and not coef[clamped, :3].any():
        clamped += 1
    keep = k > clamped
    return np.sqrt(k[keep] * U_DX), d[keep]


def fit_env_norm(nv: NvnmdV0, rcut_smth: float | None = None) -> dict:
    """avg, std, r_std per centre type and rcut_smth (unless given) such that the u-tables' knots are
    s~ = (sw(r)/r - avg) / std and h~ = sw(r)/r^2 / r_std; with the largest relative residuals.  A table of
    another form (residual above 1e-5 of its range) is refused naming it."""
    from .network import switch

    def s_of(r, rs):
        return switch(torch.as_tensor(r), rs, nv.rcut).numpy() / r

    def lsq(rs):
        res, sol = 0.0, []
        for t in range(nv.ntypes):
            r, y = _knots(nv.s_coef[t])
            A = np.stack([s_of(r, rs), np.ones_like(r)], axis=1)
            x, *_ = np.linalg.lstsq(A, y, rcond=None)
            res = max(res, float(np.abs(A @ x - y).max() / np.abs(y).max()))
            sol.append(x)
        return res, sol

    if rcut_smth is None:  # the file does not record it: the switch's start that fits the table best
        grid = np.arange(0.05, nv.rcut, 0.05)
        rs = float(grid[int(np.argmin([lsq(g)[0] for g in grid]))])
        for step in (0.01, 0.001, 0.0001):
            grid = np.arange(max(step, rs - 10 * step), min(nv.rcut - step, rs + 10 * step), step)
            rs = float(grid[int(np.argmin([lsq(g)[0] for g in grid]))])
        rcut_smth = round(rs, 3)
    res_s, sol = lsq(rcut_smth)
    avg, std, r_std, res_h = [], [], [], 0.0
    for t, (alpha, beta) in enumerate(sol):
        if alpha <= 0:
            _fail(nv.path, f"swt s table of type {t}", "decreasing in s: not a normalised s")
        std.append(1.0 / alpha)
        avg.append(-beta / alpha)
        r, y = _knots(nv.h_coef[t])
        f = s_of(r, rcut_smth) / r
        g = float(f @ y / (f @ f))
        res_h = max(res_h, float(np.abs(g * f - y).max() / np.abs(y).max()))
        r_std.append(1.0 / g)
    for name, res in (("s", res_s), ("h", res_h)):
        if res > 1e-5:
            _fail(nv.path, f"swt {name} table", f"not DeePMD's normalised {name} with rcut_smth {rcut_smth} "
                                                f"(relative residual {res:.2g})")
    pad = nv.s_coef[:, 0, 3]  # u = 0: the padding row, which the wrap sets to -avg / std
    pad_err = float(np.abs(pad - (-np.array(avg) / np.array(std))).max())
    return {"rcut_smth": rcut_smth, "s_avg": [float(x) for x in avg], "s_std": [float(x) for x in std],
            "r_std": [float(x) for x in r_std], "residual_s": res_s, "residual_h": res_h,
            "padding_row_vs_fit": pad_err}


# ---- our float model of it -----------------------------------------------------------------------------

def import_nvnmd(path: str | Path, type_map: list[str] | None, rcut_smth: float | None = None):
    """Our float model (DeepPot) of the NVNMD v0 file at `path`, and its provenance record ({"import": ...}).
    The file names no types: `type_map` must give them, one per type it holds."""
    from contract.config import ModelConfig
    from .network import DeepPot
    nv = read_nvnmd(path)
    if type_map is None:
        raise UnsupportedModel(f"{path}: an NVNMD file does not name its {nv.ntypes} types: give them (--type-map)")
    if len(type_map) != nv.ntypes:
        raise UnsupportedModel(f"{path}: cfg SEL {nv.sel}: {nv.ntypes} types, but the type map names {list(type_map)}")
    env = fit_env_norm(nv, rcut_smth)
    cfg = ModelConfig(type_map=list(type_map), rcut=nv.rcut, rcut_smth=env["rcut_smth"], sel=list(nv.sel),
                      embed_neurons=[M1], axis_neurons=M2, fit_neurons=list(FIT_NODES[1:-1]),
                      r_min=min(1.0, env["rcut_smth"] / 2), norm_shift=nv.nix_shift, desc_shift=0,
                      env_norm={k: env[k] for k in ("s_avg", "s_std", "r_std")}, pad_slots=True,
                      fit_activation="tanh4", desc_band=True, embed_table=embed_table_spec(nv.s0))
    model = DeepPot(cfg)
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))
    with torch.no_grad():
        for tj in range(nv.ntypes):
            model.embed[tj].coef.copy_(t(nv.g_coef[tj]))
        for ti in range(nv.ntypes):
            net = model.fit[ti]
            for lin, W, b in zip(net.hidden, nv.fit_w[ti][:-1], nv.fit_b[ti][:-1]):
                lin.weight.copy_(t(W).T)
                lin.bias.copy_(t(b))
            net.out.weight.copy_(t(nv.fit_w[ti][-1]).T)
            net.out.bias.zero_()
        model.bias_atom_e.zero_()
    provenance = {"import": {
        "source": str(Path(path).resolve()), "sha256": nv.sha256,
        "format": "NVNMD v0 hardware model file (MDPU-era wrap: 32-word head, sections cfg fps bps swt dsw fea gra)",
        "model_version": "nvnmd-v0", "descriptor": "NVNMD v0 (se_a with G tables, banded descriptor, tanh4)",
        "type_map": list(type_map), "sel": list(nv.sel), "rcut": nv.rcut, "rcut_smth": env["rcut_smth"],
        "nix": nv.nix, "options": cfg.options(),
        "env_norm_fit": {k: env[k] for k in ("residual_s", "residual_h", "padding_row_vs_fit")},
        "checks": dict(nv.checks),
        "folded": ("u-tables -> env_norm (avg, std, r_std and rcut_smth fitted to their knots; the float model "
                   "computes s exactly); G tables (fea) -> embed_table, the file's cubic segments; fitting weights "
                   "W_int * 2^(expo - 16) of the column-normalised copy (fps), biases Q.23; GR / NIX -> norm_shift "
                   f"{nv.nix_shift}; derivative tables (dsw, gra) and the backprop copy (bps) not used"),
        "energy_bias": "none in the file (MDPU-era: no energy shift, final-layer bias zeroed): bias_atom_e = 0, "
                       "energies are defined up to a constant per type",
    }}
    return model, provenance


def is_nvnmd_file(path: str | Path) -> bool:
    """Whether `path` starts like an MDPU-era NVNMD v0 file (its head's section widths), for --format auto."""
    with open(path, "rb") as f:
        head = f.read(HEAD_WORDS * 4)
    if len(head) < HEAD_WORDS * 4:
        return False
    w = np.frombuffer(head, dtype="<u4")
    return [int(x) for x in w[7:14]] == [WIDTHS[k] for k in SECTIONS]


def predict(evaluator: NvnmdModel, system, frame: int):
    """Energy, forces and virial of one frame under the decoded file (metrics.predict_float's outputs)."""
    from .batch import make_batch
    from .network import evaluate
    b = make_batch([(system, frame)], evaluator.nv.rcut)
    e, f, v, _ = evaluate(evaluator, b.rij, b.center, b.neighbor, b.atype, b.frame_of_atom, 1)
    return float(e[0]), f.numpy(), v[0].numpy()
