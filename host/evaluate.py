"""Structure -> device -> energy, forces, virial: chunked, pipelined, exact.

`Evaluator.compute(positions, cell, pbc, types)` walks the structure in chunks of centre atoms
(host.neighbors; `compute_neighbors` takes an MD code's local + ghost atoms and its neighbour list
instead), quantizes and encodes each chunk into wire words (contract.wire), keeps up to `device.depth`
chunks in flight (chunk k+1 is built while the device works on chunk k), and folds
each chunk's results into the totals in exact integer arithmetic:

    E    = sum_i (e_i + bias[type_i])                         format E, Python int
    F_i  = sum_j dE/dr_ij - sum_j dE/dr_ji                    format F, int64
    W    = - sum_ij r_ij (x) dE/dr_ij                         frac(coord) + frac(F), Python ints
    W_i  = - 1/2 S_i,  S_i = sum over the pairs (i, j) and (j, i) of r (x) dE/dr  (per-atom virial,
           half of each pair's term to each of its atoms; S_i in int64)

converting to float only at the end, so the result does not depend on the chunking, the device or
the order in which chunks come back: it equals `model.assembly.compute` bit for bit.
Memory: the structure's own arrays (positions, forces) plus `depth` chunks.

The same work runs in C++ (the native host core, host/native.py) when it is available: `native=None`
uses it then, `native=False` runs this Python path, which is its readable specification; both give the
same integers (tests/host/test_native.py).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from contract import wire
from contract.flags import FLAG_R_BELOW_MIN
from model.assembly import (
    DeviceFlagError,
    add_pair_terms,
    below_rmin,
    check_flags,
    check_types,
    close_contact_error,
    quantize_displacements,
    scatter_add,
)
from model.neighbors import check_sel, count_by_type

from .neighbors import GivenNeighbors, NeighborChunks


@dataclass
class Result:
    energy: float  # eV
    forces: np.ndarray  # (N, 3) eV/Å
    virial: np.ndarray  # (3, 3) eV
    atomic_energies: np.ndarray  # (N,) eV
    atomic_virial: np.ndarray | None  # (N, 3, 3) eV (only when asked for)
    energy_int: int
    forces_int: np.ndarray
    virial_int: np.ndarray  # (3, 3) Python ints
    flags: np.ndarray  # (N,)
    timings: dict = field(default_factory=dict)
    below_rmin_records: int = 0  # neighbour records below r_min (0 unless allow_below_rmin)
    # The native core's periodic search: "searched" (this evaluation), "built" (a pair list with a skin,
    # kept for the next ones) or "reused" (the list of an earlier one); "" for the Python path.
    pair_list: str = ""


class Evaluator:
    """`strict`: flagged atoms (saturation, ...) raise DeviceFlagError.  A pair closer than the model's
    r_min raises CloseContactError naming both atoms before anything reaches the device, unless
    `allow_below_rmin` (the tables are then constant below r_min, forces the exact gradient of that
    energy, and Result.below_rmin_records counts such records)."""

    def __init__(self, qm, device, chunk_atoms: int = 4096, strict: bool = True, timeout: float | None = 600.0,
                 progress: bool = False, allow_below_rmin: bool = False, native: bool | None = None):
        """`native`: None uses the native core when it is built or can be built here (host.native), True
        requires it (NativeBuildError says why not), False runs the Python path."""
        self.qm, self.device = qm, device
        self.chunk_atoms, self.strict, self.timeout, self.progress = chunk_atoms, strict, timeout, progress
        self.allow_below_rmin = allow_below_rmin
        self.lanes = device.lanes
        from . import native as _native
        if native is None:
            native = _native.available()
        elif native:
            _native.module()  # raises NativeBuildError with the reason
        self.native = bool(native)

    def compute(self, positions, cell, pbc, types, atomic_virial: bool = False) -> Result:
        """One structure given by positions, cell and periodicity: its neighbours are found here."""
        if self.native:
            from .native import evaluate_structure
            return evaluate_structure(self, positions, cell, pbc, types, atomic_virial)
        types = check_types(types, self.qm.config)
        cfg = self.qm.config
        # A structure where some atom must exceed sum(sel) neighbours is refused before its images are built.
        chunks = NeighborChunks(positions, cell, pbc, cfg.rcut, types, self.chunk_atoms, max_neighbors=sum(cfg.sel))
        return self._evaluate(chunks, types, len(types), atomic_virial)

    def compute_neighbors(self, positions, types, nlocal: int, numneigh, neighbors, atomic_virial: bool = False,
                          atom_ids=None) -> Result:
        """One domain of an MD code (LAMMPS): `nlocal` local atoms, then ghost atoms, and the full neighbour
        list of the local atoms (host.neighbors.GivenNeighbors).  Energies, flags and per-atom energies are
        those of the local atoms; forces and per-atom virials are for every atom, ghosts included (the MD
        code adds a ghost's share to the atom it images).  `atom_ids` name atoms in error messages."""
        if self.native:
            from .native import evaluate_neighbors
            return evaluate_neighbors(self, positions, types, nlocal, numneigh, neighbors, atomic_virial, atom_ids)
        types = check_types(types, self.qm.config)
        chunks = GivenNeighbors(positions, types, nlocal, numneigh, neighbors, self.qm.config.rcut, self.chunk_atoms)
        return self._evaluate(chunks, types, int(nlocal), atomic_virial, atom_ids)

    def _evaluate(self, chunks, types, ncenters: int, atomic_virial: bool, atom_ids=None) -> Result:
        """Run every chunk (centres are atoms 0..ncenters-1) and fold the results (module docstring)."""
        qm, F = self.qm, self.qm.formats
        n = len(types)
        t0 = time.perf_counter()
        forces = np.zeros((n, 3), dtype=np.int64)
        e_atom = np.zeros(ncenters, dtype=np.int64)
        flags = np.zeros(ncenters, dtype=np.int64)
        virial = np.zeros((3, 3), dtype=object)
        w_atom = np.zeros((n, 3, 3), dtype=np.int64) if atomic_virial else None
        in_flight: deque = deque()
        n_close = 0
        timing = {"neighbors_encode": 0.0, "device_wait": 0.0, "assemble": 0.0}
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=ncenters, unit="atom", desc=f"{self.device.name}", leave=False)

        def finish_one():
            ch, rec_d = in_flight.popleft()
            t = time.perf_counter()
            out = self.device.collect(self.timeout)
            timing["device_wait"] += time.perf_counter() - t
            t = time.perf_counter()
            self._fold(ch, rec_d, out, forces, e_atom, flags, virial, w_atom)
            timing["assemble"] += time.perf_counter() - t
            if bar is not None:
                bar.update(len(ch.centers))

        it = iter(chunks)
        while True:
            t = time.perf_counter()
            try:
                prepared = self._prepare(next(it, None), types, atom_ids)
            except Exception:
                self._drain(in_flight)
                raise
            if prepared is None:
                break
            ch, d, beats, close_records = prepared
            n_close += close_records
            timing["neighbors_encode"] += time.perf_counter() - t
            while len(in_flight) >= self.device.depth:
                finish_one()
            self.device.submit(beats, len(ch.centers))
            in_flight.append((ch, d))
        while in_flight:
            finish_one()
        if bar is not None:
            bar.close()
        if self.strict:
            check_flags(flags, allow=FLAG_R_BELOW_MIN if self.allow_below_rmin else 0,
                        names=None if atom_ids is None else np.asarray(atom_ids)[:ncenters])
        e_atom += qm.energy_bias[types[:ncenters]]
        energy_int = int(e_atom.sum(dtype=np.int64)) if ncenters < 2 ** 20 else sum(int(x) for x in e_atom)
        scale_v = 2.0 ** -(F["coord"].frac + F["F"].frac)
        timing["total"] = time.perf_counter() - t0
        return Result(
            energy=energy_int * 2.0 ** -F["E"].frac, forces=forces * 2.0 ** -F["F"].frac,
            virial=np.array([[float(x) * scale_v for x in row] for row in virial]),
            atomic_energies=e_atom * 2.0 ** -F["E"].frac,
            atomic_virial=None if w_atom is None else w_atom * (-0.5 * scale_v),
            energy_int=energy_int, forces_int=forces, virial_int=virial, flags=flags, timings=timing,
            below_rmin_records=n_close)

    def _prepare(self, ch, types, atom_ids):
        """One chunk's checks (sel, input range, r_min: errors name the atom) and wire words:
        (chunk, quantized displacements, beats, records below r_min), or None after the last chunk."""
        if ch is None:
            return None
        qm, cfg, F = self.qm, self.qm.config, self.qm.formats
        b = ch.blocks
        # Name atoms by their global index (or the caller's ids) in errors.
        names = ch.centers if atom_ids is None else np.asarray(atom_ids)[ch.centers]
        check_sel(count_by_type(ch.edges, types, len(ch.centers), cfg.ntypes), cfg.sel, cfg.type_map, names=names)
        atom = np.broadcast_to(names[:, None], b.nbr_type.shape)
        d = quantize_displacements(b.nbr_vec, F["coord"], atom)
        d[b.nbr_type < 0] = 0
        close = below_rmin(qm, b.nbr_type, d)
        if close.any() and not self.allow_below_rmin:
            ids = ch.blocks.nbr_index if atom_ids is None else np.asarray(atom_ids)[ch.blocks.nbr_index]
            raise close_contact_error(qm, close, b.nbr_vec, names, ids)
        beats = wire.encode_atoms(b.center_type, b.nbr_type, d, self.lanes, tags=ch.centers)
        return ch, d, beats, int(close.sum())

    def _drain(self, in_flight) -> None:
        """A structure refused with earlier chunks still on the device: take their results, unread, so that
        the next evaluation on this device reads its own (a device that fails meanwhile stops the drain:
        its own error handling takes over)."""
        from .devices import DeviceError
        while in_flight:
            in_flight.popleft()
            try:
                self.device.collect(self.timeout)
            except (DeviceError, ValueError):
                break

    def _fold(self, ch, d, out, forces, e_atom, flags, virial, w_atom):
        b = ch.blocks
        k, m = b.nbr_type.shape
        energy, dEdr, fl, tags = wire.decode_results(out, k, m)
        expected = wire.tag_of(ch.centers)
        if (tags != expected).any():
            a = int(np.argmax(tags != expected))
            raise DeviceFlagError(f"{self.device.name}: results out of order at atom {int(ch.centers[a])} "
                                  f"(tag {int(tags[a])}, expected {int(expected[a])})")
        e_atom[ch.centers] = energy
        flags[ch.centers] = fl
        valid = b.nbr_type >= 0
        g = dEdr[valid]
        ci = ch.centers[np.nonzero(valid)[0]]
        nj = b.nbr_index[valid]
        dv = d[valid]
        add_pair_terms(forces, virial, ci, nj, dv, g)
        if w_atom is not None:
            w = dv[:, :, None] * g[:, None, :]  # r (x) dE/dr per pair, exact in int64
            scatter_add(w_atom, ci, w)
            scatter_add(w_atom, nj, w)
