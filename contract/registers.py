"""The PCIe shell's register map, as data: declared once, read by the gateware, the host and the card
simulator, and written as regmap.json, the docs' address map and contract/include/dpfpga/regs.h.

`shell_registers(lanes, model_hash)` declares every register (name, byte offset, access, description,
bit fields, the value of the read-only constants).  From that one object:

* gen/shell/registers.py builds the AXI4-Lite slave (`RegisterBlock`);
* `RegisterSet.regmap()` is the host's `RegisterMap`, written as JSON next to the Vivado project
  (out/vu9p/regmap.json) and read by `host.devices.xdma.XdmaDevice(regmap=PATH)` and
  `sim.xdma_card.XdmaCard(regmap=PATH)`; `RegisterMap.default()` is the same map;
* `markdown_table` is the address map of docs/ARCHITECTURE.md (tests/gen/test_shell.py compares);
* `python -m contract headers` writes the offsets, bits, magic and version as C++ constants.

All registers are 32 bits, little-endian, at 4-byte aligned byte offsets in a BAR_SIZE map.

JSON form (`RegisterMap.to_json` / `from_json`):

    {"format": "dpfpga-regmap", "version": 1, "size": 4096, "magic": 1685087847,
     "registers": [{"name": "MAGIC", "offset": 0, "access": "ro", "description": "...",
                    "bits": {}}, ...]}

`bits` names single-bit fields; code asks `regmap.bit("CONTROL", "enable")` rather than spelling a mask.
`RegisterFile(fd, regmap)` reads and writes the registers of an open file with pread/pwrite, which is
how the XDMA driver's `<prefix>_user` device exposes the BAR (and how the card simulator's plain
4 KiB file stands in for it).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .flags import FLAGS
from .wire import OUTPUT_RECORD

FORMAT = "dpfpga-regmap"
MAP_VERSION = 1
#: "dpfg" as a big-endian string: easy to spot in a hex dump of the BAR.
SHELL_MAGIC = int.from_bytes(b"dpfg", "big")
#: Version of the register map / shell interface, read by the host from VERSION.
SHELL_VERSION = 1
BAR_SIZE = 4096
DATA_BITS = 32
ACCESS = ("ro", "rw")
HASH_WORDS = 8

#: registers every map must have (the host relies on them)
REQUIRED = ("MAGIC", "VERSION", "LANES", "CONTROL", "STATUS", "FLAGS", "ATOMS_IN", "ATOMS_OUT",
            "RECORDS_IN", *(f"MODEL_HASH{k}" for k in range(HASH_WORDS)))
#: bit fields the host relies on
REQUIRED_BITS = {"CONTROL": ("enable", "reset"), "STATUS": ("busy", "error")}


# ---- the declaration ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One named bit of a register."""
    name: str
    bit: int
    description: str = ""
    self_clearing: bool = False  # rw bits only: reads back 1 for one cycle after it is written


@dataclass(frozen=True)
class Reg:
    """One 32-bit register.  access "ro": the card drives it (a port of the block, or `const`);
    "rw": the host writes it, the block holds it and drives a port with its value."""
    name: str
    offset: int
    access: str
    description: str
    fields: tuple[Field, ...] = ()
    const: int | None = None  # "ro" registers with a value fixed at build time (no port)
    reset: int = 0  # "rw" registers: value after reset

    @property
    def port(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class RegisterSet:
    """The shell's registers and the map size; `regmap()` is the host's view of the same object."""
    regs: tuple[Reg, ...]
    size: int = BAR_SIZE
    magic: int = SHELL_MAGIC
    notes: dict = field(default_factory=dict)

    def __iter__(self):
        return iter(self.regs)

    def __getitem__(self, name: str) -> Reg:
        for r in self.regs:
            if r.name == name:
                return r
        raise KeyError(name)

    def regmap(self) -> "RegisterMap":
        """The host's RegisterMap of this set (validated: REQUIRED registers and bits present)."""
        return RegisterMap([Register(r.name, r.offset, r.access, r.description, {f.name: f.bit for f in r.fields})
                            for r in self.regs], size=self.size, magic=self.magic)


#: FLAGS register bits: the per-atom flags of contract.flags, bit for bit.
FLAG_FIELDS = tuple(Field(name, mask.bit_length() - 1, text) for mask, name, text in FLAGS)


def shell_registers(lanes: int, model_hash: str) -> RegisterSet:
    """The shell's registers for a pipeline of `lanes` words per beat and a model of hash `model_hash`
    (64 hex digits, the model file's content hash).  Only the constants' values depend on them."""
    words = hash_words(model_hash)
    regs = [
        Reg("MAGIC", 0x00, "ro", f"{SHELL_MAGIC:#010x} ('dpfg'): a dpfpga shell answers here", const=SHELL_MAGIC),
        Reg("VERSION", 0x04, "ro", "version of the register map / shell interface", const=SHELL_VERSION),
        Reg("LANES", 0x08, "ro", "64-bit wire words per pipeline beat", const=lanes),
        Reg("CONTROL", 0x0C, "rw", "bit0 enable (accept h2c input), bit1 soft reset (self-clearing)",
            (Field("enable", 0, "accept input beats from h2c; clear: h2c is back-pressured"),
             Field("reset", 1, "soft reset of pipeline, adapters and counters (one-cycle pulse)", self_clearing=True))),
        Reg("STATUS", 0x10, "ro", "bit0 busy (ATOMS_IN != ATOMS_OUT), bit1 error (sticky until soft reset), "
            "bit2 partial (an h2c word arrived with partial TKEEP: the cause of error)",
            (Field("busy", 0, "atoms in flight"), Field("error", 1, "sticky: some error since reset"),
             Field("partial", 2, "sticky: an h2c 64-bit word with only some TKEEP bits set (dropped as PAD)"))),
        Reg("FLAGS", 0x14, "ro", "sticky OR of the per-atom flags of every result sent (header flags, "
            f"SATURATED from record bit {OUTPUT_RECORD['saturated'].lo})", FLAG_FIELDS),
        Reg("ATOMS_IN", 0x18, "ro", "input headers accepted by the pipeline since reset (wraps at 2**32)"),
        Reg("ATOMS_OUT", 0x1C, "ro", "result headers sent since reset (wraps at 2**32)"),
        Reg("RECORDS_IN", 0x20, "ro", "input records accepted by the pipeline since reset (wraps at 2**32)"),
        Reg("RECORDS_OUT", 0x24, "ro", "result records sent since reset (wraps at 2**32)"),
    ]
    regs += [Reg(f"MODEL_HASH{k}", 0x40 + 4 * k, "ro", f"model SHA-256, hex digits {8 * k}..{8 * k + 7}",
                 const=words[k]) for k in range(HASH_WORDS)]
    return RegisterSet(tuple(regs))


def markdown_table(regs: RegisterSet) -> str:
    """The address map as a Markdown table (docs/ARCHITECTURE.md holds this text; a test compares)."""
    lines = ["| offset | name | access | contents |", "|---|---|---|---|"]
    for r in regs:
        fields = ", ".join(f"{f.bit} {f.name}" for f in r.fields)
        lines.append(f"| {r.offset:#05x} | {r.name} | {r.access} | {r.description}"
                     f"{' (bits: ' + fields + ')' if fields else ''} |")
    return "\n".join(lines) + "\n"


# ---- the model hash as register words ------------------------------------------------------------

def hash_words(hex_hash: str) -> list[int]:
    """SHA-256 hex digest -> HASH_WORDS u32 words, word 0 = the first 8 hex digits."""
    if len(hex_hash) != 8 * HASH_WORDS:
        raise ValueError(f"expected a {8 * HASH_WORDS}-digit SHA-256 hex digest, got {hex_hash!r}")
    return [int(hex_hash[8 * k:8 * k + 8], 16) for k in range(HASH_WORDS)]


def words_hash(words) -> str:
    """Inverse of hash_words."""
    return "".join(f"{int(w) & ((1 << DATA_BITS) - 1):08x}" for w in words)


# ---- the map as the host and the card simulator read it ------------------------------------------

class RegisterMapError(ValueError):
    """A register map (usually from JSON) is incomplete or inconsistent."""


@dataclass(frozen=True)
class Register:
    name: str
    offset: int  # byte offset in the BAR, multiple of 4
    access: str  # "ro" (the card writes it) or "rw" (the host writes it)
    description: str = ""
    bits: dict = field(default_factory=dict)  # field name -> bit index

    def to_dict(self) -> dict:
        return {"name": self.name, "offset": self.offset, "access": self.access,
                "description": self.description, "bits": dict(self.bits)}


class RegisterMap:
    """An immutable, validated set of registers, looked up by name: the gateware's map
    (`RegisterSet.regmap()`, `default()`) or one read from JSON, which may move every register."""

    def __init__(self, registers, size: int = BAR_SIZE, magic: int = SHELL_MAGIC):
        self.registers = tuple(registers)
        self.size, self.magic = int(size), int(magic)
        self._by_name = {r.name: r for r in self.registers}
        self._validate()

    # -- lookups ----------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Register:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"register map has no register {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self.registers)

    def offset(self, name: str) -> int:
        return self[name].offset

    def bit(self, name: str, field_name: str) -> int:
        """Mask of one named bit, e.g. bit("CONTROL", "enable") -> 0x1."""
        return 1 << self[name].bits[field_name]

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def default(cls) -> "RegisterMap":
        """The map of the gateware (`shell_registers`): where a card built by this version answers."""
        return shell_registers(lanes=1, model_hash="0" * 8 * HASH_WORDS).regmap()

    def moved(self, delta: int) -> "RegisterMap":
        """The same registers `delta` bytes further into the BAR (a test and relocation aid)."""
        return RegisterMap([Register(r.name, r.offset + delta, r.access, r.description, dict(r.bits))
                            for r in self.registers], size=self.size, magic=self.magic)

    def _validate(self):
        missing = [n for n in REQUIRED if n not in self._by_name]
        if missing:
            raise RegisterMapError(f"register map lacks {', '.join(missing)}")
        if len(self._by_name) != len(self.registers):
            raise RegisterMapError("register map names a register twice")
        seen = {}
        for r in self.registers:
            if r.access not in ACCESS:
                raise RegisterMapError(f"{r.name}: access {r.access!r} is not one of {ACCESS}")
            if r.offset % 4 or not 0 <= r.offset <= self.size - 4:
                raise RegisterMapError(f"{r.name}: offset {r.offset:#x} is not 4-aligned inside the "
                                       f"{self.size}-byte BAR")
            if r.offset in seen:
                raise RegisterMapError(f"{r.name} and {seen[r.offset]} share offset {r.offset:#x}")
            seen[r.offset] = r.name
            if any(not 0 <= b < DATA_BITS for b in r.bits.values()):
                raise RegisterMapError(f"{r.name}: bit index outside 0..{DATA_BITS - 1} in {r.bits}")
        for name, fields in REQUIRED_BITS.items():
            lacking = [f for f in fields if f not in self[name].bits]
            if lacking:
                raise RegisterMapError(f"{name} lacks bit field(s) {', '.join(lacking)}")

    # -- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": MAP_VERSION, "size": self.size, "magic": self.magic,
                "registers": [r.to_dict() for r in self.registers]}

    def to_json(self, path: str | Path | None = None) -> str:
        """The map as JSON text; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "RegisterMap":
        if d.get("format") != FORMAT:
            raise RegisterMapError(f"not a register map (format {d.get('format')!r}, expected {FORMAT!r})")
        if d.get("version") != MAP_VERSION:
            raise RegisterMapError(f"register map version {d.get('version')!r}; this host reads {MAP_VERSION}")
        try:
            regs = [Register(str(r["name"]), int(r["offset"]), str(r["access"]), str(r.get("description", "")),
                             {str(k): int(v) for k, v in r.get("bits", {}).items()}) for r in d["registers"]]
        except (KeyError, TypeError, ValueError) as e:
            raise RegisterMapError(f"malformed register entry: {e}") from e
        return cls(regs, size=int(d.get("size", BAR_SIZE)), magic=int(d.get("magic", SHELL_MAGIC)))

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "RegisterMap":
        """Parse JSON text, or read it from a path."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            try:
                text = path.read_text()
            except OSError as e:
                raise RegisterMapError(f"cannot read register map {path}: {e}") from e
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise RegisterMapError(f"register map is not valid JSON: {e}") from e


def load(regmap: "RegisterMap | str | Path | None") -> RegisterMap:
    """None -> the built-in map; a RegisterMap as is; otherwise JSON text or a path to it."""
    if regmap is None:
        return RegisterMap.default()
    if isinstance(regmap, RegisterMap):
        return regmap
    return RegisterMap.from_json(regmap)


class RegisterFile:
    """32-bit registers of an open BAR file, by name, through pread/pwrite (little-endian u32).

    side="host" refuses writes to read-only registers (the card owns them); the card simulator uses
    side="card", which may write any register.
    """

    WORD = struct.Struct("<I")

    def __init__(self, fd: int, regmap: RegisterMap, side: str = "host"):
        self.fd, self.map, self.side = fd, regmap, side

    def read(self, name: str) -> int | None:
        """The register's value, or None when the file is too short to hold it."""
        raw = os.pread(self.fd, self.WORD.size, self.map.offset(name))
        return self.WORD.unpack(raw)[0] if len(raw) == self.WORD.size else None

    def write(self, name: str, value: int) -> None:
        reg = self.map[name]
        if self.side == "host" and reg.access != "rw":
            raise PermissionError(f"register {name} is read-only for the host")
        os.pwrite(self.fd, self.WORD.pack(int(value) & ((1 << DATA_BITS) - 1)), reg.offset)

    def snapshot(self, names=None) -> dict:
        return {n: self.read(n) for n in (names or [r.name for r in self.map])}
