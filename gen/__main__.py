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

#: --arch when none is given, per platform: the ECP5 fits only the dataflow pipeline at maximum
#: folding (gen/platforms/ulx3s.py, check_fit), so that is what `--platform ulx3s-85f` alone builds
DEFAULT_ARCH = {"ulx3s-85f": "dataflow"}


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
             arg("--desc-rows", type=int, default=None, choices=(1, 2, 4),
                 help="rows of GR (of 4) in each cycle's descriptor-product columns: 4 unfolded, 2 or 1 take 2 "
                      "or 4 times the steps with 1/2 or 1/4 of the products (default 4; arch dataflow: 1)"),
             arg("--engines", type=positive_int, default=1, help="atom engines working on alternate atoms (default 1)"),
             arg("--arch", default=None, choices=("engines", "dataflow"),
                 help="per-atom architecture: engines (replicated atom engines; the default, but dataflow for "
                      "--platform ulx3s-85f, DEFAULT_ARCH) or dataflow (one stage per fitting layer and "
                      "direction, weights stored once; folded by --pe/--simd/--energy-simd or --cycles-per-atom, "
                      "every knob 1 when none is given: the most it folds)"),
             arg("--pe", default=None, metavar="P[,P...]",
                 help="dataflow: output lanes of each forward fitting layer (one value, or one per layer)"),
             arg("--simd", default=None, metavar="S[,S...]",
                 help="dataflow: input lanes of each forward fitting layer (one value, or one per layer)"),
             arg("--energy-simd", type=positive_int, default=None, help="dataflow: input lanes of the energy stage"),
             arg("--cycles-per-atom", type=positive_int, default=None, metavar="N",
                 help="dataflow: fold every stage (and widen the record stages) to reach N cycles per atom at the "
                      "model's mean neighbour count, the fewest multipliers each (gen/folding.py); implies "
                      "--arch dataflow and replaces --lanes, --desc-par, --desc-rows, --pe, --simd, --energy-simd"),
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
    knobs = cli_knobs(args)
    report = build(args.model, args.out, knobs, clock_mhz=args.clock_mhz, synth=not args.no_synth,
                   lint=not args.no_lint, platform=args.platform, synth_method=args.synth_method,
                   jobs=args.jobs, synth_timeout=args.synth_timeout, cache_dir=args.cache_dir,
                   rebuild=args.rebuild, neighbours=args.neighbours, log=lambda s: print(s, flush=True))
    failed = report["lint"].get("passed") is False or (not args.no_synth and report["resources_skipped"]) \
        or (report["platform"].get("lint") or {}).get("passed") is False
    return 1 if failed else 0


def cli_knobs(args):
    """The knobs the options give (BuildError naming a bad or conflicting option)."""
    from .build import BuildError
    from .ir import DesignError, Knobs
    dataflow_opts = {"--pe": args.pe, "--simd": args.simd, "--energy-simd": args.energy_simd}
    if args.arch is None:
        args.arch = DEFAULT_ARCH.get(args.platform, "engines")
    engine_opts = [k for k, v in (("--fit-par", args.fit_par), ("--engines", args.engines)) if v != 1]
    if (args.arch == "dataflow" or args.cycles_per_atom is not None) and engine_opts:
        raise BuildError(f"{', '.join(engine_opts)} are options of --arch engines")
    if args.cycles_per_atom is not None:
        given = [k for k, v in dataflow_opts.items() if v is not None]
        given += [k for k, v in (("--lanes", args.lanes), ("--desc-par", args.desc_par)) if v != 1]
        given += ["--desc-rows"] if args.desc_rows is not None else []
        if given:
            raise BuildError(f"--cycles-per-atom chooses the folding: leave out {', '.join(given)}")
        from contract.modelfile import ModelFileError, load
        from contract.paths import EXAMPLE_MODEL
        from . import cycles
        from .flow.report import neighbour_estimate
        from .folding import fold_for
        try:
            qm = load(args.model or EXAMPLE_MODEL)
        except ModelFileError as e:
            raise BuildError(f"bad model file: {e}") from None
        shape = cycles.Shape(n_layers=len(qm.fit[0]), n_hidden=len(qm.fit[0][0].W[0]), m1=qm.config.m1)
        try:
            return fold_for(args.cycles_per_atom, shape, neighbour_estimate(qm, args.neighbours)["mean"])
        except DesignError as e:
            raise BuildError(str(e)) from None
    if args.arch == "engines":
        given = [k for k, v in dataflow_opts.items() if v is not None]
        if given:
            raise BuildError(f"{', '.join(given)} are options of --arch dataflow")
        return Knobs(lanes=args.lanes, fit_par=args.fit_par, desc_par=args.desc_par, engines=args.engines,
                     desc_rows=4 if args.desc_rows is None else args.desc_rows)

    def per_layer(name, text):
        if text is None:
            return 1
        try:
            v = [int(x) for x in text.split(",")]
        except ValueError:
            raise BuildError(f"{name} takes integers separated by commas, got {text!r}") from None
        return v[0] if len(v) == 1 else tuple(v)
    pe, simd = per_layer("--pe", args.pe), per_layer("--simd", args.simd)
    from contract.paths import EXAMPLE_MODEL
    from contract.modelfile import load
    n_layers = len(load(args.model or EXAMPLE_MODEL).fit[0])
    return Knobs.dataflow(pe=pe, simd=simd, lanes=args.lanes, desc_par=args.desc_par,
                          energy_simd=args.energy_simd or 1, n_layers=n_layers,
                          desc_rows=1 if args.desc_rows is None else args.desc_rows)


def main(argv=None) -> int:
    from .build import BuildError
    cli.errors += (BuildError,)
    cli.epilog = _platform_text()
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
