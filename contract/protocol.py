"""The device service's protocol: frames, message types, the STRUCTURE and FORCES headers.

host/service.py speaks it in Python (the service, `SocketDevice`); the LAMMPS plugin (host/lammps/)
in C++, through contract/include/dpfpga/protocol.h, which `python -m contract headers` writes from
this module (tests/contract/test_headers.py checks that the committed header is its output and that
the C++ structs have the sizes of these `struct.Struct`s).

Every message is a frame: a `FRAME_HEADER` (magic MAGIC, protocol version, message type, payload
length; 16 bytes), then the payload.  All numbers are little-endian.

| type | code | direction | payload |
|---|---|---|---|
| HELLO   | 1 | client → service | JSON {protocol: int, model_hash: str *or* model_file: str, pid: int} |
| WELCOME | 2 | service → client | JSON {device: str, lanes: int, model_hash: str, pid: int, client_id: int, type_map: [str], rcut: float, sel: [int]} |
| CHUNK   | 3 | client → service | u64 n_atoms, then n × lanes beats as uint64 (the wire format, contract/wire.py) |
| RESULT  | 4 | service → client | the chunk's output beats, uint64 (a multiple of lanes words) |
| ERROR   | 5 | either way       | JSON {message: str} (human-readable) |
| BYE     | 6 | client → service | empty: the client is done |
| STRUCTURE | 7 | client → service | `STRUCTURE_HEADER` (nlocal, nall, npairs, want, 0) then x f64[nall,3], atom id i64[nall], model type i32[nall], numneigh i32[nlocal], neighbours i32[npairs] |
| FORCES  | 8 | service → client | `FORCES_HEADER` (nall, nlocal, have, below_rmin) then FORCES_SCALARS f64 (energy, virial xx yy zz xy xz yz, timings), forces f64[nall,3], per-atom energy f64[nlocal] (have & WANT_EATOM), per-atom virial f64[nall,6] (have & WANT_VATOM) |

A client that knows no model hash (the C++ plugin cannot hash an .npz) names its model file instead.
`want` (STRUCTURE): WANT_EATOM asks for per-atom energies, WANT_VATOM for per-atom virials,
ALLOW_BELOW_RMIN allows pairs closer than the model's r_min (otherwise such a pair is an ERROR naming
both atoms); FORCES's `have` holds the first two as granted, `below_rmin` counts the neighbour
records below r_min that were evaluated (0 unless allowed).  Numbers cross as float64 converted once
from fixed point (exact: integers times a power of two).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

PROTOCOL_VERSION = 3  # 3: want bit 2 (allow pairs below r_min), FORCES's below_rmin count
MAGIC = b"DPFG"

HELLO, WELCOME, CHUNK, RESULT, ERROR, BYE, STRUCTURE, FORCES = 1, 2, 3, 4, 5, 6, 7, 8
MESSAGE_NAMES = {HELLO: "HELLO", WELCOME: "WELCOME", CHUNK: "CHUNK", RESULT: "RESULT", ERROR: "ERROR", BYE: "BYE",
                 STRUCTURE: "STRUCTURE", FORCES: "FORCES"}

#: STRUCTURE's `want` bits (FORCES's `have`: the first two, as granted).
WANT_EATOM, WANT_VATOM, ALLOW_BELOW_RMIN = 1, 2, 4
WANT_BITS = {"WANT_EATOM": (WANT_EATOM, "per-atom energies"), "WANT_VATOM": (WANT_VATOM, "per-atom virials"),
             "ALLOW_BELOW_RMIN": (ALLOW_BELOW_RMIN, "evaluate pairs closer than r_min (else an ERROR)")}

#: The f64 scalars between FORCES's header and its forces: (name, count), in order.
FORCES_SCALAR_FIELDS = (("energy", 1), ("virial", 6), ("timings", 4))
#: Offset of each FORCES scalar field, in doubles after the header; FORCES_SCALARS doubles in all.
FORCES_OFFSETS = {name: sum(n for _, n in FORCES_SCALAR_FIELDS[:k]) for k, (name, _) in enumerate(FORCES_SCALAR_FIELDS)}
FORCES_SCALARS = sum(n for _, n in FORCES_SCALAR_FIELDS)
#: Order of the six virial components (LAMMPS's), of the four timings (seconds, the service's stages).
VIRIAL_ORDER = ("xx", "yy", "zz", "xy", "xz", "yz")
TIMINGS = ("neighbors_encode", "device_wait", "assemble", "total")

#: Largest payload either side accepts by default (`python -m host serve --max-payload-mb`): a 4096-atom
#: GeTe chunk is about 2 MB; a STRUCTURE about 300 B per local atom (1.7M atoms on one rank: ~0.5 GB).
MAX_PAYLOAD = 1 << 30
#: Once the first byte of a frame has arrived, the rest must arrive (or be taken by the peer) within this.
FRAME_TIMEOUT = 60.0

#: struct codes -> C++ types of the packed structs in protocol.h.
C_TYPES = {"H": "uint16_t", "I": "uint32_t", "Q": "uint64_t"}


@dataclass(frozen=True)
class Header:
    """A fixed-size little-endian header: `fields` (name, struct code, description) in order;
    `struct` packs and unpacks it in Python, `c_name` is its packed struct in protocol.h."""

    c_name: str
    fields: tuple[tuple[str, str, str], ...]
    struct: struct.Struct = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "struct", struct.Struct("<" + "".join(code for _, code, _ in self.fields)))


FRAME = Header("FrameHeader", (("magic", "4s", "MAGIC"), ("version", "H", "PROTOCOL_VERSION"),
                               ("type", "H", "message type"), ("length", "Q", "payload bytes")))
STRUCTURE_FIELDS = Header("StructureHeader", (
    ("nlocal", "Q", "local atoms (first in x)"), ("nall", "Q", "local + ghost atoms"),
    ("npairs", "Q", "neighbour indices (sum of numneigh)"), ("want", "I", "WANT_* bits"),
    ("reserved", "I", "0")))
FORCES_FIELDS = Header("ForcesHeader", (
    ("nall", "Q", "atoms with forces"), ("nlocal", "Q", "local atoms"), ("have", "I", "WANT_EATOM | WANT_VATOM as sent"),
    ("below_rmin", "I", "neighbour records below r_min evaluated")))
HEADERS = (FRAME, STRUCTURE_FIELDS, FORCES_FIELDS)

FRAME_HEADER = FRAME.struct
STRUCTURE_HEADER = STRUCTURE_FIELDS.struct
FORCES_HEADER = FORCES_FIELDS.struct
