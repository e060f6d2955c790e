"""A dpfpga card on PCIe, through the Linux XDMA driver's character devices.

    <prefix>_h2c_0   host-to-card DMA: each write() is one transfer into the card's AXI4-Stream input
    <prefix>_c2h_0   card-to-host DMA: read() returns bytes of the card's AXI4-Stream output
    <prefix>_user    the user BAR: the shell's 32-bit registers (contract.registers), pread/pwrite

Contract (host.devices.base.Device): `open()` checks that a dpfpga shell answers at the prefix (MAGIC,
VERSION), takes LANES from the card, refuses a card loaded with another model (MODEL_HASH0..7 against
`qm.hash`), soft-resets the card (a previous session may have left results in the stream) and
enables it.  `submit(beats, n_atoms)` never blocks: a writer thread sends the chunk in transfers of at
most 4 MiB.  A reader thread cuts the output stream into atoms (a header beat, then ceil(n / lanes)
record beats) and into the submitted chunks; `collect(timeout)` returns the oldest chunk's output
beats, raises DeviceTimeout when nothing complete arrives in time and DeviceError (with the STATUS,
FLAGS and counter registers in the message) when the card reports an error or the stream breaks.
`close()` clears enable, stops the threads (they wake at least every POLL_S) and closes the files.

Every wait is bounded: the threads use poll() with a timeout and non-blocking file descriptors, so a
card that stops answering costs a DeviceTimeout, never a hung host.  (On a real XDMA driver poll()
always reports ready and reads/writes block up to the driver's own h2c/c2h timeout; the same code
then relies on that timeout.)

The register addresses come from a RegisterMap: the built-in one, or JSON given as `regmap=PATH`.
"""

from __future__ import annotations

import errno
import os
import queue
import select
import threading
import time

import numpy as np

from contract import registers as rm
from contract import wire
from contract.modelfile import content_hash

from .base import Device, DeviceError, DeviceTimeout

MAX_TRANSFER = 4 << 20  # bytes per h2c write(): bounds the driver's pinned pages per transfer
READ_SIZE = 1 << 20  # bytes per c2h read()
POLL_S = 0.2  # the longest a thread sleeps before it looks at the stop flag again
SUPPORTED_VERSIONS = (rm.SHELL_VERSION,)  # shell interface versions this host drives


class XdmaDevice(Device):
    name = "xdma"

    def __init__(self, qm, prefix: str = "/dev/xdma0", regmap=None, timeout: float = 60.0,
                 lanes: int | None = None):
        """lanes: None takes the card's LANES; a number must match it.  timeout: default for
        `collect(None)` and the bound on open()'s soft reset.  `self.lanes` is the card's only after
        open(), so build an Evaluator on an opened device (open_device("xdma:PREFIX", qm) does)."""
        super().__init__(qm, lanes=lanes or 1)
        self.model_hash = content_hash(qm)
        self.prefix = str(prefix)
        self.regmap = rm.load(regmap)
        self.timeout = timeout
        self._want_lanes = lanes
        self._fds: dict[str, int] = {}
        self._threads: list[threading.Thread] = []
        self.regs: rm.RegisterFile | None = None

    # -- paths and registers ------------------------------------------------------------------------
    def path(self, which: str) -> str:
        return {"h2c": f"{self.prefix}_h2c_0", "c2h": f"{self.prefix}_c2h_0", "user": f"{self.prefix}_user"}[which]

    def registers(self) -> dict:
        """Every register's current value (None where the BAR is too short)."""
        return self.regs.snapshot() if self.regs else {}

    def _state(self) -> str:
        """STATUS, FLAGS and counters, for error messages."""
        try:
            r = self.regs.snapshot(["STATUS", "FLAGS", "ATOMS_IN", "ATOMS_OUT", "RECORDS_IN"])
        except (OSError, AttributeError) as e:
            return f"registers unreadable: {e}"
        st = r["STATUS"] or 0
        bits = [n for n in ("busy", "error") if st & self.regmap.bit("STATUS", n)]
        return (f"STATUS={st:#x} ({', '.join(bits) or 'idle'}) FLAGS={r['FLAGS'] or 0:#x} "
                f"ATOMS_IN={r['ATOMS_IN']} ATOMS_OUT={r['ATOMS_OUT']} RECORDS_IN={r['RECORDS_IN']}")

    # -- open ---------------------------------------------------------------------------------------
    def open(self) -> None:
        if self._threads:
            raise DeviceError(f"{self.prefix}: device is already open")
        try:
            self._open()
        except BaseException:
            self._close_fds()
            raise

    def _open(self):
        where = f"no dpfpga shell at {self.prefix}"
        try:
            self._fds["user"] = os.open(self.path("user"), os.O_RDWR)
        except FileNotFoundError:
            raise DeviceError(f"{where}: {self.path('user')} does not exist (XDMA driver not loaded, wrong "
                              "prefix, or card simulator not running: python -m sim.xdma_card)") from None
        except OSError as e:
            raise DeviceError(f"{where}: cannot open {self.path('user')}: {e}") from e
        self.regs = rm.RegisterFile(self._fds["user"], self.regmap)
        magic = self.regs.read("MAGIC")
        if magic != self.regmap.magic:
            got = "nothing (BAR too short)" if magic is None else f"{magic:#010x}"
            raise DeviceError(f"{where}: MAGIC at offset {self.regmap.offset('MAGIC'):#x} reads {got}, expected "
                              f"{self.regmap.magic:#010x} (another bitstream, or a register map that does not "
                              "match the card)")
        version = self.regs.read("VERSION")
        if version not in SUPPORTED_VERSIONS:
            raise DeviceError(f"{self.prefix}: shell version {version} is not supported (this host speaks "
                              f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
        lanes = self.regs.read("LANES") or 0
        if lanes < 1 or (self._want_lanes and lanes != self._want_lanes):
            raise DeviceError(f"{self.prefix}: card has {lanes} lane(s), expected {self._want_lanes or '>= 1'}")
        self.lanes = lanes
        card_hash = rm.words_hash(self.regs.read(f"MODEL_HASH{k}") or 0 for k in range(rm.HASH_WORDS))
        if card_hash != self.model_hash:
            raise DeviceError(f"{self.prefix}: the card runs model {card_hash}, the host has model "
                              f"{self.model_hash}; load the matching bitstream or model file")
        for which, flags in (("h2c", os.O_WRONLY), ("c2h", os.O_RDONLY)):
            try:
                # Non-blocking so that the threads can poll() with timeouts; opening a FIFO's write end
                # that way also fails at once (ENXIO) when nothing serves the card.
                self._fds[which] = os.open(self.path(which), flags | os.O_NONBLOCK)
            except OSError as e:
                why = "nothing serves it" if e.errno == errno.ENXIO else str(e)
                raise DeviceError(f"{self.prefix}: cannot open {self.path(which)}: {why}") from e
        self._reset()
        self.regs.write("CONTROL", self.regmap.bit("CONTROL", "enable"))
        self._stop = threading.Event()
        self._writes: queue.Queue = queue.Queue()
        self._chunks: queue.Queue = queue.Queue()  # atoms per submitted chunk, for the reader
        self._done: queue.Queue = queue.Queue()  # output beats per chunk, or the exception that ended it
        self._failure: DeviceError | None = None
        self._threads = [threading.Thread(target=self._writer, daemon=True, name="xdma-writer"),
                         threading.Thread(target=self._reader, daemon=True, name="xdma-reader")]
        for t in self._threads:
            t.start()

    def _reset(self):
        """Soft reset, waiting (bounded) for the card to clear the self-clearing bit."""
        reset = self.regmap.bit("CONTROL", "reset")
        self.regs.write("CONTROL", reset)
        deadline = time.monotonic() + min(self.timeout, 30.0)
        while (self.regs.read("CONTROL") or 0) & reset:
            if time.monotonic() > deadline:
                raise DeviceTimeout(f"{self.prefix}: soft reset not acknowledged (CONTROL still {reset:#x})")
            time.sleep(0.01)

    # -- threads ------------------------------------------------------------------------------------
    def _fail(self, err: DeviceError):
        """Record the first failure and hand it to the collecting thread."""
        if self._failure is None:
            self._failure = err
            self._done.put(err)

    def _writer(self):
        fd, beat = self._fds["h2c"], 8 * self.lanes
        step = MAX_TRANSFER - MAX_TRANSFER % beat  # whole beats per transfer
        try:
            while not self._stop.is_set():
                try:
                    data = self._writes.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                view = memoryview(data)
                while len(view) and not self._stop.is_set():
                    if not _wait(fd, select.POLLOUT):
                        continue
                    try:
                        view = view[os.write(fd, view[:step]):]
                    except BlockingIOError:
                        continue
        except OSError as e:
            self._fail(DeviceError(f"{self.prefix}: h2c write failed: {e}; {self._state()}"))

    def _reader(self):
        fd, beat = self._fds["c2h"], 8 * self.lanes
        # buf[:start] is handed out, buf[start:pos] is the current chunk's complete atoms.
        buf, start, pos = bytearray(), 0, 0
        chunk_left = None  # atoms the current chunk still waits for (None: no chunk taken yet)
        try:
            while not self._stop.is_set():
                # Cut whatever is complete into atoms and chunks.
                while True:
                    if chunk_left is None:
                        try:
                            chunk_left = self._chunks.get_nowait()
                        except queue.Empty:
                            break
                    if chunk_left == 0:
                        self._done.put(np.frombuffer(bytes(buf[start:pos]), dtype="<u8").reshape(-1, self.lanes))
                        chunk_left, start = None, pos
                        continue
                    if len(buf) - pos < beat:
                        break
                    head = int.from_bytes(buf[pos:pos + 8], "little")
                    if wire.kind(head) != wire.HEADER:
                        raise DeviceError(f"{self.prefix}: stream broken: expected a result header, got word "
                                          f"{head:#018x}; {self._state()}")
                    size = beat * wire.result_beats(head, self.lanes)
                    if len(buf) - pos < size:
                        break
                    pos += size
                    chunk_left -= 1
                if chunk_left is None and len(buf) > pos:
                    raise DeviceError(f"{self.prefix}: the card sent {len(buf) - pos} bytes nobody asked for; "
                                      f"{self._state()}")
                if start > (1 << 22):  # forget what is handed out, so memory stays bounded by a chunk
                    del buf[:start]
                    pos, start = pos - start, 0
                if not _wait(fd, select.POLLIN):
                    continue
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    continue
                if not data:
                    raise DeviceError(f"{self.prefix}: the card closed its output stream; {self._state()}")
                buf += data
        except DeviceError as e:
            self._fail(e)
        except OSError as e:
            self._fail(DeviceError(f"{self.prefix}: c2h read failed: {e}; {self._state()}"))

    # -- Device -------------------------------------------------------------------------------------
    def submit(self, beats, n_atoms):
        if not self._threads:
            raise DeviceError(f"{self.prefix}: device is not open")
        beats = np.ascontiguousarray(beats, dtype="<u8")
        if beats.ndim != 2 or beats.shape[1] != self.lanes:
            raise DeviceError(f"{self.prefix}: beats must be (n, {self.lanes}) words, got {beats.shape}")
        self._chunks.put(int(n_atoms))
        if beats.size:
            self._writes.put(beats.tobytes())

    def collect(self, timeout=None):
        if not self._threads:
            raise DeviceError(f"{self.prefix}: device is not open")
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        error = self.regmap.bit("STATUS", "error")
        while True:
            # Wait in slices so that a card that flags an error is reported now, not at the deadline.
            try:
                out = self._done.get(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                if (self.regs.read("STATUS") or 0) & error:
                    self._fail(DeviceError(f"{self.prefix}: the card reports an error: {self._state()}"))
                    continue
                if time.monotonic() >= deadline:
                    raise DeviceTimeout(f"{self.prefix}: no result within {timeout} s; {self._state()}") from None
                continue
            if isinstance(out, Exception):
                self._done.put(out)  # every later collect fails the same way
                raise out
            return out

    def close(self):
        if self._threads:
            try:
                self.regs.write("CONTROL", 0)
            except OSError:
                pass  # the card may be gone; closing must still release everything
            self._stop.set()
            for t in self._threads:
                t.join(timeout=10 * POLL_S)
            self._threads = []
        self._close_fds()

    def _close_fds(self):
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}
        self.regs = None


def _wait(fd: int, event: int) -> bool:
    """poll() one descriptor for up to POLL_S; True when it is ready (or in error: the next
    read/write says which)."""
    p = select.poll()
    p.register(fd, event)
    return bool(p.poll(POLL_S * 1000))
