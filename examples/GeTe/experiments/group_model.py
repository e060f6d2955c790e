#!/usr/bin/env python3
"""Experiment: does a better-trained model of the same architecture keep a-GeTe's Peierls distortion?
(Issue 7; a measurement, not a recipe.)

The bundled model loses the AIMD glass's short/long bond alternation within picoseconds
(docs/GeTe-structure.md, "--aimd-start").  Is that the architecture, our training, or our quantization?
The seed group's own float DeePMD model of this very architecture (se_a, sel [60, 60], rcut 7.0,
rcut_smth 2.0, embedding 8/16/32 with type_one_side, fitting 3 x 128, tanh; 1e7 training steps;
`../shared/data/nvnmd-models/deepmd-GeTe-float.pb`) and our own float weights answer that, so this script

1. reads that frozen TensorFlow graph's constants without TensorFlow (model.deepmd.read_constants),
2. re-implements DeePMD-kit's se_a energy in PyTorch from them, literally (per-centre-type normalisation
   of the environment matrix, padding slots included as DeePMD computes them), checked against the data
   README's measured RMSE of that model (6.10 meV/atom, 168 meV/Å on every 10th frame); it is also the
   independent check of `python -m model import` (tests/model/test_deepmd.py), which builds our own
   float model with the env_norm / pad_slots / fit_activation options from the same graph,
3. runs the same "--aimd-start" check as examples/GeTe/structure.py (the last AIMD frame at 300 K,
   NVT 300 K, 2 fs, Nose-Hoover chain with a 0.2 ps damping, windows of the trajectory) with
   - ``group``: that model (float),
   - ``group-import``: the same model as `python -m model import` builds it (our float model),
   - ``ours-float``: the bundled model's float weights (the same MD code, so the two compare directly),
   and prints the Peierls ratio, homopolar Ge-Ge bonds and first-peak shift per window, with the
   structure.py functions.

    python examples/GeTe/experiments/group_model.py check            # step 2 (~1 min)
    python examples/GeTe/experiments/group_model.py md group 6000    # step 3, ~8 min per model
    python examples/GeTe/experiments/group_model.py md ours-float 6000
    python examples/GeTe/experiments/group_model.py md runs/x/model.pt 6000   # any float weights

The group's weights are third-party data: they are read from ../shared/data and never copied.
The group model cannot run on our hardware as is: its embedding input is normalised per centre type
(two G tables per neighbour type), its environment matrix's first column is shifted by the mean s,
which puts the padding slots into the descriptor, and its fitting nets use tanh.  `python -m model
import` represents all three as model options of the float model; the quantized pipeline does not
implement them yet (issue 21).  Results are in docs/GeTe-accuracy.md.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples" / "GeTe"))

from contract.paths import shared_data  # noqa: E402
from model.data import System  # noqa: E402
from model.deepmd import import_graph, read_constants  # noqa: E402
from model.metrics import collect, predict_float, rmse_of  # noqa: E402

SHARED = shared_data()
PB = SHARED / "nvnmd-models" / "deepmd-GeTe-float.pb"
AIMD = SHARED / "GeTe-aimd" / "216atom-melt-quench"


# ---- DeePMD-kit se_a (type_one_side) + energy fitting, from those constants ----------------------

class GroupModel(nn.Module):
    """DeePMD-kit's se_a energy model; ``forward`` has DeepPot's signature so model.network.evaluate
    gives forces and virials the same way for both."""

    def __init__(self, c: dict[str, np.ndarray], sel=(60, 60), rcut_smth=2.0, rcut=7.0):
        super().__init__()
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)
        self.sel, self.rcut_smth, self.rcut = list(sel), rcut_smth, rcut
        self.cfg = SimpleNamespace(rcut=rcut, type_map=["Ge", "Te"])  # what model.metrics and md() read
        nnei = sum(sel)
        avg = c["descrpt_attr/t_avg"].reshape(2, nnei, 4)
        std = c["descrpt_attr/t_std"].reshape(2, nnei, 4)
        # DeePMD's statistics are per centre type, equal over the slots of a centre type (checked).
        assert np.allclose(avg, avg[:, :1]) and np.allclose(std, std[:, :1])
        self.avg, self.std = t(avg[:, 0]), t(std[:, 0])  # (centre type, 4)
        self.emb = [[(t(c[f"filter_type_all/matrix_{k}_{tj}"]), t(c[f"filter_type_all/bias_{k}_{tj}"]))
                     for k in (1, 2, 3)] for tj in range(2)]
        self.fit = [[(t(c[f"layer_{k}_type_{ti}/matrix"]), t(c[f"layer_{k}_type_{ti}/bias"])) for k in range(3)]
                    + [(t(c[f"final_layer_type_{ti}/matrix"]), t(c[f"final_layer_type_{ti}/bias"]))]
                    for ti in range(2)]

    def embed(self, x: torch.Tensor, tj: int) -> torch.Tensor:
        for W, b in self.emb[tj]:
            y = torch.tanh(x @ W + b)
            x = y + torch.cat([x, x], -1) if W.shape[1] == 2 * W.shape[0] else y
        return x

    def forward(self, rij, center, tj, atype):
        n = len(atype)
        r = torch.linalg.norm(rij, dim=-1)
        u = torch.clamp((r - self.rcut_smth) / (self.rcut - self.rcut_smth), 0.0, 1.0)
        sw = u ** 3 * (-6 * u * u + 15 * u - 10) + 1
        s = sw / r
        ti = atype[center]
        a, sd = self.avg[ti], self.std[ti]  # (E, 4)
        Rt = torch.cat([((s - a[:, 0]) / sd[:, 0])[:, None], (s / r)[:, None] * rij / sd[:, 1:]], -1)
        G = rij.new_zeros((len(r), 32))
        for t in range(2):
            m = (tj == t).nonzero().squeeze(-1)
            G = G.index_put((m,), self.embed(Rt[m, :1], t))
        GR = rij.new_zeros((n, 4 * 32)).index_add(0, center, (Rt[:, :, None] * G[:, None, :]).reshape(-1, 128))
        GR = GR.reshape(n, 4, 32)
        # Padding: DeePMD normalises every slot, so an empty slot of centre type ti holds (-a/sd, 0, 0, 0)
        # and is embedded like any other: sel[t] - n_t(i) of them per neighbour type t.
        for t in range(2):
            cnt = rij.new_zeros(n).index_add(0, center, (tj == t).to(rij.dtype))
            npad = self.sel[t] - cnt
            assert bool((npad >= 0).all()), "more neighbours than sel"
            xpad = (-self.avg[atype, 0] / self.std[atype, 0])[:, None]  # (n, 1)
            GR[:, 0, :] = GR[:, 0, :] + (npad * xpad[:, 0])[:, None] * self.embed(xpad, t)
        GR = GR / sum(self.sel)
        D = torch.einsum("nka,nkb->nab", GR, GR[:, :, :4]).reshape(n, 128)
        E = rij.new_zeros(n)
        for ti_ in range(2):
            m = (atype == ti_).nonzero().squeeze(-1)
            x = D[m]
            for k, (W, b) in enumerate(self.fit[ti_][:3]):
                y = torch.tanh(x @ W + b)
                x = x + y if k >= 1 else y
            W, b = self.fit[ti_][3]
            E = E.index_put((m,), (x @ W + b)[:, 0])
        return E


def load_group_model() -> GroupModel:
    return GroupModel(read_constants(PB))


def load_ours_float(path: Path = REPO / "model" / "examples" / "GeTe-example.npz"):
    """The float weights of a model file (.npz) or of a training checkpoint (.pt)."""
    if Path(path).suffix == ".pt":
        from model.train import load_checkpoint
        return load_checkpoint(path)
    from contract.modelfile import load
    from model.quantize import float_model
    return float_model(load(path))


# ---- step 2: the model against the AIMD labels ----------------------------------------------------

def check(every: int = 10):
    from model.data import load_systems
    model = load_group_model()
    t0 = time.time()
    per_system = {}
    for s in load_systems([AIMD]):
        per_system[s.name] = collect(lambda system, f: predict_float(model, system, f),
                                     [(s, f) for f in range(0, s.nframes, every)], Path(s.name).name)
    m = rmse_of({k: np.concatenate([c[k] for c in per_system.values()]) for k in next(iter(per_system.values()))})
    out = {"frames": m["frames"], "E_rmse_meV_atom": m["rmse_e"] * 1e3,
           "E_rmse_offset_removed": m["rmse_e_offset_removed"] * 1e3, "F_rmse_meV_A": m["rmse_f"] * 1e3,
           "per_system_F": {k: rmse_of(c)["rmse_f"] * 1e3 for k, c in per_system.items()},
           "seconds": time.time() - t0}
    print(json.dumps(out, indent=1))
    (REPO / "build" / "experiments").mkdir(parents=True, exist_ok=True)
    (REPO / "build" / "experiments" / "group-check.json").write_text(json.dumps(out, indent=1))
    return out


# ---- step 3: the AIMD glass under a model --------------------------------------------------------

def md(which: str, steps: int, every: int = 20, seed: int = 1):
    from ase import units
    from ase.calculators.calculator import Calculator, all_changes
    from ase.md.nose_hoover_chain import NoseHooverChainNVT
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    import structure as st
    from model.data import load_deepmd
    from science import analysis as an

    loaders = {"group": load_group_model, "group-import": lambda: import_graph(PB)[0], "ours-float": load_ours_float}
    model = loaders[which]() if which in loaders else load_ours_float(Path(which))

    class Calc(Calculator):
        implemented_properties = ["energy", "forces", "free_energy"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            a = self.atoms
            tmap = model.cfg.type_map
            frame = System("md", tmap, np.array([tmap.index(x) for x in a.get_chemical_symbols()]),
                           a.positions[None], a.cell.array[None])
            E, F, _ = predict_float(model, frame, 0)
            self.results = {"energy": E, "free_energy": E, "forces": F}

    atoms = next(an.frames_from_system(load_deepmd(SHARED / st.AIMD_AMORPHOUS), st.AIMD_START_FRAME, 1))
    atoms.calc = Calc()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    dyn = NoseHooverChainNVT(atoms, 2.0 * units.fs, temperature_K=300, tdamp=200 * units.fs)
    frames = [atoms.copy()]
    frames[0].info["timestep"] = 0
    t0 = time.time()
    temps = []

    def grab():
        a = atoms.copy()
        a.info["timestep"] = dyn.nsteps
        a.wrap()
        frames.append(a)
        temps.append(atoms.get_temperature())
    dyn.attach(grab, interval=every)
    dyn.run(steps)
    wall = time.time() - t0
    ref = an.load_reference(SHARED / "GeTe-aimd-reference")
    wins = st.aimd_start_windows(frames, ref)  # frames[0], the AIMD itself, is left out there
    rows = []
    for w in wins:
        w.pop("_map", None)
        rows.append({"steps": w["steps"], "peierls_ratio": w["altbc"]["ratio"], "peierls": w["altbc"].get("present"),
                     "GeGe_per_Ge": w["coordination"]["Ge-Ge"], "first_peak_shift": w["total_peak_shift"],
                     "crystal_like": w["crystal_like"]["fraction"]})
    out = {"model": which, "steps": steps, "wall_s": wall, "s_per_step": wall / steps,
           "T_mean": float(np.mean(temps)), "T_std": float(np.std(temps)), "windows": rows}
    print(json.dumps(out, indent=1))
    (REPO / "build" / "experiments").mkdir(parents=True, exist_ok=True)
    name = which if which in loaders else Path(which).parent.name + "-" + Path(which).stem
    (REPO / "build" / "experiments" / f"aimd-start-{name}.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "check":
        check()
    elif sys.argv[1] == "md":
        md(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
