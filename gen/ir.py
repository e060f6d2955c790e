"""Model file -> design intermediate representation (the generator's only view of the model).

As in hls4ml, the generator never reads weights from anywhere else: `Design.from_model` takes a
loaded `QuantizedModel` and the throughput knobs, checks that the model fits the generator's
assumptions, and derives every constant, width and stream layout the stages need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from contract.config import require_options
from contract.fixedpoint import Fmt
from contract.flags import FLAG_BITS
from contract.modelfile import QuantizedModel, Table
from contract.wire import COORD_BITS, COUNT_BITS, ENERGY_BITS, FORCE_BITS, TAG_BITS, TYPE_BITS

from .widths import overflows


class DesignError(ValueError):
    """The model or the knobs cannot be turned into this pipeline; the message says why."""


@dataclass(frozen=True)
class Knobs:
    """Throughput parameters.

    lanes:    neighbour records processed per cycle in the per-record stages.
    fit_par:  fitting-net outputs produced per cycle (each a 128-long dot product): the MAC array is
              fit_par x n_in multipliers.
    desc_par: columns of the descriptor products (D and dE/dGR) per cycle; each column is 32 products.
    engines:  atom engines (descriptor products + fitting net) working on alternate atoms.
    """

    lanes: int = 1
    fit_par: int = 1
    desc_par: int = 1
    engines: int = 1

    def validate(self, n_hidden: int, m1: int):
        for name in ("lanes", "fit_par", "desc_par", "engines"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise DesignError(f"{name} must be a positive integer, got {v!r}")
        if n_hidden % self.fit_par:
            raise DesignError(f"fit_par={self.fit_par} must divide the fitting width {n_hidden}")
        if m1 % self.desc_par:
            raise DesignError(f"desc_par={self.desc_par} must divide the embedding width {m1}")


@dataclass
class Design:
    qm: QuantizedModel
    knobs: Knobs
    F: dict[str, Fmt] = field(init=False)

    def __post_init__(self):
        qm, k = self.qm, self.knobs
        cfg = qm.config
        self.F = qm.formats
        try:
            require_options(cfg, "rtl")
        except ValueError as e:
            raise DesignError(str(e)) from None
        widths = {len(l.W[0]) for layers in qm.fit for l in layers} | {len(layers[0].W) for layers in qm.fit}
        if len(widths) != 1:
            raise DesignError(f"the generator needs every fitting layer {cfg.descriptor_dim} wide; "
                              f"this model has widths {sorted(widths)}")
        self.n_hidden = widths.pop()
        self.n_layers = len(qm.fit[0])
        if any(len(layers) != self.n_layers for layers in qm.fit):
            raise DesignError("every centre type needs the same number of fitting layers")
        if qm.fit[0][0].resnet or not all(l.resnet for layers in qm.fit for l in layers[1:]):
            raise DesignError("the generator supports DeePMD's layout: no resnet on layer 0, resnet after")
        k.validate(self.n_hidden, cfg.m1)
        if cfg.ntypes > (1 << TYPE_BITS):
            raise DesignError(f"{cfg.ntypes} types exceed the wire format's {TYPE_BITS}-bit type field")
        if sum(cfg.sel) >= (1 << COUNT_BITS):
            raise DesignError(f"sum(sel)={sum(cfg.sel)} exceeds the {COUNT_BITS}-bit count field")
        if self.F["coord"].bits != COORD_BITS or self.F["F"].bits > FORCE_BITS or self.F["E"].bits > ENERGY_BITS:
            raise DesignError(f"wire format needs coord s{COORD_BITS}, F <= {FORCE_BITS} bits and E <= {ENERGY_BITS} bits "
                              f"(model has {self.F['coord'].describe()}, {self.F['F'].describe()}, "
                              f"{self.F['E'].describe()})")
        if self.F["Z"].frac != self.F["A"].frac:
            raise DesignError("activation and pre-activation formats must share fraction bits")
        too_wide = overflows(self)
        if too_wide:
            raise DesignError("the model's formats overflow the pipeline's arithmetic: " + "; ".join(too_wide))

    # ---- sizes ---------------------------------------------------------------------------------------
    @property
    def cfg(self):
        return self.qm.config

    @property
    def sel_total(self) -> int:
        return sum(self.cfg.sel)

    @property
    def u_bits(self) -> int:
        return 2 * (self.F["coord"].bits - 1) + 2  # unsigned sum of three squares of s18

    @property
    def record_fifo_beats(self) -> int:
        """Records buffered between the forward and backward passes: three atoms in flight."""
        return (2 + self.knobs.engines) * (math.ceil(self.sel_total / self.knobs.lanes) + 1)

    # ---- stream layouts -----------------------------------------------------------------------------
    def atom_layout(self):
        return data.StructLayout({"tag": TAG_BITS, "ctype": TYPE_BITS, "n": COUNT_BITS, "flags": FLAG_BITS})

    def beat_layout(self, slot):
        """A beat of `lanes` slots of one atom; `last` ends the atom (atom info valid on every beat)."""
        return data.StructLayout({"slots": data.ArrayLayout(slot, self.knobs.lanes), "last": 1,
                                  "atom": self.atom_layout()})

    def fmt_shape(self, name: str):
        f = self.F[name]
        return signed(f.bits) if f.signed else unsigned(f.bits)

    # ---- constants ----------------------------------------------------------------------------------
    def table_rows(self, tabs: list[Table]) -> tuple[list[int], int]:
        """Coefficient ROM rows for tables stacked by type: row = type * nseg + segment.

        Each row packs (a, b, c) per channel, channel-major, LSB first, each coef_fmt.bits wide.
        """
        bits = tabs[0].coef_fmt.bits
        nseg = max(t.nseg for t in tabs)
        rows = []
        mask = (1 << bits) - 1
        for t in tabs:
            coef = np.zeros((nseg, t.nch, 3), dtype=np.int64)
            coef[: t.nseg] = t.coef
            for seg in range(nseg):
                v = 0
                for i, c in enumerate(coef[seg].reshape(-1)):
                    v |= (int(c) & mask) << (i * bits)
                rows.append(v)
        return rows, nseg
