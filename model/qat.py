"""Quantization-aware fine-tuning: the float model with the hardware's rounding in its forward pass.

Every tensor the hardware stores (R, G, GR, D, weights, pre-activations, activations, energy) is
rounded to its fixed-point format in the forward pass with a straight-through estimator (identity
gradient inside the format's range, zero outside), so the fitting nets learn weights that work
after rounding.  The embedding nets stay frozen: the hardware replaces them by tables built after
fine-tuning, exactly as NVNMD's second stage does.
"""

from __future__ import annotations

import math

import torch

from contract.fixedpoint import Fmt
from .network import ACTIVATIONS, DeepPot, descriptor_product


def fake_quant(x: torch.Tensor, fmt: Fmt) -> torch.Tensor:
    """Round half up to fmt (saturating); straight-through gradient inside the range."""
    scale = 2.0 ** fmt.frac
    lo, hi = fmt.lo / scale, fmt.hi / scale
    xc = torch.clamp(x, lo, hi)
    q = torch.floor(xc * scale + 0.5) / scale
    return xc + (q - xc).detach()


def weight_frac(w: torch.Tensor, bits: int) -> int:
    m = float(w.detach().abs().max())
    f = bits - 1 - (math.floor(math.log2(m)) + 1) if m > 0 else bits - 1
    if math.floor(m * 2.0 ** f + 0.5) > 2 ** (bits - 1) - 1:
        f -= 1
    return f


class QATDeepPot(DeepPot):
    """DeepPot whose forward pass rounds like the hardware (formats from the quantized model)."""

    def __init__(self, base: DeepPot, formats: dict[str, Fmt]):
        super().__init__(base.cfg)
        self.load_state_dict(base.state_dict())
        self.formats = formats
        for p in self.embed.parameters():
            p.requires_grad_(False)

    def pair_features(self, rij, tj, ti=None):
        R, G = super().pair_features(rij, tj, ti)
        return fake_quant(R, self.formats["R"]), fake_quant(G, self.formats["G"])

    def descriptor(self, R, G, center, natoms, pad=None):
        cfg, F = self.cfg, self.formats
        outer = (R[:, :, None] * G[:, None, :]).reshape(len(R), -1)
        GR = outer.new_zeros((natoms, 4 * cfg.m1)).index_add(0, center, outer).reshape(natoms, 4, cfg.m1)
        if pad is not None:
            GR = GR + pad
        GR = fake_quant(GR * 2.0 ** (-cfg.norm_shift), F["GR"])
        return fake_quant(descriptor_product(GR, cfg), F["D"])

    def atomic_energy(self, D, atype):
        F = self.formats
        wbits = F["W"].bits
        E = D.new_zeros(len(D))
        for t in range(self.cfg.ntypes):
            m = atype == t
            if not m.any():
                continue
            net, x = self.fit[t], D[m]
            for k, lin in enumerate(net.hidden):
                W = fake_quant(lin.weight, Fmt(wbits, weight_frac(lin.weight, wbits)))
                z = fake_quant(x @ W.T + fake_quant(lin.bias, F["Z"]), F["Z"])
                y = fake_quant(ACTIVATIONS[self.cfg.fit_activation](z), F["A"])
                x = x + y if net.resnet(k) else y
            w = fake_quant(net.out.weight, Fmt(wbits, weight_frac(net.out.weight, wbits)))
            e = fake_quant((x @ w.T).squeeze(-1), F["E"]) + net.out.bias + self.bias_atom_e[t]
            E = E.index_put((m.nonzero().squeeze(-1),), e)
        return E

    def to_float(self) -> DeepPot:
        out = DeepPot(self.cfg)
        out.load_state_dict(self.state_dict())
        return out
