"""The device interface: chunks of input beats in, the same chunks' output beats out, in order.

A chunk is a whole number of atoms in the wire format (contract/wire.py): `submit(beats, n_atoms)` queues
it, `collect(timeout)` returns the output beats of the oldest chunk not yet collected.  A host keeps
at most `depth` chunks in flight (two: it encodes chunk k+1 while the device works on chunk k), so the
memory a device holds is bounded by the chunk size, never by the system size.
"""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod

import numpy as np


class DeviceError(RuntimeError):
    """The device failed, refused a chunk or returned a malformed stream."""


class DeviceTimeout(DeviceError):
    """The device did not answer within the timeout."""


class Device(ABC):
    name = "device"
    depth = 2  # chunks in flight

    def __init__(self, qm, lanes: int = 1):
        self.qm, self.lanes = qm, lanes
        self.model_hash = qm.hash

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def submit(self, beats: np.ndarray, n_atoms: int) -> None: ...

    @abstractmethod
    def collect(self, timeout: float | None = None) -> np.ndarray: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self, beats: np.ndarray, n_atoms: int, timeout: float | None = None) -> np.ndarray:
        """One chunk, synchronously."""
        self.submit(beats, n_atoms)
        return self.collect(timeout)

    def describe(self) -> str:
        return f"{self.name} (lanes {self.lanes}, model {self.model_hash[:12]})"


class WorkerDevice(Device):
    """A device whose work is a Python function of one chunk, run in a worker thread so that the host
    encodes the next chunk meanwhile.  Subclasses implement `process(beats, n_atoms) -> out beats`."""

    def open(self) -> None:
        self._todo: queue.Queue = queue.Queue(maxsize=self.depth)
        self._done: queue.Queue = queue.Queue()
        self._submitted = self._collected = 0
        self._thread = threading.Thread(target=self._work, name=f"{self.name}-worker", daemon=True)
        self._thread.start()

    def _work(self):
        while True:
            item = self._todo.get()
            if item is None:
                return
            seq, beats, n_atoms = item
            try:
                self._done.put((seq, self.process(beats, n_atoms)))
            except Exception as e:  # noqa: BLE001 (handed to the collecting thread)
                self._done.put((seq, e))

    @abstractmethod
    def process(self, beats: np.ndarray, n_atoms: int) -> np.ndarray: ...

    @staticmethod
    def decode(beats: np.ndarray, n_atoms: int):
        """A chunk's input words -> (centre types, neighbour types, displacements, tags, record counts),
        checked against the atom count the chunk announced."""
        from contract import wire
        ctype, nbr_type, nbr_d, tags = wire.decode_atoms(beats)
        if len(ctype) != n_atoms:
            raise ValueError(f"chunk announces {n_atoms} atoms, stream has {len(ctype)}")
        return ctype, nbr_type, nbr_d, tags, (nbr_type >= 0).sum(axis=1)

    def submit(self, beats, n_atoms):
        self._todo.put((self._submitted, np.asarray(beats, dtype=np.uint64), int(n_atoms)))
        self._submitted += 1

    def collect(self, timeout=None):
        # Results carry their chunk's sequence number: a chunk given up after a timeout still
        # finishes later, and its result must not be mistaken for the next chunk's.
        want = self._collected
        self._collected += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                seq, out = self._done.get(timeout=left)
            except queue.Empty:
                raise DeviceTimeout(f"{self.name}: no result within {timeout} s") from None
            if seq == want:
                break
        if isinstance(out, Exception):
            raise DeviceError(f"{self.name}: {out}") from out
        return out

    def close(self):
        if getattr(self, "_thread", None) is not None:
            self._todo.put(None)
            self._thread.join(timeout=10)
            self._thread = None
