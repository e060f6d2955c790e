"""`python -m science`: the workflows that use the model: structure analysis, recipes, per-phase accuracy,
teacher-labelled datasets.

Every command writes its results to files and prints a summary; bad input ends the run with one
`error:` line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from contract.cli import CommandLine, arg, model_arg, out_arg, set_threads, threads_arg
from contract.modelfile import ModelFileError

# model/cli.py's MOVED_TO_SCIENCE names these again (model may not import science) to point old command
# lines here; tests/science/test_cli.py keeps the two lists equal.
COMMANDS = ("rdf", "recipe", "phases", "data")

OVERVIEW = """\
dpfpga science workflows: what is done with a model of `python -m model` (structure of MD trajectories,
one-command recipes from teacher data to a model file, accuracy per phase, teacher-labelled datasets).

  python -m science melt [-o build/melt]                 the main job: 4,096 GeTe atoms melted through LAMMPS with
                                                         the cpu device, liquid g(r) over AIMD's, s/step/atom beside
                                                         the NumPy reference device's
  python -m science rdf TRAJ -o OUT [--altbc]            g(r), coordination numbers (and ALTBC) of a trajectory,
                                                         compared with the AIMD reference curves of a-GeTe
  python -m science recipe RECIPE.json -o RUN_DIR [--short]
                                                         the recipe's datasets (if any), train, quantize + fine-tune,
                                                         accuracy per phase: one command
  python -m science phases M.npz [--config RECIPE.json]  float and quantized RMSE per phase (crystalline, liquid,
                                                         amorphous) on the training's validation frames
  python -m science data melt-quench CONFIG.json -o DIR  labelled melt-quench data from a teacher potential
                                                         (resumable; DeePMD npy + provenance.json)
  python -m science data teacher-test SPEC DATA...       a teacher's own RMSE against labelled (DFT) frames
  python -m science data compare TEACHER STUDENT -o P    g(r) of the student's MD vs the teacher's, per hold

DATA is a DeePMD npy system (or a folder of them) or any file ASE reads (extxyz with energies/forces).
Training, quantizing and testing a single model file: `python -m model`.
Run `python -m science COMMAND --help` for the options of each command.
"""


cli = CommandLine("python -m science", OVERVIEW, errors=(ModelFileError, KeyError, ValueError),
                  groups={"data": "teacher-labelled data"})


@cli.command("rdf", "g(r), coordination numbers and ALTBC of a trajectory, against AIMD",
             arg("trajectory", help="LAMMPS dump, extxyz, ... (anything ASE reads) or a DeePMD npy system"),
             out_arg("output prefix: writes PREFIX-rdf.csv/.json/.png", required=True),
             arg("--skip", type=int, default=0, help="leave out the first K frames (equilibration)"),
             arg("--every", type=int, default=1, help="use every N-th frame after that"),
             arg("--rmax", type=float, default=8.0, help="largest r of g(r), Å (may exceed half the box)"),
             arg("--bins", type=int, default=160, help="number of g(r) bins over [0, rmax]"),
             arg("--type-map", help="element order, e.g. Ge,Te; also names LAMMPS types 1, 2, ... when a "
                                      "dump has no element column"),
             arg("--format", help="ASE format name when the file's own is not recognised"),
             arg("--reference", help="folder of AIMD reference curves, or 'none' (default: "
                                       "../shared/data/GeTe-aimd-reference or $DPFPGA_SHARED_DATA/..., if present)"),
             arg("--compare-range", default="2,8", help="r range LO,HI of the g(r) differences, Å"),
             arg("--altbc", action="store_true", help="also the ALTBC map (PREFIX-altbc.npy/.csv/.png)"),
             arg("--altbc-cutoff", type=float, help="ALTBC bond cutoff, Å (default: 4.5, the reference grid's top)"),
             arg("--altbc-angle", type=float, default=25.0, help="ALTBC angle tolerance around 180°, degrees"),
             arg("--altbc-bonds", help="element pairs that count as ALTBC bonds, e.g. Ge-Te (default: all)"))
def cmd_rdf(args):
    """Structure of a trajectory (g(r), coordination numbers, optionally ALTBC) against the AIMD curves."""
    from tqdm import tqdm

    from . import analysis as an
    type_map = [t.strip() for t in args.type_map.split(",")] if args.type_map else None
    if args.reference == "none":
        reference = None
    elif args.reference is None:  # the shared data if it is there, silently nothing otherwise
        folder = an.default_reference_folder()
        reference = an.load_reference(folder) if folder.is_dir() else None
    else:
        reference = an.load_reference(args.reference)
    lo, hi = (float(x) for x in args.compare_range.split(","))

    acc = an.RDFAccumulator(args.rmax, args.bins, type_map)
    alt = None
    if args.altbc:
        bonds = args.altbc_bonds.split(",") if args.altbc_bonds else None
        alt = an.ALTBCAccumulator(args.altbc_cutoff, args.altbc_angle, bonds=bonds)
    # One pass over the trajectory feeds both measurements; frames are read lazily.
    for atoms in tqdm(an.read_frames(args.trajectory, args.skip, args.every, type_map, args.format),
                      desc="frames", unit="frame"):
        acc.add(atoms)
        if alt is not None:
            alt.add(atoms)
    result = acc.result()
    metrics = an.compare_rdf(result, reference, (lo, hi))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    files = {"csv": Path(f"{out}-rdf.csv"), "json": Path(f"{out}-rdf.json"), "png": Path(f"{out}-rdf.png")}
    an.write_rdf_csv(files["csv"], result)
    an.plot_rdf(files["png"], result, reference, title=Path(args.trajectory).name)
    report = {"source": str(Path(args.trajectory).resolve()), "frames": result.nframes,
              "parameters": {"skip": args.skip, "every": args.every, "rmax": args.rmax, "bins": args.bins,
                             "type_map": type_map, "format": args.format, "compare_range": [lo, hi]},
              "elements": result.elements, "composition": result.composition, "mean_volume": result.mean_volume,
              "reference": str(reference.folder) if reference else None, "rdf": metrics}

    print(f"{args.trajectory}: {result.nframes} frames (skip {args.skip}, every {args.every}), "
          f"{sum(result.composition.values())} atoms {result.composition}, mean volume {result.mean_volume:.1f} Å^3")
    print(f"reference: {reference.folder if reference else 'none'}")
    print(f"{'g(r)':<8} {'first peak r (g)':>18} {'reference r (g)':>18} {'shift':>8} {'∫|Δg|dr':>9} {'RMS':>7}")

    def peak_text(peak):
        return f"{peak['position']:.3f} ({peak['height']:.2f})" if peak else "none"

    for name, m in metrics.items():
        line = f"{name:<8} {peak_text(m['first_peak']):>18}"
        if "l1" in m:
            shift = f"{m['peak_shift']:+.3f}" if m["peak_shift"] is not None else "n/a"
            line += f" {peak_text(m['reference_first_peak']):>18} {shift:>8} {m['l1']:9.3f} {m['rms']:7.3f}"
        print(line)
    if reference is not None:
        print(f"(differences over {lo:g}-{hi:g} Å; peaks: parabola through the highest bin of the first shell g > 1)")

    if alt is not None:
        a = alt.result()
        written = an.write_altbc(Path(f"{out}-altbc"), a)
        an.plot_altbc(Path(f"{out}-altbc.png"), a, reference.altbc if reference else None,
                      title=Path(args.trajectory).name)
        files.update({"altbc_npy": written[0], "altbc_csv": written[1], "altbc_png": Path(f"{out}-altbc.png")})
        pairs_per_atom = float(a.counts.sum()) / (a.nframes * a.natoms)
        report["altbc"] = {"edges": a.edges.tolist(), "cutoff": a.cutoff, "angle_tolerance": a.angle_tolerance,
                           "bonds": a.bonds, "pairs_per_atom": pairs_per_atom, "peak": list(a.peak())}
        if reference is not None and reference.altbc is not None:
            report["altbc"]["reference"] = an.compare_altbc(a, reference.altbc)
        cmp = report["altbc"].get("reference")
        print(f"ALTBC (cutoff {a.cutoff:g} Å, 180±{a.angle_tolerance:g}°, bonds {a.bonds or 'all'}): "
              f"peak at ({a.peak()[0]:.3f}, {a.peak()[1]:.3f}) Å, {pairs_per_atom:.2f} bond pairs per atom"
              + (f"; reference peak ({cmp['reference_peak'][0]:.3f}, {cmp['reference_peak'][1]:.3f}) Å, "
                 f"shape L1 {cmp['shape_l1']:.3f}" if cmp and cmp["shape_l1"] is not None else ""))
        if cmp and a.bonds is None:
            print("(the reference's ALTBC criteria are undocumented; its map is matched far better with "
                  "--altbc-bonds Ge-Te: see science.analysis.altbc)")

    report["files"] = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps(report, indent=1))
    print("wrote " + ", ".join(str(v) for v in files.values()))


@cli.command("recipe", "make the recipe's datasets, train, quantize + fine-tune and evaluate per phase, "
                                        "from one recipe file",
             arg("recipe", help="recipe JSON (e.g. examples/GeTe/recipe.json)"),
             out_arg("run directory (default: runs/<recipe name>[-short])"),
             arg("--short", action="store_true", help="CI-sized run (the recipe's 'short' settings); its outputs "
                                                        "say so and its numbers are not the model's accuracy"),
             arg("--data", nargs="+", help="training data paths instead of the recipe's data.systems"),
             arg("--fresh", action="store_true", help="redo every stage but the datasets (default: reuse finished "
                                                        "stages whose settings and outputs match stages.json)"),
             threads_arg())
def cmd_recipe(args):
    from .recipe import load_recipe, run
    set_threads(args.threads)
    recipe = load_recipe(args.recipe, short=args.short)
    if args.data:  # e.g. a dataset generated with another --scale or into another folder
        recipe.data.systems = [str(Path(p).resolve()) for p in args.data]
    out = args.out or ("runs/" + Path(args.recipe).stem + ("-short" if args.short else ""))
    run(recipe, out, fresh=args.fresh)


@cli.command("phases", "float and quantized RMSE per phase on the training's validation frames",
             arg("model"),
             arg("--config", help="recipe or training JSON: its data section gives the split (and a recipe's "
                                    "evaluation section the test data); default: the model file's provenance"),
             arg("--data", nargs="+", help="training data paths (override)"),
             arg("--valid-fraction", type=float, help="override the split's validation fraction"),
             arg("--split-seed", type=int, help="override the split's seed"),
             arg("--test-data", nargs="*", help="extra data sets; their systems with a phase are evaluated whole"),
             arg("--max-frames-per-phase", type=int, help="random subset of at most this many frames per phase "
                                                            "(0: all)"),
             arg("--amorphous-max-k", type=float, help="highest quench temperature counted as amorphous"),
             arg("--seed", type=int, help="seed of the frame subset"),
             out_arg("folder for accuracy.json/.md and parity-*.png", default="build/phases"),
             arg("--json", help="metrics JSON path (default OUTPUT/accuracy.json)"),
             arg("--markdown", help="Markdown report path (default OUTPUT/accuracy.md)"),
             arg("--figures", help="figure path prefix: PREFIX-<phase>.png, PREFIX-all.png, PREFIX-phases.png "
                                     "(default OUTPUT/parity)"),
             arg("--no-evidence", action="store_true", help="skip the phase-mapping evidence (MSD, order, g(r))"),
             threads_arg())
def cmd_phases(args):
    from contract import modelfile
    from model.train import DataConfig, load_json_config
    from .recipe import EVALUATION_DEFAULTS, evaluate_model, load_recipe
    set_threads(args.threads)
    evaluation = dict(EVALUATION_DEFAULTS)
    if args.config:
        raw = json.loads(Path(args.config).read_text())
        if "recipe" in raw:
            r = load_recipe(args.config)
            data, evaluation = r.data, r.evaluation
        else:
            data = load_json_config(args.config)[1]
    else:
        prov = (modelfile.load(args.model).provenance or {}).get("data")
        if not prov and not args.data:
            raise ValueError(f"{args.model} records no training data: give --config or --data")
        data = DataConfig(**prov) if prov else DataConfig()
    if args.data:
        data = replace(data, systems=[str(Path(p).resolve()) for p in args.data])
    if args.valid_fraction is not None:
        data = replace(data, valid_fraction=args.valid_fraction)
    if args.split_seed is not None:
        data = replace(data, seed=args.split_seed)
    if args.test_data is not None:
        evaluation["test_systems"] = [str(Path(p).resolve()) for p in args.test_data]
    if args.max_frames_per_phase is not None:
        evaluation["max_frames_per_phase"] = args.max_frames_per_phase or None
    if args.amorphous_max_k is not None:
        evaluation["amorphous_max_K"] = args.amorphous_max_k
    evaluation["seed"] = args.seed if args.seed is not None else evaluation["seed"]
    out = Path(args.out)
    options = [("--config", args.config), ("--max-frames-per-phase", args.max_frames_per_phase),
               ("--amorphous-max-k", args.amorphous_max_k), ("--seed", args.seed), ("--json", args.json),
               ("--markdown", args.markdown), ("--figures", args.figures)]
    command = f"python -m science phases {args.model}" + "".join(f" {k} {v}" for k, v in options if v is not None)
    header = f"# Accuracy per phase: {Path(args.model).name}\n\nWritten by `{command}`.\n"
    doc = evaluate_model(args.model, data, evaluation, args.json or out / "accuracy.json",
                         args.markdown or out / "accuracy.md", args.figures or out / "parity", header,
                         evidence=not args.no_evidence)
    from .phases import markdown_table
    print(markdown_table(doc["metrics"]))
    print("wrote " + ", ".join(doc["files"].values()))


@cli.command("melt", "the main job: melt GeTe through LAMMPS with the cpu device, g(r) against AIMD, timing",
             out_arg("output folder (default build/melt)", default="build/melt"),
             model_arg(),
             arg("--cells", type=int, default=8, help="rock-salt cells along each axis, 8 atoms each (default 8: "
                                                      "4,096 atoms)"),
             arg("--steps", type=int, default=1000, help="MD steps of 2 fs, four stages (default 1000)"),
             arg("--threads", type=int, default=0, metavar="N",
                 help="cpu device threads (default 0: every core this process may use)"),
             arg("--reference-steps", type=int, default=3, help="steps timed with the NumPy reference device"),
             arg("--seed", type=int, default=20261207, help="velocity seed"))
def cmd_melt(args):
    from contract.paths import EXAMPLE_MODEL

    from .melt import Protocol, main_job
    if args.cells < 2 or args.steps < 4 or args.threads < 0 or args.reference_steps < 1:
        raise ValueError(f"need --cells >= 2, --steps >= 4, --threads >= 0, --reference-steps >= 1; got "
                         f"{args.cells}, {args.steps}, {args.threads}, {args.reference_steps}")
    model = Path(args.model).resolve() if args.model else EXAMPLE_MODEL
    if not model.exists():
        raise ValueError(f"model file {model} does not exist")
    main_job(Path(args.out).resolve(), Protocol(cells=args.cells, steps=args.steps, seed=args.seed), model,
             threads=args.threads, reference_steps=args.reference_steps)


@cli.command("melt-quench", "melt-quench MD with a teacher potential -> DeePMD npy + provenance",
             arg("config", help="melt-quench JSON (e.g. examples/Sb/melt-quench.json)"),
             out_arg("dataset folder (resumes if it holds a checkpoint)", required=True),
             arg("--short", action="store_true", help="the config's 'short' settings (CI-sized, not for training)"),
             arg("--fresh", action="store_true", help="delete PATH first instead of resuming"),
             arg("--teacher", help="another teacher spec than the config's, e.g. dpfpga:MODEL.npz to run the "
                                      "quantized student through the same protocol"),
             arg("--scale", type=float, help="multiply every stage's steps (e.g. 0.3: a 3x faster protocol)"),
             arg("--volume-per-atom", type=float, metavar="A3",
                    help="start from the config's crystal rescaled to this volume per atom (Å³): the NVT "
                         "run's density (e.g. several datasets for a model that sees compression)"),
             arg("--no-progress", action="store_true", help="no progress bar"),
             threads_arg("teacher's torch threads"), group="data")
def cmd_melt_quench(args):
    from .meltquench import MeltQuench, load_config
    set_threads(args.threads)
    cfg = load_config(args.config, short=args.short, scale=args.scale, teacher=args.teacher,
                      volume_per_atom=args.volume_per_atom)
    prov = MeltQuench(cfg, args.out, fresh=args.fresh, progress=not args.no_progress).run()
    print(f"{args.out}: {prov['total_frames']} frames in {len(prov['frames'])} systems, "
          f"teacher {prov['teacher']['spec']}, {prov['seconds']:.0f} s of MD; provenance.json written")


@cli.command("teacher-test", "RMSE of a teacher potential against labelled (e.g. DFT) frames",
             arg("teacher", help="teacher spec: sevenn:NAME, mace:PATH, lj[:SIGMA:EPSILON]"),
             arg("data", nargs="+", help="DeePMD systems or ASE-readable files with energies and forces"),
             arg("--max-frames", type=int, help="a seeded random subset of this many frames"),
             arg("--seed", type=int, default=0),
             arg("--json", help="write the metrics here"),
             threads_arg(), group="data")
def cmd_teacher_test(args):
    from model.data import load_systems
    from .teachers import make_teacher, teacher_errors
    set_threads(args.threads)
    metrics = teacher_errors(make_teacher(args.teacher), load_systems(args.data), args.max_frames, args.seed)
    metrics["data"] = [str(p) for p in args.data]
    print(f"teacher {args.teacher} on {metrics['frames']} frames: energy RMSE "
          f"{metrics['energy_rmse_meV_per_atom']:.2f} meV/atom ({metrics['energy_rmse_offset_removed_meV_per_atom']:.2f}"
          f" with the mean error removed), force RMSE {metrics['force_rmse_meV_per_A']:.1f} meV/Å")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=1))
        print(f"wrote {args.json}")


@cli.command("compare", "g(r) of the student's melt-quench MD against the teacher's, per hold",
             arg("teacher_dir", help="dataset made by the teacher (python -m science data melt-quench)"),
             arg("student_dir", help="the same protocol run with --teacher dpfpga:MODEL.npz"),
             out_arg("output prefix: PREFIX.json, PREFIX-<system>.png", required=True),
             arg("--systems", nargs="+", help="system folders (stage/temp-TK) to compare (default: the "
                                                 "hottest melt and the coldest quench folder)"),
             arg("--skip", type=int, default=0, help="leave out the first K frames of each system"), group="data")
def cmd_compare(args):
    from .meltquench import compare_structures
    report = compare_structures(args.teacher_dir, args.student_dir, args.out, args.systems, skip=args.skip)
    for name, entry in report["systems"].items():
        tot = entry["rdf"]["total"]
        print(f"{name}: {entry['frames']['student']} student / {entry['frames']['teacher']} teacher frames; total "
              f"g(r) first peak shift {tot['peak_shift']:+.3f} Å, ∫|Δg| {tot['l1']:.3f} Å")
    print(f"wrote {args.out}.json and the figures")


def main(argv=None) -> int:
    from model.data import DataError
    cli.errors += (DataError,)
    return cli.main(argv)
