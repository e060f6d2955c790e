"""A writer of MDPU-era NVNMD v0 hardware files (the layout of ../shared/notes/nvnmd.md §4), for the decoder's
tests without the group's file: our own encoder, written from the notes' layout, so the reader is tested
on bytes it did not write."""

from __future__ import annotations

from pathlib import Path

import numpy as np

NTYPE_MAX, M1, NSTDM = 4, 32, 64
U_ROWS, G_ROWS = 512, 512
SIZES = {"cfg": (229, 72), "fps": (50176, 72), "bps": (50176, 72), "swt": (4096, 116), "dsw": (4096, 116),
         "fea": (32768, 232), "gra": (32768, 232)}


def bits_of(value: int, n: int) -> list[int]:
    """n bits of a (two's complement) integer, LSB first."""
    v = int(value) & ((1 << n) - 1)
    return [(v >> k) & 1 for k in range(n)]


def flt29(x) -> np.ndarray:
    """sign | exponent + 128 | 20 fraction bits (truncated), 0 for 0; elementwise."""
    x = np.asarray(x, dtype=np.float64)
    m, e = np.frexp(np.abs(x))  # |x| = m 2^e, m in [0.5, 1)
    frac = np.floor((m * 2 - 1) * 2 ** 20).astype(np.int64)
    v = ((x < 0).astype(np.int64) << 28) | ((e.astype(np.int64) - 1 + 128) << 20) | frac
    return np.where(x == 0, 0, v)


def pack_rows(bits: np.ndarray, width: int) -> bytes:
    """Rows of `width` bits (LSB first) as little-endian words of a multiple of 32 bits."""
    nbytes = -(-width // 32) * 4
    rows = np.zeros((bits.shape[0], nbytes * 8), dtype=np.uint8)
    rows[:, :width] = bits
    return np.packbits(rows, axis=1, bitorder="little").tobytes()


def stream_rows(stream: list[int], nrows: int, width: int) -> np.ndarray:
    a = np.zeros(nrows * width, dtype=np.uint8)
    a[:len(stream)] = stream
    return a.reshape(nrows, width)


def write_nvnmd(path: Path, spec: dict) -> Path:
    """spec: rcut, sel (ntypes), shift_idx, nix_shift, gs (ntypes, ntypes, M1) ints Q.23, s_coef / h_coef
    (ntypes, 512, 4) and g_coef (ntypes, 512, M1, 4) floats (exact FLT29 values), W_int [type][layer]
    ((128, 128) x 3 and (128, 1)), expo [type][layer] (per column), bias [type][layer] ints Q.23."""
    nt = len(spec["sel"])
    sel = list(spec["sel"]) + [0] * (NTYPE_MAX - nt)
    cfg = bits_of(spec["shift_idx"], 9) + sum((bits_of(s, 8) for s in sel), [])
    gs = np.zeros((NTYPE_MAX, NTYPE_MAX, M1), dtype=np.int64)
    gs[:nt, :nt] = spec["gs"]
    for v in gs.reshape(-1):
        cfg += bits_of(v, 32)
    cfg += bits_of(-spec["nix_shift"], 8)
    sec = {"cfg": stream_rows(cfg, *SIZES["cfg"])}

    fps, bps = [], []
    for t in range(NTYPE_MAX):
        for lane in range(NSTDM):
            f, b = [], []
            if t < nt:
                for layer in range(4):
                    W, e, bias = (np.asarray(spec[k][t][layer]) for k in ("W_int", "expo", "bias"))
                    if W.shape[1] > 1:
                        cols = [2 * lane, 2 * lane + 1]
                        for c in cols:
                            for r in range(W.shape[0]):
                                f += bits_of(W[r, c], 18)
                        f += sum((bits_of(e[c], 3) for c in cols), [])
                        f += sum((bits_of(bias[c], 29) for c in cols), [])
                        Wf = W * np.exp2(e[None, :] - 16.0)
                        er = np.maximum(np.floor(np.log2(np.abs(Wf).max(axis=1) + 1e-50)), 0).astype(int)
                        Wr = (np.sign(Wf) * np.floor(np.abs(Wf) * np.exp2(16 - er[:, None]))).astype(np.int64)
                        for r in cols:
                            for c in range(W.shape[1]):
                                b += bits_of(Wr[r, c], 18)
                        b += sum((bits_of(er[r], 3) for r in cols), [])
                        b += sum((bits_of(bias[c], 29) for c in cols), [])
                    else:
                        last = sum((bits_of(W[r, 0], 18) for r in (2 * lane, 2 * lane + 1)), [])
                        last += bits_of(e[0], 3) + bits_of(0, 29)
                        f += last
                        b += last
            fps.append(stream_rows(f, 196, 72))
            bps.append(stream_rows(b, 196, 72))
    sec["fps"], sec["bps"] = np.concatenate(fps), np.concatenate(bps)

    def table(coef_by_type, nch_row):
        """(type, rows, 2 * nch_row values) of (a, b) then of (c, d), 29-bit fields LSB first."""
        out = []
        for half in ((0, 1), (2, 3)):
            for t in range(NTYPE_MAX):
                c = coef_by_type[t] if t < nt else np.zeros_like(coef_by_type[0])
                v = flt29(c[..., list(half)].reshape(-1, nch_row * 2))
                out.append(((v[..., None] >> np.arange(29)) & 1).reshape(len(v), -1).astype(np.uint8))
        return np.concatenate(out)

    sh = [np.stack([spec["s_coef"][t], spec["h_coef"][t]], axis=1) for t in range(nt)]  # (512, 2, 4)
    sec["swt"] = table(sh, 2)
    sec["fea"] = table([spec["g_coef"][t].reshape(-1, 4, 4) for t in range(nt)], 4)
    sec["dsw"] = np.zeros((SIZES["dsw"][0], 116), dtype=np.uint8)
    sec["gra"] = np.zeros((SIZES["gra"][0], 232), dtype=np.uint8)

    keys = ("cfg", "fps", "bps", "swt", "dsw", "fea", "gra")
    head = [SIZES[k][0] for k in keys] + [SIZES[k][1] // 4 for k in keys] + [int(round(spec["rcut"] * 2 ** 23))]
    head += [0] * (32 - len(head))
    raw = np.array(head, dtype="<u4").tobytes() + b"".join(pack_rows(sec[k], SIZES[k][1]) for k in keys)
    Path(path).write_bytes(raw)
    return Path(path)


def random_spec(seed: int = 0, ntypes: int = 2) -> dict:
    """Random contents of the right kinds (tables of exact FLT29 values; GS made consistent by the caller)."""
    rng = np.random.default_rng(seed)
    exact = lambda a: _from_flt29(flt29(a))
    spec = {"rcut": 6.0, "sel": [40, 50][:ntypes] + [30] * max(0, ntypes - 2), "shift_idx": 106, "nix_shift": 6,
            "s_coef": exact(rng.normal(size=(ntypes, U_ROWS, 4))), "h_coef": exact(rng.normal(size=(ntypes, U_ROWS, 4))),
            "g_coef": exact(rng.normal(size=(ntypes, G_ROWS, M1, 4)) * 0.1),
            "W_int": [], "expo": [], "bias": []}
    for _t in range(ntypes):
        W = [rng.integers(-2 ** 16, 2 ** 16, size=(128, 128)) for _ in range(3)] + [rng.integers(-2 ** 16, 2 ** 16, size=(128, 1))]
        spec["W_int"].append(W)
        spec["expo"].append([rng.integers(0, 3, size=128) for _ in range(3)] + [np.array([0])])
        spec["bias"].append([rng.integers(-2 ** 26, 2 ** 26, size=128) for _ in range(3)] + [np.array([0])])
    return spec


def _from_flt29(v: np.ndarray) -> np.ndarray:
    val = np.where(v >> 28, -1.0, 1.0) * (1 + (v & 0xFFFFF) / 2 ** 20) * np.exp2(((v >> 20) & 0xFF) - 128.0)
    return np.where(v == 0, 0.0, val)
