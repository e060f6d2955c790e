"""The `xdma` device against the card simulator (sim/xdma_card.py): named pipes and a register file
served by the standalone Verilator harness, the same file interface as the XDMA driver's.

Bit-exact against the reference device, register contents, a register map moved by JSON, and every
way opening or running can fail (wrong model, no shell, a card that stops answering, a harness that
dies) -- each failure bounded by a short timeout.
"""

from __future__ import annotations

import copy
import glob
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from contract import registers as rm
from gen.ir import Knobs
from host.devices import DeviceError, DeviceTimeout, open_device
from host.devices.xdma import XdmaDevice
from host.evaluate import Evaluator
from host.neighbors import NeighborChunks
from sim import runner
from support import REPO, random_structure, tiny_qm

pytestmark = pytest.mark.verilator

KNOBS = Knobs(lanes=1, fit_par=2, desc_par=4)  # the design the other Verilator tests build
CHUNK = 8  # atoms per chunk: several chunks in flight for 40 atoms


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The saved-and-reloaded tiny model (so that its hash is the file's) and the compiled harness."""
    try:
        runner.check_simulator("verilator")
    except runner.SimulatorMissing as e:
        pytest.skip(str(e))
    from contract import modelfile
    from sim import standalone
    path = tmp_path_factory.mktemp("model") / "tiny.npz"
    modelfile.save(copy.copy(tiny_qm()), path)  # a copy: save() sets .hash on the model it is given
    qm = modelfile.load(path)
    exe = standalone.build_harness(runner.pipeline_verilog(qm, KNOBS))
    return SimpleNamespace(qm=qm, model_path=path, exe=exe)


def leftovers(prefix) -> list[str]:
    return glob.glob(f"{prefix}_*")


def alive(pid: int) -> bool:
    """True while pid runs (a zombie, reaped by nobody yet, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(stat.split("/")[2]))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return out


@pytest.fixture
def rig(env, tmp_path):
    """Start cards and open devices; everything is closed and removed at teardown, pass or fail."""
    from sim.xdma_card import XdmaCard
    cards, devices = [], []

    def card(name="xdma0", **kw):
        c = XdmaCard(env.qm, tmp_path / "dev" / name, KNOBS, exe=env.exe, **kw)
        cards.append(c)
        return c.start()

    def device(prefix, qm=None, **kw):
        d = XdmaDevice(qm or env.qm, prefix, **kw)
        devices.append(d)
        d.open()
        return d

    yield SimpleNamespace(card=card, device=device, devices=devices)
    for d in devices:
        d.close()
    for c in cards:
        c.stop()


def reference(qm, pos, cell, types):
    dev = open_device("reference", qm)
    try:
        return Evaluator(qm, dev, chunk_atoms=CHUNK).compute(pos, cell, True, types)
    finally:
        dev.close()


def assert_same_integers(got, want):
    assert got.energy_int == want.energy_int
    assert np.array_equal(got.forces_int, want.forces_int)
    assert (got.virial_int == want.virial_int).all()
    assert np.array_equal(got.flags, want.flags)


@pytest.fixture(scope="module")
def run40(env, tmp_path_factory):
    """40 atoms in chunks of 8 through XdmaDevice on a fresh card; the registers read after the run."""
    from sim.xdma_card import XdmaCard
    pos, cell, types = random_structure(natoms=40, seed=5)
    prefix = tmp_path_factory.mktemp("card40") / "xdma0"
    card = XdmaCard(env.qm, prefix, KNOBS, exe=env.exe).start()
    try:
        dev = XdmaDevice(env.qm, prefix, timeout=60)
        try:
            dev.open()
            t = time.perf_counter()
            got = Evaluator(env.qm, dev, chunk_atoms=CHUNK, timeout=60).compute(pos, cell, True, types)
            seconds = time.perf_counter() - t
            regs = dev.registers()
        finally:
            dev.close()
    finally:
        card.stop()
    records = sum(int((ch.blocks.nbr_type >= 0).sum())
                  for ch in NeighborChunks(pos, cell, True, env.qm.config.rcut, types, CHUNK))
    return SimpleNamespace(got=got, want=reference(env.qm, pos, cell, types), regs=regs, natoms=len(types),
                           records=records, seconds=seconds, prefix=prefix)


def test_matches_reference_bit_for_bit(run40):
    assert run40.got.energy_int != 0
    assert_same_integers(run40.got, run40.want)


def test_registers_after_run(env, run40):
    r = run40.regs
    assert r["MAGIC"] == rm.SHELL_MAGIC
    assert r["VERSION"] == 1 and r["LANES"] == KNOBS.lanes
    assert rm.words_hash(r[f"MODEL_HASH{k}"] for k in range(8)) == env.qm.hash
    assert r["MODEL_HASH0"] == int(env.qm.hash[:8], 16)  # word 0 = the first 8 hex digits
    assert r["ATOMS_IN"] == r["ATOMS_OUT"] == run40.natoms
    assert r["RECORDS_IN"] == run40.records > 0
    assert r["FLAGS"] == int(np.bitwise_or.reduce(run40.got.flags))
    assert r["STATUS"] == 0  # neither busy nor in error
    assert r["CONTROL"] == rm.RegisterMap.default().bit("CONTROL", "enable")
    assert not leftovers(run40.prefix)  # the card removed its pipes and register file


def test_regmap_json_round_trip(tmp_path):
    m = rm.RegisterMap.default()
    m.to_json(tmp_path / "map.json")
    again = rm.RegisterMap.from_json(tmp_path / "map.json")
    assert [r.to_dict() for r in again] == [r.to_dict() for r in m] and again.magic == m.magic
    with pytest.raises(rm.RegisterMapError, match="share offset"):
        rm.RegisterMap([rm.Register(r.name, 0 if r.name == "LANES" else r.offset, r.access, "", r.bits)
                        for r in m])
    with pytest.raises(rm.RegisterMapError, match="lacks STATUS"):
        rm.RegisterMap([r for r in m if r.name != "STATUS"])


def test_moved_register_map_from_json(env, rig, tmp_path):
    """Registers in reverse order from 0x100: both sides read the addresses from the same JSON."""
    default = rm.RegisterMap.default()
    n = len(default.registers)
    moved = rm.RegisterMap([rm.Register(r.name, 0x100 + 8 * (n - 1 - i), r.access, r.description, r.bits)
                            for i, r in enumerate(default.registers)])
    path = tmp_path / "regmap.json"
    moved.to_json(path)
    card = rig.card(regmap=path)
    with open(card.paths["user"], "rb") as f:
        bar = f.read()
    magic_at = moved.offset("MAGIC")
    assert int.from_bytes(bar[magic_at:magic_at + 4], "little") == rm.SHELL_MAGIC
    assert int.from_bytes(bar[0:4], "little") == 0
    # The built-in map looks for MAGIC at 0: it finds no shell there.
    with pytest.raises(DeviceError, match="no dpfpga shell"):
        XdmaDevice(env.qm, card.prefix).open()
    dev = open_device(f"xdma:{card.prefix}", env.qm, regmap=str(path), timeout=30)
    rig.devices.append(dev)
    pos, cell, types = random_structure(natoms=12, seed=7)
    got = Evaluator(env.qm, dev, chunk_atoms=CHUNK, timeout=30).compute(pos, cell, True, types)
    assert_same_integers(got, reference(env.qm, pos, cell, types))
    regs = dev.registers()
    assert regs["ATOMS_IN"] == regs["ATOMS_OUT"] == 12


def test_generated_register_map(env, rig, tmp_path):
    """The map `python -m gen build --platform vu9p` writes (out/vu9p/regmap.json), generated from the
    shell's register description for this model and lane count, drives both the card and the host."""
    from contract.registers import shell_registers
    path = tmp_path / "regmap.json"
    generated = shell_registers(KNOBS.lanes, env.qm.hash).regmap()
    generated.to_json(path)
    assert "RECORDS_OUT" in generated and generated.bit("STATUS", "partial")  # not in the built-in map
    card = rig.card(regmap=path)
    dev = open_device(f"xdma:{card.prefix}", env.qm, regmap=str(path), timeout=30)
    rig.devices.append(dev)
    assert dev.regmap.to_dict() == generated.to_dict()
    pos, cell, types = random_structure(natoms=10, seed=11)
    got = Evaluator(env.qm, dev, chunk_atoms=CHUNK, timeout=30).compute(pos, cell, True, types)
    assert_same_integers(got, reference(env.qm, pos, cell, types))
    regs = dev.registers()
    assert regs["ATOMS_IN"] == regs["ATOMS_OUT"] == 10 and regs["LANES"] == KNOBS.lanes
    assert rm.words_hash(regs[f"MODEL_HASH{k}"] for k in range(rm.HASH_WORDS)) == env.qm.hash


def test_model_hash_mismatch(env, rig, tmp_path):
    from contract import modelfile
    other = copy.copy(env.qm)
    other.energy_bias = env.qm.energy_bias + 1
    modelfile.save(other, tmp_path / "other.npz")
    assert other.hash != env.qm.hash
    card = rig.card()
    with pytest.raises(DeviceError) as e:
        rig.device(card.prefix, qm=other)
    assert env.qm.hash in str(e.value) and other.hash in str(e.value)


def test_card_that_stops_answering_times_out(env, rig):
    card = rig.card(stall=True)
    dev = rig.device(card.prefix, timeout=5)
    pos, cell, types = random_structure(natoms=12, seed=7)
    t = time.monotonic()
    with pytest.raises(DeviceTimeout, match="no result within 3"):
        Evaluator(env.qm, dev, chunk_atoms=CHUNK, timeout=3).compute(pos, cell, True, types)
    assert time.monotonic() - t < 3 + 5
    regs = dev.registers()
    assert regs["ATOMS_IN"] == 12 and regs["ATOMS_OUT"] == 0  # input went in, nothing came out
    t = time.monotonic()
    dev.close()
    assert time.monotonic() - t < 5
    dev2 = rig.device(card.prefix, timeout=1)  # a new session resets the card: counters back to 0
    assert dev2.registers()["ATOMS_IN"] == 0
    dev2.submit(np.zeros((0, 1), np.uint64), 1)
    with pytest.raises(DeviceTimeout, match="no result within 1"):  # collect(None): the constructor's timeout
        dev2.collect()
    harness = card.harness.pid
    card.stop()
    assert not leftovers(card.prefix) and not alive(harness)


def test_broken_stream_is_an_error(env, rig):
    """Words that cannot start a result, or results nobody asked for: DeviceError at once, not a timeout."""
    from contract import wire
    card = rig.card(stall=True)  # the harness's own answers are swallowed; the test writes the stream
    dev = rig.device(card.prefix, timeout=20)
    dev.submit(np.zeros((0, 1), np.uint64), 1)
    os.write(card.fds["c2h"], wire.output_record(np.zeros(3, np.int64), 0).astype("<u8").tobytes())
    t = time.monotonic()
    with pytest.raises(DeviceError, match="stream broken.*STATUS=0x") as e:
        dev.collect(10)
    assert not isinstance(e.value, DeviceTimeout) and time.monotonic() - t < 5
    dev.close()
    dev = rig.device(card.prefix, timeout=20)
    os.write(card.fds["c2h"], wire.output_header(0, 0, 0, 0).astype("<u8").tobytes())
    with pytest.raises(DeviceError, match="8 bytes nobody asked for"):
        dev.collect(10)


def test_harness_exit_sets_error_and_reset_recovers(env, rig):
    card = rig.card()
    dev = rig.device(card.prefix, timeout=20)
    card.harness.kill()
    pos, cell, types = random_structure(natoms=12, seed=7)
    t = time.monotonic()
    with pytest.raises(DeviceError) as e:
        Evaluator(env.qm, dev, chunk_atoms=CHUNK, timeout=20).compute(pos, cell, True, types)
    assert not isinstance(e.value, DeviceTimeout) and time.monotonic() - t < 15
    assert "error" in str(e.value) and "STATUS=0x" in str(e.value)
    assert card.error and "harness exited" in card.error
    dev.close()
    # A new session soft-resets the card: a fresh harness, counters and STATUS cleared.
    dev = rig.device(card.prefix, timeout=30)
    assert dev.registers()["STATUS"] == 0 and card.error is None
    got = Evaluator(env.qm, dev, chunk_atoms=CHUNK, timeout=30).compute(pos, cell, True, types)
    assert_same_integers(got, reference(env.qm, pos, cell, types))


def test_no_shell_at_prefix(env, tmp_path):
    prefix = tmp_path / "xdma0"
    with pytest.raises(DeviceError, match=f"no dpfpga shell at {prefix}.*does not exist"):
        XdmaDevice(env.qm, prefix).open()
    with pytest.raises(DeviceError, match=r"no dpfpga shell.*reads nothing"):
        open(f"{prefix}_user", "wb").close()  # an empty BAR
        XdmaDevice(env.qm, prefix).open()
    with pytest.raises(DeviceError, match=r"no dpfpga shell.*reads 0x00000000"):
        with open(f"{prefix}_user", "wb") as f:
            f.write(bytes(4096))  # another bitstream: MAGIC is not ours
        XdmaDevice(env.qm, prefix).open()


def test_dead_card_with_stale_files(env, tmp_path):
    """Register file and pipes left behind by a killed simulator: opening fails at once."""
    prefix = tmp_path / "xdma0"
    m = rm.RegisterMap.default()
    with open(f"{prefix}_user", "wb") as f:
        f.write(bytes(m.size))
    fd = os.open(f"{prefix}_user", os.O_RDWR)
    try:
        regs = rm.RegisterFile(fd, m, side="card")
        values = {"MAGIC": m.magic, "VERSION": 1, "LANES": 1}
        values.update((f"MODEL_HASH{k}", w) for k, w in enumerate(rm.hash_words(env.qm.hash)))
        for name, value in values.items():
            regs.write(name, value)
        with pytest.raises(PermissionError):
            rm.RegisterFile(fd, m).write("MAGIC", 0)  # the host may not write read-only registers
    finally:
        os.close(fd)
    os.mkfifo(f"{prefix}_h2c_0")
    os.mkfifo(f"{prefix}_c2h_0")
    t = time.monotonic()
    with pytest.raises(DeviceError, match="h2c_0: nothing serves it"):
        XdmaDevice(env.qm, prefix).open()
    assert time.monotonic() - t < 2


def test_command_line_card_and_sigterm(env, tmp_path):
    """`python -m sim.xdma_card` serves a device; SIGTERM removes the files and the harness."""
    prefix = tmp_path / "cli" / "xdma0"
    proc = subprocess.Popen([sys.executable, "-m", "sim.xdma_card", "--model", str(env.model_path), "--prefix",
                             str(prefix), "--lanes", "1", "--fit-par", "2", "--desc-par", "4"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not os.path.exists(f"{prefix}_user"):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "card simulator not ready within 180 s"
            time.sleep(0.2)
        dev = open_device(f"xdma:{prefix}", env.qm, timeout=30)
        try:
            pos, cell, types = random_structure(natoms=10, seed=9)
            got = Evaluator(env.qm, dev, chunk_atoms=4, timeout=30).compute(pos, cell, True, types)
        finally:
            dev.close()
        assert_same_integers(got, reference(env.qm, pos, cell, types))
        harness = children(proc.pid)
        assert harness
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not leftovers(prefix)
        assert not any(alive(p) for p in harness)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for f in leftovers(prefix):
            os.unlink(f)
