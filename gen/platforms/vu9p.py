"""`--platform vu9p`: the pipeline in a PCIe shell on the xcvu9p-flgb2104-2-i, as a Vivado project.

Writes, under out/vu9p/, without Vivado (Amaranth's XilinxPlatform with do_build=False):

    dpfpga_vu9p.v        the top (gen.shell.top.Vu9pTop: XDMA black box, shell, pipeline instance)
    dpfpga_pipeline.v    the pipeline (a copy of pipeline.v from the "hdl" step)
    dpfpga_vu9p.xdc      pin locations, I/O standards, the 100 MHz PCIe reference clock
    dpfpga_vu9p.tcl      project Tcl: create_project -part xcvu9p-flgb2104-2-i, sources, constraints,
                         `source xdma_0.tcl`, synth/place/route, reports, write_bitstream
    xdma_0.tcl           the XDMA IP's configuration (gen.shell.xdma.ip_tcl)
    build_dpfpga_vu9p.sh "$VIVADO" -mode batch -source dpfpga_vu9p.tcl (also .bat, .json)
    regmap.json          the register map the gateware was built from (host: xdma:PREFIX with regmap=)
    lint/                Verilog stubs of xdma_0 and of the UNISIM cells, lint.log (not read by Vivado)

Pins: amaranth-boards has no VU9P board and the xcvu9p-flgb2104 (the AWS F1 part) has no public board
pinout, so the LOCs are those of the Xilinx VCU1525 (xcvu9p-fsgd2104-2L-e; pins from the corundum
project's VCU1525 constraints): PCIe refclk AM11/AM10 (MGTREFCLK0_226), PERST# BD21, the x16 lanes in
GTY quads 224..227, LEDs BC21/BB21/BA20.  They are placeholders for the flgb2104 package, and the XDC
says so; a real board port replaces Vu9pPlatform.resources and the IP's GT quad settings.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from amaranth.build import Attrs, Clock, DiffPairs, Pins, Resource
from amaranth.vendor import XilinxPlatform

from ..flow.synth import SynthTarget

NAME = "vu9p"
DESCRIPTION = "xcvu9p-flgb2104-2-i: PCIe shell (XDMA Gen3 x16, AXI4-Lite registers), Vivado project, regmap.json"
TOP_NAME = "dpfpga_vu9p"
PART = "xcvu9p-flgb2104-2-i"
#: xcvu9p (UltraScale+; the AWS F1 part): what the fit check and the report's utilisation count against.
CAPACITY = {"LUT": 1182240, "FF": 2364480, "DSP": 6840, "BRAM": 2160, "URAM": 960}
DSP_CAPACITY = CAPACITY["DSP"]
#: The resource estimate: Yosys' UltraScale+ mapping (the command's text keys the synthesis cache).
ESTIMATE = SynthTarget(
    device="xcvu9p", family="xcup", command="synth_xilinx -family xcup -top {top} -noiopad -noclkbuf",
    flatten=" -flatten", capacity=CAPACITY,
    cells={"LUT": {r"LUT[1-6]": 1}, "FF": {r"FD.*": 1}, "DSP": {"DSP48E2": 1},
           "BRAM": {"RAMB36E2": 1, "RAMB18E2": 0.5}, "URAM": {"URAM288": 1}},
    notes="LUT = LUT1..LUT6 (LUT-RAM/SRL cells not included), FF = FD*, BRAM = RAMB36E2 + RAMB18E2/2, "
          "DSP = DSP48E2, URAM = URAM288. Yosys estimates differ from Vivado's (no CARRY8, no DSP cascades, "
          "different LUT packing).")

# VCU1525 pins, lane k: (rx_p, rx_n, tx_p, tx_n)
_LANES = [("AF2", "AF1", "AF7", "AF6"), ("AG4", "AG3", "AG9", "AG8"), ("AH2", "AH1", "AH7", "AH6"),
          ("AJ4", "AJ3", "AJ9", "AJ8"), ("AK2", "AK1", "AK7", "AK6"), ("AL4", "AL3", "AL9", "AL8"),
          ("AM2", "AM1", "AM7", "AM6"), ("AN4", "AN3", "AN9", "AN8"), ("AP2", "AP1", "AP7", "AP6"),
          ("AR4", "AR3", "AR9", "AR8"), ("AT2", "AT1", "AT7", "AT6"), ("AU4", "AU3", "AU9", "AU8"),
          ("AV2", "AV1", "AV7", "AV6"), ("AW4", "AW3", "BB5", "BB4"), ("BA2", "BA1", "BD5", "BD4"),
          ("BC2", "BC1", "BF5", "BF4")]


class Vu9pPlatform(XilinxPlatform):
    """xcvu9p-flgb2104-2-i with the VCU1525's PCIe, reset and LED pins as placeholders (module docstring).
    No default clock: the design runs on the XDMA's axi_aclk."""

    device, package, speed = "xcvu9p", "flgb2104", "2-i"
    default_clk = None
    resources = [
        Resource("pcie_refclk", 0, DiffPairs("AM11", "AM10", dir="i"), Clock(100e6)),
        Resource("pcie_perst_n", 0, Pins("BD21", dir="i"), Attrs(IOSTANDARD="LVCMOS12", PULLUP="TRUE")),
        Resource("pcie_rx", 0, DiffPairs(" ".join(l[0] for l in _LANES), " ".join(l[1] for l in _LANES), dir="i")),
        Resource("pcie_tx", 0, DiffPairs(" ".join(l[2] for l in _LANES), " ".join(l[3] for l in _LANES), dir="o")),
        *[Resource("led", k, Pins(pin, dir="o"), Attrs(IOSTANDARD="LVCMOS12", SLEW="SLOW", DRIVE="8"))
          for k, pin in enumerate(("BC21", "BB21", "BA20"))],
    ]
    connectors = []


XDC_NOTES = """\
# ---- dpfpga notes (gen/platforms/vu9p.py) ----
# PIN LOCATIONS ARE PLACEHOLDERS: they are the Xilinx VCU1525's (xcvu9p-fsgd2104-2L-e: PCIe refclk
# MGTREFCLK0_226 AM11/AM10, PERST# BD21, x16 lanes in GTY quads 224-227, LEDs BC21/BB21/BA20), not
# checked against the xcvu9p-flgb2104 package of this part.  Replace them with the target board's pins
# and set the XDMA's CONFIG.pcie_blk_locn / CONFIG.select_quad (xdma_0.tcl) to match.
# axi_aclk (250 MHz) is constrained by the XDMA IP's own XDC; PERST# is asynchronous:
set_false_path -from [get_ports pcie_perst_n_0__io]
"""

UNISIM_STUBS = """\
// Lint stubs of the Xilinx UNISIM cells in dpfpga_vu9p.v (generated by gen/platforms/vu9p.py).
/* verilator lint_off UNUSEDSIGNAL */
/* verilator lint_off UNUSEDPARAM */
module IBUFDS_GTE4 #(parameter REFCLK_EN_TX_PATH = 0, parameter REFCLK_HROW_CK_SEL = 0,
                     parameter REFCLK_ICNTL_RX = 0) (input I, input IB, input CEB, output O, output ODIV2);
    assign O = I & ~IB & ~CEB;
    assign ODIV2 = O;
endmodule
module IBUF (input I, output O);
    assign O = I;
endmodule
module OBUFT (input I, input T, output O);
    assign O = I & ~T;
endmodule
/* verilator lint_on UNUSEDPARAM */
/* verilator lint_on UNUSEDSIGNAL */
"""


def check_fit(qm, design) -> dict:
    """lanes must divide the 8 words of a 512-bit XDMA beat; the fitting MAC arrays alone
    (engines x fit_par x n_hidden multipliers, one DSP48E2 each) must fit the xcvu9p's DSPs."""
    from ..flow import BuildError
    from ..shell.axis import WORDS_PER_AXIS
    k = design.knobs
    if WORDS_PER_AXIS % k.lanes:
        ok = [n for n in range(1, WORDS_PER_AXIS + 1) if WORDS_PER_AXIS % n == 0]
        raise BuildError(f"lanes={k.lanes} does not fit the vu9p shell: a 512-bit XDMA beat holds "
                         f"{WORDS_PER_AXIS} wire words, so lanes must divide {WORDS_PER_AXIS} "
                         f"({', '.join(map(str, ok))})")
    if k.arch == "dataflow":  # forward and backward stage of each layer, and the energy stage
        mac = sum(2 * p * s for p, s in zip(k.pe, k.simd)) + k.energy_simd
        what, lower = (f"2 x sum of pe x simd over the layers + energy_simd"), "raise --cycles-per-atom or lower --pe/--simd"
    else:
        mac = k.engines * k.fit_par * design.n_hidden
        what, lower = f"engines {k.engines} x fit_par {k.fit_par} x {design.n_hidden}", "lower --engines or --fit-par"
    if mac > DSP_CAPACITY:
        raise BuildError(f"does not fit the xcvu9p: the fitting MAC arrays alone need {mac:,} DSP48E2 "
                         f"({what}), the device has "
                         f"{DSP_CAPACITY:,}: {mac - DSP_CAPACITY:,} too many ({100 * mac / DSP_CAPACITY:.0f} % "
                         f"of the device); {lower}")
    return {"part": PART, "lanes_per_axis_beat": WORDS_PER_AXIS // k.lanes, "dsp_lower_bound": mac,
            "dsp_capacity": DSP_CAPACITY, "dsp_lower_bound_pct": round(100 * mac / DSP_CAPACITY, 1)}


def project(qm, design, pipeline_verilog: str, flush_cycles: int = 32):
    """(plan, top, extra files) of the Vivado project; nothing written yet."""
    from ..flow import TOP
    from ..shell import xdma
    from ..shell.top import Vu9pTop
    top = Vu9pTop(design.knobs.lanes, qm.hash, pipeline_module=TOP, flush_cycles=flush_cycles)
    platform = Vu9pPlatform()
    platform.add_file(f"{TOP}.v", pipeline_verilog)
    plan = platform.build(top, name=TOP_NAME, do_build=False, script_after_read="source xdma_0.tcl",
                          add_constraints=XDC_NOTES)
    extra = {"xdma_0.tcl": xdma.ip_tcl(part=PART), "regmap.json": top.shell.regmap.to_json(),
             "lint/xdma_0_stub.v": xdma.verilog_stub(), "lint/unisim_stubs.v": UNISIM_STUBS}
    return plan, top, extra


def build_platform(qm, design, hdl, out, log, tools, *, neighbours=None) -> dict:
    from ..flow import BuildError
    from ..flow.lint import run_lint
    from ..shell import xdma
    d = Path(out) / NAME
    if d.exists():
        shutil.rmtree(d)  # a stale file from another build must not end up in the project
    text = Path(hdl["verilog"]).read_text()
    try:
        pipeline_port_check(text, design.knobs.lanes)
    except ValueError as e:
        raise BuildError(f"pipeline.v does not match the shell's pipeline instance: {e}") from None
    plan, top, extra = project(qm, design, text)
    plan.extract(d)
    for name, text in extra.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    files = sorted(p.relative_to(out).as_posix() for p in d.rglob("*") if p.is_file())
    log(f"      Vivado project ({PART}) in {d}/: {len(files)} files; regmap.json from the shell's registers")
    result = {"part": PART, "top": TOP_NAME, "dir": str(d.resolve()), "files": files,
              "regmap": str((d / "regmap.json").resolve()),
              "clock_mhz": xdma.AXI_CLOCK_MHZ, "clock": "XDMA axi_aclk (one domain: shell and pipeline)",
              "xdma": {"module": xdma.MODULE, "config": dict(xdma.CONFIG)},
              "registers": [{"name": r.name, "offset": r.offset, "access": r.access} for r in top.shell.registers],
              "pins": "placeholders (VCU1525 pins; see the XDC)",
              "build_script": f"build_{TOP_NAME}.sh (needs Vivado: VIVADO=path/to/vivado)"}
    if tools.get("verilator"):
        sources = [d / f"{TOP_NAME}.v", d / "dpfpga_pipeline.v", d / "lint" / "xdma_0_stub.v",
                   d / "lint" / "unisim_stubs.v"]
        result["lint"] = run_lint(sources, d / "lint", tools["verilator"], log, top=TOP_NAME)
    else:
        result["lint"] = {"skipped": "--no-lint", "passed": None}
    return result


def summary_lines(report: dict) -> list[str]:
    """Lines for report.md's platform section."""
    p, cpa = report["platform"], report["cycles_per_atom"]
    speed = (f"{cpa:g} cycles/atom -> {cpa / (p['clock_mhz'] * 1e6):.3g} s/atom per MD step" if cpa is not None
             else "s/atom unknown (no neighbour statistics)")
    return [f"- Vivado project for `{p['part']}` in `{p['dir']}` (top `{p['top']}`; run `{p['build_script']}`)",
            f"- clock: {p['clock']}, {p['clock_mhz']:g} MHz: {speed} "
            f"(seed Table I: {report['seed_table_I']['seconds_per_atom_GeTe']:.3g})",
            f"- register map: `{p['regmap']}` (generated from the gateware's register description)",
            f"- pins: {p['pins']}"]


def _ports_of(verilog_text: str, module: str) -> list[tuple[str, str, int]]:
    """(name, "i"/"o", width) of a module's ports, from Yosys' write_verilog declarations."""
    m = re.search(rf"^module\s+{re.escape(module)}\s*\(.*?^endmodule", verilog_text, re.M | re.S)
    if not m:
        return []
    decl = re.findall(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?(\w+)\s*;", m.group(0), re.M)
    return [(name, d[0], int(hi) + 1 if hi else 1) for d, hi, name in decl]


def pipeline_port_check(pipeline_verilog: str, lanes: int) -> None:
    """Raise ValueError when pipeline.v's top ports (names, directions, widths) are not the ones
    Vu9pTop instantiates."""
    from ..flow import TOP
    from ..shell.top import pipeline_ports
    got = sorted(_ports_of(pipeline_verilog, TOP))
    want = sorted(pipeline_ports(lanes))
    if got != want:
        diff = sorted(set(got) ^ set(want))
        raise ValueError(f"{TOP} ports differ (lanes={lanes}): {diff}")
