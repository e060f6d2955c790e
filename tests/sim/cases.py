"""Stimulus for the pipeline benches: neighbour-record streams and their expected integers.

Each case returns (beats, expected, n_atoms, max_records) where `expected` is what the NumPy reference
(or, for stream errors the reference cannot express, the documented framer behaviour) says the
pipeline must output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.flags import FLAG_MALFORMED
from contract import wire
from model.assembly import neighbor_blocks, quantize_records
from model.reference import NeighborRecords, ReferenceResult, evaluate
from support import GETE_216, random_structure


@dataclass
class Case:
    beats: np.ndarray
    expected: ReferenceResult
    n_atoms: int
    max_records: int


def from_records(qm, rec: NeighborRecords, lanes: int) -> Case:
    # Wire order is the compacted order of each atom's records (empty slots squeezed out).
    order = np.argsort(rec.nbr_type < 0, axis=1, kind="stable")
    rec = NeighborRecords(rec.center_type, np.take_along_axis(rec.nbr_type, order, 1),
                          np.take_along_axis(rec.nbr_d, order[..., None], 1))
    res = evaluate(qm, rec)
    beats = wire.encode_atoms(rec.center_type, rec.nbr_type, rec.nbr_d, lanes)
    return Case(beats, res, len(rec), rec.nbr_type.shape[1])


def random_atoms(qm, lanes: int, seed: int, n_atoms: int = 6) -> Case:
    pos, cell, types = random_structure(natoms=40, seed=seed)
    rec = quantize_records(qm, neighbor_blocks(qm, pos, cell, True, types))
    pick = np.random.default_rng(seed).choice(len(rec), size=n_atoms, replace=False)
    return from_records(qm, rec.take(pick), lanes)


def gete_atoms(qm, lanes: int, n_atoms: int = 4, frame: int = 0) -> Case:
    from model.data import load_deepmd
    s = load_deepmd(GETE_216 / "s3-quench-300K" / "temp-300K").remap_types(qm.config.type_map)
    rec = quantize_records(qm, neighbor_blocks(qm, s.coords[frame], s.cells[frame], True, s.types))
    return from_records(qm, rec.take(slice(0, n_atoms)), lanes)


def _sphere(rng, n, r_lo, r_hi):
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * rng.uniform(r_lo, r_hi, size=(n, 1))


def edge_atoms(qm, lanes: int, seed: int = 0) -> Case:
    """No neighbours; exactly sel[0] of type 0; r at the cutoff; r at and below r_min; extreme input
    words; a type above sel (flagged); a bad type (flagged)."""
    cfg, F = qm.config, qm.formats
    q = 2.0 ** F["coord"].frac
    rng = np.random.default_rng(seed)
    atoms = []  # (centre type, [(type, d_int)])
    atoms.append((0, []))
    full = [(0, d) for d in _sphere(rng, cfg.sel[0], 2.2, cfg.rcut - 0.1)] + \
           [(1, d) for d in _sphere(rng, 3, 2.5, 5.0)]
    atoms.append((1, full))
    lsb = 1.0 / q
    cut = [(0, np.array([cfg.rcut - lsb, 0, 0])), (1, np.array([0, cfg.rcut, 0])),
           (0, np.array([0, 0, -(cfg.rcut + lsb)])), (1, np.array([3.0, 0, 0]))]
    atoms.append((0, cut))
    rmin = [(0, np.array([cfg.r_min, 0, 0])), (1, np.array([0, cfg.r_min * 0.7, 0])), (0, np.array([2.5, 0.3, 0]))]
    atoms.append((1, rmin))
    big = F["coord"].max_value
    extreme = [(0, np.array([big, big, big])), (1, np.array([-16.0, 0, 0])), (0, np.array([2.6, -1.0, 0.4]))]
    atoms.append((0, extreme))
    over = [(1, d) for d in _sphere(rng, cfg.sel[1] + 1, 2.2, cfg.rcut - 0.1)]
    atoms.append((0, over))
    atoms.append((0, [(0, np.array([2.7, 0, 0])), (cfg.ntypes, np.array([0, 2.7, 0]))]))  # bad record type
    m = max(len(a[1]) for a in atoms)
    ct = np.array([a[0] for a in atoms])
    nt = np.full((len(atoms), m), -1)
    nd = np.zeros((len(atoms), m, 3), dtype=np.int64)
    for k, (_, recs) in enumerate(atoms):
        for j, (t, d) in enumerate(recs):
            nt[k, j] = t
            nd[k, j] = np.clip(np.floor(np.asarray(d) * q + 0.5), F["coord"].lo, F["coord"].hi)
    return from_records(qm, NeighborRecords(ct, nt, nd), lanes)


def stream_errors(qm, lanes: int, seed: int = 0) -> Case:
    """More records than sum(sel); a header announcing more records than it sends (MALFORMED); stray
    record words between atoms (MALFORMED on the next atom); then good atoms: each must recover."""
    good = random_atoms(qm, lanes, seed, n_atoms=4)
    e, f = good.expected.energy.copy(), good.expected.dEdr.copy()
    fl = good.expected.flags.copy()
    beats = list(good.beats)
    heads = [k for k, b in enumerate(beats) if wire.kind(int(b[0])) == wire.HEADER]
    # atom 0: header claims 5 more records than follow -> ends early at atom 1's header
    ctype, count, tag = (int(x) for x in wire.decode_input_header(np.uint64(beats[heads[0]][0])))
    beats[heads[0]] = np.array([wire.input_header(ctype, count + 5, tag)] + [0] * (lanes - 1), dtype=np.uint64)
    e[0], f[0], fl[0] = 0, 0, FLAG_MALFORMED
    # stray record beat before atom 2 -> atom 2 is flagged MALFORMED and dropped
    stray = np.array([wire.input_record(0, [100, 0, 0])] + [0] * (lanes - 1), dtype=np.uint64)
    beats.insert(heads[2], stray)
    e[2], f[2], fl[2] = 0, 0, FLAG_MALFORMED
    # an atom with more records than sum(sel): consumed, dropped, n = 0 returned
    n_big = sum(qm.config.sel) + 1
    big_h = np.array([wire.input_header(0, n_big, 4)] + [0] * (lanes - 1), dtype=np.uint64)
    rec_w = wire.input_record(np.zeros(n_big, dtype=np.int64), np.tile([[0, 0, 30000]], (n_big, 1)))
    pad = (-n_big) % lanes
    rec_w = np.concatenate([rec_w, np.zeros(pad, dtype=np.uint64)]).reshape(-1, lanes)
    # (the big atom takes tag 4 and goes after the 4 good atoms; one more good atom follows)
    tail = random_atoms(qm, lanes, seed + 100, n_atoms=1)
    tail_beats = tail.beats.copy()
    _, cnt, _ = wire.decode_input_header(tail_beats[0, 0])
    tail_beats[0, 0] = wire.input_header(int(wire.decode_input_header(tail_beats[0, 0])[0]), int(cnt), 5)
    beats = np.concatenate([np.array(beats, dtype=np.uint64), big_h[None], rec_w, tail_beats])
    m = max(good.max_records, tail.max_records)
    dEdr = np.zeros((6, m, 3), dtype=np.int64)
    dEdr[:4, : f.shape[1]] = f
    dEdr[5, : tail.expected.dEdr.shape[1]] = tail.expected.dEdr[0]
    from contract.flags import FLAG_NEIGHBOR_OVERFLOW
    expected = ReferenceResult(energy=np.concatenate([e, [0], tail.expected.energy]), dEdr=dEdr,
                               flags=np.concatenate([fl, [FLAG_NEIGHBOR_OVERFLOW], tail.expected.flags]))
    return Case(beats, expected, 6, m)


def concat(parts: list[Case]) -> Case:
    """Several cases as one stream: headers re-tagged in order, expectations stacked."""
    beats, k = [], 0
    for c in parts:
        b = c.beats.copy()
        heads = np.flatnonzero(wire.kind(b[:, 0]) == wire.HEADER)
        ctype, count, _ = wire.decode_input_header(b[heads, 0])
        b[heads, 0] = wire.input_header(ctype, count, np.arange(k, k + len(heads)))
        k += len(heads)
        beats.append(b)
    m = max(c.max_records for c in parts)
    dEdr = np.zeros((sum(c.n_atoms for c in parts), m, 3), dtype=np.int64)
    row = 0
    for c in parts:
        dEdr[row:row + c.n_atoms, : c.max_records] = c.expected.dEdr
        row += c.n_atoms
    expected = ReferenceResult(energy=np.concatenate([c.expected.energy for c in parts]), dEdr=dEdr,
                               flags=np.concatenate([c.expected.flags for c in parts]))
    return Case(np.concatenate(beats), expected, sum(c.n_atoms for c in parts), m)


def gete_stream(qm, lanes: int, target_records: int) -> Case:
    """At least `target_records` neighbour records of real GeTe (216-atom melt-quench frames, quench
    and melt stages in turn), every atom of each frame in order."""
    from model.data import load_deepmd
    stages = [GETE_216 / "s3-quench-300K", GETE_216 / "s2-melt-1000K"]
    systems = [load_deepmd(p).remap_types(qm.config.type_map) for st in stages for p in sorted(st.iterdir())]
    parts, total, frame = [], 0, 0
    while total < target_records:
        s = systems[frame % len(systems)]
        f = (frame // len(systems)) % s.nframes
        rec = quantize_records(qm, neighbor_blocks(qm, s.coords[f], s.cells[f], True, s.types))
        parts.append(rec)
        total += int((rec.nbr_type >= 0).sum())
        frame += 1
    m = max(r.nbr_type.shape[1] for r in parts)

    def pad(a, v):
        return np.concatenate([a, np.full(a.shape[:1] + (m - a.shape[1],) + a.shape[2:], v, dtype=a.dtype)], axis=1)

    rec = NeighborRecords(np.concatenate([r.center_type for r in parts]),
                          np.concatenate([pad(r.nbr_type, -1) for r in parts]),
                          np.concatenate([pad(r.nbr_d, 0) for r in parts]))
    return from_records(qm, rec, lanes)
