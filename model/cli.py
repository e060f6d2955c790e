"""`python -m model`: train, quantize, test and inspect DeePMD-style models for the dpfpga pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from contract.paths import EXAMPLE_MODEL, GETE_AIMD, shared_data


OVERVIEW = """\
dpfpga model tools: a DeePMD-style potential (se_a descriptor, embedding 1x8x16x32, fitting 3x128,
tanh4) trained in PyTorch, quantized to fixed point, and exported as one model file whose integers
the hardware reproduces bit for bit.

  python -m model train CONFIG.json [-o RUN_DIR]       train the float model (writes RUN_DIR/model.pt)
  python -m model quantize RUN_DIR/model.pt -o M.npz   calibrate, build tables, fine-tune (QAT), export
  python -m model test M.npz DATA... --json metrics.json --plot parity.png
                                                       RMSE of float and quantized model vs labels
  python -m model info M.npz                           formats, tables, provenance of a model file
  python -m model example                              path of the bundled GeTe example model
  python -m model demo [-o build/demo]                 the bundled model on a GeTe structure: bit-exact
                                                       reference vs float model (and vs DFT if ../shared is there)
  python -m model rdf TRAJ -o OUT [--altbc]            g(r), coordination numbers (and ALTBC) of a trajectory,
                                                       compared with the AIMD reference curves of a-GeTe
  python -m model recipe RECIPE.json -o RUN_DIR [--short]
                                                       the recipe's datasets (if any), train, quantize + fine-tune,
                                                       accuracy per phase: one command
  python -m model phases M.npz [--config RECIPE.json]  float and quantized RMSE per phase (crystalline, liquid,
                                                       amorphous) on the training's validation frames
  python -m model data melt-quench CONFIG.json -o DIR  labelled melt-quench data from a teacher potential
                                                       (resumable; DeePMD npy + provenance.json)
  python -m model data teacher-test SPEC DATA...       a teacher's own RMSE against labelled (DFT) frames
  python -m model data compare TEACHER STUDENT -o P    g(r) of the student's MD vs the teacher's, per hold

DATA is a DeePMD npy system (or a folder of them) or any file ASE reads (extxyz with energies/forces).
Run `python -m model COMMAND --help` for the options of each command.
"""


def cmd_train(args):
    from .train import load_json_config, train
    mcfg, dcfg, tcfg = load_json_config(args.config)
    if args.steps is not None:
        tcfg = replace(tcfg, steps=args.steps)
    out = Path(args.output or Path(args.config).with_suffix("").name + "-run")
    train(mcfg, dcfg, tcfg, out)
    print(f"float model: {out / 'model.pt'}")


def cmd_quantize(args):
    from .pipeline import quantize_and_finetune
    report = quantize_and_finetune(args.checkpoint, args.output, config=args.config, steps=args.finetune_steps,
                                   lr=args.lr, eval_frames=args.eval_frames, calib_frames=args.calib_frames)
    print(json.dumps(report, indent=1))
    print(f"model file: {Path(args.output).resolve()}")


def cmd_test(args):
    from contract import modelfile
    from .data import load_systems
    from .metrics import test_model
    from .quantize import float_model
    qm = modelfile.load(args.model)
    systems = [s.remap_types(qm.config.type_map) for s in load_systems(args.data)]
    m = test_model(qm, float_model(qm), systems, max_frames=args.max_frames, seed=args.seed,
                   json_path=args.json, plot_path=args.plot, csv_path=args.csv)
    f, q = m["float"], m["quantized"]
    print(f"frames: {m['frames']}")
    for name, r in (("float", f), ("quantized", q)):
        print(f"{name:>10}: energy RMSE {r.get('rmse_e', float('nan')) * 1e3:8.3f} meV/atom   "
              f"force RMSE {r.get('rmse_f', float('nan')) * 1e3:8.2f} meV/Å")
    d = m["quantized_vs_float"]
    print(f"quantized - float: energy {d['rmse_e'] * 1e3:.4f} meV/atom, force {d['rmse_f'] * 1e3:.4f} meV/Å RMS")


def r_min_text(qm) -> str:
    """Where the tables start, and how far below the training data that is."""
    rec = qm.provenance.get("r_min") or {}
    d = rec.get("training_min_distance")
    head = (f"r_min {qm.config.r_min} Å: the tables start here; a closer pair is an error unless allowed "
            "(below_rmin allow)\n")
    if d is None:
        return head + ("training data's shortest distance: not recorded in this model file (quantized before "
                       "dpfpga recorded it, or its data is not known)")
    where = f"{rec.get('frames')} frames, shortest in {rec.get('system')} frame {rec.get('frame')}"
    note = f"; {rec['note']}" if rec.get("note") else ""
    return head + (f"training data's shortest distance {d:.4f} Å ({where}); r_min is {qm.config.r_min / d:.3f} of it"
                   f"{note}")


def cmd_info(args):
    from contract import modelfile
    qm = modelfile.load(args.model)
    cfg = qm.config
    print(f"model: {Path(args.model).resolve()}\nhash: {qm.hash}")
    print(f"type_map {cfg.type_map}  rcut {cfg.rcut}  rcut_smth {cfg.rcut_smth}  sel {cfg.sel}  r_min {cfg.r_min}")
    print(r_min_text(qm))
    print(f"norm_shift {cfg.norm_shift}  desc_shift {cfg.desc_shift}")
    print("formats: " + "  ".join(f"{k}={v.describe()}" for k, v in sorted(qm.formats.items())))
    for name, t in [("s(u)", qm.table_s), ("h(u)", qm.table_h)] + [(f"G[{cfg.type_map[k]}](s)", g)
                                                                  for k, g in enumerate(qm.table_g)]:
        print(f"table {name}: {t.nseg} segments of 2^-{t.seg_shift}, {t.nch} ch, coef {t.coef_fmt.describe()}")
    for t, layers in enumerate(qm.fit):
        print(f"fit[{cfg.type_map[t]}]: " + ", ".join(f"{l.W.shape[0]}x{l.W.shape[1]} W s{qm.formats['W'].bits}.{l.wfrac}"
                                                    for l in layers) + f", out s{qm.formats['W'].bits}.{qm.out_wfrac[t]}")
    if args.json:
        print(json.dumps(qm.header(), indent=1))


def cmd_example(args):
    if not EXAMPLE_MODEL.exists():
        sys.exit(f"error: bundled example model missing at {EXAMPLE_MODEL}")
    print(EXAMPLE_MODEL)


def cmd_demo(args):
    """The README's main job: bundled model, generated GeTe structure, reference vs float, JSON out."""
    import numpy as np
    from ase.build import bulk

    from contract import modelfile
    from .assembly import compute
    from .data import System
    from .metrics import predict_float
    from .quantize import float_model
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    qm = modelfile.load(args.model or EXAMPLE_MODEL)
    atoms = bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((3, 3, 3))
    atoms.positions += np.random.default_rng(0).normal(0.0, 0.08, atoms.positions.shape)
    types = np.array([qm.config.type_map.index(e) for e in atoms.get_chemical_symbols()])
    a = compute(qm, atoms.positions, atoms.cell.array, True, types)
    system = System(name="rocksalt-216", type_map=qm.config.type_map, types=types, coords=atoms.positions[None],
                    cells=atoms.cell.array[None], pbc=True)
    e_f, f_f, v_f = predict_float(float_model(qm), system, 0)
    report = {"model": str(Path(args.model or EXAMPLE_MODEL).resolve()), "model_hash": qm.hash,
              "structure": "rock-salt GeTe 3x3x3 (216 atoms), a = 6.0 Å, 0.08 Å Gaussian displacements, seed 0",
              "reference": {"energy_eV": a.energy, "energy_int": a.energy_int, "max_force_eV_per_A":
                            float(np.abs(a.forces).max()), "flags": int(np.bitwise_or.reduce(a.flags))},
              "float": {"energy_eV": e_f, "max_force_eV_per_A": float(np.abs(f_f).max())},
              "reference_minus_float": {"energy_meV_per_atom": (a.energy - e_f) / len(atoms) * 1e3,
                                        "force_rms_meV_per_A": float(np.sqrt(((a.forces - f_f) ** 2).mean())) * 1e3}}
    print(f"model {report['model']}\n  hash {qm.hash}")
    print(f"structure: {report['structure']}")
    print(f"bit-exact reference: E = {a.energy:.6f} eV (integer {a.energy_int} x 2^-{qm.formats['E'].frac}), "
          f"max |F| = {report['reference']['max_force_eV_per_A']:.4f} eV/Å, flags {report['reference']['flags']}")
    d = report["reference_minus_float"]
    print(f"float model:         E = {e_f:.6f} eV; reference - float: {d['energy_meV_per_atom']:.4f} meV/atom, "
          f"force RMS {d['force_rms_meV_per_A']:.4f} meV/Å")
    np.savetxt(out / "forces.csv", np.column_stack([types, a.forces, f_f]), delimiter=",",
               header="type,fx_ref,fy_ref,fz_ref,fx_float,fy_float,fz_float", comments="", fmt="%.10g")
    shared = shared_data() / GETE_AIMD
    if shared.exists() and not args.no_dft:
        from .data import load_systems
        from .metrics import test_model
        systems = [s.remap_types(qm.config.type_map) for s in load_systems(shared)]
        m = test_model(qm, float_model(qm), systems, max_frames=args.frames, json_path=out / "dft-metrics.json",
                       plot_path=out / "parity.png")
        report["vs_dft"] = m
        print(f"vs DFT ({m['frames']} random AIMD frames from {shared}):")
        for name in ("float", "quantized"):
            r = m[name]
            print(f"  {name:>9}: energy RMSE {r['rmse_e'] * 1e3:.2f} meV/atom, force RMSE {r['rmse_f'] * 1e3:.1f} meV/Å")
    else:
        print(f"(no DFT comparison: {shared} not found)")
    (out / "demo.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'demo.json'}, {out / 'forces.csv'}" + (f", {out / 'parity.png'}" if "vs_dft" in report else ""))


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

    out = Path(args.output)
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
                  "--altbc-bonds Ge-Te: see model.analysis.altbc)")

    report["files"] = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps(report, indent=1))
    print("wrote " + ", ".join(str(v) for v in files.values()))


def _threads(n):
    if n:
        import torch
        torch.set_num_threads(n)


def cmd_recipe(args):
    from .recipe import load_recipe, run
    _threads(args.threads)
    recipe = load_recipe(args.recipe, short=args.short)
    if args.data:  # e.g. a dataset generated with another --scale or into another folder
        recipe.data.systems = [str(Path(p).resolve()) for p in args.data]
    out = args.output or ("runs/" + Path(args.recipe).stem + ("-short" if args.short else ""))
    run(recipe, out, fresh=args.fresh)


def cmd_phases(args):
    from contract import modelfile
    from .recipe import EVALUATION_DEFAULTS, evaluate_model, load_recipe
    from .train import DataConfig, load_json_config
    _threads(args.threads)
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
    out = Path(args.output)
    options = [("--config", args.config), ("--max-frames-per-phase", args.max_frames_per_phase),
               ("--amorphous-max-k", args.amorphous_max_k), ("--seed", args.seed), ("--json", args.json),
               ("--markdown", args.markdown), ("--figures", args.figures)]
    command = f"python -m model phases {args.model}" + "".join(f" {k} {v}" for k, v in options if v is not None)
    header = f"# Accuracy per phase: {Path(args.model).name}\n\nWritten by `{command}`.\n"
    doc = evaluate_model(args.model, data, evaluation, args.json or out / "accuracy.json",
                         args.markdown or out / "accuracy.md", args.figures or out / "parity", header,
                         evidence=not args.no_evidence)
    from .phases import markdown_table
    print(markdown_table(doc["metrics"]))
    print("wrote " + ", ".join(doc["files"].values()))


def cmd_melt_quench(args):
    from .meltquench import MeltQuench, load_config
    _threads(args.threads)
    cfg = load_config(args.config, short=args.short, scale=args.scale, teacher=args.teacher,
                      volume_per_atom=args.volume_per_atom)
    prov = MeltQuench(cfg, args.output, fresh=args.fresh, progress=not args.no_progress).run()
    print(f"{args.output}: {prov['total_frames']} frames in {len(prov['frames'])} systems, "
          f"teacher {prov['teacher']['spec']}, {prov['seconds']:.0f} s of MD; provenance.json written")


def cmd_teacher_test(args):
    from .data import load_systems
    from .teachers import make_teacher, teacher_errors
    _threads(args.threads)
    metrics = teacher_errors(make_teacher(args.teacher), load_systems(args.data), args.max_frames, args.seed)
    metrics["data"] = [str(p) for p in args.data]
    print(f"teacher {args.teacher} on {metrics['frames']} frames: energy RMSE "
          f"{metrics['energy_rmse_meV_per_atom']:.2f} meV/atom ({metrics['energy_rmse_offset_removed_meV_per_atom']:.2f}"
          f" with the mean error removed), force RMSE {metrics['force_rmse_meV_per_A']:.1f} meV/Å")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=1))
        print(f"wrote {args.json}")


def cmd_compare(args):
    from .meltquench import compare_structures
    report = compare_structures(args.teacher_dir, args.student_dir, args.output, args.systems, skip=args.skip)
    for name, entry in report["systems"].items():
        tot = entry["rdf"]["total"]
        print(f"{name}: {entry['frames']['student']} student / {entry['frames']['teacher']} teacher frames; total "
              f"g(r) first peak shift {tot['peak_shift']:+.3f} Å, ∫|Δg| {tot['l1']:.3f} Å")
    print(f"wrote {args.output}.json and the figures")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m model", description=OVERVIEW,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")

    t = sub.add_parser("train", help="train the float model from a JSON config")
    t.add_argument("config")
    t.add_argument("-o", "--output", help="run directory (default: <config name>-run)")
    t.add_argument("--steps", type=int, help="override training.steps")
    t.set_defaults(fn=cmd_train)

    q = sub.add_parser("quantize", help="quantize a trained checkpoint, fine-tune, export the model file")
    q.add_argument("checkpoint")
    q.add_argument("-o", "--output", required=True, help="model file to write (.npz)")
    q.add_argument("--config", help="training config for data and split (default: train.json next to the checkpoint)")
    q.add_argument("--finetune-steps", type=int, default=2000, help="quantization-aware fine-tuning steps (0: none)")
    q.add_argument("--lr", type=float, default=1e-6, help="fine-tuning learning rate (constant)")
    q.add_argument("--eval-frames", type=int, default=64, help="validation frames for the before/after RMSE")
    q.add_argument("--calib-frames", type=int, default=16, help="frames used to calibrate formats")
    q.set_defaults(fn=cmd_quantize)

    e = sub.add_parser("test", help="RMSE of float and quantized models against labelled data")
    e.add_argument("model")
    e.add_argument("data", nargs="+")
    e.add_argument("--json", help="write metrics JSON here")
    e.add_argument("--plot", help="write parity plot PNG here")
    e.add_argument("--csv", help="write per-frame energies CSV here")
    e.add_argument("--max-frames", type=int, help="evaluate a random subset of this many frames")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(fn=cmd_test)

    i = sub.add_parser("info", help="describe a model file")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="also print the whole header")
    i.set_defaults(fn=cmd_info)

    x = sub.add_parser("example", help="print the path of the bundled example model")
    x.set_defaults(fn=cmd_example)

    d = sub.add_parser("demo", help="run the bundled model end to end on a generated GeTe structure")
    d.add_argument("--model", help="model file (default: the bundled example)")
    d.add_argument("-o", "--output", default="build/demo")
    d.add_argument("--frames", type=int, default=16, help="AIMD frames for the DFT comparison")
    d.add_argument("--no-dft", action="store_true", help="skip the comparison with ../shared/data")
    d.set_defaults(fn=cmd_demo)

    r = sub.add_parser("rdf", help="g(r), coordination numbers and ALTBC of a trajectory, against AIMD")
    r.add_argument("trajectory", help="LAMMPS dump, extxyz, ... (anything ASE reads) or a DeePMD npy system")
    r.add_argument("-o", "--output", required=True, help="output prefix: writes PREFIX-rdf.csv/.json/.png")
    r.add_argument("--skip", type=int, default=0, help="leave out the first K frames (equilibration)")
    r.add_argument("--every", type=int, default=1, help="use every N-th frame after that")
    r.add_argument("--rmax", type=float, default=8.0, help="largest r of g(r), Å (may exceed half the box)")
    r.add_argument("--bins", type=int, default=160, help="number of g(r) bins over [0, rmax]")
    r.add_argument("--type-map", help="element order, e.g. Ge,Te; also names LAMMPS types 1, 2, ... when a "
                                      "dump has no element column")
    r.add_argument("--format", help="ASE format name when the file's own is not recognised")
    r.add_argument("--reference", help="folder of AIMD reference curves, or 'none' (default: "
                                       "../shared/data/GeTe-aimd-reference or $DPFPGA_SHARED_DATA/..., if present)")
    r.add_argument("--compare-range", default="2,8", help="r range LO,HI of the g(r) differences, Å")
    r.add_argument("--altbc", action="store_true", help="also the ALTBC map (PREFIX-altbc.npy/.csv/.png)")
    r.add_argument("--altbc-cutoff", type=float, help="ALTBC bond cutoff, Å (default: 4.5, the reference grid's top)")
    r.add_argument("--altbc-angle", type=float, default=25.0, help="ALTBC angle tolerance around 180°, degrees")
    r.add_argument("--altbc-bonds", help="element pairs that count as ALTBC bonds, e.g. Ge-Te (default: all)")
    r.set_defaults(fn=cmd_rdf)

    c = sub.add_parser("recipe", help="make the recipe's datasets, train, quantize + fine-tune and evaluate per phase, "
                                        "from one recipe file")
    c.add_argument("recipe", help="recipe JSON (e.g. examples/GeTe/recipe.json)")
    c.add_argument("-o", "--output", help="run directory (default: runs/<recipe name>[-short])")
    c.add_argument("--short", action="store_true", help="CI-sized run (the recipe's 'short' settings); its outputs "
                                                        "say so and its numbers are not the model's accuracy")
    c.add_argument("--data", nargs="+", help="training data paths instead of the recipe's data.systems")
    c.add_argument("--fresh", action="store_true", help="redo every stage but the datasets (default: reuse finished "
                                                        "stages whose settings and outputs match stages.json)")
    c.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default). 2 threads are 25%% "
                                                           "faster on an idle 2-core machine, 20x slower on a busy one")
    c.set_defaults(fn=cmd_recipe)

    h = sub.add_parser("phases", help="float and quantized RMSE per phase on the training's validation frames")
    h.add_argument("model")
    h.add_argument("--config", help="recipe or training JSON: its data section gives the split (and a recipe's "
                                    "evaluation section the test data); default: the model file's provenance")
    h.add_argument("--data", nargs="+", help="training data paths (override)")
    h.add_argument("--valid-fraction", type=float, help="override the split's validation fraction")
    h.add_argument("--split-seed", type=int, help="override the split's seed")
    h.add_argument("--test-data", nargs="*", help="extra data sets; their systems with a phase are evaluated whole")
    h.add_argument("--max-frames-per-phase", type=int, help="random subset of at most this many frames per phase "
                                                            "(0: all)")
    h.add_argument("--amorphous-max-k", type=float, help="highest quench temperature counted as amorphous")
    h.add_argument("--seed", type=int, help="seed of the frame subset")
    h.add_argument("-o", "--output", default="build/phases", help="folder for accuracy.json/.md and parity-*.png")
    h.add_argument("--json", help="metrics JSON path (default OUTPUT/accuracy.json)")
    h.add_argument("--markdown", help="Markdown report path (default OUTPUT/accuracy.md)")
    h.add_argument("--figures", help="figure path prefix: PREFIX-<phase>.png, PREFIX-all.png, PREFIX-phases.png "
                                     "(default OUTPUT/parity)")
    h.add_argument("--no-evidence", action="store_true", help="skip the phase-mapping evidence (MSD, order, g(r))")
    h.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    h.set_defaults(fn=cmd_phases)

    g = sub.add_parser("data", help="generate labelled data").add_subparsers(dest="data_cmd", required=True)
    mq = g.add_parser("melt-quench", help="melt-quench MD with a teacher potential -> DeePMD npy + provenance")
    mq.add_argument("config", help="melt-quench JSON (e.g. examples/Sb/melt-quench.json)")
    mq.add_argument("-o", "--output", required=True, help="dataset folder (resumes if it holds a checkpoint)")
    mq.add_argument("--short", action="store_true", help="the config's 'short' settings (CI-sized, not for training)")
    mq.add_argument("--fresh", action="store_true", help="delete OUTPUT first instead of resuming")
    mq.add_argument("--teacher", help="another teacher spec than the config's, e.g. dpfpga:MODEL.npz to run the "
                                      "quantized student through the same protocol")
    mq.add_argument("--scale", type=float, help="multiply every stage's steps (e.g. 0.3: a 3x faster protocol)")
    mq.add_argument("--volume-per-atom", type=float, metavar="A3",
                    help="start from the config's crystal rescaled to this volume per atom (Å³): the NVT "
                         "run's density (e.g. several datasets for a model that sees compression)")
    mq.add_argument("--no-progress", action="store_true", help="no progress bar")
    mq.add_argument("--threads", type=int, default=1, help="torch threads of the teacher (default 1; 0: torch's "
                                                            "default, much slower on a busy machine)")
    mq.set_defaults(fn=cmd_melt_quench)
    cp = g.add_parser("compare", help="g(r) of the student's melt-quench MD against the teacher's, per hold")
    cp.add_argument("teacher_dir", help="dataset made by the teacher (python -m model data melt-quench)")
    cp.add_argument("student_dir", help="the same protocol run with --teacher dpfpga:MODEL.npz")
    cp.add_argument("-o", "--output", required=True, help="output prefix: PREFIX.json, PREFIX-<system>.png")
    cp.add_argument("--systems", nargs="+", help="system folders (stage/temp-TK) to compare (default: the "
                                                 "hottest melt and the coldest quench folder)")
    cp.add_argument("--skip", type=int, default=0, help="leave out the first K frames of each system")
    cp.set_defaults(fn=cmd_compare)
    tt = g.add_parser("teacher-test", help="RMSE of a teacher potential against labelled (e.g. DFT) frames")
    tt.add_argument("teacher", help="teacher spec: sevenn:NAME, mace:PATH, lj[:SIGMA:EPSILON]")
    tt.add_argument("data", nargs="+", help="DeePMD systems or ASE-readable files with energies and forces")
    tt.add_argument("--max-frames", type=int, help="a seeded random subset of this many frames")
    tt.add_argument("--seed", type=int, default=0)
    tt.add_argument("--json", help="write the metrics here")
    tt.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)")
    tt.set_defaults(fn=cmd_teacher_test)

    args = p.parse_args(argv)
    if not args.cmd:
        print(OVERVIEW)
        return 0
    from .data import DataError
    from contract.modelfile import ModelFileError
    try:
        args.fn(args)
    except KeyboardInterrupt:
        return 130
    except (ModelFileError, DataError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
