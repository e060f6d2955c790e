"""host.evaluate through the devices: exactly model.assembly.compute (the model issue's reference
assembly) for every device, chunk size and lane count; bad input named, nothing dropped."""

from __future__ import annotations

import numpy as np
import pytest

from gen.ir import Knobs
from host.devices import DeviceError, open_device
from host.devices.base import WorkerDevice
from host.evaluate import Evaluator
from host.neighbors import StructureError
from model.assembly import DeviceFlagError
from contract import modelfile
from model.assembly import compute
from contract.paths import EXAMPLE_MODEL
from model.neighbors import NeighborOverflowError
from support import GETE_216, random_structure, require_shared, tiny_qm


@pytest.fixture(scope="module")
def gete():
    qm = modelfile.load(EXAMPLE_MODEL)
    from ase.build import bulk
    atoms = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.15, seed=2)
    from model.assembly import map_types
    return qm, atoms.positions, atoms.cell.array, map_types(atoms.get_chemical_symbols(), qm.config.type_map)


def assert_exact(r, ref):
    assert r.energy_int == ref.energy_int
    np.testing.assert_array_equal(r.forces_int, ref.forces_int)
    assert (r.virial_int == ref.virial_int).all()
    assert r.energy == ref.energy
    np.testing.assert_array_equal(r.forces, ref.forces)


@pytest.mark.parametrize("lanes", [1, 3])
@pytest.mark.parametrize("chunk", [1, 37, 4096])
def test_reference_device_equals_assembly(gete, chunk, lanes):
    qm, pos, cell, types = gete
    ref = compute(qm, pos, cell, True, types)
    with open_device("reference", qm, lanes=lanes) as dev:
        r = Evaluator(qm, dev, chunk_atoms=chunk).compute(pos, cell, True, types)
    assert_exact(r, ref)
    np.testing.assert_array_equal(r.atomic_energies, ref.atomic_energies)


def test_real_gete_frame(gete):
    require_shared(GETE_216)
    from model.data import load_deepmd
    qm = gete[0]
    s = load_deepmd(GETE_216 / "s2-melt-1000K" / sorted(p.name for p in (GETE_216 / "s2-melt-1000K").iterdir())[0])
    s = s.remap_types(qm.config.type_map)
    ref = compute(qm, s.coords[0], s.cells[0], True, s.types)
    with open_device("reference", qm) as dev:
        assert_exact(Evaluator(qm, dev, chunk_atoms=50).compute(s.coords[0], s.cells[0], True, s.types), ref)


def test_atomic_virial_sums_to_virial(gete):
    qm, pos, cell, types = gete
    with open_device("reference", qm) as dev:
        r = Evaluator(qm, dev, chunk_atoms=20).compute(pos, cell, True, types, atomic_virial=True)
    np.testing.assert_allclose(r.atomic_virial.sum(axis=0), r.virial, rtol=1e-12, atol=1e-9)


@pytest.mark.verilator
def test_rtl_device_equals_reference_device():
    """The generated RTL (standalone Verilator) behind the same host code: identical integers."""
    from sim import runner
    try:
        runner.check_simulator("verilator")
    except runner.SimulatorMissing as e:
        pytest.skip(str(e))
    qm = tiny_qm()
    pos, cell, types = random_structure(natoms=30, seed=12)
    with open_device("reference", qm) as dev:
        ref = Evaluator(qm, dev, chunk_atoms=7).compute(pos, cell, True, types)
    with open_device("rtl", qm, knobs=Knobs(lanes=1, fit_par=2, desc_par=4)) as dev:
        r = Evaluator(qm, dev, chunk_atoms=7).compute(pos, cell, True, types)
    assert_exact(r, ref)


def test_more_neighbours_than_sel_is_named(gete):
    qm, pos, cell, types = gete
    squeezed = pos * 0.6  # denser than any sel allows, in a cell scaled the same way
    with open_device("reference", qm) as dev, pytest.raises(NeighborOverflowError, match=r"atom \d+ has \d+ neighbours"):
        Evaluator(qm, dev).compute(squeezed, cell * 0.6, True, types)


def test_unknown_type_is_named(gete):
    qm, pos, cell, types = gete
    bad = types.copy()
    bad[5] = 7
    with open_device("reference", qm) as dev, pytest.raises(KeyError, match="atom 5"):
        Evaluator(qm, dev).compute(pos, cell, True, bad)


def test_atom_outside_open_box_is_named(gete):
    qm, pos, cell, types = gete
    far = pos.copy()
    far[9] += [0, 0, 500.0]
    with open_device("reference", qm) as dev, pytest.raises(StructureError, match="atom 9"):
        Evaluator(qm, dev).compute(far, cell, [True, True, False], types)


class _SilentDevice(WorkerDevice):
    """A device that takes chunks and never answers."""
    name = "silent"

    def process(self, beats, n_atoms):
        import time
        time.sleep(60)


def test_device_that_stops_answering_times_out(gete):
    qm, pos, cell, types = gete
    dev = _SilentDevice(qm)
    dev.open()
    with pytest.raises(DeviceError, match="no result within 0.5 s"):
        Evaluator(qm, dev, timeout=0.5).compute(pos, cell, True, types)


class _ShuffledDevice(WorkerDevice):
    """A device that answers a chunk with its atoms' results in the wrong order (swaps two atoms)."""
    name = "shuffled"

    def process(self, beats, n_atoms):
        from host.devices.reference import ReferenceDevice
        ref = ReferenceDevice(self.qm, self.lanes)
        out = ref.process(beats, n_atoms)
        from contract import wire
        heads = np.flatnonzero(wire.kind(out[:, 0]) == wire.HEADER)
        a = out[heads[0]:heads[1]]
        b = out[heads[1]:heads[2]]
        return np.concatenate([b, a, out[heads[2]:]])


def test_results_out_of_order_are_detected(gete):
    qm, pos, cell, types = gete
    dev = _ShuffledDevice(qm)
    dev.open()
    with pytest.raises(DeviceFlagError, match="out of order"):
        Evaluator(qm, dev, chunk_atoms=16).compute(pos, cell, True, types)
    dev.close()


# ---- close contacts (below r_min) and atoms without neighbours ----------------------------------------

def _pushed(qm, r, nrep=2):
    """64-atom rock salt with the Te nearest to Ge 0 moved to distance r of it along their bond."""
    from ase.build import bulk

    from model.assembly import map_types
    atoms = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat(nrep)
    u = atoms.positions[1] - atoms.positions[0]  # atom 1 is the Te at a/2 along x
    u /= np.linalg.norm(u)
    atoms.positions[1] = atoms.positions[0] + r * u
    return atoms.positions, atoms.cell.array, map_types(atoms.get_chemical_symbols(), qm.config.type_map), u


def test_pair_below_r_min_is_an_error_naming_both_atoms_the_distance_and_r_min():
    from model.assembly import CloseContactError
    qm = modelfile.load(EXAMPLE_MODEL)
    pos, cell, types, _ = _pushed(qm, 1.2)
    with open_device("reference", qm) as dev:
        with pytest.raises(CloseContactError, match=r"atoms 0 and 1 are 1\.2000 Å apart, closer than the model's "
                                                    r"r_min 1\.85 Å.*shortest distance is 2\.063 Å.*below_rmin allow"):
            Evaluator(qm, dev).compute(pos, cell, True, types)
        # the same for an MD code's neighbour list, naming atoms by its ids
        ids = np.arange(len(pos)) + 100
        n = len(pos)
        nb = [[j for j in range(n) if j != i] for i in range(n)]
        with pytest.raises(CloseContactError, match=r"atoms 10[01] and 10[01] are 1\.2000 Å apart"):
            Evaluator(qm, dev).compute_neighbors(pos, types, n, [len(x) for x in nb], sum(nb, []), atom_ids=ids)
    with pytest.raises(CloseContactError, match=r"atoms 0 and 1 are 1\.2000 Å apart"):
        compute(qm, pos, cell, True, types)


@pytest.mark.parametrize("r", [1.0, 1.2, 1.6])
def test_below_r_min_when_allowed_forces_are_the_gradient_of_the_energy(r):
    """With below_rmin allowed the tables are constant below r_min, value *and* slope, so the force on
    the pushed atom is the derivative of the computed energy (central difference, h = 2 mÅ).  Bound:
    5 % of max(|dE/dr|, 2 eV/Å), what the fixed-point force differs by at ordinary distances (3 % at
    2.0 Å).  The clamped value with the slope at r_min that this replaces gave 6.2 eV/Å against 1.5 at
    1.2 Å.  The RTL's table stage does the same (tests/gen/test_stages.py, tests/sim)."""
    qm = modelfile.load(EXAMPLE_MODEL)
    h = 2e-3
    with open_device("reference", qm) as dev:
        ev = Evaluator(qm, dev, allow_below_rmin=True)

        def run(dist):
            pos, cell, types, u = _pushed(qm, dist)
            return ev.compute(pos, cell, True, types), u
        res, u = run(r)
        fd = -(run(r + h)[0].energy - run(r - h)[0].energy) / (2 * h)
    assert res.below_rmin_records == 2  # the pair, seen from both atoms
    assert abs(res.forces[1] @ u - fd) <= 0.05 * max(abs(fd), 2.0), (res.forces[1] @ u, fd)
    # the reference path agrees bit for bit
    pos, cell, types, _ = _pushed(qm, r)
    assert_exact(res, compute(qm, pos, cell, True, types, allow_below_rmin=True))


def test_atoms_without_neighbours_are_evaluated():
    """Each isolated atom's energy is its fitting net at D = 0 plus its type's bias, on any chunking;
    forces on it are zero; the rest of the structure is unchanged by its presence."""
    qm = modelfile.load(EXAMPLE_MODEL)
    pos = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 9.0, 0.0], [2.8, 9.0, 0.0]])
    types = np.array([0, 0, 0, 1])  # two lone Ge atoms and a Ge-Te pair
    with open_device("reference", qm) as dev:
        for chunk in (1, 2, 4096):
            r = Evaluator(qm, dev, chunk_atoms=chunk).compute(pos, None, False, types)
            assert_exact(r, compute(qm, pos, None, False, types))
            np.testing.assert_array_equal(r.forces[:2], 0.0)
            assert r.atomic_energies[0] == r.atomic_energies[1]
            pair = Evaluator(qm, dev).compute(pos[2:], None, False, types[2:])
            assert r.energy_int == 2 * int(r.atomic_energies[0] * 2 ** qm.formats["E"].frac) + pair.energy_int
        lone = Evaluator(qm, dev).compute(pos[:1], None, False, types[:1])
    from model.reference import NeighborRecords, evaluate
    e0 = evaluate(qm, NeighborRecords(np.array([0]), np.zeros((1, 0), np.int64), np.zeros((1, 0, 3), np.int64)))
    assert lone.energy_int == int(e0.energy[0] + qm.energy_bias[0])


def test_atoms_without_neighbours_and_close_pairs_on_the_rtl_device():
    """The generated RTL (standalone Verilator) gives the reference device's bits for atoms with no
    record and, when allowed, for pairs below r_min."""
    from sim import runner
    try:
        runner.check_simulator("verilator")
    except runner.SimulatorMissing as e:
        pytest.skip(str(e))
    qm = tiny_qm()
    pos = np.array([[0.0, 0.0, 0.0], [12.0, 0.0, 0.0], [0.0, 12.0, 0.0], [1.3, 12.0, 0.0], [0.0, 0.0, 12.0]])
    types = np.array([0, 1, 0, 1, 1])
    with open_device("reference", qm) as dev:
        ref = Evaluator(qm, dev, allow_below_rmin=True).compute(pos, None, False, types)
    with open_device("rtl", qm, knobs=Knobs(lanes=1, fit_par=2, desc_par=4)) as dev:
        r = Evaluator(qm, dev, allow_below_rmin=True).compute(pos, None, False, types)
    assert ref.below_rmin_records == r.below_rmin_records == 2
    assert_exact(r, ref)


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("chunk, lanes", [(1, 1), (13, 3), (4096, 2)])
def test_imported_deepmd_model_through_the_host_equals_assembly(native, chunk, lanes):
    """A quantized DeePMD-kit import (options env_norm, pad_slots, fit_activation tanh): the Python and the
    native host with the reference device give exactly model.assembly.compute's integers."""
    from deepmd_graph import imported_qm
    from host import native as native_core
    if native and not native_core.available():
        pytest.skip(f"native host core not available: {native_core.why_not()}")
    qm, _ = imported_qm()
    assert qm.config.options().keys() == {"env_norm", "pad_slots", "fit_activation"}
    pos, cell, types = random_structure(natoms=30, box=9.0, dmin=2.0, seed=23)
    ref = compute(qm, pos, cell, True, types)
    with open_device("reference", qm, lanes=lanes) as dev:
        r = Evaluator(qm, dev, chunk_atoms=chunk, native=native).compute(pos, cell, True, types)
    assert_exact(r, ref)
    np.testing.assert_array_equal(r.atomic_energies, ref.atomic_energies)
