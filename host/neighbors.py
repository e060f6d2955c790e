"""Neighbour lists in bounded memory: centre atoms in spatially compact chunks, candidates from a
cell list, periodic along any subset of the three cell vectors (orthorhombic or triclinic).

    for chunk in NeighborChunks(positions, cell, pbc, rcut, chunk_atoms=4096):
        chunk.centers          # (K,) global indices of this chunk's centre atoms
        chunk.blocks           # model.neighbors.NeighborBlocks of those centres (global nbr_index)

A chunk is a block of cells (about chunk_atoms atoms, cube-like); its pairs come from vesin run on the
block's atoms plus a halo one cutoff thick (periodic images included), so memory per chunk is
bounded by the chunk and its halo, never by the whole system's pair list; the only arrays of system
size are the positions and the cell list's permutation.  Cells are at least rcut wide (more images
along periodic axes shorter than rcut).  Along non-periodic axes of a box with a
cell, atoms must lie inside the cell extended by rcut on each side (an atom beyond that is an
error naming it: a structure that has blown up, or one given in the wrong units); with pbc all False
and no cell, the atoms' bounding box is used.

The cell list is built on a compact basis of the lattice (model.neighbors.search_basis): a skewed
basis of an ordinary lattice is searched like the ordinary one, while shifts and r_ij are those of
the caller's cell.  A structure in which some atom must have more than `max_neighbors` neighbours
(default 1023, the most any model accepts) whatever the atoms' arrangement is refused with a
StructureError naming the cell before its images are built: a cell this thin or small, a density
this high, or a chunk whose halo would hold more image points than such a structure can place there.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from vesin import NeighborList

from model.neighbors import (MAX_NEIGHBORS, Edges, NeighborBlocks, StructureError, blocks, cell_text,
                             lattice_vectors, search_basis, squared_norm)

__all__ = ["Chunk", "Frame", "GivenNeighbors", "NeighborChunks", "StructureError", "frame"]


@dataclass
class Chunk:
    centers: np.ndarray  # (K,) global atom indices
    blocks: NeighborBlocks  # per-centre neighbour blocks (nbr_index global)
    edges: Edges  # the same pairs as an edge list (i = position in `centers`, j global)


def _as_pbc(pbc) -> np.ndarray:
    p = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    return p.copy()


@dataclass
class Frame:
    """A structure's positions and lattice as the neighbour search sees them (`frame()`)."""

    pos: np.ndarray  # (N, 3) float64 positions, as given
    cell: np.ndarray  # (3, 3) the caller's cell (an open cluster's: a box around its atoms)
    pbc: np.ndarray  # (3,) bool
    origin: np.ndarray  # (3,) subtracted before fractional coordinates
    basis: np.ndarray  # (3, 3) the search basis: the cell, or a compact basis of the same lattice
    op: np.ndarray  # (3, 3) int64: a shift S in `basis` is the lattice vector (S @ op) @ cell
    compact: bool  # basis is not the cell
    frac: np.ndarray  # (N, 3) fractional coordinates of pos - origin in `basis`
    delta: np.ndarray  # (3,) fractional width of one cutoff along each basis vector


def frame(positions, cell, pbc, rcut: float, max_neighbors: int = MAX_NEIGHBORS) -> Frame:
    """Check a structure and choose the basis its neighbours are searched in; every refusal that does
    not depend on how the search is chunked is made here (the native core's search gets the result):
    positions and cell finite, a periodic cell not singular, a lattice that leaves no atom at most
    `max_neighbors` neighbours (model.neighbors.search_basis), atoms outside a non-periodic box."""
    pos = np.ascontiguousarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise StructureError(f"positions must be (N, 3), got {pos.shape}")
    if not np.isfinite(pos).all():
        a = int(np.argmax(~np.isfinite(pos).all(axis=1)))
        raise StructureError(f"atom {a}: position {pos[a].tolist()} is not finite")
    pbc = _as_pbc(pbc)
    rcut = float(rcut)
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(cell).all():
        raise StructureError(f"cell {cell_text(cell)} is not finite")
    origin = np.zeros(3)
    if abs(np.linalg.det(cell)) < 1e-9:
        if pbc.any():
            raise StructureError(f"periodic along {np.flatnonzero(pbc).tolist()} but the cell "
                                 f"{cell_text(cell)} is singular")
        # An open cluster: a box around the atoms, one cutoff of vacuum on every side.
        lo, hi = (pos.min(axis=0), pos.max(axis=0)) if len(pos) else (np.zeros(3), np.ones(3))
        origin = lo - rcut
        cell = np.diag(hi - lo + 2 * rcut)
    # The cell list lives in `basis` (the cell itself unless a compact basis needs far fewer
    # images); a shift S there is the lattice vector (S @ op) @ cell.
    basis, op, compact = search_basis(cell, pbc, rcut, max_neighbors, len(pos))
    inv = np.linalg.inv(basis)
    frac = (pos - origin) @ inv
    # Fractional width of one cutoff along each axis (distance between lattice planes).
    delta = rcut * np.linalg.norm(inv, axis=0)
    for a in np.flatnonzero(~pbc):
        bad = (frac[:, a] < -delta[a]) | (frac[:, a] >= 1 + delta[a])
        if bad.any():
            k = int(np.argmax(bad))
            raise StructureError(
                f"atom {k} at {pos[k].round(3).tolist()} Å lies outside the non-periodic box along cell "
                f"vector {a} (fractional coordinate {frac[k, a]:.3f}, allowed {-delta[a]:.3f} .. "
                f"{1 + delta[a]:.3f}); {int(bad.sum())} atom(s) affected")
    return Frame(pos=pos, cell=cell, pbc=pbc, origin=origin, basis=basis, op=np.asarray(op, dtype=np.int64),
                 compact=bool(compact), frac=frac, delta=delta)


class NeighborChunks:
    def __init__(self, positions, cell, pbc, rcut: float, types: np.ndarray, chunk_atoms: int = 4096,
                 max_neighbors: int = MAX_NEIGHBORS):
        self.rcut, self.types, self.chunk_atoms = float(rcut), np.asarray(types, dtype=np.int64), int(chunk_atoms)
        self.max_neighbors = int(max_neighbors)
        f = frame(positions, cell, pbc, self.rcut, self.max_neighbors)
        pos, frac = f.pos, f.frac
        self.natoms, self.pbc, self.origin = len(pos), f.pbc, f.origin
        self.cell = f.cell  # the caller's: shifts and r_ij refer to it
        self.basis, self.op, self.compact, self.delta = f.basis, f.op, f.compact, f.delta
        inv = np.linalg.inv(self.basis)
        self.wrap = np.where(self.pbc, np.floor(frac), 0.0)
        frac = frac - self.wrap
        self.pos = pos
        # Cell list: n cells per axis, each at least one cutoff wide (non-periodic axes are padded by
        # a cutoff on each side, so their cells span [-delta, 1 + delta)).
        span = np.where(self.pbc, 1.0, 1.0 + 2 * self.delta)
        lo = np.where(self.pbc, 0.0, -self.delta)
        self.ncell = np.maximum(1, np.floor(span / self.delta).astype(np.int64))
        self.cell_lo, self.cell_w = lo, span / self.ncell
        c3 = np.clip(np.floor((frac - lo) / self.cell_w).astype(np.int64), 0, self.ncell - 1)
        cid = (c3[:, 0] * self.ncell[1] + c3[:, 1]) * self.ncell[2] + c3[:, 2]
        self.order = np.argsort(cid, kind="stable")
        ncells = int(np.prod(self.ncell))
        self.cell_count = np.bincount(cid, minlength=ncells)
        self.cell_start = np.concatenate([[0], np.cumsum(self.cell_count)[:-1]])
        self.c3 = c3
        # Offsets to visit: enough cells each way to cover one cutoff (more when a cell is narrower
        # than the cutoff, i.e. a periodic box shorter than rcut along that axis).
        reach = np.ceil(self.delta / self.cell_w).astype(np.int64)

        # Chunks are blocks of cells, about chunk_atoms atoms each, as cube-like as the grid allows
        # so that the halo (one cutoff around the block) stays small.
        per_cell = max(self.natoms / ncells, 1e-9)
        side = max(1.0, (self.chunk_atoms / per_cell) ** (1 / 3))
        self.block = np.minimum(self.ncell, np.maximum(1, np.floor(side).astype(np.int64)))
        self.nblock = -(-self.ncell // self.block)
        self.reach = reach
        # vesin looks a hair beyond rcut (and through rounding of a compact basis's shifts); the test on
        # the vectors handed out decides, as in the native core (host/native/cells.cpp).
        self.nlist = NeighborList(cutoff=self.rcut * (1 + 1e-6), full_list=True)
        self.plane = 1.0 / np.linalg.norm(inv, axis=0)  # distance between the basis's lattice planes (Å)

    def __len__(self):
        return int(np.prod(self.nblock))

    def __iter__(self):
        for b in itertools.product(*[range(n) for n in self.nblock]):
            lo = np.array(b) * self.block
            hi = np.minimum(lo + self.block, self.ncell)
            ch = self.chunk(lo, hi)
            if len(ch.centers):
                yield ch

    def _atoms_in_cells(self, lo, hi):
        """(atom, shift) for every atom in the cells lo..hi-1 (unwrapped cell coordinates), periodic
        axes wrapped with the matching lattice shift, open axes clipped."""
        axes = []
        for a in range(3):
            c = np.arange(lo[a], hi[a])
            if not self.pbc[a]:
                c = c[(c >= 0) & (c < self.ncell[a])]
            axes.append(c)
        cc = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        shift = np.floor_divide(cc, self.ncell)
        cw = cc - shift * self.ncell
        cid = (cw[:, 0] * self.ncell[1] + cw[:, 1]) * self.ncell[2] + cw[:, 2]
        cnt = self.cell_count[cid]
        rep = np.repeat(np.arange(len(cid)), cnt)
        first = np.repeat(np.cumsum(cnt) - cnt, cnt)
        atom = self.order[self.cell_start[cid][rep] + (np.arange(len(rep)) - first)]
        return atom, shift[rep]

    def _check_halo(self, lo, hi, centers) -> None:
        """Refuse, before building them, more image points in the block of cells [lo, hi) and its
        halo than a structure whose atoms have at most max_neighbors neighbours can place there.
        Bound: a maximal set of those points pairwise rcut apart has disjoint balls of radius rcut/2
        inside the region widened by rcut/2, and every point lies within rcut of one of them."""
        frac_vol, widen = 1.0, 1.0
        mult = []
        for a in range(3):
            u = np.arange(lo[a] - self.reach[a], hi[a] + self.reach[a])
            if not self.pbc[a]:
                u = u[(u >= 0) & (u < self.ncell[a])]
            mult.append(np.bincount(u % self.ncell[a], minlength=self.ncell[a]).astype(np.float64))
            frac_vol *= len(u) * self.cell_w[a]
            width = len(u) * self.cell_w[a] * self.plane[a]
            widen *= (width + self.rcut) / width
        nz = [np.flatnonzero(m) for m in mult]
        sub = self.cell_count.reshape(tuple(self.ncell))[np.ix_(*nz)].astype(np.float64)
        count = float(np.einsum("ijk,i,j,k->", sub, *[m[z] for m, z in zip(mult, nz)]))
        volume = frac_vol * abs(np.linalg.det(self.basis)) * widen
        top = (self.max_neighbors + 1) * volume / (math.pi / 6 * self.rcut ** 3)
        if count > top:
            raise StructureError(
                f"cell {cell_text(self.cell)} (pbc {self.pbc.tolist()}): {count:.0f} atom images lie within "
                f"one cutoff (rcut = {self.rcut:g} Å) of the {len(centers)} atoms around atom {int(centers[0])}, more "
                f"than the {top:.0f} that fit there when no atom has more than {self.max_neighbors} neighbours: "
                "the structure is far too dense (atoms piled up, or the cell too small)")

    def chunk(self, lo, hi) -> Chunk:
        """Neighbours of the atoms in the block of cells [lo, hi): vesin over the block and its halo."""
        centers, _ = self._atoms_in_cells(lo, hi)
        k = len(centers)
        if k:
            self._check_halo(lo, hi, centers)
        # Local points: the centres first, then every atom image within reach of the block.
        # (A centre reappears in the halo only as a different image, i.e. with a nonzero shift.)
        halo, hshift = self._atoms_in_cells(lo - self.reach, hi + self.reach)
        inner = ((self.c3[halo] + hshift * self.ncell >= lo) & (self.c3[halo] + hshift * self.ncell < hi)).all(axis=1)
        halo, hshift = halo[~inner], hshift[~inner]
        atom = np.concatenate([centers, halo])
        shift = np.concatenate([np.zeros((k, 3), dtype=np.int64), hshift])
        wrapped = self.pos - self.wrap @ self.basis
        pts = wrapped[atom] + shift @ self.basis
        if k == 0:
            i = j = np.zeros(0, dtype=np.int64)
        else:
            i, j = self.nlist.compute(points=pts, box=np.zeros((3, 3)), periodic=False, quantities="ij")
            i, j = i.astype(np.int64), j.astype(np.int64)
        keep = i < k
        i_local, jl = i[keep], j[keep]
        j = atom[jl]
        # Local points are wrapped positions; in the original positions the image is
        # r_ij = x_j - x_i + (S - wrap_j + wrap_i) @ basis, i.e. that shift @ op in the caller's cell.
        S_tot = (shift[jl] - self.wrap[j] + self.wrap[centers[i_local]]).astype(np.int64)
        if self.compact:
            S_tot = S_tot @ self.op
        vec = (self.pos[j] - self.pos[centers[i_local]]) + lattice_vectors(S_tot, self.cell)
        # vesin decided "inside rcut" on shifted copies; decide again on the vectors we hand out.
        ok = squared_norm(vec) < self.rcut * self.rcut
        i_local, j, S_tot, vec = i_local[ok], j[ok], S_tot[ok], vec[ok]
        order = np.lexsort((S_tot[:, 2], S_tot[:, 1], S_tot[:, 0], j, i_local))
        e = Edges(i=i_local[order], j=j[order], shift=S_tot[order], vec=vec[order])
        b = blocks(e, self.types, k)
        b.center_type = self.types[centers]
        return Chunk(centers=centers, blocks=b, edges=e)


class GivenNeighbors:
    """Chunks from a neighbour list someone else built (LAMMPS): local atoms first, then ghosts.

        GivenNeighbors(x, types, nlocal, numneigh, neighbors, rcut, chunk_atoms)

    x (nall, 3) positions of local and ghost atoms (ghosts are periodic images or other ranks'
    atoms, already placed where they are seen from here); centre atoms are the local ones, 0..nlocal-1;
    numneigh (nlocal,) and neighbors (sum numneigh,) the full list in CSR form (indices into x), in
    any order and possibly with extra pairs beyond rcut (a skin).  r_ij = x_j - x_i, and pairs are kept
    with the same test as NeighborChunks (|r_ij|^2 < rcut^2 on those vectors), so one structure gives
    the same records whichever class found the pairs.  Chunks are runs of consecutive centres.
    """

    def __init__(self, x, types, nlocal: int, numneigh, neighbors, rcut: float, chunk_atoms: int = 4096):
        self.x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1, 3)
        self.types = np.asarray(types, dtype=np.int64)
        self.nlocal, self.natoms = int(nlocal), len(self.x)
        self.numneigh = np.asarray(numneigh, dtype=np.int64)
        self.neighbors = np.asarray(neighbors, dtype=np.int64)
        self.rcut, self.chunk_atoms = float(rcut), max(1, int(chunk_atoms))
        if len(self.types) != self.natoms:
            raise StructureError(f"{len(self.types)} types for {self.natoms} atoms")
        if not 0 <= self.nlocal <= self.natoms or len(self.numneigh) != self.nlocal:
            raise StructureError(f"neighbour counts for {len(self.numneigh)} centres, {self.nlocal} local atoms, "
                                 f"{self.natoms} atoms in all")
        if (self.numneigh < 0).any() or int(self.numneigh.sum()) != len(self.neighbors):
            raise StructureError(f"neighbour counts sum to {int(self.numneigh.sum())}, the list holds "
                                 f"{len(self.neighbors)} entries")
        if len(self.neighbors) and (self.neighbors.min() < 0 or self.neighbors.max() >= self.natoms):
            k = int(np.argmax((self.neighbors < 0) | (self.neighbors >= self.natoms)))
            raise StructureError(f"neighbour list entry {k} = {int(self.neighbors[k])} is not an atom index "
                                 f"(0 .. {self.natoms - 1})")
        if not np.isfinite(self.x).all():
            a = int(np.argmax(~np.isfinite(self.x).all(axis=1)))
            raise StructureError(f"atom {a}: position {self.x[a].tolist()} is not finite")
        self.start = np.concatenate([[0], np.cumsum(self.numneigh)]).astype(np.int64)

    def __len__(self):
        return -(-self.nlocal // self.chunk_atoms)

    def __iter__(self):
        for lo in range(0, self.nlocal, self.chunk_atoms):
            yield self.chunk(lo, min(lo + self.chunk_atoms, self.nlocal))

    def chunk(self, lo: int, hi: int) -> Chunk:
        centers = np.arange(lo, hi, dtype=np.int64)
        k = hi - lo
        i_local = np.repeat(np.arange(k, dtype=np.int64), self.numneigh[lo:hi])
        j = self.neighbors[self.start[lo]:self.start[hi]]
        vec = self.x[j] - self.x[lo + i_local]
        ok = squared_norm(vec) < self.rcut * self.rcut
        i_local, j, vec = i_local[ok], j[ok], vec[ok]
        if (j == lo + i_local).any():
            a = int(lo + i_local[np.argmax(j == lo + i_local)])
            raise StructureError(f"atom {a} is listed as its own neighbour")
        # Grouped by centre already (np.repeat); within a centre the list's own order is kept: the
        # results are integer sums, independent of the record order (the MPI tests rely on it).
        e = Edges(i=i_local, j=j, shift=np.zeros((len(j), 3), dtype=np.int64), vec=vec)
        b = blocks(e, self.types, k)
        b.center_type = self.types[centers]
        return Chunk(centers=centers, blocks=b, edges=e)
