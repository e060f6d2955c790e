"""The wire format's words in Amaranth: fields read and words built by name from contract/wire.py.

No stage spells a bit position: `field(word, wire.INPUT_HEADER["tag"])` is the slice the table says,
`pack(wire.OUTPUT_HEADER, tag=..., n=..., flags=..., energy=...)` the whole word with its kind code and
reserved zeros, so moving a field in the table moves it in the gateware, the host and the C++ headers.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Value

from contract import wire


def field(word, f: wire.Field) -> Value:
    """Field `f` of a word (a 64-bit Value): signed fields as signed values."""
    v = Value.cast(word)[f.lo:f.lo + f.width]
    return v.as_signed() if f.signed else v


def kind(word) -> Value:
    """The kind field of a word (compare with wire.HEADER, wire.RECORD)."""
    return field(word, wire.KIND)


def pack(layout: wire.Word, **values) -> Value:
    """A whole word of `layout`: every payload field from `values` by name, the kind code, zeros in the
    reserved bits.  A signed value narrower than its field is sign-extended, an unsigned one
    zero-extended; a value wider than its field is an error (the design must size it)."""
    parts = []
    for f in reversed(layout.fields):  # Cat takes the low bits first
        if f is wire.KIND:
            parts.append(Const(layout.kind, f.width))
        elif f.reserved:
            parts.append(Const(0, f.width))
        else:
            if f.name not in values:
                raise KeyError(f"{layout.name}: no value for field {f.name!r}")
            parts.append(_fit(Value.cast(values.pop(f.name)), f))
    if values:
        raise KeyError(f"{layout.name} has no field(s) {', '.join(values)}")
    return Cat(*parts)


def _fit(v: Value, f: wire.Field) -> Value:
    n = len(v)
    if n > f.width:
        raise ValueError(f"a {n}-bit value does not fit the {f.width}-bit field {f.name!r}")
    signed = v.shape().signed
    bits = v.as_unsigned() if signed else v
    if n == f.width:
        return bits
    return Cat(bits, v[-1].replicate(f.width - n) if signed and n else Const(0, f.width - n))
