"""Neighbour lists: who is inside rcut of whom, as edge lists and as per-atom padded blocks.

The float model consumes *edges* (centre i, neighbour j, periodic image shift) so that autograd can
follow every pair vector.  The fixed-point reference and the hardware consume *per-atom blocks*:
for each centre atom its neighbours' types and displacement vectors, at most `sum(sel)` of them.

Neighbour search uses `vesin` (a maintained, vectorized cell-list library).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from vesin import NeighborList


class NeighborOverflowError(ValueError):
    """A centre atom has more neighbours of some type than `sel` allows."""


@dataclass
class Edges:
    """Full (both directions) neighbour list of one frame, sorted by centre atom."""

    i: np.ndarray  # (E,) centre atom index
    j: np.ndarray  # (E,) neighbour atom index
    shift: np.ndarray  # (E, 3) integer cell shift: r_ij = x_j - x_i + shift @ cell
    vec: np.ndarray  # (E, 3) float64 r_ij in Å


def edges(positions: np.ndarray, cell: np.ndarray, pbc: bool, rcut: float) -> Edges:
    """All ordered pairs (i, j), i != j (or distinct images), with |r_ij| < rcut."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    if pbc:
        # vesin wants points inside the box for its cell list to be efficient; shifts stay valid
        # because we recompute r_ij from the *original* positions below.
        frac = positions @ np.linalg.inv(cell)
        wrap = np.floor(frac)
        inside = (frac - wrap) @ cell
    else:
        inside, wrap = positions, np.zeros_like(positions)
        cell = np.zeros((3, 3))
    nl = NeighborList(cutoff=float(rcut), full_list=True)
    i, j, S = nl.compute(points=inside, box=cell, periodic=bool(pbc), quantities="ijS")
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    S = S.astype(np.int64)
    if pbc:
        # Translate the shift from wrapped to original coordinates.
        S = S - (wrap[j] - wrap[i]).astype(np.int64)
    order = np.lexsort((j, i))
    i, j, S = i[order], j[order], S[order]
    vec = positions[j] - positions[i] + S @ cell
    keep = np.einsum("ij,ij->i", vec, vec) < rcut * rcut
    return Edges(i=i[keep], j=j[keep], shift=S[keep], vec=vec[keep])


def count_by_type(e: Edges, types: np.ndarray, natoms: int, ntypes: int) -> np.ndarray:
    """(natoms, ntypes) number of neighbours of each type per centre atom."""
    counts = np.zeros((natoms, ntypes), dtype=np.int64)
    np.add.at(counts, (e.i, types[e.j]), 1)
    return counts


def check_sel(counts: np.ndarray, sel, type_map, where: str = "", names=None) -> None:
    """Raise NeighborOverflowError naming the first atom whose neighbour count exceeds sel.
    `names[row]` is how row `row` of `counts` is called in the message (default: the row number)."""
    sel = np.asarray(sel)
    over = counts > sel[None, :]
    if over.any():
        a, t = np.argwhere(over)[0]
        n_bad = int(over.any(axis=1).sum())
        raise NeighborOverflowError(
            f"{where}atom {a if names is None else names[a]} has {counts[a, t]} neighbours of type {type_map[t]} inside rcut, "
            f"more than sel[{t}]={sel[t]} ({n_bad} atom(s) affected); the hardware holds at most sel "
            "neighbours per type and never truncates: increase sel and re-export the model")


@dataclass
class NeighborBlocks:
    """Per-atom padded neighbour blocks: the reference's (and the hardware's) input."""

    center_type: np.ndarray  # (N,) int
    nbr_type: np.ndarray  # (N, M) int, -1 for padding
    nbr_vec: np.ndarray  # (N, M, 3) float64, r_ij (0 for padding)
    nbr_index: np.ndarray  # (N, M) int64 neighbour atom index, -1 for padding
    count: np.ndarray  # (N,) neighbours per atom


def blocks(e: Edges, types: np.ndarray, natoms: int, width: int | None = None) -> NeighborBlocks:
    """Scatter a sorted edge list into (natoms, width) blocks without a Python loop per atom."""
    count = np.bincount(e.i, minlength=natoms)
    m = int(count.max()) if width is None and len(count) else int(width or 0)
    if len(count) and count.max() > m:
        raise NeighborOverflowError(f"atom {int(count.argmax())} has {int(count.max())} neighbours > block width {m}")
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    slot = np.arange(len(e.i)) - start[e.i]
    nbr_type = np.full((natoms, m), -1, dtype=np.int64)
    nbr_index = np.full((natoms, m), -1, dtype=np.int64)
    nbr_vec = np.zeros((natoms, m, 3))
    nbr_type[e.i, slot] = types[e.j]
    nbr_index[e.i, slot] = e.j
    nbr_vec[e.i, slot] = e.vec
    return NeighborBlocks(center_type=np.asarray(types, dtype=np.int64), nbr_type=nbr_type,
                          nbr_vec=nbr_vec, nbr_index=nbr_index, count=count)
