"""Frames -> edge batches for the float model (neighbour search per frame, concatenated atoms)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .neighbors import edges


@dataclass
class Batch:
    rij: torch.Tensor  # (E, 3)
    center: torch.Tensor  # (E,)
    neighbor: torch.Tensor  # (E,)
    atype: torch.Tensor  # (N,)
    frame_of_atom: torch.Tensor  # (N,)
    natoms: torch.Tensor  # (F,) atoms per frame
    nframes: int
    energy: torch.Tensor | None = None  # (F,)
    forces: torch.Tensor | None = None  # (N, 3)
    virial: torch.Tensor | None = None  # (F, 3, 3)


def make_batch(items, rcut: float) -> Batch:
    """items: iterable of (System, frame index).  Systems must already use the model's type map."""
    rij, center, neighbor, atype, fidx, nat = [], [], [], [], [], []
    energy, forces, virial = [], [], []
    offset = 0
    items = list(items)
    has_e = all(s.energies is not None for s, _ in items)
    has_f = all(s.forces is not None for s, _ in items)
    has_v = all(s.virials is not None for s, _ in items)
    for k, (system, f) in enumerate(items):
        e = edges(system.coords[f], system.cells[f], system.pbc, rcut)
        rij.append(e.vec)
        center.append(e.i + offset)
        neighbor.append(e.j + offset)
        atype.append(system.types)
        fidx.append(np.full(system.natoms, k))
        nat.append(system.natoms)
        if has_e:
            energy.append(system.energies[f])
        if has_f:
            forces.append(system.forces[f])
        if has_v:
            virial.append(system.virials[f])
        offset += system.natoms
    t = lambda a, dt=torch.float64: torch.as_tensor(np.concatenate(a) if isinstance(a, list) else a, dtype=dt)
    return Batch(
        rij=t(rij), center=t(center, torch.long), neighbor=t(neighbor, torch.long), atype=t(atype, torch.long),
        frame_of_atom=t(fidx, torch.long), natoms=torch.as_tensor(nat, dtype=torch.float64), nframes=len(items),
        energy=torch.as_tensor(np.array(energy), dtype=torch.float64) if has_e else None,
        forces=t(forces) if has_f else None,
        virial=torch.as_tensor(np.array(virial), dtype=torch.float64) if has_v else None,
    )
