"""The PCIe shell around the pipeline, and the top level of the vu9p design.

    PCIe x16 ─► xdma_0 (black box) ──m_axis_h2c (512 b)──► H2CAdapter ──► pipeline.i ─┐  (lanes × 64 b)
                   │   ◄─s_axis_c2h (512 b)── C2HAdapter ◄── pipeline.o ◄─ dpfpga_pipeline
                   └──m_axil (AXI4-Lite, user BAR)──► RegisterBlock ◄── StreamMonitor (taps pipeline.i/.o)
                                                        └─ CONTROL: enable ─► H2CAdapter, reset ─► soft reset

One clock domain: the XDMA's axi_aclk (250 MHz for the 512-bit Gen3 x16 interface) clocks the shell and
the pipeline, so no stream crosses a clock boundary; the pipeline's timing target is the XDMA's clock.
Resets: axi_aresetn (synchronous to axi_aclk, low while the PCIe link is down) resets everything; the
host's soft reset (CONTROL.reset, a one-cycle pulse) resets the pipeline, the adapters, the counters
and the sticky STATUS bits but not the register block (CONTROL itself survives it).
"""

from __future__ import annotations

from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Instance, Module, ResetInserter, ResetSignal, Signal
from amaranth.lib import io, stream, wiring
from amaranth.lib.wiring import In, Out

from contract.registers import shell_registers
from contract.wire import WORD_BITS

from . import xdma
from .axis import AXIStreamSignature, C2HAdapter, H2CAdapter, beat_layout
from .monitor import StreamMonitor
from .registers import AXI4LiteSignature, RegisterBlock


class Shell(wiring.Component):
    """Registers, stream adapters and counters between the XDMA's ports and the pipeline's streams.

    Interface: `h2c` (AXI4-Stream slave, from XDMA m_axis_h2c), `c2h` (AXI4-Stream master, to XDMA
    s_axis_c2h), `axil` (AXI4-Lite slave, from XDMA m_axil), `pipe_i` (stream to the pipeline's input),
    `pipe_o` (stream from the pipeline's output), `soft_reset` (one-cycle pulse: reset the pipeline with
    it), `busy` and `error` (STATUS bits, for LEDs).  `registers` is the RegisterSet the register block
    was built from; `regmap` is the host's RegisterMap of that same object.  Latencies: those of
    H2CAdapter, C2HAdapter and RegisterBlock (no extra stage between them and the ports).
    """

    def __init__(self, lanes: int, model_hash: str, flush_cycles: int = 32):
        self.lanes, self.flush_cycles = lanes, flush_cycles
        self.registers = shell_registers(lanes, model_hash)
        self.regmap = self.registers.regmap()
        layout = beat_layout(lanes)
        super().__init__({"h2c": In(AXIStreamSignature()), "c2h": Out(AXIStreamSignature()),
                          "axil": In(AXI4LiteSignature()),
                          "pipe_i": Out(stream.Signature(layout)), "pipe_o": In(stream.Signature(layout)),
                          "soft_reset": Out(1), "busy": Out(1), "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        regs = self.registers
        m.submodules.regs = block = RegisterBlock(regs)
        h2c, c2h, mon = H2CAdapter(self.lanes), C2HAdapter(self.lanes, self.flush_cycles), StreamMonitor(self.lanes)
        soft = Signal()
        m.d.comb += [soft.eq(block.control[regs["CONTROL"].fields[1].bit]), self.soft_reset.eq(soft)]
        # The soft reset clears the data path and the counters, not the registers the host wrote.
        m.submodules.h2c = ResetInserter(soft)(h2c)
        m.submodules.c2h = ResetInserter(soft)(c2h)
        m.submodules.monitor = ResetInserter(soft)(mon)

        wiring.connect(m, wiring.flipped(self.h2c), h2c.axis)
        wiring.connect(m, c2h.axis, wiring.flipped(self.c2h))
        wiring.connect(m, wiring.flipped(self.axil), block.bus)
        wiring.connect(m, h2c.o, wiring.flipped(self.pipe_i))
        wiring.connect(m, wiring.flipped(self.pipe_o), c2h.i)
        m.d.comb += h2c.enable.eq(block.control[regs["CONTROL"].fields[0].bit])
        for tap, s in ((mon.h2c, self.pipe_i), (mon.c2h, self.pipe_o)):
            m.d.comb += [tap.payload.eq(s.payload), tap.valid.eq(s.valid), tap.ready.eq(s.ready)]

        partial = Signal()  # sticky: an h2c word with torn TKEEP since the last reset
        with m.If(soft):
            m.d.sync += partial.eq(0)
        with m.Elif(h2c.partial):
            m.d.sync += partial.eq(1)
        status = regs["STATUS"]
        bit = {f.name: f.bit for f in status.fields}
        m.d.comb += [block.status.eq((mon.busy << bit["busy"]) | (partial << bit["error"]) | (partial << bit["partial"])),
                     block.flags.eq(mon.flags), block.atoms_in.eq(mon.atoms_in), block.atoms_out.eq(mon.atoms_out),
                     block.records_in.eq(mon.records_in), block.records_out.eq(mon.records_out),
                     self.busy.eq(mon.busy), self.error.eq(partial)]
        return m


def pipeline_ports(lanes: int) -> list[tuple[str, str, int]]:
    """Ports of the generated `dpfpga_pipeline` module (gen.pipeline.Pipeline, flattened by Amaranth:
    member path joined with "__"), as (name, direction seen from the pipeline, width)."""
    w = lanes * WORD_BITS
    return [("clk", "i", 1), ("rst", "i", 1),
            ("i__payload", "i", w), ("i__valid", "i", 1), ("i__ready", "o", 1),
            ("o__payload", "o", w), ("o__valid", "o", 1), ("o__ready", "i", 1)]


class Vu9pTop(Elaboratable):
    """Top level: XDMA + shell + the pipeline (instantiated from pipeline.v as `pipeline_module`).

    Platform resources used (gen.platforms.vu9p.Vu9pPlatform): pcie_refclk (100 MHz, through
    IBUFDS_GTE4: O -> sys_clk_gt, ODIV2 -> sys_clk, as Xilinx's XDMA example design), pcie_perst_n,
    pcie_tx / pcie_rx (16 lanes, straight to the IP's GT pins, no I/O buffers), led 0..2 (link up, busy,
    error).
    """

    def __init__(self, lanes: int, model_hash: str, pipeline_module: str = "dpfpga_pipeline", flush_cycles: int = 32):
        self.lanes, self.pipeline_module = lanes, pipeline_module
        self.shell = Shell(lanes, model_hash, flush_cycles)

    def elaborate(self, platform):
        m = Module()
        refclk = platform.request("pcie_refclk", 0, dir="-")
        m.submodules.perst_buf = perst_n = io.Buffer("i", platform.request("pcie_perst_n", 0, dir="-"))
        tx = platform.request("pcie_tx", 0, dir="-")
        rx = platform.request("pcie_rx", 0, dir="-")
        leds = []
        for k in range(3):
            m.submodules[f"led{k}_buf"] = buf = io.Buffer("o", platform.request("led", k, dir="-"))
            leds.append(buf)

        sys_clk, sys_clk_gt = Signal(), Signal()
        m.submodules.refclk_ibuf = Instance("IBUFDS_GTE4", p_REFCLK_EN_TX_PATH=0, p_REFCLK_HROW_CK_SEL=0,
                                            p_REFCLK_ICNTL_RX=0, i_I=refclk.p, i_IB=refclk.n, i_CEB=0,
                                            o_O=sys_clk_gt, o_ODIV2=sys_clk)

        m.domains.sync = cd = ClockDomain("sync")
        axi_aresetn, link_up = Signal(), Signal()
        m.d.comb += cd.rst.eq(~axi_aresetn)
        shell = m.submodules.shell = self.shell
        h2c, c2h, axil = shell.h2c, shell.c2h, shell.axil
        unused = {n: Signal(w, name=f"xdma_{n}") for n, w in (("usr_irq_ack", 1), ("msi_enable", 1),
                                                               ("msi_vector_width", 3), ("awprot", 3), ("arprot", 3))}
        m.submodules.xdma = xdma.instance(
            sys_clk=sys_clk, sys_clk_gt=sys_clk_gt, sys_rst_n=perst_n.i, user_lnk_up=link_up,
            pci_exp_txp=tx.p, pci_exp_txn=tx.n, pci_exp_rxp=rx.p, pci_exp_rxn=rx.n,
            axi_aclk=cd.clk, axi_aresetn=axi_aresetn,
            usr_irq_req=0, usr_irq_ack=unused["usr_irq_ack"], msi_enable=unused["msi_enable"],
            msi_vector_width=unused["msi_vector_width"],
            m_axil_awaddr=axil.awaddr, m_axil_awprot=axil.awprot, m_axil_awvalid=axil.awvalid,
            m_axil_awready=axil.awready, m_axil_wdata=axil.wdata, m_axil_wstrb=axil.wstrb,
            m_axil_wvalid=axil.wvalid, m_axil_wready=axil.wready, m_axil_bvalid=axil.bvalid,
            m_axil_bresp=axil.bresp, m_axil_bready=axil.bready, m_axil_araddr=axil.araddr,
            m_axil_arprot=axil.arprot, m_axil_arvalid=axil.arvalid, m_axil_arready=axil.arready,
            m_axil_rdata=axil.rdata, m_axil_rresp=axil.rresp, m_axil_rvalid=axil.rvalid, m_axil_rready=axil.rready,
            s_axis_c2h_tdata_0=c2h.tdata, s_axis_c2h_tlast_0=c2h.tlast, s_axis_c2h_tvalid_0=c2h.tvalid,
            s_axis_c2h_tready_0=c2h.tready, s_axis_c2h_tkeep_0=c2h.tkeep,
            m_axis_h2c_tdata_0=h2c.tdata, m_axis_h2c_tlast_0=h2c.tlast, m_axis_h2c_tvalid_0=h2c.tvalid,
            m_axis_h2c_tready_0=h2c.tready, m_axis_h2c_tkeep_0=h2c.tkeep)

        # The pipeline, from pipeline.v: reset by the link reset and by the host's soft reset.
        pi, po = shell.pipe_i, shell.pipe_o
        conn = {"clk": ClockSignal(), "rst": ResetSignal() | shell.soft_reset,
                "i__payload": pi.payload, "i__valid": pi.valid, "i__ready": pi.ready,
                "o__payload": po.payload, "o__valid": po.valid, "o__ready": po.ready}
        m.submodules.pipeline = Instance(self.pipeline_module, **{f"{d}_{n}": conn[n]
                                                                  for n, d, _ in pipeline_ports(self.lanes)})
        m.d.comb += [leds[0].o.eq(link_up), leds[1].o.eq(shell.busy), leds[2].o.eq(shell.error)]
        return m
