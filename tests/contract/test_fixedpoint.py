"""Integer primitives: rounding, saturation, exact products through float64."""

from __future__ import annotations

import numpy as np
import pytest

from contract.fixedpoint import Fmt, fmt_for_range, imatmul, requant, saturate, shift_round


def test_shift_round_is_round_half_up():
    v = np.array([-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 5, 6])
    assert shift_round(v, 2).tolist() == [-1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 2]
    assert shift_round(v, 0).tolist() == v.tolist()
    assert shift_round(v, -3).tolist() == (v * 8).tolist()


def test_saturation_reports_every_clip():
    f = Fmt(8, 0)
    v, bad = saturate(np.array([-129, -128, 0, 127, 128, 10 ** 9]), f)
    assert v.tolist() == [-128, -128, 0, 127, 127, 127]
    assert bad.tolist() == [True, False, False, False, True, True]
    u = Fmt(8, 0, signed=False)
    v, bad = saturate(np.array([-1, 0, 255, 256]), u)
    assert v.tolist() == [0, 0, 255, 255] and bad.tolist() == [True, False, False, True]


def test_requant_and_constant_quantize():
    f = Fmt(18, 13)
    assert f.quantize([1.0, -0.5])[0] == 8192
    with pytest.raises(OverflowError, match="does not fit format s18.13"):
        f.quantize([16.0])
    out, bad = requant(np.array([3 << 20]), 20, Fmt(4, 0))
    assert out.tolist() == [3] and not bad.any()


def test_fmt_for_range_has_headroom():
    f = fmt_for_range(0.9, 18, headroom=2.0)
    assert f.max_value >= 1.8 and f.max_value < 4.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_imatmul_exact_beyond_float64(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(-(1 << 26), 1 << 26, size=(3, 5, 40))
    b = rng.integers(-(1 << 26), 1 << 26, size=(3, 40, 7))  # products of 2^52, sums beyond 2^53
    got = imatmul(a, b)
    exact = np.einsum("nik,nkj->nij", a.astype(object), b.astype(object))
    assert (got.astype(object) == exact).all()
    small = rng.integers(-1000, 1000, size=(4, 6))
    assert (imatmul(small, small.T) == small @ small.T).all()
