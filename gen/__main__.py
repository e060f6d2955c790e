"""`python -m gen`: generate the accelerator RTL for a model file (see gen/build.py)."""

from __future__ import annotations

import sys

from contract.cli import CommandLine, arg, model_arg, out_arg, positive_int

OVERVIEW = """\
dpfpga gen: the pipeline RTL (Amaranth) generated from a quantized model file, with a lint, a
resource estimate for the platform's device and a throughput model, compared with the seed paper.

  python -m gen build [--model M.npz] [-o DIR] [knobs] [--platform NAME]
        model file -> DIR/pipeline.v, pipeline.il, lint.log, yosys.log, report.json, report.md
        (default: the bundled model; DIR = build/<model file stem>-L<lanes>-fp<fit-par>-dp<desc-par>-E<engines>,
         one folder per model and knobs)

Platforms (`--platform`): verilog (default: RTL and report only); vu9p (PCIe shell around the
pipeline and a Vivado project for xcvu9p-flgb2104-2-i in DIR/vu9p/, with regmap.json for the host,
written without Vivado); ulx3s-85f (ECP5 self-check bitstream with the open toolchain).
Run `python -m gen build --help` for every option.
"""


cli = CommandLine("python -m gen", OVERVIEW)


def _platform_text() -> str:
    from . import platforms
    from .build import PLATFORMS
    return "platforms (--platform):\n" + "\n".join(f"  {n:<11} {platforms.description(n)}" for n in PLATFORMS)


def _choices(name):
    from . import build
    return getattr(build, name)


@cli.command("build", "model file -> RTL, lint, resource estimate, report",
             model_arg("quantized model file (.npz; default: the bundled GeTe model)"),
             out_arg("output directory (default: build/<model file stem>-L<lanes>-fp<fit-par>-dp<desc-par>-E<engines>); "
                     "files of a build of another model or knobs there are removed first"),
             arg("--lanes", type=positive_int, default=1, help="neighbour records per cycle in the record stages (default 1)"),
             arg("--fit-par", type=positive_int, default=1,
                 help="fitting-net outputs per cycle; divides the fitting width (default 1)"),
             arg("--desc-par", type=positive_int, default=1,
                 help="descriptor-product columns per cycle; divides M1 (default 1)"),
             arg("--engines", type=positive_int, default=1, help="atom engines working on alternate atoms (default 1)"),
             arg("--clock-mhz", type=float, default=250.0, help="clock frequency for seconds per atom (default 250)"),
             arg("--neighbours", type=float, default=None, metavar="N",
                 help="mean neighbours per atom for the throughput estimate (default: the model file's "
                      "training-data statistics; without them, no estimate)"),
             arg("--platform", default="verilog", choices=_choices("PLATFORMS"),
                 help="output platform (listed below); default verilog"),
             arg("--no-lint", action="store_true", help="skip the Verilator lint"),
             arg("--no-synth", action="store_true", help="skip the Yosys resource estimate"),
             arg("--synth-method", default="modules", choices=_choices("SYNTH_METHODS"),
                 help="modules: one Yosys run per distinct module (cached); flat: the whole design "
                      "flattened in one run (slow); default modules"),
             arg("--jobs", type=positive_int, default=1, help="Yosys runs in parallel (default 1)"),
             arg("--synth-timeout", type=float, default=None, help="time limit per Yosys run in seconds (default: none)"),
             arg("--rebuild", action="store_true",
                 help="elaborate again even if DIR holds RTL of the same model, knobs and generator"),
             arg("--cache-dir", help="synthesis result cache (default <out>/../.synth-cache)"))
def cmd_build(args) -> int:
    """Generate the pipeline for a model file: Verilog + RTLIL, Verilator lint, Yosys resource estimate
    for the platform's device (slow the first time: ~20 min for the bundled model on 2 cores, estimated
    before it starts; results are cached per module), report.json and report.md, in a folder named by
    the model and the knobs.  Throughput uses the model file's neighbour statistics (recorded at
    quantization), or --neighbours N.  Exit codes: 0 done, 1 lint or synthesis failed (report written), 2 bad model file,
    knobs or options, or a missing tool."""
    import gen  # noqa: F401  (raises Python's int->str digit limit for wide ROMs)

    from .build import build
    from .ir import Knobs
    knobs = Knobs(lanes=args.lanes, fit_par=args.fit_par, desc_par=args.desc_par, engines=args.engines)
    report = build(args.model, args.out, knobs, clock_mhz=args.clock_mhz, synth=not args.no_synth,
                   lint=not args.no_lint, platform=args.platform, synth_method=args.synth_method,
                   jobs=args.jobs, synth_timeout=args.synth_timeout, cache_dir=args.cache_dir,
                   rebuild=args.rebuild, neighbours=args.neighbours, log=lambda s: print(s, flush=True))
    failed = report["lint"].get("passed") is False or (not args.no_synth and report["resources_skipped"]) \
        or (report["platform"].get("lint") or {}).get("passed") is False
    return 1 if failed else 0


def main(argv=None) -> int:
    from .build import BuildError
    cli.errors += (BuildError,)
    cli.epilog = _platform_text()
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
