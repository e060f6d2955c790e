"""Float model: forces and virial are exact derivatives of its energy (finite differences)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.network import evaluate, tanh4
from model.neighbors import edges
from support import random_structure, tiny_model


def energy(model, pos, cell, types) -> float:
    e = edges(pos, cell, True, model.cfg.rcut)
    with torch.no_grad():
        return float(model(torch.tensor(e.vec), torch.tensor(e.i), torch.tensor(types)[e.j], torch.tensor(types)).sum())


def energy_forces_virial(model, pos, cell, types):
    e = edges(pos, cell, True, model.cfg.rcut)
    E, F, V, _ = evaluate(model, torch.tensor(e.vec), torch.tensor(e.i), torch.tensor(e.j), torch.tensor(types),
                          torch.zeros(len(types), dtype=torch.long), 1)
    return float(E[0]), F.numpy(), V[0].numpy()


@pytest.mark.parametrize("seed", [0, 1])
def test_forces_are_minus_energy_gradient(seed):
    model, _ = tiny_model()
    pos, cell, types = random_structure(natoms=24, box=8.5, seed=100 + seed)
    _, F, _ = energy_forces_virial(model, pos, cell, types)
    h = 1e-4
    rng = np.random.default_rng(seed)
    fd = np.zeros_like(F)
    atoms = rng.choice(len(pos), size=6, replace=False)
    for a in atoms:
        for d in range(3):
            p = pos.copy()
            p[a, d] += h
            ep = energy(model, p, cell, types)
            p[a, d] -= 2 * h
            em = energy(model, p, cell, types)
            fd[a, d] = -(ep - em) / (2 * h)
    err = np.abs(fd[atoms] - F[atoms]).max() / np.abs(F[atoms]).max()
    assert err < 1e-6, err


def test_virial_is_minus_strain_derivative():
    model, _ = tiny_model()
    pos, cell, types = random_structure(natoms=24, box=8.5, seed=7)
    _, _, V = energy_forces_virial(model, pos, cell, types)
    h = 1e-5
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = h
            ep = energy(model, pos @ (np.eye(3) + eps), cell @ (np.eye(3) + eps), types)
            em = energy(model, pos @ (np.eye(3) - eps), cell @ (np.eye(3) - eps), types)
            fd[a, b] = -(ep - em) / (2 * h)
    assert np.abs(fd - V).max() / np.abs(V).max() < 1e-6


def test_energy_is_extensive_and_translation_invariant():
    model, _ = tiny_model()
    pos, cell, types = random_structure(natoms=20, box=8.0, seed=9)
    e1, f1, _ = energy_forces_virial(model, pos, cell, types)
    e2, f2, _ = energy_forces_virial(model, pos + np.array([0.3, -1.7, 2.9]), cell, types)
    assert abs(e1 - e2) < 1e-9 * abs(e1)
    big = np.concatenate([pos, pos + cell[0]])
    e3, _, _ = energy_forces_virial(model, big, cell * np.array([[2], [1], [1]]), np.concatenate([types, types]))
    assert abs(e3 - 2 * e1) < 1e-9 * abs(e1)
    assert np.abs(f1.sum(axis=0)).max() < 1e-10


def test_tanh4_shape():
    x = torch.linspace(-3, 3, 601, dtype=torch.float64, requires_grad=True)
    y = tanh4(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(y[x.detach() >= 2], torch.ones(1, dtype=torch.float64))
    assert torch.allclose(-y, tanh4(-x))
    assert abs(float(g[300]) - 1.0) < 1e-12  # phi'(0) = 1
    assert float(g[x.detach() >= 2].abs().max()) == 0.0
