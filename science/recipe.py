"""A model end to end, one command: `python -m science recipe RECIPE.json -o RUN_DIR [--short]`.

A recipe file holds the training configuration (``model``, ``data``, ``training``: the sections of
`python -m model train`) and a ``recipe`` section:

``stop_at_step``
    stop the float training at this step of the ``training.steps`` learning-rate schedule and use the
    model of that step (as the checkpoint ``ckpt-<step>.pt`` of a full run holds it: the optimizer has
    taken steps 0 ... stop_at_step).  null: train the whole schedule.
``quantize``
    ``finetune_steps``, ``lr``, ``eval_frames``, ``calib_frames``, ``seed``: the arguments of
    :func:`model.pipeline.quantize_and_finetune` (`python -m model quantize`).
``evaluation``
    ``max_frames_per_phase`` (null: every validation frame), ``seed``, ``amorphous_max_K`` and
    ``test_systems`` (extra data sets; only their systems with a phase are used, see
    :mod:`science.phases`).
``datasets``
    teacher-labelled datasets the recipe makes before it trains, so that one command goes from nothing
    to a model file: a list of ``{"melt_quench": CONFIG.json, "output": FOLDER, "scale": S,
    "volume_per_atom": V}`` (paths relative to the recipe; ``scale`` and ``volume_per_atom`` optional),
    each the run of `python -m science data melt-quench CONFIG.json --scale S --volume-per-atom V -o
    FOLDER`.  A dataset is made only if ``data.systems`` uses its folder; a complete one with the same
    config fingerprint is reused without loading its teacher, a partial one resumes.  With ``--short``
    each is made with its config's ``short`` protocol (``scale`` ignored) in ``RUN_DIR/datasets/``, and
    the training reads it from there.
``short``
    overrides for ``--short`` (a CI-sized run): ``training``, ``stop_at_step``, ``quantize``,
    ``evaluation`` are merged over the full settings.

Stages, in RUN_DIR: ``datasets/`` (``--short`` only: the CI-sized datasets; full ones go where
``recipe.datasets`` says), ``float/`` (train: `model.train.train`, lcurve, checkpoints, ``model.pt``,
``train.json``), ``model.npz`` (quantize + QAT fine-tune, `model.pipeline.quantize_and_finetune`; its
fine-tuning curve in ``model-finetune/``; its report in ``quantize.json``), ``accuracy.json`` /
``accuracy.md`` / ``parity-*.png`` (per-phase accuracy of *that* model file on the training's
validation frames, :mod:`science.phases`), ``lcurve.png`` (float training and fine-tuning), and
``summary.json`` (settings, time per stage, measured time per step, the model file's hash).

Resuming: a finished stage records its settings (and the hash of its input and output) in
``stages.json``; rerunning the same recipe into the same folder reuses a stage whose record matches
and whose output file is unchanged, and redoes it otherwise (``--fresh``: redo every stage but the
datasets, which only `python -m science data melt-quench --fresh` deletes).  An interrupted training
starts again from step 0 (the trainer keeps no optimizer state); an interrupted dataset resumes.
Evaluation always runs, on the model file in the folder, so the metrics are always measured on the
model file the folder holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

from model.train import DataConfig, TrainConfig
from . import phases as ph

SHORT_NOTE = ("SHORT RUN (--short): a CI-sized smoke test of the recipe (a few dozen training steps, a few "
              "fine-tuning steps, a few frames per phase). Its model is barely trained: the numbers below "
              "check the machinery, they are NOT the model's accuracy.")


@dataclasses.dataclass
class Dataset:
    """One teacher-labelled dataset of a recipe: `python -m science data melt-quench` with these arguments."""

    melt_quench: str  # the melt-quench config (absolute)
    output: str  # the dataset folder (absolute); data.systems names it
    scale: float | None = None
    volume_per_atom: float | None = None

    def config(self, short: bool):
        from .meltquench import load_config
        return load_config(self.melt_quench, short=short, scale=None if short else self.scale,
                           volume_per_atom=self.volume_per_atom)

    def command(self) -> str:
        return ("python -m science data melt-quench " + self.melt_quench
                + (f" --scale {self.scale:g}" if self.scale is not None else "")
                + (f" --volume-per-atom {self.volume_per_atom:g}" if self.volume_per_atom is not None else "")
                + " -o " + self.output)


@dataclasses.dataclass
class Recipe:
    path: Path
    raw: dict  # the recipe file as read (relative paths unresolved)
    model: dict
    data: DataConfig
    training: TrainConfig
    stop_at_step: int | None
    quantize: dict
    evaluation: dict
    short: bool
    datasets: list[Dataset] = dataclasses.field(default_factory=list)

    def settings(self) -> dict:
        return {"model": self.model, "data": dataclasses.asdict(self.data),
                "training": dataclasses.asdict(self.training), "stop_at_step": self.stop_at_step}

    @property
    def float_updates(self) -> int:
        """Optimizer steps the float model takes."""
        return self.training.steps if self.stop_at_step is None else self.stop_at_step + 1


QUANTIZE_DEFAULTS = {"finetune_steps": 2000, "lr": 1e-6, "eval_frames": 64, "calib_frames": 16, "seed": 0}
EVALUATION_DEFAULTS = {"max_frames_per_phase": None, "seed": 0, "amorphous_max_K": ph.AMORPHOUS_MAX_K,
                       "test_systems": []}


def _paths(base: Path, paths: list[str]) -> list[str]:
    return [str((base / p).resolve()) if not Path(p).is_absolute() else p for p in paths]


def load_recipe(path: str | Path, short: bool = False) -> Recipe:
    path = Path(path)
    raw = json.loads(path.read_text())
    unknown = set(raw) - {"model", "data", "training", "recipe"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)} (expected model, data, training, recipe)")
    r = raw.get("recipe", {})
    unknown = set(r) - {"stop_at_step", "quantize", "evaluation", "short", "comment", "datasets"}
    if unknown:
        raise ValueError(f"{path}: unknown keys in 'recipe': {sorted(unknown)}")
    training = dict(raw.get("training", {}))
    quantize = {**QUANTIZE_DEFAULTS, **r.get("quantize", {})}
    evaluation = {**EVALUATION_DEFAULTS, **r.get("evaluation", {})}
    stop = r.get("stop_at_step")
    if short:
        s = r.get("short")
        if not s:
            raise ValueError(f"{path}: --short needs a 'recipe.short' section")
        training.update(s.get("training", {}))
        stop = s.get("stop_at_step")
        quantize.update(s.get("quantize", {}))
        evaluation.update(s.get("evaluation", {}))
    for name, d, known in (("quantize", quantize, QUANTIZE_DEFAULTS), ("evaluation", evaluation, EVALUATION_DEFAULTS)):
        if set(d) - set(known):
            raise ValueError(f"{path}: unknown keys in recipe.{name}: {sorted(set(d) - set(known))}")
    data = DataConfig(**raw.get("data", {}))
    data.systems = _paths(path.parent, data.systems)
    evaluation["test_systems"] = _paths(path.parent, evaluation["test_systems"])
    tcfg = TrainConfig(**training)
    if stop is not None and not 0 <= stop < tcfg.steps:
        raise ValueError(f"{path}: stop_at_step {stop} must lie in [0, training.steps = {tcfg.steps})")
    from contract.config import ModelConfig
    ModelConfig.from_dict(raw.get("model", {}))  # validate now, not after loading data
    return Recipe(path=path, raw=raw, model=dict(raw.get("model", {})), data=data, training=tcfg,
                  stop_at_step=stop, quantize=quantize, evaluation=evaluation, short=short,
                  datasets=_datasets(path, r.get("datasets", []), short))


def _datasets(path: Path, entries, short: bool) -> list[Dataset]:
    """recipe.datasets, checked now (each config and its crystal) rather than after an hour of MD."""
    from .meltquench import build_structure
    if not isinstance(entries, list):
        raise ValueError(f"{path}: recipe.datasets must be a list of {{melt_quench, output, scale, volume_per_atom}}")
    out = []
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or not {"melt_quench", "output"} <= set(e) or \
                set(e) - {"melt_quench", "output", "scale", "volume_per_atom", "comment"}:
            raise ValueError(f"{path}: recipe.datasets[{k}] needs melt_quench and output, and may have scale "
                             f"and volume_per_atom; got {e}")
        d = Dataset(*_paths(path.parent, [e["melt_quench"], e["output"]]), e.get("scale"), e.get("volume_per_atom"))
        cfg = d.config(short)  # raises MeltQuenchError (a ValueError) saying what is wrong with the config
        build_structure(cfg.structure, cfg.seed)  # and with its crystal
        out.append(d)
    names = [Path(d.output).name for d in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: recipe.datasets outputs need distinct folder names (--short makes them "
                         f"side by side in RUN_DIR/datasets/): {names}")
    return out


@dataclasses.dataclass
class _StoppedSchedule(TrainConfig):
    """A TrainConfig whose run is `steps` long but whose learning rate (and so loss prefactors) follow
    the schedule of a `schedule_steps`-long run."""

    schedule_steps: int = 0

    def lr(self, step: int) -> float:
        return dataclasses.replace(TrainConfig(**{f.name: getattr(self, f.name) for f in
                                                  dataclasses.fields(TrainConfig)}),
                                   steps=self.schedule_steps).lr(step)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class _Stages:
    """stages.json: per stage the fingerprint of its settings and inputs, and its output's sha256."""

    def __init__(self, outdir: Path, fresh: bool):
        self.path = outdir / "stages.json"
        self.done = {} if fresh or not self.path.exists() else json.loads(self.path.read_text())

    def reusable(self, name: str, fingerprint: str, output: Path) -> bool:
        rec = self.done.get(name)
        return bool(rec and rec["fingerprint"] == fingerprint and output.exists()
                    and _sha256(output) == rec["output_sha256"])

    def record(self, name: str, fingerprint: str, output: Path, seconds: float) -> None:
        self.done[name] = {"fingerprint": fingerprint, "output": str(output), "output_sha256": _sha256(output),
                           "seconds": seconds, "torch_threads": _threads()}
        self.path.write_text(json.dumps(self.done, indent=1))

    def forget(self, name: str) -> None:
        if self.done.pop(name, None) is not None:
            self.path.write_text(json.dumps(self.done, indent=1))


def train_stage(recipe: Recipe, outdir: Path) -> Path:
    """The float model: `model.train.train` with the recipe's settings (stopped at stop_at_step)."""
    from contract.config import ModelConfig
    from model.train import train
    run_dir = outdir / "float"
    tcfg = recipe.training
    if recipe.stop_at_step is not None:
        # One step past the stop: the trainer updates at every step but its last, so the model after a
        # run of stop + 1 steps is the one a full run checkpoints at step `stop` (ckpt-<stop>.pt).
        tcfg = _StoppedSchedule(**{**dataclasses.asdict(tcfg), "steps": recipe.stop_at_step + 1},
                                schedule_steps=tcfg.steps)
    train(ModelConfig.from_dict(recipe.model), recipe.data, tcfg, run_dir)
    # train.json is what `python -m model quantize` reads next to the checkpoint: the plain settings.
    rec = json.loads((run_dir / "train.json").read_text())
    rec["training"] = dataclasses.asdict(recipe.training)
    rec["stopped"] = {"stop_at_step": recipe.stop_at_step, "optimizer_steps": recipe.float_updates,
                      "note": "the learning rate follows the schedule of training.steps; the run stopped early"
                      } if recipe.stop_at_step is not None else None
    (run_dir / "train.json").write_text(json.dumps(rec, indent=1))
    return run_dir / "model.pt"


def dataset_stage(recipe: Recipe, outdir: Path) -> tuple[list[str], list[dict]]:
    """Make the recipe's datasets that data.systems uses and that are not complete: returns data.systems
    with the folders the training reads (RUN_DIR/datasets/... for --short) and a record per dataset."""
    from .meltquench import MeltQuench, finished
    systems, made = list(recipe.data.systems), []
    for d in recipe.datasets:
        if d.output not in systems:
            print(f"datasets: skipping {d.output} (not in data.systems)")
            continue
        cfg = d.config(recipe.short)
        folder = outdir / "datasets" / Path(d.output).name if recipe.short else Path(d.output)
        state = finished(folder, cfg)
        reused = state is not None
        t0 = time.time()
        if reused:
            # Complete and made by this config: no need for the teacher (or its optional extra).
            frames, md_seconds = sum(state["frames"].values()), state.get("seconds")
            print(f"datasets: reusing {folder} ({frames} frames, complete)")
        else:
            print(f"datasets: {'resuming' if (folder / 'state.json').is_file() else 'making'} {folder} ("
                  + d.command() + (", its short protocol" if recipe.short else "") + ")")
            prov = MeltQuench(cfg, folder).run()
            frames, md_seconds = prov["total_frames"], prov["seconds"]
        systems[systems.index(d.output)] = str(folder)
        made.append({"folder": str(folder), "command": d.command(), "short": recipe.short, "reused": reused,
                     "teacher": cfg.teacher, "config_fingerprint": cfg.fingerprint(), "frames": frames,
                     "md_seconds": md_seconds, "seconds": time.time() - t0})
    return systems, made


def evaluate_model(model_path, data: DataConfig, evaluation: dict, json_path=None, markdown_path=None,
                   figure_prefix=None, header: str = "", evidence: bool = True, extra: dict | None = None) -> dict:
    """Per-phase accuracy of a model file on the validation frames of `data`'s split (and on the phase
    frames of evaluation["test_systems"]); writes what is asked and returns the JSON document."""
    from contract import modelfile
    qm = modelfile.load(model_path)
    t0 = time.time()
    loaded = ph.load_frames(data.systems, data.valid_fraction, data.seed, qm.config.type_map,
                            evaluation.get("test_systems") or (), evaluation["amorphous_max_K"])
    prov = (qm.provenance or {}).get("data")
    check = None
    if prov:
        same = (sorted(str(Path(p).resolve()) for p in prov.get("systems", [])) ==
                sorted(str(Path(p).resolve()) for p in data.systems)
                and prov.get("valid_fraction") == data.valid_fraction and prov.get("seed") == data.seed)
        check = {"model_provenance_data": prov, "same_split": same}
        if not same:
            print(f"warning: the model file records training data {prov}, but the split evaluated is "
                  f"{dataclasses.asdict(data)}: its 'validation' frames may have been trained on", file=sys.stderr)
    n = len(ph.pick_frames(loaded.frames, evaluation["max_frames_per_phase"], evaluation["seed"]))
    print(evaluation_hint(n), flush=True)
    t1 = time.time()
    result = ph.evaluate(qm, loaded.frames, evaluation["max_frames_per_phase"], evaluation["seed"])
    evaluate_seconds = time.time() - t1
    ev = None
    if evidence:
        ev = {"quench": ph.quench_evidence(loaded.systems, amorphous_max_k=evaluation["amorphous_max_K"]),
              "structure": ph.structure_evidence(loaded.systems)}
    seconds = time.time() - t0
    doc_extra = {"model": str(Path(model_path).resolve()), "model_hash": qm.hash, "evaluation_settings": {
        k: v for k, v in evaluation.items()}, "split_check": check, "seconds": seconds,
        "predict_seconds": evaluate_seconds, "torch_threads": _threads(), **(extra or {})}
    files = ph.write_outputs(result, loaded.info, json_path, markdown_path, figure_prefix, ev, header, doc_extra)
    return {**doc_extra, "metrics": result.metrics, "files": {k: str(v) for k, v in files.items()},
            "frames_available": len(loaded.frames)}


#: seconds per frame (float model + quantized reference, one torch thread) of the evaluation behind
#: docs/GeTe-accuracy.md: 3,362 GeTe frames (216 and 64 atoms) in 785 s (docs/figures/gete-accuracy.json,
#: predict_seconds; tests/science keeps the two equal).  A loaded machine takes 2-5x as long.
MEASURED_S_PER_FRAME = 0.23


def evaluation_hint(frames: int) -> str:
    """What an evaluation of `frames` frames will take, said before it starts (the whole GeTe validation
    split runs past 10 minutes on a busy machine)."""
    seconds = frames * MEASURED_S_PER_FRAME
    took = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
    return (f"evaluating {frames} frames with the float model and the quantized reference: about {took} at "
            f"{MEASURED_S_PER_FRAME} s/frame (measured for docs/GeTe-accuracy.md on 2 cores; longer on a busy "
            "machine); progress bars follow" + ("" if frames <= 200 else "; --max-frames-per-phase N for a sample"))


def _threads() -> int:
    import torch
    return torch.get_num_threads()


def _lcurve_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def plot_learning_curves(float_curve: list[dict], finetune_curve: list[dict], path: Path, title: str = "") -> Path:
    """Validation and training RMSE against step: the float run, then the QAT fine-tuning after it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    last = float_curve[-1]["step"] if float_curve else 0
    for ax, q, unit, scale in ((axes[0], "e", "meV/atom", 1e3), (axes[1], "f", "meV/Å", 1e3)):
        for curve, offset, label, color in ((float_curve, 0, "float", "tab:blue"),
                                            (finetune_curve, last, "QAT fine-tune", "tab:orange")):
            if not curve:
                continue
            steps = [c["step"] + offset for c in curve]
            for w, style in (("val", "-"), ("trn", ":")):
                ys = [c.get(f"rmse_{q}_{w}", float("nan")) * scale for c in curve]
                ax.plot(steps, ys, style, color=color, label=f"{label} {w}", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(f"RMSE {q} ({unit})")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _s_per_step(curve: list[dict]) -> float | None:
    if not curve or curve[-1]["step"] == 0:
        return None
    return curve[-1]["time_s"] / curve[-1]["step"]


def run(recipe: Recipe, outdir: str | Path, fresh: bool = False) -> dict:
    from model.pipeline import quantize_and_finetune
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stages = _Stages(outdir, fresh)
    summary = {"recipe": str(recipe.path.resolve()), "short": recipe.short, "note": SHORT_NOTE if recipe.short else
               None, "settings": {**recipe.settings(), "quantize": recipe.quantize, "evaluation": recipe.evaluation},
               "stages": {}}
    if recipe.short:
        print(SHORT_NOTE)

    # 0. the teacher-labelled datasets the training reads
    systems, made = dataset_stage(recipe, outdir)
    if made:
        recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, systems=systems))
        summary["settings"]["data"] = dataclasses.asdict(recipe.data)
        summary["stages"]["datasets"] = made

    # 1. float training
    checkpoint = outdir / "float" / "model.pt"
    # A remade dataset (another config fingerprint) has other frames under the same path: retrain.
    fp = _fingerprint({**recipe.settings(), "datasets": [m["config_fingerprint"] for m in made]} if made
                      else recipe.settings())
    if stages.reusable("train", fp, checkpoint):
        print(f"train: reusing {checkpoint} (same settings, recorded in {stages.path})")
        summary["stages"]["train"] = {"reused": True, **{k: stages.done["train"].get(k)
                                                         for k in ("seconds", "torch_threads")}}
    else:
        stages.forget("quantize")
        t0 = time.time()
        train_stage(recipe, outdir)
        stages.record("train", fp, checkpoint, time.time() - t0)
        summary["stages"]["train"] = {"reused": False, "seconds": time.time() - t0, "torch_threads": _threads()}

    # 2. quantization and fine-tuning
    model_file = outdir / "model.npz"
    q = recipe.quantize
    fp = _fingerprint({"quantize": q, "checkpoint_sha256": _sha256(checkpoint)})
    if stages.reusable("quantize", fp, model_file):
        print(f"quantize: reusing {model_file} (same checkpoint and settings)")
        summary["stages"]["quantize"] = {"reused": True, **{k: stages.done["quantize"].get(k)
                                                            for k in ("seconds", "torch_threads")}}
    else:
        t0 = time.time()
        report = quantize_and_finetune(checkpoint, model_file, steps=q["finetune_steps"], lr=q["lr"],
                                       eval_frames=q["eval_frames"], calib_frames=q["calib_frames"], seed=q["seed"])
        (outdir / "quantize.json").write_text(json.dumps(report, indent=1))
        stages.record("quantize", fp, model_file, time.time() - t0)
        summary["stages"]["quantize"] = {"reused": False, "seconds": time.time() - t0, "torch_threads": _threads()}

    # 3. learning curves
    float_curve = _lcurve_rows(outdir / "float" / "lcurve.json")
    ft_curve = _lcurve_rows(outdir / "model-finetune" / "lcurve.json")
    plot_learning_curves(float_curve, ft_curve, outdir / "lcurve.png",
                         ("SHORT RUN: " if recipe.short else "") + f"{recipe.path.name}: float training"
                         + (f" (stopped at step {recipe.stop_at_step} of {recipe.training.steps})"
                            if recipe.stop_at_step is not None else "") + ", then QAT fine-tuning")

    # 4. per-phase accuracy of the model file just written
    t0 = time.time()
    header = (f"# Accuracy of {model_file.name} (recipe {recipe.path.name}{', --short' if recipe.short else ''})\n\n"
              + (f"**{SHORT_NOTE}**\n\n" if recipe.short else "")
              + f"Written by `python -m science recipe {recipe.path.name} -o {outdir}"
              + (" --short" if recipe.short else "") + "`.\n")
    doc = evaluate_model(model_file, recipe.data, recipe.evaluation, outdir / "accuracy.json",
                         outdir / "accuracy.md", outdir / "parity", header,
                         extra={"short": recipe.short, "note": SHORT_NOTE if recipe.short else None})
    summary["stages"]["evaluate"] = {"reused": False, "seconds": time.time() - t0, "torch_threads": _threads(),
                                     "predict_seconds": doc["predict_seconds"], "frames": doc["metrics"]["frames"],
                                     "frames_available": doc["frames_available"]}

    # 5. summary: timing per step and what the full recipe costs at this speed
    s_float, s_ft = _s_per_step(float_curve), _s_per_step(ft_curve)
    full = load_recipe(recipe.path) if recipe.short else recipe
    eval_s_per_frame = doc["predict_seconds"] / max(1, doc["metrics"]["frames"])
    timing = {"measured_in": "the stages' own runs (see stages.*.torch_threads; a reused stage keeps its old timing)",
              "float_s_per_step": s_float, "finetune_s_per_step": s_ft, "evaluate_s_per_frame": eval_s_per_frame,
              "full_recipe": {"float_steps": full.float_updates, "finetune_steps": full.quantize["finetune_steps"],
                              "eval_frames": doc["frames_available"]}}
    if s_float and s_ft:
        est = (full.float_updates * s_float + full.quantize["finetune_steps"] * s_ft
               + doc["frames_available"] * eval_s_per_frame)
        timing["full_recipe"]["estimated_hours"] = est / 3600
        timing["full_recipe"]["note"] = ("training steps x measured s/step + fine-tuning steps x measured s/step + "
                                         "evaluation frames x measured s/frame (float + quantized); calibration, "
                                         "the quantizer's own RMSE checks and loading come on top (minutes). "
                                         "Frames of different sizes (216 and 64 atoms) average into s/frame.")
    summary.update({"model_file": str(model_file.resolve()), "model_hash": doc["model_hash"],
                    "accuracy": {k: {"frames": r["frames"], "float": r["float"], "quantized": r["quantized"],
                                     "energy": r["energy"]} for k, r in doc["metrics"]["rows"].items()},
                    "timing": timing,
                    "files": {"model": "model.npz", "float_checkpoint": "float/model.pt", "accuracy": "accuracy.json",
                              "table": "accuracy.md", "parity": sorted(p.name for p in outdir.glob("parity-*.png")),
                              "learning_curve": "lcurve.png", "quantize_report": "quantize.json"}})
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1))
    _print_summary(summary)
    return summary


def _print_summary(summary: dict) -> None:
    if summary["short"]:
        print(SHORT_NOTE)
    print(f"model file: {summary['model_file']}  (hash {summary['model_hash'][:16]}...)")
    print(f"{'':24} {'frames':>6} {'E float':>9} {'E quant':>9} {'F float':>9} {'F quant':>9}  (meV/atom, meV/Å)")
    for k, r in summary["accuracy"].items():
        mark = "†" if r["energy"] != "as labelled" else " "
        print(f"{k:24} {r['frames']:6d} {r['float']['rmse_e'] * 1e3:9.2f}{mark}"
              f"{r['quantized']['rmse_e'] * 1e3:8.2f}{mark}"
              f"{r['float']['rmse_f'] * 1e3:9.1f} {r['quantized']['rmse_f'] * 1e3:9.1f}")
    t = summary["timing"]
    if t["float_s_per_step"]:
        line = f"float training {t['float_s_per_step']:.3f} s/step"
        if t["finetune_s_per_step"]:
            line += f", QAT fine-tuning {t['finetune_s_per_step']:.3f} s/step"
        print(line + f", evaluation {t['evaluate_s_per_frame']:.3f} s/frame (torch threads: train "
                     f"{summary['stages']['train'].get('torch_threads')}, now {_threads()})")
    if "estimated_hours" in t["full_recipe"]:
        f = t["full_recipe"]
        print(f"full recipe at this speed: {f['float_steps']} + {f['finetune_steps']} steps, {f['eval_frames']} "
              f"evaluation frames: about {f['estimated_hours']:.1f} h")
