"""Neighbour lists against brute force, and per-atom blocks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from model.neighbors import (NeighborOverflowError, StructureError, _image_count, blocks, check_sel, count_by_type,
                             edges, search_basis)


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


# ---- skewed and degenerate cells ------------------------------------------------------------------

def isolated(fn, *args, timeout: float = 60.0, memory: int = 1 << 31):
    """fn(*args) in a forked child given `memory` bytes of address space beyond this process's and
    `timeout` seconds; returns ("ok", value) or ("raised", exception), fails the test on a crash or
    a timeout (a skewed cell used to take minutes in vesin)."""
    import multiprocessing
    import resource

    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child():
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + memory, resource.RLIM_INFINITY))
        try:
            out = ("ok", fn(*args))
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the test
            out = ("raised", e)
        send.send(out)

    p = ctx.Process(target=child)
    p.start()
    send.close()
    try:
        if not recv.poll(timeout):
            pytest.fail(f"{getattr(fn, '__name__', fn)} gave no result within {timeout} s")
        try:
            return recv.recv()
        except EOFError:
            p.join(5)
            pytest.fail(f"{getattr(fn, '__name__', fn)}: the child died (exit code {p.exitcode})")
    finally:
        if p.is_alive():
            p.kill()
        p.join()


def gete():
    from ase.build import bulk
    a = bulk("GeTe", "rocksalt", a=6.0, cubic=True)
    a.rattle(0.05, seed=2)  # forces not zero by symmetry
    return a


def pairs_and_integers(positions, cell, symbols):
    """Pairs (i, j, r_ij) of edges() and the exact results of model.assembly.compute."""
    from contract import modelfile
    from model.assembly import compute, map_types
    from contract.paths import EXAMPLE_MODEL
    e = edges(positions, cell, True, 7.0)
    # The shift is an image of the caller's cell: r_ij = x_j - x_i + shift @ cell, exactly here.
    assert np.array_equal(e.vec, positions[e.j] - positions[e.i] + e.shift @ cell)
    pairs = sorted((int(i), int(j), tuple(v)) for i, j, v in zip(e.i, e.j, e.vec.tolist()))
    qm = modelfile.load(EXAMPLE_MODEL)
    r = compute(qm, positions, cell, True, map_types(symbols, qm.config.type_map))
    return pairs, (r.energy_int, r.forces_int.tolist(), [[int(x) for x in row] for row in r.virial_int])


@pytest.mark.parametrize("k", [5, 20, 40, 80, 400], ids=lambda k: f"skew{k}")
def test_skewed_cell_same_pairs_and_integers(k):
    """The same lattice in the basis c1, c2 + k c1, c3 + k c2 + k c1 (integer entries: every lattice
    vector exact in both bases): the same pairs, vectors and integers, in seconds (x400 took vesin
    minutes on the skewed basis)."""
    a = gete()
    want = pairs_and_integers(a.positions, a.cell.array, a.get_chemical_symbols())
    c1, c2, c3 = a.cell.array
    skewed = np.array([c1, c2 + k * c1, c3 + k * c2 + k * c1])
    status, got = isolated(pairs_and_integers, a.positions, skewed, a.get_chemical_symbols(), timeout=15.0)
    assert status == "ok", got
    assert got[0] == want[0]
    assert got[1] == want[1]


def degenerate(case):
    rng = np.random.default_rng(0)
    if case == "tiny-cell":  # 50,000 images of every atom within rcut
        return rng.uniform(0, 0.3, (8, 3)), np.eye(3) * 0.3
    if case == "thin-cell":  # 1,400 images of every atom along z
        cell = np.diag([60.0, 60.0, 0.01])
        return rng.uniform(0, 1, (100, 3)) @ cell, cell
    if case == "dense-cell":  # 8 atoms/Å^3: few images, ~11,000 neighbours per atom
        return rng.uniform(0, 2, (64, 3)), np.eye(3) * 2.0


@pytest.mark.parametrize("case", ["tiny-cell", "thin-cell", "dense-cell"])
def test_degenerate_cell_refused_given_max_neighbors(case):
    """With max_neighbors (sum(sel)), a cell where every atom must have more is refused before the
    search, naming the cell; without it the search runs (an RDF may look past the box)."""
    pos, cell = degenerate(case)
    with pytest.raises(StructureError, match=r"cell \[\[.* (images|denser).* 120 neighbours"):
        edges(pos, cell, True, 7.0, max_neighbors=120)
    e = edges(pos, cell, True, 2.0)  # the same cell, a cutoff it allows
    assert np.array_equal(e.vec, pos[e.j] - pos[e.i] + e.shift @ cell)


def test_ordinary_cell_not_refused_at_its_own_neighbour_count():
    """The refusals are bounds no valid structure reaches: the densest atom's own count passes."""
    a = gete().repeat((2, 2, 2))
    e = edges(a.positions, a.cell.array, True, 7.0)
    most = int(np.bincount(e.i).max())
    assert len(edges(a.positions, a.cell.array, True, 7.0, max_neighbors=most).i) == len(e.i)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_cell_or_position_is_named(bad):
    pos = np.random.default_rng(7).uniform(0, 10, (6, 3))
    cell = np.eye(3) * 10.0
    cell[2, 0] = bad
    with pytest.raises(StructureError, match=r"cell \[\[10.*(nan|inf).*is not finite"):
        edges(pos, cell, True, 5.0)
    pos[4, 1] = bad
    with pytest.raises(StructureError, match="atom 4"):
        edges(pos, np.eye(3) * 10.0, True, 5.0)


def brute_images(P, rcut):
    n = 12
    grid = np.array(list(itertools.product(range(-n, n + 1), repeat=len(P))))
    L = grid @ P
    return int((np.einsum("ij,ij->i", L, L) < rcut * rcut).sum()) - 1


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed{s}")
def test_image_count_equals_brute_force(d, seed):
    """The lattice-image count behind the refusal: exact below its limit, and past it when over."""
    rng = np.random.default_rng(seed)
    cell = rng.uniform(1.6, 3.0, 3) * np.eye(3) + rng.uniform(-0.5, 0.5, (3, 3))
    pbc = np.arange(3) < d
    basis, _, _ = search_basis(cell, pbc, 6.0)
    want = brute_images(basis[pbc], 6.0)
    assert want >= 4 and _image_count(basis[pbc], 6.0, 10 ** 6) == want
    for limit in (want - 1, want // 2):
        assert _image_count(basis[pbc], 6.0, limit) > limit
