"""pair_style nvnmd with the native core in-process (`host native`, the default for zero, xdma and rtl)
against the service (`host service`, the path of tests/host/test_lammps.py): the same energies, forces,
virials and per-atom values, compared with ==, on 1, 2 and 4 MPI ranks; the same ERROR line for every
failure, and an ERROR (never a hang: every run has a deadline) for each failure of the native path's own.

The zero device checks the framing (same tags, counts, biases, per-atom layout); the bit-exactness check
proper is the rtl device in-process against the NumPy reference in the service (marked verilator: the
first use compiles the harness, minutes)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from support import random_structure
from test_lammps import (
    HEAD,
    close_pair_data,
    crowded_right_half,
    expect_error,
    gete,
    lmp,
    write_data,
)

GRIDS = {1: "", 2: "processors 2 1 1\n", 3: "processors 3 1 1\n", 4: "processors 2 2 1\n"}
# Results are compared across rank counts for orthogonal boxes only: in a triclinic box LAMMPS maps the
# atoms into each rank's subdomain through fractional coordinates, which moves some positions by an ulp
# depending on the grid, so the structures evaluated differ.  On one grid both hosts see the same
# positions and must agree bit for bit.

# The pressure of the virial alone: its kinetic part is a sum over atoms whose order depends on the ranks.
COMPARE_INPUT = """{grid}""" + HEAD + """pair_style nvnmd {model} {style}
pair_coeff * * {elements}
compute pea all pe/atom
compute sta all stress/atom NULL pair
compute pv all pressure NULL virial
thermo_style custom step pe c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]
thermo_modify format float %.17g
{steps}
write_dump all custom out.dump id type x y z fx fy fz c_pea c_sta[1] c_sta[2] c_sta[3] c_sta[4] c_sta[5] c_sta[6] modify format float %.17g sort id
"""
# LAMMPS rebuilds its lists every 2nd step: the native path takes them over then and reuses them between.
NVE_STEPS = "neigh_modify every 2 delay 0 check no\nfix nve all nve\ntimestep 0.001\nthermo 1\nrun 4"


@pytest.fixture(scope="module")
def plugin():
    from host.lammps_plugin import build
    return build()


@pytest.fixture(scope="module")
def model_path():
    from contract.paths import EXAMPLE_MODEL
    return str(EXAMPLE_MODEL)


def thermo_block(out: str) -> list[str]:
    """Every thermo row of the run (the %.17g strings: equal strings are equal doubles)."""
    lines = out.splitlines()
    k = max(i for i, l in enumerate(lines) if l.split()[:2] == ["Step", "PotEng"])
    rows = []
    for l in lines[k + 1:]:
        if l.startswith("Loop time"):
            break
        rows.append(l)
    return rows


def run_case(workdir: Path, data: Path, model: str, style: str, np_: int = 1, steps: str = "run 0",
             elements: str = "Ge Te", timeout: float = 240.0) -> tuple[list[str], str, str]:
    """One LAMMPS run; (thermo rows, the per-atom dump's atoms section, the screen output)."""
    workdir.mkdir(parents=True)
    shutil.copy(data, workdir / "atoms.data")
    rc, out = lmp(workdir, COMPARE_INPUT.format(grid=GRIDS[np_], data="atoms.data", model=model, style=style,
                                                elements=elements, steps=steps), np_=np_, timeout=timeout)
    assert rc == 0, out[-3000:]
    assert f"on {np_} procs" in out
    return tuple(thermo_block(out)), (workdir / "out.dump").read_text().split("ITEM: ATOMS")[1], out


def error_message(out: str) -> str:
    """The first ERROR's message: without `ERROR on proc N: ` and the source location, which differ by
    call site, and with its continuation lines."""
    lines = out.splitlines()
    k = next(i for i, l in enumerate(lines) if l.startswith("ERROR"))
    text = "\n".join(lines[k:k + 20])
    text = re.sub(r"^ERROR( on proc \d+)?: ", "", text)
    m = re.search(r" \([^()]*\.(cpp|h):\d+\)", text)
    return text[:m.start()] if m else text


# ---- same numbers --------------------------------------------------------------------------------

@pytest.mark.parametrize("structure", ["rocksalt-216", "triclinic-random-48"])
def test_zero_device_native_equals_service_on_1_2_4_ranks(plugin, model_path, tmp_path, structure):
    """The zero device on both hosts: the same biases per atom, zero forces and virials, the same layout;
    and the timing line says where the time goes."""
    import ase
    if structure == "rocksalt-216":
        atoms = gete()
    else:
        pos, cell, types = random_structure(natoms=48, box=11.0, dmin=2.5, seed=3, triclinic=True)
        atoms = ase.Atoms(["Ge" if t == 0 else "Te" for t in types], positions=pos, cell=cell, pbc=True)
    data = write_data(tmp_path / "atoms.data", atoms)
    runs = {}
    for np_ in (1, 2, 4):
        for host in ("native", "service"):
            thermo, dump, out = run_case(tmp_path / f"{host}-{np_}", data, model_path, f"device zero host {host}",
                                         np_=np_)
            runs[host, np_] = (thermo, dump)
            if host == "native":
                assert "device zero (lanes 1) in-process (native core" in out and "(private)" not in out
                assert re.search(r"pair nvnmd timing \(rank 0, 1 evaluations, ms per evaluation\): neighbours [\d.]+ "
                                 r"encode [\d.]+ device [\d.]+ fold [\d.]+ unpack [\d.]+ total [\d.]+", out), out[-2000:]
            else:
                assert "(private)" in out
    for np_ in (1, 2, 4):
        assert runs["native", np_] == runs["service", np_], f"host native and host service differ on {np_} rank(s)"
    if structure == "rocksalt-216":  # orthogonal: see GRIDS
        assert runs["native", 1] == runs["native", 2] == runs["native", 4]
    d = np.array([[float(v) for v in l.split()] for l in runs["native", 1][1].splitlines()[1:]])
    np.testing.assert_array_equal(d[:, 5:8], 0.0)  # forces
    assert len(set(d[:, 8])) == 1 and d[0, 8] != 0  # the bias: one per type, and both types share it here


@pytest.mark.verilator
@pytest.mark.parametrize("structure", ["random-30", "triclinic-small-cell-20"])
def test_rtl_in_process_equals_the_reference_in_the_service(plugin, tmp_path, structure):
    """The bit-exactness check: the generated RTL driven by the native core in each rank (its own harness
    process per rank) against the NumPy reference behind the service, over a few NVE steps (positions,
    forces, per-atom energies and virials, the virial's pressure), on 1, 2 and 4 ranks: an orthogonal box
    against one reference run on 1 rank, the skewed one against the reference on each grid."""
    import ase
    from support import tiny_qm

    from contract import modelfile
    from sim import runner
    try:
        runner.check_simulator("verilator")
    except runner.SimulatorMissing as e:
        pytest.skip(str(e))
    qm = tiny_qm()
    model = tmp_path / "tiny.npz"
    modelfile.save(qm, model)
    if structure == "random-30":
        pos, cell, types = random_structure(natoms=30, seed=12, triclinic=False)
    else:  # several periodic images of each atom within the cutoff, a skewed cell
        pos, cell, types = random_structure(natoms=20, box=8.0, dmin=2.3, seed=5, triclinic=True)
    atoms = ase.Atoms([qm.config.type_map[t] for t in types], positions=pos, cell=cell, pbc=True)
    rng = np.random.default_rng(12)
    data = write_data(tmp_path / "atoms.data", atoms, velocities=rng.normal(scale=3.0, size=(len(atoms), 3)))
    ref = run_case(tmp_path / "service-reference", data, str(model), "device reference host service",
                   steps=NVE_STEPS, timeout=1800)
    assert "(private)" in ref[2]
    for np_ in (1, 2, 4):
        got = run_case(tmp_path / f"native-rtl-{np_}", data, str(model), "device rtl", np_=np_,
                       steps=NVE_STEPS, timeout=1800)  # a first rtl use compiles the harness: minutes
        assert re.search(r"device rtl:\S+ \(lanes 1\) in-process", got[2])
        assert "neighbour lists: 3 taken over, 2 reused" in got[2]  # setup, steps 2 and 4; steps 1 and 3
        if np_ > 1 and structure != "random-30":  # triclinic: the reference on this grid (see GRIDS)
            ref = run_case(tmp_path / f"service-reference-{np_}", data, str(model), "device reference host service",
                           np_=np_, steps=NVE_STEPS, timeout=1800)
        assert got[:2] == ref[:2], f"native rtl on {np_} rank(s) differs from the reference"
    assert len({row.split()[1] for row in ref[0]}) > 1  # the energy moved: forces were not zero


def test_per_atom_values_only_on_the_steps_that_ask(plugin, model_path, tmp_path):
    """LAMMPS asks for per-atom energies and virials on some steps only (here every 2nd: the dump), so the
    native path alternates between its cores with and without them; every step agrees with the service."""
    data = write_data(tmp_path / "atoms.data", gete(repeat=2))
    text = HEAD.format(data="atoms.data") + """pair_style nvnmd {model} device zero host {host}
pair_coeff * * Ge Te
compute pea all pe/atom
compute sta all stress/atom NULL pair
dump d all custom 2 out.dump id c_pea c_sta[1] c_sta[4]
dump_modify d format float %.17g sort id
velocity all create 300 1 loop geom
fix nve all nve
thermo 1
thermo_style custom step pe press
thermo_modify format float %.17g
run 5
"""
    dumps = {}
    for host in ("native", "service"):
        wd = tmp_path / host
        wd.mkdir()
        shutil.copy(data, wd)
        rc, out = lmp(wd, text.format(model=model_path, host=host))
        assert rc == 0, out[-3000:]
        dumps[host] = (wd / "out.dump").read_text(), thermo_block(out)
    assert dumps["native"] == dumps["service"]
    assert dumps["native"][0].count("ITEM: TIMESTEP") == 3


def test_below_rmin_allowed_counts_the_same(plugin, model_path, tmp_path):
    """`below_rmin allow`: the same warning and the same count on both hosts (the core counts the records
    below r_min, the plugin sums them over ranks)."""
    close_pair_data(tmp_path / "a.data")
    text = HEAD.format(data="a.data") + f"pair_style nvnmd {model_path} device zero host {{host}} below_rmin allow\n" \
        "pair_coeff * * Ge Te\nvelocity all create 300 1 loop geom\nfix nve all nve\ntimestep 0.001\nrun 20\n"
    said = {}
    for host in ("native", "service"):
        rc, out = lmp(tmp_path, text.format(host=host))
        assert rc == 0, out[-3000:]
        warn = re.search(r"WARNING: pair nvnmd: step 0: (\d+) neighbour record\(s\) closer than the model's r_min", out)
        count = re.search(r"pair nvnmd: (\d+) of (\d+) evaluations had neighbour records below r_min "
                          r"\((\d+) records", out)
        assert warn and count, out[-3000:]
        said[host] = (warn.group(1), count.groups())
    assert said["native"] == said["service"]
    assert said["native"][0] == "4"


# ---- the same ERROR on both hosts ----------------------------------------------------------------

def both_hosts_fail_alike(tmp_path: Path, text: str, np_: int = 1) -> str:
    """Run `text` (with {host}) on each host; both fail with the same message; return it.

    When a rank other than 0 fails, error->one's MPI_Abort races with mpiexec forwarding that rank's output:
    about one run in 16 ends (non-zero, promptly) without its ERROR line, on either host and with every
    error->one of LAMMPS.  Such a run is repeated (up to 3 times); a run that exits 0 or hangs fails."""
    messages = {}
    for host in ("native", "service"):
        wd = tmp_path / host
        wd.mkdir(exist_ok=True)
        for f in tmp_path.glob("*.data"):
            shutil.copy(f, wd)
        for _ in range(3 if np_ > 1 else 1):
            rc, out = lmp(wd, text.format(host=host), np_=np_)
            assert rc != 0, f"LAMMPS exited 0 although it should have failed:\n{out[-3000:]}"
            if any(line.startswith("ERROR") for line in out.splitlines()):
                break
        expect_error(rc, out)
        messages[host] = error_message(out), out
    assert messages["native"][0] == messages["service"][0], messages
    return messages["native"][1]


def test_close_contact_same_error(plugin, model_path, tmp_path):
    close_pair_data(tmp_path / "a.data")
    out = both_hosts_fail_alike(tmp_path, HEAD.format(data="a.data")
                                + f"pair_style nvnmd {model_path} device zero host {{host}}\npair_coeff * * Ge Te\nrun 0\n")
    expect_error(1, out, "pair nvnmd: step 0 failed: close contact: atoms 1 and 2 are 1.5000 Å apart, closer than "
                 "the model's r_min 1.85 Å", "shortest distance is 2.063 Å", "below_rmin allow", "hybrid/overlay")


def test_too_many_neighbours_same_error(plugin, model_path, tmp_path):
    write_data(tmp_path / "a.data", gete(repeat=3, a=4.3))  # compressed: ~2.7x the density
    out = both_hosts_fail_alike(tmp_path, HEAD.format(data="a.data")
                                + f"pair_style nvnmd {model_path} device zero host {{host}}\npair_coeff * * Ge Te\nrun 0\n")
    msg = expect_error(1, out, "too many neighbours: atom", "more than sel", "atom ids")
    assert re.search(r"atom \d+ has \d+ neighbours of type (Ge|Te)", msg)


def test_error_on_rank_1_of_2_same_error(plugin, model_path, tmp_path):
    """Only rank 1's atoms have too many neighbours: it ends the run (error->one), rank 0 does not hang."""
    write_data(tmp_path / "a.data", crowded_right_half())
    out = both_hosts_fail_alike(tmp_path, "processors 2 1 1\n" + HEAD.format(data="a.data")
                                + f"pair_style nvnmd {model_path} device zero host {{host}}\npair_coeff * * Ge Te\nrun 0\n",
                                np_=2)
    msg = expect_error(1, out, "too many neighbours")
    assert msg.startswith("ERROR on proc 1:"), msg


def test_unknown_element_same_error(plugin, model_path, tmp_path):
    write_data(tmp_path / "a.data", gete(repeat=2))
    out = both_hosts_fail_alike(tmp_path, HEAD.format(data="a.data")
                                + f"pair_style nvnmd {model_path} device zero host {{host}}\npair_coeff * * Ge Xx\n")
    expect_error(1, out, "element Xx (atom type 2) is not in the model's type map [Ge Te]")


# ---- the native path's own failures --------------------------------------------------------------

@pytest.mark.parametrize("case", ["unknown-device", "xdma-absent", "reference-in-process", "socket-in-process",
                                  "lanes-in-the-service", "bad-host"])
def test_bad_device_and_host_choices(plugin, model_path, tmp_path, case):
    write_data(tmp_path / "a.data", gete(repeat=2))
    style, texts = {
        "unknown-device": ("device bogus", ["unknown device 'bogus'; choose from reference, cpu, zero, xdma"]),
        "xdma-absent": (f"device xdma:{tmp_path}/no-card", ["cannot open device xdma:", "no-card"]),
        "reference-in-process": ("device reference host native", ["device reference does not run in-process"]),
        "socket-in-process": (f"socket {tmp_path}/s.sock host native", ["drop `host native` or drop `socket`"]),
        "lanes-in-the-service": ("device zero host service lanes 2", ["`lanes` applies to the in-process devices"]),
        "bad-host": ("device zero host gpu", ["host must be `native` or `service`, got gpu"]),
    }[case]
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + f"pair_style nvnmd {model_path} {style}\n"
                  "pair_coeff * * Ge Te\nrun 0\n")
    expect_error(rc, out, *texts)


def test_bad_model_files_and_python(plugin, tmp_path):
    write_data(tmp_path / "a.data", gete(repeat=2))
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + "pair_style nvnmd absent.npz device zero\n")
    expect_error(rc, out, "cannot read model file absent.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a model")
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + "pair_style nvnmd broken.npz device zero\n")
    expect_error(rc, out, "-m host native-model", "broken.npz` failed: exit status 2", "not a readable model archive")
    # on 2 ranks: rank 0 runs the command, both end with the same ERROR (error->all), no hang
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + "pair_style nvnmd broken.npz device zero\n", np_=2)
    expect_error(rc, out, "broken.npz` failed: exit status 2")
    from contract.paths import EXAMPLE_MODEL
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + f"pair_style nvnmd {EXAMPLE_MODEL} device zero "
                  "python /nonexistent/python3\n")
    expect_error(rc, out, "cannot start Python '/nonexistent/python3'")


# ---- xdma: cards chosen by node rank (simulated zero cards, no Verilator) ------------------------

@pytest.fixture
def zero_cards(model_path, tmp_path):
    """Simulated cards (sim/xdma_card.py) around tests/host/test_native_devices.py's zero harness: the XDMA
    driver's files, registers and stream without Verilator.  Stopped and removed at teardown."""
    from test_native_devices import ZERO_HARNESS, script

    from contract import modelfile
    from gen.ir import Knobs
    from sim.xdma_card import XdmaCard
    qm = modelfile.load(model_path)
    exe = script(tmp_path / "zero_harness.py", ZERO_HARNESS)
    started = []

    def card(name, **kw):
        c = XdmaCard(qm, tmp_path / "dev" / name, Knobs(lanes=1, fit_par=2, desc_par=4), exe=exe, **kw)
        started.append(c)
        return c.start()

    yield card
    for c in started:
        c.stop()


def test_xdma_card_by_node_rank(plugin, model_path, tmp_path, zero_cards):
    """`device xdma:P0,P1` on 3 ranks: rank r drives card r % 2 (ranks 0 and 2 share card 0, taking turns),
    told apart by the atoms each card counts (the slabs of `processors 3 1 1` hold 3, 2 and 3 atomic
    planes); the results equal the zero device's."""
    cards = [zero_cards("xdma0"), zero_cards("xdma1")]
    atoms = gete(repeat=4)  # 24 Å: slabs [0, 8), [8, 16), [16, 24) Å; planes every 3 Å
    atoms.positions[:, 0] += 1.5  # planes at 1.5, 4.5, ... 22.5: none near a slab's edge
    atoms.wrap()
    data = write_data(tmp_path / "atoms.data", atoms)
    x = atoms.positions[:, 0]
    per_rank = [int(((x >= lo) & (x < lo + 8.0)).sum()) for lo in (0.0, 8.0, 16.0)]
    assert per_rank[1] != per_rank[2]  # else r % 2 and r // 2 would count alike
    got = run_case(tmp_path / "xdma", data, model_path, f"device xdma:{cards[0].prefix},{cards[1].prefix} timeout 60",
                   np_=3)
    zero = run_case(tmp_path / "zero", data, model_path, "device zero", np_=3)
    assert got[:2] == zero[:2]
    assert f"device xdma:{cards[0].prefix}" in got[2] and "in-process" in got[2]
    counted = [c.regs.read("ATOMS_IN") for c in cards]
    assert counted == [per_rank[0] + per_rank[2], per_rank[1]], (counted, per_rank)  # run 0: one evaluation
    assert [c.regs.read("ATOMS_OUT") for c in cards] == counted


def test_xdma_card_that_stops_answering_ends_the_run(plugin, model_path, tmp_path, zero_cards):
    """A card that takes the input but never answers: an ERROR naming the timeout, within it (+ slack)."""
    import time
    card = zero_cards("xdma0", stall=True)
    write_data(tmp_path / "a.data", gete(repeat=2))
    t = time.monotonic()
    rc, out = lmp(tmp_path, HEAD.format(data="a.data") + f"pair_style nvnmd {model_path} device xdma:{card.prefix} "
                  "timeout 3\npair_coeff * * Ge Te\nrun 0\n", timeout=120)
    assert time.monotonic() - t < 60
    expect_error(rc, out, "pair nvnmd: step 0 failed: DeviceTimeout:", "within 3 s")
