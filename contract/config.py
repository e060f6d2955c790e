"""Hyper-parameters of the DeePMD-style potential (se_a descriptor + per-type fitting nets).

One `ModelConfig` describes the architecture; it travels inside every checkpoint and model file, so a
model can always be rebuilt from its file alone.  Defaults follow the seed group's GeTe model
(rcut 7 Å, rcut_smth 2 Å, sel [60, 60], embedding 1x8x16x32, M2 = 4, fitting 3x128).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)
