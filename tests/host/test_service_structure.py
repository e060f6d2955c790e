"""STRUCTURE requests: an MD code's local + ghost atoms and neighbour list in, energy, forces and virial
out (what the LAMMPS plugin sends).  The Python twin of the plugin (SocketDevice.structure) drives a
real service here, so the protocol, the service's host-side work and its error messages are checked
without LAMMPS; tests/host/test_lammps.py checks the C++ side against the same numbers."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from contract.protocol import ERROR, FORCES, HELLO, PROTOCOL_VERSION, STRUCTURE, WANT_EATOM, WANT_VATOM, WELCOME
from host.devices import DeviceError, open_device
from host.evaluate import Evaluator
from host.neighbors import GivenNeighbors, StructureError
from host.service import (SocketDevice, StructureRequest, decode_forces, encode_structure, recv_frame, send_frame,
                          send_json)
from test_service import WAIT, gete, raw_connect

SKIN = 2.0  # Å: like LAMMPS, the list given to the service holds pairs beyond rcut that it must drop


def domain(atoms, rcut, ids_offset=1, want=WANT_EATOM | WANT_VATOM, skin=SKIN):
    """LAMMPS-like domain of a periodic structure on one rank: the atoms (wrapped into the cell) are local,
    every periodic image within rcut + skin of the cell is a ghost; full neighbour list with skin.
    Returns (request, owner of each atom/ghost)."""
    cell = atoms.cell.array
    frac = atoms.get_scaled_positions(wrap=True)
    x0 = frac @ cell
    n = len(atoms)
    shifts = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)])
    ghosts = (x0[None, :, :] + (shifts @ cell)[:, None, :]).reshape(-1, 3)
    owner_g = np.tile(np.arange(n), len(shifts))
    # keep ghosts within rcut + skin of the cell (as LAMMPS's communication cutoff does)
    gfrac = ghosts @ np.linalg.inv(cell)
    margin = (rcut + skin) * np.linalg.norm(np.linalg.inv(cell), axis=0)
    keep = ((gfrac > -margin) & (gfrac < 1 + margin)).all(axis=1)
    x = np.concatenate([x0, ghosts[keep]])
    owner = np.concatenate([np.arange(n), owner_g[keep]])
    types = np.asarray(atoms.arrays["model_types"])[owner]
    d = x[None, :, :] - x0[:, None, :]
    r2 = np.einsum("ijk,ijk->ij", d, d)
    near = (r2 < (rcut + skin) ** 2) & (r2 > 0)
    rng = np.random.default_rng(0)
    numneigh = near.sum(axis=1)
    neighbors = np.concatenate([rng.permutation(np.flatnonzero(row)) for row in near])  # any order
    req = StructureRequest(nlocal=n, x=x, ids=owner + ids_offset, types=types.astype(np.int32),
                           numneigh=numneigh.astype(np.int32), neighbors=neighbors.astype(np.int32), want=want)
    return req, owner


def fold(values, owner, n):
    out = np.zeros((n,) + values.shape[1:])
    np.add.at(out, owner, values)
    return out


@pytest.fixture
def structure(qm):
    atoms, types = gete(qm, repeat=3, seed=11)
    atoms.arrays["model_types"] = types
    return atoms, types


def test_structure_equals_the_ase_path_bit_for_bit(qm, service, structure):
    atoms, types = structure
    with open_device("reference", qm) as dev:
        ref = Evaluator(qm, dev, chunk_atoms=64, timeout=WAIT).compute(atoms.get_positions(wrap=True),
                                                                     atoms.cell.array, True, types, atomic_virial=True)
    req, owner = domain(atoms, qm.config.rcut)
    d = req.x[req.neighbors] - req.x[np.repeat(np.arange(req.nlocal), req.numneigh)]
    inside = int((np.einsum("ij,ij->i", d, d) < qm.config.rcut ** 2).sum())
    assert len(req.x) > 3 * len(atoms) and len(req.neighbors) > 1.3 * inside  # ghosts, and a skin to drop
    with SocketDevice(qm, service.path, timeout=WAIT) as dev:
        out = dev.structure(req)
    assert out["energy"] == ref.energy
    np.testing.assert_array_equal(out["eatom"], ref.atomic_energies)
    # Ghost forces belong to the atoms they image (LAMMPS's reverse communication); sums of integers
    # times 2^-frac are exact in double, so the folded forces equal the ASE path's exactly.
    np.testing.assert_array_equal(fold(out["forces"], owner, len(atoms)), ref.forces)
    w = ref.virial
    np.testing.assert_array_equal(out["virial"], [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
    # per-atom virials are float halves of each pair's term: their sum is the virial to rounding
    np.testing.assert_allclose(out["vatom"].sum(axis=0), out["virial"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fold(out["vatom"], owner, len(atoms))[:, 0],
                               ref.atomic_virial[:, 0, 0], rtol=1e-9, atol=1e-9)
    assert (out["timings"] >= 0).all() and out["timings"][3] > 0


def test_structure_without_per_atom_results_and_in_small_chunks(qm, start_service, structure):
    atoms, _ = structure
    svc = start_service("svc.sock", "--chunk-atoms", "7")
    req, owner = domain(atoms, qm.config.rcut, want=0)
    full, _ = domain(atoms, qm.config.rcut)
    with SocketDevice(qm, svc.path, timeout=WAIT) as dev:
        out = dev.structure(req)
        assert "eatom" not in out and "vatom" not in out
        again = dev.structure(full)  # the same connection serves the next request
    assert out["energy"] == again["energy"]
    np.testing.assert_array_equal(out["forces"], again["forces"])


def test_errors_name_the_clients_atom_ids(qm, service, structure):
    atoms, types = structure
    dense = atoms.copy()
    dense.set_cell(atoms.cell.array * 0.72, scale_atoms=True)  # about 2.7x the density: > sel neighbours
    dense.arrays["model_types"] = types
    req, _ = domain(dense, qm.config.rcut, ids_offset=1000)
    with SocketDevice(qm, service.path, timeout=WAIT) as dev:
        with pytest.raises(DeviceError, match=r"too many neighbours: atom 10\d\d has \d+ neighbours of type") as e:
            dev.structure(req)
        assert "atom ids" in str(e.value)
        bad, _ = domain(atoms, qm.config.rcut)
        bad.types = bad.types.copy()
        bad.types[5] = 7
        with pytest.raises(DeviceError, match="atom 5: type 7 outside the model's type map"):
            dev.structure(bad)
        far, _ = domain(atoms, qm.config.rcut)
        far.x = far.x.copy()
        far.x[len(atoms) + 3] = np.nan
        with pytest.raises(DeviceError, match=f"bad structure: atom {len(atoms) + 3}: position .* is not finite"):
            dev.structure(far)


def test_malformed_structure_is_refused_and_the_connection_stays_usable(qm, service, structure):
    atoms, _ = structure
    req, _ = domain(atoms, qm.config.rcut)
    s = raw_connect(service.path)
    send_json(s, HELLO, {"protocol": PROTOCOL_VERSION, "model_hash": qm.hash, "pid": os.getpid()})
    assert recv_frame(s, time.monotonic() + WAIT)[1] == WELCOME
    parts = encode_structure(req)
    short = b"".join(bytes(p) for p in parts)[:-4]  # one neighbour index missing
    send_frame(s, STRUCTURE, short)
    _, mtype, payload = recv_frame(s, time.monotonic() + WAIT)
    assert mtype == ERROR and "need" in json.loads(bytes(payload))["message"]
    wrong = dataclasses.replace(req, numneigh=(req.numneigh + 1).astype(np.int32))  # counts do not add up
    send_frame(s, STRUCTURE, encode_structure(wrong))
    _, mtype, payload = recv_frame(s, time.monotonic() + WAIT)
    assert mtype == ERROR and "bad structure: neighbour counts sum to" in json.loads(bytes(payload))["message"]
    send_frame(s, STRUCTURE, encode_structure(req))
    _, mtype, payload = recv_frame(s, time.monotonic() + WAIT)
    assert mtype == FORCES and decode_forces(payload)["forces"].shape == (len(req.x), 3)
    s.close()


def test_hello_naming_a_model_file(qm, service, tmp_path):
    from contract import modelfile
    from contract.paths import EXAMPLE_MODEL

    def hello(obj):
        s = raw_connect(service.path)
        send_json(s, HELLO, {"protocol": PROTOCOL_VERSION, "pid": os.getpid(), **obj})
        _, mtype, payload = recv_frame(s, time.monotonic() + WAIT)
        s.close()
        return mtype, json.loads(bytes(payload))

    mtype, w = hello({"model_file": str(EXAMPLE_MODEL)})
    assert mtype == WELCOME and w["type_map"] == list(qm.config.type_map) and w["rcut"] == qm.config.rcut
    assert w["sel"] == list(qm.config.sel) and w["model_hash"] == qm.hash

    other = modelfile.load(EXAMPLE_MODEL)
    other.energy_bias = other.energy_bias + 1
    modelfile.save(other, tmp_path / "other.npz")
    mtype, e = hello({"model_file": str(tmp_path / "other.npz")})
    assert mtype == ERROR and "model mismatch" in e["message"] and "other.npz" in e["message"]
    assert qm.hash[:12] in e["message"]

    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    mtype, e = hello({"model_file": str(tmp_path / "broken.npz")})
    assert mtype == ERROR and "not usable" in e["message"] and "broken.npz" in e["message"]
    mtype, e = hello({"model_file": str(tmp_path / "absent.npz")})
    assert mtype == ERROR and "cannot be read" in e["message"]


def test_private_service_stops_when_its_owner_dies(tmp_path, start_service):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    private = tmp_path / "private"
    private.mkdir()
    try:
        svc = start_service("private/owned.sock", "--owner-pid", str(owner.pid), "--private-dir", str(private))
        time.sleep(1.0)
        assert svc.proc.poll() is None and private.exists()  # alive while its owner is
        owner.kill()
        owner.wait(timeout=WAIT)
        assert svc.proc.wait(timeout=WAIT) == 0
        assert not private.exists()  # socket, log and folder: the owner that would remove them is dead
    finally:
        if owner.poll() is None:
            owner.kill()


def test_zero_device_answers_zeros_with_the_right_framing(qm, structure):
    atoms, types = structure
    with open_device("zero", qm) as dev:
        res = Evaluator(qm, dev, chunk_atoms=50, timeout=WAIT).compute(atoms.positions, atoms.cell.array, True, types)
    assert not res.forces_int.any() and not res.flags.any()
    assert res.energy_int == int(qm.energy_bias[types].sum())


def test_given_neighbors_checks_its_input():
    x = np.zeros((3, 3))
    x[1, 0], x[2, 0] = 1.0, 2.0
    types = np.zeros(3, dtype=np.int64)
    ok = GivenNeighbors(x, types, 2, [1, 2], [1, 0, 2], rcut=1.5)
    (ch,) = list(ok)
    assert ch.edges.i.tolist() == [0, 1, 1] and ch.edges.j.tolist() == [1, 0, 2]
    assert list(GivenNeighbors(x, types, 2, [1, 2], [1, 0, 2], rcut=0.5))[0].edges.i.size == 0  # all beyond rcut
    with pytest.raises(StructureError, match="sum to 3, the list holds 2"):
        GivenNeighbors(x, types, 2, [1, 2], [1, 0], rcut=1.5)
    with pytest.raises(StructureError, match="entry 1 = 3 is not an atom index"):
        GivenNeighbors(x, types, 2, [1, 1], [1, 3], rcut=1.5)
    with pytest.raises(StructureError, match="atom 1 is listed as its own neighbour"):
        list(GivenNeighbors(x, types, 2, [1, 1], [1, 1], rcut=1.5))
    with pytest.raises(StructureError, match="neighbour counts for 1 centres, 2 local atoms"):
        GivenNeighbors(x, types, 2, [1], [1], rcut=1.5)
