"""Fixed-point arithmetic in Amaranth, matching `contract.fixedpoint` bit for bit.

`requant(v, from_frac, fmt)` is the hardware twin of `contract.fixedpoint.requant`: round half up
((v + 2**(k-1)) >> k with an arithmetic shift), then clip to the format with a saturation bit.
All expressions are combinational; stages put registers around them.
"""

from __future__ import annotations

from amaranth.hdl import Const, Mux, Signal, Value, signed

from contract.fixedpoint import Fmt


def shape_of(fmt: Fmt):
    return signed(fmt.bits) if fmt.signed else fmt.bits


def shift_round(v: Value, k: int) -> Value:
    """v * 2**-k rounded half up (k > 0), exact left shift (k <= 0)."""
    v = Value.cast(v)
    if k > 0:
        return (v + Const(1 << (k - 1))) >> k
    if k < 0:
        return v << (-k)
    return v


def saturate(m, v: Value, fmt: Fmt) -> tuple[Value, Value]:
    """(clipped value as a fmt-shaped expression, 1 if clipped).

    `v` is used three times; it is first given a name (a comb signal in module `m`) so that the
    netlist computes it once, whatever expression it is.
    """
    v = Value.cast(v)
    if not isinstance(v, (Signal, Const)):
        sig = Signal(v.shape())
        m.d.comb += sig.eq(v)
        v = sig
    hi, lo = Const(fmt.hi), Const(fmt.lo)
    over, under = v > hi, v < lo
    out = Mux(over, hi, Mux(under, lo, v))
    return out.as_signed()[: fmt.bits].as_signed() if fmt.signed else out[: fmt.bits], over | under


def requant(m, v: Value, from_frac: int, fmt: Fmt) -> tuple[Value, Value]:
    return saturate(m, shift_round(v, from_frac - fmt.frac), fmt)


def tree_sum(values):
    """Balanced adder tree (shallow logic, and shallow expressions for the simulator)."""
    values = list(values)
    if not values:
        return Const(0)
    while len(values) > 1:
        values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i] for i in range(0, len(values), 2)]
    return values[0]


def any_of(values):
    """Balanced OR tree of 1-bit values."""
    values = list(values)
    if not values:
        return Const(0)
    while len(values) > 1:
        values = [values[i] | values[i + 1] if i + 1 < len(values) else values[i] for i in range(0, len(values), 2)]
    return values[0]
