"""The shell's AXI4-Lite register block, built from the register declaration in contract/registers.py.

`RegisterBlock(contract.registers.shell_registers(lanes, model_hash))` is an AXI4-Lite slave with one
port per register that the shell drives or reads; the same RegisterSet is the host's map
(`.regmap()`, written as out/vu9p/regmap.json), so the file the host reads is the one the gateware
was built from.

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

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from contract.registers import DATA_BITS, RegisterSet

ADDR_BITS = 32
OKAY = 0b00


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
