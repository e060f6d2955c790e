"""Float model -> quantized model: fixed-point formats, interpolation tables, integer weights.

Steps (`quantize`):

0. **r_min** (`scan_training_frames`, `choose_r_min`): the radial tables start at r_min, chosen from the
   training data's shortest pair distance with a margin; both are recorded in the provenance
   (`provenance["r_min"]`), and a pair below r_min is an error at run time unless the user allows it.
   The same pass over every training frame records the neighbours within rcut per atom (mean, max,
   per neighbour element: `provenance["neighbors"]`), the generator's throughput estimate.
1. **Calibrate**: run the float model on sample frames and record the largest magnitude of every
   tensor the hardware stores, forward and backward (R, G, GR, D, activations, every gradient...).
2. **Formats** (`choose_formats`): widths are fixed by the hardware (18-bit words where a value feeds the
   18-bit port of a DSP48E2 27x18 multiplier, 27-bit where it feeds the 27-bit port, 32-bit outputs);
   fraction bits follow from each tensor's range, with headroom.  Where a hard bound exists
   (s <= s(r_min), GR <= sum(sel) max|R| max|G| / 2**norm_shift) it is used instead of data, so that
   value can never saturate.
3. **Tables**: u = r^2 -> s, h and s -> G (per neighbour type) as piecewise quadratics through the float
   functions at both ends and the middle of each segment (continuous values; the derivative is the
   quadratic's own, so forces and energy come from the same curve).
4. **Weights**: per layer one power-of-two scale: W_int = round(W * 2**wfrac) in 18 bits; biases in the
   pre-activation format; per-type energy bias (with the output bias) as a host-side integer.
"""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import torch

from .batch import make_batch
from contract.config import ModelConfig, require_quantizable
from contract.fixedpoint import Fmt, fmt_for_range
from contract.modelfile import Layer, QuantizedModel, Table
from .network import ACTIVATIONS, DeepPot, descriptor_product, normalise, of_centre, s_of_r

#: Word widths per tensor (see module docstring).  Keys match `modelfile.REQUIRED_FORMATS`.
WIDTHS = {
    "coord": 18, "s": 18, "h": 18, "ds": 18, "dh": 18, "R": 18, "G": 18, "dG": 18,
    "GR": 27, "D": 27, "Z": 27, "A": 27, "W": 18, "E": 32,
    "GA": 27, "DELTA": 27, "dD": 27, "dGR": 27, "dR": 27, "dGj": 27, "dS": 27, "dH": 27, "dU": 27, "F": 20,
}
#: Headroom factor over the largest calibrated magnitude, for data-derived formats.
HEADROOM = {"D": 8.0, "E": 16.0, "F": 16.0, "GA": 8.0, "DELTA": 8.0, "dD": 8.0, "dGR": 8.0, "dR": 8.0,
            "dGj": 8.0, "dS": 8.0, "dH": 8.0, "dU": 8.0}
COORD_FRAC = 13  # s18.13: |dx| < 16 Å at 1.2e-4 Å resolution
ACT_FRAC = 23  # s27.23 for pre-activations and activations: range +-8, tanh4 needs +-2
U_SEG_SHIFT = 4  # u-table segments of 1/16 Å^2
U_XI_BITS = 17
G_SEG_SHIFT = 10  # G-table segments of 1/1024 in s
ACT_SEG_SHIFT = 6  # tanh-table segments of 1/64 in z: quadratic error ~ 6e-8, below the 2^-23 LSB
TABLE_GUARD = 8  # coefficient fraction bits beyond the output's
COEF_BITS = 27
#: r_min = R_MIN_MARGIN x the training data's shortest distance, rounded down to R_MIN_GRID Å.
R_MIN_MARGIN = 0.85
R_MIN_GRID = 0.05


# ---- r_min: where the radial tables start ------------------------------------------------------------

def scan_training_frames(systems, rcut: float, source: str | None = None) -> tuple[dict, dict]:
    """One pass over *every* frame of `systems` (the training data; a sample could miss the one close
    contact that matters): (shortest pair distance, neighbour statistics).

    shortest: {"distance": Å, "system": name, "frame": k, "frames": frames searched}.
    neighbours (provenance["neighbors"]; the generator's throughput estimate uses it): neighbours
    within rcut per atom over every atom of every frame, {"rcut", "mean", "max", "per_type": {element:
    {"mean", "max"}} (neighbours of that element per atom), "frames", "atoms" (atom-frames counted),
    "systems", "source" (where the frames came from: `source`, else the systems' common folder)}."""
    from .neighbors import edges
    best = {"distance": math.inf, "system": None, "frame": None, "frames": 0}
    total, peak, atoms = 0, 0, 0
    by_type: dict[str, list] = {}  # element -> [neighbours counted, max per atom]
    for system in systems:
        types, names = np.asarray(system.types), list(system.type_map)
        nat, nt = len(types), len(names)
        for f in range(system.nframes):
            e = edges(system.coords[f], system.cells[f], system.pbc, rcut)
            if len(e.i):
                d = float(np.sqrt(np.einsum("ij,ij->i", e.vec, e.vec).min()))
                if d < best["distance"]:
                    best.update(distance=d, system=system.name, frame=f)
            per_atom = np.bincount(e.i, minlength=nat)
            per_type = np.bincount(e.i * nt + types[e.j], minlength=nat * nt).reshape(nat, nt)
            total, peak, atoms = total + int(per_atom.sum()), max(peak, int(per_atom.max(initial=0))), atoms + nat
            for t, name in enumerate(names):
                acc = by_type.setdefault(name, [0, 0])
                acc[0] += int(per_type[:, t].sum())
                acc[1] = max(acc[1], int(per_type[:, t].max(initial=0)))
            best["frames"] += 1
    if source is None:
        folders = [str(system.name) for system in systems]
        source = (f"{best['frames']} frames of {len(folders)} systems under {os.path.commonpath(folders)}"
                  if folders and all(os.path.isabs(x) for x in folders) else
                  f"{best['frames']} frames of {len(folders)} systems")
    neighbours = {"rcut": float(rcut), "mean": round(total / atoms, 3) if atoms else None, "max": peak if atoms else None,
                  "per_type": {name: {"mean": round(n / atoms, 3), "max": m} for name, (n, m) in by_type.items()}
                  if atoms else {},
                  "frames": best["frames"], "atoms": atoms, "systems": len(systems), "source": source}
    return best, neighbours


def shortest_distance(systems, rcut: float) -> dict:
    """The shortest pair distance over every frame of `systems` (scan_training_frames' first half):
    {"distance": Å, "system": name, "frame": k, "frames": frames searched}."""
    return scan_training_frames(systems, rcut)[0]


def choose_r_min(min_distance: float, cfg: ModelConfig) -> float:
    """R_MIN_MARGIN x `min_distance` on a R_MIN_GRID Å grid; never above rcut_smth - R_MIN_GRID (the
    tables' 1/r part must start below rcut_smth: Sb has no bond under 2.8 Å) nor below 0.5 Å."""
    grid = 1.0 / R_MIN_GRID
    cap = math.floor((cfg.rcut_smth - R_MIN_GRID) * grid + 1e-9) / grid
    if not math.isfinite(min_distance):
        return cap  # no pair inside rcut in any frame: nothing closer was ever seen
    return max(0.5, min(math.floor(R_MIN_MARGIN * min_distance * grid) / grid, cap))


def set_r_min(model: DeepPot, systems, r_min: float | None = None,
              source: str | None = None) -> tuple[DeepPot, dict]:
    """A copy of `model` whose config has r_min chosen from `systems` (the training data), or the given
    `r_min`, which must lie below the data's shortest distance.  One pass over the frames
    (scan_training_frames) also measures their neighbour statistics.  Returns the model and the
    provenance records {"r_min": ..., "neighbors": ...}; `source` says where the frames came from."""
    seen, neighbours = scan_training_frames(systems, model.cfg.rcut, source)
    if r_min is None:
        r_min = choose_r_min(seen["distance"], model.cfg)
    elif r_min >= seen["distance"]:
        raise ValueError(f"r_min {r_min} Å is not below the data's shortest distance {seen['distance']:.4f} Å "
                         f"(system {seen['system']}, frame {seen['frame']}): the model would refuse its own data")
    model = copy.deepcopy(model)
    model.cfg.r_min = float(r_min)
    model.cfg.validate()
    record = {"r_min": float(r_min), "training_min_distance": seen["distance"] if math.isfinite(seen["distance"])
              else None, "system": seen["system"], "frame": seen["frame"], "frames": seen["frames"],
              "rule": f"{R_MIN_MARGIN} x shortest distance on a {R_MIN_GRID} A grid, at most rcut_smth - "
                      f"{R_MIN_GRID}"}
    return model, {"r_min": record, "neighbors": neighbours}


# ---- float functions the tables approximate -----------------------------------------------------

def s_and_h_of_u(u: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    r = torch.sqrt(torch.as_tensor(u, dtype=torch.float64))
    s = s_of_r(r, cfg)
    return s.numpy(), (s / r).numpy()


def u_functions(u: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """The u-tables' float functions at u (Å^2): (len(u), channels) each (network.normalise)."""
    return normalise(*s_and_h_of_u(u, cfg), cfg)


def g_function(model: DeepPot, x, t: int):
    """The G table of neighbour type t as a function of its input x (a tensor): the embedding of s
    (s_mean, s_std applied) or, with env_norm, of the normalised s the u-table gave."""
    tj = torch.full(x.shape, t, dtype=torch.long)
    return model.embed_net_of(x, tj) if model.cfg.env_norm is not None else model.embedding(x, tj)


def embedding_of_s(model: DeepPot, s: np.ndarray, t: int) -> np.ndarray:
    with torch.no_grad():
        return g_function(model, torch.as_tensor(s, dtype=torch.float64), t).numpy()


# ---- calibration -----------------------------------------------------------------------------------

def calibrate(model: DeepPot, systems, nframes: int = 8, seed: int = 0) -> dict[str, float]:
    """Largest |value| of every stored tensor over sample frames (forward and backward)."""
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    items = [(s, f) for s in systems for f in range(s.nframes)]
    picks = [items[k] for k in rng.choice(len(items), size=min(nframes, len(items)), replace=False)]
    out: dict[str, float] = {}

    def note(name, v):
        if v is not None and v.numel():
            out[name] = max(out.get(name, 0.0), float(v.detach().abs().max()))

    phi = ACTIVATIONS[cfg.fit_activation]
    for item in picks:
        b = make_batch([item], cfg.rcut)
        rij = b.rij.clone().requires_grad_(True)
        tj = b.atype[b.neighbor]
        ti = b.atype[b.center]
        u = (rij * rij).sum(-1)
        u.retain_grad()
        r = torch.sqrt(u)
        s_raw = s_of_r(r, cfg)
        # s, h: what the u-tables give for each pair (its centre type's channel)
        s, h = (of_centre(v, ti) for v in normalise(s_raw, s_raw / r, cfg))
        s.retain_grad()
        h.retain_grad()
        R = torch.cat([s[:, None], h[:, None] * rij], dim=-1)
        R.retain_grad()
        G = model.embed_net_of(s, tj) if cfg.env_norm is not None else model.embedding(s, tj)
        G.retain_grad()
        n = len(b.atype)
        outer = (R[:, :, None] * G[:, None, :]).reshape(len(R), -1)
        GR = outer.new_zeros((n, 4 * cfg.m1)).index_add(0, b.center, outer).reshape(n, 4, cfg.m1)
        if cfg.pad_slots:
            GR = GR + model.padding(b.center, tj, b.atype)
        GR = GR * 2.0 ** (-cfg.norm_shift)
        GR.retain_grad()
        D = descriptor_product(GR, cfg)
        D.retain_grad()
        energy = 0.0
        keep = []
        for t in range(cfg.ntypes):
            m = b.atype == t
            if not m.any():
                continue
            x = D[m]
            fit = model.fit[t]
            for k, lin in enumerate(fit.hidden):
                z = lin(x)
                z.retain_grad()
                y = phi(z)
                x = x + y if fit.resnet(k) else y
                x.retain_grad()
                keep += [("Z", z), ("A", x)]
            e_nn = fit.out(x).squeeze(-1) - fit.out.bias
            note("E", e_nn)
            energy = energy + (fit.out(x).squeeze(-1)).sum()
        energy.backward()
        for name, v in (("R", R), ("G", G), ("GR", GR), ("D", D)):
            note(name, v)
        note("dD", D.grad)
        note("dGR", GR.grad)
        note("dR", R.grad)
        note("dGj", G.grad)
        note("dS", s.grad)
        note("dH", h.grad)
        note("dU", u.grad)
        note("F", rij.grad)
        for name, v in keep:
            note(name, v)
            if name == "Z":
                note("DELTA", v.grad)
            else:
                note("GA", v.grad)
    return out


# ---- tables -------------------------------------------------------------------------------------------

def fit_quadratics(f_left: np.ndarray, f_mid: np.ndarray, f_right: np.ndarray):
    """Per segment y = a + b xi + c xi^2 through xi = 0, 1/2, 1."""
    a = f_left
    b = -3.0 * f_left + 4.0 * f_mid - f_right
    c = 2.0 * f_left - 4.0 * f_mid + 2.0 * f_right
    return np.stack([a, b, c], axis=-1)


def coef_frac(coef_float: np.ndarray, seg_shift: int, out_fmt: Fmt, dout_fmt: Fmt) -> int:
    """Fraction bits of a table's coefficients: TABLE_GUARD beyond the output's (and enough for the
    derivative), fewer where the largest coefficient would not fit COEF_BITS."""
    frac = max(out_fmt.frac + TABLE_GUARD, dout_fmt.frac + seg_shift + 2)
    m = float(np.abs(coef_float).max())
    while frac > 0 and m * 2.0 ** frac >= 2 ** (COEF_BITS - 1) - 1:
        frac -= 1
    return frac


def make_table(coef_float: np.ndarray, x_frac: int, seg_shift: int, xi_bits: int, x_min: int,
               out_fmt: Fmt, dout_fmt: Fmt, name: str, frac: int | None = None) -> Table:
    """Quantize float coefficients (nseg, nch, 3) into a Table with a coefficient format that fits
    (`frac`: a given number of fraction bits, which must fit)."""
    frac = coef_frac(coef_float, seg_shift, out_fmt, dout_fmt) if frac is None else frac
    cf = Fmt(COEF_BITS, frac)
    return Table(x_frac=x_frac, seg_shift=seg_shift, xi_bits=xi_bits, x_min=x_min,
                 coef=cf.quantize(coef_float, f"table {name} coefficients"), coef_fmt=cf,
                 out_fmt=out_fmt, dout_fmt=dout_fmt)


def u_tables(cfg: ModelConfig, F: dict[str, Fmt]) -> tuple[Table, Table]:
    u_frac = 2 * F["coord"].frac
    du = 2.0 ** -U_SEG_SHIFT
    # With env_norm one more segment past rcut: the normalised functions' constant continuation there
    # (s = (0 - s_avg) / s_std, h = 0) is DeePMD's empty slot (reference.padding_products).
    nseg = math.ceil(cfg.rcut ** 2 / du) + (1 if cfg.env_norm is not None else 0)
    left = np.arange(nseg) * du
    u_min_int = math.ceil(cfg.r_min ** 2 * 2.0 ** u_frac)
    u_min = u_min_int * 2.0 ** -u_frac
    if u_min < du:
        raise ValueError(f"r_min={cfg.r_min} Å is below the u-table's first segment (needs r_min^2 >= {du} Å^2)")
    # Segments wholly below u_min are never read (inputs are clamped to u_min): give them the value
    # at u_min so their coefficients stay small.  Every other segment follows the true function.
    unread = (left + du) <= u_min
    pts = lambda x: np.where(unread, u_min, x)
    s_l, h_l = u_functions(pts(left), cfg)
    s_m, h_m = u_functions(pts(left + du / 2), cfg)
    s_r, h_r = u_functions(pts(left + du), cfg)
    ts = make_table(fit_quadratics(s_l, s_m, s_r), u_frac, U_SEG_SHIFT, U_XI_BITS, u_min_int,
                    F["s"], F["ds"], "s")
    th = make_table(fit_quadratics(h_l, h_m, h_r), u_frac, U_SEG_SHIFT, U_XI_BITS, u_min_int,
                    F["h"], F["dh"], "h")
    return ts, th


def g_tables(model: DeepPot, F: dict[str, Fmt], s_max: float, s_lo: float = 0.0) -> list[Table]:
    """G tables over [s_lo, s_max] (s_lo < 0: a normalised s, whose table starts one segment below it)."""
    ds = 2.0 ** -G_SEG_SHIFT
    first = math.floor(s_lo / ds) - 1 if s_lo < 0 else 0
    nseg = math.ceil(s_max / ds) + 1 - first
    left = (first + np.arange(nseg)) * ds
    xi_bits = F["s"].frac - G_SEG_SHIFT
    x_min = first << (F["s"].frac - G_SEG_SHIFT)
    coefs = [fit_quadratics(*(embedding_of_s(model, x, t) for x in (left, left + ds / 2, left + ds)))
             for t in range(model.cfg.ntypes)]
    # one coefficient format for every neighbour type: the generator's G ROM holds them side by side
    frac = min(coef_frac(c, G_SEG_SHIFT, F["G"], F["dG"]) for c in coefs)
    tables = []
    for t, c in enumerate(coefs):
        tab = make_table(c, F["s"].frac, G_SEG_SHIFT, xi_bits, x_min, F["G"], F["dG"], f"g[{t}]", frac)
        tab.first_seg = first
        tables.append(tab)
    return tables


def function_ranges(model: DeepPot) -> dict[str, float]:
    """Hard bounds from the functions themselves over the tables' domains (dense grids)."""
    cfg = model.cfg
    u = np.linspace(cfg.r_min ** 2, cfg.rcut ** 2, 20001)
    ut = torch.tensor(u, requires_grad=True)
    r = torch.sqrt(ut)
    sv = s_of_r(r, cfg)
    s, h = normalise(sv, sv / r, cfg)  # (points, channels)
    ds = max(float(torch.autograd.grad(s[:, c].sum(), ut, retain_graph=True)[0].abs().max()) for c in range(s.shape[1]))
    dh = max(float(torch.autograd.grad(h[:, c].sum(), ut, retain_graph=True)[0].abs().max()) for c in range(h.shape[1]))
    s, h, rr = s.detach().numpy(), h.detach().numpy(), r.detach().numpy()[:, None]
    s_max, s_lo = float(s.max()), min(0.0, float(s.min()))
    # |R_1..3| <= h r: the u-tables' h times the largest |dx| of a pair at that u
    r_max = max(float(np.abs(s).max()), float((np.abs(h) * rr).max()))
    grid = np.linspace(s_lo * 1.01, s_max * 1.01, 20001)
    g_max, dg_max = 0.0, 0.0
    for t in range(cfg.ntypes):
        st = torch.as_tensor(grid, dtype=torch.float64)
        with torch.no_grad():
            G, dG = torch.func.jvp(lambda x: g_function(model, x, t), (st,), (torch.ones_like(st),))
        g_max = max(g_max, float(G.abs().max()))
        dg_max = max(dg_max, float(dG.abs().max()))
    return {"s": max(s_max, -s_lo), "s_max": s_max, "s_lo": s_lo, "h": float(np.abs(h).max()), "ds": ds, "dh": dh,
            "R": r_max, "G": g_max, "dG": dg_max}


def choose_formats(model: DeepPot, ranges: dict[str, float]) -> dict[str, Fmt]:
    cfg = model.cfg
    fr = function_ranges(model)
    F: dict[str, Fmt] = {"coord": Fmt(WIDTHS["coord"], COORD_FRAC)}
    for k in ("s", "h", "ds", "dh", "R", "G", "dG"):
        F[k] = fmt_for_range(fr[k], WIDTHS[k], headroom=1.1)
    gr_bound = sum(cfg.sel) * fr["R"] * fr["G"] * 2.0 ** -cfg.norm_shift
    F["GR"] = fmt_for_range(gr_bound, WIDTHS["GR"], headroom=1.0)
    F["Z"] = Fmt(WIDTHS["Z"], ACT_FRAC)
    F["A"] = Fmt(WIDTHS["A"], ACT_FRAC)
    F["W"] = Fmt(WIDTHS["W"], 0)  # width only: each layer carries its own fraction bits
    for k, head in HEADROOM.items():
        if k not in ranges:
            raise ValueError(f"calibration produced no range for {k}")
        F[k] = fmt_for_range(ranges[k], WIDTHS[k], headroom=head)
    return F


# ---- weights -------------------------------------------------------------------------------------

def quantize_weight(w: np.ndarray, bits: int, what: str) -> tuple[np.ndarray, int]:
    """One power-of-two scale per matrix: the largest frac whose rounding still fits `bits`."""
    m = float(np.abs(w).max())
    frac = bits - 1 - (math.floor(math.log2(m)) + 1) if m > 0 else bits - 1
    for f in (frac, frac - 1):
        try:
            return Fmt(bits, f).quantize(w, what), f
        except OverflowError:
            continue
    raise OverflowError(f"{what}: cannot fit weights in {bits} bits")


def float32_state(model: DeepPot) -> dict[str, np.ndarray]:
    """The trained weights as stored in the model file (float32-exact float64 values)."""
    return {k: v.detach().numpy().astype(np.float32).astype(np.float64) for k, v in model.state_dict().items()}


def quantize_fitting(model: DeepPot, F: dict[str, Fmt]):
    cfg = model.cfg
    fit, out_w, out_wfrac, ebias = [], [], [], []
    for t in range(cfg.ntypes):
        net = model.fit[t]
        layers = []
        for k, lin in enumerate(net.hidden):
            W, wf = quantize_weight(lin.weight.detach().numpy().T, F["W"].bits, f"fit[{t}] layer {k} weights")
            b = F["Z"].quantize(lin.bias.detach().numpy(), f"fit[{t}] layer {k} bias")
            layers.append(Layer(W=W, b=b, wfrac=wf, resnet=net.resnet(k)))
        w, wf = quantize_weight(net.out.weight.detach().numpy()[0], F["W"].bits, f"fit[{t}] output weights")
        fit.append(layers)
        out_w.append(w)
        out_wfrac.append(wf)
        e0 = float(net.out.bias.detach()) + float(model.bias_atom_e[t])
        ebias.append(int(math.floor(e0 * 2.0 ** F["E"].frac + 0.5)))
    return fit, out_w, out_wfrac, np.array(ebias, dtype=np.int64)


def model_from_state(cfg: ModelConfig, state: dict[str, np.ndarray]) -> DeepPot:
    model = DeepPot(cfg)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return model


def build(model: DeepPot, formats: dict[str, Fmt], provenance: dict | None = None) -> QuantizedModel:
    """Tables and integer weights for given formats (used for the first export and after fine-tuning)."""
    require_quantizable(model.cfg)
    state = float32_state(model)
    model = model_from_state(model.cfg, state)  # quantize exactly what the file stores
    ts, th = u_tables(model.cfg, formats)
    fr = function_ranges(model)
    tg = g_tables(model, formats, fr["s_max"] * 1.01, fr["s_lo"] * 1.01)
    fit, out_w, out_wfrac, ebias = quantize_fitting(model, formats)
    return QuantizedModel(config=model.cfg, formats=formats, table_s=ts, table_h=th, table_g=tg, fit=fit,
                          out_w=out_w, out_wfrac=out_wfrac, energy_bias=ebias, float_state=state,
                          provenance=provenance or {},
                          table_act=act_table(formats) if model.cfg.fit_activation == "tanh" else None)


def act_table(F: dict[str, Fmt]) -> Table:
    """fit_activation "tanh": |z| -> tanh|z| over the whole Z range (|z| <= 2**(Z.bits-1-Z.frac) = 8),
    segments of 2**-ACT_SEG_SHIFT, output and derivative in the Z format (what tanh4 gives)."""
    z = F["Z"]
    seg = 2.0 ** -ACT_SEG_SHIFT
    nseg = (1 << (z.bits - 1 - z.frac + ACT_SEG_SHIFT)) + 1  # |z| = 2**(bits-1) (z = lo) is in the last one
    left = np.arange(nseg) * seg
    f = [np.tanh(x)[:, None] for x in (left, left + seg / 2, left + seg)]
    return make_table(fit_quadratics(*f), z.frac, ACT_SEG_SHIFT, z.frac - ACT_SEG_SHIFT, 0, z, z, "act")


def quantize(model: DeepPot, calib_systems, nframes: int = 8, seed: int = 0, r_min: float | None = None,
             train_systems=None) -> QuantizedModel:
    """Quantize `model`: r_min from `train_systems` (default: the calibration systems) unless given,
    formats from calibration on `calib_systems`, then tables and integer weights."""
    require_quantizable(model.cfg)  # before the minutes of scanning and calibration
    model, scan = set_r_min(model, train_systems if train_systems is not None else calib_systems, r_min)
    ranges = calibrate(model, calib_systems, nframes=nframes, seed=seed)
    formats = choose_formats(model, ranges)
    return build(model, formats, {"calibration_ranges": ranges, **scan})


def float_model(qm: QuantizedModel) -> DeepPot:
    """The float model a quantized model file came from."""
    return model_from_state(qm.config, qm.float_state)


# ---- table error -------------------------------------------------------------------------------------

def table_errors(qm: QuantizedModel, model: DeepPot | None = None, points: int = 200001) -> dict:
    """Largest |table - float function| over each table's whole input range, in units and in LSBs.

    The float functions are evaluated at the *quantized* inputs, so this is the error the tables
    add on top of input quantization (interpolation + coefficient and output rounding).
    """
    from .reference import table_lookup
    model = model or model_from_state(qm.config, qm.float_state)
    cfg = qm.config
    out = {}
    u_frac = qm.table_s.x_frac
    u = np.unique(np.linspace(qm.table_s.x_min, int(cfg.rcut ** 2 * 2 ** u_frac), points).astype(np.int64))
    uf = u * 2.0 ** -u_frac
    r = torch.tensor(np.sqrt(uf), requires_grad=True)
    s0 = s_of_r(r, cfg)
    s_ref, h_ref = normalise(s0, s0 / r, cfg)  # (points, channels)
    # d/du = d/dr / (2r), per channel
    d_of = lambda f: np.stack([(torch.autograd.grad(f[:, c].sum(), r, retain_graph=True)[0] / (2 * r)).detach().numpy()
                               for c in range(f.shape[1])], axis=1)
    ds_ref, dh_ref = d_of(s_ref), d_of(h_ref)
    for name, tab, ref, dref in (("s", qm.table_s, s_ref.detach().numpy(), ds_ref),
                                 ("h", qm.table_h, h_ref.detach().numpy(), dh_ref)):
        y, dy, *_ = table_lookup(tab, u)
        e = np.abs(tab.out_fmt.to_float(y) - ref)
        de = np.abs(tab.dout_fmt.to_float(dy) - dref)
        out[name] = {"max_abs": float(e.max()), "max_lsb": float(e.max() / tab.out_fmt.resolution),
                     "max_rel": float(e.max() / np.abs(ref).max())}
        out["d" + name] = {"max_abs": float(de.max()), "max_lsb": float(de.max() / tab.dout_fmt.resolution),
                           "max_rel": float(de.max() / np.abs(dref).max())}
    for t, tab in enumerate(qm.table_g):
        lo, span = tab.first_seg << tab.index_shift, (tab.nseg - 1) << tab.index_shift
        s_int = lo + np.arange(0, span, max(1, span // points))
        sf = torch.tensor(s_int * 2.0 ** -tab.x_frac)
        with torch.no_grad():
            G, dG = torch.func.jvp(lambda x: g_function(model, x, t), (sf,), (torch.ones_like(sf),))
        y, dy, *_ = table_lookup(tab, s_int)
        e = np.abs(tab.out_fmt.to_float(y) - G.numpy())
        de = np.abs(tab.dout_fmt.to_float(dy) - dG.numpy())
        key = cfg.type_map[t]
        out[f"G[{key}]"] = {"max_abs": float(e.max()), "max_lsb": float(e.max() / tab.out_fmt.resolution),
                            "max_rel": float(e.max() / np.abs(G.numpy()).max())}
        out[f"dG[{key}]"] = {"max_abs": float(de.max()), "max_lsb": float(de.max() / tab.dout_fmt.resolution),
                             "max_rel": float(de.max() / np.abs(dG.numpy()).max())}
    return out
