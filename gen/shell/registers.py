"""The shell's AXI4-Lite register block, built from one Python description of its registers.

`shell_registers(lanes, model_hash)` declares every register once (name, byte offset, access,
description, bit fields, where its value comes from).  The same list makes

* the gateware: `RegisterBlock(regs)`, an AXI4-Lite slave with one port per register that the shell
  drives or reads, and
* the host's map: `to_regmap(regs)` -> host.devices.regmap.RegisterMap, written as JSON next to the
  Vivado project (out/vu9p/regmap.json) and read by `host.devices.xdma.XdmaDevice(regmap=PATH)`.

So an address can only change in one place, and the file the host reads is the one the gateware was
built from.  The offsets are the documented map of host.devices.regmap (MAGIC at 0x00 ... MODEL_HASH7
at 0x5C) plus RECORDS_OUT at 0x24 and the named bits of STATUS and FLAGS.

Bus behaviour (AXI4-Lite, 32-bit data, byte addresses; the XDMA BAR maps BAR offset 0 to address 0):

* read: ARREADY is high whenever no read response is waiting; RVALID follows the AR handshake by one
  cycle (latency 1) and holds until RREADY.  One read in flight.
* write: AWREADY and WREADY rise together, in the cycle both AWVALID and WVALID are high and no write
  response is waiting (AXI4-Lite lets a slave wait for both); BVALID follows one cycle later.  WSTRB
  byte enables are honoured on "rw" registers.
* unmapped offsets (inside or beyond the 4 KiB map) read as zero, writes to them or to read-only
  registers are ignored; every response is OKAY.  Why not SLVERR/DECERR: through the XDMA BAR an error
  response becomes a PCIe completer abort, which some hosts escalate to a machine check; reads-as-zero
  is also what the card simulator's plain register file does.  Only address bits [11:2] are decoded
  after checking that the higher ones are zero; AWPROT/ARPROT are ignored.
* self-clearing bits (CONTROL.reset) read back 1 for exactly one cycle after the write (the shell's
  soft reset is that one-cycle pulse), so a host that polls for 0 sees the reset done at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from contract.flags import FLAG_BAD_TYPE, FLAG_MALFORMED, FLAG_NEIGHBOR_OVERFLOW, FLAG_R_BELOW_MIN, FLAG_SATURATED
from host.devices import regmap as rm

#: Version of the register map / shell interface, read by the host from VERSION.
SHELL_VERSION = 1
DATA_BITS = 32
ADDR_BITS = 32
OKAY = 0b00


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
    size: int = rm.BAR_SIZE
    magic: int = rm.SHELL_MAGIC
    notes: dict = field(default_factory=dict)

    def __iter__(self):
        return iter(self.regs)

    def __getitem__(self, name: str) -> Reg:
        for r in self.regs:
            if r.name == name:
                return r
        raise KeyError(name)

    def regmap(self) -> rm.RegisterMap:
        return to_regmap(self)


FLAG_FIELDS = (Field("neighbor_overflow", FLAG_NEIGHBOR_OVERFLOW.bit_length() - 1, "more records of a type than sel"),
               Field("saturated", FLAG_SATURATED.bit_length() - 1, "a value clipped to its format (header or record bit)"),
               Field("r_below_min", FLAG_R_BELOW_MIN.bit_length() - 1, "a pair closer than r_min"),
               Field("bad_type", FLAG_BAD_TYPE.bit_length() - 1, "a type outside the type map"),
               Field("malformed", FLAG_MALFORMED.bit_length() - 1, "records missing or extra in the input stream"))


def shell_registers(lanes: int, model_hash: str) -> RegisterSet:
    """The shell's registers for a pipeline of `lanes` words per beat and a model of hash `model_hash`
    (64 hex digits, gen/model file content hash)."""
    words = rm.hash_words(model_hash)
    regs = [
        Reg("MAGIC", 0x00, "ro", f"{rm.SHELL_MAGIC:#010x} ('dpfg'): a dpfpga shell answers here", const=rm.SHELL_MAGIC),
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
            "SATURATED from record bit 61)", FLAG_FIELDS),
        Reg("ATOMS_IN", 0x18, "ro", "input headers accepted by the pipeline since reset (wraps at 2**32)"),
        Reg("ATOMS_OUT", 0x1C, "ro", "result headers sent since reset (wraps at 2**32)"),
        Reg("RECORDS_IN", 0x20, "ro", "input records accepted by the pipeline since reset (wraps at 2**32)"),
        Reg("RECORDS_OUT", 0x24, "ro", "result records sent since reset (wraps at 2**32)"),
    ]
    regs += [Reg(f"MODEL_HASH{k}", 0x40 + 4 * k, "ro", f"model SHA-256, hex digits {8 * k}..{8 * k + 7}",
                 const=words[k]) for k in range(rm.HASH_WORDS)]
    return RegisterSet(tuple(regs))


def to_regmap(regs: RegisterSet) -> rm.RegisterMap:
    """The host's RegisterMap of a RegisterSet (validated: REQUIRED registers and bits present)."""
    return rm.RegisterMap([rm.Register(r.name, r.offset, r.access, r.description, {f.name: f.bit for f in r.fields})
                           for r in regs], size=regs.size, magic=regs.magic)


def markdown_table(regs: RegisterSet) -> str:
    """The address map as a Markdown table (docs/ARCHITECTURE.md holds this text; a test compares)."""
    lines = ["| offset | name | access | contents |", "|---|---|---|---|"]
    for r in regs:
        fields = ", ".join(f"{f.bit} {f.name}" for f in r.fields)
        lines.append(f"| {r.offset:#05x} | {r.name} | {r.access} | {r.description}"
                     f"{' (bits: ' + fields + ')' if fields else ''} |")
    return "\n".join(lines) + "\n"


# ---- the bus ------------------------------------------------------------------------------------

class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite, master's view (Out = driven by the master); port names as in the AMBA spec without
    the channel prefix of the XDMA's m_axil_*."""

    def __init__(self, addr_width: int = ADDR_BITS, data_width: int = DATA_BITS):
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1)})


class RegisterBlock(wiring.Component):
    """AXI4-Lite slave holding the registers of a RegisterSet (bus behaviour: module docstring).

    Interface: `bus` (AXI4-Lite slave); per register without `const`, a port named after it in lower
    case: "ro" -> In(32), the value the host reads; "rw" -> Out(32), the value the host wrote (its
    self-clearing bits high for the one cycle after the write).  Read latency 1 cycle, write response
    1 cycle after the AW+W handshake.
    """

    def __init__(self, regs: RegisterSet):
        self.regs = regs
        offsets = [r.offset for r in regs]
        if len(set(offsets)) != len(offsets) or any(o % 4 or not 0 <= o < regs.size for o in offsets):
            raise ValueError("register offsets must be distinct, 4-aligned and inside the map")
        members = {"bus": In(AXI4LiteSignature())}
        for r in regs:
            if r.access == "rw":
                members[r.port] = Out(DATA_BITS)
            elif r.const is None:
                members[r.port] = In(DATA_BITS)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus, regs = self.bus, self.regs
        word_bits = (regs.size - 1).bit_length()  # byte-address bits inside the map
        held = {r.name: Signal(DATA_BITS, init=r.reset, name=f"reg_{r.port}") for r in regs if r.access == "rw"}
        for r in regs:
            if r.access == "rw":
                m.d.comb += getattr(self, r.port).eq(held[r.name])

        def value(r):
            if r.access == "rw":
                return held[r.name]
            return Const(r.const, DATA_BITS) if r.const is not None else getattr(self, r.port)

        # -- read channel ---------------------------------------------------------------------------
        rvalid, rdata = Signal(), Signal(DATA_BITS)
        m.d.comb += [bus.arready.eq(~rvalid), bus.rvalid.eq(rvalid), bus.rdata.eq(rdata), bus.rresp.eq(OKAY)]
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [rvalid.eq(1), rdata.eq(0)]  # unmapped: reads as zero
            with m.If(bus.araddr[word_bits:] == 0):
                with m.Switch(bus.araddr[2:word_bits]):
                    for r in regs:
                        with m.Case(r.offset >> 2):
                            m.d.sync += rdata.eq(value(r))
        with m.Elif(bus.rready):
            m.d.sync += rvalid.eq(0)

        # -- write channel --------------------------------------------------------------------------
        bvalid = Signal()
        take = Signal()
        m.d.comb += [take.eq(bus.awvalid & bus.wvalid & ~bvalid), bus.awready.eq(take), bus.wready.eq(take),
                     bus.bvalid.eq(bvalid), bus.bresp.eq(OKAY)]
        # Self-clearing bits drop the cycle after they were written (a write in that cycle wins:
        # Amaranth's later assignment takes precedence).
        for r in regs:
            for f in r.fields:
                if r.access == "rw" and f.self_clearing:
                    m.d.sync += held[r.name][f.bit].eq(0)
        with m.If(take):
            m.d.sync += bvalid.eq(1)
            with m.If(bus.awaddr[word_bits:] == 0):
                with m.Switch(bus.awaddr[2:word_bits]):
                    for r in regs:
                        if r.access != "rw":
                            continue  # read-only: the write is ignored (OKAY)
                        with m.Case(r.offset >> 2):
                            bytes_ = [bus.wstrb[b].replicate(8) for b in range(DATA_BITS // 8)]
                            mask = Cat(*bytes_)
                            m.d.sync += held[r.name].eq((held[r.name] & ~mask) | (bus.wdata & mask))
        with m.Elif(bus.bready):
            m.d.sync += bvalid.eq(0)
        return m
