"""A second, deliberately naive implementation of the fixed-point pipeline: Python ints, one atom and
one record at a time, no NumPy arithmetic.  It exists to catch what vectorization can get wrong in the
fast reference (float64 products that stop being exact, broadcasting, dtype overflow, masking).
Slow: use it on a few atoms only.
"""

from __future__ import annotations


def rnd(v: int, k: int) -> int:
    return (v + (1 << (k - 1))) >> k if k > 0 else v << (-k)


class Sat:
    def __init__(self):
        self.hit = False

    def __call__(self, v: int, from_frac: int, fmt) -> int:
        v = rnd(v, from_frac - fmt.frac)
        if v < fmt.lo or v > fmt.hi:
            self.hit = True
            v = min(max(v, fmt.lo), fmt.hi)
        return v


def lookup(tab, x: int):
    """(values, slopes, below, past, saturated): values, slopes and saturation per channel."""
    below = x < tab.x_min
    x = max(x, tab.x_min)
    idx = (x >> tab.index_shift) - tab.first_seg
    xi = (x >> (tab.index_shift - tab.xi_bits)) & ((1 << tab.xi_bits) - 1)
    if idx >= tab.nseg:
        return [0] * tab.nch, [0] * tab.nch, below, True, [False] * tab.nch
    ys, dys, sats = [], [], []
    for ch in range(tab.nch):
        sat = Sat()
        a, b, c = (int(v) for v in tab.coef[idx, ch])
        t = rnd(c * xi, tab.xi_bits)
        y = a + rnd((b + t) * xi, tab.xi_bits)
        ys.append(sat(y, tab.coef_fmt.frac, tab.out_fmt))
        # below x_min the table is constant: no slope (and no saturation of a slope that is not used)
        dys.append(0 if below else sat(b + 2 * t, tab.coef_fmt.frac - tab.seg_shift, tab.dout_fmt))
        sats.append(sat.hit)
    return ys, dys, below, False, sats


def tanh4(z: int, f: int):
    za = min(abs(z), 2 << f)
    xx = rnd(za * za, f)
    ya = za + rnd(xx * (rnd(xx, 4) - rnd(za, 2)), f)
    dphi = 0 if abs(z) >= (2 << f) else (1 << f) + rnd(xx * (rnd(za, 2) - 3 * (1 << (f - 2))), f)
    return (-ya if z < 0 else ya), dphi


def activation(qm, z: int, f: int):
    """tanh4, or with fit_activation "tanh" the table of |z|, odd."""
    if qm.table_act is None:
        return tanh4(z, f)
    (y,), (dy,), _, _, _ = lookup(qm.table_act, abs(z))
    return (-y if z < 0 else y), dy


def atom(qm, center_type: int, records):
    """records: list of (type, dx, dy, dz) ints.  Returns (energy, [(fx, fy, fz)], flags)."""
    cfg, F = qm.config, qm.formats
    sat = Sat()
    counts = [sum(1 for r in records if r[0] == t) for t in range(cfg.ntypes)]
    if not (0 <= center_type < cfg.ntypes) or any(not (0 <= r[0] < cfg.ntypes) for r in records):
        return 0, [(0, 0, 0)] * len(records), 8
    if any(c > s for c, s in zip(counts, cfg.sel)):
        return 0, [(0, 0, 0)] * len(records), 1
    r_small = False
    pair = []
    ch = center_type if qm.table_s.nch > 1 else 0  # env_norm: the u-tables' channel of this centre type
    for t, dx, dy, dz in records:
        d = (dx, dy, dz)
        u = dx * dx + dy * dy + dz * dz
        ss, dss, below, _, h1 = lookup(qm.table_s, u)
        hh, dhh, _, _, h2 = lookup(qm.table_h, u)
        s, ds, h, dh = ss[ch], dss[ch], hh[ch], dhh[ch]
        sat.hit |= h1[ch] or h2[ch]  # only this centre type's channel is the atom's
        r_small |= below
        R = [sat(s, F["s"].frac, F["R"])] + [sat(h * c, F["h"].frac + F["coord"].frac, F["R"]) for c in d]
        G, dG, _, past, h3 = lookup(qm.table_g[t], s)
        sat.hit |= any(h3) or past
        pair.append((d, s, ds, h, dh, R, G, dG))
    m1, m2, ns = cfg.m1, cfg.axis_neurons, cfg.norm_shift
    acc = [[sum(p[5][k] * p[6][c] for p in pair) for c in range(m1)] for k in range(4)]
    if cfg.pad_slots:  # each empty slot: the row a record at the u-tables' last segment has (h = 0 there)
        u_end = (qm.table_s.nseg - 1) << qm.table_s.index_shift
        s_pad = lookup(qm.table_s, u_end)[0][ch]
        R0 = Sat()(s_pad, F["s"].frac, F["R"])
        for t in range(cfg.ntypes):
            G = lookup(qm.table_g[t], s_pad)[0]
            for c in range(m1):
                acc[0][c] += (cfg.sel[t] - counts[t]) * R0 * G[c]
    GR = [[sat(acc[k][c], F["R"].frac + F["G"].frac + ns, F["GR"]) for c in range(m1)] for k in range(4)]
    col = cfg.descriptor_columns()  # D[a, b] = T[a, col[a][b]]
    D = [sat(sum(GR[k][a] * GR[k][col[a][b]] for k in range(4)), 2 * F["GR"].frac - cfg.desc_shift, F["D"])
         for a in range(m1) for b in range(m2)]
    # fitting forward
    x, xfrac, cache = D, F["D"].frac, []
    fz, fa = F["Z"].frac, F["A"].frac
    for layer in qm.fit[center_type]:
        zs, ys = [], []
        for k in range(layer.W.shape[1]):
            acc = sum(x[j] * int(layer.W[j, k]) for j in range(len(x)))
            z = rnd(acc, xfrac + layer.wfrac - fz) + int(layer.b[k])
            z = min(max(z, F["Z"].lo), F["Z"].hi)
            y, dphi = activation(qm, z, fz)
            ys.append(rnd(y, fz - fa))
            zs.append(dphi)
        x = [sat(a + b, fa, F["A"]) for a, b in zip(x, ys)] if layer.resnet else ys
        xfrac = fa
        cache.append(zs)
    ow = [int(w) for w in qm.out_w[center_type]]
    energy = sat(sum(a * w for a, w in zip(x, ow)), fa + qm.out_wfrac[center_type], F["E"])
    # fitting backward
    g = [sat(w, qm.out_wfrac[center_type], F["GA"]) for w in ow]
    for k in range(len(qm.fit[center_type]) - 1, -1, -1):
        layer = qm.fit[center_type][k]
        delta = [sat(dp * gg, fz + F["GA"].frac, F["DELTA"]) for dp, gg in zip(cache[k], g)]
        back = [sum(int(layer.W[j, kk]) * delta[kk] for kk in range(len(delta))) for j in range(layer.W.shape[0])]
        if k == 0:
            dD = [sat(v, F["DELTA"].frac + layer.wfrac, F["dD"]) for v in back]
        else:
            back = [sat(v, F["DELTA"].frac + layer.wfrac, F["GA"]) for v in back]
            g = [sat(a + b, F["GA"].frac, F["GA"]) for a, b in zip(g, back)] if layer.resnet else back
    dDm = [[dD[a * m2 + b] for b in range(m2)] for a in range(m1)]
    dGR = []
    for k in range(4):
        row = []
        for c in range(m1):
            # dT[a, col[a][b]] = dD[a, b]: T[a, e] = sum_k GR[k][a] GR[k][e] gives GR[k][c] both terms
            acc = sum(GR[k][col[c][b]] * dDm[c][b] for b in range(m2))
            acc += sum(GR[k][a] * dDm[a][b] for a in range(m1) for b in range(m2) if col[a][b] == c)
            row.append(sat(acc, F["GR"].frac + F["dD"].frac - cfg.desc_shift, F["dGR"]))
        dGR.append(row)
    forces = []
    for d, s, ds, h, dh, R, G, dG in pair:
        dR = [sat(sum(dGR[k][c] * G[c] for c in range(m1)), F["G"].frac + F["dGR"].frac + ns, F["dR"]) for k in range(4)]
        dGj = [sat(sum(dGR[k][c] * R[k] for k in range(4)), F["R"].frac + F["dGR"].frac + ns, F["dGj"]) for c in range(m1)]
        dS_g = rnd(sum(a * b for a, b in zip(dGj, dG)), F["dGj"].frac + F["dG"].frac - F["dS"].frac)
        dS = sat(rnd(dR[0], F["dR"].frac - F["dS"].frac) + dS_g, F["dS"].frac, F["dS"])
        dH = sat(sum(dR[1 + a] * d[a] for a in range(3)), F["dR"].frac + F["coord"].frac, F["dH"])
        dU = sat(rnd(dS * ds, F["dS"].frac + F["ds"].frac - F["dU"].frac)
                 + rnd(dH * dh, F["dH"].frac + F["dh"].frac - F["dU"].frac), F["dU"].frac, F["dU"])
        ff = F["F"].frac
        forces.append(tuple(
            sat(rnd(dR[1 + a] * h, F["dR"].frac + F["h"].frac - ff) + rnd(dU * d[a], F["dU"].frac + F["coord"].frac - 1 - ff),
                ff, F["F"]) for a in range(3)))
    flags = (2 if sat.hit else 0) | (4 if r_small else 0)
    return energy, forces, flags
