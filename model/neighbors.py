"""Neighbour lists: who is inside rcut of whom, as edge lists and as per-atom padded blocks.

The float model consumes *edges* (centre i, neighbour j, periodic image shift) so that autograd can
follow every pair vector.  The fixed-point reference and the hardware consume *per-atom blocks*:
for each centre atom its neighbours' types and displacement vectors, at most `sum(sel)` of them.

Neighbour search uses `vesin` (a maintained, vectorized cell-list library) on a compact basis of the
caller's lattice (`search_basis`: Minkowski-reduced when that needs fewer periodic images), so that a
skewed basis of an ordinary lattice costs what the ordinary one costs; shifts and vectors are always
given in the caller's cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ase.geometry import minkowski_reduce
from vesin import NeighborList

from contract.wire import COUNT_BITS

#: No model accepts more neighbours per atom: the wire format's count field (contract.wire) holds
#: sum(sel) at most.
MAX_NEIGHBORS = (1 << COUNT_BITS) - 1


class NeighborOverflowError(ValueError):
    """A centre atom has more neighbours of some type than `sel` allows."""


class StructureError(ValueError):
    """The structure cannot be evaluated as given (atom outside a non-periodic box, bad cell...)."""


@dataclass
class Edges:
    """Full (both directions) neighbour list of one frame, sorted by centre atom."""

    i: np.ndarray  # (E,) centre atom index
    j: np.ndarray  # (E,) neighbour atom index
    shift: np.ndarray  # (E, 3) integer cell shift: r_ij = x_j - x_i + shift @ cell
    vec: np.ndarray  # (E, 3) float64 r_ij in Å


def cell_text(cell) -> str:
    """A cell on one line, for messages."""
    return str([[float(f"{x:.6g}") for x in row] for row in np.asarray(cell, dtype=np.float64).reshape(3, 3)])


def _image_count(P: np.ndarray, rcut: float, limit: int) -> int:
    """Nonzero lattice vectors n @ P (P: the d periodic basis rows) with |n @ P| < rcut, counted up
    to just past `limit` (the search stops there, so a tiny cell costs no more than an ordinary one).
    Points within a relative 1e-9 of rcut are not counted, so the count never exceeds the truth."""
    d = len(P)
    if d == 0:
        return 0
    rc2 = (rcut * (1 - 1e-9)) ** 2
    # Multiples of one short vector alone may already pass the limit (a thin or tiny cell); counting
    # them first keeps the rows below short.
    for a in P:
        n = 2 * (math.ceil(math.sqrt(rc2 / float(a @ a))) - 1)
        if n > limit:
            return n
    # |n_a| = |L . b_a| < rcut |b_a| with b_a the dual basis (columns of the pseudo-inverse).
    nmax = np.floor(rcut * np.linalg.norm(np.linalg.pinv(P), axis=0)).astype(np.int64)
    order = np.argsort(nmax, kind="stable")
    P, nmax = P[order], nmax[order]
    last = P[-1]
    A = float(last @ last)

    def along_last(V):
        # Integers t with |V + t last|^2 < rc2, per row of V: between the roots of a quadratic.
        b = V @ last
        disc = b * b - A * (np.einsum("ij,ij->i", V, V) - rc2)
        root = np.sqrt(np.maximum(disc, 0.0))
        n = np.ceil((-b + root) / A) - np.floor((-b - root) / A) - 1
        return int(np.where(disc > 0, np.maximum(n, 0), 0).sum())

    if d == 1:
        return along_last(np.zeros((1, 3))) - 1
    inner = np.arange(-nmax[1], nmax[1] + 1)[:, None] * P[1] if d == 3 else np.zeros((1, 3))
    count = -1  # the origin
    # Rows of the outermost index from 0 outwards: a dense lattice passes `limit` in the first rows.
    for n0 in sorted(range(-nmax[0], nmax[0] + 1), key=abs):
        count += along_last(n0 * P[0] + inner)
        if count > limit:
            break
    return count


def search_basis(cell, pbc, rcut: float, max_neighbors: int | None = None,
                 natoms: int = 0) -> tuple[np.ndarray, np.ndarray, bool]:
    """(basis, op, compact): the basis the neighbour search uses for the lattice of `cell`, and the
    integer matrix that maps its image shifts to the caller's: a shift S in `basis` is the lattice
    vector (S @ op) @ cell, for S zero along non-periodic axes.

    The caller's cell is kept (compact False: basis equals the cell, op the identity) unless its
    Minkowski-reduced form (ase.geometry.minkowski_reduce, periodic vectors only) needs at most half
    the periodic images within rcut: a skewed basis of an ordinary lattice then costs what the
    ordinary basis costs, and every other cell is searched exactly as before.  Non-periodic
    vectors are made orthogonal to the periodic ones in that case: the planes bounding the box along
    them stay the same, and the periodic vectors' plane spacing no longer depends on them.

    Raises StructureError naming the cell when it is not finite, singular along periodic axes, or,
    given `max_neighbors`, when no atom could have at most that many neighbours: more periodic
    images of every atom within rcut of itself than that, or (fully periodic, `natoms` atoms) a
    density above (max_neighbors + 1) / (pi/6 rcut^3), which no structure meets whose atoms each have
    at most max_neighbors neighbours (the balls of radius rcut/2 around a maximal set of atoms
    pairwise rcut apart are disjoint, and every atom lies within rcut of one of them).
    """
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    eye = np.eye(3, dtype=np.int64)
    if not np.isfinite(cell).all():
        raise StructureError(f"cell {cell_text(cell)} is not finite")
    if not pbc.any():
        return cell, eye, False
    if abs(np.linalg.det(cell)) < 1e-9:
        raise StructureError(f"periodic along {np.flatnonzero(pbc).tolist()} but the cell {cell_text(cell)} "
                             "is singular")
    try:
        _, op = minkowski_reduce(cell, pbc)
    except RuntimeError:
        # ASE gave up on this basis: search the caller's, as before (the refusals below still bound it).
        op = eye
    op = np.asarray(op, dtype=np.int64)
    basis, compact, red = cell, False, None
    if not (op == eye).all() or not pbc.all():
        red = op.astype(np.float64) @ cell
        if not pbc.all():
            q, _ = np.linalg.qr(red[pbc].T)
            for a in np.flatnonzero(~pbc):
                red[a] = red[a] - q @ (q.T @ red[a])
        if 2 * _images(red, pbc, rcut) <= _images(cell, pbc, rcut):
            basis, compact = red, True
    if not compact:
        op = eye
    if max_neighbors is not None:
        limit = int(max_neighbors)
        # Counted in the reduced basis whichever one the search uses: same lattice, shortest rows.
        n = _image_count((cell if red is None else red)[pbc], rcut, limit)
        if n > limit:
            raise StructureError(
                f"cell {cell_text(cell)} (periodic along {np.flatnonzero(pbc).tolist()}) puts at least {n} "
                f"periodic images of every atom within rcut = {rcut:g} Å of itself: every atom would have more than "
                f"{limit} neighbours, more than any atom may have")
        if pbc.all() and natoms:
            vol = abs(float(np.linalg.det(cell)))
            top = (limit + 1) / (math.pi / 6 * rcut ** 3)
            if natoms / vol > top:
                raise StructureError(
                    f"cell {cell_text(cell)} holds {natoms} atoms in {vol:.4g} Å^3 ({natoms / vol:.4g} atoms/Å^3): "
                    f"denser than any structure in which no atom has more than {limit} neighbours within rcut = {rcut:g} Å "
                    f"(at most {top:.4g} atoms/Å^3)")
    return basis, op, compact


def _images(basis, pbc, rcut) -> float:
    """Periodic image cells a cell list on `basis` visits per atom (the search's cost)."""
    spacing = rcut * np.linalg.norm(np.linalg.inv(basis), axis=0)
    return float(np.prod(np.where(pbc, 2 * np.ceil(spacing) + 1, 1.0)))


def lattice_vectors(shift: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """(E, 3) integer shifts -> (E, 3) lattice vectors S0*c0 + S1*c1 + S2*c2, added left to right (no
    matrix product, whose order of operations BLAS chooses): r_ij = (x_j - x_i) + that, the bits the
    native host core (host/native/cells.cpp) computes too."""
    s = shift.astype(np.float64)
    return s[:, 0:1] * cell[0] + s[:, 1:2] * cell[1] + s[:, 2:3] * cell[2]


def squared_norm(vec: np.ndarray) -> np.ndarray:
    """|r|^2 of (E, 3) vectors as (x*x + y*y) + z*z, the order of the native core's test."""
    return vec[:, 0] * vec[:, 0] + vec[:, 1] * vec[:, 1] + vec[:, 2] * vec[:, 2]


def edges(positions: np.ndarray, cell: np.ndarray, pbc: bool, rcut: float,
          max_neighbors: int | None = None) -> Edges:
    """All ordered pairs (i, j), i != j (or distinct images), with |r_ij| < rcut, sorted by (i, j).

    r_ij = x_j - x_i + shift @ cell in the caller's cell, whatever basis the search used
    (`search_basis`).  Non-finite positions or cell, or a singular periodic cell, are a StructureError
    naming them; with `max_neighbors` (e.g. sum(sel)) a cell in which every atom must have more
    neighbours than that is refused before any search (`search_basis`).  Without it any cutoff is
    searched (an RDF beyond the box)."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    if positions.size and not np.isfinite(positions).all():
        a = int(np.argmax(~np.isfinite(positions).all(axis=1)))
        raise StructureError(f"atom {a}: position {positions[a].tolist()} is not finite")
    # The search looks a hair beyond rcut (shifts found in a compact basis are mapped back to the
    # caller's, whose rounding differs by ulps of its vectors); the final test below decides.
    search_cut = float(rcut) * (1 + 1e-6)
    if pbc:
        basis, op, compact = search_basis(cell, True, rcut, max_neighbors, len(positions))
        # vesin wants points inside the box for its cell list to be efficient; shifts stay valid
        # because we recompute r_ij from the *original* positions below.
        frac = positions @ np.linalg.inv(basis)
        wrap = np.floor(frac)
        inside = (frac - wrap) @ basis
    else:
        inside, wrap = positions, np.zeros_like(positions)
        basis, compact = np.zeros((3, 3)), False
        cell = basis
    nl = NeighborList(cutoff=search_cut, full_list=True)
    i, j, S = nl.compute(points=inside, box=basis, periodic=bool(pbc), quantities="ijS")
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    S = S.astype(np.int64)
    if pbc:
        # Translate the shift from wrapped to original coordinates, then to the caller's basis.
        S = S - (wrap[j] - wrap[i]).astype(np.int64)
        if compact:
            S = S @ op
    order = np.lexsort((j, i))
    i, j, S = i[order], j[order], S[order]
    vec = (positions[j] - positions[i]) + lattice_vectors(S, cell)
    keep = squared_norm(vec) < rcut * rcut
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
