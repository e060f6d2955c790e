"""The register map of the card's AXI4-Lite register block (the XDMA user BAR), as data.

This module is the one place that says where each register lives.  The host (`host.devices.xdma`) and
the card simulator (`sim.xdma_card`) both take a `RegisterMap` and look offsets up by name, so a map
written as JSON (`to_json`, later generated from the gateware) can move every register without a
code change.  All registers are 32 bits, little-endian, at 4-byte aligned byte offsets.

Built-in map (`RegisterMap.default()`):

    | offset | name          | access | contents                                                       |
    |--------|---------------|--------|----------------------------------------------------------------|
    | 0x000  | MAGIC         | ro     | 0x64706667 ("dpfg"): a dpfpga shell answers here               |
    | 0x004  | VERSION       | ro     | version of this register map / shell interface (1)             |
    | 0x008  | LANES         | ro     | 64-bit wire words per stream beat                              |
    | 0x00C  | CONTROL       | rw     | bit0 enable (accept input), bit1 soft reset (self-clearing)    |
    | 0x010  | STATUS        | ro     | bit0 busy (atoms in flight), bit1 error (sticky until reset)   |
    | 0x014  | FLAGS         | ro     | sticky OR of the per-atom flags of every result header sent    |
    | 0x018  | ATOMS_IN      | ro     | input headers accepted since reset (wraps at 2**32)            |
    | 0x01C  | ATOMS_OUT     | ro     | result headers sent since reset (wraps at 2**32)               |
    | 0x020  | RECORDS_IN    | ro     | input records accepted since reset (wraps at 2**32)            |
    | 0x040  | MODEL_HASH0   | ro     | SHA-256 of the model file, word 0 = its first 8 hex digits     |
    | ...    | ...           |        |                                                                |
    | 0x05C  | MODEL_HASH7   | ro     | ... word 7 = its last 8 hex digits                             |

JSON form (`to_json` / `from_json`):

    {"format": "dpfpga-regmap", "version": 1, "size": 4096, "magic": 1685087847,
     "registers": [{"name": "MAGIC", "offset": 0, "access": "ro", "description": "...",
                    "bits": {}}, ...]}

`bits` names single-bit fields (CONTROL: enable 0, reset 1; STATUS: busy 0, error 1); code asks
`regmap.bit("CONTROL", "enable")` rather than hard-coding the mask.

`RegisterFile(fd, regmap)` reads and writes the registers of an open file with pread/pwrite, which is
how the XDMA driver's `<prefix>_user` device exposes the BAR (and how the simulator's plain 4 KiB file
stands in for it).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = "dpfpga-regmap"
MAP_VERSION = 1
SHELL_MAGIC = 0x64706667  # "dpfg" as a big-endian string: easy to spot in a hex dump of the BAR
BAR_SIZE = 4096
ACCESS = ("ro", "rw")
HASH_WORDS = 8

#: registers every map must have (the host relies on them)
REQUIRED = ("MAGIC", "VERSION", "LANES", "CONTROL", "STATUS", "FLAGS", "ATOMS_IN", "ATOMS_OUT",
            "RECORDS_IN", *(f"MODEL_HASH{k}" for k in range(HASH_WORDS)))
#: bit fields the host relies on
REQUIRED_BITS = {"CONTROL": ("enable", "reset"), "STATUS": ("busy", "error")}


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
    """An immutable, validated set of registers, looked up by name."""

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
        r = [Register("MAGIC", 0x00, "ro", f"{SHELL_MAGIC:#010x}: a dpfpga shell answers here"),
             Register("VERSION", 0x04, "ro", "version of the register map / shell interface"),
             Register("LANES", 0x08, "ro", "64-bit wire words per stream beat"),
             Register("CONTROL", 0x0C, "rw", "bit0 enable (accept input), bit1 soft reset (self-clearing)",
                      {"enable": 0, "reset": 1}),
             Register("STATUS", 0x10, "ro", "bit0 busy (atoms in flight), bit1 error (sticky until reset)",
                      {"busy": 0, "error": 1}),
             Register("FLAGS", 0x14, "ro", "sticky OR of the per-atom flags of every result sent"),
             Register("ATOMS_IN", 0x18, "ro", "input headers accepted since reset (wraps)"),
             Register("ATOMS_OUT", 0x1C, "ro", "result headers sent since reset (wraps)"),
             Register("RECORDS_IN", 0x20, "ro", "input records accepted since reset (wraps)")]
        r += [Register(f"MODEL_HASH{k}", 0x40 + 4 * k, "ro",
                       f"model SHA-256, hex digits {8 * k}..{8 * k + 7}") for k in range(HASH_WORDS)]
        return cls(r)

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
            if any(not 0 <= b < 32 for b in r.bits.values()):
                raise RegisterMapError(f"{r.name}: bit index outside 0..31 in {r.bits}")
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


# ---- the model hash as register words ------------------------------------------------------------

def hash_words(hex_hash: str) -> list[int]:
    """SHA-256 hex digest -> 8 u32 words, word 0 = the first 8 hex digits."""
    if len(hex_hash) != 8 * HASH_WORDS:
        raise ValueError(f"expected a {8 * HASH_WORDS}-digit SHA-256 hex digest, got {hex_hash!r}")
    return [int(hex_hash[8 * k:8 * k + 8], 16) for k in range(HASH_WORDS)]


def words_hash(words) -> str:
    return "".join(f"{int(w) & 0xFFFFFFFF:08x}" for w in words)


# ---- access -------------------------------------------------------------------------------------

class RegisterFile:
    """32-bit registers of an open BAR file, by name, through pread/pwrite.

    side="host" refuses writes to read-only registers (the card owns them); the card simulator uses
    side="card", which may write any register.
    """

    def __init__(self, fd: int, regmap: RegisterMap, side: str = "host"):
        self.fd, self.map, self.side = fd, regmap, side

    def read(self, name: str) -> int | None:
        """The register's value, or None when the file is too short to hold it."""
        raw = os.pread(self.fd, 4, self.map.offset(name))
        return struct.unpack("<I", raw)[0] if len(raw) == 4 else None

    def write(self, name: str, value: int) -> None:
        reg = self.map[name]
        if self.side == "host" and reg.access != "rw":
            raise PermissionError(f"register {name} is read-only for the host")
        os.pwrite(self.fd, struct.pack("<I", int(value) & 0xFFFFFFFF), reg.offset)

    def snapshot(self, names=None) -> dict:
        return {n: self.read(n) for n in (names or [r.name for r in self.map])}
