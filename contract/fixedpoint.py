"""Fixed-point formats and the integer primitives every stage is built from.

A value x is stored as the integer q = x * 2**frac in a two's-complement (or unsigned) word of `bits`
bits.  Three rules fix every bit the hardware produces, and the reference and the RTL share them:

* **Rounding** of a right shift by k > 0 is *round half up*: (v + 2**(k-1)) >> k, with `>>` the
  arithmetic (floor) shift.  One adder in hardware, no sticky bits, and unbiased enough for our sums.
  Constants (weights, table coefficients) are quantized with the same rule: floor(x * 2**frac + 1/2).
* **Saturation** clips to the word's range and *raises a flag*: the reference returns per-atom flag
  bits and the hardware streams them with each atom.  Nothing saturates silently.
* **Products and sums** are exact until an explicit requantization (`requant`).  The reference uses
  float64 matrix products where every partial sum provably stays below 2**53 (exact in IEEE double),
  and splits operands into halves otherwise (`imatmul`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fmt:
    """Width, fraction bits and signedness of one fixed-point tensor."""

    bits: int
    frac: int
    signed: bool = True

    def __post_init__(self):
        if not (1 <= self.bits <= 64):
            raise ValueError(f"format width must be 1..64 bits, got {self.bits}")

    @property
    def lo(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def resolution(self) -> float:
        return 2.0 ** -self.frac

    @property
    def max_value(self) -> float:
        return self.hi * 2.0 ** -self.frac

    def describe(self) -> str:
        s = "s" if self.signed else "u"
        return f"{s}{self.bits}.{self.frac}"

    def to_dict(self) -> dict:
        return {"bits": self.bits, "frac": self.frac, "signed": self.signed}

    @classmethod
    def from_dict(cls, d: dict) -> "Fmt":
        return cls(int(d["bits"]), int(d["frac"]), bool(d.get("signed", True)))

    def quantize(self, x, what: str = "value") -> np.ndarray:
        """Float -> integer for constants (round half up).  Out of range is an error, not a clip."""
        q = np.floor(np.asarray(x, dtype=np.float64) * 2.0 ** self.frac + 0.5).astype(np.int64)
        if q.size and (q.min() < self.lo or q.max() > self.hi):
            bad = float(np.asarray(x).ravel()[np.argmax((q.ravel() < self.lo) | (q.ravel() > self.hi))])
            raise OverflowError(f"{what}: {bad!r} does not fit format {self.describe()} "
                                f"(range [{self.lo * self.resolution:g}, {self.max_value:g}])")
        return q

    def to_float(self, q) -> np.ndarray:
        return np.asarray(q, dtype=np.float64) * 2.0 ** -self.frac


def fmt_for_range(max_abs: float, bits: int, signed: bool = True, headroom: float = 2.0) -> Fmt:
    """Largest frac such that `headroom * max_abs` fits in `bits` (a format chosen from data)."""
    m = max(float(max_abs) * headroom, 2.0 ** -40)
    int_bits = int(np.floor(np.log2(m))) + 1  # bits left of the point for magnitudes < 2**int_bits
    frac = bits - int_bits - (1 if signed else 0)
    return Fmt(bits, frac, signed)


def shift_round(v: np.ndarray, k: int) -> np.ndarray:
    """v * 2**-k, rounded half up for k > 0; exact left shift for k <= 0."""
    v = np.asarray(v, dtype=np.int64)
    if k > 0:
        return (v + (1 << (k - 1))) >> k
    if k < 0:
        return v << (-k)
    return v


def saturate(v: np.ndarray, fmt: Fmt) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the format's range; return (value, boolean mask of clipped elements)."""
    v = np.asarray(v, dtype=np.int64)
    bad = (v < fmt.lo) | (v > fmt.hi)
    return np.clip(v, fmt.lo, fmt.hi), bad


def requant(v: np.ndarray, from_frac: int, fmt: Fmt) -> tuple[np.ndarray, np.ndarray]:
    """Re-express an exact value with `from_frac` fraction bits in `fmt` (round, then saturate)."""
    return saturate(shift_round(v, from_frac - fmt.frac), fmt)


# ---- exact integer products through float64 BLAS ---------------------------------------------------

_F64_EXACT = 53


def _bits(v: np.ndarray) -> int:
    m = int(np.abs(v).max()) if v.size else 0
    return m.bit_length()


def imatmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact a @ b for int64 arrays (broadcasting like np.matmul), using float64 GEMM when the
    result provably fits in 53 bits and splitting `b` into high and low halves when it does not."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    k = a.shape[-1]
    need = _bits(a) + _bits(b) + max(k - 1, 0).bit_length()
    if need <= _F64_EXACT:
        return np.rint(np.matmul(a.astype(np.float64), b.astype(np.float64))).astype(np.int64)
    if need > 62 + _bits(b) // 2:
        raise OverflowError(f"integer matmul needs {need} bits, beyond int64")
    half = (_bits(b) + 1) // 2
    b_hi = b >> half  # floor
    b_lo = b - (b_hi << half)  # in [0, 2**half)
    return (imatmul(a, b_hi) << half) + imatmul(a, b_lo)
