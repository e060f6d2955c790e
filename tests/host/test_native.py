"""The native host core (host/native/, C++) against the Python path it copies: the same integers for
energy, forces, virial, per-atom energies and virials and flags, and the same errors, on the three
bundled models and structures of every kind (random, triclinic, small and skewed cells, partly
periodic, open clusters, an MD code's ghosts and skin), with the zero and reference devices, several
lanes and chunk sizes."""

from __future__ import annotations

import numpy as np
import pytest
from support import random_structure

from contract import modelfile
from contract.paths import MODELS
from host import native
from host.devices import DeviceError, DeviceTimeout, open_device
from host.devices.base import WorkerDevice
from host.evaluate import Evaluator
from model.assembly import CloseContactError, DeviceFlagError, InputRangeError
from model.neighbors import NeighborOverflowError, StructureError, edges


def _toolchain_missing() -> str:
    """Why the core cannot be built here at all (no compiler, no pybind11), or ''."""
    import importlib.util
    import shutil
    if not (shutil.which("g++") or shutil.which("c++")):
        return "no C++ compiler"
    if importlib.util.find_spec("pybind11") is None:
        return "pybind11 is not installed"
    return ""


# Skipped only where it cannot be built; where it can, a build that fails is a failure (below).
pytestmark = pytest.mark.skipif(bool(_toolchain_missing()), reason=f"native core cannot be built: {_toolchain_missing()}")


def test_the_core_builds_here():
    """With a compiler and pybind11 present the core must build: otherwise every other test here would be
    skipped and Evaluator would quietly run the Python path."""
    assert native.available(), native.why_not()[-4000:]


@pytest.fixture(autouse=True, params=["avx512", "portable"])
def record_kernels(request):
    """Every test twice: with the record kernels' AVX-512 build (where this CPU has it) and the portable
    one (host/native/records.h), which must give the same bits."""
    if request.param == "avx512":
        if native.record_kernels() != "avx512":
            pytest.skip("this CPU has no AVX-512: only the portable build of the record kernels runs")
        yield
    else:
        native.record_kernels(False)
        try:
            yield
        finally:
            native.record_kernels(True)


@pytest.fixture(scope="module", params=sorted(MODELS))
def qm(request):
    return modelfile.load(MODELS[request.param])


def both(qm, device, call, **options):
    """(Python result, native result) of one evaluation."""
    out = []
    for nat in (False, True):
        ev = Evaluator(qm, device, native=nat, **options)
        out.append(call(ev))
    return out


def assert_same(a, b):
    assert a.energy_int == b.energy_int
    assert a.energy == b.energy
    assert (a.forces_int == b.forces_int).all() and (a.forces == b.forces).all()
    assert (a.virial_int == b.virial_int).all() and (a.virial == b.virial).all()
    assert (a.atomic_energies == b.atomic_energies).all()
    assert (a.flags == b.flags).all()
    assert a.below_rmin_records == b.below_rmin_records
    if a.atomic_virial is not None:
        assert (a.atomic_virial == b.atomic_virial).all()


def structure(kind: str, qm, seed: int):
    """positions, cell, pbc, types of a structure of one kind, with the model's types."""
    ntypes = qm.config.ntypes
    rng = np.random.default_rng(seed)
    if kind == "random":
        pos, cell, types = random_structure(natoms=60, box=12.0, ntypes=ntypes, dmin=2.3, seed=seed, triclinic=False)
        return pos, cell, True, types
    if kind == "triclinic":
        pos, cell, types = random_structure(natoms=60, box=12.0, ntypes=ntypes, dmin=2.3, seed=seed, triclinic=True)
        return pos, cell, True, types
    if kind == "small-cell":  # several images of each atom within rcut
        pos, cell, types = random_structure(natoms=6, box=5.0, ntypes=ntypes, dmin=2.3, seed=seed, triclinic=True)
        return pos, cell, True, types
    if kind == "skewed":  # the same lattice as a cube, given by a skewed basis (searched on a reduced one)
        pos, cell, types = random_structure(natoms=40, box=11.0, ntypes=ntypes, dmin=2.3, seed=seed, triclinic=False)
        skew = np.array([[1, 0, 0], [7, 1, 0], [5, 9, 1]]) @ cell
        return pos + rng.integers(-2, 3, (len(pos), 1)) * cell[1], skew, True, types
    if kind == "slab":  # periodic along two axes
        pos, cell, types = random_structure(natoms=50, box=12.0, ntypes=ntypes, dmin=2.3, seed=seed, triclinic=True)
        return pos, cell, [True, True, False], types
    if kind == "cluster":  # no cell at all
        pos, cell, types = random_structure(natoms=40, box=11.0, ntypes=ntypes, dmin=2.3, seed=seed, triclinic=False)
        return pos, None, False, types
    raise ValueError(kind)


KINDS = ["random", "triclinic", "small-cell", "skewed", "slab", "cluster"]


@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("kind", KINDS)
def test_structures_give_the_python_paths_integers(qm, kind, seed):
    pos, cell, pbc, types = structure(kind, qm, seed)
    with open_device("reference", qm) as dev:
        a, b = both(qm, dev, lambda ev: ev.compute(pos, cell, pbc, types, atomic_virial=True), chunk_atoms=17)
    assert_same(a, b)
    assert np.abs(a.forces).max() > 0  # a device that computes


@pytest.mark.parametrize("lanes", [1, 2, 3])
@pytest.mark.parametrize("device", ["zero", "reference"])
def test_devices_and_lanes(qm, device, lanes):
    pos, cell, pbc, types = structure("triclinic", qm, 5)
    with open_device(device, qm, lanes=lanes) as dev:
        for chunk in (1, 7, 4096):
            a, b = both(qm, dev, lambda ev: ev.compute(pos, cell, pbc, types, atomic_virial=True), chunk_atoms=chunk)
            assert_same(a, b)


def domain(pos, cell, types, rcut, skin=1.0):
    """An MD code's view of a periodic structure: local atoms, then every periodic image within
    rcut + skin of the cell as a ghost, and the local atoms' full neighbour list with a skin (in a
    shuffled order)."""
    shifts = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)])
    ghosts = (pos[None] + (shifts @ cell)[:, None]).reshape(-1, 3)
    gtypes = np.tile(types, len(shifts))
    frac = ghosts @ np.linalg.inv(cell)
    reach = (rcut + skin) * np.linalg.norm(np.linalg.inv(cell), axis=0)
    keep = ((frac > -reach) & (frac < 1 + reach)).all(axis=1)
    x = np.concatenate([pos, ghosts[keep]])
    t = np.concatenate([types, gtypes[keep]])
    e = edges(x, np.zeros((3, 3)), False, rcut + skin)
    e_i, e_j = e.i[e.i < len(pos)], e.j[e.i < len(pos)]
    rng = np.random.default_rng(0)
    order = np.lexsort((rng.random(len(e_i)), e_i))
    numneigh = np.bincount(e_i, minlength=len(pos))
    return x, t, len(pos), numneigh, e_j[order]


def test_md_domain_with_ghosts_and_skin(qm):
    pos, cell, types = random_structure(natoms=64, box=12.5, ntypes=qm.config.ntypes, dmin=2.3, seed=4)
    x, t, nlocal, numneigh, neighbors = domain(pos, cell, types, qm.config.rcut)
    ids = np.arange(len(x)) * 3 + 11
    with open_device("reference", qm, lanes=2) as dev:
        a, b = both(qm, dev, lambda ev: ev.compute_neighbors(x, t, nlocal, numneigh, neighbors, atomic_virial=True,
                                                              atom_ids=ids), chunk_atoms=20)
    assert_same(a, b)
    assert a.forces.shape == (len(x), 3) and len(a.atomic_energies) == nlocal
    # and the periodic path agrees on the energy of the same structure
    with open_device("reference", qm) as dev:
        c = Evaluator(qm, dev, native=True).compute(pos, cell, True, types)
    assert c.energy_int == a.energy_int


def test_close_contact_same_error_and_allowed_count(qm):
    pos, cell, types = random_structure(natoms=40, box=11.0, ntypes=qm.config.ntypes, dmin=2.4, seed=2)
    d = pos[7] - pos[3]
    pos[7] = pos[3] + d / np.linalg.norm(d) * 0.9 * qm.config.r_min
    with open_device("reference", qm) as dev:
        errors = []
        for nat in (False, True):
            with pytest.raises(CloseContactError) as e:
                Evaluator(qm, dev, native=nat).compute(pos, cell, True, types)
            errors.append(str(e.value))
        assert errors[0] == errors[1]
        assert "atoms 3 and 7" in errors[0] or "atoms 7 and 3" in errors[0]
        a, b = both(qm, dev, lambda ev: ev.compute(pos, cell, True, types), allow_below_rmin=True)
    assert_same(a, b)
    assert a.below_rmin_records >= 2  # the pair, seen from each of its atoms


def narrow_coord(qm, frac: int):
    """The model with a narrower coord format (frac bits more: the range halves per bit), so that
    displacements inside rcut can fall outside it."""
    import copy

    from contract.fixedpoint import Fmt
    c = copy.copy(qm)
    old = qm.formats["coord"]
    c.formats = dict(qm.formats, coord=Fmt(old.bits, frac, old.signed))
    return c


@pytest.mark.parametrize("side", [1, -1], ids=["positive", "negative"])
@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed{s}")
def test_displacements_at_and_beyond_the_coord_range(side, seed):
    """A component whose q = floor(v 2^frac + 0.5) is the format's last value fits; one a step further
    does not: both paths agree on each, and on the error's text."""
    qm = narrow_coord(modelfile.load(MODELS["GeTe"]), 15)  # |dx| <= 4 Å, rcut 7 Å
    f = qm.formats["coord"]
    rng = np.random.default_rng(seed)
    # A pair along x at the edge, a fraction of a step inside it, the rest of the cluster well inside.
    # The pair is seen from both atoms, r_ji = -r_ij: the edge both fit is q = hi one way, -hi the other
    # (lo = -hi - 1 is out of reach for a pair).
    inside = side * (f.hi + 0.5 - rng.uniform(0.05, 0.45)) / 2.0 ** f.frac
    pos = np.array([[0.0, 0.0, 0.0], [inside, 0.3, -0.2], [side * 1.6, 1.7, 0.4]])
    types = np.array([0, 1, 0])
    with open_device("zero", qm) as dev:
        a, b = both(qm, dev, lambda ev: ev.compute(pos, None, False, types), allow_below_rmin=True)
        assert_same(a, b)
        pos[1, 0] += side * 1.0 / 2.0 ** f.frac  # one step further: outside
        messages = []
        for nat in (False, True):
            with pytest.raises(InputRangeError) as e:
                Evaluator(qm, dev, native=nat, allow_below_rmin=True).compute(pos, None, False, types)
            messages.append(str(e.value))
    assert messages[0] == messages[1]
    assert "does not fit the input format s18.15" in messages[0] and "record(s) affected" in messages[0]


@pytest.mark.parametrize("side", [1, -1], ids=["positive", "negative"])
@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed{s}")
def test_given_list_at_and_beyond_the_coord_range(side, seed):
    """The same edge through an MD code's neighbour list (the list kernels, which test the range only
    where the format is narrower than rcut): both paths agree inside, and on the error one step out."""
    qm = narrow_coord(modelfile.load(MODELS["GeTe"]), 15)  # |dx| <= 4 Å, rcut 7 Å
    f = qm.formats["coord"]
    rng = np.random.default_rng(seed)
    inside = side * (f.hi + 0.5 - rng.uniform(0.05, 0.45)) / 2.0 ** f.frac
    x = np.array([[0.0, 0.0, 0.0], [inside, 0.3, -0.2], [side * 1.6, 1.7, 0.4], [20.0, 0.0, 0.0]])
    types = np.array([0, 1, 0, 1], dtype=np.int32)
    numneigh = np.array([3, 3, 3])  # atom 3, beyond rcut of all, a ghost in every list (a skin)
    neighbors = np.array([1, 2, 3, 0, 2, 3, 0, 1, 3])
    with open_device("zero", qm) as dev:
        a, b = both(qm, dev, lambda ev: ev.compute_neighbors(x, types, 3, numneigh, neighbors), allow_below_rmin=True)
        assert_same(a, b)
        x[1, 0] += side * 1.0 / 2.0 ** f.frac  # one step further: outside
        messages = []
        for nat in (False, True):
            with pytest.raises(InputRangeError) as e:
                Evaluator(qm, dev, native=nat, allow_below_rmin=True).compute_neighbors(x, types, 3, numneigh,
                                                                                        neighbors)
            messages.append(str(e.value))
    assert messages[0] == messages[1]
    assert "does not fit the input format s18.15" in messages[0]


def test_more_neighbours_than_sel_same_error(qm):
    # a simple cubic crystal 2.1 Å apart, two types on alternating planes: above sel within rcut
    a, n = 2.1, 4
    grid = np.array([[i, j, k] for i in range(n) for j in range(n) for k in range(n)], dtype=float)
    pos, cell, types = grid * a, np.eye(3) * a * n, (grid[:, 0].astype(int) % qm.config.ntypes)
    x, t, nlocal, numneigh, neighbors = domain(pos, cell, types, qm.config.rcut)
    with open_device("zero", qm) as dev:
        messages = []
        for nat in (False, True):
            with pytest.raises(NeighborOverflowError) as e:
                Evaluator(qm, dev, native=nat).compute_neighbors(x, t, nlocal, numneigh, neighbors,
                                                                 atom_ids=np.arange(len(x)) + 5)
            messages.append(str(e.value))
            with pytest.raises(NeighborOverflowError):
                Evaluator(qm, dev, native=nat).compute(pos, cell, True, types)
    assert messages[0] == messages[1]
    assert messages[0].startswith("atom 5 has ")


def test_type_and_self_neighbour_errors_are_the_python_paths(qm):
    pos, cell, types = random_structure(natoms=20, box=10.0, ntypes=qm.config.ntypes, dmin=2.3, seed=3)
    with open_device("zero", qm) as dev:
        for bad in ([qm.config.ntypes], [-1]):
            t = types.copy()
            t[4] = bad[0]
            texts = []
            for nat in (False, True):
                with pytest.raises(KeyError) as e:
                    Evaluator(qm, dev, native=nat).compute(pos, cell, True, t)
                texts.append(str(e.value))
            assert texts[0] == texts[1]
        x, t, nlocal, numneigh, neighbors = domain(pos, cell, types, qm.config.rcut)
        neighbors = neighbors.copy()
        neighbors[numneigh[0]] = 1  # atom 1 listed as its own neighbour
        texts = []
        for nat in (False, True):
            with pytest.raises(StructureError) as e:
                Evaluator(qm, dev, native=nat).compute_neighbors(x, t, nlocal, numneigh, neighbors)
            texts.append(str(e.value))
        assert texts[0] == texts[1] == "atom 1 is listed as its own neighbour"


class Broken(WorkerDevice):
    """A device whose answers break the contract in one way."""

    name = "broken"

    def __init__(self, qm, how):
        super().__init__(qm)
        self.how = how

    def process(self, beats, n_atoms):
        from contract import wire
        ctype, nbr_type, nbr_d, tags, count = self.decode(beats, n_atoms)
        if self.how == "silent":
            import time
            time.sleep(30)
        if self.how == "order":
            tags = tags[::-1]
        flags = np.zeros(n_atoms, dtype=np.int64)
        if self.how == "saturate":
            flags[2] = 2
        return wire.encode_results(np.zeros(n_atoms), np.zeros(nbr_type.shape + (3,)), flags, count, tags, self.lanes)


@pytest.mark.parametrize("how, error", [("order", DeviceFlagError), ("saturate", DeviceFlagError),
                                        ("silent", DeviceTimeout)])
def test_device_failures_end_in_the_python_paths_errors(qm, how, error):
    # an MD domain: both paths chunk it the same way, so the first failure found is the same one
    pos, cell, types = random_structure(natoms=20, box=10.0, ntypes=qm.config.ntypes, dmin=2.3, seed=3)
    x, t, nlocal, numneigh, neighbors = domain(pos, cell, types, qm.config.rcut)
    texts = []
    for nat in (False, True):
        dev = Broken(qm, how)
        dev.open()
        try:
            with pytest.raises(error) as e:
                Evaluator(qm, dev, native=nat, timeout=1.0).compute_neighbors(x, t, nlocal, numneigh, neighbors)
        finally:
            dev.close() if how != "silent" else None
        texts.append(str(e.value))
    assert texts[0] == texts[1]


def test_native_zero_device_frames_like_the_python_one(qm):
    from contract import wire
    pos, cell, types = random_structure(natoms=30, box=10.0, ntypes=qm.config.ntypes, dmin=2.3, seed=8)
    rng = np.random.default_rng(8)
    nbr_type = rng.integers(-1, qm.config.ntypes, (30, 40))
    d = rng.integers(-1000, 1000, (30, 40, 3))
    for lanes in (1, 4):
        beats = wire.encode_atoms(types, nbr_type, d, lanes)
        with open_device("zero", qm, lanes=lanes) as py, native.open_device("zero", qm, lanes=lanes) as nat:
            assert (py.run(beats, 30) == nat.run(beats, 30)).all()
            with pytest.raises(DeviceError, match="announces 31 atoms"):
                nat.run(beats, 31)


def test_host_model_text_round_trips(qm):
    m = native.model_of(qm)
    assert m.hash == modelfile.content_hash(qm)
    assert m.rcut == qm.config.rcut and list(m.sel) == list(qm.config.sel) and list(m.type_map) == qm.config.type_map
    with pytest.raises(modelfile.ModelFileError, match="incomplete"):
        native._call(native.module().Model, native.host_model_text(qm).replace("end\n", ""))


def test_progress_bar_counts_every_atom(qm, monkeypatch):
    import tqdm

    counted = []

    class Bar:  # records what the core reports, chunk by chunk
        def __init__(self, total, **kw):
            self.total = total

        def update(self, n):
            counted.append(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    pos, cell, pbc, types = structure("triclinic", qm, 9)
    with open_device("zero", qm) as dev:
        quiet = Evaluator(qm, dev, native=True, chunk_atoms=7).compute(pos, cell, pbc, types)
        shown = Evaluator(qm, dev, native=True, chunk_atoms=7, progress=True).compute(pos, cell, pbc, types)
    assert_same(quiet, shown)
    assert sum(counted) == len(pos) and len(counted) == -(-len(pos) // 7)  # every centre, once per chunk


@pytest.mark.parametrize("nat", [False, True], ids=["python", "native"])
def test_a_refused_structure_leaves_the_device_in_step(qm, nat):
    """A structure refused part-way (its close pair in a later chunk, earlier chunks already on the device)
    must not leave their results behind: the next structure on the same device gets its own."""
    pos, cell, types = random_structure(natoms=40, box=11.0, ntypes=qm.config.ntypes, dmin=2.4, seed=2)
    x, t, nlocal, numneigh, neighbors = domain(pos, cell, types, qm.config.rcut)
    bad = x.copy()
    others = np.delete(x, [36, 37], axis=0)
    for u in np.random.default_rng(0).normal(size=(200, 3)):  # a spot 0.9 r_min from 36, clear of the rest
        p = x[36] + u / np.linalg.norm(u) * 0.9 * qm.config.r_min
        if np.linalg.norm(others - p, axis=1).min() > qm.config.r_min + 0.2:
            bad[37] = p
            break
    with open_device("reference", qm) as dev:
        ev = Evaluator(qm, dev, native=nat, chunk_atoms=5)
        with pytest.raises(CloseContactError, match="atoms 3[67] and 3[67] "):  # the last chunk of 5 atoms
            ev.compute_neighbors(bad, t, nlocal, numneigh, neighbors)
        after = ev.compute_neighbors(x, t, nlocal, numneigh, neighbors)
    with open_device("reference", qm) as dev:
        fresh = Evaluator(qm, dev, native=nat, chunk_atoms=5).compute_neighbors(x, t, nlocal, numneigh, neighbors)
    assert_same(after, fresh)


def periodic_raw(qm, dev, pos, cell, types, skin, **options):
    """The core's own periodic evaluation with a given skin: its integers and how it found the pairs."""
    from host.neighbors import frame
    f = frame(pos, cell, True, qm.config.rcut, sum(qm.config.sel))
    return native.module().evaluate_periodic(
        native.model_of(qm), dev.handle, f.pos, np.asarray(types, dtype=np.int32), np.ascontiguousarray(f.cell),
        np.ascontiguousarray(f.basis), np.ascontiguousarray(f.op, dtype=np.int64), np.ascontiguousarray(f.origin),
        [True] * 3, skin=skin, **options)


@pytest.fixture(scope="module")
def cpu_device(qm):
    """The cpu device (the reference's bits, in C++): both paths drive it, and its answers depend on
    every record, so a pair missed or added shows."""
    with native.open_device("cpu", qm, threads=1) as dev:
        yield dev


@pytest.mark.parametrize("kind", ["random", "small-cell", "skewed"])
def test_pair_list_kept_between_evaluations_gives_the_python_paths_integers(qm, cpu_device, kind):
    """An MD run through ASE: the core searches pairs to rcut + skin (1 Å) once and reuses them while no
    atom has moved skin/2 from where it was then, and searches again when one has or the cell changed;
    every step gives the Python path's integers."""
    pos, cell, _, types = structure(kind, qm, 3)
    rng = np.random.default_rng(7)
    ev = {nat: Evaluator(qm, cpu_device, native=nat, allow_below_rmin=True) for nat in (False, True)}
    ev[True].compute(pos + 50.0, cell, True, types)  # whatever an earlier test left: searched again here
    searched_at = None
    for move in (0.0, 0.2, 0.2, 0.6, 0.1, 0.3):
        step = rng.normal(size=pos.shape)
        step *= move / np.linalg.norm(step, axis=1, keepdims=True)
        step[0] = [move, 0, 0]  # atom 0 runs straight: 0.2 + 0.2 stays within 0.5 Å, + 0.6 does not
        pos = pos + step
        a, b = (ev[nat].compute(pos, cell, True, types, atomic_virial=True) for nat in (False, True))
        assert_same(a, b)
        far = np.inf if searched_at is None else np.linalg.norm(pos - searched_at, axis=1).max()
        assert b.pair_list == ("reused" if far < 0.5 - 1e-9 else "built"), (move, far)
        if b.pair_list == "built":
            searched_at = pos.copy()
    # the same positions in a strained cell: searched again
    c = ev[True].compute(pos, cell * 1.001, True, types)
    assert c.pair_list == "built"
    assert_same(ev[False].compute(pos, cell * 1.001, True, types), c)


def test_pairs_entering_rcut_from_the_skin_are_found(qm, cpu_device):
    """Two atoms just beyond rcut at the search, then within it: the reused list must hold the pair."""
    rcut = qm.config.rcut
    cell = np.eye(3) * 30.0
    pos = np.array([[5.0, 5.0, 5.0], [5.0 + rcut + 0.3, 5.0, 5.0], [20.0, 20.0, 20.0]])
    types = np.array([0, qm.config.ntypes - 1, 0])
    ev = Evaluator(qm, cpu_device, native=True)
    ev.compute(pos + 10.0, cell, True, types)  # whatever an earlier test left: searched again here
    first = ev.compute(pos, cell, True, types)
    assert first.pair_list == "built" and not first.forces_int.any()
    moved = pos + [[0.45, 0, 0], [-0.45, 0, 0], [0, 0, 0]]  # now rcut - 0.6 apart, each moved 0.45 Å
    b = ev.compute(moved, cell, True, types)
    assert b.pair_list == "reused"
    assert b.atomic_energies[0] != first.atomic_energies[0]  # the pair is there (its force rounds to 0)
    assert_same(Evaluator(qm, cpu_device, native=False).compute(moved, cell, True, types), b)


def test_skin_zero_searches_every_time_with_the_same_bits(qm, cpu_device):
    pos, cell, _, types = structure("triclinic", qm, 5)
    raw = [periodic_raw(qm, cpu_device, pos, cell, types, skin) for skin in (0.0, 1.0, 1.0, 2.5)]
    assert [r["pair_list"] for r in raw] == ["searched", "built", "reused", "built"]
    for r in raw[1:]:
        assert r["energy"] == raw[0]["energy"] and (r["forces"] == raw[0]["forces"]).all()
        assert r["virial"] == raw[0]["virial"]
    assert raw[0]["forces"].any()


def test_a_pair_list_past_its_memory_bound_is_not_kept(qm, cpu_device):
    """Options::pair_list_bytes: a structure whose pairs need more is searched every evaluation (tried
    once per box), with the same bits."""
    pos, cell, _, types = structure("random", qm, 6)
    assert periodic_raw(qm, cpu_device, pos, cell, types, 1.0)["pair_list"] == "built"
    moved = pos + [0.6, 0, 0]  # beyond skin/2: searched again, now under a bound it does not fit
    raw = [periodic_raw(qm, cpu_device, moved, cell, types, 1.0, pair_list_bytes=4096) for _ in range(2)]
    raw.append(periodic_raw(qm, cpu_device, moved, cell, types, 0.0))
    assert [r["pair_list"] for r in raw] == ["searched"] * 3
    for r in raw[:2]:
        assert r["energy"] == raw[2]["energy"] and (r["forces"] == raw[2]["forces"]).all()
    assert periodic_raw(qm, cpu_device, moved + 0.6, cell, types, 1.0)["pair_list"] == "searched"  # same box
    assert periodic_raw(qm, cpu_device, moved, cell * 1.01, types, 1.0)["pair_list"] == "built"  # a new one


def test_int32_neighbour_indices_read_as_they_are(qm, cpu_device):
    """An MD code's own int indices (LAMMPS's) give the bits of the same list in int64, errors included."""
    pos, cell, types = random_structure(natoms=64, box=12.5, ntypes=qm.config.ntypes, dmin=2.3, seed=9)
    x, t, nlocal, numneigh, neighbors = domain(pos, cell, types, qm.config.rcut)
    call = native.module().evaluate_neighbors
    args = (native.model_of(qm), cpu_device.handle, x, t.astype(np.int32), nlocal, numneigh.astype(np.int64))
    a, b = (call(*args, neighbors.astype(dtype), atomic_virial=True) for dtype in (np.int64, np.int32))
    assert a["forces"].any()
    for key in ("energy", "virial", "below_rmin"):
        assert a[key] == b[key]
    for key in ("forces", "e_atom", "flags", "s_atom"):
        assert (a[key] == b[key]).all()
    bad = neighbors.astype(np.int32)
    bad[5] = len(x)
    with pytest.raises(RuntimeError, match="neighbour list entry 5 = "):
        call(*args, bad)
