"""Widths of the products and sums the stages build, derived from the model's formats.

Every product and sum in the pipeline is exact: a register that holds one is as wide as the largest
value its operands' formats allow (a signed a-bit by b-bit product needs a + b bits; a sum of k
signed p-bit terms needs p + ceil(log2 k) bits).  The reference (model.reference, with
contract.fixedpoint) computes the same products and sums in int64, so no value may need more than
INT_BITS; two stages keep fixed-width accumulators (DESCRIPTOR_ACC_BITS, DESCRIPTOR_GRAD_ACC_BITS).
`overflows(design)` lists every product or accumulator a model's formats would overflow, naming the
formats and widths; gen.ir.Design raises DesignError with that list, before anything is elaborated.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the reference's integers (NumPy int64): the widest exact value there is something to compare with
INT_BITS = 64
#: DescriptorAccumulator: sum over an atom's records of R x G
DESCRIPTOR_ACC_BITS = 48
#: DescriptorGradient: sum over M1 + M2 products GR x dD (with desc_band 2 M2 <= M1 + M2: the bound holds)
DESCRIPTOR_GRAD_ACC_BITS = 64
#: products summed per partial sum in the fitting MAC array (one register stage of adder trees)
FIT_GROUP = 16


def product_bits(a_bits: int, b_bits: int) -> int:
    """Signed width of any product of a signed a_bits and a signed b_bits value."""
    return a_bits + b_bits


def sum_bits(term_bits: int, terms: int) -> int:
    """Signed width that holds any sum of `terms` signed values of term_bits each."""
    return term_bits + max(terms - 1, 0).bit_length()


@dataclass(frozen=True, kw_only=True)
class FittingWidths:
    """The fitting engine's MAC array and output units (gen/stages/atom_engine.py, FittingEngine).

    operand: the vector element a MAC multiplies (layer input D or A, or a delta), as wide as the
             widest of those formats; weight: W.
    product: operand x weight;  partial: a sum of `group` products;  dot: the n_hidden-term dot
    product (the accumulator);  gradient: phi'(z) x g (Z x GA), the backward pass's delta and seed.
    """

    operand: int
    weight: int
    product: int
    group: int
    partial: int
    dot: int
    gradient: int

    @classmethod
    def of(cls, formats: dict, n_hidden: int) -> FittingWidths:
        operand = max(formats[k].bits for k in ("D", "A", "DELTA"))
        weight = formats["W"].bits
        product = product_bits(operand, weight)
        group = min(FIT_GROUP, n_hidden)
        return cls(operand=operand, weight=weight, product=product, group=group,
                   partial=sum_bits(product, group), dot=sum_bits(product, n_hidden),
                   gradient=product_bits(formats["Z"].bits, formats["GA"].bits))


def overflows(design) -> list[str]:
    """Every product or accumulator of the pipeline that `design`'s formats would overflow, as
    "what: formats -> N bits, more than the limit's M (why)"; empty when everything fits."""
    F, cfg = design.F, design.cfg
    fw = FittingWidths.of(F, design.n_hidden)
    operand = "/".join(f"{k} {F[k].describe()}" for k in ("D", "A", "DELTA") if F[k].bits == fw.operand)
    W, Z, GA = (F[k].describe() for k in ("W", "Z", "GA"))
    checks = [
        (f"fitting product ({operand}) x W {W}", fw.product, INT_BITS, "the reference's int64"),
        (f"fitting dot product of {design.n_hidden} terms ({operand}) x W {W}", fw.dot, INT_BITS,
         "the reference's int64"),
        (f"fitting gradient product Z {Z} x GA {GA}", fw.gradient, INT_BITS, "the reference's int64"),
        (f"descriptor accumulator: {design.sel_total} records of R {F['R'].describe()} x G {F['G'].describe()}",
         sum_bits(product_bits(F["R"].bits, F["G"].bits), design.sel_total), DESCRIPTOR_ACC_BITS,
         "DescriptorAccumulator's accumulator"),
        (f"descriptor gradient: {cfg.m1 + cfg.axis_neurons} products GR {F['GR'].describe()} x dD {F['dD'].describe()}",
         sum_bits(product_bits(F["GR"].bits, F["dD"].bits), cfg.m1 + cfg.axis_neurons),
         DESCRIPTOR_GRAD_ACC_BITS, "DescriptorGradient's accumulator"),
    ]
    return [f"{what} needs {bits} bits, more than the {limit} of {why}" for what, bits, limit, why in checks
            if bits > limit]
