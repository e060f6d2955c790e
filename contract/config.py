"""Hyper-parameters of the DeePMD-style potential (se_a descriptor + per-type fitting nets).

One `ModelConfig` describes the architecture; it travels inside every checkpoint and model file, so a
model can always be rebuilt from its file alone.  Defaults follow the seed group's GeTe model
(rcut 7 Å, rcut_smth 2 Å, sel [60, 60], embedding 1x8x16x32, M2 = 4, fitting 3x128).

The last fields are *options* (`OPTIONS`): numerics that DeePMD-kit models imported with
`python -m model import` need and our own models do not.  Each is off by default, and an option at its
default is left out of `to_dict`, so that a model that does not use it has exactly the header (and
content hash) it had before the option existed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

#: Fitting-net activations by name: "tanh4" is NVNMD's polynomial, what the hardware computes;
#: "tanh" is DeePMD-kit's default, which imported float models use (model/network.py maps the names
#: to functions).
FIT_ACTIVATIONS = ("tanh4", "tanh")


@dataclass
class ModelConfig:
    type_map: list[str] = field(default_factory=lambda: ["Ge", "Te"])
    rcut: float = 7.0
    rcut_smth: float = 2.0
    #: Maximum neighbours of each type inside rcut.  More is an error, never a truncation.
    sel: list[int] = field(default_factory=lambda: [60, 60])
    embed_neurons: list[int] = field(default_factory=lambda: [8, 16, 32])
    axis_neurons: int = 4
    fit_neurons: list[int] = field(default_factory=lambda: [128, 128, 128])
    #: Smallest pair distance the hardware tables cover (Å); set from the training data.
    r_min: float = 1.0
    #: Embedding-net input is (s - s_mean) / s_std.  The hardware never sees this: the G(s)
    #: tables are built over raw s, so this only conditions training.
    s_mean: float = 0.0
    s_std: float = 1.0
    #: GR = 2**-norm_shift * sum_j R_j^T G_j  (NVNMD's 1/NIX: a power of two >= sum(sel)/1.5).
    norm_shift: int | None = None
    #: D = 2**desc_shift * GR^T GR[:, :M2]: a power-of-two descriptor normalization set from data.
    desc_shift: int = 0
    # ---- options (OPTIONS: off by default, left out of to_dict when off) ----
    #: DeePMD's per-centre-type normalisation of the environment: None, or {"s_avg": [...],
    #: "s_std": [...], "r_std": [...]}, one number per *centre* type t_i.  Then
    #: R_j = ((s - s_avg[t_i]) / s_std[t_i], h dx / r_std[t_i], h dy / r_std[t_i], h dz / r_std[t_i])
    #: and the embedding input is R_j0 itself (s_mean / s_std must stay 0 / 1: one normalisation).
    env_norm: dict | None = None
    #: DeePMD's padding slots: an atom's environment always has sel[t] rows of each neighbour type t;
    #: the sel[t] - n_t(i) missing ones are the normalised zero row (-s_avg[t_i] / s_std[t_i], 0, 0, 0),
    #: embedded by embed[t] like any other row, so they add a constant per (t_i, t) to GR's first row.
    #: Needs env_norm (without it the zero row adds nothing).
    pad_slots: bool = False
    #: Fitting-net activation, one of FIT_ACTIVATIONS.
    fit_activation: str = "tanh4"
    #: NVNMD's banded descriptor: D[a, k] = T[a, (a + k) mod M1] of T = GR^T GR (k < M2) instead of
    #: DeePMD's T[a, k] (`descriptor_columns`).
    desc_band: bool = False
    #: The embedding given as tables, not as nets (NVNMD's hardware files hold only these): None, or
    #: {"x0": x0, "ranges": [[dx, n], ...]}: per neighbour type, piecewise cubic G(x) on ranges that all
    #: start at x0, range k with n_k segments of dx_k; the first range holding x is used, else the last
    #: one, clamped to its ends.  The coefficients are the float model's state (network.TableEmbedding);
    #: embed_neurons is then [M1].  The quantized pipeline sees only its own G tables, made from these as
    #: from a net, so every implementation computes a model with this option.
    embed_table: dict | None = None

    def __post_init__(self):
        if self.norm_shift is None:
            self.norm_shift = max(0, math.ceil(math.log2(sum(self.sel) / 1.5)))
        self.validate()

    @property
    def ntypes(self) -> int:
        return len(self.type_map)

    @property
    def m1(self) -> int:
        return self.embed_neurons[-1]

    @property
    def descriptor_dim(self) -> int:
        return self.m1 * self.axis_neurons

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if not self.type_map or len(set(self.type_map)) != len(self.type_map):
            raise ValueError(f"type_map must be non-empty and unique, got {self.type_map}")
        if len(self.sel) != len(self.type_map):
            raise ValueError(f"sel has {len(self.sel)} entries but type_map has {len(self.type_map)}")
        if any(int(s) <= 0 for s in self.sel):
            raise ValueError(f"sel entries must be positive, got {self.sel}")
        if not (0.0 < self.rcut_smth < self.rcut):
            raise ValueError(f"need 0 < rcut_smth < rcut, got rcut_smth={self.rcut_smth} rcut={self.rcut}")
        if not (0.0 < self.r_min < self.rcut_smth):
            raise ValueError(f"need 0 < r_min < rcut_smth, got r_min={self.r_min}")
        if self.axis_neurons > self.m1:
            raise ValueError(f"axis_neurons {self.axis_neurons} > embedding width {self.m1}")
        if self.s_std <= 0:
            raise ValueError(f"s_std must be positive, got {self.s_std}")
        if self.env_norm is not None:
            keys = {"s_avg", "s_std", "r_std"}
            if not isinstance(self.env_norm, dict) or set(self.env_norm) != keys:
                raise ValueError(f"env_norm must be None or a dict with exactly the keys {sorted(keys)}, "
                                 f"got {self.env_norm!r}")
            for k in sorted(keys):
                v = self.env_norm[k]
                if not isinstance(v, list) or len(v) != self.ntypes or not all(
                        isinstance(x, (int, float)) and math.isfinite(x) for x in v):
                    raise ValueError(f"env_norm[{k!r}] must list one finite number per type "
                                     f"({self.ntypes}), got {v!r}")
            for k in ("s_std", "r_std"):
                if any(x <= 0 for x in self.env_norm[k]):
                    raise ValueError(f"env_norm[{k!r}] entries must be positive, got {self.env_norm[k]}")
            if (self.s_mean, self.s_std) != (0.0, 1.0):
                raise ValueError(f"env_norm normalises the embedding input itself: s_mean / s_std must be 0 / 1, "
                                 f"got {self.s_mean} / {self.s_std}")
        if self.pad_slots and self.env_norm is None:
            raise ValueError("pad_slots needs env_norm: without it a padding slot's row is zero and adds nothing")
        if self.embed_table is not None:
            et = self.embed_table
            if not isinstance(et, dict) or set(et) != {"x0", "ranges"}:
                raise ValueError(f"embed_table must be None or a dict with exactly the keys ['ranges', 'x0'], got {et!r}")
            if not isinstance(et["x0"], (int, float)) or not math.isfinite(et["x0"]):
                raise ValueError(f"embed_table['x0'] must be a finite number, got {et['x0']!r}")
            rs = et["ranges"]
            if not isinstance(rs, list) or not rs or not all(
                    isinstance(r, list) and len(r) == 2 and isinstance(r[0], (int, float)) and r[0] > 0
                    and isinstance(r[1], int) and r[1] > 0 for r in rs):
                raise ValueError(f"embed_table['ranges'] must list [dx > 0, segments > 0] pairs, got {rs!r}")
            if len(self.embed_neurons) != 1:
                raise ValueError(f"embed_table: the embedding is a table of width M1, so embed_neurons must be [M1], "
                                 f"got {self.embed_neurons}")
        if self.fit_activation not in FIT_ACTIVATIONS:
            raise ValueError(f"fit_activation must be one of {list(FIT_ACTIVATIONS)}, got {self.fit_activation!r}")

    def descriptor_columns(self) -> list[list[int]]:
        """D[a, k] = T[a, columns[a][k]] (a < M1, k < M2): k itself, or with desc_band (a + k) mod M1."""
        m1, m2 = self.m1, self.axis_neurons
        return [[(a + k) % m1 if self.desc_band else k for k in range(m2)] for a in range(m1)]

    def options(self) -> dict:
        """The options (OPTIONS) this configuration turns on, with their values."""
        d = asdict(self)
        return {k: d[k] for k, off in OPTIONS.items() if d[k] != off}

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if not (k in OPTIONS and v == OPTIONS[k])}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


#: The options and their "off" values (the dataclass defaults): see the module docstring.
OPTIONS = {f.name: f.default for f in fields(ModelConfig) if f.name in ("env_norm", "pad_slots", "fit_activation",
                                                                           "desc_band", "embed_table")}
#: The options each implementation of the quantized pipeline computes.  The NumPy reference defines
#: them (model/reference.py); an implementation without an option refuses a model that turns it on
#: (`require_options`) rather than computing that model without it.
IMPLEMENTED_OPTIONS: dict[str, frozenset[str]] = {
    "reference": frozenset(OPTIONS),
    "rtl": frozenset(OPTIONS),  # gen/: the generated pipeline (rtl and xdma devices)
    # gen/, Knobs(arch="dataflow"): its fitting stages compute tanh4 only, and neither env_norm, pad_slots
    # nor desc_band has been verified through it (embed_table: it sees only the G tables)
    "rtl-dataflow": frozenset({"embed_table"}),
    "cpu": frozenset(OPTIONS),  # host/native: the cpu device (cpu.cpp's kernels)
}


def require_options(cfg: ModelConfig, implementation: str) -> None:
    """Raise ValueError naming each option `cfg` turns on that `implementation` (a key of
    IMPLEMENTED_OPTIONS) does not compute."""
    missing = {k: v for k, v in cfg.options().items() if k not in IMPLEMENTED_OPTIONS[implementation]}
    if missing:
        raise ValueError(f"the {implementation} implementation does not compute the model option(s) "
                         + ", ".join(k if isinstance(v, dict) else f"{k}={v!r}" for k, v in missing.items())
                         + " (contract.config.IMPLEMENTED_OPTIONS)")


def require_quantizable(cfg: ModelConfig) -> None:
    """A quantized model needs its options in the reference, which defines its integers."""
    require_options(cfg, "reference")
