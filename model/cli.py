"""`python -m model`: train, quantize, test and inspect DeePMD-style models for the dpfpga pipeline."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from contract.cli import CommandLine, arg, default_threads, model_arg, out_arg, set_threads, threads_arg, torch_threads
from contract.modelfile import ModelFileError
from contract.paths import EXAMPLE_MODEL, GETE_AIMD, shared_data


OVERVIEW = """\
dpfpga model tools: a DeePMD-style potential (se_a descriptor, embedding 1x8x16x32, fitting 3x128,
tanh4) trained in PyTorch, quantized to fixed point, and exported as one model file whose integers
the hardware reproduces bit for bit.

  python -m model train CONFIG.json [-o RUN_DIR]       train the float model (writes RUN_DIR/model.pt)
  python -m model quantize RUN_DIR/model.pt -o M.npz   calibrate, build tables, fine-tune (QAT), export
  python -m model test M.npz DATA... --json metrics.json --plot parity.png
                                                       RMSE of float and quantized model vs labels
  python -m model import MODEL.pb -o OUT.pt            a DeePMD-kit se_a model (frozen graph .pb, or native
                                                       .dp / .yaml) as our float model (OUT.npz with
                                                       --calib DATA: quantized)
  python -m model info M.npz                           formats, tables, provenance of a model file
  python -m model example                              path of the bundled GeTe example model
  python -m model demo [-o build/demo]                 the bundled model on a GeTe structure: bit-exact
                                                       reference vs float model (and vs DFT frames it never
                                                       trained on, if ../shared is there)

DATA is a DeePMD npy system (or a folder of them) or any file ASE reads (extxyz with energies/forces).
Run `python -m model COMMAND --help` for the options of each command.

The workflows that use a model (g(r) and ALTBC of a trajectory, one-command recipes, accuracy per phase,
teacher-labelled datasets: rdf, recipe, phases, data) are `python -m science`.
"""


cli = CommandLine("python -m model", OVERVIEW, errors=(ModelFileError, KeyError, ValueError))


@cli.command("train", "train the float model from a JSON config",
             arg("config", help="training JSON (model, data, training sections)"),
             out_arg("run directory (default: runs/<config name>)"),
             arg("--steps", type=int, help="override training.steps"),
             arg("--threads", type=int, metavar="N", help="torch threads (default: the config's training.threads, "
                 f"else {default_threads()}, which fits this machine: 0 is torch's default, every core)"))
def cmd_train(args):
    """Train the float model; writes RUN_DIR/model.pt, train.json, lcurve.out and checkpoints."""
    from .train import load_json_config, train
    mcfg, dcfg, tcfg = load_json_config(args.config)
    if args.steps is not None:
        tcfg = replace(tcfg, steps=args.steps)
    tcfg = replace(tcfg, threads=args.threads if args.threads is not None else (tcfg.threads or default_threads()))
    set_threads(tcfg.threads)
    out = Path(args.out or Path("runs") / Path(args.config).with_suffix("").name)
    train(mcfg, dcfg, tcfg, out)
    print(f"float model: {out / 'model.pt'}")


@cli.command("quantize", "quantize a trained checkpoint, fine-tune, export the model file",
             arg("checkpoint", help="RUN_DIR/model.pt of `python -m model train`"),
             out_arg("model file to write (.npz)", required=True),
             arg("--config", help="training config for data and split (default: train.json next to the checkpoint)"),
             arg("--finetune-steps", type=int, default=2000, help="quantization-aware fine-tuning steps (0: none)"),
             arg("--lr", type=float, default=1e-6, help="fine-tuning learning rate (constant)"),
             arg("--eval-frames", type=int, default=64, help="validation frames for the before/after RMSE"),
             arg("--calib-frames", type=int, default=16, help="frames used to calibrate formats"),
             threads_arg())
def cmd_quantize(args):
    """Choose r_min and the formats from the training data, build the tables and integer weights, fine-tune
    with quantization in the loop, and write the model file (its provenance holds the report)."""
    set_threads(args.threads)
    from .pipeline import quantize_and_finetune
    report = quantize_and_finetune(args.checkpoint, args.out, config=args.config, steps=args.finetune_steps,
                                   lr=args.lr, eval_frames=args.eval_frames, calib_frames=args.calib_frames)
    print(json.dumps({**report, "torch_threads": torch_threads()}, indent=1))
    print(f"model file: {Path(args.out).resolve()}")


@cli.command("test", "RMSE of float and quantized models against labelled data",
             arg("model", help="model file (.npz)"), arg("data", nargs="+", help="DeePMD systems or ASE-readable files"),
             arg("--json", help="write metrics JSON here"), arg("--plot", help="write parity plot PNG here"),
             arg("--csv", help="write per-frame energies CSV here"),
             arg("--max-frames", type=int, help="evaluate a random subset of this many frames"),
             arg("--seed", type=int, default=0, help="seed of that subset"),
             threads_arg())
def cmd_test(args):
    """Energy, force (and virial) RMSE of the float model and of the bit-exact quantized one."""
    set_threads(args.threads)
    from contract import modelfile
    from .data import load_systems
    from .metrics import test_model
    from .quantize import float_model
    qm = modelfile.load(args.model)
    systems = [s.remap_types(qm.config.type_map) for s in load_systems(args.data)]
    m = test_model(qm, float_model(qm), systems, max_frames=args.max_frames, seed=args.seed,
                   json_path=args.json, plot_path=args.plot, csv_path=args.csv)
    f, q = m["float"], m["quantized"]
    print(f"frames: {m['frames']} (torch threads: {torch_threads()})")
    for name, r in (("float", f), ("quantized", q)):
        print(f"{name:>10}: energy RMSE {r.get('rmse_e', float('nan')) * 1e3:8.3f} meV/atom   "
              f"force RMSE {r.get('rmse_f', float('nan')) * 1e3:8.2f} meV/Å")
    d = m["quantized_vs_float"]
    print(f"quantized - float: energy {d['rmse_e'] * 1e3:.4f} meV/atom, force {d['rmse_f'] * 1e3:.4f} meV/Å RMS")


@cli.command("import", "import a DeePMD-kit se_a energy model (frozen graph .pb, read without TensorFlow; "
             "native .dp / .yaml, read without DeePMD-kit) or an NVNMD v0 hardware model file",
             arg("source", help="frozen graph (.pb) of `dp freeze`, DeePMD-kit's native model (.dp, .yaml: "
                 "`dp convert-backend MODEL.pth MODEL.dp` for a PyTorch model), or NVNMD's wrapped "
                 "nvnmd_qnn/model.pb"),
             arg("--format", choices=("auto", "deepmd", "nvnmd-v0"), default="auto",
                 help="the source's format (auto: an NVNMD v0 file by its head, else DeePMD-kit's: a frozen "
                      "graph, or a native file by its suffix)"),
             arg("--type-map", nargs="+", help="nvnmd-v0: the element of each type (the file names none)"),
             out_arg("OUT.pt: the float model as a checkpoint; OUT.npz: the quantized model file (needs --calib)",
                     required=True),
             arg("--calib", nargs="+", help="DeePMD systems or ASE-readable files: calibration frames for the "
                 "quantizer, and the r_min scan"),
             arg("--calib-frames", type=int, default=16, help="frames used to calibrate formats"),
             threads_arg())
def cmd_import(args):
    """Read the graph or the NVNMD file, refuse what our model cannot represent (naming the field), build our
    float model (options env_norm, pad_slots, fit_activation, desc_band, embed_table as the source needs), and
    write it with its provenance
    (source file and SHA-256, what was imported, what was folded)."""
    set_threads(args.threads)
    from .deepmd import import_graph
    from .dpmodel import SUFFIXES, import_dpmodel
    out = Path(args.out)
    if out.suffix not in (".pt", ".npz"):
        raise ValueError(f"-o {out}: write a .pt (float checkpoint) or an .npz (quantized model file)")
    if out.suffix == ".npz" and not args.calib:
        raise ValueError("a quantized import (-o *.npz) needs --calib DATA: calibration frames for the quantizer")
    from .nvnmd import import_nvnmd, is_nvnmd_file
    fmt = args.format
    if fmt == "auto":
        fmt = "nvnmd-v0" if is_nvnmd_file(args.source) else "deepmd"
    if fmt == "nvnmd-v0":
        model, provenance = import_nvnmd(args.source, args.type_map)
    else:
        if args.type_map:
            raise ValueError("--type-map is for NVNMD files: a frozen graph names its types (model_attr/tmap)")
        model, provenance = (import_dpmodel if Path(args.source).suffix in SUFFIXES else import_graph)(args.source)
    imp = provenance["import"]
    print(f"imported {imp['descriptor']} model {args.source} (sha256 {imp['sha256']}): type_map {imp['type_map']}, "
          f"sel {imp['sel']}, rcut {imp['rcut']}, options {sorted(imp['options'])}")
    if out.suffix == ".pt":
        from .train import save_checkpoint
        out.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, out, {"provenance": provenance})
        print(f"float model: {out.resolve()}")
        return
    from contract import modelfile
    from .data import load_systems
    from .quantize import quantize
    systems = [s.remap_types(model.cfg.type_map) for s in load_systems(args.calib)]
    qm = quantize(model, systems, nframes=args.calib_frames)
    qm.provenance.update(provenance)
    modelfile.save(qm, out)
    print(f"model file: {out.resolve()}")


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


@cli.command("info", "describe a model file", arg("model", help="model file (.npz)"),
             arg("--json", action="store_true", help="also print the whole header"))
def cmd_info(args):
    """Configuration, r_min and the training data's shortest distance, formats, tables, fitting layers,
    the content hash and the provenance (training data and split, checkpoint, fine-tuning, RMSE before
    and after); --json adds the whole header."""
    from contract import modelfile
    qm = modelfile.load(args.model)
    cfg = qm.config
    print(f"model: {Path(args.model).resolve()}\nhash: {qm.hash}")
    print(f"type_map {cfg.type_map}  rcut {cfg.rcut}  rcut_smth {cfg.rcut_smth}  sel {cfg.sel}  r_min {cfg.r_min}")
    print(r_min_text(qm))
    nb = qm.provenance.get("neighbors")
    if nb:
        per = ", ".join(f"{t} {v['mean']:.2f}" for t, v in nb.get("per_type", {}).items())
        print(f"neighbours within rcut: mean {nb['mean']:.2f} ({per}), max {nb['max']} over {nb.get('frames')} "
              f"frames; source: {nb.get('source', 'the training split')}")
    else:
        print("neighbours within rcut: not recorded (gen build's throughput estimate then needs --neighbours N)")
    print(f"norm_shift {cfg.norm_shift}  desc_shift {cfg.desc_shift}")
    opts = cfg.options()
    print("options: " + (", ".join(f"{k} {v}" for k, v in opts.items()) if opts else "none"))
    print("formats: " + "  ".join(f"{k}={v.describe()}" for k, v in sorted(qm.formats.items())))
    for name, t in [("s(u)", qm.table_s), ("h(u)", qm.table_h)] + [(f"G[{cfg.type_map[k]}](s)", g)
                                                                  for k, g in enumerate(qm.table_g)]:
        print(f"table {name}: {t.nseg} segments of 2^-{t.seg_shift}, {t.nch} ch, coef {t.coef_fmt.describe()}")
    for t, layers in enumerate(qm.fit):
        print(f"fit[{cfg.type_map[t]}]: " + ", ".join(f"{l.W.shape[0]}x{l.W.shape[1]} W s{qm.formats['W'].bits}.{l.wfrac}"
                                                    for l in layers) + f", out s{qm.formats['W'].bits}.{qm.out_wfrac[t]}")
    for line in provenance_lines(qm.provenance or {}):
        print(line)
    if args.json:
        print(json.dumps(qm.header(), indent=1))


def provenance_lines(prov: dict) -> list[str]:
    """Where a model file came from, in words: its training data and split, the checkpoint it was
    quantized from, the fine-tuning and the RMSE before and after (r_min and the neighbour statistics
    have lines of their own).  --json prints the whole record."""
    lines = []
    data = prov.get("data")
    if data:
        lines.append(f"training data: {', '.join(map(str, data.get('systems', [])))} (validation fraction "
                     f"{data.get('valid_fraction')}, split seed {data.get('seed')}: the frames never trained on)")
    q = prov.get("quantization")
    if q:
        ft = q.get("finetune") or {}
        lines.append(f"quantized from {q.get('checkpoint')}: QAT fine-tuning {ft.get('steps', 0)} steps at lr "
                     f"{ft.get('lr')}" + (f" ({q['seconds']:.0f} s in all)" if q.get("seconds") is not None else ""))
        for key, name in (("float", "float model"), ("quantized_before_finetune", "quantized, before QAT"),
                          ("quantized_after_finetune", "quantized, after QAT")):
            r = q.get(key)
            if r and "rmse_e" in r and "rmse_f" in r:
                lines.append(f"  {name:<22} energy RMSE {r['rmse_e'] * 1e3:.2f} meV/atom, force RMSE "
                             f"{r['rmse_f'] * 1e3:.1f} meV/Å on {r.get('frames')} validation frames")
    imp = prov.get("import")
    if imp:
        lines.append(f"imported from {imp.get('source')} (sha256 {imp.get('sha256')}): DeePMD-kit {imp.get('descriptor')}, "
                     f"model version {imp.get('model_version')}; {imp.get('folded')}")
    other = sorted(set(prov) - {"data", "quantization", "r_min", "neighbors", "import"})
    if other:
        lines.append(f"provenance also records: {', '.join(other)} (--json prints them)")
    if not prov:
        lines.append("provenance: none recorded in this model file")
    return lines


@cli.command("example", "print the path of the bundled example model")
def cmd_example(args):
    if not EXAMPLE_MODEL.exists():
        sys.exit(f"error: bundled example model missing at {EXAMPLE_MODEL}")
    print(EXAMPLE_MODEL)


@cli.command("demo", "run the bundled model end to end on a generated GeTe structure",
             model_arg(), out_arg("output folder (default build/demo)", default="build/demo"),
             arg("--frames", type=int, default=16, help="validation AIMD frames for the DFT comparison"),
             arg("--no-dft", action="store_true", help="skip the comparison with ../shared/data"),
             threads_arg())
def cmd_demo(args):
    """The README's main job: bundled model, generated GeTe structure, reference vs float, JSON out; then,
    where ../shared/data holds the GeTe AIMD frames, the model against DFT on frames of its training
    data's validation split (never trained on), named in demo.json."""
    import numpy as np
    from ase.build import bulk

    from contract import modelfile
    from .assembly import compute
    from .data import System
    from .metrics import predict_float
    from .quantize import float_model
    set_threads(args.threads)
    out = Path(args.out)
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
              "torch_threads": torch_threads(),
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
        report["vs_dft"] = demo_vs_dft(qm, shared, args.frames, out)
        m = report["vs_dft"]
        print(f"vs DFT: {m['frames']} frames the model never trained on: {m['frames_from']}; listed in demo.json "
              "(vs_dft.frame_list)")
        for name in ("float", "quantized"):
            r = m[name]
            print(f"  {name:>9}: energy RMSE {r['rmse_e'] * 1e3:.2f} meV/atom, force RMSE {r['rmse_f'] * 1e3:.1f} meV/Å")
    else:
        print(f"(no DFT comparison: {shared} not found)" if not args.no_dft else "(no DFT comparison: --no-dft)")
    (out / "demo.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'demo.json'}, {out / 'forces.csv'}" + (f", {out / 'parity.png'}" if "vs_dft" in report else ""))


def demo_vs_dft(qm, shared: Path, frames: int, out: Path, seed: int = 0) -> dict:
    """The model against DFT on `frames` random frames of the validation side of its own training split
    (the model file records the data's split fraction and seed; the other side was trained on).  The
    metrics name every frame: its system folder (relative to `shared`) and its frame number there."""
    from .data import load_systems, split_indices
    from .metrics import select_frames, test_model
    from .quantize import float_model
    split = qm.provenance.get("data") or {}
    if "valid_fraction" not in split or "seed" not in split:
        raise ValueError(f"the model file records no training split (provenance 'data'): the demo cannot tell "
                         f"which frames of {shared} it never trained on; run with --no-dft")
    fraction, split_seed = split["valid_fraction"], split["seed"]
    systems = [s.remap_types(qm.config.type_map) for s in load_systems(shared)]
    valid, names = [], []
    for system, (_, idx) in zip(systems, split_indices(systems, fraction, split_seed)):
        if len(idx):
            valid.append(system.subset(idx))
            names.append((Path(system.name).resolve().relative_to(shared.resolve()).as_posix(), idx))
    # the same frames test_model picks (select_frames, same seed), named by their place in the data
    index = {id(s): k for k, s in enumerate(valid)}
    listed = [{"system": names[index[id(s)]][0], "frame": int(names[index[id(s)]][1][f])}
              for s, f in select_frames(valid, frames, seed)]
    m = test_model(qm, float_model(qm), valid, max_frames=frames, seed=seed, json_path=out / "dft-metrics.json",
                   plot_path=out / "parity.png")
    m["frames_from"] = (f"{len(listed)} random (seed {seed}) of the {sum(s.nframes for s in valid)} validation "
                        f"frames ({fraction:.0%} split, split seed {split_seed}) of {shared}")
    m["frame_list"] = listed
    (out / "dft-metrics.json").write_text(json.dumps(m, indent=1))
    return m


# The science workflows moved to `python -m science` (science/cli.py).  model is below science in the
# layering and must not import it, so the names are listed here and an old command line gets one line
# saying where its command went instead of argparse's "invalid choice".
MOVED_TO_SCIENCE = {"rdf": (), "recipe": (), "phases": (), "data": ("melt-quench", "teacher-test", "compare")}


def moved_command(argv) -> str | None:
    """The `error: ...` line for a command line of a command that moved to `python -m science`, else None.

    A moved subcommand (`data melt-quench`) is named with its group.
    """
    if not argv or argv[0] not in MOVED_TO_SCIENCE:
        return None
    name = argv[0]
    if len(argv) > 1 and argv[1] in MOVED_TO_SCIENCE[name]:
        name = f"{name} {argv[1]}"
    return f"error: `{name}` moved to `python -m science {name}` (same arguments)"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    moved = moved_command(argv)
    if moved:
        print(moved, file=sys.stderr)
        return 2
    from .data import DataError
    cli.errors += (DataError,)
    return cli.main(argv)
