"""The native core's in-process devices xdma and rtl (host/native/xdma.cpp, rtl.cpp) against the Python
devices they copy (host/devices/xdma.py, rtl.py) and the reference (model.reference.process_beats):
the same output words, compared with ==, and the same failures, each bounded by a short timeout.

Two kinds of card simulator (sim/xdma_card.py) serve the C++ xdma device:
  - the zero card: XdmaCard around a small Python "harness" that answers every atom with zeros in the
    harness's streaming protocol (ZERO_HARNESS below), so the plumbing, the errors, the choice of card by
    node rank and the sharing of one card run without Verilator;
  - the RTL card: XdmaCard around the generated pipeline's standalone Verilator harness (marked
    `verilator`; one module-scoped build per lane count, shared with the rtl device's tests).
"""

from __future__ import annotations

import copy
import os
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from contract import wire
from gen.ir import Knobs
from host.devices import DeviceError, DeviceTimeout
from support import REPO, random_structure, tiny_qm

CHUNK = 8  # atoms per chunk: 40 atoms make 5 chunks, all in flight at once

# The harness protocol (sim/harness/pipeline_harness.cpp) with every answer zero, framed as the
# pipeline frames it: an input header beat becomes a result header beat (tag, n = count), each record
# a zero result record, padding stays padding.  Word by word, so it streams whatever arrives.
ZERO_HARNESS = f"""#!{sys.executable}
import os, sys
sys.path.insert(0, {str(REPO)!r})
import numpy as np
from contract import wire
rest = b""
while True:
    data = os.read(0, 1 << 16)
    if not data:
        break
    b = rest + data
    n = len(b) - len(b) % 8
    words, rest = np.frombuffer(b[:n], dtype="<u8"), b[n:]
    kind = wire.kind(words)
    _, count, tag = wire.decode_input_header(words)
    out = np.where(kind == wire.HEADER, wire.output_header(tag, count, 0, 0),
                   np.where(kind == wire.RECORD, wire.output_record(np.zeros((len(words), 3), np.int64), 0),
                            np.uint64(0)))
    sys.stdout.buffer.write(out.astype("<u8").tobytes())
    sys.stdout.buffer.flush()
"""


def script(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def native_devices():
    """host.native's open_device, or a skip saying why the extension is not here."""
    from host import native
    if not hasattr(native, "open_device"):
        pytest.skip("host.native.open_device is not there yet")
    if not native.available():
        pytest.skip(f"native core not built: {native.why_not()}")
    return native


def chunks(qm, seed, lanes, natoms=40, chunk=CHUNK):
    """A random structure's neighbour records, encoded (contract.wire) in chunks of `chunk` atoms:
    [(beats (n, lanes) uint64, n_atoms)]."""
    from model.assembly import neighbor_blocks, quantize_records
    pos, cell, types = random_structure(natoms=natoms, seed=seed)
    rec = quantize_records(qm, neighbor_blocks(qm, pos, cell, True, types))
    out = []
    for lo in range(0, natoms, chunk):
        sl = slice(lo, min(lo + chunk, natoms))
        beats = wire.encode_atoms(rec.center_type[sl], rec.nbr_type[sl], rec.nbr_d[sl], lanes,
                                  tags=np.arange(natoms)[sl])
        out.append((beats, sl.stop - sl.start))
    return out


def run(dev, work, timeout=30.0):
    """Every chunk submitted before the first is collected (all in flight), between begin() and end()."""
    dev.begin()
    try:
        for beats, n in work:
            dev.submit(beats, n)
        return [dev.collect(timeout) for _ in work]
    finally:
        dev.end()


def run_python(dev, work, timeout=30.0):
    try:
        for beats, n in work:
            dev.submit(beats, n)
        return [dev.collect(timeout) for _ in work]
    finally:
        dev.close()


def assert_words(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == np.uint64 and g.shape == w.shape and (g == w).all()


def other_model(qm):
    """A model with another content hash."""
    other = copy.copy(qm)
    other.energy_bias = qm.energy_bias + 1
    other.hash = None
    return other


# ---- the zero card: no Verilator --------------------------------------------------------------------

@pytest.fixture
def cards(qm, tmp_path, tmp_path_factory):
    """Start zero cards (lanes, stall); every card and device is closed and removed at teardown."""
    from sim.xdma_card import XdmaCard
    exe = script(tmp_path_factory.getbasetemp() / "zero_harness.py", ZERO_HARNESS)
    started, devices = [], []

    def card(name="xdma0", lanes=1, **kw):
        c = XdmaCard(qm, tmp_path / "dev" / name, Knobs(lanes=lanes, fit_par=2, desc_par=4), exe=exe, **kw)
        started.append(c)
        return c.start()

    def keep(dev):
        devices.append(dev)
        return dev

    yield SimpleNamespace(card=card, keep=keep, devices=devices)
    for d in devices:
        d.close()
    for c in started:
        c.stop()


@pytest.mark.parametrize("lanes,seed", [(1, 1), (2, 2)], ids=["lanes1-seed1", "lanes2-seed2"])
def test_zero_card_words(qm, native_devices, cards, lanes, seed):
    """Five chunks in flight: the C++ xdma device gives the zero device's words, and the Python xdma
    device on the same card gives them too."""
    from host.devices import open_device
    card = cards.card(lanes=lanes)
    work = chunks(qm, seed, lanes)
    dev = cards.keep(native_devices.open_device(f"xdma:{card.prefix}", qm, timeout=30))
    assert dev.lanes == lanes and dev.name == "xdma"
    got = run(dev, work)
    assert_words(got, run(native_devices.open_device("zero", qm, lanes=lanes), work))
    dev.close()
    assert_words(run_python(open_device(f"xdma:{card.prefix}", qm, timeout=30), work), got)
    again = cards.keep(native_devices.open_device(f"xdma:{card.prefix}", qm, timeout=30))
    assert_words(run(again, work), got)  # after the Python device: open() reset the card
    assert card.regs.read("ATOMS_IN") == card.regs.read("ATOMS_OUT") == 40


def test_no_card_at_prefix(qm, native_devices, tmp_path):
    prefix = tmp_path / "xdma0"
    with pytest.raises(DeviceError, match=f"no dpfpga shell at {prefix}: {prefix}_user does not exist"):
        native_devices.open_device(f"xdma:{prefix}", qm)
    open(f"{prefix}_user", "wb").close()  # an empty BAR
    with pytest.raises(DeviceError, match=r"no dpfpga shell.*MAGIC at offset 0x0 reads nothing \(BAR too short\)"):
        native_devices.open_device(f"xdma:{prefix}", qm)
    with open(f"{prefix}_user", "wb") as f:
        f.write(bytes(4096))  # another bitstream: MAGIC is not ours
    with pytest.raises(DeviceError, match=r"no dpfpga shell.*reads 0x00000000, expected 0x64706667"):
        native_devices.open_device(f"xdma:{prefix}", qm)
    with pytest.raises(DeviceError, match="empty card prefix"):
        native_devices.open_device(f"xdma:{prefix},,{prefix}", qm)


def test_dead_card_with_stale_files(qm, native_devices, tmp_path):
    """Register file and pipes left behind by a killed simulator: opening fails at once."""
    from contract import registers as rm
    from contract.modelfile import content_hash
    prefix = tmp_path / "xdma0"
    m = rm.RegisterMap.default()
    with open(f"{prefix}_user", "wb") as f:
        f.write(bytes(m.size))
    fd = os.open(f"{prefix}_user", os.O_RDWR)
    try:
        regs = rm.RegisterFile(fd, m, side="card")
        for name, value in [("MAGIC", m.magic), ("VERSION", 1), ("LANES", 1)] + \
                [(f"MODEL_HASH{k}", w) for k, w in enumerate(rm.hash_words(content_hash(qm)))]:
            regs.write(name, value)
    finally:
        os.close(fd)
    os.mkfifo(f"{prefix}_h2c_0")
    os.mkfifo(f"{prefix}_c2h_0")
    t = time.monotonic()
    with pytest.raises(DeviceError, match="h2c_0: nothing serves it"):
        native_devices.open_device(f"xdma:{prefix}", qm)
    assert time.monotonic() - t < 2


def test_model_hash_mismatch(qm, native_devices, cards):
    from contract.modelfile import content_hash
    card = cards.card()
    other = other_model(qm)
    with pytest.raises(DeviceError) as e:
        native_devices.open_device(f"xdma:{card.prefix}", other)
    assert not isinstance(e.value, DeviceTimeout)
    assert f"the card runs model {content_hash(qm)}, the host has model {content_hash(other)}" in str(e.value)


def test_card_that_stops_answering_times_out(qm, native_devices, cards):
    """DeviceTimeout within the timeout, with the registers in the message; end() resets the card, so
    the same device's next evaluation works once the card answers again; closing is prompt."""
    card = cards.card(stall=True)
    dev = cards.keep(native_devices.open_device(f"xdma:{card.prefix}", qm, timeout=5))
    work = chunks(qm, 3, 1, natoms=16)
    dev.begin()
    for beats, n in work:
        dev.submit(beats, n)
    t = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"no result within 2 s; STATUS=0x1 \(busy\) .*ATOMS_IN=16 ATOMS_OUT=0"):
        dev.collect(2.0)
    assert 2 <= time.monotonic() - t < 2 + 3
    card.stall = False
    t = time.monotonic()
    dev.end()
    assert time.monotonic() - t < 5
    assert card.regs.read("ATOMS_IN") == 0  # end() soft-reset the card
    zero = native_devices.open_device("zero", qm)
    assert_words(run(dev, work), run(zero, work))
    card.stall = True
    dev.begin()
    dev.submit(*work[0])
    t = time.monotonic()
    dev.close()  # threads stopped, chunk abandoned, reset requested with enable clear
    assert time.monotonic() - t < 2
    deadline = time.monotonic() + 10
    while card.regs.read("CONTROL") != 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert card.regs.read("CONTROL") == 0 and card.regs.read("ATOMS_IN") == 0


def test_broken_stream_is_an_error(qm, native_devices, cards):
    """Words that cannot start a result, or results nobody asked for: DeviceError at once."""
    card = cards.card(stall=True)  # the harness's own answers are swallowed; the test writes the stream
    dev = cards.keep(native_devices.open_device(f"xdma:{card.prefix}", qm, timeout=20))
    dev.begin()
    dev.submit(np.zeros((0, 1), np.uint64), 1)
    os.write(card.fds["c2h"], wire.output_record(np.zeros(3, np.int64), 0).astype("<u8").tobytes())
    t = time.monotonic()
    with pytest.raises(DeviceError, match="stream broken: expected a result header, got word 0x8000000000000000; "
                                          "STATUS=0x") as e:
        dev.collect(10)
    assert not isinstance(e.value, DeviceTimeout) and time.monotonic() - t < 5
    dev.end()  # resets: the broken stream is gone
    dev.begin()
    os.write(card.fds["c2h"], wire.output_header(0, 0, 0, 0).astype("<u8").tobytes())
    with pytest.raises(DeviceError, match="8 bytes nobody asked for"):
        dev.collect(10)
    dev.end()


def test_harness_exit_is_a_card_error(qm, native_devices, cards):
    """The card's harness dies during an evaluation: STATUS.error ends it with a DeviceError at once;
    end() resets the card.  A card found in error by begin() (its user died) is reset too."""
    card = cards.card()
    dev = cards.keep(native_devices.open_device(f"xdma:{card.prefix}", qm, timeout=20))
    work = chunks(qm, 4, 1, natoms=16)
    want = run(native_devices.open_device("zero", qm), work)
    dev.begin()
    card.harness.kill()
    for beats, n in work:
        dev.submit(beats, n)
    t = time.monotonic()
    with pytest.raises(DeviceError, match=r"the card reports an error: STATUS=0x[23] \(.*error\)") as e:
        dev.collect(20)
    assert not isinstance(e.value, DeviceTimeout) and time.monotonic() - t < 5
    dev.end()
    assert card.error is None  # reset: a fresh harness
    assert_words(run(dev, work), want)
    card.harness.kill()
    deadline = time.monotonic() + 10
    while card.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert card.regs.read("STATUS") & 2
    assert_words(run(dev, work), want)


def test_node_rank_picks_the_card(qm, native_devices, cards):
    """Two cards (1 and 2 lanes, to tell them apart): rank r drives card r % 2."""
    a, b = cards.card("xdma0", lanes=1), cards.card("xdma1", lanes=2)
    spec = f"xdma:{a.prefix},{b.prefix}"
    for rank in range(4):
        dev = native_devices.open_device(spec, qm, node_rank=rank, timeout=30)
        try:
            assert dev.lanes == (1, 2)[rank % 2]
            run(dev, chunks(qm, 5, dev.lanes, natoms=8))
        finally:
            dev.close()
    assert a.regs.read("ATOMS_IN") == b.regs.read("ATOMS_IN") == 8  # each opened twice: reset, then 8 atoms


def test_shared_card_takes_turns(qm, native_devices, cards):
    """Devices sharing a card (as several ranks' processes do) hold it from begin() to end(): a second
    begin() waits for the first end(), or gives up with DeviceTimeout naming the card; evaluations run
    concurrently from threads never mix their chunks."""
    card = cards.card()
    one = cards.keep(native_devices.open_device(f"xdma:{card.prefix}", qm, timeout=30))
    two = cards.keep(native_devices.open_device(f"xdma:{card.prefix}", qm, timeout=30))
    brief = cards.keep(native_devices.open_device(f"xdma:{card.prefix}", qm, timeout=1))
    one.begin()
    t = time.monotonic()
    with pytest.raises(DeviceTimeout, match=f"{card.prefix}: the card is in use by another process"):
        brief.begin()
    assert 1 <= time.monotonic() - t < 3
    entered = threading.Event()
    waiter = threading.Thread(target=lambda: (two.begin(), entered.set()))
    waiter.start()
    assert not entered.wait(0.5)  # `two` waits while `one` holds the card
    one.end()
    assert entered.wait(10)
    waiter.join()
    two.end()

    zero = native_devices.open_device("zero", qm)
    works = [chunks(qm, seed, 1, natoms=24) for seed in (6, 7)]
    wants = [run(zero, w) for w in works]
    errors = []

    def evaluate(dev, work, want):
        try:
            for _ in range(4):
                assert_words(run(dev, work), want)
        except BaseException as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    threads = [threading.Thread(target=evaluate, args=(d, w, x)) for d, w, x in zip((one, two), works, wants)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert card.regs.read("ATOMS_IN") == card.regs.read("ATOMS_OUT") == 2 * 4 * 24


# ---- the rtl device's plumbing, with stand-in harnesses: no Verilator ---------------------------------

def test_rtl_zero_harness(qm, native_devices, tmp_path):
    exe = script(tmp_path / "zero_harness.py", ZERO_HARNESS)
    work = chunks(qm, 8, 2)
    dev = native_devices.open_device(f"rtl:{exe}", qm, lanes=2, timeout=30)
    try:
        assert dev.lanes == 2 and dev.name == "rtl"
        assert_words(run(dev, work), run(native_devices.open_device("zero", qm, lanes=2), work))
    finally:
        dev.close()


def test_rtl_harness_failures(qm, native_devices, tmp_path):
    work = chunks(qm, 9, 1, natoms=8)
    with pytest.raises(DeviceError, match=f"rtl: cannot run the harness {tmp_path}/none"):
        native_devices.open_device(f"rtl:{tmp_path / 'none'}", qm)
    dies = script(tmp_path / "dies.sh", "#!/bin/sh\necho 'stall: 5 cycles without output' >&2\nexit 3\n")
    dev = native_devices.open_device(f"rtl:{dies}", qm)
    t = time.monotonic()
    with pytest.raises(DeviceError, match=r"rtl: simulator ended \(exit 3\): stall: 5 cycles without output"):
        run(dev, work, timeout=20)
    assert time.monotonic() - t < 10
    with pytest.raises(DeviceError, match="failed earlier.*reopen the device"):
        dev.submit(*work[0])
    dev.close()
    mute = script(tmp_path / "mute.sh", "#!/bin/sh\nexec sleep 600\n")  # never answers, never exits
    dev = native_devices.open_device(f"rtl:{mute}", qm)
    t = time.monotonic()
    with pytest.raises(DeviceTimeout, match="rtl: no result within 1 s"):
        run(dev, work, timeout=1.0)
    assert time.monotonic() - t < 3
    t = time.monotonic()
    dev.close()  # kills and reaps the harness
    assert time.monotonic() - t < 3


# ---- the generated RTL: Verilator ------------------------------------------------------------------

@pytest.fixture(scope="module")
def rtl_env(tmp_path_factory, native_devices):
    """The saved-and-reloaded tiny model (its hash is its file's) and the harness for 1 and 2 lanes."""
    from sim import runner
    try:
        runner.check_simulator("verilator")
    except runner.SimulatorMissing as e:
        pytest.skip(str(e))
    from contract import modelfile
    path = tmp_path_factory.mktemp("model") / "tiny.npz"
    modelfile.save(copy.copy(tiny_qm()), path)
    qm = modelfile.load(path)
    return SimpleNamespace(qm=qm, exe=_Harnesses(qm, native_devices))


class _Harnesses(dict):
    """The Verilator harness per lane count, built when a test first asks for it (each is minutes)."""

    def __init__(self, qm, native_devices):
        super().__init__()
        self.qm, self.native_devices = qm, native_devices

    def __missing__(self, lanes):
        self[lanes] = self.native_devices.rtl_harness(self.qm, lanes)
        return self[lanes]


def reference(qm, work, lanes):
    from model.reference import process_beats
    return [process_beats(qm, beats, n, lanes) for beats, n in work]


@pytest.mark.verilator
@pytest.mark.parametrize("lanes,seed", [(1, 5), pytest.param(2, 6, marks=pytest.mark.slow)],
                         ids=["lanes1-seed5", "lanes2-seed6"])  # two lanes: a second Verilator build (slow)
def test_xdma_rtl_card_bit_exact(rtl_env, native_devices, tmp_path, lanes, seed):
    from host.devices import open_device
    from sim.xdma_card import XdmaCard
    qm = rtl_env.qm
    work = chunks(qm, seed, lanes)
    want = reference(qm, work, lanes)
    heads = np.concatenate([b[:, 0][wire.kind(b[:, 0]) == wire.HEADER] for b in want])
    assert len(heads) == 40 and wire.decode_output_header(heads)[3].any()  # energies: not a zero card
    card = XdmaCard(qm, tmp_path / "xdma0", Knobs(lanes=lanes, fit_par=2, desc_par=4), exe=rtl_env.exe[lanes]).start()
    try:
        dev = native_devices.open_device(f"xdma:{card.prefix}", qm, timeout=60)
        try:
            assert dev.lanes == lanes
            assert_words(run(dev, work, timeout=60), want)
        finally:
            dev.close()
        assert_words(run_python(open_device(f"xdma:{card.prefix}", qm, timeout=60), work, timeout=60), want)
    finally:
        card.stop()


@pytest.mark.verilator
@pytest.mark.parametrize("lanes,seed", [(1, 5), pytest.param(2, 6, marks=pytest.mark.slow)],
                         ids=["lanes1-seed5", "lanes2-seed6"])  # two lanes: a second Verilator build (slow)
def test_rtl_bit_exact(rtl_env, native_devices, lanes, seed):
    from host.devices.rtl import RtlDevice
    qm = rtl_env.qm
    work = chunks(qm, seed, lanes)
    want = reference(qm, work, lanes)
    dev = native_devices.open_device(f"rtl:{rtl_env.exe[lanes]}", qm, lanes=lanes, timeout=60)
    try:
        assert_words(run(dev, work, timeout=60), want)
    finally:
        dev.close()
    py = RtlDevice(qm, lanes=lanes)
    py.open()
    assert_words(run_python(py, work, timeout=60), want)
