"""The device service: one process owns one device and serves many clients over a Unix socket.

    python -m host serve --model M.npz --device rtl --socket /tmp/dpfpga.sock      # the service
    Evaluator(qm, SocketDevice(qm, "/tmp/dpfpga.sock"))                            # a client
    host.ase.Calculator(device="socket:/tmp/dpfpga.sock")                          # the same, via ASE

A card (or a Verilator model) can be opened by one process only, while LAMMPS runs one process per MPI
rank: the service is that one process.  Clients speak to it at one of two levels:

* beats (Python clients, `SocketDevice`): chunks of input beats in the wire format of
  docs/ARCHITECTURE.md in, output beats back; the host-side work (neighbour lists, encoding, folding
  results into forces) stays in each client;
* structures (the LAMMPS plugin, host/lammps/): a rank's local and ghost atoms and its neighbour list
  in, energy, forces, virial (and per-atom energies and virials) back; the service does the host-side
  work with `Evaluator.compute_neighbors`, so the C++ plugin holds no copy of the quantization or
  assembly rules and its numbers are the ASE calculator's, bit for bit.

The protocol (frames, message types, the STRUCTURE and FORCES layouts, `want` bits) is defined in
contract/protocol.py, which also generates the C++ plugin's contract/include/dpfpga/protocol.h.

A connection starts with HELLO; the service answers WELCOME, or ERROR and closes the connection when
the protocol version or the model hash differ (the message names both).  Then the client sends CHUNKs,
and may send the next one before reading the previous RESULT (pipelining, `SocketDevice.depth` = 2):
the service handles a connection's messages in order and answers each CHUNK with one RESULT (each
STRUCTURE with one FORCES), or with one ERROR when that request failed (the connection stays usable).
A frame with a bad magic, a payload over `MAX_PAYLOAD` (checked before anything is allocated), a
truncated frame or an unexpected type gets an ERROR (when the peer still listens) and the connection
is closed.  A payload is read in pieces of at most `RECV_PIECE` bytes into a buffer that grows as
they arrive, so memory follows the bytes received, never the length a frame announces (a peer that
announces a large frame and stalls costs nothing; it is cut off FRAME_TIMEOUT later).  The device is
shared: chunks of all connections go to it one at a time, and each RESULT goes back on the connection
that sent its chunk.

At most `max_clients` connections are served at once (`--max-clients`, default `default_max_clients()`:
max(64, the node's core count), so that every MPI rank of a node can hold one); one more gets ERROR
"service busy: N clients already connected ..." and is closed.  SIGTERM, SIGINT and SIGHUP stop the
service cleanly: connections closed, device closed, socket file removed.

A private service (`--owner-pid`, `--private-dir`: the LAMMPS plugin's, see host/lammps/) stops by
itself within a poll period once its owner is gone, and then removes the private folder with its
socket and log, also when it fails to start; while the owner lives, the owner removes the folder after
reading the log.  The plugin starts it in a session of its own, so the signals that end the owner's
process group (mpirun's SIGKILL of every rank's group when one rank aborts, a Ctrl-C) leave it alive
long enough to clean up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import signal
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from contract import wire
from contract.protocol import (
    ALLOW_BELOW_RMIN,
    BYE,
    CHUNK,
    ERROR,
    FORCES,
    FORCES_HEADER,
    FORCES_OFFSETS,
    FORCES_SCALAR_FIELDS,
    FORCES_SCALARS,
    FRAME_HEADER,
    FRAME_TIMEOUT,
    HELLO,
    MAGIC,
    MAX_PAYLOAD,
    MESSAGE_NAMES,
    PROTOCOL_VERSION,
    RESULT,
    STRUCTURE,
    STRUCTURE_HEADER,
    TIMINGS,
    VIRIAL_ORDER,
    WANT_EATOM,
    WANT_VATOM,
    WELCOME,
)

from .devices.base import Device, DeviceError, DeviceTimeout

#: Socket timeout used as a polling period, so that waits notice deadlines and a service shutdown.
_POLL = 0.25
#: Payloads larger than this are read in pieces of this size into a buffer that grows as they arrive.
RECV_PIECE = 1 << 20

log = logging.getLogger("host.service")


def default_max_clients() -> int:
    """The client limit of a service started without one: every core of the node may run an MPI rank
    that holds a connection, and a small node still gets 64."""
    return max(64, os.cpu_count() or 1)


def owner_alive(pid: int, was_parent: bool) -> bool:
    """Whether the process `pid` still runs.  `was_parent`: it was our parent when we started; then
    being re-parented is the answer, because a dead parent's pid may be reused."""
    if was_parent:
        return os.getppid() == pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_private_dir(path) -> None:
    """A private service's folder and the files in it (socket, log); already gone is fine."""
    path = Path(path)
    try:
        for f in path.iterdir():
            f.unlink(missing_ok=True)
        path.rmdir()
    except FileNotFoundError:
        pass  # the owner removed it on its way out
    except OSError as e:
        log.error("cannot remove the private folder %s: %s", path, e)


class ProtocolError(Exception):
    """The peer broke the protocol (bad magic, oversize or truncated frame, unexpected message)."""


class _Stopped(Exception):
    """The service is shutting down while a connection waited for data."""


# ---- framing (both sides) ----------------------------------------------------------------------

def _recv_exact(sock: socket.socket, n: int, deadline: float | None, stop: threading.Event | None,
                what: str) -> bytearray:
    """n bytes from a socket whose timeout is a polling period.  EOFError on end of stream before the
    first byte; ProtocolError when it ends later; TimeoutError past `deadline` (monotonic; None = never).

    Memory follows the bytes received, not the n announced: beyond RECV_PIECE the result grows as pieces
    arrive, so a peer that announces a large frame and sends nothing costs nothing."""
    small = n <= RECV_PIECE
    buf = bytearray(n if small else 0)
    # Large frames land in a scratch piece first: a bytearray cannot grow while a memoryview of it exists.
    view = memoryview(buf if small else bytearray(RECV_PIECE))
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:] if small else view[:min(RECV_PIECE, n - got)])
        except socket.timeout:
            if stop is not None and stop.is_set():
                raise _Stopped from None
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {got} of {n} bytes after the deadline") from None
            continue
        if k == 0:
            if got == 0:
                raise EOFError(what)
            raise ProtocolError(f"truncated {what}: the stream ended after {got} of {n} bytes")
        if not small:
            buf += view[:k]  # realloc grows it in place (mremap for large blocks): no second full copy
        got += k
    return buf


def _send_all(sock: socket.socket, data, deadline: float, stop: threading.Event | None = None) -> None:
    """Like sendall, but with a deadline over the whole frame although the socket's timeout is a poll
    period (sendall's own timeout would cut a large frame to a slow but live reader)."""
    view, sent = _byte_view(data), 0
    while sent < len(view):
        try:
            sent += sock.send(view[sent:])
        except socket.timeout:
            if stop is not None and stop.is_set():
                raise _Stopped from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"the peer took no data for {FRAME_TIMEOUT} s") from None


def _byte_view(data) -> memoryview:
    m = memoryview(data)
    return m.cast("B") if m.nbytes else memoryview(b"")  # cast() refuses zero-size shapes


def send_frame(sock, mtype: int, payload=b"", stop=None, timeout: float = FRAME_TIMEOUT) -> None:
    """One frame; `payload` is a bytes-like object or a list of them (sent one after the other, uncopied)."""
    parts = [_byte_view(p) for p in (payload if isinstance(payload, list) else [payload])]
    deadline = time.monotonic() + timeout
    _send_all(sock, FRAME_HEADER.pack(MAGIC, PROTOCOL_VERSION, mtype, sum(len(p) for p in parts)), deadline, stop)
    for p in parts:
        if len(p):
            _send_all(sock, p, deadline, stop)


def send_json(sock, mtype: int, obj: dict, stop=None) -> None:
    send_frame(sock, mtype, json.dumps(obj).encode(), stop)


def recv_frame(sock, wait_deadline: float | None = None, stop=None, max_payload: int = MAX_PAYLOAD
               ) -> tuple[int, int, bytearray]:
    """One frame -> (version, type, payload).  Waits for its first byte until `wait_deadline` (None: as
    long as it takes), then gives the rest FRAME_TIMEOUT.  The length is checked before allocating."""
    first = _recv_exact(sock, 1, wait_deadline, stop, "frame header")
    deadline = time.monotonic() + FRAME_TIMEOUT
    head = bytes(first) + _recv_exact(sock, FRAME_HEADER.size - 1, deadline, stop, "frame header")
    magic, version, mtype, length = FRAME_HEADER.unpack(head)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a dpfpga peer")
    if length > max_payload:
        raise ProtocolError(f"{MESSAGE_NAMES.get(mtype, mtype)} announces {length} payload bytes, "
                            f"more than the {max_payload} accepted (a service takes more with "
                            "--max-payload-mb; an MD run can also use more MPI ranks)")
    payload = _recv_exact(sock, length, deadline, stop, f"{MESSAGE_NAMES.get(mtype, mtype)} payload")
    return version, mtype, payload


def _error_message(payload) -> str:
    """The text of an ERROR frame's payload (its JSON "message", or the raw start of a malformed one)."""
    try:
        return _json(payload).get("message", "(no message)")
    except ProtocolError:
        return bytes(payload[:200]).decode(errors="replace")


def _json(payload) -> dict:
    try:
        obj = json.loads(bytes(payload).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"payload is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("JSON payload is not an object")
    return obj


def encode_chunk(beats: np.ndarray, n_atoms: int) -> list:
    """CHUNK payload, as parts for send_frame (the beats are not copied when already little-endian)."""
    return [struct.pack("<Q", n_atoms), np.ascontiguousarray(beats, dtype="<u8")]


def decode_chunk(payload: bytearray, lanes: int) -> tuple[np.ndarray, int]:
    """CHUNK payload -> (beats (n, lanes) uint64, n_atoms), checked against the wire format so that a
    malformed chunk never reaches the device (a device that cuts its output by n_atoms would wait forever)."""
    if len(payload) < 8 or (len(payload) - 8) % (8 * lanes):
        raise ValueError(f"CHUNK payload of {len(payload)} bytes is not 8 + a multiple of {8 * lanes} "
                         f"(lanes = {lanes})")
    (n_atoms,) = struct.unpack_from("<Q", payload)
    beats = np.frombuffer(payload, dtype="<u8", offset=8).astype(np.uint64, copy=False).reshape(-1, lanes)
    headers = int(np.count_nonzero(wire.kind(beats) == wire.HEADER))
    if headers != n_atoms:
        raise ValueError(f"malformed chunk: it announces {n_atoms} atoms but holds {headers} atom headers")
    return beats, n_atoms


@dataclasses.dataclass
class StructureRequest:
    """One MD domain: local atoms 0..nlocal-1, then ghosts; the local atoms' full neighbour list (CSR)."""

    nlocal: int
    x: np.ndarray  # (nall, 3) float64
    ids: np.ndarray  # (nall,) int64 the MD code's atom ids (for messages)
    types: np.ndarray  # (nall,) int32 model types
    numneigh: np.ndarray  # (nlocal,) int32
    neighbors: np.ndarray  # (npairs,) int32 indices into x
    want: int = 0


def encode_structure(req: StructureRequest) -> list:
    """STRUCTURE payload parts (what the C++ plugin writes; the Python twin is for tests and tools)."""
    nall = len(req.x)
    return [STRUCTURE_HEADER.pack(req.nlocal, nall, len(req.neighbors), req.want, 0),
            np.ascontiguousarray(req.x, dtype="<f8"), np.ascontiguousarray(req.ids, dtype="<i8"),
            np.ascontiguousarray(req.types, dtype="<i4"), np.ascontiguousarray(req.numneigh, dtype="<i4"),
            np.ascontiguousarray(req.neighbors, dtype="<i4")]


def decode_structure(payload) -> StructureRequest:
    """STRUCTURE payload -> request; sizes are checked before any array is read (ValueError names them)."""
    if len(payload) < STRUCTURE_HEADER.size:
        raise ValueError(f"STRUCTURE payload of {len(payload)} bytes is shorter than its header")
    nlocal, nall, npairs, want, _ = STRUCTURE_HEADER.unpack_from(payload)
    if nlocal > nall:
        raise ValueError(f"STRUCTURE announces {nlocal} local atoms but only {nall} atoms in all")
    expect = STRUCTURE_HEADER.size + 36 * nall + 4 * nlocal + 4 * npairs
    if len(payload) != expect:
        raise ValueError(f"STRUCTURE payload of {len(payload)} bytes; nlocal {nlocal}, nall {nall}, npairs {npairs} "
                         f"need {expect}")
    off = STRUCTURE_HEADER.size

    def take(dtype, count):
        nonlocal off
        a = np.frombuffer(payload, dtype=dtype, count=count, offset=off)
        off += a.nbytes
        return a

    x = take("<f8", 3 * nall).reshape(nall, 3)
    return StructureRequest(nlocal=nlocal, x=x, ids=take("<i8", nall), types=take("<i4", nall),
                            numneigh=take("<i4", nlocal), neighbors=take("<i4", npairs), want=want)


def voigt6(w: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6) in VIRIAL_ORDER, LAMMPS's xx yy zz xy xz yz (W_ab = -sum r_a (dE/dr)_b)."""
    axis = {"x": 0, "y": 1, "z": 2}
    return np.stack([w[..., axis[a], axis[b]] for a, b in VIRIAL_ORDER], axis=-1)


def encode_forces(res, nlocal: int, want: int) -> list:
    """FORCES payload parts from an Evaluator Result."""
    nall = len(res.forces)
    t = res.timings
    scalars = {"energy": [res.energy], "virial": voigt6(res.virial), "timings": [t.get(name, 0.0) for name in TIMINGS]}
    head = np.concatenate([scalars[name] for name, _ in FORCES_SCALAR_FIELDS])
    parts = [FORCES_HEADER.pack(nall, nlocal, want & (WANT_EATOM | WANT_VATOM), res.below_rmin_records),
             head.astype("<f8"),
             np.ascontiguousarray(res.forces, dtype="<f8")]
    if want & WANT_EATOM:
        parts.append(np.ascontiguousarray(res.atomic_energies, dtype="<f8"))
    if want & WANT_VATOM:
        parts.append(np.ascontiguousarray(voigt6(res.atomic_virial), dtype="<f8"))
    return parts


def decode_forces(payload) -> dict:
    """FORCES payload -> {energy, virial (6,), timings (4,), forces (nall, 3), below_rmin, eatom?, vatom?}."""
    nall, nlocal, have, below_rmin = FORCES_HEADER.unpack_from(payload)
    expect = FORCES_HEADER.size + 8 * (FORCES_SCALARS + 3 * nall + (nlocal if have & WANT_EATOM else 0)
                                       + (6 * nall if have & WANT_VATOM else 0))
    if len(payload) != expect:
        raise ProtocolError(f"FORCES payload of {len(payload)} bytes, expected {expect}")
    a = np.frombuffer(payload, dtype="<f8", offset=FORCES_HEADER.size)
    out = {name: a[FORCES_OFFSETS[name]:FORCES_OFFSETS[name] + n] for name, n in FORCES_SCALAR_FIELDS}
    k = FORCES_SCALARS
    out.update(energy=float(out["energy"][0]), forces=a[k:k + 3 * nall].reshape(nall, 3), below_rmin=below_rmin)
    k += 3 * nall
    if have & WANT_EATOM:
        out["eatom"], k = a[k:k + nlocal], k + nlocal
    if have & WANT_VATOM:
        out["vatom"] = a[k:k + 6 * nall].reshape(nall, 6)
    return out


# ---- the service -------------------------------------------------------------------------------

class ServiceError(RuntimeError):
    """The service cannot start (socket path taken, not a socket, ...)."""


class Service:
    """Serves the device that `open_device()` returns (an opened Device) at `socket_path`.

    One thread per connection runs its chunks on the device, one at a time across all connections (a
    lock); a second thread per connection reads that connection's frames ahead into a short queue, so
    that a client blocked sending chunk k+1 never deadlocks with the service sending result k.  After a
    device failure the device is closed and opened afresh on the next chunk: its state is unknown (a
    timed-out chunk's late result must never reach another client).
    """

    def __init__(self, open_device: Callable[[], Device], model_hash: str, socket_path, *,
                 model_label: str = "", device_timeout: float = 600.0, max_clients: int | None = None,
                 max_payload: int = MAX_PAYLOAD, qm=None, chunk_atoms: int = 4096, owner_pid: int | None = None,
                 private_dir=None):
        """`qm` (the loaded model) enables STRUCTURE requests.  `max_clients`: connections served at once
        (None: `default_max_clients()`); one more is answered ERROR "service busy" and closed.
        `owner_pid`: stop when that process is gone (a private service started by the LAMMPS plugin must
        not outlive a LAMMPS that was killed or aborted); `private_dir` (the folder that owner made for
        the socket and the log) is then removed with its files, on every way the service ends, while a
        live owner removes it itself once it has read the log.  ValueError for a limit below 1."""
        if max_clients is None:
            max_clients = default_max_clients()
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {max_clients}")
        self._open_device = open_device
        self.model_hash, self.model_label = model_hash, model_label
        self.qm, self.chunk_atoms, self.owner_pid = qm, chunk_atoms, owner_pid
        self.private_dir = Path(private_dir) if private_dir else None
        self._owner_gone = False
        self._owner_is_parent = owner_pid is not None and owner_pid == os.getppid()
        self._model_files: dict[str, tuple] = {}  # path -> (mtime_ns, size, hash): HELLOs naming a file
        self.path = Path(socket_path)
        self.device_timeout, self.max_clients, self.max_payload = device_timeout, max_clients, max_payload
        self.device: Device | None = None
        self._device_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped_by = None  # the signal that stopped the service, for the log
        self._listener: socket.socket | None = None
        self._inode = None
        self._clients: dict[int, tuple[socket.socket, threading.Thread]] = {}
        self._clients_lock = threading.Lock()
        self._next_id = 1

    # -- life cycle --
    def serve_forever(self) -> None:
        """Open the device, listen, serve until `stop()`; then shut down cleanly (always), and remove the
        private folder if the owner is gone (also when the service fails to start)."""
        try:
            self._serve()
        finally:
            self._remove_private_dir_if_orphaned()

    def _serve(self) -> None:
        self._check_path()  # fail fast, before a device that may take minutes to open
        self.device = self._open_device()
        self.lanes, self.device_name = self.device.lanes, self.device.name
        try:
            self._warm_up()
            self._listen()
            log.info("serving device %s (lanes %d), model %s%s at %s (pid %d, protocol %d, up to %d clients)",
                     self.device_name, self.lanes, self.model_hash[:12],
                     f" ({self.model_label})" if self.model_label else "", self.path, os.getpid(), PROTOCOL_VERSION,
                     self.max_clients)
            while not self._stop.is_set():
                try:
                    sock, _ = self._listener.accept()
                except socket.timeout:
                    if self.owner_pid is not None and not self._owner_alive():
                        log.warning("owner process %d is gone; stopping", self.owner_pid)
                        self._owner_gone = True
                        self._stop.set()
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                self._start_client(sock)
        finally:
            self._shutdown()

    def _warm_up(self) -> None:
        """One tiny structure through the whole STRUCTURE path before the first client: the lazy imports
        and first-use set-up (about a second) then do not land in a client's first MD step."""
        if self.qm is None:
            return
        from .evaluate import Evaluator
        x = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5 * (self.qm.config.rcut + self.qm.config.r_min)]])
        Evaluator(self.qm, _ServiceDevice(self), timeout=self.device_timeout).compute_neighbors(
            x, np.zeros(2, dtype=np.int64), 2, [1, 1], [1, 0])

    def _owner_alive(self) -> bool:
        return owner_alive(self.owner_pid, self._owner_is_parent)

    def stop(self, signum=None, _frame=None) -> None:
        """Ask the accept loop and every connection to end (safe from a signal handler: no logging here)."""
        self._stopped_by = signum
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT and SIGHUP (a closed terminal) stop the service cleanly."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.stop)

    def _check_path(self) -> None:
        """Replace a stale socket left by a dead service; refuse a path where a live one listens."""
        p = self.path
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ServiceError(f"{p} exists and is not a socket; choose another --socket path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            probe.connect(str(p))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale socket %s (no service listens there)", p)
            p.unlink(missing_ok=True)
            return
        except OSError as e:
            raise ServiceError(f"cannot check the existing socket {p}: {e}") from None
        finally:
            probe.close()
        raise ServiceError(f"a service already listens at {p}; stop it first or choose another --socket path")

    def _listen(self) -> None:
        self._check_path()  # again: the device may have taken minutes to open
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is created owner-only (0600): no window where others connect
        try:
            s.bind(str(self.path))
        except OSError as e:
            s.close()
            raise ServiceError(f"cannot bind {self.path}: {e}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        s.listen(max(64, self.max_clients))  # a whole node's ranks may connect at once
        s.settimeout(_POLL)
        self._listener = s

    def _shutdown(self) -> None:
        if self._stopped_by is not None:
            log.info("stopping on %s", signal.Signals(self._stopped_by).name)
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:  # remove our socket file, not one that another service has put there since
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()
            except FileNotFoundError:
                pass
        with self._clients_lock:
            clients = list(self._clients.values())
        for sock, _ in clients:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, thread in clients:
            thread.join(timeout=10)
        if self._device_lock.acquire(timeout=self.device_timeout):
            try:
                self._close_device()
            finally:
                self._device_lock.release()
        else:
            log.error("device still busy after %s s; exiting without closing it", self.device_timeout)
        log.info("service stopped")

    def _remove_private_dir_if_orphaned(self) -> None:
        """The private folder with its files, when its owner is gone: nobody is left to read the log or
        to remove the folder.  A live owner removes it itself after reading the log (which says why the
        service ended), so the folder is kept then."""
        if self.private_dir is None or self.owner_pid is None:
            return
        if self._owner_gone or not self._owner_alive():
            remove_private_dir(self.private_dir)

    # -- connections --
    def _start_client(self, sock: socket.socket) -> None:
        cid, self._next_id = self._next_id, self._next_id + 1
        sock.settimeout(_POLL)
        peer = _peer(sock)
        with self._clients_lock:
            busy = len(self._clients) >= self.max_clients
            if not busy:
                t = threading.Thread(target=self._serve_client, args=(sock, cid, peer), daemon=True,
                                     name=f"client-{cid}")
                self._clients[cid] = (sock, t)
        if busy:
            log.warning("client %d (%s) refused: %d clients already connected", cid, peer, self.max_clients)
            self._send_error_quietly(sock, f"service busy: {self.max_clients} clients already connected, the "
                                           "limit of this service (python -m host serve --max-clients N)")
            sock.close()
            return
        log.info("client %d connected (%s)", cid, peer)
        t.start()

    def _serve_client(self, sock: socket.socket, cid: int, peer: str) -> None:
        chunks = atoms = 0
        why = "closed the connection"
        reader = None
        try:
            hello = self._handshake(sock, cid)
            if hello is None:
                why = "was refused"
                return
            frames: queue.Queue = queue.Queue(maxsize=4)  # a well-behaved client has at most 2 chunks in flight
            reader = threading.Thread(target=self._read_ahead, args=(sock, frames), daemon=True,
                                      name=f"client-{cid}-reader")
            reader.start()
            while True:
                item = frames.get()
                if isinstance(item, BaseException):
                    raise item
                version, mtype, payload = item
                if mtype == BYE:
                    why = "said bye"
                    return
                if mtype not in (CHUNK, STRUCTURE) or version != PROTOCOL_VERSION:
                    raise ProtocolError(f"unexpected {MESSAGE_NAMES.get(mtype, f'message type {mtype}')} "
                                        f"(protocol {version}) after the handshake")
                n = self._chunk(sock, cid, payload) if mtype == CHUNK else self._structure(sock, cid, payload)
                chunks, atoms = chunks + 1, atoms + n
        except EOFError:
            pass
        except ProtocolError as e:
            why = f"was disconnected: {e}"
            log.warning("client %d: protocol error: %s", cid, e)
            self._send_error_quietly(sock, f"protocol error: {e}")
        except _Stopped:
            why = "was disconnected: service stopping"
        except OSError as e:  # peer gone while we sent, or stopped reading (TimeoutError)
            why = f"went away ({type(e).__name__}: {e})"
        except Exception as e:  # noqa: BLE001 (a bug here must not take the service down)
            why = f"was disconnected after an internal error: {e}"
            log.exception("client %d: internal error", cid)
            self._send_error_quietly(sock, f"internal service error: {type(e).__name__}: {e}")
        finally:
            if self._stop.is_set() and not why.startswith("was"):
                why = "was disconnected: service stopping"  # our shutdown() is what ended its stream
            try:
                sock.shutdown(socket.SHUT_RDWR)  # also ends the reader thread
            except OSError:
                pass
            if reader is not None:
                reader.join(timeout=5)
            sock.close()
            with self._clients_lock:
                self._clients.pop(cid, None)
            log.info("client %d disconnected: %s after %d chunk(s), %d atom(s)", cid, why, chunks, atoms)

    def _handshake(self, sock, cid) -> dict | None:
        """HELLO -> WELCOME, or ERROR (and None) on a protocol or model mismatch."""
        version, mtype, payload = recv_frame(sock, time.monotonic() + FRAME_TIMEOUT, self._stop, 1 << 16)
        if mtype != HELLO:
            raise ProtocolError(f"expected HELLO, got {MESSAGE_NAMES.get(mtype, f'message type {mtype}')}")
        hello = _json(payload)
        theirs = hello.get("protocol", version)
        ours = f"{self.model_hash[:12]}{f' ({self.model_label})' if self.model_label else ''}"
        if version != PROTOCOL_VERSION or theirs != PROTOCOL_VERSION:
            msg = f"protocol mismatch: the client speaks version {theirs}, this service {PROTOCOL_VERSION}"
        elif "model_file" in hello and "model_hash" not in hello:
            their_hash, msg = self._model_file_hash(str(hello["model_file"]))
            if msg is None and their_hash != self.model_hash:
                msg = (f"model mismatch: the client loaded {hello['model_file']} (model {their_hash[:12]}), the "
                       f"service runs model {ours}; use the same model file on both sides")
        elif hello.get("model_hash") != self.model_hash:
            msg = (f"model mismatch: the client loaded model {str(hello.get('model_hash'))[:12]}, the service "
                   f"runs model {ours}; load the same model file on both sides")
        else:
            msg = None
        if msg is None:
            welcome = {"device": self.device_name, "lanes": self.lanes, "model_hash": self.model_hash,
                       "pid": os.getpid(), "client_id": cid}
            if self.qm is not None:
                cfg = self.qm.config
                welcome.update(type_map=list(cfg.type_map), rcut=float(cfg.rcut), sel=[int(k) for k in cfg.sel])
            send_json(sock, WELCOME, welcome, self._stop)
            log.debug("client %d: hello from pid %s", cid, hello.get("pid"))
            return hello
        log.warning("client %d refused: %s", cid, msg)
        self._send_error_quietly(sock, msg)
        return None

    def _model_file_hash(self, path: str) -> tuple[str | None, str | None]:
        """(hash, None) of the model file a client names, or (None, why it cannot be used).  Cached by
        path, size and mtime: every MPI rank of a run names the same file."""
        from contract import modelfile
        try:
            st = os.stat(path)
        except OSError as e:
            return None, f"the client's model file {path} cannot be read: {e.strerror}"
        key = (st.st_mtime_ns, st.st_size)
        cached = self._model_files.get(path)
        if cached is not None and cached[:2] == key:
            return cached[2], None
        try:
            h = modelfile.load(path).hash
        except (modelfile.ModelFileError, OSError) as e:
            return None, f"the client's model file is not usable: {e}"
        self._model_files[path] = (*key, h)
        return h, None

    def _structure(self, sock, cid, payload) -> int:
        """One STRUCTURE: the host-side work here (neighbour records, encoding, exact assembly), the chunks
        on the shared device; FORCES back, or ERROR naming the atom (by the client's atom id) when the
        structure cannot be evaluated.  Returns its local atom count."""
        from model.assembly import CloseContactError, DeviceFlagError, InputRangeError
        from model.neighbors import NeighborOverflowError

        from .evaluate import Evaluator
        from .neighbors import StructureError
        try:
            if self.qm is None:
                raise ValueError("this service was started without its model object and serves beats only")
            req = decode_structure(payload)
            ev = Evaluator(self.qm, _ServiceDevice(self), chunk_atoms=self.chunk_atoms, strict=True,
                           timeout=self.device_timeout, allow_below_rmin=bool(req.want & ALLOW_BELOW_RMIN))
            res = ev.compute_neighbors(req.x, req.types, req.nlocal, req.numneigh, req.neighbors,
                                       atomic_virial=bool(req.want & WANT_VATOM), atom_ids=req.ids)
        except (DeviceError, ValueError, KeyError, DeviceFlagError) as e:
            # InputRangeError, NeighborOverflowError and StructureError are ValueErrors: name them all.
            kind = type(e).__name__
            what = {InputRangeError: "input out of range", NeighborOverflowError: "too many neighbours",
                    StructureError: "bad structure", DeviceFlagError: "pipeline flags",
                    CloseContactError: "close contact"}.get(type(e), kind)
            msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            log.warning("client %d: structure failed: %s", cid, msg)
            send_json(sock, ERROR, {"message": f"{what}: {msg} (atoms are named by the client's atom ids)"},
                      self._stop)
            return 0
        send_frame(sock, FORCES, encode_forces(res, req.nlocal, req.want), self._stop)
        return req.nlocal

    def _read_ahead(self, sock, frames: queue.Queue) -> None:
        """Reader thread: frames in order into `frames`, then the exception that ended the stream."""
        while True:
            try:
                item = recv_frame(sock, None, self._stop, self.max_payload)
            except BaseException as e:  # noqa: BLE001 (handed to the connection thread, which re-raises it)
                item = e
            while True:
                try:
                    frames.put(item, timeout=_POLL)
                    break
                except queue.Full:
                    if self._stop.is_set():
                        return
            if isinstance(item, BaseException) or item[1] == BYE:
                return

    def _chunk(self, sock, cid, payload) -> int:
        """One CHUNK: RESULT, or ERROR for this chunk only.  Returns its atom count."""
        try:
            beats, n_atoms = decode_chunk(payload, self.lanes)
            out = self._run(beats, n_atoms)
        except (DeviceError, ValueError) as e:
            log.warning("client %d: chunk failed: %s", cid, e)
            send_json(sock, ERROR, {"message": str(e)}, self._stop)
            return 0
        send_frame(sock, RESULT, np.ascontiguousarray(out, dtype="<u8"), self._stop)
        return n_atoms

    def _run(self, beats, n_atoms) -> np.ndarray:
        if n_atoms == 0:
            return np.zeros((0, self.lanes), np.uint64)
        with self._device_lock:
            if self._stop.is_set():
                raise DeviceError("the service is shutting down")
            if self.device is None:
                log.info("reopening device %s", self.device_name)
                self.device = self._open_device()
            try:
                return self.device.run(beats, n_atoms, self.device_timeout)
            except Exception as e:
                log.error("device %s failed (%s: %s); it will be reopened for the next chunk",
                          self.device_name, type(e).__name__, e)
                self._close_device()
                if isinstance(e, DeviceError):
                    raise
                raise DeviceError(f"{self.device_name}: {type(e).__name__}: {e}") from e

    def _close_device(self) -> None:
        dev, self.device = self.device, None
        if dev is not None:
            try:
                dev.close()
            except Exception as e:  # noqa: BLE001 (closing a failed device: report, go on)
                log.error("closing device %s: %s", self.device_name, e)

    def _send_error_quietly(self, sock, message: str) -> None:
        """ERROR to a peer that may already be gone."""
        try:
            send_json(sock, ERROR, {"message": message}, None)
        except (OSError, TimeoutError):
            pass


class _ServiceDevice(Device):
    """The service's one device as an Evaluator inside a connection thread sees it: each chunk runs
    synchronously under the service's device lock, between other connections' chunks."""

    depth = 1

    def __init__(self, service: "Service"):
        self.service, self.lanes, self.name = service, service.lanes, service.device_name
        self.model_hash = service.model_hash
        self._pending = None

    def open(self) -> None:
        pass

    def submit(self, beats, n_atoms) -> None:
        self._pending = (beats, int(n_atoms))

    def collect(self, timeout=None) -> np.ndarray:
        beats, n_atoms = self._pending
        self._pending = None
        return self.service._run(beats, n_atoms)

    def close(self) -> None:
        pass


def _peer(sock: socket.socket) -> str:
    """'pid P, uid U' of the connecting process (Linux SO_PEERCRED), for the log."""
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return f"pid {pid}, uid {uid}"
    except (AttributeError, OSError):
        return "peer unknown"


# ---- the client --------------------------------------------------------------------------------

class SocketDevice(Device):
    """A Device whose chunks run in a dpfpga service (`python -m host serve`) at `path`.

    `open()` connects and checks the model hash; it is optional: reading `lanes` or submitting a chunk
    connects too.  Every wait is bounded: `collect(timeout)` (None: this device's `timeout`) raises
    DeviceTimeout when no reply comes in time, DeviceError when the service is absent, refuses the
    model, fails the chunk or dies.  After any failure the connection is dropped (so that a late reply
    can never be taken for a later chunk's) and the next submit connects afresh.  Like every Device, it
    is used from one thread at a time; threads that compute at once each open their own.
    """

    depth = 2

    def __init__(self, qm, path, timeout: float = 600.0, connect_timeout: float = 10.0):
        # Not Device.__init__: `lanes` is the service's, known once connected.
        self.qm, self.model_hash = qm, qm.hash
        self.path, self.timeout, self.connect_timeout = str(path), timeout, connect_timeout
        self.name = f"socket:{self.path}"
        self.remote: dict = {}
        self._sock: socket.socket | None = None
        self._in_flight = 0

    @property
    def lanes(self) -> int:
        if not self.remote:
            self.open()
        return int(self.remote["lanes"])

    def describe(self) -> str:
        if not self.remote:
            return f"{self.name} (not connected)"
        return (f"{self.remote['device']} via {self.path} (service pid {self.remote['pid']}, lanes "
                f"{self.remote['lanes']}, model {self.model_hash[:12]})")

    def open(self) -> None:
        if self._sock is not None:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.connect_timeout)
        try:
            s.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            raise DeviceError(f"no dpfpga service listening at {self.path} (start one with: python -m host serve "
                              f"--model MODEL --device reference --socket {self.path})") from None
        except OSError as e:
            s.close()
            raise DeviceError(f"cannot connect to the dpfpga service at {self.path}: {e}") from None
        s.settimeout(_POLL)
        self._sock = s
        try:
            self._send(HELLO, json.dumps({"protocol": PROTOCOL_VERSION, "model_hash": self.model_hash,
                                          "pid": os.getpid()}).encode())
            mtype, payload = self._recv(self.connect_timeout, "WELCOME")
            if mtype != WELCOME:
                raise DeviceError(f"{self.name}: expected WELCOME, got {MESSAGE_NAMES.get(mtype, mtype)}")
            self.remote = _json(payload)
        except ProtocolError as e:
            self._drop()
            raise DeviceError(f"{self.name}: protocol error: {e}") from None
        except BaseException:
            self._drop()
            raise
        self._in_flight = 0

    def submit(self, beats, n_atoms) -> None:
        self.open()
        beats = np.asarray(beats)
        if beats.ndim != 2 or beats.shape[1] != self.lanes:
            raise DeviceError(f"{self.name}: beats must be (n, {self.lanes}) words, got shape {beats.shape}")
        self._send(CHUNK, encode_chunk(beats, int(n_atoms)))
        self._in_flight += 1

    def structure(self, req: StructureRequest, timeout=None) -> dict:
        """Energy, forces and virial of one MD domain, evaluated in the service: the Python twin of what
        the LAMMPS plugin sends (decode_forces gives the fields)."""
        self.open()
        if self._in_flight:
            raise DeviceError(f"{self.name}: structure() while {self._in_flight} chunk(s) are in flight")
        self._send(STRUCTURE, encode_structure(req))
        self._in_flight = 1  # so that a failure while waiting reports it
        mtype, payload = self._recv(self.timeout if timeout is None else timeout, "FORCES")
        self._in_flight = 0
        if mtype != FORCES:
            self._drop()
            raise DeviceError(f"{self.name}: expected FORCES, got {MESSAGE_NAMES.get(mtype, mtype)}")
        try:
            return decode_forces(payload)
        except ProtocolError as e:
            self._drop()
            raise DeviceError(f"{self.name}: {e}") from None

    def _send(self, mtype: int, parts) -> None:
        try:
            send_frame(self._sock, mtype, parts, timeout=self.timeout)
        except TimeoutError:
            self._drop()
            raise DeviceTimeout(f"{self.name}: the service took no data for {self.timeout} s") from None
        except OSError as e:
            # A service that refuses a connection (busy, wrong model) sends ERROR and closes it, maybe
            # before our first frame arrives: its reason is then still unread in our socket.
            message = self._pending_error()
            self._drop()
            if message is not None:
                raise DeviceError(f"dpfpga service at {self.path}: {message}") from None
            raise DeviceError(f"{self.name}: the service closed the connection ({e}); did it stop? "
                              "see its log") from None

    def _pending_error(self) -> str | None:
        """The message of an ERROR frame the service left in our socket before it closed it, or None."""
        try:
            _, mtype, payload = recv_frame(self._sock, time.monotonic() + _POLL)
        except (TimeoutError, EOFError, ProtocolError, OSError):
            return None
        return _error_message(payload) if mtype == ERROR else None

    def collect(self, timeout=None) -> np.ndarray:
        if self._sock is None or self._in_flight == 0:
            raise DeviceError(f"{self.name}: collect() without a chunk in flight")
        timeout = self.timeout if timeout is None else timeout
        mtype, payload = self._recv(timeout, "RESULT")
        if mtype != RESULT:
            self._drop()
            raise DeviceError(f"{self.name}: expected RESULT, got {MESSAGE_NAMES.get(mtype, mtype)}")
        self._in_flight -= 1
        if len(payload) % (8 * self.lanes):
            self._drop()
            raise DeviceError(f"{self.name}: RESULT of {len(payload)} bytes is not whole beats of {self.lanes} words")
        return np.frombuffer(payload, dtype="<u8").astype(np.uint64, copy=False).reshape(-1, self.lanes)

    def _recv(self, timeout, expected: str) -> tuple[int, bytearray]:
        """The next frame; ERROR, EOF, timeouts and protocol errors become DeviceError (connection dropped)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            _, mtype, payload = recv_frame(self._sock, deadline)
        except TimeoutError:
            self._drop()
            raise DeviceTimeout(f"{self.name}: no {expected} within {timeout} s") from None
        except (EOFError, ProtocolError, OSError) as e:
            in_flight = self._in_flight
            self._drop()
            detail = "" if isinstance(e, EOFError) else f" ({e})"
            raise DeviceError(f"{self.name}: the dpfpga service closed the connection while {in_flight} chunk(s) "
                              f"were in flight{detail}; did it die? see its log") from None
        if mtype == ERROR:
            self._drop()
            raise DeviceError(f"dpfpga service at {self.path}: {_error_message(payload)}")
        return mtype, payload

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._in_flight = None, 0

    def close(self) -> None:
        if self._sock is not None:
            try:
                send_frame(self._sock, BYE, b"", timeout=1.0)
            except (OSError, TimeoutError):
                pass
        self._drop()
