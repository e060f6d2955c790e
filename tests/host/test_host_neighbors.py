"""host.neighbors: chunked cell-list neighbour lists equal the whole-system list (model.neighbors,
vesin) pair for pair, for every chunk size, cell shape and boundary, and bad boxes are named."""

from __future__ import annotations

import numpy as np
import pytest

from host.neighbors import NeighborChunks, StructureError
from model.neighbors import edges


def pairs_of(nc: NeighborChunks) -> set:
    out = set()
    for ch in nc:
        for a, b, s in zip(ch.centers[ch.edges.i], ch.edges.j, ch.edges.shift):
            out.add((int(a), int(b), tuple(int(x) for x in s)))
    return out


def reference_pairs(pos, cell, pbc, rcut) -> set:
    e = edges(pos, cell, pbc, rcut)
    return {(int(a), int(b), tuple(int(x) for x in s)) for a, b, s in zip(e.i, e.j, e.shift)}


CELLS = {
    "orthorhombic": np.diag([20.0, 22.0, 25.0]),
    "triclinic": np.array([[20.0, 0, 0], [5.0, 18.0, 0], [3.0, 4.0, 21.0]]),
    "shorter-than-rcut": np.array([[6.0, 0, 0], [1.0, 7.0, 0], [0.5, 0.5, 8.0]]),
}


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
@pytest.mark.parametrize("shape", list(CELLS))
@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed{s}")
def test_periodic_equals_whole_system(shape, chunk, seed):
    rng = np.random.default_rng(seed)
    cell = CELLS[shape]
    n = 12 if shape == "shorter-than-rcut" else 250
    pos = rng.uniform(-0.7, 1.7, (n, 3)) @ cell  # atoms outside the cell are wrapped, not lost
    rcut = 7.0 if shape == "shorter-than-rcut" else 5.0
    nc = NeighborChunks(pos, cell, True, rcut, np.zeros(n, int), chunk_atoms=chunk)
    assert pairs_of(nc) == reference_pairs(pos, cell, True, rcut)


def test_open_cluster_equals_whole_system():
    pos = np.random.default_rng(3).uniform(0, 15, (200, 3))
    nc = NeighborChunks(pos, None, False, 5.0, np.zeros(200, int), chunk_atoms=33)
    assert pairs_of(nc) == reference_pairs(pos, np.zeros((3, 3)), False, 5.0)


def test_mixed_boundaries_slab():
    """Periodic in x and y only: equals the fully periodic list of the same atoms in a cell padded
    with vacuum along z (no image along z can be within rcut)."""
    rng = np.random.default_rng(4)
    cell = np.diag([15.0, 16.0, 14.0])
    pos = rng.uniform(0, 1, (150, 3)) @ cell
    got = pairs_of(NeighborChunks(pos, cell, [True, True, False], 5.0, np.zeros(150, int), chunk_atoms=20))
    padded = cell.copy()
    padded[2, 2] += 20.0
    assert got == reference_pairs(pos, padded, True, 5.0)


def test_atom_far_outside_open_box_is_named():
    cell = np.diag([10.0, 10.0, 10.0])
    pos = np.random.default_rng(5).uniform(1, 9, (20, 3))
    pos[13, 2] = 60.0
    with pytest.raises(StructureError, match=r"atom 13 .* outside the non-periodic box along cell vector 2"):
        NeighborChunks(pos, cell, [True, True, False], 5.0, np.zeros(20, int))


def test_non_finite_position_is_named():
    pos = np.zeros((4, 3))
    pos[2, 0] = np.nan
    with pytest.raises(StructureError, match="atom 2"):
        NeighborChunks(pos, np.eye(3) * 10, True, 5.0, np.zeros(4, int))


def test_periodic_with_singular_cell_is_an_error():
    with pytest.raises(StructureError, match="singular"):
        NeighborChunks(np.zeros((2, 3)), np.zeros((3, 3)), True, 5.0, np.zeros(2, int))
