"""host.ase.Calculator: exactly the reference assembly, consistent stress, usable by ASE MD."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from host.ase import Calculator
from model.assembly import compute, map_types


@pytest.fixture
def atoms():
    a = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((2, 2, 2))
    a.rattle(0.1, seed=1)
    return a


def test_energy_forces_equal_reference_assembly(atoms):
    atoms.calc = Calculator()  # model=None: the bundled example
    qm = atoms.calc.qm
    ref = compute(qm, atoms.positions, atoms.cell.array, True, map_types(atoms.get_chemical_symbols(), qm.config.type_map))
    assert atoms.get_potential_energy() == ref.energy
    np.testing.assert_array_equal(atoms.get_forces(), ref.forces)
    np.testing.assert_array_equal(atoms.calc.get_property("energies"), ref.atomic_energies)
    assert atoms.calc.get_property("energies").sum() == pytest.approx(ref.energy, abs=1e-9)


def float_stress(atoms, qm):
    """Stress of the float model the quantized one came from (autograd virial; its consistency with
    finite differences is tested in tests/model)."""
    import torch
    from ase.stress import full_3x3_to_voigt_6_stress

    from model.assembly import neighbor_blocks
    from model.network import evaluate
    from model.quantize import float_model
    types = map_types(atoms.get_chemical_symbols(), qm.config.type_map)
    nb = neighbor_blocks(qm, atoms.positions, atoms.cell.array, True, types)
    valid = nb.nbr_type >= 0
    n = len(atoms)
    center = torch.as_tensor(np.broadcast_to(np.arange(n)[:, None], valid.shape)[valid])
    _, _, v, _ = evaluate(float_model(qm), torch.as_tensor(nb.nbr_vec[valid]), center,
                          torch.as_tensor(nb.nbr_index[valid]), torch.as_tensor(types),
                          torch.zeros(n, dtype=torch.long), 1)
    return full_3x3_to_voigt_6_stress(-v[0].detach().numpy() / atoms.cell.volume)


def test_stress_matches_float_model(atoms):
    """Sign and convention of the stress (-virial/V): against the float model's stress.
    Bound 5e-5 eV/Å^3 (stress here ~2e-2): measured 1.2e-5, the quantized dE/dr differing from the
    float ones by ~0.5 meV/Å RMS (model issue).  Finite differences of the *quantized* energy are no
    check here: its rounding steps move the difference quotient by ~3e-4 eV/Å^3 at strain 1e-3."""
    atoms.calc = Calculator()
    s = atoms.get_stress()
    np.testing.assert_allclose(s, float_stress(atoms, atoms.calc.qm), atol=5e-5)
    assert np.abs(s[:3]).min() > 1e-3  # a stress worth comparing
    per_atom = atoms.calc.get_property("stresses")
    np.testing.assert_allclose(per_atom.sum(axis=0), s, rtol=1e-10, atol=1e-12)


def test_unknown_element_is_named(atoms):
    atoms.symbols[3] = "Sb"
    atoms.calc = Calculator()
    with pytest.raises(KeyError, match="atom 3: element 'Sb'"):
        atoms.get_potential_energy()


def test_nve_md_conserves_energy(atoms):
    """20 velocity-Verlet steps of 2 fs at 600 K: total energy drift below 5 meV for 64 atoms
    (measured ~0.3 meV; the quantized forces are not exactly conservative, the float model's are)."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet
    atoms.calc = Calculator()
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, 2 * units.fs).run(20)
    assert abs(atoms.get_total_energy() - e0) < 5e-3
