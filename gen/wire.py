"""The wire format: 64-bit words between host and pipeline, in both directions.

Host -> pipeline, per atom: one HEADER word, then `count` RECORD words.  A beat of the pipeline's
input stream carries `lanes` words; a header travels alone in slot 0 of its beat, records fill the
slots of the following beats (PAD words fill the rest of an atom's last beat).

    HEADER  [63:62]=01  [61:58] centre type  [57:48] count  [47:36] tag  [35:0] 0
    RECORD  [63:62]=10  [61:58] 0            [57:54] type   [53:36] dz  [35:18] dy  [17:0] dx   (s18 each)
    PAD     [63:62]=00  (ignored)

Pipeline -> host, per atom: one HEADER word (in slot 0 of its beat), then one RECORD word per record
forwarded (`n` of them, in input order, `lanes` per beat, PAD in unused slots):

    HEADER  [63:62]=01  [61:50] tag  [49:40] n  [39:32] flags  [31:0] energy (format E)
    RECORD  [63:62]=10  [61] saturated  [60] 0  [59:40] dE/dz  [39:20] dE/dy  [19:0] dE/dx   (format F)

An atom's flags are its header flags OR SATURATED if any of its record words has bit 61 set.
`n` is the number of records that went through the pipeline: `count`, or 0 for an atom dropped
before the pipeline (more records than sum(sel)), or fewer when a header arrived early (MALFORMED).

The tag (12 bits, wrapping) is echoed so that the host can check the order of results.
"""

from __future__ import annotations

import numpy as np

KIND_SHIFT = 62
PAD, HEADER, RECORD = 0, 1, 2

COORD_BITS = 18
FORCE_BITS = 20
MASK18, MASK20 = (1 << 18) - 1, (1 << 20) - 1


def _u64(x):
    return np.asarray(x, dtype=np.int64).astype(np.uint64)


def signed_field(word: np.ndarray, lo: int, bits: int) -> np.ndarray:
    v = ((word >> np.uint64(lo)) & np.uint64((1 << bits) - 1)).astype(np.int64)
    return np.where(v >= (1 << (bits - 1)), v - (1 << bits), v)


def field(word: np.ndarray, lo: int, bits: int) -> np.ndarray:
    return ((word >> np.uint64(lo)) & np.uint64((1 << bits) - 1)).astype(np.int64)


def kind(word: np.ndarray) -> np.ndarray:
    return field(word, KIND_SHIFT, 2)


# ---- host -> pipeline ------------------------------------------------------------------------------

def input_header(ctype, count, tag) -> np.ndarray:
    return (_u64(HEADER) << np.uint64(62)) | (_u64(ctype) << np.uint64(58)) | (_u64(count) << np.uint64(48)) \
        | (_u64(np.asarray(tag) & 0xFFF) << np.uint64(36))


def input_record(rtype, d) -> np.ndarray:
    """d: (..., 3) int64 in the coord format (must already fit 18 bits signed)."""
    d = np.asarray(d, dtype=np.int64)
    if d.size and (d.min() < -(1 << 17) or d.max() >= (1 << 17)):
        raise OverflowError("record displacement does not fit 18 bits")
    # Fields in int64 (bits 0..57), the kind bits (62..63) after viewing as uint64: fewer passes.
    w = (d[..., 0] & MASK18) | ((d[..., 1] & MASK18) << 18) | ((d[..., 2] & MASK18) << 36) \
        | (np.asarray(rtype, dtype=np.int64) << 54)
    return np.asarray(w).view(np.uint64) | np.uint64(RECORD << 62)


def decode_input_record(word):
    return field(word, 54, 4), np.stack([signed_field(word, 18 * a, 18) for a in range(3)], axis=-1)


def decode_input_header(word):
    return field(word, 58, 4), field(word, 48, 10), field(word, 36, 12)


# ---- pipeline -> host ------------------------------------------------------------------------------

def output_header(tag, n, flags, energy) -> np.ndarray:
    return (_u64(HEADER) << np.uint64(62)) | (_u64(np.asarray(tag) & 0xFFF) << np.uint64(50)) \
        | (_u64(n) << np.uint64(40)) | (_u64(flags) << np.uint64(32)) | _u64(np.asarray(energy) & 0xFFFFFFFF)


def output_record(f, sat) -> np.ndarray:
    f = np.asarray(f, dtype=np.int64)
    w = (_u64(RECORD) << np.uint64(62)) | (_u64(sat) << np.uint64(61))
    for a in range(3):
        w = w | (_u64(f[..., a] & MASK20) << np.uint64(20 * a))
    return w


def decode_output_header(word):
    """(tag, n, flags, energy)"""
    return field(word, 50, 12), field(word, 40, 10), field(word, 32, 8), signed_field(word, 0, 32)


def result_beats(header_word: int, lanes: int) -> int:
    """Beats an atom's results take on the output stream: its header beat and ceil(n / lanes) record
    beats (how a reader cuts the stream into atoms)."""
    n = (int(header_word) >> 40) & 0x3FF
    return 1 + -(-n // lanes)


def decode_output_record(word):
    """(dE/dr (..., 3), saturated)"""
    return np.stack([signed_field(word, 20 * a, 20) for a in range(3)], axis=-1), field(word, 61, 1)


# ---- whole streams ---------------------------------------------------------------------------------

def encode_atoms(center_type, nbr_type, nbr_d, lanes: int, tags=None) -> np.ndarray:
    """Per-atom blocks (type -1 = empty slot) -> (beats, lanes) uint64 words (vectorized).

    Each atom becomes one header beat and ceil(count / lanes) record beats.
    """
    center_type = np.asarray(center_type, dtype=np.int64)
    nbr_type = np.asarray(nbr_type, dtype=np.int64)
    n_atoms, m = nbr_type.shape
    valid = nbr_type >= 0
    count = valid.sum(axis=1)
    tags = np.arange(n_atoms) if tags is None else np.asarray(tags)
    rec_beats = -(-count // lanes)
    beats_per_atom = 1 + rec_beats
    start = np.concatenate([[0], np.cumsum(beats_per_atom)[:-1]])
    out = np.zeros((int(beats_per_atom.sum()), lanes), dtype=np.uint64)
    out[start, 0] = input_header(center_type, count, tags)
    slot = np.broadcast_to(np.arange(m), (n_atoms, m))
    keep = slot < count[:, None]
    t, d = nbr_type, np.asarray(nbr_d, dtype=np.int64)
    if not np.array_equal(valid, keep):
        # Compact each atom's valid records to the front, keeping their order (neighbour blocks
        # from host.neighbors are compact already and skip this).
        order = np.argsort(~valid, axis=1, kind="stable")
        t = np.take_along_axis(t, order, 1)
        d = np.take_along_axis(d, order[..., None], 1)
    words = input_record(t[keep], d[keep])
    if lanes == 1:
        # One word per beat: headers interleave with the records at known offsets.
        rec_rows = np.ones(len(out), dtype=bool)
        rec_rows[start] = False
        out[rec_rows, 0] = words
        return out
    atom_idx = np.repeat(np.arange(n_atoms), count)
    k = slot[keep]
    out[start[atom_idx] + 1 + k // lanes, k % lanes] = words
    return out


def decode_results(beats: np.ndarray, n_atoms: int, max_records: int):
    """(beats, lanes) output words -> energy (N,), dEdr (N, max_records, 3), flags (N,), tags (N,).

    Raises ValueError naming the first beat that breaks the framing.
    """
    beats = np.asarray(beats, dtype=np.uint64)
    k = kind(beats)
    heads = np.flatnonzero(k[:, 0] == HEADER)
    if len(heads) != n_atoms:
        raise ValueError(f"expected {n_atoms} result headers, found {len(heads)}")
    tag, n, flags, energy = decode_output_header(beats[heads, 0])
    if (k[heads, 1:] != PAD).any():
        raise ValueError(f"header beat {int(heads[np.argmax((k[heads, 1:] != PAD).any(axis=1))])} has non-pad words")
    dEdr = np.zeros((n_atoms, max_records, 3), dtype=np.int64)
    rec_mask = k == RECORD
    rec_mask[heads] = False
    atom_of_beat = np.searchsorted(heads, np.arange(len(beats)), side="right") - 1
    if (rec_mask.any(axis=1) & (atom_of_beat < 0)).any():
        raise ValueError("record words before the first header")
    b, lane = np.nonzero(rec_mask)
    atom = atom_of_beat[b]
    # record index within its atom: count of record words before it in the atom's beats
    order = np.lexsort((lane, b))
    b, lane, atom = b[order], lane[order], atom[order]
    first = np.concatenate([[0], np.flatnonzero(np.diff(atom)) + 1])
    idx = np.arange(len(atom)) - np.repeat(first, np.diff(np.concatenate([first, [len(atom)]])))
    counts = np.bincount(atom, minlength=n_atoms)
    if (counts != n).any():
        a = int(np.argmax(counts != n))
        raise ValueError(f"atom {a}: header says {int(n[a])} records, stream has {int(counts[a])}")
    f, sat = decode_output_record(beats[b, lane])
    if len(atom) and idx.max() >= max_records:
        raise ValueError(f"an atom returned more than {max_records} records")
    dEdr[atom, idx] = f
    sat_atom = np.zeros(n_atoms, dtype=bool)
    np.logical_or.at(sat_atom, atom, sat.astype(bool))
    from contract.flags import FLAG_SATURATED
    flags = flags | np.where(sat_atom, FLAG_SATURATED, 0)
    return energy, dEdr, flags, tag


def decode_atoms(beats: np.ndarray):
    """Inverse of encode_atoms for a well-formed stream: (beats, lanes) input words ->
    center_type (N,), nbr_type (N, M) (-1 padding), nbr_d (N, M, 3), tags (N,).

    Used by devices that consume the wire format without hardware (the reference device).
    Raises ValueError naming the first beat that breaks the framing.
    """
    beats = np.asarray(beats, dtype=np.uint64)
    k = kind(beats)
    heads = np.flatnonzero(k[:, 0] == HEADER)
    if len(beats) and (not len(heads) or heads[0] != 0):
        raise ValueError("input stream does not start with a header")
    ctype, count, tag = decode_input_header(beats[heads, 0])
    if (k[heads, 1:] != PAD).any():
        raise ValueError(f"header beat {int(heads[np.argmax((k[heads, 1:] != PAD).any(axis=1))])} has non-pad words")
    rec_mask = k == RECORD
    rec_mask[heads] = False
    atom_of_beat = np.searchsorted(heads, np.arange(len(beats)), side="right") - 1
    b, lane = np.nonzero(rec_mask)  # row-major: records in stream order
    atom = atom_of_beat[b]
    got = np.bincount(atom, minlength=len(heads))
    if (got != count).any():
        a = int(np.argmax(got != count))
        raise ValueError(f"atom {a} (tag {int(tag[a])}): header announces {int(count[a])} records, stream has {int(got[a])}")
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    idx = np.arange(len(atom)) - start[atom]
    m = int(count.max()) if len(count) else 0
    nbr_type = np.full((len(heads), m), -1, dtype=np.int64)
    nbr_d = np.zeros((len(heads), m, 3), dtype=np.int64)
    rtype, d = decode_input_record(beats[b, lane])
    nbr_type[atom, idx] = rtype
    nbr_d[atom, idx] = d
    return ctype, nbr_type, nbr_d, tag


def encode_results(energy, dEdr, flags, count, tags, lanes: int, saturated=None) -> np.ndarray:
    """What the pipeline sends back for N atoms: (beats, lanes) output words (vectorized).

    energy (N,), dEdr (N, M, 3), flags (N,), count (N,) records returned per atom (0 for an atom
    dropped before the pipeline), tags (N,); saturated (N, M) per-record bit 61 (default: none).
    """
    energy = np.asarray(energy, dtype=np.int64)
    count = np.asarray(count, dtype=np.int64)
    n_atoms = len(energy)
    dEdr = np.asarray(dEdr, dtype=np.int64)
    m = dEdr.shape[1] if dEdr.ndim == 3 else 0
    rec_beats = -(-count // lanes)
    start = np.concatenate([[0], np.cumsum(1 + rec_beats)[:-1]]).astype(np.int64)
    out = np.zeros((int((1 + rec_beats).sum()), lanes), dtype=np.uint64)
    out[start, 0] = output_header(tags, count, flags, energy)
    slot = np.broadcast_to(np.arange(m), (n_atoms, m))
    keep = slot < count[:, None]
    atom = np.broadcast_to(np.arange(n_atoms)[:, None], (n_atoms, m))[keep]
    k = slot[keep]
    sat = np.zeros(len(k), dtype=np.int64) if saturated is None else np.asarray(saturated)[keep].astype(np.int64)
    out[start[atom] + 1 + k // lanes, k % lanes] = output_record(dEdr[keep], sat)
    return out
