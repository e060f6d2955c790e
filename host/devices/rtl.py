"""The generated RTL as a device: the standalone Verilator harness (sim/standalone.py) kept running
behind two pipes, fed chunk by chunk while earlier chunks' results stream back.

A writer thread feeds stdin (so `submit` never blocks on a full pipe); a reader thread cuts stdout
into atoms (a header beat, then ceil(n / lanes) record beats) and into the submitted chunks.
The first use of a model and knob set compiles the design (minutes); later uses find it cached.
"""

from __future__ import annotations

import queue
import subprocess
import threading

import numpy as np

from contract import wire
from gen.ir import Knobs

from .base import Device, DeviceError, DeviceTimeout


class RtlDevice(Device):
    name = "rtl"

    def __init__(self, qm, lanes: int = 1, knobs: Knobs | None = None, stall_cycles: int = 5_000_000):
        self.knobs = knobs or Knobs(lanes=lanes, fit_par=2, desc_par=4)
        super().__init__(qm, lanes=self.knobs.lanes)
        self.stall_cycles = stall_cycles
        self.proc = None
        self._failed = None  # the first error: after it the stream position is unknown

    def open(self) -> None:
        from sim import runner, standalone
        exe = standalone.build_harness(runner.pipeline_verilog(self.qm, self.knobs))
        self.proc = subprocess.Popen([str(exe), "--lanes", str(self.lanes), "--stall-cycles", str(self.stall_cycles)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._chunks: queue.Queue = queue.Queue()   # atoms per submitted chunk, for the reader
        self._writes: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._writer, daemon=True, name="rtl-writer"),
                         threading.Thread(target=self._reader, daemon=True, name="rtl-reader")]
        for t in self._threads:
            t.start()

    def _writer(self):
        while (data := self._writes.get()) is not None:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                return
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    def _read_beats(self, n: int) -> np.ndarray:
        want = n * self.lanes * 8
        buf = self.proc.stdout.read(want)
        if buf is None or len(buf) < want:
            raise EOFError
        return np.frombuffer(buf, dtype="<u8").reshape(n, self.lanes)

    def _reader(self):
        try:
            while (n_atoms := self._chunks.get()) is not None:
                parts = []
                for _ in range(n_atoms):
                    head = self._read_beats(1)
                    if wire.kind(head[0, 0]) != wire.HEADER:
                        raise DeviceError(f"rtl: expected a result header, got word {int(head[0, 0]):#018x}")
                    parts.append(head)
                    if (more := wire.result_beats(head[0, 0], self.lanes) - 1):
                        parts.append(self._read_beats(more))
                self._done.put(np.concatenate(parts) if parts else np.zeros((0, self.lanes), np.uint64))
        except EOFError:
            self.proc.wait(timeout=10)
            err = self.proc.stderr.read().decode(errors="replace").strip()
            self._done.put(DeviceError(f"rtl: simulator ended (exit {self.proc.returncode}): {err or 'no message'}"))
        except Exception as e:  # noqa: BLE001
            self._done.put(e)

    def submit(self, beats, n_atoms):
        if self._failed is not None:
            raise DeviceError(f"rtl: the simulator failed earlier ({self._failed}); reopen the device")
        beats = np.ascontiguousarray(beats, dtype="<u8")
        if beats.ndim != 2 or beats.shape[1] != self.lanes:
            raise DeviceError(f"rtl: beats must be (n, {self.lanes}) words")
        self._chunks.put(int(n_atoms))
        self._writes.put(beats.tobytes())

    def collect(self, timeout=None):
        try:
            out = self._done.get(timeout=timeout)
        except queue.Empty:
            # Late results would be taken for the next chunk's: the device is unusable from here.
            self._failed = DeviceTimeout(f"rtl: no result within {timeout} s")
            raise self._failed from None
        if isinstance(out, Exception):
            self._failed = out
            raise out if isinstance(out, DeviceError) else DeviceError(f"rtl: {out}")
        return out

    def close(self):
        if self.proc is None:
            return
        self._writes.put(None)
        self._chunks.put(None)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
