"""Float checkpoint -> quantized, fine-tuned model file, with the RMSE before and after fine-tuning."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from contract import modelfile
from .metrics import predict_quantized, collect, rmse_of, select_frames
from .qat import QATDeepPot
from .quantize import build, calibrate, choose_formats, set_r_min
from .train import DataConfig, TrainConfig, Trainer, load_checkpoint, load_json_config, prepare


def _load_run_config(checkpoint: Path, config: str | None):
    if config:
        _, dcfg, tcfg = load_json_config(config)
        return dcfg, tcfg
    run = checkpoint.parent / "train.json"
    if not run.exists():
        raise FileNotFoundError(f"no --config given and no {run} next to the checkpoint "
                                "(needed for the data and its train/validation split)")
    raw = json.loads(run.read_text())
    return DataConfig(**raw["data"]), TrainConfig(**raw["training"])


def quantized_rmse(qm, items) -> dict:
    return rmse_of(collect(lambda s, f: predict_quantized(qm, s, f), items, "quantized RMSE"))


def quantize_and_finetune(checkpoint, output, config=None, steps: int = 2000, lr: float = 1e-6,
                          eval_frames: int = 64, calib_frames: int = 16, seed: int = 0) -> dict:
    checkpoint = Path(checkpoint)
    model = load_checkpoint(checkpoint)
    dcfg, tcfg = _load_run_config(checkpoint, config)
    cfg = model.cfg
    # prepare() re-derives the s statistics; the checkpoint's values are the ones trained with.
    saved = (cfg.s_mean, cfg.s_std)
    train_sys, valid_sys, _ = prepare(cfg, dcfg, seed)
    cfg.s_mean, cfg.s_std = saved

    t0 = time.time()
    # The tables start at r_min, chosen from every training frame (the float model never uses it).
    model, scan = set_r_min(model, train_sys, source=f"training split (validation fraction {dcfg.valid_fraction}, "
                                                   f"seed {dcfg.seed}) of {', '.join(map(str, dcfg.systems))}")
    ranges = calibrate(model, train_sys, nframes=calib_frames, seed=seed)
    formats = choose_formats(model, ranges)
    qm = build(model, formats)
    items = select_frames(valid_sys, eval_frames, seed)
    from .metrics import predict_float
    float_rmse = rmse_of(collect(lambda s, f: predict_float(model, s, f), items, "float RMSE"))
    before = quantized_rmse(qm, items)
    report = {"checkpoint": str(checkpoint.resolve()), "eval_frames": len(items), "float": float_rmse,
              "quantized_before_finetune": before, "finetune": {"steps": steps, "lr": lr}}
    if steps > 0:
        qat = QATDeepPot(model, formats)
        ft = replace(tcfg, steps=steps, lr_start=lr, lr_stop=lr, decay_steps=max(steps, 1),
                     pref_e=[tcfg.pref_e[1]] * 2, pref_f=[tcfg.pref_f[1]] * 2, pref_v=[tcfg.pref_v[1]] * 2,
                     disp_freq=max(1, steps // 10), save_freq=steps + 1, seed=seed,
                     threads=0)  # 0: the threads the caller set (quantize --threads), not train.json's
        outdir = Path(output).with_suffix("").parent / (Path(output).stem + "-finetune")
        Trainer(qat, train_sys, valid_sys, ft, outdir, params=[p for p in qat.parameters() if p.requires_grad],
                label="QAT fine-tune").run()
        qm = build(qat.to_float(), formats)
        report["quantized_after_finetune"] = quantized_rmse(qm, items)
        report["finetune"]["lcurve"] = str((outdir / "lcurve.out").resolve())
    report["seconds"] = time.time() - t0
    qm.provenance = {"calibration_ranges": ranges, "quantization": report, "data": asdict(dcfg), **scan}
    modelfile.save(qm, output)
    report["hash"] = qm.hash
    return report
