"""Accuracy of the float and the quantized model against labelled frames: RMSEs and parity plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .assembly import compute
from .batch import make_batch
from contract.modelfile import QuantizedModel
from .network import DeepPot, evaluate


def predict_float(model: DeepPot, system, frame: int):
    b = make_batch([(system, frame)], model.cfg.rcut)
    e, f, v, _ = evaluate(model, b.rij, b.center, b.neighbor, b.atype, b.frame_of_atom, 1)
    return float(e[0]), f.numpy(), v[0].numpy()


def predict_quantized(qm: QuantizedModel, system, frame: int):
    a = compute(qm, system.coords[frame], system.cells[frame], system.pbc, system.types)
    return a.energy, a.forces, a.virial


def select_frames(systems, max_frames: int | None, seed: int = 0):
    items = [(s, f) for s in systems for f in range(s.nframes)]
    if max_frames and len(items) > max_frames:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(items), size=max_frames, replace=False))
        items = [items[k] for k in keep]
    return items


def collect(predict, items, desc: str) -> dict:
    """Predictions and labels, flattened for RMSE and parity plots."""
    rows = {"e_pred": [], "e_ref": [], "natoms": [], "f_pred": [], "f_ref": [], "v_pred": [], "v_ref": [],
            "system": []}
    for system, f in tqdm(items, desc=desc, unit="frame", mininterval=2.0):
        e, force, vir = predict(system, f)
        n = system.natoms
        rows["natoms"].append(n)
        rows["system"].append(system.name)
        rows["e_pred"].append(e)
        rows["e_ref"].append(np.nan if system.energies is None else system.energies[f])
        rows["f_pred"].append(force.ravel())
        rows["f_ref"].append(np.full(force.size, np.nan) if system.forces is None else system.forces[f].ravel())
        rows["v_pred"].append(vir.ravel())
        rows["v_ref"].append(np.full(9, np.nan) if system.virials is None else system.virials[f].ravel())
    out = {k: np.array(v) for k, v in rows.items() if k not in ("f_pred", "f_ref")}
    out["f_pred"] = np.concatenate(rows["f_pred"]) if rows["f_pred"] else np.zeros(0)
    out["f_ref"] = np.concatenate(rows["f_ref"]) if rows["f_ref"] else np.zeros(0)
    return out


def rmse_of(c: dict) -> dict:
    """eV/atom for energy (also with the mean offset removed), eV/Å for forces, eV/atom for virial."""
    out = {"frames": int(len(c["natoms"]))}
    de = (c["e_pred"] - c["e_ref"]) / c["natoms"]
    if np.isfinite(de).all() and len(de):
        out["rmse_e"] = float(np.sqrt(np.mean(de ** 2)))
        out["rmse_e_offset_removed"] = float(np.std(de))
        out["mean_error_e"] = float(np.mean(de))
    df = c["f_pred"] - c["f_ref"]
    if len(df) and np.isfinite(df).all():
        out["rmse_f"] = float(np.sqrt(np.mean(df ** 2)))
    dv = (c["v_pred"] - c["v_ref"]) / c["natoms"][:, None]
    if len(dv) and np.isfinite(dv).all():
        out["rmse_v"] = float(np.sqrt(np.mean(dv ** 2)))
    return out


def parity_plot(results: dict[str, dict], path: Path, title: str = "") -> None:
    """Energy and force parity for each model (as the seed's Fig. 2), written to `path`."""
    import matplotlib.pyplot as plt
    fig = parity_figure(results, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parity_figure(results: dict[str, dict], title: str = ""):
    """The figure of `parity_plot`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(len(results), 2, figsize=(9, 4.2 * len(results)), squeeze=False)
    for row, (name, c) in zip(axes, results.items()):
        r = rmse_of(c)
        e_ref, e_pred = c["e_ref"] / c["natoms"], c["e_pred"] / c["natoms"]
        ax = row[0]
        ax.plot(e_ref, e_pred, ".", ms=3, alpha=0.6)
        lims = [min(e_ref.min(), e_pred.min()), max(e_ref.max(), e_pred.max())] if len(e_ref) else [0, 1]
        ax.plot(lims, lims, "k--", lw=0.8)
        # energies per atom span a few tenths of an eV at -164: six-digit labels, so few of them,
        # else the x labels run into each other
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=4))
        ax.set_xlabel("DFT energy (eV/atom)")
        ax.set_ylabel(f"{name} energy (eV/atom)")
        ax.set_title(f"{name}: RMSE {r.get('rmse_e', float('nan')) * 1e3:.2f} meV/atom")
        ax = row[1]
        ax.plot(c["f_ref"], c["f_pred"], ".", ms=1, alpha=0.3)
        lims = [min(c["f_ref"].min(), c["f_pred"].min()), max(c["f_ref"].max(), c["f_pred"].max())] if len(c["f_ref"]) else [0, 1]
        ax.plot(lims, lims, "k--", lw=0.8)
        ax.set_xlabel("DFT force (eV/Å)")
        ax.set_ylabel(f"{name} force (eV/Å)")
        ax.set_title(f"{name}: RMSE {r.get('rmse_f', float('nan')) * 1e3:.1f} meV/Å")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def test_model(qm: QuantizedModel, float_model: DeepPot, systems, max_frames: int | None = None,
               seed: int = 0, json_path=None, plot_path=None, csv_path=None) -> dict:
    items = select_frames(systems, max_frames, seed)
    if not items:
        raise ValueError("no frames to test")
    cf = collect(lambda s, f: predict_float(float_model, s, f), items, "float model")
    cq = collect(lambda s, f: predict_quantized(qm, s, f), items, "quantized reference")
    metrics = {"float": rmse_of(cf), "quantized": rmse_of(cq), "model_hash": qm.hash,
               "frames": len(items),
               "quantized_vs_float": {
                   "rmse_e": float(np.sqrt(np.mean(((cq["e_pred"] - cf["e_pred"]) / cf["natoms"]) ** 2))),
                   "rmse_f": float(np.sqrt(np.mean((cq["f_pred"] - cf["f_pred"]) ** 2))),
                   "max_abs_f": float(np.abs(cq["f_pred"] - cf["f_pred"]).max())}}
    if json_path:
        Path(json_path).write_text(json.dumps(metrics, indent=1))
    if plot_path:
        parity_plot({"float": cf, "quantized": cq}, Path(plot_path))
    if csv_path:
        with open(csv_path, "w") as fh:
            fh.write("system,natoms,e_dft,e_float,e_quantized\n")
            for k in range(len(items)):
                fh.write(f"{cf['system'][k]},{cf['natoms'][k]},{cf['e_ref'][k]:.6f},"
                         f"{cf['e_pred'][k]:.6f},{cq['e_pred'][k]:.6f}\n")
    return metrics
