"""Training of the float model (and, through `Trainer`, quantization-aware fine-tuning).

DeePMD's recipe: Adam, learning rate decaying exponentially in stairs from `lr_start` to `lr_stop`
over the run, and a loss whose energy/force/virial prefactors move linearly with the learning rate
from their start to their limit value:

    pref(t) = limit + (start - limit) * lr(t) / lr_start
    loss    = pref_e * dE^2 / N  +  pref_f * mean(dF^2)  +  pref_v * |dW|^2 / (9 N)

(dE is the frame energy error in eV, N the atoms per frame, as DeePMD's EnerStdLoss.)
Outputs in the run directory: `lcurve.out` (DeePMD-style columns), `lcurve.png`, checkpoints
`ckpt-<step>.pt`, the final `model.pt`, and `train.json` (the resolved configuration).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .batch import Batch, make_batch
from contract.config import ModelConfig
from .data import System, load_systems, split_frames
from .neighbors import edges
from .network import DeepPot, evaluate, fit_energy_bias


@dataclass
class TrainConfig:
    steps: int = 20000
    batch_frames: int = 1
    lr_start: float = 1e-3
    lr_stop: float = 3e-8
    decay_steps: int = 5000
    pref_e: list[float] = field(default_factory=lambda: [0.02, 1.0])
    pref_f: list[float] = field(default_factory=lambda: [1000.0, 1.0])
    pref_v: list[float] = field(default_factory=lambda: [0.0, 0.0])
    disp_freq: int = 100
    save_freq: int = 1000
    valid_frames: int = 4  # frames evaluated at each display step
    seed: int = 1
    threads: int = 0  # 0: leave torch's default

    def lr(self, step: int) -> float:
        """DeePMD's stairs: lr_start * rate**floor(step / decay_steps), reaching lr_stop at `steps`."""
        if self.steps <= self.decay_steps:
            return self.lr_start
        rate = (self.lr_stop / self.lr_start) ** (self.decay_steps / self.steps)
        return self.lr_start * rate ** (step // self.decay_steps)

    def prefactors(self, step: int) -> tuple[float, float, float]:
        x = self.lr(step) / self.lr_start
        return tuple(p[1] + (p[0] - p[1]) * x for p in (self.pref_e, self.pref_f, self.pref_v))


@dataclass
class DataConfig:
    systems: list[str] = field(default_factory=list)
    valid_fraction: float = 0.4
    seed: int = 1


def load_json_config(path: str | Path) -> tuple[ModelConfig, DataConfig, TrainConfig]:
    """{"model": {...}, "data": {...}, "training": {...}}; relative data paths are relative to the file."""
    path = Path(path)
    raw = json.loads(path.read_text())
    unknown = set(raw) - {"model", "data", "training"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)} (expected model, data, training)")
    data = DataConfig(**raw.get("data", {}))
    data.systems = [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p for p in data.systems]
    return ModelConfig.from_dict(raw.get("model", {})), data, TrainConfig(**raw.get("training", {}))


# ---- losses and metrics ---------------------------------------------------------------------------

def loss_terms(model, batch: Batch, create_graph: bool):
    e, f, v, _ = evaluate(model, batch.rij, batch.center, batch.neighbor, batch.atype, batch.frame_of_atom,
                          batch.nframes, create_graph=create_graph)
    terms = {}
    if batch.energy is not None:
        terms["e"] = ((e - batch.energy) ** 2 / batch.natoms).mean()
        terms["rmse_e"] = torch.sqrt((((e - batch.energy) / batch.natoms) ** 2).mean())
    if batch.forces is not None:
        terms["f"] = ((f - batch.forces) ** 2).mean()
        terms["rmse_f"] = torch.sqrt(terms["f"])
    if batch.virial is not None:
        dv = (v - batch.virial).reshape(batch.nframes, 9)
        terms["v"] = ((dv ** 2).sum(-1) / (9 * batch.natoms)).mean()
        terms["rmse_v"] = torch.sqrt(((dv / batch.natoms[:, None]) ** 2).mean())
    return terms


def total_loss(terms, prefs):
    loss = 0.0
    for key, p in zip(("e", "f", "v"), prefs):
        if key in terms and p > 0:
            loss = loss + p * terms[key]
    return loss


# ---- statistics that fix hardware-relevant hyper-parameters ---------------------------------------

def data_statistics(systems: list[System], cfg: ModelConfig, max_frames: int = 64, seed: int = 0) -> dict:
    """Minimum pair distance, mean/std of s over pairs, and max neighbours per type, from sampled frames."""
    rng = np.random.default_rng(seed)
    items = [(s, f) for s in systems for f in range(s.nframes)]
    picks = rng.choice(len(items), size=min(max_frames, len(items)), replace=False)
    dmin, s_all, nmax = np.inf, [], np.zeros(cfg.ntypes, dtype=int)
    for k in picks:
        system, f = items[k]
        e = edges(system.coords[f], system.cells[f], system.pbc, cfg.rcut)
        r = np.linalg.norm(e.vec, axis=1)
        dmin = min(dmin, float(r.min()))
        s_all.append(r)
        cnt = np.zeros((system.natoms, cfg.ntypes), dtype=int)
        np.add.at(cnt, (e.i, system.types[e.j]), 1)
        nmax = np.maximum(nmax, cnt.max(axis=0))
    r = np.concatenate(s_all)
    u = np.clip((r - cfg.rcut_smth) / (cfg.rcut - cfg.rcut_smth), 0, 1)
    s = (u ** 3 * (-6 * u * u + 15 * u - 10) + 1) / r
    return {"min_distance": dmin, "s_mean": float(s.mean()), "s_std": float(s.std()),
            "max_neighbors": nmax.tolist()}


def choose_desc_shift(model: DeepPot, systems: list[System], frames: int = 4) -> int:
    """Power of two that brings the descriptor's RMS near 1 at initialization (conditioning only)."""
    batch = make_batch([(s, 0) for s in systems[:frames]], model.cfg.rcut)
    with torch.no_grad():
        D = model.descriptors(batch.rij, batch.center, batch.atype[batch.neighbor], batch.atype)
    rms = float(torch.sqrt((D ** 2).mean())) * 2.0 ** (-model.cfg.desc_shift)
    return int(round(-math.log2(rms))) if rms > 0 else 0


def energy_bias(systems: list[System], ntypes: int) -> np.ndarray:
    counts = np.concatenate([np.tile(np.bincount(s.types, minlength=ntypes), (s.nframes, 1)) for s in systems])
    energies = np.concatenate([s.energies for s in systems])
    return fit_energy_bias(counts, energies)


# ---- the loop ------------------------------------------------------------------------------------

class Trainer:
    """Runs the optimisation loop for any module that `evaluate` accepts (float or fake-quantized)."""

    def __init__(self, model, train: list[System], valid: list[System], tcfg: TrainConfig, outdir: Path,
                 save_fn=None, params=None, label: str = "train"):
        self.model, self.train, self.valid, self.tcfg = model, train, valid, tcfg
        self.outdir = Path(outdir)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.save_fn = save_fn
        self.label = label
        self.rng = np.random.default_rng(tcfg.seed)
        self.items = [(s, f) for s in train for f in range(s.nframes)]
        self.valid_items = [(s, f) for s in valid for f in range(s.nframes)]
        self.opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=tcfg.lr_start)
        self.rcut = model.cfg.rcut

    def sample(self, items, n):
        return [items[k] for k in self.rng.choice(len(items), size=min(n, len(items)), replace=False)]

    def validate(self) -> dict:
        if not self.valid_items:
            return {}
        batch = make_batch(self.sample(self.valid_items, self.tcfg.valid_frames), self.rcut)
        terms = loss_terms(self.model, batch, create_graph=False)
        return {k: float(v) for k, v in terms.items() if k.startswith("rmse")}

    def run(self) -> list[dict]:
        t = self.tcfg
        if t.threads:
            torch.set_num_threads(t.threads)
        curve = []
        lcurve = (self.outdir / "lcurve.out").open("w")
        lcurve.write("# step  lr  rmse_e_val rmse_f_val rmse_v_val  rmse_e_trn rmse_f_trn rmse_v_trn"
                     "  (eV/atom, eV/A, eV/atom)\n")
        bar = tqdm(range(t.steps + 1), desc=self.label, unit="step", mininterval=2.0)
        t0 = time.time()
        for step in bar:
            lr = t.lr(step)
            for g in self.opt.param_groups:
                g["lr"] = lr
            batch = make_batch(self.sample(self.items, t.batch_frames), self.rcut)
            prefs = t.prefactors(step)
            need_graph = any(p > 0 for p in prefs[1:])
            terms = loss_terms(self.model, batch, create_graph=need_graph)
            loss = total_loss(terms, prefs)
            if step < t.steps:
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
            if step % t.disp_freq == 0 or step == t.steps:
                val = self.validate()
                row = {"step": step, "lr": lr, "time_s": time.time() - t0,
                       **{f"{k}_val": v for k, v in val.items()},
                       **{f"{k}_trn": float(v.detach()) for k, v in terms.items() if k.startswith("rmse")}}
                curve.append(row)
                cols = [row.get(f"rmse_{q}_{w}", float("nan")) for w in ("val", "trn") for q in ("e", "f", "v")]
                lcurve.write(f"{step:8d} {lr:.3e} " + " ".join(f"{c:.4e}" for c in cols) + "\n")
                lcurve.flush()
                bar.set_postfix(e=f"{row.get('rmse_e_val', float('nan')) * 1e3:.2f}meV",
                                f=f"{row.get('rmse_f_val', float('nan')):.3f}")
            if self.save_fn and step and (step % t.save_freq == 0 or step == t.steps):
                self.save_fn(self.outdir / f"ckpt-{step}.pt")
        lcurve.close()
        (self.outdir / "lcurve.json").write_text(json.dumps(curve, indent=1))
        plot_lcurve(curve, self.outdir / "lcurve.png", self.label)
        return curve


def plot_lcurve(curve: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [c["step"] for c in curve]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, q, unit, scale in ((axes[0], "e", "meV/atom", 1e3), (axes[1], "f", "eV/Å", 1.0)):
        for w, style in (("trn", ":"), ("val", "-")):
            ys = [c.get(f"rmse_{q}_{w}", float("nan")) * scale for c in curve]
            ax.plot(steps, ys, style, label=w)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(f"RMSE {q} ({unit})")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_checkpoint(model: DeepPot, path: Path, extra: dict | None = None) -> None:
    torch.save({"config": model.cfg.to_dict(), "state": model.state_dict(), **(extra or {})}, path)


def load_checkpoint(path: str | Path) -> DeepPot:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = DeepPot(ModelConfig.from_dict(ck["config"]))
    model.load_state_dict(ck["state"])
    return model


def prepare(cfg: ModelConfig, data: DataConfig, seed: int):
    """Load, split, and set the data-derived hyper-parameters (s stats; r_min is the quantizer's)."""
    systems = [s.remap_types(cfg.type_map) for s in load_systems(data.systems)]
    train, valid = split_frames(systems, data.valid_fraction, data.seed)
    stats = data_statistics(train, cfg, seed=seed)
    for t, (n, cap) in enumerate(zip(stats["max_neighbors"], cfg.sel)):
        if n > cap:
            raise ValueError(f"training data has up to {n} neighbours of type {cfg.type_map[t]} "
                             f"inside rcut={cfg.rcut}, more than sel[{t}]={cap}")
    cfg.s_mean, cfg.s_std = stats["s_mean"], stats["s_std"]
    return train, valid, stats


def train(cfg: ModelConfig, data: DataConfig, tcfg: TrainConfig, outdir: str | Path) -> DeepPot:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    train_sys, valid_sys, stats = prepare(cfg, data, tcfg.seed)
    model = DeepPot(cfg, seed=tcfg.seed)
    cfg.desc_shift = choose_desc_shift(model, train_sys)
    if all(s.energies is not None for s in train_sys):
        model.bias_atom_e[:] = torch.as_tensor(energy_bias(train_sys, cfg.ntypes))
    (outdir / "train.json").write_text(json.dumps(
        {"model": cfg.to_dict(), "data": asdict(data), "training": asdict(tcfg), "statistics": stats,
         "torch_threads": torch.get_num_threads()}, indent=1))
    Trainer(model, train_sys, valid_sys, tcfg, outdir,
            save_fn=lambda p: save_checkpoint(model, p)).run()
    save_checkpoint(model, outdir / "model.pt")
    return model
