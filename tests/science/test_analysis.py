"""Tests for science/analysis.py: g(r), coordination numbers, ALTBC, peaks, reference curves, I/O, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from model.data import System, load_deepmd, write_deepmd
from science import analysis as an
from science.cli import main
from support import GETE_216, SHARED_DATA, random_structure, require_shared

REFERENCE = SHARED_DATA / "GeTe-aimd-reference"
GETE_300K = GETE_216 / "s3-quench-300K" / "temp-300K"


def seeded(*seeds):
    """Parametrize over seeds, with the seed in the test id."""
    return pytest.mark.parametrize("seed", seeds, ids=[f"seed{s}" for s in seeds])


def rocksalt(a=6.0, reps=(3, 3, 3), noise=0.0, peierls=0.0, seed=0) -> Atoms:
    """Cubic rock-salt GeTe; Ge moved by `peierls` Å along x, y and z ([111]), Gaussian noise `noise` Å."""
    atoms = bulk("GeTe", "rocksalt", a=a, cubic=True).repeat(reps)
    ge = np.array(atoms.get_chemical_symbols()) == "Ge"
    atoms.positions[ge] += peierls
    atoms.positions += np.random.default_rng(seed).normal(0.0, noise, atoms.positions.shape)
    return atoms


def ideal_gas(natoms, cell, symbols, rng) -> Atoms:
    return Atoms(symbols=symbols, scaled_positions=rng.random((natoms, 3)), cell=cell, pbc=True)


# -- g(r) -------------------------------------------------------------------------------------------


@seeded(0, 1)
def test_ideal_gas_gives_one_within_counting_noise(seed):
    """Uniform random points: every g_ab(r) equals 1 up to pair-counting noise.

    Pair counts of independent uniform points are Poisson-like: a partial bin expecting E pairs of
    distinct atoms has σ(g) = sqrt((1 + δ_ab) / E) (like pairs are counted in both orders).  Every
    bin must lie within 5σ of 1, and the E-weighted mean of g within 4σ of the mean, a bound of about
    0.5 %; a small system (10 + 14 atoms) makes the self-pair term of the normalisation 7-10 %, so
    leaving it out, or any error of that size, fails.  rmax 7.5 Å > half the 8 Å triclinic box, so
    the counting of several images of one pair is checked too.
    """
    rng = np.random.default_rng(seed)
    cell = np.array([[8.0, 0, 0], [1.6, 8.0, 0], [-0.8, 1.2, 8.0]])
    counts = {"Ge": 10, "Te": 14}
    symbols = ["Ge"] * 10 + ["Te"] * 14
    frames = [ideal_gas(24, cell, symbols, rng) for _ in range(300)]
    res = an.rdf(frames, rmax=7.5, nbins=30)
    shell = 4 / 3 * np.pi * np.diff(res.edges ** 3)
    n = len(symbols)
    # (curve, ordered pairs of distinct atoms per frame, variance factor 1 + δ_ab)
    cases = [("total", n * (n - 1), 2)] + [(f"{a}-{b}", counts[a] * (counts[b] - (a == b)), 1 + (a == b))
                                           for a, b in (("Ge", "Ge"), ("Ge", "Te"), ("Te", "Te"))]
    for name, pairs, factor in cases:
        expected = pairs * shell / abs(np.linalg.det(cell)) * len(frames)  # distinct-atom pairs per bin
        use = expected > 50  # where the Poisson approximation holds
        g = res.curve(name)[use]
        z = (g - 1.0) / np.sqrt(factor / expected[use])
        assert np.abs(z).max() < 5, (name, np.abs(z).max())
        mean = np.sum(expected[use] * g) / expected[use].sum()
        assert abs(mean - 1.0) < 4 * np.sqrt(factor / expected[use].sum()), (name, mean)


def test_rocksalt_first_peak_and_coordination():
    """GeTe rock salt, a = 6 Å, thermal noise: first peak at a/2, 6 Te around each Ge, 12 Ge second neighbours."""
    atoms = rocksalt(noise=0.05, seed=3)
    res = an.rdf([atoms], rmax=6.0, nbins=120)
    assert res.elements == ["Ge", "Te"] and res.composition == {"Ge": 108, "Te": 108}
    peak = an.first_peak(res.r, res.total)
    assert peak.position == pytest.approx(3.0, abs=0.02)
    # The Ge-Te first shell holds every neighbour within the first minimum (3.6 Å) ...
    for name, n in {"Ge-Te": 6, "Te-Ge": 6, "total": 6, "Ge-Ge": 0, "Te-Te": 0}.items():
        assert res.coordination_number(name, 3.6) == pytest.approx(n, abs=1e-9), name
    # ... and the second shell (a/sqrt 2 = 4.24 Å) is like-atom only, the third Ge-Te (5.2 Å) not yet.
    assert res.coordination_number("Ge-Ge", 4.8) == pytest.approx(12, abs=1e-9)
    assert res.coordination_number("Ge-Te", 4.8) == pytest.approx(6, abs=1e-9)
    # The same numbers as the integral of rho_b g_ab 4 pi r^2 dr (rho_b = N_Te / V for Ge-Te).
    rho_te = 108 / atoms.get_volume()
    shell = 4 / 3 * np.pi * np.diff(res.edges ** 3)
    integral = np.cumsum(rho_te * res.partials["Ge-Te"] * shell)
    np.testing.assert_allclose(integral, res.coordination["Ge-Te"], rtol=1e-12, atol=1e-12)


def test_total_is_the_weighted_sum_of_partials():
    """Three elements of unequal counts, two frames of different volume (NPT): total = Σ w_ab g_ab."""
    rng = np.random.default_rng(5)
    symbols = ["Ge"] * 10 + ["Sb"] * 7 + ["Te"] * 15
    rng.shuffle(symbols)
    frames = []
    for k, box in enumerate((9.0, 9.6)):
        pos, cell, _ = random_structure(natoms=32, box=box, dmin=2.0, seed=20 + k)
        frames.append(Atoms(symbols=symbols, positions=pos, cell=cell, pbc=True))
    res = an.rdf(frames, rmax=7.0, nbins=70, elements=["Ge", "Sb", "Te"])
    assert list(res.partials) == ["Ge-Ge", "Ge-Sb", "Ge-Te", "Sb-Sb", "Sb-Te", "Te-Te"]
    assert sum(res.weights.values()) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(sum(res.weights[k] * res.partials[k] for k in res.partials), res.total,
                               rtol=1e-12, atol=1e-12)
    assert res.total.max() > 1.5  # not a trivially empty check
    # Coordination numbers count each A-B pair once from either side: N_A n_AB = N_B n_BA, and
    # summed over A and B they give N n_total.
    n = {"Ge": 10, "Sb": 7, "Te": 15}
    for a in n:
        for b in n:
            np.testing.assert_allclose(n[a] * res.coordination[f"{a}-{b}"], n[b] * res.coordination[f"{b}-{a}"])
    np.testing.assert_allclose(sum(n[a] * res.coordination[f"{a}-{b}"] for a in n for b in n),
                               32 * res.coordination["total"])
    assert res.mean_volume == pytest.approx(np.mean([f.get_volume() for f in frames]))


def test_type_map_orders_pair_names():
    atoms = rocksalt(reps=(2, 2, 2), noise=0.05, seed=1)
    res = an.rdf([atoms], rmax=5.0, nbins=50, elements=["Te", "Ge"])
    assert res.elements == ["Te", "Ge"] and list(res.partials) == ["Te-Te", "Te-Ge", "Ge-Ge"]
    np.testing.assert_array_equal(res.curve("Ge-Te"), res.partials["Te-Ge"])
    with pytest.raises(ValueError, match="not in the type map"):
        an.rdf([atoms], elements=["Ge", "Sb"])


def test_triclinic_cell_gives_the_same_rdf_as_the_orthorhombic_one():
    """Rock salt in its 60° primitive fcc cell (4x4x8) vs the cubic cell (4x4x2): 256 atoms, same volume."""
    a = 6.013  # keeps every shell distance sqrt(n) a/2 away from the 0.05 Å bin edges
    rmax, nbins = 7.5, 150
    shells = np.sqrt(np.arange(1, 7)) * a / 2
    assert np.min(np.abs(shells / (rmax / nbins) - np.round(shells / (rmax / nbins)))) * rmax / nbins > 1e-4
    primitive = bulk("GeTe", "rocksalt", a=a).repeat((4, 4, 8))
    cubic = bulk("GeTe", "rocksalt", a=a, cubic=True).repeat((4, 4, 2))
    assert not primitive.cell.orthorhombic and len(primitive) == len(cubic) == 256
    tri, ortho = an.rdf([primitive], rmax, nbins), an.rdf([cubic], rmax, nbins)
    for name in ("total", "Ge-Ge", "Ge-Te", "Te-Te"):
        np.testing.assert_allclose(tri.curve(name), ortho.curve(name), rtol=1e-10, atol=1e-10)
    assert tri.coordination_number("total", 7.5) == pytest.approx(6 + 12 + 8 + 6 + 24 + 24, abs=1e-9)


@seeded(4)
def test_skewed_description_of_the_same_cell_changes_nothing(seed):
    """The same periodic structure described by a sheared basis (a unimodular transform of the cell)."""
    pos, cell, _ = random_structure(natoms=30, box=8.0, dmin=2.0, seed=seed, triclinic=False)
    symbols = ["Ge", "Te"] * 15
    skewed = np.array([[1, 0, 0], [1, 1, 0], [-1, 2, 1]]) @ cell
    assert round(abs(np.linalg.det(skewed) / np.linalg.det(cell)), 12) == 1.0
    base = an.rdf([Atoms(symbols=symbols, positions=pos, cell=cell, pbc=True)], rmax=9.0, nbins=90)
    other = an.rdf([Atoms(symbols=symbols, positions=pos, cell=skewed, pbc=True)], rmax=9.0, nbins=90)
    np.testing.assert_allclose(other.total, base.total, rtol=1e-10)
    for name in base.partials:
        np.testing.assert_allclose(other.partials[name], base.partials[name], rtol=1e-10)


def brute_force_counts(pos, cell, rmax, edges):
    """Ordered pair counts per bin over every periodic image, by enumeration."""
    heights = abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    reach = np.ceil(rmax / heights).astype(int) + 1
    shifts = np.array(np.meshgrid(*[np.arange(-k, k + 1) for k in reach], indexing="ij")).reshape(3, -1).T @ cell
    d = np.linalg.norm(pos[None, :, None, :] - pos[:, None, None, :] + shifts[None, None], axis=-1).ravel()
    d = d[(d > 1e-9) & (d < rmax)]
    return np.histogram(d, edges)[0]


@seeded(7)
def test_rmax_beyond_half_the_box_counts_every_image(seed):
    """12 atoms in a 5 Å triclinic box, rmax 8 Å > the box: pair counts equal brute-force image sums."""
    pos, cell, _ = random_structure(natoms=12, box=5.0, dmin=1.2, seed=seed, triclinic=True)
    res = an.rdf([Atoms(symbols=["Te"] * 12, positions=pos, cell=cell, pbc=True)], rmax=8.0, nbins=80)
    expected = np.cumsum(brute_force_counts(pos, cell, 8.0, res.edges)) / 12
    assert expected[-1] > 50  # many images of every atom
    np.testing.assert_allclose(res.coordination["total"], expected, rtol=1e-12)


def test_simple_cubic_shells_beyond_half_the_box():
    """Simple cubic, a = 3 Å, in a 6 Å box (2x2x2): shells 6, 12, 8, 6, 24, 24 out to rmax 7.9 Å."""
    atoms = Atoms("Sb", cell=np.eye(3) * 3.0, pbc=True).repeat((2, 2, 2))
    res = an.rdf([atoms], rmax=7.9, nbins=79)
    cumulative = {3.1: 6, 4.3: 18, 5.3: 26, 6.1: 32, 6.8: 56, 7.4: 80}
    for r, n in cumulative.items():
        assert res.coordination_number("Sb-Sb", r) == pytest.approx(n, abs=1e-9), r
    assert an.first_peak(res.r, res.total).bin_position == pytest.approx(3.05)


def test_frames_must_be_periodic_with_a_fixed_composition():
    acc = an.RDFAccumulator(5.0, 50)
    acc.add(rocksalt(reps=(2, 2, 2)))
    with pytest.raises(ValueError, match="composition changed"):
        acc.add(rocksalt(reps=(2, 2, 2))[:-1])
    with pytest.raises(ValueError, match="periodic"):
        an.rdf([Atoms("GeTe", positions=[[0, 0, 0], [3, 0, 0]])])
    with pytest.raises(ValueError, match="no frames"):
        an.rdf([])


# -- ALTBC ------------------------------------------------------------------------------------------


FIRST_SHELL = dict(cutoff=3.6, rrange=(2.4, 3.6), nbins=24)


def test_altbc_of_ideal_rocksalt_peaks_on_the_diagonal():
    res = an.altbc([rocksalt(noise=0.03, seed=2)], **FIRST_SHELL)
    r1, r2 = res.peak()
    assert r1 == pytest.approx(3.0, abs=0.05) and r2 == pytest.approx(3.0, abs=0.05)
    np.testing.assert_array_equal(res.counts, res.counts.T)
    # Three collinear neighbour pairs per atom, each counted in both orders.
    assert res.counts.sum() / (res.nframes * res.natoms) == 6.0
    c = res.centres
    off = np.abs(c[:, None] - c[None, :]) > 0.25
    assert res.counts[off].sum() < 0.01 * res.counts.sum()
    # The density integrates to the pairs per atom.
    assert (res.density * 0.05 ** 2).sum() == pytest.approx(6.0)


def test_altbc_of_peierls_distorted_rocksalt_peaks_off_the_diagonal():
    """Ge moved by 0.2 Å along [111]: three short (2.81 Å) and three long (3.21 Å) bonds, each short one
    opposite a long one."""
    res = an.altbc([rocksalt(noise=0.03, peierls=0.2, seed=2)], **FIRST_SHELL)
    r1, r2 = res.peak()
    short, long = np.hypot(3.0 - 0.2, 0.2 * np.sqrt(2)), np.hypot(3.0 + 0.2, 0.2 * np.sqrt(2))
    assert r1 == pytest.approx(short, abs=0.05) and r2 == pytest.approx(long, abs=0.05)
    np.testing.assert_array_equal(res.counts, res.counts.T)
    assert res.counts.sum() / res.natoms == 6.0
    c = res.centres
    near_diagonal = np.abs(c[:, None] - c[None, :]) < 0.2
    assert res.counts[near_diagonal].sum() < 0.01 * res.counts.sum()


def test_altbc_bond_filter_and_default_grid():
    """Default grid (the reference's, to 4.5 Å) sees the Ge-Ge/Te-Te second shell; bonds=Ge-Te drops it."""
    atoms = rocksalt(noise=0.03, seed=6)
    every = an.altbc([atoms])
    hetero = an.altbc([atoms], bonds=["Te-Ge"])
    assert every.edges[0] == 2.5 and every.edges[-1] == 4.5 and len(every.edges) == 41
    # Second shell: 12 like neighbours at 4.24 Å, 6 collinear pairs, both orders.
    assert every.counts.sum() / every.natoms == 6 + 12
    assert every.peak() == pytest.approx((4.225, 4.225), abs=0.05)
    assert hetero.counts.sum() / hetero.natoms == 6 and hetero.bonds == ["Ge-Te"]


def test_altbc_memory_blocks_do_not_change_the_result(monkeypatch):
    atoms = rocksalt(reps=(2, 2, 2), noise=0.1, seed=8)
    whole = an.altbc([atoms])
    monkeypatch.setattr(an.ALTBCAccumulator, "chunk_pairs", 50)  # a few centre atoms per block
    np.testing.assert_array_equal(an.altbc([atoms]).counts, whole.counts)


# -- peaks and differences ----------------------------------------------------------------------------


def test_first_peak_recovers_a_known_peak_between_bins():
    r = np.arange(0.025, 8.0, 0.05)
    g = 1 + 3.0 * np.exp(-0.5 * ((r - 2.7834) / 0.1) ** 2)
    peak = an.first_peak(r, g)
    assert peak.bin_position == pytest.approx(2.775)
    assert peak.position == pytest.approx(2.7834, abs=0.003)  # the bin alone is 0.008 off
    assert peak.height == pytest.approx(4.0, rel=0.01)


def test_first_peak_is_the_first_shell_above_one():
    """A small bump below 1 (Te-Te-like homopolar bonds) is no shell; a curve never above 1 has no peak."""
    r = np.arange(0.025, 8.0, 0.05)
    g = 0.3 * np.exp(-0.5 * ((r - 3.0) / 0.1) ** 2) + 2.5 * np.exp(-0.5 * ((r - 4.1) / 0.2) ** 2) + \
        1.4 * np.exp(-0.5 * ((r - 6.3) / 0.2) ** 2)
    assert an.first_peak(r, g).position == pytest.approx(4.1, abs=0.01)
    assert an.first_peak(r, 0.5 * np.ones_like(r)) is None


def test_curve_difference_on_different_grids():
    r1, r2 = np.linspace(0.0, 10.0, 101), np.arange(0.025, 9.0, 0.05)
    d = an.curve_difference(r1, np.ones_like(r1), r2, 1.5 * np.ones_like(r2), (2.0, 8.0))
    assert d["l1"] == pytest.approx(3.0) and d["rms"] == pytest.approx(0.5) and d["range"] == [2.0, 8.0]
    clipped = an.curve_difference(r1, np.ones_like(r1), r2, np.ones_like(r2), (2.0, 12.0))
    assert clipped["l1"] == pytest.approx(0.0) and clipped["range"][1] == pytest.approx(r2[-1])


# -- reading trajectories ------------------------------------------------------------------------------


def lammps_dump(path, frames, element_column=True, order=None):
    """Write frames as LAMMPS writes `dump custom ... id type element x y z` (`dump_modify element Ge Te`):
    triclinic bounds as `xlo_bound xhi_bound xy` etc., atoms in the order `order` (LAMMPS does not sort)."""
    lines = []
    for step, atoms in enumerate(frames):
        (lx, _, _), (xy, ly, _), (xz, yz, lz) = atoms.cell.array
        lines += ["ITEM: TIMESTEP", str(100 * step), "ITEM: NUMBER OF ATOMS", str(len(atoms)),
                  f"ITEM: BOX BOUNDS xy xz yz pp pp pp",
                  f"{min(0, xy, xz, xy + xz):.16e} {lx + max(0, xy, xz, xy + xz):.16e} {xy:.16e}",
                  f"{min(0, yz):.16e} {ly + max(0, yz):.16e} {xz:.16e}",
                  f"0.0000000000000000e+00 {lz:.16e} {yz:.16e}",
                  "ITEM: ATOMS id type " + ("element " if element_column else "") + "x y z"]
        symbols = atoms.get_chemical_symbols()
        for k in order if order is not None else range(len(atoms)):
            x, y, z = atoms.positions[k]
            lines.append(f"{k + 1} {1 + (symbols[k] == 'Te')} " + (f"{symbols[k]} " if element_column else "")
                         + f"{x:.10g} {y:.10g} {z:.10g}")
    path.write_text("\n".join(lines) + "\n")
    return path


def sheared_rocksalt(seed):
    atoms = rocksalt(reps=(2, 2, 2), noise=0.05, seed=seed)
    atoms.set_cell(atoms.cell.array + np.array([[0, 0, 0], [1.5, 0, 0], [-0.8, 0.6, 0]]), scale_atoms=True)
    return atoms


def test_lammps_dump_with_element_column(tmp_path):
    frames = [sheared_rocksalt(seed) for seed in range(3)]
    order = np.random.default_rng(0).permutation(len(frames[0]))  # LAMMPS writes atoms unsorted
    path = lammps_dump(tmp_path / "traj.dump", frames, order=order)
    got = list(an.read_frames(path, skip=1))
    assert len(got) == 2
    for atoms, want in zip(got, frames[1:]):
        assert atoms.get_chemical_symbols() == want.get_chemical_symbols()  # sorted back by id
        np.testing.assert_allclose(atoms.cell.array, want.cell.array, atol=1e-12)
        np.testing.assert_allclose(atoms.positions, want.positions, atol=1e-8)
        assert atoms.pbc.all()
    assert len(list(an.read_frames(path, every=2))) == 2  # frames 0 and 2
    res = an.rdf(an.read_frames(path), rmax=6.0, nbins=60)
    assert res.nframes == 3 and res.composition == {"Ge": 32, "Te": 32}


def test_lammps_dump_without_element_column_needs_a_type_map(tmp_path):
    frames = [sheared_rocksalt(0)]
    path = lammps_dump(tmp_path / "types.dump", frames, element_column=False)
    (atoms,) = an.read_frames(path, type_map=["Ge", "Te"])
    assert atoms.get_chemical_symbols() == frames[0].get_chemical_symbols()
    (raw,) = an.read_frames(path)
    assert set(raw.get_chemical_symbols()) == {"H", "He"}  # what ASE makes of bare type numbers


def test_deepmd_system_is_read_wrapped(tmp_path):
    atoms = rocksalt(reps=(2, 2, 2), noise=0.05, seed=1)
    shifts = np.random.default_rng(2).integers(-2, 3, (4, len(atoms), 1)) * atoms.cell.array[0]
    system = System(name="rs", type_map=["Ge", "Te"], types=[("Ge", "Te").index(s) for s in atoms.get_chemical_symbols()],
                    coords=atoms.positions[None] + shifts, cells=np.repeat(atoms.cell.array[None], 4, axis=0))
    write_deepmd(system, tmp_path / "sys")
    frames = list(an.read_frames(tmp_path / "sys", skip=1, every=2))
    assert len(frames) == 2
    frac = frames[0].get_scaled_positions(wrap=False)
    assert frac.min() >= 0 and frac.max() < 1
    inside = atoms.copy()
    inside.wrap()
    np.testing.assert_allclose(frames[0].positions, inside.positions, atol=1e-9)
    with pytest.raises(FileNotFoundError):
        an.read_frames(tmp_path / "missing.dump")  # at once, not at the first frame


# -- the CLI ---------------------------------------------------------------------------------------


def fake_reference(folder):
    """A reference folder in the layout of GeTe-aimd-reference, made from a known structure."""
    ref = an.rdf([rocksalt(noise=0.08, seed=11)], rmax=10.0, nbins=200)
    (folder / "rdf").mkdir(parents=True)
    for name in ("total", "Ge-Ge", "Ge-Te", "Te-Te"):
        np.savetxt(folder / "rdf" / f"{name}.txt", np.column_stack([ref.r, ref.curve(name)]))
    alt = an.altbc([rocksalt(noise=0.08, seed=11)])
    (folder / "altbc").mkdir()
    np.savetxt(folder / "altbc" / "x.txt", alt.edges)
    np.savetxt(folder / "altbc" / "y.txt", alt.edges)
    np.savetxt(folder / "altbc" / "z.txt", alt.counts.T)
    return folder


def test_cli_writes_csv_json_png(tmp_path, capsys):
    frames = [rocksalt(reps=(2, 2, 2), noise=0.08, seed=s) for s in range(3)]
    traj = lammps_dump(tmp_path / "md.dump", frames)
    ref = fake_reference(tmp_path / "ref")
    out = tmp_path / "out" / "gete"
    assert main(["rdf", str(traj), "--skip", "1", "--rmax", "6", "--bins", "120", "--reference", str(ref),
                 "--altbc", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Ge-Te" in text and "∫|Δg|dr" in text and "ALTBC" in text

    report = json.loads((tmp_path / "out" / "gete-rdf.json").read_text())
    assert report["frames"] == 2 and report["composition"] == {"Ge": 32, "Te": 32}
    assert report["source"] == str(traj.resolve()) and report["parameters"]["skip"] == 1
    total = report["rdf"]["total"]
    assert total["first_peak"]["position"] == pytest.approx(3.0, abs=0.03)
    assert abs(total["peak_shift"]) < 0.03 and 0 < total["l1"] < 1.0  # same structure, other noise
    assert report["altbc"]["reference"]["shape_l1"] is not None

    csv = np.genfromtxt(tmp_path / "out" / "gete-rdf.csv", delimiter=",", names=True)
    assert len(csv) == 120 and csv["r"][0] == pytest.approx(0.025)
    header = (tmp_path / "out" / "gete-rdf.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["r", "r_upper", "g_total"] and "n_Ge-Te" in header and "n_Te-Ge" in header
    assert np.load(tmp_path / "out" / "gete-altbc.npy").shape == (40, 40)
    for png in ("gete-rdf.png", "gete-altbc.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_without_reference_and_errors(tmp_path, capsys):
    traj = lammps_dump(tmp_path / "md.dump", [rocksalt(reps=(2, 2, 2), noise=0.08, seed=0)])
    assert main(["rdf", str(traj), "--reference", "none", "-o", str(tmp_path / "x")]) == 0
    assert json.loads((tmp_path / "x-rdf.json").read_text())["reference"] is None
    assert not (tmp_path / "x-altbc.png").exists()
    assert main(["rdf", str(traj), "--skip", "5", "--reference", "none", "-o", str(tmp_path / "y")]) == 2
    assert "no frames" in capsys.readouterr().err
    assert main(["rdf", str(traj), "--reference", str(tmp_path / "nowhere"), "-o", str(tmp_path / "z")]) == 2
    assert "no AIMD reference curves" in capsys.readouterr().err
    (tmp_path / "junk.qqq").write_text("not a trajectory\n")
    assert main(["rdf", str(tmp_path / "junk.qqq"), "--reference", "none", "-o", str(tmp_path / "w")]) == 2
    assert "file format" in capsys.readouterr().err


# -- the AIMD reference data (third-party, ../shared/data) --------------------------------------------------


@pytest.mark.shared_data
def test_reference_loaders_on_the_shared_data():
    ref = an.load_reference(require_shared(REFERENCE))
    assert sorted(ref.rdf) == ["Ge-Ge", "Ge-Te", "Te-Te", "total"]
    r, g = ref.rdf["total"]
    assert len(r) == 200 and r[0] == pytest.approx(0.025) and r[-1] == pytest.approx(9.975)
    assert an.first_peak(r, g).bin_position == pytest.approx(2.775)
    assert an.first_peak(*ref.rdf["Te-Te"]).bin_position == pytest.approx(4.075)
    assert ref.altbc.counts.shape == (40, 40) and ref.altbc.edges[[0, -1]].tolist() == [2.5, 4.5]
    np.testing.assert_array_equal(ref.altbc.counts, ref.altbc.counts.T)
    assert ref.altbc.peak() == pytest.approx((2.775, 3.675))
    assert sorted(ref.cn) == ["1", "2", "total"] and ref.cn["1"][1].sum() == pytest.approx(108)
    assert ref.adf["total"][1].sum() == pytest.approx(100, abs=0.1)


@pytest.mark.shared_data
def test_aimd_300K_first_peak_matches_the_reference():
    """Eight frames of the 300 K quench (unwrapped coordinates): total g(r) first peak within 0.05 Å of
    the reference's (measured: 2.768 Å against 2.759 Å)."""
    ref = an.load_reference(require_shared(REFERENCE))
    system = load_deepmd(require_shared(GETE_300K))
    res = an.rdf(an.frames_from_system(system, skip=0, every=50), rmax=8.0, nbins=160)
    assert res.nframes == 8 and res.composition == {"Ge": 108, "Te": 108}
    ours, theirs = an.first_peak(res.r, res.total), an.first_peak(*ref.rdf["total"])
    assert abs(ours.position - theirs.position) < 0.05
    metrics = an.compare_rdf(res, ref)
    assert metrics["total"]["rms"] < 0.15  # the data's README: RMS 0.05 over all 400 frames
    assert abs(metrics["Ge-Te"]["peak_shift"]) < 0.05
