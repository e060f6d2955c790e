"""The wire format: 64-bit words between host and pipeline, as one table of fields, and its codec.

Every word carries its kind in bits 63:62 (PAD 0, HEADER 1, RECORD 2); the rest of the word is laid
out by the four `Word`s below, each a tuple of `Field`s (name, lowest bit, width, signed) that covers
all 64 bits, reserved zeros included.  This table is the only place that says where a field lives:

* the NumPy codec below (the host's encoder and decoder, the reference device) reads it;
* the generator builds its Amaranth slices and words from it (gen/words.py);
* `python -m contract headers` writes it as C++ constants (contract/include/dpfpga/wire.h).

Host -> pipeline, per atom: one INPUT_HEADER, then `count` INPUT_RECORDs.  A beat of the pipeline's
input stream carries `lanes` words; a header travels alone in slot 0 of its beat, records fill the
slots of the following beats (PAD words fill the rest of an atom's last beat).

Pipeline -> host, per atom: one OUTPUT_HEADER (slot 0 of its beat), then one OUTPUT_RECORD per record
forwarded (`n` of them, in input order, `lanes` per beat, PAD in unused slots).  An atom's flags are
its header flags OR FLAG_SATURATED if any of its record words has `saturated` set.  `n` is the
number of records that went through the pipeline: `count`, or 0 for an atom dropped before the
pipeline (more records than sum(sel)), or fewer when a header arrived early (MALFORMED).  The output
holds exactly one header beat and ceil(n / lanes) record beats per atom (`result_beats`).

The tag (TAG_BITS, wrapping: `tag_of`) is echoed so that the host can check the order of results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .flags import FLAG_BITS, FLAG_SATURATED

WORD_BITS = 64
TYPE_BITS = 4  #: centre and neighbour type
COUNT_BITS = 10  #: records per atom (input count, output n): sum(sel) must stay below 2**COUNT_BITS
TAG_BITS = 12  #: atom tag, wrapping
COORD_BITS = 18  #: each displacement component, format coord (signed)
FORCE_BITS = 20  #: each dE/dr component, format F (signed)
ENERGY_BITS = 32  #: atom energy, format E (signed), without the per-type bias

PAD, HEADER, RECORD = 0, 1, 2
KIND_NAMES = {PAD: "PAD", HEADER: "HEADER", RECORD: "RECORD"}


@dataclass(frozen=True)
class Field:
    """Bits lo .. lo + width - 1 of a word; `signed` fields are two's complement."""

    name: str
    lo: int
    width: int
    signed: bool = False
    doc: str = ""

    @property
    def hi(self) -> int:
        return self.lo + self.width - 1

    @property
    def mask(self) -> int:
        """The field's mask at bit 0 (shift it by `lo` for the word's)."""
        return (1 << self.width) - 1

    @property
    def reserved(self) -> bool:
        """Reserved bits: zero on the wire, ignored when read."""
        return self.name.startswith("reserved")

    @property
    def min(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else self.mask

    def get(self, word):
        """The field of a word (an int, a NumPy scalar: an int) or of an array of words (int64 array)."""
        if isinstance(word, (int, np.integer)):
            v = (int(word) >> self.lo) & self.mask
            return v - (1 << self.width) if self.signed and v >> (self.width - 1) else v
        # One expression, so that NumPy reuses its temporaries (a named one costs an allocation).
        v = (((word >> np.uint64(self.lo)) & np.uint64(self.mask)) if self.lo else (word & np.uint64(self.mask))
             ).astype(np.int64)
        return np.where(v >= (1 << (self.width - 1)), v - (1 << self.width), v) if self.signed else v


#: The kind field, common to every word.
KIND = Field("kind", 62, 2, doc="PAD 0, HEADER 1, RECORD 2")


@dataclass(frozen=True)
class Word:
    """One kind of word in one direction: its kind code and its fields, high bits first (the kind
    field first, reserved zeros included), together covering all WORD_BITS bits exactly once."""

    name: str
    kind: int
    fields: tuple[Field, ...]

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")

    def __iter__(self):
        return iter(self.fields)

    @property
    def payload(self) -> tuple[Field, ...]:
        """The fields that carry values (not the kind, not the reserved bits)."""
        return tuple(f for f in self.fields if f is not KIND and not f.reserved)

    @property
    def kind_bits(self) -> int:
        """The word's kind code in place: OR it into the packed fields."""
        return self.kind << KIND.lo


INPUT_HEADER = Word("input_header", HEADER, (
    KIND,
    Field("ctype", 58, TYPE_BITS, doc="centre type"),
    Field("count", 48, COUNT_BITS, doc="records that follow"),
    Field("tag", 36, TAG_BITS, doc="atom tag, wrapping: tag_of"),
    Field("reserved", 0, 36),
))
INPUT_RECORD = Word("input_record", RECORD, (
    KIND,
    Field("reserved", 58, 4),
    Field("type", 54, TYPE_BITS, doc="neighbour type"),
    Field("dz", 36, COORD_BITS, signed=True, doc="r_ij z, format coord"),
    Field("dy", 18, COORD_BITS, signed=True, doc="r_ij y, format coord"),
    Field("dx", 0, COORD_BITS, signed=True, doc="r_ij x, format coord"),
))
OUTPUT_HEADER = Word("output_header", HEADER, (
    KIND,
    Field("tag", 50, TAG_BITS, doc="the input header's tag"),
    Field("n", 40, COUNT_BITS, doc="records that follow"),
    Field("flags", 32, FLAG_BITS, doc="atom flags, contract.flags"),
    Field("energy", 0, ENERGY_BITS, signed=True, doc="energy, format E, without the per-type bias"),
))
OUTPUT_RECORD = Word("output_record", RECORD, (
    KIND,
    Field("saturated", 61, 1, doc="a value of this record saturated"),
    Field("reserved", 60, 1),
    Field("dEdz", 40, FORCE_BITS, signed=True, doc="dE/dr_ij z, format F"),
    Field("dEdy", 20, FORCE_BITS, signed=True, doc="dE/dr_ij y, format F"),
    Field("dEdx", 0, FORCE_BITS, signed=True, doc="dE/dr_ij x, format F"),
))
WORDS = (INPUT_HEADER, INPUT_RECORD, OUTPUT_HEADER, OUTPUT_RECORD)

#: The three components of a record's vector, x first (axis a of an (..., 3) array).
INPUT_AXES = tuple(INPUT_RECORD[n] for n in ("dx", "dy", "dz"))
OUTPUT_AXES = tuple(OUTPUT_RECORD[n] for n in ("dEdx", "dEdy", "dEdz"))


def tag_of(index):
    """The wire tag of atom `index` (an int or an integer array): the index wrapped to TAG_BITS."""
    return index & ((1 << TAG_BITS) - 1)


def kind(word):
    """PAD, HEADER or RECORD of a word, or of each word of an array."""
    return KIND.get(word)


def markdown(direction: str) -> str:
    """The words of one direction ("input" or "output") as the Markdown table of docs/ARCHITECTURE.md."""
    def bits(f):
        return f"{f.hi}:{f.lo}" if f.width > 1 else f"{f.lo}"

    def describe(f):
        if f.reserved:
            return f"{bits(f)} zero"
        return f"{bits(f)} {f.name} ({'s' if f.signed else 'u'}{f.width}{': ' + f.doc if f.doc else ''})"

    lines = [f"| word | bits {bits(KIND)} | fields |", "|---|---|---|"]
    for w in WORDS:
        if w.name.startswith(direction):
            fields = " · ".join(describe(f) for f in w.fields if f is not KIND)
            lines.append(f"| {KIND_NAMES[w.kind]} | `{w.kind:0{KIND.width}b}` | {fields} |")
    pad = "ignored" if direction == "input" else "unused slot of a beat"
    lines.append(f"| PAD | `{PAD:0{KIND.width}b}` | {pad} |")
    return "\n".join(lines) + "\n"


# ---- the codec ------------------------------------------------------------------------------------
# Vectorized over atoms and records.  The field positions come from the table above; the operations
# are written for speed: fields packed in int64, the kind OR-ed in after the view as uint64, and no
# helper function around a large temporary (NumPy reuses a temporary in place only when nothing else
# refers to it, which a function argument does).

_I_CTYPE, _I_COUNT, _I_TAG = INPUT_HEADER["ctype"], INPUT_HEADER["count"], INPUT_HEADER["tag"]
_I_TYPE = INPUT_RECORD["type"]
_O_TAG, _O_N, _O_FLAGS, _O_ENERGY = (OUTPUT_HEADER[n] for n in ("tag", "n", "flags", "energy"))
_O_SAT = OUTPUT_RECORD["saturated"]


def _u64(x):
    return np.asarray(x, dtype=np.int64).astype(np.uint64)


def _put(values, f: Field, wrap: bool = False):
    """Unsigned header values in place as uint64.  `wrap`: take the low bits (tags, two's complement);
    otherwise a value outside the field is an error, never a neighbouring field's bits."""
    v = np.asarray(values, dtype=np.int64)
    if wrap:
        v = v & f.mask
    elif v.size and (v.min() < 0 or v.max() > f.mask):
        raise OverflowError(f"{f.name} outside 0..{f.mask}: {int(v.min())}..{int(v.max())}")
    u = v.astype(np.uint64)
    if f.lo:
        u <<= np.uint64(f.lo)
    return u


# ---- host -> pipeline ------------------------------------------------------------------------------

def input_header(ctype, count, tag) -> np.ndarray:
    """Header words; the tag wraps (`tag_of`), a type or count outside its field is an OverflowError."""
    return (np.uint64(INPUT_HEADER.kind_bits) | _put(ctype, _I_CTYPE) | _put(count, _I_COUNT)
            | _put(tag, _I_TAG, wrap=True))


def input_record(rtype, d) -> np.ndarray:
    """Record words.  d: (..., 3) int64 in the coord format (must fit COORD_BITS signed: else
    OverflowError); rtype: neighbour types, 0 <= rtype < 2**TYPE_BITS (not checked: per record)."""
    d = np.asarray(d, dtype=np.int64)
    dx, dy, dz = INPUT_AXES
    if d.size and (d.min() < dx.min or d.max() > dx.max):
        raise OverflowError(f"record displacement does not fit {COORD_BITS} bits")
    # Fields in int64 (below the kind), the kind bits after viewing as uint64: fewer passes.
    w = d[..., 0] & dx.mask
    if dx.lo:
        w <<= dx.lo
    w |= (d[..., 1] & dy.mask) << dy.lo
    w |= (d[..., 2] & dz.mask) << dz.lo
    w |= np.asarray(rtype, dtype=np.int64) << _I_TYPE.lo
    return np.asarray(w).view(np.uint64) | np.uint64(INPUT_RECORD.kind_bits)


def decode_input_record(word):
    """(type, d (..., 3))"""
    return _I_TYPE.get(word), np.stack([f.get(word) for f in INPUT_AXES], axis=-1)


def decode_input_header(word):
    """(ctype, count, tag)"""
    return _I_CTYPE.get(word), _I_COUNT.get(word), _I_TAG.get(word)


# ---- pipeline -> host ------------------------------------------------------------------------------

def output_header(tag, n, flags, energy) -> np.ndarray:
    """Result header words; the tag wraps, the energy is taken as ENERGY_BITS two's complement."""
    return (np.uint64(OUTPUT_HEADER.kind_bits) | _put(tag, _O_TAG, wrap=True) | _put(n, _O_N)
            | _put(flags, _O_FLAGS) | _put(energy, _O_ENERGY, wrap=True))


def output_record(f, sat) -> np.ndarray:
    """Result record words: f (..., 3) in format F (taken as FORCE_BITS two's complement), sat 0/1."""
    f = np.asarray(f, dtype=np.int64)
    w = np.uint64(OUTPUT_RECORD.kind_bits) | (_u64(sat) << np.uint64(_O_SAT.lo))
    for a, fa in enumerate(OUTPUT_AXES):
        w = w | (_u64(f[..., a] & fa.mask) << np.uint64(fa.lo))
    return w


def decode_output_header(word):
    """(tag, n, flags, energy)"""
    return _O_TAG.get(word), _O_N.get(word), _O_FLAGS.get(word), _O_ENERGY.get(word)


def decode_output_record(word):
    """(dE/dr (..., 3), saturated)"""
    return np.stack([f.get(word) for f in OUTPUT_AXES], axis=-1), _O_SAT.get(word)


def result_beats(header_word, lanes: int) -> int:
    """Beats an atom's results take on the output stream: its header beat and ceil(n / lanes) record
    beats (how a reader cuts the stream into atoms)."""
    return 1 + -(-_O_N.get(int(header_word)) // lanes)


# ---- whole streams ---------------------------------------------------------------------------------

def encode_atoms(center_type, nbr_type, nbr_d, lanes: int, tags=None) -> np.ndarray:
    """Per-atom blocks (type -1 = empty slot) -> (beats, lanes) uint64 words (vectorized).

    Each atom becomes one header beat and ceil(count / lanes) record beats.  `tags` default to the
    atoms' indices; they wrap to TAG_BITS.
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
    dropped before the pipeline), tags (N,) (wrapping); saturated (N, M) per-record bit (default: none).
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
