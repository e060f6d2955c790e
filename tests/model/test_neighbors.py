"""Neighbour lists against brute force, and per-atom blocks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from model.neighbors import NeighborOverflowError, blocks, check_sel, count_by_type, edges


@pytest.mark.parametrize("seed", [0, 1])
def test_edges_match_brute_force_triclinic(seed):
    rng = np.random.default_rng(seed)
    cell = np.array([[7.0, 0, 0], [1.5, 6.5, 0], [0.7, -0.9, 6.0]])
    pos = rng.random((15, 3)) @ cell * 2.5 - 3.0  # atoms outside the cell too
    rc = 5.0
    e = edges(pos, cell, True, rc)
    want = set()
    for i, j in itertools.product(range(15), repeat=2):
        for S in itertools.product(range(-4, 5), repeat=3):
            v = pos[j] - pos[i] + np.array(S) @ cell
            if (i != j or any(S)) and v @ v < rc * rc:
                want.add((i, j, round(v[0], 6), round(v[1], 6), round(v[2], 6)))
    got = {(int(i), int(j), round(v[0], 6), round(v[1], 6), round(v[2], 6)) for i, j, v in zip(e.i, e.j, e.vec)}
    assert got == want
    assert np.allclose(e.vec, pos[e.j] - pos[e.i] + e.shift @ cell)


def test_blocks_and_sel_check():
    rng = np.random.default_rng(3)
    pos = rng.random((30, 3)) * 6
    types = np.arange(30) % 2
    e = edges(pos, np.zeros((3, 3)), False, 3.0)
    b = blocks(e, types, 30)
    assert (b.count == np.bincount(e.i, minlength=30)).all()
    for a in range(30):
        k = b.count[a]
        assert set(b.nbr_index[a, :k]) == set(e.j[e.i == a])
        assert (b.nbr_type[a, k:] == -1).all()
    counts = count_by_type(e, types, 30, 2)
    check_sel(counts, counts.max(axis=0), ["A", "B"])
    with pytest.raises(NeighborOverflowError, match="more than sel"):
        check_sel(counts, counts.max(axis=0) - 1, ["A", "B"])
