"""A stand-in for the PCIe card: the XDMA driver's file interface, served by the Verilator harness.

    python -m sim.xdma_card --model M.npz --prefix DIR/xdma0 [--fit-par 2 --desc-par 4 --lanes 1]
                            [--regmap MAP.json] [--stall-cycles N] [--stall]

creates, under the prefix, what the XDMA driver would:

    <prefix>_h2c_0   named pipe: bytes the host writes go to the pipeline's input stream
    <prefix>_c2h_0   named pipe: the pipeline's output stream, for the host to read
    <prefix>_user    regular file of `regmap.size` bytes (4 KiB): the shell's registers as
                     little-endian u32 at their offsets (contract.registers), which the host
                     preads/pwrites exactly as it would the BAR

and runs the generated RTL in the standalone harness (sim/standalone.py) behind them, so that
`host.devices.xdma.XdmaDevice` can be tested end to end without a card.  The user file appears last
(atomically, by rename): once MAGIC can be read, the card is ready.  SIGTERM or SIGINT stops it;
the pipes, the user file and the harness process are removed on every exit path but SIGKILL.

Importable for tests: `card = XdmaCard(qm, prefix, knobs).start()` ... `card.stop()`.

Behaviour of the registers:
  MAGIC, VERSION, LANES, MODEL_HASH0..7  written once at start (MODEL_HASH from the model's hash)
  ATOMS_IN, RECORDS_IN                   counted on the words taken from h2c (before the harness sees them)
  ATOMS_OUT, RECORDS_OUT, FLAGS          counted on the words the harness returns (before the host sees them)
  STATUS.busy                            ATOMS_IN != ATOMS_OUT
  STATUS.error                           set when the harness exits (stall: exit code 3, or killed);
                                         sticky until a soft reset
  CONTROL.enable                         h2c is read only while set (clear: the host's writes wait)
  CONTROL.reset                          restarts the harness, empties both pipes, zeroes the counters,
                                         then clears itself
CONTROL is sampled every CONTROL_POLL_S (a plain file cannot signal a write); the data pumps block in
poll()/read() with timeouts, so an idle card costs no CPU beyond that.

Test hook: `stall` (attribute or --stall) makes the card swallow the harness's output, a card that
has stopped answering.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from contract import registers as rm
from contract import wire
from contract.modelfile import content_hash

log = logging.getLogger("sim.xdma_card")

POLL_S = 0.2  # the longest a pump sleeps before looking at its stop flag again
CONTROL_POLL_S = 0.02
READ_SIZE = 1 << 20
PIPE_SIZE = 1 << 20  # ask the kernel for 1 MiB pipes (default 64 KiB): fewer wake-ups per chunk


def _wait(fd: int, event: int, timeout_s: float = POLL_S) -> bool:
    p = select.poll()
    p.register(fd, event)
    return bool(p.poll(timeout_s * 1000))


def _words(rest: bytes, data: bytes) -> tuple[np.ndarray, bytes]:
    """Whole 64-bit words of rest + data, and the bytes of a word cut by the read."""
    b = rest + data
    n = len(b) - len(b) % 8
    return np.frombuffer(b[:n], dtype="<u8"), b[n:]


class _Session:
    """One run of the harness and the two pumps around it (a soft reset makes a new one)."""

    def __init__(self, card: "XdmaCard"):
        self.card = card
        self.stopping = threading.Event()
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [str(card.exe), "--lanes", str(card.lanes), "--stall-cycles", str(card.stall_cycles)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, bufsize=0)
        self.threads = [threading.Thread(target=self._h2c, daemon=True, name="xdma-card-h2c"),
                        threading.Thread(target=self._c2h, daemon=True, name="xdma-card-c2h")]
        for t in self.threads:
            t.start()

    def _h2c(self):
        """h2c pipe -> harness stdin, counting input headers and records on the way."""
        card, fd, rest = self.card, self.card.fds["h2c"], b""
        stdin = self.proc.stdin.fileno()
        while not self.stopping.is_set():
            if not card.enabled.wait(POLL_S) or not _wait(fd, select.POLLIN):
                continue
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            w, rest = _words(rest, data)
            kind = wire.kind(w)
            card.count(atoms_in=int((kind == wire.HEADER).sum()), records_in=int((kind == wire.RECORD).sum()))
            try:
                view = memoryview(data)
                while view:  # blocking: the harness takes input as fast as it can compute
                    view = view[os.write(stdin, view):]
            except OSError:
                return  # the harness is gone; _c2h sees its exit and reports it

    def _c2h(self):
        """harness stdout -> c2h pipe, counting result headers and their flags on the way."""
        from contract.flags import FLAG_SATURATED
        card, fd, rest = self.card, self.card.fds["c2h"], b""
        stdout = self.proc.stdout.fileno()
        while True:
            data = os.read(stdout, READ_SIZE)  # blocking; b"" when the harness exits
            if not data:
                break
            if card.stall:
                continue  # test hook: a card that stops answering
            w, rest = _words(rest, data)
            kind = wire.kind(w)
            heads, recs = w[kind == wire.HEADER], w[kind == wire.RECORD]
            flags = int(np.bitwise_or.reduce(wire.decode_output_header(heads)[2])) if len(heads) else 0
            if wire.decode_output_record(recs)[1].any():
                flags |= FLAG_SATURATED  # an atom's flags include its records' saturation bits
            card.count(atoms_out=len(heads), records_out=len(recs), flags=flags)
            view = memoryview(data)
            while view and not self.stopping.is_set():
                if not _wait(fd, select.POLLOUT):
                    continue  # the host is not reading: hold the harness back (backpressure)
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    continue
        code = self.proc.wait()
        if not self.stopping.is_set():
            self.stderr.seek(0)
            msg = self.stderr.read().decode(errors="replace").strip()
            card.harness_failed(f"harness exited with code {code}{' (stall)' if code == 3 else ''}: "
                                f"{msg or 'no message'}")

    def stop(self):
        self.stopping.set()
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("harness pid %d did not die", self.proc.pid)
        for t in self.threads:
            t.join(timeout=10 * POLL_S)
        for f in (self.proc.stdin, self.proc.stdout, self.stderr):
            try:
                f.close()
            except OSError:
                pass


class XdmaCard:
    """The card simulator; see the module docstring."""

    def __init__(self, qm, prefix, knobs=None, regmap=None, stall: bool = False,
                 stall_cycles: int = 5_000_000, exe: Path | None = None):
        from gen.ir import Knobs
        self.qm = qm
        self.knobs = knobs or Knobs(lanes=1, fit_par=2, desc_par=4)
        self.lanes = self.knobs.lanes
        self.prefix = str(prefix)
        self.regmap = rm.load(regmap)
        self.model_hash = content_hash(qm)
        self.stall, self.stall_cycles, self.exe = stall, stall_cycles, exe
        self.paths = {"h2c": f"{self.prefix}_h2c_0", "c2h": f"{self.prefix}_c2h_0", "user": f"{self.prefix}_user"}
        self.fds: dict[str, int] = {}
        self.error: str | None = None  # why the harness stopped, when it did
        self.enabled = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._created: list[str] = []
        self._session: _Session | None = None
        self._control: threading.Thread | None = None
        self.regs: rm.RegisterFile | None = None

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> "XdmaCard":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        if self.exe is None:
            from . import runner, standalone
            self.exe = standalone.build_harness(runner.pipeline_verilog(self.qm, self.knobs))
        for which in ("h2c", "c2h", "user"):
            if os.path.lexists(self.paths[which]):
                raise FileExistsError(f"{self.paths[which]} already exists: another card simulator serves "
                                      "this prefix, or one was killed (remove the files)")
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        for which in ("h2c", "c2h"):
            os.mkfifo(self.paths[which], 0o600)
            self._created.append(self.paths[which])
            # O_RDWR holds both ends: reads never see EOF between hosts, writes never fail for want of a
            # reader, and the card can empty its own pipes on reset.  Non-blocking: the pumps poll().
            self.fds[which] = os.open(self.paths[which], os.O_RDWR | os.O_NONBLOCK)
            try:
                fcntl.fcntl(self.fds[which], fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except (AttributeError, OSError):
                pass  # a smaller pipe only costs speed
        tmp = f"{self.paths['user']}.tmp{os.getpid()}"
        self.fds["user"] = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fds["user"], self.regmap.size)
        self.regs = rm.RegisterFile(self.fds["user"], self.regmap, side="card")
        self.regs.write("VERSION", rm.SHELL_VERSION)
        self.regs.write("LANES", self.lanes)
        for k, word in enumerate(rm.hash_words(self.model_hash)):
            self.regs.write(f"MODEL_HASH{k}", word)
        self.regs.write("MAGIC", self.regmap.magic)
        self._session = _Session(self)
        self._control = threading.Thread(target=self._control_loop, daemon=True, name="xdma-card-control")
        self._control.start()
        os.rename(tmp, self.paths["user"])  # the card appears, complete, at once
        self._created.append(self.paths["user"])
        log.info("xdma card ready at %s (model %s, lanes %d, harness pid %d)", self.prefix,
                 self.model_hash[:12], self.lanes, self._session.proc.pid)

    def stop(self) -> None:
        """Stop the harness and the threads, close and remove the files (idempotent)."""
        self._stop.set()
        if self._control is not None:
            self._control.join(timeout=5)
            self._control = None
        if self._session is not None:
            self._session.stop()
            self._session = None
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = {}
        for path in self._created + [f"{self.paths['user']}.tmp{os.getpid()}"]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._created = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def harness(self) -> subprocess.Popen | None:
        return self._session.proc if self._session else None

    # -- registers ----------------------------------------------------------------------------------
    def count(self, atoms_in=0, records_in=0, atoms_out=0, records_out=0, flags=0):
        """Advance the counters (u32, wrapping: RegisterFile.write keeps the low 32 bits) and STATUS.busy;
        called by the pumps.  RECORDS_OUT only where the map has it (a map from JSON may not)."""
        with self._lock:
            r = self.regs
            if atoms_in or records_in:
                r.write("ATOMS_IN", r.read("ATOMS_IN") + atoms_in)
                r.write("RECORDS_IN", r.read("RECORDS_IN") + records_in)
            if atoms_out:
                r.write("ATOMS_OUT", r.read("ATOMS_OUT") + atoms_out)
            if records_out and "RECORDS_OUT" in self.regmap:
                r.write("RECORDS_OUT", r.read("RECORDS_OUT") + records_out)
            if flags:
                r.write("FLAGS", r.read("FLAGS") | flags)
            busy = self.regmap.bit("STATUS", "busy")
            st = r.read("STATUS") & ~busy
            r.write("STATUS", st | (busy if r.read("ATOMS_IN") != r.read("ATOMS_OUT") else 0))

    def harness_failed(self, message: str):
        self.error = message
        log.error("%s: %s", self.prefix, message)
        with self._lock:
            self.regs.write("STATUS", self.regs.read("STATUS") | self.regmap.bit("STATUS", "error"))

    def _control_loop(self):
        enable, reset = self.regmap.bit("CONTROL", "enable"), self.regmap.bit("CONTROL", "reset")
        while not self._stop.wait(CONTROL_POLL_S):
            ctrl = self.regs.read("CONTROL")
            if ctrl & reset:
                self.enabled.clear()
                self._soft_reset()
                self.regs.write("CONTROL", ctrl & ~reset)  # self-clearing: tells the host it is done
                ctrl &= ~reset
            if ctrl & enable:
                self.enabled.set()
            else:
                self.enabled.clear()

    def _soft_reset(self):
        self._session.stop()
        for which in ("h2c", "c2h"):  # empty what the last host left in either direction
            while True:
                try:
                    if not os.read(self.fds[which], READ_SIZE):
                        break
                except BlockingIOError:
                    break
        with self._lock:
            for name in ("STATUS", "FLAGS", "ATOMS_IN", "ATOMS_OUT", "RECORDS_IN", "RECORDS_OUT"):
                if name in self.regmap:
                    self.regs.write(name, 0)
        self.error = None
        self._session = _Session(self)
        log.info("%s: soft reset (harness pid %d)", self.prefix, self._session.proc.pid)


# ---- command line ----------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.xdma_card", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model file (.npz); its hash goes to MODEL_HASH0..7")
    ap.add_argument("--prefix", required=True, help="device prefix to create, e.g. /tmp/card/xdma0")
    ap.add_argument("--lanes", type=int, default=1)
    ap.add_argument("--fit-par", type=int, default=2)
    ap.add_argument("--desc-par", type=int, default=4)
    ap.add_argument("--engines", type=int, default=1)
    ap.add_argument("--regmap", help="register map JSON (default: the built-in map)")
    ap.add_argument("--stall-cycles", type=int, default=5_000_000,
                    help="the harness stops (STATUS.error) after this many cycles without output")
    ap.add_argument("--stall", action="store_true", help="test hook: swallow every result")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="xdma_card: %(message)s", stream=sys.stderr)
    from gen.ir import Knobs
    from contract import modelfile
    qm = modelfile.load(args.model)
    knobs = Knobs(lanes=args.lanes, fit_par=args.fit_par, desc_par=args.desc_par, engines=args.engines)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    card = XdmaCard(qm, args.prefix, knobs, regmap=args.regmap, stall=args.stall, stall_cycles=args.stall_cycles)
    try:
        card.start()
        while not done.wait(1.0):  # a timed wait lets the signal handler run promptly
            pass
    except FileExistsError as e:
        log.error("%s", e)
        return errno.EEXIST
    finally:
        card.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
