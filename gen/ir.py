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


#: the per-atom architectures: `engines` replicated atom engines (one MAC array swept over every
#: fitting layer, weights per engine); `dataflow` one stage per fitting layer and direction, weights
#: stored once, atoms streaming through (gen/stages/dataflow.py)
ARCHES = ("engines", "dataflow")
#: desc_rows values: the divisors of GR's 4 rows
DESC_ROWS = (1, 2, 4)


@dataclass(frozen=True)
class Knobs:
    """Throughput parameters.

    lanes:    neighbour records processed per cycle in the per-record stages.
    fit_par:  fitting-net outputs produced per cycle (each a 128-long dot product): the MAC array is
              fit_par x n_in multipliers.  (arch "engines")
    desc_par: columns of the descriptor products (D and dE/dGR) per cycle; each column is 32 products.
    desc_rows: rows of GR (of its 4) in each cycle's columns: 4 (default) or 2, 1 to fold the
              descriptor products further (desc_par x desc_rows x M2 products, 4/desc_rows times the steps).
    engines:  atom engines (descriptor products + fitting net) working on alternate atoms.  (arch "engines")
    arch:     "engines" (default) or "dataflow" (ARCHES).
    pe, simd: (arch "dataflow") per fitting layer l: output lanes pe[l] and input lanes simd[l] of its
              forward stage, pe[l] x simd[l] multipliers (its backward stage: the same, transposed).
    energy_simd: (arch "dataflow") input lanes of the energy dot product.
    """

    lanes: int = 1
    fit_par: int = 1
    desc_par: int = 1
    engines: int = 1
    desc_rows: int = 4
    arch: str = "engines"
    pe: tuple = ()
    simd: tuple = ()
    energy_simd: int = 1

    def __post_init__(self):
        # lists (from JSON stamps or callers) become tuples, so that knobs stay hashable and comparable
        for name in ("pe", "simd"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))

    @classmethod
    def dataflow(cls, pe, simd, *, lanes=1, desc_par=1, energy_simd=1, n_layers=3, desc_rows=4):
        """Dataflow knobs; pe and simd are one value per fitting layer, or one int for every layer."""
        pe = (pe,) * n_layers if isinstance(pe, int) else tuple(pe)
        simd = (simd,) * n_layers if isinstance(simd, int) else tuple(simd)
        return cls(lanes=lanes, desc_par=desc_par, arch="dataflow", pe=pe, simd=simd, energy_simd=energy_simd,
                   desc_rows=desc_rows)

    def validate(self, n_hidden: int, m1: int, n_layers: int = 3):
        for name in ("lanes", "fit_par", "desc_par", "engines", "energy_simd"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DesignError(f"{name} must be a positive integer, got {v!r}")
        if self.arch not in ARCHES:
            raise DesignError(f"arch must be one of {', '.join(ARCHES)}, got {self.arch!r}")
        if n_hidden % self.fit_par:
            raise DesignError(f"fit_par={self.fit_par} must divide the fitting width {n_hidden}")
        if m1 % self.desc_par:
            raise DesignError(f"desc_par={self.desc_par} must divide the embedding width {m1}")
        if isinstance(self.desc_rows, bool) or self.desc_rows not in DESC_ROWS:
            raise DesignError(f"desc_rows must be one of {', '.join(map(str, DESC_ROWS))} (rows of GR per cycle), "
                              f"got {self.desc_rows!r}")
        if self.arch == "engines":
            if self.pe or self.simd or self.energy_simd != 1:
                raise DesignError("pe, simd and energy_simd are knobs of arch 'dataflow'; this is arch 'engines'")
            return
        if self.fit_par != 1 or self.engines != 1:
            raise DesignError(f"fit_par and engines are knobs of arch 'engines' (got fit_par={self.fit_par}, "
                              f"engines={self.engines}); arch 'dataflow' folds each layer with pe and simd")
        for name in ("pe", "simd"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or len(v) != n_layers:
                raise DesignError(f"{name} must give one value per fitting layer ({n_layers}), got {v!r}")
            for l, x in enumerate(v):
                if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= n_hidden:
                    raise DesignError(f"{name}[{l}]={x!r} must be an integer from 1 to the fitting width {n_hidden}")
        if self.energy_simd > n_hidden:
            raise DesignError(f"energy_simd={self.energy_simd} exceeds the fitting width {n_hidden}")


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
            require_options(cfg, "rtl-dataflow" if k.arch == "dataflow" else "rtl")
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
        k.validate(self.n_hidden, cfg.m1, self.n_layers)
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
        """Records buffered between the forward and backward passes: every atom that can be between
        the fork and PairBackward (engines: one per engine and two more; dataflow: as many as the
        fitting stages can hold, so that the buffer never throttles the chain)."""
        return self.atoms_in_flight * (math.ceil(self.sel_total / self.knobs.lanes) + 1)

    @property
    def atoms_in_flight(self) -> int:
        if self.knobs.arch == "dataflow":
            # 2L + 1 MatVec stages of 4 atoms, the two descriptor stages of 2, and the two record ends
            return 4 * (2 * self.n_layers + 1) + 2 * 2 + 2
        return 2 + self.knobs.engines

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
