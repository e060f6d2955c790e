"""Tests for model/data.py: DeePMD npy and ASE I/O, splitting, error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.data import (
    DataError,
    System,
    dataset_summary,
    find_systems,
    load_ase,
    load_deepmd,
    load_systems,
    split_frames,
    write_deepmd,
)

from support import SHARED_DATA
GETE_300K = SHARED_DATA / "GeTe-aimd" / "216atom-melt-quench" / "s3-quench-300K" / "temp-300K"


def random_system(nframes=7, natoms=5, seed=1, virials=True, name="synthetic") -> System:
    """A random triclinic periodic system with every label, in float64."""
    rng = np.random.default_rng(seed)
    cells = np.diag([6.0, 7.0, 8.0]) + rng.uniform(-0.5, 0.5, (nframes, 3, 3))
    frac = rng.uniform(-0.5, 1.5, (nframes, natoms, 3))  # some atoms outside the cell
    return System(
        name=name,
        type_map=["Ge", "Sb", "Te"],
        types=rng.permutation(np.arange(natoms) % 3),  # every element present
        coords=np.matmul(frac, cells),
        cells=cells,
        pbc=True,
        energies=rng.normal(-100.0, 1.0, nframes),
        forces=rng.normal(0.0, 1.0, (nframes, natoms, 3)),
        virials=(lambda v: v + v.transpose(0, 2, 1))(rng.normal(0.0, 1.0, (nframes, 3, 3))) if virials else None,
    )


def assert_same(a: System, b: System) -> None:
    """Exact equality of everything except the name."""
    assert a.type_map == b.type_map
    assert a.pbc == b.pbc
    np.testing.assert_array_equal(a.types, b.types)
    for field in ("coords", "cells", "energies", "forces", "virials"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            assert y.dtype == np.float64, field
            np.testing.assert_array_equal(x, y, err_msg=field)


# -- DeePMD npy -----------------------------------------------------------------


@pytest.mark.parametrize("set_size", [None, 3, 7, 100])
def test_deepmd_round_trip_is_exact(tmp_path, set_size):
    system = random_system()
    write_deepmd(system, tmp_path / "sys", set_size=set_size)
    n_sets = 1 if set_size is None else -(-system.nframes // set_size)
    assert len(list((tmp_path / "sys").glob("set.*"))) == n_sets
    assert np.load(tmp_path / "sys" / "set.000" / "coord.npy").shape[1] == 3 * system.natoms
    assert np.load(tmp_path / "sys" / "set.000" / "box.npy").shape[1] == 9
    assert_same(system, load_deepmd(tmp_path / "sys"))


def test_deepmd_round_trip_without_labels_and_nopbc(tmp_path):
    s = random_system(virials=False)
    s = System(s.name, s.type_map, s.types, s.coords, np.zeros_like(s.cells), pbc=False)
    write_deepmd(s, tmp_path / "sys")
    assert (tmp_path / "sys" / "nopbc").exists()
    back = load_deepmd(tmp_path / "sys")
    assert_same(s, back)
    np.testing.assert_array_equal(back.wrapped_coords(), s.coords)  # no wrapping without pbc


def test_write_refuses_existing_system_unless_overwrite(tmp_path):
    write_deepmd(random_system(), tmp_path / "sys", set_size=2)  # 4 sets
    small = random_system(nframes=2)
    with pytest.raises(FileExistsError):
        write_deepmd(small, tmp_path / "sys")
    write_deepmd(small, tmp_path / "sys", overwrite=True)
    assert_same(small, load_deepmd(tmp_path / "sys"))  # no stale set.001..003 merged in


def test_deepmd_float32_flat_input_and_default_type_names(tmp_path):
    """Hand-written DeePMD data as the sources ship it: float32, no type_map.raw."""
    s = random_system(nframes=3, natoms=4, virials=False)
    d = tmp_path / "sys"
    (d / "set.000").mkdir(parents=True)
    (d / "type.raw").write_text(" ".join(map(str, s.types)) + "\n")
    np.save(d / "set.000" / "box.npy", s.cells.reshape(3, 9).astype(np.float32))
    np.save(d / "set.000" / "coord.npy", s.coords.reshape(3, -1).astype(np.float32))
    np.save(d / "set.000" / "energy.npy", s.energies.astype(np.float32))
    back = load_deepmd(d)
    assert back.type_map == [f"type{i}" for i in range(s.types.max() + 1)]
    assert back.coords.dtype == np.float64 and back.coords.shape == (3, 4, 3)
    np.testing.assert_array_equal(back.coords, s.coords.astype(np.float32).astype(np.float64))
    assert back.forces is None and back.virials is None


def test_missing_and_truncated_npy_name_the_file(tmp_path):
    d = write_deepmd(random_system(), tmp_path / "sys", set_size=4)

    coord = d / "set.001" / "coord.npy"
    data = coord.read_bytes()
    coord.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"set\.001.coord\.npy"):
        load_deepmd(d)
    coord.unlink()
    with pytest.raises(DataError, match=r"missing file .*set\.001.coord\.npy"):
        load_deepmd(d)
    coord.write_bytes(data)
    load_deepmd(d)  # restored

    # An optional label present in one set but not another is an error too.
    (d / "set.001" / "force.npy").unlink()
    with pytest.raises(DataError, match=r"force\.npy.*missing in \['set\.001'\]"):
        load_deepmd(d)

    (d / "type.raw").unlink()
    with pytest.raises(DataError, match=r"type\.raw"):
        load_deepmd(d)


def test_shape_mismatch_names_file_and_shapes(tmp_path):
    d = write_deepmd(random_system(nframes=4, natoms=5), tmp_path / "sys")
    np.save(d / "set.000" / "force.npy", np.zeros((4, 3 * 6)))
    with pytest.raises(DataError, match=r"force\.npy has shape \(4, 18\), expected \(4, 15\)"):
        load_deepmd(d)
    np.save(d / "set.000" / "force.npy", np.zeros((4, 15)))
    np.save(d / "set.000" / "energy.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"energy\.npy has shape \(3,\), expected \(4,\)"):
        load_deepmd(d)
    np.save(d / "set.000" / "energy.npy", np.zeros(4))
    (d / "type.raw").write_text("0\n1\n0\n1\n")  # 4 atoms, coord.npy has 5
    with pytest.raises(DataError, match=r"coord\.npy has shape \(4, 15\), expected \(4, 12\)"):
        load_deepmd(d)


def test_non_finite_values_are_rejected(tmp_path):
    d = write_deepmd(random_system(nframes=4), tmp_path / "sys")
    energy = np.load(d / "set.000" / "energy.npy")
    energy[2] = np.nan
    np.save(d / "set.000" / "energy.npy", energy)
    with pytest.raises(DataError, match=r"energy\.npy has non-finite values in frame\(s\) \[2\]"):
        load_deepmd(d)


def test_validate_names_system_and_problem():
    s = random_system(name="bad-one")
    s.forces = s.forces[:, :-1]
    with pytest.raises(DataError, match=r"'bad-one'.*forces must have shape"):
        s.validate()


# -- finding and loading many ------------------------------------------------------


def test_find_and_load_systems(tmp_path):
    write_deepmd(random_system(seed=1), tmp_path / "root" / "b" / "sys")
    write_deepmd(random_system(seed=2), tmp_path / "root" / "a")
    (tmp_path / "root" / "empty").mkdir()
    found = find_systems(tmp_path / "root")
    assert found == [tmp_path / "root" / "a", tmp_path / "root" / "b" / "sys"]

    systems = load_systems(tmp_path / "root")
    assert [s.name for s in systems] == [str(p) for p in found]
    # A system directory given directly, and a list mixing the forms.
    assert len(load_systems([tmp_path / "root" / "a", str(tmp_path / "root" / "b")])) == 2

    with pytest.raises(DataError, match="no DeePMD systems"):
        load_systems(tmp_path / "root" / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_systems(tmp_path / "nowhere")


# -- ASE ---------------------------------------------------------------------


def test_extxyz_round_trip(tmp_path):
    from ase.io import write

    a = random_system(nframes=3, natoms=5, seed=3, name="a")
    b = random_system(nframes=2, natoms=4, seed=4, name="b")
    frames = [a.to_atoms(0), b.to_atoms(0), a.to_atoms(1), a.to_atoms(2), b.to_atoms(1)]
    path = tmp_path / "mixed.extxyz"
    write(path, frames, format="extxyz")

    systems = load_ase(path)
    assert [s.name for s in systems] == ["mixed[0]", "mixed[1]"]
    for ref, got in zip((a, b), systems):
        assert got.type_map == ["Ge", "Sb", "Te"]  # default: sorted symbols of the whole file
        assert got.nframes == ref.nframes
        assert [got.type_map[t] for t in got.types] == [ref.type_map[t] for t in ref.types]
        # extxyz stores text with ~1e-8 precision, not bit-exact floats.
        for field in ("coords", "cells", "energies", "forces", "virials"):
            np.testing.assert_allclose(getattr(got, field), getattr(ref, field), rtol=1e-6, atol=1e-6, err_msg=field)

    # load_systems dispatches files to load_ase; a model type map renumbers.
    remapped = load_systems(path, type_map=["Te", "Sb", "Ge"])
    assert remapped[0].type_map == ["Te", "Sb", "Ge"]
    assert [remapped[0].type_map[t] for t in remapped[0].types] == [a.type_map[t] for t in a.types]


def test_extxyz_mixed_energy_is_an_error(tmp_path):
    from ase.io import write

    s = random_system(nframes=2, natoms=3)
    bare = s.to_atoms(1)
    bare.calc = None
    write(tmp_path / "mixed.extxyz", [s.to_atoms(0), bare], format="extxyz")
    with pytest.raises(DataError, match=r"energy is present in some frames but missing in frame\(s\) \[1\]"):
        load_ase(tmp_path / "mixed.extxyz")

    write(tmp_path / "none.extxyz", [bare, bare], format="extxyz")
    (unlabelled,) = load_ase(tmp_path / "none.extxyz")
    assert unlabelled.energies is None and unlabelled.forces is None and unlabelled.nframes == 2


# -- types, splitting, summary ----------------------------------------------------


def test_remap_types():
    s = random_system(name="gst")
    r = s.remap_types(["Te", "X", "Sb", "Ge"])
    assert [r.type_map[t] for t in r.types] == [s.type_map[t] for t in s.types]
    with pytest.raises(DataError) as err:
        s.remap_types(["Ge", "Te"])
    assert "Sb" in str(err.value) and "gst" in str(err.value)


def test_split_frames_deterministic_disjoint_complete():
    systems = [random_system(nframes=10, seed=1, name="ten"), random_system(nframes=1, seed=2, name="one"),
               random_system(nframes=5, seed=3, name="five")]
    train, valid = split_frames(systems, valid_fraction=0.4, seed=7)
    train2, valid2 = split_frames(systems, valid_fraction=0.4, seed=7)
    for x, y in zip(train + valid, train2 + valid2):
        assert_same(x, y)
    assert [s.name for s in train] == ["ten", "one", "five"]
    assert [s.name for s in valid] == ["ten", "five"]  # the one-frame system stays in train
    assert [s.nframes for s in valid] == [4, 2]

    # Every frame in exactly one side: identify frames by their energy.
    for src in systems:
        got = np.concatenate([s.energies for s in train + valid if s.name == src.name])
        np.testing.assert_array_equal(np.sort(got), np.sort(src.energies))

    other, _ = split_frames(systems, valid_fraction=0.4, seed=8)
    assert not np.array_equal(other[0].energies, train[0].energies)

    no_valid = split_frames(systems, valid_fraction=0.0)[1]
    assert no_valid == []


def test_wrapped_coords_and_summary():
    s = random_system()
    w = s.wrapped_coords()
    frac = np.matmul(w, np.linalg.inv(s.cells))
    assert frac.min() >= -1e-12 and frac.max() < 1.0 + 1e-12
    # Wrapping moves atoms by whole lattice vectors only.
    shift = np.matmul(s.coords - w, np.linalg.inv(s.cells))
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)

    summary = dataset_summary([s, s.subset([0, 1])])
    json.dumps(summary)  # plain Python types only
    assert summary["frames"] == s.nframes + 2 and summary["systems"] == 2
    assert summary["atoms"] == (s.nframes + 2) * s.natoms
    assert summary["force_rms"] > 0 and summary["per_system"][1]["frames"] == 2


# -- the real GeTe data -----------------------------------------------------------


@pytest.mark.shared_data
def test_real_gete_216_atom_system():
    if not GETE_300K.is_dir():
        pytest.skip(f"shared GeTe data not found at {GETE_300K} (needs a ../shared/data next to the checkout)")
    s = load_deepmd(GETE_300K)
    assert (s.nframes, s.natoms) == (400, 216)
    assert s.type_map == ["Ge", "Te"]
    assert s.pbc and s.virials is None
    assert s.energies.dtype == np.float64 and s.forces.shape == (400, 216, 3)
    assert np.bincount(s.types).tolist() == [108, 108]

    # The stored coordinates are unwrapped; wrapped ones lie inside the cell.
    frac_raw = np.matmul(s.coords, np.linalg.inv(s.cells))
    assert frac_raw.min() < 0 or frac_raw.max() >= 1
    frac = np.matmul(s.wrapped_coords(), np.linalg.inv(s.cells))
    assert frac.min() >= 0.0 and frac.max() < 1.0 + 1e-12

    summary = dataset_summary([s])
    assert summary["energy_per_atom_mean"] == pytest.approx(-164.7331, abs=1e-3)
    assert summary["force_rms"] == pytest.approx(0.354, abs=2e-3)

    atoms = s.to_atoms(0)
    assert atoms.get_chemical_formula() == "Ge108Te108"
    assert atoms.get_potential_energy() == pytest.approx(s.energies[0])
