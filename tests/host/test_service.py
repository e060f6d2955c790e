"""The device service (`python -m host serve`) and its client `SocketDevice`: exact results through the
socket, several clients, refusals, garbage, vanishing clients and services, clean shutdown.

Every service runs as a subprocess (fixtures in conftest.py stop it even when a test fails) and every
wait is bounded."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from contract.protocol import BYE, CHUNK, ERROR, FRAME_HEADER, HELLO, MAGIC, PROTOCOL_VERSION, RESULT, STRUCTURE, WELCOME
from host.devices import DEVICE_HELP, DeviceError, DeviceTimeout, open_device
from host.evaluate import Evaluator
from host.service import Service, SocketDevice, encode_chunk, recv_frame, send_frame, send_json
from support import REPO

WAIT = 30.0  # s: the longest any single wait in these tests may take


# ---- helpers -----------------------------------------------------------------------------------

def gete(qm, repeat=3, seed=0):
    """Rattled rocksalt GeTe of repeat^3 cubic cells (8 atoms each) -> (atoms, model types)."""
    import ase.build

    from model.assembly import map_types
    atoms = ase.build.bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((repeat,) * 3)
    atoms.rattle(0.05, seed=seed)
    return atoms, map_types(atoms.get_chemical_symbols(), qm.config.type_map)


def compute(qm, device, structure, chunk_atoms=16):
    atoms, types = structure
    return Evaluator(qm, device, chunk_atoms=chunk_atoms, timeout=WAIT).compute(
        atoms.positions, atoms.cell.array, atoms.pbc, types)


def reference(qm, structure, chunk_atoms=16):
    with open_device("reference", qm) as dev:
        return compute(qm, dev, structure, chunk_atoms)


def via_socket(qm, path, structure, chunk_atoms=16):
    with SocketDevice(qm, path, timeout=WAIT) as dev:
        return compute(qm, dev, structure, chunk_atoms)


def assert_exact(res, ref):
    assert res.energy_int == ref.energy_int
    np.testing.assert_array_equal(res.forces_int, ref.forces_int)
    assert (res.virial_int == ref.virial_int).all()


def chunks_of(qm, structure, chunk_atoms=16):
    """The (beats, n_atoms) chunks an Evaluator submits for `structure`, with the reference's answers."""
    sent = []
    with open_device("reference", qm) as dev:
        submit = dev.submit
        dev.submit = lambda beats, n: (sent.append((np.array(beats), n)), submit(beats, n))[1]
        compute(qm, dev, structure, chunk_atoms)
        del dev.submit
        return [(beats, n, dev.run(beats, n, WAIT)) for beats, n in sent]


def raw_connect(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.25)  # a polling period: recv_frame's deadlines need one
    s.connect(str(path))
    return s


def raw_hello(path, model_hash) -> tuple[socket.socket, dict]:
    import json
    s = raw_connect(path)
    send_json(s, HELLO, {"protocol": PROTOCOL_VERSION, "model_hash": model_hash, "pid": os.getpid()})
    _, mtype, payload = recv_frame(s, time.monotonic() + WAIT)
    assert mtype == WELCOME, bytes(payload)
    return s, json.loads(bytes(payload))


def error_then_closed(s: socket.socket) -> str:
    """Read an ERROR frame, then the end of the connection; returns the error message."""
    import json
    _, mtype, payload = recv_frame(s, time.monotonic() + WAIT)
    assert mtype == ERROR, (mtype, bytes(payload[:100]))
    deadline = time.monotonic() + WAIT
    while True:  # EOF, or ECONNRESET when the service closed with our bytes unread: both mean closed
        try:
            if s.recv(4096) == b"":
                break
        except socket.timeout:
            assert time.monotonic() < deadline, "the service did not close the connection"
        except ConnectionResetError:
            break
    s.close()
    return json.loads(bytes(payload))["message"]


def client_line(log: str, client_id: int, text: str) -> bool:
    return any(f"client {client_id} " in line and text in line for line in log.splitlines())


# ---- exact results -----------------------------------------------------------------------------

def test_socket_device_is_exact_with_pipelined_chunks(qm, service):
    structure = gete(qm, seed=1)  # 216 atoms in 2 x 2 x 2 cell blocks
    ref = reference(qm, structure)
    nchunks = len(chunks_of(qm, structure))
    assert nchunks >= 4  # so that chunks are pipelined (depth 2)
    with SocketDevice(qm, service.path, timeout=WAIT) as dev:
        assert dev.depth == 2 and dev.lanes == 1 and dev.model_hash == qm.hash
        res = compute(qm, dev, structure)
        assert "reference" in dev.describe()
        assert_exact(res, ref)
        # the same connection again: nothing left over from the first structure
        assert_exact(compute(qm, dev, structure), ref)
    log = service.wait_log(f"said bye after {2 * nchunks} chunk(s), {2 * len(structure[1])} atom(s)")
    assert "serving device reference" in log and qm.hash[:12] in log and str(service.path) in log


def test_two_clients_at_once_get_their_own_results(qm, service):
    structures = [gete(qm, seed=s) for s in (2, 3)]
    refs = [reference(qm, s) for s in structures]
    assert refs[0].energy_int != refs[1].energy_int  # so that swapped results would show
    start = threading.Barrier(2, timeout=WAIT)
    results, errors = {}, []

    def client(k):
        try:
            with SocketDevice(qm, service.path, timeout=WAIT) as dev:
                dev.open()
                start.wait()
                results[k] = [compute(qm, dev, structures[k], chunk_atoms=8) for _ in range(3)]
        except BaseException as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=2 * WAIT)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors
    for k in range(2):
        for res in results[k]:
            assert_exact(res, refs[k])


def test_chunks_larger_than_the_socket_buffers_do_not_deadlock(qm, service):
    """Chunk k+1 is sent while result k is on its way back, both larger than what a Unix socket buffers
    (~200 kB): the service must keep reading while it writes, or client and service wait on each other."""
    (beats, n, expected), *_ = chunks_of(qm, gete(qm, seed=4))
    reps = -(-(512 << 10) // beats.nbytes)  # one chunk's atoms repeated to about 512 kB
    big, big_expected = np.tile(beats, (reps, 1)), np.tile(expected, (reps, 1))
    assert big.nbytes > 2 * (200 << 10) and big_expected.nbytes > 2 * (200 << 10)
    with SocketDevice(qm, service.path, timeout=15) as dev:
        dev.submit(big, n * reps)
        dev.submit(big, n * reps)  # pipelined: before the first result is read
        for _ in range(2):
            np.testing.assert_array_equal(dev.collect(), big_expected)


def test_ase_calculator_through_the_socket(qm, service):
    from host.ase import Calculator
    atoms, _ = gete(qm, seed=5)
    results = {}
    for spec in ("reference", f"socket:{service.path}"):
        calc = Calculator(device=spec, chunk_atoms=16, timeout=WAIT)
        try:
            a = atoms.copy()
            a.calc = calc
            results[spec] = (a.get_potential_energy(), a.get_forces(), a.get_stress())
        finally:
            calc.close()
    (e0, f0, s0), (e1, f1, s1) = results.values()
    assert e1 == e0
    np.testing.assert_array_equal(f1, f0)
    np.testing.assert_array_equal(s1, s0)


# ---- the socket --------------------------------------------------------------------------------

def test_socket_is_owner_only(service):
    st = os.stat(service.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_stale_socket_is_replaced_and_a_live_one_refused(qm, tmp_path, start_service):
    path = tmp_path / "svc.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a socket file nobody listens at, as a killed service leaves it
    stale.close()
    svc = start_service("svc.sock")
    structure = gete(qm, seed=6)
    ref = reference(qm, structure)
    assert_exact(via_socket(qm, path, structure), ref)
    assert "removing stale socket" in svc.log_text()

    second = start_service("svc.sock", wait=False)
    assert second.proc.wait(timeout=WAIT) == 2
    assert "already listens" in second.log_text()
    assert svc.proc.poll() is None
    assert_exact(via_socket(qm, path, structure), ref)

    (tmp_path / "plain").write_text("keep me")
    third = start_service("plain", wait=False)
    assert third.proc.wait(timeout=WAIT) == 2
    assert "not a socket" in third.log_text()
    assert (tmp_path / "plain").read_text() == "keep me"


# ---- refusals ----------------------------------------------------------------------------------

def test_wrong_model_hash_is_refused_naming_both(qm, service):
    other = dataclasses.replace(qm, hash="0123456789ab" + "0" * 52)
    t = time.monotonic()
    with pytest.raises(DeviceError, match="model mismatch") as err:
        SocketDevice(other, service.path, timeout=WAIT).open()
    assert time.monotonic() - t < WAIT
    assert "0123456789ab" in str(err.value) and qm.hash[:12] in str(err.value)
    structure = gete(qm, seed=7)
    assert_exact(via_socket(qm, service.path, structure), reference(qm, structure))


def test_wrong_protocol_version_is_refused(qm, service):
    import json
    s = raw_connect(service.path)
    payload = json.dumps({"protocol": 99, "model_hash": qm.hash}).encode()
    s.sendall(FRAME_HEADER.pack(MAGIC, 99, HELLO, len(payload)) + payload)
    message = error_then_closed(s)
    assert "protocol mismatch" in message and "99" in message and str(PROTOCOL_VERSION) in message


def test_service_absent_is_a_clear_error(qm, tmp_path):
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    for path in (tmp_path / "absent.sock", stale):
        t = time.monotonic()
        with pytest.raises(DeviceError) as err:
            SocketDevice(qm, path, timeout=WAIT).open()
        assert time.monotonic() - t < 5
        assert f"no dpfpga service listening at {path}" in str(err.value)
        assert "python -m host serve" in str(err.value)


# ---- misbehaving clients -----------------------------------------------------------------------

GARBAGE = {  # what a misbehaving client sends -> what the service's ERROR says
    "bad magic": (b"JUNK" + bytes(range(60)), "bad magic"),
    "random bytes": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "bad magic"),
    "oversize length": (FRAME_HEADER.pack(MAGIC, PROTOCOL_VERSION, HELLO, 1 << 40), "more than"),
    "truncated frame": (FRAME_HEADER.pack(MAGIC, PROTOCOL_VERSION, HELLO, 100) + b"{" * 10, "truncated"),
    "not a hello": (FRAME_HEADER.pack(MAGIC, PROTOCOL_VERSION, CHUNK, 0), "expected HELLO"),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_client_gets_an_error_and_the_service_survives(qm, service, kind):
    data, expected = GARBAGE[kind]
    s = raw_connect(service.path)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)  # the end of a truncated frame; the service can still answer
    assert expected in error_then_closed(s)
    assert service.proc.poll() is None
    structure = gete(qm, seed=8)
    assert_exact(via_socket(qm, service.path, structure), reference(qm, structure))


def test_unknown_message_after_hello_is_a_protocol_error(qm, service):
    s, _ = raw_hello(service.path, qm.hash)
    send_frame(s, 99, b"?")
    assert "unexpected message type 99" in error_then_closed(s)
    assert service.proc.poll() is None


def test_client_vanishing_mid_request_leaves_the_service_serving(qm, service):
    chunks = chunks_of(qm, gete(qm, seed=9))
    s, welcome = raw_hello(service.path, qm.hash)
    os.kill(service.proc.pid, signal.SIGSTOP)  # so that the client is surely gone before any result
    try:
        for beats, n, _ in chunks[:3]:
            send_frame(s, CHUNK, encode_chunk(beats, n))
        s.close()
    finally:
        os.kill(service.proc.pid, signal.SIGCONT)
    log = service.wait_log(f"client {welcome['client_id']} disconnected")
    assert client_line(log, welcome["client_id"], "went away")
    assert service.proc.poll() is None
    structure = gete(qm, seed=9)
    assert_exact(via_socket(qm, service.path, structure), reference(qm, structure))


def test_raw_chunks_come_back_in_order_and_bye_ends_the_connection(qm, service):
    chunks = chunks_of(qm, gete(qm, seed=10))
    s, welcome = raw_hello(service.path, qm.hash)
    for beats, n, _ in chunks:  # all sent before any result is read
        send_frame(s, CHUNK, encode_chunk(beats, n))
    for _, _, expected in chunks:
        _, mtype, payload = recv_frame(s, time.monotonic() + WAIT)
        assert mtype == RESULT
        np.testing.assert_array_equal(np.frombuffer(payload, "<u8").reshape(-1, 1), expected)
    send_frame(s, BYE)
    s.close()
    service.wait_log(f"client {welcome['client_id']} disconnected: said bye after {len(chunks)} chunk(s)")


def test_malformed_chunk_fails_only_that_client(qm, service):
    structure = gete(qm, seed=11)
    ref = reference(qm, structure)
    (beats, n, _), *_ = chunks_of(qm, structure)
    with SocketDevice(qm, service.path, timeout=WAIT) as good, SocketDevice(qm, service.path, timeout=WAIT) as bad:
        good.open()
        bad.submit(beats, n + 1)
        with pytest.raises(DeviceError, match=f"announces {n + 1} atoms but holds {n}"):
            bad.collect()
        bad.submit(np.zeros((0, 1), np.uint64), 0)  # an empty chunk: an empty result, after a reconnect
        assert bad.collect().shape == (0, 1)
        assert_exact(compute(qm, good, structure), ref)
        assert_exact(compute(qm, bad, structure), ref)  # the failed client reconnected


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (Linux /proc)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the service's memory from /proc")
def test_announced_payloads_cost_no_memory_until_they_arrive(qm, start_service):
    """Three clients announce 300 MB STRUCTUREs (under MAX_PAYLOAD) and send none of it: the service's
    memory follows the bytes received, not the lengths announced (allocating those took 900 MB), and it
    goes on serving everybody else."""
    svc = start_service()
    structure = gete(qm, seed=15)
    ref = reference(qm, structure)
    assert_exact(via_socket(qm, svc.path, structure), ref)  # first use done: imports, buffers
    before = rss_mb(svc.proc.pid)
    stalled = []
    try:
        for _ in range(3):
            s, _ = raw_hello(svc.path, qm.hash)
            s.sendall(FRAME_HEADER.pack(MAGIC, PROTOCOL_VERSION, STRUCTURE, 300_000_000))
            stalled.append(s)
        assert_exact(via_socket(qm, svc.path, structure), ref)  # meanwhile their headers were read
        time.sleep(0.5)
        grown = rss_mb(svc.proc.pid) - before
        assert grown < 50, f"the service grew by {grown:.0f} MB for payloads that never came"
    finally:
        for s in stalled:
            s.close()
    assert service_alive_and_exact(qm, svc, structure, ref)


def service_alive_and_exact(qm, svc, structure, ref) -> bool:
    assert svc.proc.poll() is None, svc.log_text()
    assert_exact(via_socket(qm, svc.path, structure), ref)
    return True


def test_large_payload_arrives_whole_when_read_in_pieces():
    """A payload of several read pieces (1 MiB each), sent in odd-sized bits: every byte in order."""
    payload = np.random.default_rng(1).integers(0, 256, (5 << 20) + 12345, dtype=np.uint8).tobytes()
    a, b = socket.socketpair()
    b.settimeout(0.25)

    def send():
        with a:
            for k in range(0, len(payload) + FRAME_HEADER.size, 777_777):
                frame = FRAME_HEADER.pack(MAGIC, PROTOCOL_VERSION, RESULT, len(payload)) + payload
                a.sendall(frame[k:k + 777_777])

    t = threading.Thread(target=send, daemon=True)
    t.start()
    with b:
        _, mtype, got = recv_frame(b, time.monotonic() + WAIT)
    t.join(timeout=WAIT)
    assert mtype == RESULT and bytes(got) == payload


# ---- the client limit --------------------------------------------------------------------------

def test_client_limit_refuses_one_more_client_clearly(qm, start_service):
    svc = start_service("svc.sock", "--max-clients", "2")
    svc.wait_log("client 1 disconnected")  # wait_listening's probe: it counted until then
    structure = gete(qm, seed=16)
    ref = reference(qm, structure)
    a, b = SocketDevice(qm, svc.path, timeout=WAIT), SocketDevice(qm, svc.path, timeout=WAIT)
    a.open()
    b.open()
    c = SocketDevice(qm, svc.path, timeout=WAIT)
    with pytest.raises(DeviceError, match=r"service busy: 2 clients already connected.*--max-clients"):
        c.open()
    assert "client 4 (" in svc.wait_log("refused: 2 clients already connected")
    assert_exact(compute(qm, b, structure), ref)  # the clients it has are served as before
    a.close()
    svc.wait_log("client 2 disconnected")
    assert_exact(compute(qm, c, structure), ref)  # a freed place is taken again
    b.close()
    c.close()


@pytest.mark.parametrize("reason", ["busy", "silent"])
def test_a_refusal_that_beats_our_hello_still_gives_its_reason(qm, tmp_path, monkeypatch, reason):
    """A service that refuses a connection writes ERROR and closes it, maybe before the client's HELLO is
    sent; the HELLO then fails with EPIPE (seen in CI under load).  The client must still report the
    service's reason, read from what is left in its socket.  Here the peer has closed before HELLO leaves."""
    import host.service as service_module
    path = tmp_path / "refuser.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    closed = threading.Event()

    def refuse():
        peer, _ = listener.accept()
        if reason == "busy":  # the frame by hand: send_frame is held back below
            message = b'{"message": "service busy: 2 clients already connected"}'
            peer.sendall(FRAME_HEADER.pack(MAGIC, PROTOCOL_VERSION, ERROR, len(message)) + message)
        peer.close()
        closed.set()

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    original = service_module.send_frame

    def send_after_the_refusal(*args, **kwargs):
        assert closed.wait(WAIT)
        return original(*args, **kwargs)

    monkeypatch.setattr(service_module, "send_frame", send_after_the_refusal)
    try:
        with pytest.raises(DeviceError) as err:
            SocketDevice(qm, path, timeout=WAIT).open()
    finally:
        thread.join(WAIT)
        listener.close()
    if reason == "busy":
        assert str(err.value) == f"dpfpga service at {path}: service busy: 2 clients already connected"
    else:
        assert "the service closed the connection" in str(err.value) and "see its log" in str(err.value)


def test_default_client_limit_follows_the_core_count(qm, tmp_path, monkeypatch):
    """On a node with more cores than 64 every rank of an MPI run must get a connection: the default limit
    is max(64, cores).  Here the node claims 70 cores; 70 clients are welcomed, the 71st refused."""
    monkeypatch.setattr(os, "cpu_count", lambda: 70)
    svc = Service(lambda: open_device("reference", qm), qm.hash, tmp_path / "svc.sock")
    assert svc.max_clients == 70
    thread = threading.Thread(target=svc.serve_forever, daemon=True)
    thread.start()
    socks = []
    try:
        deadline = time.monotonic() + WAIT
        while not socks:  # the first connection is also the probe for "listening"
            try:
                socks.append(raw_connect(tmp_path / "svc.sock"))
            except (FileNotFoundError, ConnectionRefusedError):
                assert time.monotonic() < deadline and thread.is_alive(), "the service never listened"
                time.sleep(0.05)
        socks += [raw_connect(tmp_path / "svc.sock") for _ in range(70)]
        for s in socks[:70]:
            send_json(s, HELLO, {"protocol": PROTOCOL_VERSION, "model_hash": qm.hash, "pid": os.getpid()})
        assert [recv_frame(s, time.monotonic() + WAIT)[1] for s in socks[:70]] == [WELCOME] * 70
        assert "service busy: 70 clients already connected" in error_then_closed(socks.pop())
    finally:
        for s in socks:
            s.close()
        svc.stop()
        thread.join(timeout=WAIT)
    assert not thread.is_alive()


def test_client_limit_below_one_is_refused(qm, tmp_path):
    r = subprocess.run([sys.executable, "-m", "host", "serve", "--socket", str(tmp_path / "s.sock"),
                        "--max-clients", "0"], capture_output=True, text=True, cwd=REPO, timeout=WAIT)
    assert r.returncode == 2 and "--max-clients: must be at least 1, got 0" in r.stderr
    with pytest.raises(ValueError, match="max_clients must be at least 1, got 0"):
        Service(lambda: open_device("reference", qm), qm.hash, tmp_path / "s.sock", max_clients=0)


# ---- vanishing and stopping services -----------------------------------------------------------

def test_service_killed_mid_run_raises_device_error(qm, start_service):
    svc = start_service()
    (beats, n, _), *_ = chunks_of(qm, gete(qm, seed=12))
    dev = SocketDevice(qm, svc.path, timeout=WAIT)
    dev.open()
    os.kill(svc.proc.pid, signal.SIGSTOP)  # the chunk is surely in flight when the service dies
    dev.submit(beats, n)
    svc.proc.kill()
    svc.proc.wait(timeout=WAIT)
    t = time.monotonic()
    with pytest.raises(DeviceError, match="closed the connection") as err:
        dev.collect()
    assert not isinstance(err.value, DeviceTimeout)
    assert time.monotonic() - t < 5
    with pytest.raises(DeviceError, match="no dpfpga service listening"):
        dev.submit(beats, n)  # reconnecting finds nobody (the stale socket file refuses)
    dev.close()


def test_collect_times_out_then_the_device_reconnects(qm, start_service):
    svc = start_service()
    structure = gete(qm, seed=13)
    (beats, n, _), *_ = chunks_of(qm, structure)
    dev = SocketDevice(qm, svc.path, timeout=WAIT)
    dev.open()
    os.kill(svc.proc.pid, signal.SIGSTOP)
    try:
        dev.submit(beats, n)
        t = time.monotonic()
        with pytest.raises(DeviceTimeout):
            dev.collect(timeout=1.0)
        assert 0.9 < time.monotonic() - t < 10
    finally:
        os.kill(svc.proc.pid, signal.SIGCONT)
    assert_exact(compute(qm, dev, structure), reference(qm, structure))
    dev.close()
    svc.wait_log("client 2 disconnected: went away")  # the timed-out connection's late result found nobody


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_stops_cleanly(qm, start_service, sig):
    svc = start_service()
    structure = gete(qm, seed=14)
    dev = SocketDevice(qm, svc.path, timeout=WAIT)
    assert_exact(compute(qm, dev, structure), reference(qm, structure))  # and stays connected, idle
    svc.proc.send_signal(sig)
    assert svc.proc.wait(timeout=WAIT) == 0
    assert not svc.path.exists()
    log = svc.log_text()
    assert f"stopping on {sig.name}" in log and "service stopped" in log
    assert client_line(log, 2, "disconnected: was disconnected: service stopping")
    with pytest.raises(DeviceError):  # the idle client learns it on its next chunk, without hanging
        compute(qm, dev, structure)
    dev.close()


@pytest.mark.parametrize("failure", ["broken-model", "unknown-device"])
def test_private_folder_is_removed_when_the_service_fails_after_its_owner_died(tmp_path, start_service, failure):
    """The LAMMPS plugin's owner reads the log of a service that failed to start and then removes the
    folder; an owner that died meanwhile cannot, so the service removes it on its way out."""
    owner = subprocess.Popen([sys.executable, "-c", "pass"])
    owner.wait(timeout=WAIT)  # a pid that is gone
    private = tmp_path / "private"
    private.mkdir()
    (private / "service.log").write_text("the owner's redirection of the service's output\n")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a model")
    extra = ["--model", str(tmp_path / "broken.npz")] if failure == "broken-model" else ["--device", "nonexistent"]
    svc = start_service("private/s.sock", "--owner-pid", str(owner.pid), "--private-dir", str(private), *extra,
                        wait=False)
    assert svc.proc.wait(timeout=WAIT) == 2
    assert not private.exists()


# ---- the command line --------------------------------------------------------------------------

def test_cli_help_explains_the_devices():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "host", "--help"], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=WAIT)
    assert out.returncode == 0, out.stderr
    assert "serve" in out.stdout
    for name, text in DEVICE_HELP.items():
        assert name in out.stdout and text in out.stdout
