"""The wire format's field table (contract/wire.py) and the rule that nothing copies it by hand.

* the table covers each 64-bit word exactly: every bit belongs to one field, reserved zeros included;
* the vectorized codec round-trips seeded random atoms and results, bit for bit;
* no source above the contract spells a wire, flag, protocol or register constant itself: a scan of
  model/, gen/, sim/, host/ (Python) and of the C++ in host/lammps/ and sim/harness/ for the telltale
  patterns of a hand copy fails naming the file and line.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from contract import flags, wire
from support import REPO


# ---- the table ------------------------------------------------------------------------------------

@pytest.mark.parametrize("word", wire.WORDS, ids=lambda w: w.name)
def test_each_word_is_covered_exactly_once_by_its_fields(word):
    owner = {}
    for f in word:
        assert f.width > 0, f
        for bit in range(f.lo, f.lo + f.width):
            assert bit not in owner, f"{word.name}: bit {bit} is in {owner.get(bit)} and {f.name}"
            owner[bit] = f.name
    assert sorted(owner) == list(range(wire.WORD_BITS)), f"{word.name}: bits {set(range(64)) - set(owner)} unaccounted"
    assert word.fields[0] is wire.KIND and [f.lo for f in word] == sorted((f.lo for f in word), reverse=True)
    assert len({f.name for f in word}) == len(word.fields)


def test_the_table_holds_the_documented_widths_and_codes():
    assert wire.KIND.lo + wire.KIND.width == wire.WORD_BITS and len(wire.KIND_NAMES) <= 1 << wire.KIND.width
    assert (wire.PAD, wire.HEADER, wire.RECORD) == (0, 1, 2)
    assert [w.kind for w in wire.WORDS] == [wire.HEADER, wire.RECORD, wire.HEADER, wire.RECORD]
    ih, ir, oh, orec = wire.WORDS
    assert ih["ctype"].width == ir["type"].width == wire.TYPE_BITS
    assert ih["count"].width == oh["n"].width == wire.COUNT_BITS
    assert ih["tag"].width == oh["tag"].width == wire.TAG_BITS
    assert oh["flags"].width == flags.FLAG_BITS and max(m for m, _, _ in flags.FLAGS) < 1 << flags.FLAG_BITS
    assert all(f.width == wire.COORD_BITS and f.signed for f in wire.INPUT_AXES)
    assert all(f.width == wire.FORCE_BITS and f.signed for f in wire.OUTPUT_AXES)
    assert oh["energy"].width == wire.ENERGY_BITS and oh["energy"].signed
    # One word pinned bit by bit, so that a change of the table is a decision, not an accident.
    assert int(wire.input_header(3, 17, 4097)) == 0x4C11_0010_0000_0000
    assert int(wire.output_record(np.array([-1, 0, 1]), 1)) == 0xA000_0100_000F_FFFF


def test_the_docs_show_the_table():
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    for direction in ("input", "output"):
        assert wire.markdown(direction) in doc, f"docs/ARCHITECTURE.md lacks:\n{wire.markdown(direction)}"


def test_field_get_is_the_same_on_ints_and_arrays():
    rng = np.random.default_rng(5)
    words = rng.integers(0, 2 ** 63, 200, dtype=np.uint64) | (rng.integers(0, 2, 200, dtype=np.uint64) << np.uint64(63))
    for w in wire.WORDS:
        for f in w:
            arr = f.get(words)
            assert arr.dtype == np.int64
            assert [f.get(int(x)) for x in words] == arr.tolist() == [f.get(x) for x in words]
            assert arr.min() >= f.min and arr.max() <= f.max


def test_tags_wrap_at_the_tag_width():
    assert wire.tag_of(4095) == 4095 and wire.tag_of(4096) == 0 and wire.tag_of(np.arange(4094, 4099)).tolist() == [4094, 4095, 0, 1, 2]
    beats = wire.encode_atoms([0, 0], np.full((2, 1), -1), np.zeros((2, 1, 3)), 1, tags=[4096 + 7, 3 * 4096 - 1])
    assert wire.decode_atoms(beats)[3].tolist() == [7, 4095]


# ---- the codec ------------------------------------------------------------------------------------

def random_atoms(rng, n=60, m=23, ntypes=3):
    """Atoms with scattered empty slots (type -1) and the extremes of the coordinate format."""
    ct = rng.integers(0, ntypes, n)
    nt = np.where(rng.random((n, m)) < 0.3, -1, rng.integers(0, ntypes, (n, m)))
    nt[0] = -1  # an atom without records
    d = rng.integers(-(1 << 17), 1 << 17, (n, m, 3))
    d[1, :3] = [[-(1 << 17)] * 3, [(1 << 17) - 1] * 3, [0, -1, 1]]
    nt[1, :3] = 0
    d[nt < 0] = 0
    return ct, nt, d


@pytest.mark.parametrize("lanes", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_atoms_round_trip(lanes, seed):
    rng = np.random.default_rng(seed)
    ct, nt, d = random_atoms(rng)
    tags = rng.integers(0, 1 << 20, len(ct))
    beats = wire.encode_atoms(ct, nt, d, lanes, tags=tags)
    k = wire.kind(beats)
    assert beats.shape[1] == lanes and (k[:, 0] == wire.HEADER).sum() == len(ct)
    heads = beats[k[:, 0] == wire.HEADER, 0]
    recs = beats[k == wire.RECORD]
    assert (wire.INPUT_HEADER["reserved"].get(heads) == 0).all() and (wire.INPUT_RECORD["reserved"].get(recs) == 0).all()
    ct2, nt2, d2, tags2 = wire.decode_atoms(beats)
    count = (nt >= 0).sum(1)
    assert (ct2 == ct).all() and (tags2 == wire.tag_of(tags)).all() and ((nt2 >= 0).sum(1) == count).all()
    for a in range(len(ct)):  # records compacted to the front, order kept
        valid = nt[a] >= 0
        assert (nt2[a, :count[a]] == nt[a, valid]).all() and (d2[a, :count[a]] == d[a, valid]).all()


@pytest.mark.parametrize("lanes", [1, 2, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_results_round_trip(lanes, seed):
    rng = np.random.default_rng(100 + seed)
    n, m = 50, 17
    energy = rng.integers(-(1 << 31), 1 << 31, n)
    energy[:2] = [-(1 << 31), (1 << 31) - 1]
    dEdr = rng.integers(-(1 << 19), 1 << 19, (n, m, 3))
    count = rng.integers(0, m + 1, n)
    fl = rng.integers(0, 1 << 5, n)
    tags = rng.integers(0, 1 << 16, n)
    sat = rng.random((n, m)) < 0.05
    beats = wire.encode_results(energy, dEdr, fl, count, tags, lanes, saturated=sat)
    assert len(beats) == sum(wire.result_beats(h, lanes) for h in beats[wire.kind(beats[:, 0]) == wire.HEADER, 0])
    e2, f2, fl2, tags2 = wire.decode_results(beats, n, m)
    keep = np.arange(m) < count[:, None]
    sat_atom = (sat & keep).any(1)
    assert (e2 == energy).all() and (tags2 == wire.tag_of(tags)).all()
    assert (fl2 == (fl | np.where(sat_atom, flags.FLAG_SATURATED, 0))).all()
    assert (f2[keep] == dEdr[keep]).all() and (f2[~keep] == 0).all()


def test_values_outside_their_fields_are_refused():
    with pytest.raises(OverflowError, match="18 bits"):
        wire.input_record(0, [1 << 17, 0, 0])
    with pytest.raises(OverflowError, match="count"):
        wire.input_header(0, 1 << wire.COUNT_BITS, 0)
    with pytest.raises(OverflowError, match="ctype"):
        wire.input_header(-1, 0, 0)
    with pytest.raises(OverflowError, match="flags"):
        wire.output_header(0, 0, 1 << flags.FLAG_BITS, 0)


# ---- hand copies ----------------------------------------------------------------------------------

#: (pattern, what it copies and where the one definition is).
HAND_COPIES = [
    (r"\b0x[fF]{3}\b", "the 12-bit tag mask (contract.wire.tag_of / TAG_BITS)"),
    (r"\b0x3[fF]{2}\b", "the 10-bit count mask (contract.wire field table)"),
    (r"(>>|<<)\s*(np\.uint64\(\s*)?62\b", "the kind field's shift (contract.wire.kind / KIND)"),
    (r">>\s*(np\.uint64\(\s*)?40\b", "the result count field's shift (contract.wire field table)"),
    (r"\[\s*(62\s*:\s*64|58\s*:\s*62|48\s*:\s*58|36\s*:\s*48|54\s*:\s*58|32\s*:\s*40)\s*\]",
     "a wire field's bits as a literal slice (gen.hdl wire.field / wire.pack)"),
    (r"\bKIND_(SHIFT|PAD|HEADER|RECORD)\b[^\n=]*=\s*\d", "the kind codes (contract.wire)"),
    (r"\b(WORD|TYPE|COUNT|TAG|COORD|FORCE|FLAG)_BITS\s*=\s*\d", "a wire field width (contract.wire)"),
    (r"\bFLAG_\w+\s*=\s*\d", "a flag bit (contract.flags)"),
    (r"""b?["']DPFG["']|'D',\s*'P',\s*'F',\s*'G'""", "the protocol magic (contract.protocol)"),
    (r"\bPROTOCOL_VERSION\s*=\s*\d", "the protocol version (contract.protocol)"),
    (r"\benum\s+(class\s+)?(MessageType|Want)\b", "the protocol's codes (contract/include/dpfpga/protocol.h)"),
    (r"\bstruct\s+(__attribute__\(\(packed\)\)\s+)?(FrameHeader|StructureHeader|ForcesHeader)\s*\{",
     "a protocol header struct (contract/include/dpfpga/protocol.h)"),
    (r"""["']<(4sHHQ|QQQII|QQII)["']""", "a protocol header struct (contract.protocol)"),
    (r"\bHELLO\b[^\n]*=\s*1\b", "the message type codes (contract.protocol)"),
    (r"\b(WANT_EATOM|WANT_VATOM|ALLOW_BELOW_RMIN)\b[^\n=]*=\s*\d", "the `want` bits (contract.protocol)"),
    (r"\bSHELL_(MAGIC|VERSION)\s*=\s*\d|0x64706667", "the shell's magic or version (contract.registers)"),
]
SCANNED = [("model", "*.py"), ("gen", "*.py"), ("sim", "*.py"), ("host", "*.py"),
           ("host/lammps", "*.h"), ("host/lammps", "*.cpp"), ("host/native", "*.h"), ("host/native", "*.cpp"),
           ("sim/harness", "*.cpp")]


def hand_copies(root=REPO) -> list[str]:
    """'path:line: text  <- what it copies' for every hand-copied constant under `root`."""
    pats = [(re.compile(p), why) for p, why in HAND_COPIES]
    found = []
    for folder, glob in SCANNED:
        for path in sorted((root / folder).rglob(glob)):
            for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for pat, why in pats:
                    if pat.search(line):
                        found.append(f"{path.relative_to(root)}:{no}: {line.strip()}  <- {why}")
    return found


def test_no_hand_copied_wire_flag_protocol_or_register_constant():
    found = hand_copies()
    assert not found, ("constants copied by hand instead of taken from contract/ (or its generated headers, "
                       "python -m contract headers):\n" + "\n".join(found))


def test_the_scan_sees_each_kind_of_hand_copy(tmp_path):
    """The scan itself, on a made-up tree: each pattern is found, and the file and line are named."""
    samples = ["tag & 0xFFF", "n = (w >> 40) & 0x3FF", "k = w >> 62", "h[58:62]", "KIND_SHIFT = 62",
               "TAG_BITS = 12", "FLAG_SATURATED = 2", 'MAGIC = b"DPFG"', "PROTOCOL_VERSION = 3",
               "HELLO, WELCOME = 1, 2", "SHELL_MAGIC = 0x64706667"]
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "x.py").write_text("ok = 1\n" + "\n".join(samples) + "\n")
    cpp = ["const char MAGIC[4] = {'D', 'P', 'F', 'G'};", "enum MessageType : uint16_t {",
           "struct __attribute__((packed)) FrameHeader {", "constexpr uint16_t PROTOCOL_VERSION = 3;"]
    (tmp_path / "host" / "lammps").mkdir()
    (tmp_path / "host" / "lammps" / "c.cpp").write_text("\n".join(cpp) + "\n")
    found = hand_copies(tmp_path)
    lines = {f.split(": ")[0] for f in found}
    assert lines == {f"host/x.py:{k}" for k in range(2, len(samples) + 2)} | \
        {f"host/lammps/c.cpp:{k}" for k in range(1, len(cpp) + 1)}, found
