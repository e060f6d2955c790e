"""Platforms of `python -m gen build --platform NAME`: a registry of modules, imported lazily.

    verilog     gen.platforms.verilog   the pipeline's Verilog and report only (default, no board)
    vu9p        gen.platforms.vu9p      PCIe shell (XDMA + AXI4-Lite registers) and a Vivado project
    ulx3s-85f   gen.platforms.ulx3s     ECP5 self-check top, open-toolchain bitstream

A platform module is imported only when the platform is chosen (or its description is asked for), so a
module that is missing or broken fails only the build that chooses it.

Interface of a platform module (every name required):

    NAME: str
        the `--platform` value, equal to its key in PLATFORMS.
    DESCRIPTION: str
        one line, shown by `python -m gen build --help`.
    ESTIMATE: gen.flow.synth.SynthTarget
        the device the resource estimate is for: its capacities (LUT, FF, DSP, BRAM, URAM on the
        xcvu9p; LUT4, TRELLIS_FF, MULT18X18D, DP16KD on the ECP5), the Yosys synthesis command of its
        family (synth_xilinx -family xcup, synth_ecp5) and how the cells count.  The report's
        utilisation is against these capacities.  A platform without a device (verilog) names a
        reference device (reference=True), and the report says so.
    check_fit(qm, design) -> dict
        called in the "load" step, before anything slow: raise gen.flow.BuildError with a message that
        says by how much the model / knob choice does not fit the device (e.g. "needs 13,312 DSP48E2,
        the xcvu9p has 6,840: 6,472 (95 %) too many; lower --fit-par or --engines"); otherwise return
        the numbers it checked (a dict, merged into report["platform"]["fit"]).
    build_platform(qm, design, hdl: dict, out: Path, log, tools, *, neighbours=None) -> dict
        the "platform" step, after "hdl": write the platform's files under out / NAME and return a dict
        merged into report["platform"] (JSON-serializable; "files" should list what it wrote, relative to
        `out`; "summary" may hold lines for report.md).  hdl is gen.flow.emit.Emitted.report()
        (hdl["verilog"] is the path of pipeline.v, top module gen.flow.TOP); tools is gen.build.find_tools'
        dict; log prints one progress line; neighbours is the mean neighbour count of the throughput
        estimate (None: unknown, gen.flow.report.neighbour_estimate).  A missing external tool is a
        BuildError naming the package to install.

report.md gets a "Platform: NAME" section from report["platform"] (gen.flow.report.report_markdown).
"""

from __future__ import annotations

import importlib

#: name -> module (relative to this package).  Order: the order --help lists them.
PLATFORMS = {"verilog": ".verilog", "vu9p": ".vu9p", "ulx3s-85f": ".ulx3s"}
DEFAULT = "verilog"
REQUIRED = ("NAME", "DESCRIPTION", "ESTIMATE", "check_fit", "build_platform")


def names() -> tuple[str, ...]:
    return tuple(PLATFORMS)


def get(name: str):
    """The platform module for `name`; BuildError for an unknown name or a module that cannot load."""
    from ..flow import BuildError
    if name not in PLATFORMS:
        raise BuildError(f"unknown platform {name!r} (available: {', '.join(PLATFORMS)})")
    try:
        mod = importlib.import_module(PLATFORMS[name], __name__)
    except ImportError as e:
        raise BuildError(f"platform {name!r} is not available: {e}") from None
    missing = [a for a in REQUIRED if not hasattr(mod, a)]
    if missing:
        raise BuildError(f"platform module {mod.__name__} lacks {', '.join(missing)}")
    return mod


def description(name: str) -> str:
    """The platform's one-line DESCRIPTION, or why it cannot be loaded (for --help, never raises)."""
    try:
        return str(importlib.import_module(PLATFORMS[name], __name__).DESCRIPTION)
    except Exception as e:  # noqa: BLE001 -- help text must not fail because one platform is broken
        return f"(not available: {type(e).__name__}: {e})"
