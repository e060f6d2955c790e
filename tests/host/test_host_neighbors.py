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


# ---- skewed and degenerate cells ------------------------------------------------------------------
# A skewed basis of an ordinary lattice used to send the cell list through millions of periodic images
# (SIGFPE inside vesin at x40, gigabytes at x20, MemoryError at x80): these run in a forked child with
# a deadline and an address-space limit, so that a crash or a runaway allocation fails the test
# instead of killing pytest or the machine.

def isolated(fn, *args, timeout: float = 60.0, memory: int = 1 << 31):
    """fn(*args) in a forked child given `memory` bytes of address space beyond this process's and
    `timeout` seconds; returns ("ok", value) or ("raised", exception), fails the test on a crash or
    a timeout."""
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
            pytest.fail(f"{getattr(fn, '__name__', fn)}{args!r:.200} gave no result within {timeout} s")
        try:
            return recv.recv()
        except EOFError:
            p.join(5)
            pytest.fail(f"{getattr(fn, '__name__', fn)}: the child died (exit code {p.exitcode}; "
                        f"a negative code is the signal that killed it)")
    finally:
        if p.is_alive():
            p.kill()
        p.join()


def gete_cell(seed: int = 0):
    """The 8-atom rock-salt GeTe cell, rattled so that the forces are not zero by symmetry."""
    from ase.build import bulk
    a = bulk("GeTe", "rocksalt", a=6.0, cubic=True)
    a.rattle(0.05, seed=seed)
    return a


def skew(cell, k: int, open_vector_too: bool = True):
    """The same lattice in a skewed basis c1, c2 + k c1, c3 + k c2 + k c1 (c3 untouched unless asked).
    The cell's entries stay integers, so every lattice vector is exact in both bases."""
    c1, c2, c3 = np.asarray(cell, dtype=np.float64)
    return np.array([c1, c2 + k * c1, c3 + k * c2 + k * c1 if open_vector_too else c3])


def evaluate_integers(atoms):
    """Exact results and the pair list of the ASE path (host.neighbors, the reference device)."""
    from host.ase import Calculator
    atoms.calc = Calculator(device="reference")
    atoms.get_potential_energy()
    r = atoms.calc.last_result
    types = np.zeros(len(atoms), int)
    pairs = []
    for ch in NeighborChunks(atoms.positions, atoms.cell.array, atoms.pbc, 7.0, types, chunk_atoms=3):
        a, j = ch.centers[ch.edges.i], ch.edges.j
        # The shift is an image of the caller's cell: r_ij = x_j - x_i + shift @ cell, exactly here.
        want = atoms.positions[j] - atoms.positions[a] + ch.edges.shift @ atoms.cell.array
        assert np.array_equal(ch.edges.vec, want)
        pairs += [(int(x), int(y), tuple(v)) for x, y, v in zip(a, j, ch.edges.vec.tolist())]
    return (r.energy_int, r.forces_int.tolist(), [[int(x) for x in row] for row in r.virial_int],
            sorted(pairs))


@pytest.mark.parametrize("k", [5, 20, 40, 80], ids=lambda k: f"skew{k}")
def test_skewed_cell_gives_the_unskewed_integers(k):
    """The same lattice in a skewed basis: the same pairs, vectors and integers, in seconds."""
    atoms = gete_cell()
    want = evaluate_integers(atoms.copy())
    atoms.set_cell(skew(atoms.cell.array, k), scale_atoms=False)
    status, got = isolated(evaluate_integers, atoms, timeout=60.0)
    assert status == "ok", got
    assert got[3] == want[3]  # pairs (i, j, r_ij), bit for bit
    assert got[:3] == want[:3]  # energy_int, forces_int, virial_int


@pytest.mark.parametrize("k,open_vector_too", [(40, False), (100_000, False), (40, True)],
                         ids=["plane-skew40", "plane-skew100000", "open-vector-skew40"])
def test_skewed_slab_gives_the_unskewed_integers(k, open_vector_too):
    """Periodic along c1 and c2 only: a skew among the periodic vectors (and of the open vector
    against them, which moves no box wall: the open axis's planes are those of the periodic ones)."""
    atoms = gete_cell(seed=1)
    atoms.pbc = (True, True, False)
    want = evaluate_integers(atoms.copy())
    atoms.set_cell(skew(atoms.cell.array, k, open_vector_too), scale_atoms=False)
    status, got = isolated(evaluate_integers, atoms, timeout=60.0)
    assert status == "ok", got
    assert got[3] == want[3]
    assert got[:3] == want[:3]


def _degenerate(case):
    rng = np.random.default_rng(0)
    pbc = True
    if case == "tiny-cell":  # 8 atoms in a 0.3 Å cube: 50,000 images of every atom within rcut
        cell = np.eye(3) * 0.3
        pos = rng.uniform(0, 0.3, (8, 3))
    elif case == "thin-cell":  # periodic every 0.01 Å along z: 1,400 images of every atom
        cell = np.diag([60.0, 60.0, 0.01])
        pos = rng.uniform(0, 1, (100, 3)) @ cell
    elif case == "dense-cell":  # 8 atoms/Å^3: few images, but thousands of neighbours per atom
        cell = np.eye(3) * 2.0
        pos = rng.uniform(0, 2, (64, 3))
    elif case == "dense-cluster":  # no cell: 250,000 atoms inside 1 Å^3 (a pair list of 6e10)
        cell, pbc = None, False
        pos = rng.uniform(7, 8, (250_000, 3))
    return pos, cell, pbc


def _chunks_of(case):
    pos, cell, pbc = _degenerate(case)
    return sum(len(ch.edges.i) for ch in NeighborChunks(pos, cell, pbc, 7.0, np.zeros(len(pos), int)))


@pytest.mark.parametrize("case", ["tiny-cell", "thin-cell", "dense-cell", "dense-cluster"])
def test_degenerate_structure_is_refused_quickly(case):
    """More neighbours per atom than any sel accepts, visible before any pair is searched: a
    StructureError naming the cell within seconds, not gigabytes of images."""
    status, got = isolated(_chunks_of, case, timeout=30.0, memory=1 << 30)
    assert status == "raised" and isinstance(got, StructureError), got
    assert "cell" in str(got) and "1023" in str(got), str(got)


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
@pytest.mark.parametrize("pbc", [True, (True, True, False), False], ids=["3d", "slab", "cluster"])
def test_refusals_never_reach_a_valid_structure(pbc, chunk):
    """The bounds behind the refusals are rigorous: a structure whose densest atom has m neighbours
    is searched with max_neighbors = m, whatever the chunk (small chunks have the loosest bound)."""
    from ase.build import bulk
    a = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((3, 3, 3))
    a.rattle(0.3, seed=3)
    cell = a.cell.array if pbc is not False else None
    types = np.zeros(len(a), int)
    whole = pairs_of(NeighborChunks(a.positions, cell, pbc, 7.0, types, chunk_atoms=chunk))
    most = int(np.bincount([p[0] for p in whole]).max())
    got = pairs_of(NeighborChunks(a.positions, cell, pbc, 7.0, types, chunk_atoms=chunk, max_neighbors=most))
    assert got == whole and most > 50


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_cell_is_named(bad):
    cell = np.eye(3) * 10.0
    cell[1, 2] = bad
    pos = np.random.default_rng(6).uniform(0, 10, (5, 3))
    for pbc in (True, [True, False, False], False):
        with pytest.raises(StructureError, match=r"cell \[\[10.*(nan|inf).*is not finite"):
            NeighborChunks(pos, cell, pbc, 5.0, np.zeros(5, int))
