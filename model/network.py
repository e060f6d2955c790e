"""The float DeePMD-style potential in PyTorch: se_a descriptor, embedding nets, fitting nets.

Per atom i with neighbours j (r_ij = x_j - x_i, r = |r_ij| < rcut):

    s(r)  = sw(r) / r                       DeePMD's smooth 1/r with a quintic switch on [rcut_smth, rcut)
    R_j   = (s, s x/r, s y/r, s z/r) = (s, h x, h y, h z),   h = s / r
    G_j   = embed[type_j]((s - s_mean) / s_std)           1 -> 8 -> 16 -> 32, tanh, resnet doubling
    GR_i  = 2**-norm_shift * sum_j R_j^T G_j              (4 x 32)
    D_i   = 2**desc_shift * GR_i^T GR_i[:, :M2]            (32 x 4 -> 128)
    E_i   = fit[type_i](D_i) + bias[type_i]               128 -> 128 -> 128 -> 128 -> 1, tanh4, resnet

Forces and the virial come from autograd through the pair vectors: dE/dr_ij is the quantity the
hardware produces, so the float model computes its forces and virial the same way the host assembles
them from hardware output (F_i += dE/dr_ij, F_j -= dE/dr_ij, W = -sum r_ij (x) dE/dr_ij).

The fitting net uses NVNMD's tanh4 polynomial so that float training and hardware agree; the
embedding net may use true tanh because the hardware replaces it by tables anyway.

Imported DeePMD-kit models (model/deepmd.py) turn on the config's options (contract.config.OPTIONS):

* env_norm: R_j = ((s - s_avg[t_i]) / s_std[t_i], h x / r_std[t_i], ...) per centre type t_i, and G_j =
  embed[type_j](R_j0): DeePMD's davg/dstd, which are the same for every slot of a centre type;
* pad_slots: GR also sums the sel[t] - n_t(i) empty slots of each neighbour type t, each the normalised
  zero row (x0, 0, 0, 0) with x0 = -s_avg[t_i] / s_std[t_i], i.e. (sel[t] - n_t(i)) x0 embed[t](x0) in
  GR's first row (NVNMD's "GS" constant per (t_i, t));
* fit_activation "tanh": DeePMD's fitting activation instead of tanh4;
* desc_band: D[a, k] = T[a, (a + k) mod M1] (NVNMD's banded descriptor) instead of T[a, k];
* embed_table: G is a table per neighbour type (`TableEmbedding`, NVNMD's hardware files) instead of a net.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from contract.config import FIT_ACTIVATIONS, ModelConfig


def tanh4(x: torch.Tensor) -> torch.Tensor:
    """NVNMD's hardware activation: sign(x) (|x| - |x|^3/4 + |x|^4/16) for |x| < 2, else sign(x).

    C1 at |x| = 2 with phi'(0) = 1; a handful of multiplies in fixed point instead of a tanh table.
    """
    xa = torch.clamp(torch.abs(x), max=2.0)
    xx = xa * xa
    return torch.sign(x) * (xa + xx * (xx / 16.0 - xa / 4.0))


#: The fitting activations by their config name (contract.config.FIT_ACTIVATIONS).
ACTIVATIONS = {"tanh4": tanh4, "tanh": torch.tanh}
assert tuple(ACTIVATIONS) == FIT_ACTIVATIONS


def switch(r: torch.Tensor, rcut_smth: float, rcut: float) -> torch.Tensor:
    """DeePMD's smooth switch: 1 below rcut_smth, 0 above rcut, quintic in between (C2)."""
    u = torch.clamp((r - rcut_smth) / (rcut - rcut_smth), 0.0, 1.0)
    return u * u * u * (-6.0 * u * u + 15.0 * u - 10.0) + 1.0


def s_of_r(r: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    return switch(r, cfg.rcut_smth, cfg.rcut) / r


def normalise(s, h, cfg: ModelConfig):
    """The environment's s and h as R uses them, for every centre type: (..., 1) each without env_norm
    (s, h themselves), else (..., ntypes) with channel t centre type t's (s - s_avg) / s_std and
    h / r_std (the hardware's u-tables hold exactly these channels).  NumPy arrays or tensors."""
    if cfg.env_norm is None:
        return s[..., None], h[..., None]
    lib = torch if isinstance(s, torch.Tensor) else np
    a, ss, rs = (lib.asarray(cfg.env_norm[k], dtype=lib.float64) for k in ("s_avg", "s_std", "r_std"))
    return (s[..., None] - a) / ss, h[..., None] / rs


def of_centre(v: torch.Tensor, ti: torch.Tensor | None) -> torch.Tensor:
    """Channel ti[e] of v[e, :] (normalise's output per pair); the only channel without env_norm."""
    if v.shape[-1] == 1:
        return v[..., 0]
    if ti is None:
        raise ValueError("env_norm: the centre types of the pairs are needed")
    return v.gather(-1, ti[..., None])[..., 0]


class EmbeddingNet(nn.Module):
    """1 -> n1 -> n2 -> ... with tanh and DeePMD's resnet: y = [x, x] + tanh(Wx + b) when widths double."""

    def __init__(self, neurons: list[int], generator: torch.Generator | None = None):
        super().__init__()
        sizes = [1] + list(neurons)
        self.layers = nn.ModuleList(nn.Linear(a, b, dtype=torch.float64) for a, b in zip(sizes, sizes[1:]))
        for lin, (a, b) in zip(self.layers, zip(sizes, sizes[1:])):
            nn.init.normal_(lin.weight, std=1.0 / math.sqrt(a + b), generator=generator)
            nn.init.normal_(lin.bias, std=1.0, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers:
            y = torch.tanh(lin(x))
            if lin.out_features == 2 * lin.in_features:
                y = y + torch.cat([x, x], dim=-1)
            elif lin.out_features == lin.in_features:
                y = y + x
            x = y
        return x


class TableEmbedding(nn.Module):
    """G(x) as piecewise cubics (the embed_table option): ranges that all start at x0, range k with n_k
    segments of dx_k, rows of `coef` (sum n_k, M1, 4) in range order, y = ((a t + b) t + c) t + d with
    t = x - (x0 + i dx_k) the offset into segment i.  The first range holding x is used, else the last one:
    below its start at t = 0, past its end at the last segment's end (NVNMD's map_flt_nvnmd)."""

    def __init__(self, table: dict, m1: int):
        super().__init__()
        self.x0 = float(table["x0"])
        self.ranges = [(float(dx), int(n)) for dx, n in table["ranges"]]
        self.register_buffer("coef", torch.zeros((sum(n for _, n in self.ranges), m1, 4), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., 0]
        xx = x - self.x0
        xd = xx.detach()
        row = torch.zeros_like(xd, dtype=torch.long)
        t = torch.zeros_like(xx)
        done = torch.zeros_like(xd, dtype=torch.bool)
        first = 0
        for k, (dx, n) in enumerate(self.ranges):
            last = k == len(self.ranges) - 1
            here = ~done & (((xd >= 0) & (xd <= n * dx)) | last)
            i = torch.floor(xd / dx)
            below, above = i < 0, i >= n
            i = torch.where(below, 0, torch.where(above, n - 1, i)).long()
            tk = torch.where(below, torch.zeros_like(xx), torch.where(above, torch.full_like(xx, dx), xx - i * dx))
            row = torch.where(here, first + i, row)
            t = torch.where(here, tk, t)
            done = done | here
            first += n
        a, b, c, d = self.coef[row].unbind(-1)
        t = t[..., None]
        return ((a * t + b) * t + c) * t + d


def descriptor_product(GR: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """D (n, M1 * M2) = 2**desc_shift T[a, columns[a][k]] of T = GR^T GR (cfg.descriptor_columns)."""
    if cfg.desc_band:
        cols = torch.as_tensor(cfg.descriptor_columns())
        D = torch.einsum("nka,nkab->nab", GR, GR[:, :, cols])
    else:
        D = torch.einsum("nka,nkb->nab", GR, GR[:, :, : cfg.axis_neurons])
    return D.reshape(len(GR), -1) * 2.0 ** cfg.desc_shift


class FittingNet(nn.Module):
    """D (128) -> 128 -> 128 -> 128 -> 1, tanh4; resnet y += phi(Wy + b) on layers with equal width
    after the first (DeePMD's rule), linear output."""

    def __init__(self, n_in: int, neurons: list[int], generator: torch.Generator | None = None,
                 activation: str = "tanh4"):
        super().__init__()
        self.phi = ACTIVATIONS[activation]
        sizes = [n_in] + list(neurons)
        self.hidden = nn.ModuleList(nn.Linear(a, b, dtype=torch.float64) for a, b in zip(sizes, sizes[1:]))
        self.out = nn.Linear(sizes[-1], 1, dtype=torch.float64)
        for lin in list(self.hidden) + [self.out]:
            nn.init.normal_(lin.weight, std=1.0 / math.sqrt(lin.in_features + lin.out_features), generator=generator)
            nn.init.normal_(lin.bias, std=1.0, generator=generator)
        nn.init.zeros_(self.out.bias)

    def resnet(self, k: int) -> bool:
        lin = self.hidden[k]
        return k >= 1 and lin.in_features == lin.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, lin in enumerate(self.hidden):
            y = self.phi(lin(x))
            x = x + y if self.resnet(k) else y
        return self.out(x).squeeze(-1)


class DeepPot(nn.Module):
    """The whole potential; `forward` maps a batch of edges to per-atom energies."""

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.ModuleList((TableEmbedding(cfg.embed_table, cfg.m1) if cfg.embed_table is not None
                                    else EmbeddingNet(cfg.embed_neurons, g)) for _ in range(cfg.ntypes))
        self.fit = nn.ModuleList(FittingNet(cfg.descriptor_dim, cfg.fit_neurons, g, cfg.fit_activation) for _ in range(cfg.ntypes))
        self.register_buffer("bias_atom_e", torch.zeros(cfg.ntypes, dtype=torch.float64))

    # ---- the per-pair path (what the hardware tabulates) -------------------------------------
    def pair_features(self, rij: torch.Tensor, tj: torch.Tensor, ti: torch.Tensor | None = None):
        """Environment rows R (E, 4) and embeddings G (E, M1) for pair vectors rij of neighbour types tj
        (ti: the centre atom's type per pair, needed with env_norm)."""
        cfg = self.cfg
        r = torch.linalg.norm(rij, dim=-1)
        s = s_of_r(r, cfg)
        h = s / r
        sn, hn = (of_centre(v, ti) for v in normalise(s, h, cfg))
        R = torch.cat([sn[:, None], hn[:, None] * rij], dim=-1)
        G = self.embedding(s, tj, ti)
        return R, G

    def embedding_input(self, s: torch.Tensor, ti: torch.Tensor | None = None) -> torch.Tensor:
        """What the embedding nets see for s: (s - s_mean) / s_std, or with env_norm R_j0."""
        cfg = self.cfg
        if cfg.env_norm is None:
            return (s - cfg.s_mean) / cfg.s_std
        return of_centre(normalise(s, s, cfg)[0], ti)

    def embedding(self, s: torch.Tensor, tj: torch.Tensor, ti: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed_net_of(self.embedding_input(s, ti), tj)

    def embed_net_of(self, x: torch.Tensor, tj: torch.Tensor) -> torch.Tensor:
        """embed[tj](x) per element of x (the embedding nets' inputs)."""
        x = x[:, None]
        G = x.new_zeros((len(x), self.cfg.m1))
        for t in range(self.cfg.ntypes):
            m = tj == t
            if m.any():
                G = G.index_put((m.nonzero().squeeze(-1),), self.embed[t](x[m]))
        return G

    def padding(self, center: torch.Tensor, tj: torch.Tensor, atype: torch.Tensor) -> torch.Tensor:
        """pad_slots: what the empty slots add to sum_j R_j^T G_j, (natoms, 4, M1) (first row only)."""
        cfg = self.cfg
        n, nt = len(atype), cfg.ntypes
        counts = torch.zeros(n * nt, dtype=torch.long).index_add(
            0, center * nt + tj, torch.ones_like(tj)).reshape(n, nt)
        npad = torch.as_tensor(cfg.sel, dtype=torch.long)[None, :] - counts
        if bool((npad < 0).any()):
            i, t = (int(v) for v in (npad < 0).nonzero()[0])
            raise ValueError(f"atom {i} has {int(counts[i, t])} neighbours of type {cfg.type_map[t]} inside rcut, "
                             f"more than sel[{t}]={cfg.sel[t]}: DeePMD's padding slots cannot hold them")
        zero = torch.zeros((), dtype=torch.float64)
        x0 = normalise(zero, zero, cfg)[0]  # the zero row's first entry, per centre type
        # GS[t_i, t] = x0[t_i] embed[t](x0[t_i]): one constant row per (centre type, neighbour type)
        GS = torch.stack([x0[:, None] * self.embed_net_of(x0, torch.full((nt,), t)) for t in range(nt)], dim=1)
        first = torch.einsum("nt,ntc->nc", npad.to(torch.float64), GS[atype])
        return torch.cat([first[:, None, :], first.new_zeros((n, 3, cfg.m1))], dim=1)

    # ---- per-atom path -----------------------------------------------------------------------
    def descriptor(self, R, G, center: torch.Tensor, natoms: int, pad: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        outer = (R[:, :, None] * G[:, None, :]).reshape(len(R), -1)
        GR = outer.new_zeros((natoms, 4 * cfg.m1)).index_add(0, center, outer).reshape(natoms, 4, cfg.m1)
        if pad is not None:
            GR = GR + pad
        return descriptor_product(GR * 2.0 ** (-cfg.norm_shift), cfg)

    def descriptors(self, rij: torch.Tensor, center: torch.Tensor, tj: torch.Tensor,
                    atype: torch.Tensor) -> torch.Tensor:
        """D per atom from the pairs (rij, centre index, neighbour type) of every atom of types atype."""
        R, G = self.pair_features(rij, tj, atype[center])
        pad = self.padding(center, tj, atype) if self.cfg.pad_slots else None
        return self.descriptor(R, G, center, len(atype), pad)

    def atomic_energy(self, D: torch.Tensor, atype: torch.Tensor) -> torch.Tensor:
        E = D.new_zeros(len(D))
        for t in range(self.cfg.ntypes):
            m = atype == t
            if m.any():
                E = E.index_put((m.nonzero().squeeze(-1),), self.fit[t](D[m]) + self.bias_atom_e[t])
        return E

    def forward(self, rij: torch.Tensor, center: torch.Tensor, tj: torch.Tensor, atype: torch.Tensor) -> torch.Tensor:
        return self.atomic_energy(self.descriptors(rij, center, tj, atype), atype)


def evaluate(model: DeepPot, rij: torch.Tensor, center: torch.Tensor, neighbor: torch.Tensor,
             atype: torch.Tensor, frame_of_atom: torch.Tensor, nframes: int, create_graph: bool = False):
    """Energies per frame, forces per atom, virials per frame, atomic energies.

    rij must not require grad yet; it is made a leaf here so that dE/dr_ij is available exactly as
    the hardware produces it.
    """
    rij = rij.detach().requires_grad_(True)
    tj = atype[neighbor]
    e_atom = model(rij, center, tj, atype)
    energy = e_atom.new_zeros(nframes).index_add(0, frame_of_atom, e_atom)
    (dEdr,) = torch.autograd.grad(energy.sum(), rij, create_graph=create_graph)
    # r_ij = x_j - x_i, so dE/dx_i = -sum_j dE/dr_ij and dE/dx_j += dE/dr_ij.
    forces = dEdr.new_zeros((len(atype), 3)).index_add(0, center, dEdr).index_add(0, neighbor, -dEdr)
    frame_of_edge = frame_of_atom[center]
    pair_virial = -(rij[:, :, None] * dEdr[:, None, :]).reshape(-1, 9)
    virial = pair_virial.new_zeros((nframes, 9)).index_add(0, frame_of_edge, pair_virial).reshape(nframes, 3, 3)
    if not create_graph:
        return energy.detach(), forces, virial.detach(), e_atom.detach()
    return energy, forces, virial, e_atom


def fit_energy_bias(type_counts: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """Per-type atomic energy by least squares: E_frame ~ sum_t n_t b_t (minimum-norm if rank deficient)."""
    b, *_ = np.linalg.lstsq(type_counts.astype(np.float64), energies.astype(np.float64), rcond=None)
    return b
