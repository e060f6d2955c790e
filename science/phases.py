"""Phases of the GeTe AIMD data, and a model's accuracy per phase (the seed paper's table and Fig. 2).

The seed paper (NVNMD, GeTe) reports energy and force RMSE against DFT overall (7.51 meV/atom,
149.63 meV/Å) and for three phases: crystalline, liquid, amorphous.  Our data
(``../shared/data/GeTe-aimd``, see its README) labels no phase, so this module derives one, **in code,
from the folder names** (never from hand-typed frame lists) and, where the data has no temperatures,
from the structure:

``216atom-melt-quench/<stage>/temp-<T>K`` (stage ``sN-melt-*`` or ``sN-quench-*``)

=====================  =================  ===========  ===============================================
stage                  temperature        phase        group (finer row of the tables)
=====================  =================  ===========  ===============================================
``s2-melt-1000K``      1000 ... 1950 K    liquid       ``melt``: at or above GeTe's melting point
                                                       (T_m ~ 998 K, 725 °C)
``s3-quench-300K``     550 ... 950 K      liquid       ``supercooled``: below T_m, atoms diffuse
``s3-quench-300K``     300 ... 500 K      amorphous    ``glass``: no diffusion on the AIMD time scale
=====================  =================  ===========  ===============================================

The cut between amorphous and supercooled liquid, ``AMORPHOUS_MAX_K = 500``, comes from the data
(:func:`quench_evidence`; numbers in ``docs/GeTe-accuracy.md``): over 300 frames of each quench
temperature, the mean-square displacement divided by T stays flat (0.7-1.0e-3 Å²/K: harmonic
vibration in a cage) and at most 2 % of the atoms move farther than 1.5 Å, up to 500 K; from 550 K on
MSD/T grows (1.0e-3 at 550 K, 1.5e-3 at 650 K, 2.2e-3 at 750 K, 4.6e-3 at 950 K) and so does the mobile
fraction (4 %, 8 %, 22 %, 67 %).  That is the glass transition of this quench on the AIMD time scale,
inside the 500-600 K usually given for GeTe's T_g in simulations; the seed's "amorphous" is 300 K,
which is on the amorphous side of any such cut.  The 550-700 K stages are the transition region (a few
percent of mobile atoms): they count as liquid here; the per-temperature rows of the tables let a
reader move the cut (``amorphous_max_k``).

``64atom-npt/<system>`` (no temperatures in the data; a different DFT energy reference, ~0.34 eV/atom
above the 216-atom set): **crystalline** when the median over its frames of the rock-salt (200)
translational order parameter ``|<exp(i k·x)>|`` (:func:`translational_order`; ~exp(-k²<u²>/2) in a
crystal, ~1/sqrt(N) = 0.125 in a liquid of N = 64 atoms) exceeds ``CRYSTAL_ORDER_MIN = 0.5``.  The data
splits cleanly: data-train-gete and data.001-009 have medians 0.69-0.97, no homopolar Ge-Ge bonds
(Ge-Ge coordination within 3.2 Å at most 0.23, from :mod:`science.analysis` g(r)) and an empty Ge-Te
g(r) between the first and second shells; data.011 onwards have medians 0.10-0.15, 1.5-2.6 Ge-Ge bonds
per Ge and no gap.  The disordered 64-atom systems have no temperature and their own energy reference:
they get no phase and are left out of the tables.  Energies of frames from any data set other than the
one(s) the model was validated on are compared with that set's mean error removed (one constant per
set and model, reported), so the crystalline energy RMSE is "offset removed"; forces need no offset.

The overall row is over the validation frames of the training's 60/40 split by frame
(:func:`validation_frames` calls :func:`model.data.split_frames` exactly as :func:`model.train.prepare`
does); the crystalline row is a test on frames the model never trained on (the bundled model was
trained on the 216-atom set only), so it is listed apart from the overall row.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.data import System, load_systems, split_frames

#: The seed paper's GeTe numbers (energy meV/atom, force meV/Å), against DFT.
SEED_PAPER = {
    "overall": (7.51, 149.63),
    "crystalline": (5.09, 108.15),
    "liquid": (10.43, 197.63),
    "amorphous": (7.24, 152.62),
}
#: The seed paper's numbers per material (sorted element tuple), against DFT; Sb and GST overall only.
SEED_PAPER_BY_ELEMENTS = {
    ("Ge", "Te"): SEED_PAPER,
    ("Sb",): {"overall": (4.95, 86.98)},
    ("Ge", "Sb", "Te"): {"overall": (17.47, 130.59)},
}


def seed_numbers(type_map) -> dict:
    """The seed paper's table for a model's elements ({} for a material the paper does not cover)."""
    return SEED_PAPER_BY_ELEMENTS.get(tuple(sorted(type_map)), {})
PHASES = ("crystalline", "liquid", "amorphous")
#: GeTe's melting point (about 725 °C).
T_MELT_K = 998
#: Highest quench temperature counted as amorphous (see the module docstring for the evidence).
AMORPHOUS_MAX_K = 500
#: Median rock-salt (200) order parameter above which a structure-classified system is crystalline.
CRYSTAL_ORDER_MIN = 0.5

_TEMP = re.compile(r"^temp-(\d+)K$")
_STAGE = re.compile(r"^s\d+-(melt|quench)(?:-|$)")


@dataclasses.dataclass(frozen=True)
class PhaseLabel:
    """The phase of one system (every frame of it).

    ``phase`` is one of :data:`PHASES` or None (not a seed phase: left out of the tables); ``group``
    a finer row (``glass``, ``supercooled``, ``melt``, ``crystal``, ``disordered``); ``dataset`` the folder
    that groups systems sharing one DFT energy reference; ``how`` says what decided it.
    """

    phase: str | None
    group: str
    dataset: str
    stage: str | None = None
    temperature: int | None = None
    how: str = ""
    order: float | None = None  # median translational order parameter, for structure-classified systems


def parse_folders(name: str | Path) -> tuple[str, str | None, int | None]:
    """(dataset, stage folder, temperature in K) from a system's path.

    ``.../216atom-melt-quench/s3-quench-300K/temp-450K`` -> ("216atom-melt-quench", "s3-quench-300K", 450);
    a path without stage and ``temp-NNNK`` folders gives (name of the parent folder, None, None).
    """
    parts = Path(name).parts
    temperature, stage, dataset = None, None, Path(name).parent.name
    if parts and (m := _TEMP.match(parts[-1])):
        temperature = int(m.group(1))
        if len(parts) >= 2 and _STAGE.match(parts[-2]):
            stage = parts[-2]
            dataset = parts[-3] if len(parts) >= 3 else ""
        else:
            dataset = parts[-2] if len(parts) >= 2 else ""
    return dataset, stage, temperature


def label_from_folders(name: str | Path, amorphous_max_k: float = AMORPHOUS_MAX_K) -> PhaseLabel | None:
    """Phase from ``<stage>/temp-<T>K`` folder names (the mapping table of the module docstring), or
    None when the path has no such folders."""
    dataset, stage, t = parse_folders(name)
    if t is None:
        return None
    kind = _STAGE.match(stage).group(1) if stage else None
    if kind == "melt":
        if t >= T_MELT_K:
            return PhaseLabel("liquid", "melt", dataset, stage, t, f"melt stage, {t} K >= T_m {T_MELT_K} K")
        return PhaseLabel(None, "heating", dataset, stage, t, f"melt stage below T_m ({t} K): phase unknown")
    if kind == "quench":
        if t <= amorphous_max_k:
            return PhaseLabel("amorphous", "glass", dataset, stage, t, f"quench, {t} K <= {amorphous_max_k:g} K")
        group = "supercooled" if t < T_MELT_K else "melt"
        return PhaseLabel("liquid", group, dataset, stage, t, f"quench, {t} K > {amorphous_max_k:g} K")
    return PhaseLabel(None, "unknown stage", dataset, stage, t, "temperature folder without a melt/quench stage")


def _rock_salt_cells(system: System) -> int | None:
    """n for an n x n x n supercell of the 8-atom cubic rock-salt cell, from the atom count."""
    n = round((system.natoms / 8) ** (1 / 3))
    return n if n >= 1 and 8 * n ** 3 == system.natoms else None


def translational_order(system: System) -> np.ndarray:
    """Per frame: |<exp(i k·x)>| over atoms for the rock-salt (200) reflection, averaged over x, y, z.

    k = 2π·2n/L along each axis of an orthorhombic box holding n x n x n cubic rock-salt cells (every
    atom of an ideal rock-salt lattice sits on a multiple of a/2, so the ideal value is 1; thermal
    vibration lowers it to about exp(-k²<u²>/2); a liquid gives about 1/sqrt(N)).  NaN for frames whose
    box is not orthorhombic or whose atom count is not 8 n³.
    """
    n = _rock_salt_cells(system)
    out = np.full(system.nframes, np.nan)
    if n is None:
        return out
    cells = system.cells
    lengths = np.einsum("fii->fi", cells)
    offdiag = np.abs(cells - np.einsum("fi,ij->fij", lengths, np.eye(3))).max(axis=(1, 2))
    ok = offdiag < 1e-6 * np.abs(lengths).max(axis=1)
    k = 2 * np.pi * 2 * n / lengths  # (nf, 3)
    phase = np.exp(1j * k[:, None, :] * system.coords)  # (nf, nat, 3)
    value = np.abs(phase.mean(axis=1)).mean(axis=1)
    out[ok] = value[ok]
    return out


def label_from_structure(system: System) -> PhaseLabel:
    """Crystalline or not, by the median of :func:`translational_order` over the system's frames."""
    dataset = Path(system.name).parent.name
    order = translational_order(system)
    if not np.isfinite(order).any():
        return PhaseLabel(None, "unclassified", dataset, how="no temperature folder and no rock-salt-sized "
                                                               "orthorhombic box to classify by structure")
    med = float(np.nanmedian(order))
    if med > CRYSTAL_ORDER_MIN:
        return PhaseLabel("crystalline", "crystal", dataset, how=f"rock-salt (200) order {med:.2f} > "
                                                                 f"{CRYSTAL_ORDER_MIN}", order=med)
    return PhaseLabel(None, "disordered", dataset, how=f"rock-salt (200) order {med:.2f} <= {CRYSTAL_ORDER_MIN}, "
                                                       "no temperature: not a seed phase", order=med)


def label_system(system: System, amorphous_max_k: float = AMORPHOUS_MAX_K) -> PhaseLabel:
    """Folder names first (``<stage>/temp-<T>K``), else the structure."""
    return label_from_folders(system.name, amorphous_max_k) or label_from_structure(system)


# ---- which frames: the training's validation split -------------------------------------------------

class _FrameIndex:
    """Stands in for a System in :func:`split_frames`: `subset` returns (system index, frame indices)."""

    def __init__(self, k: int, nframes: int):
        self.k, self.nframes = k, nframes

    def subset(self, idx):
        return self.k, np.asarray(idx, dtype=np.int64).reshape(-1)


def validation_frames(systems: Sequence[System], valid_fraction: float, seed: int) -> list[tuple[int, int]]:
    """(system index, frame index) of every validation frame of ``split_frames(systems, valid_fraction,
    seed)``: the same call, on the same systems in the same order, as :func:`model.train.prepare`
    makes, so these are exactly the frames training held out."""
    _, valid = split_frames([_FrameIndex(k, s.nframes) for k, s in enumerate(systems)], valid_fraction, seed)
    return [(k, int(f)) for k, idx in valid for f in idx]


@dataclasses.dataclass
class FrameRef:
    system: System
    frame: int
    label: PhaseLabel
    role: str  # "validation" (held out by the training split) or "test" (a data set not trained on)


@dataclasses.dataclass
class Loaded:
    frames: list[FrameRef]  # validation frames of the training data, then the test frames
    info: dict  # JSON-ready: what was loaded, each system's label, what was left out and why
    systems: list[System]  # every system loaded (training data and test data), for the evidence


def load_frames(data_systems, valid_fraction: float, split_seed: int, type_map: Sequence[str],
                test_systems=(), amorphous_max_k: float = AMORPHOUS_MAX_K) -> Loaded:
    """Validation frames of the training data (as `model.train.prepare` loads and splits it) and the
    frames of extra test systems that have a phase, each with its label; plus a description of what was
    loaded and what was left out."""
    systems = [s.remap_types(type_map) for s in load_systems(data_systems)]
    labels = [label_system(s, amorphous_max_k) for s in systems]
    held_out = validation_frames(systems, valid_fraction, split_seed)
    frames = [FrameRef(systems[k], f, labels[k], "validation") for k, f in held_out]
    info = {"data": [str(p) for p in ([data_systems] if isinstance(data_systems, (str, Path)) else data_systems)],
            "valid_fraction": valid_fraction, "split_seed": split_seed, "amorphous_max_K": amorphous_max_k,
            "systems": [_describe(s, lab) for s, lab in zip(systems, labels)], "test_systems": []}
    trained = {str(Path(s.name).resolve()) for s in systems}
    everything = list(systems)
    if test_systems:
        for s in load_systems(test_systems):
            s = s.remap_types(type_map)
            lab = label_system(s, amorphous_max_k)
            d = _describe(s, lab)
            if str(Path(s.name).resolve()) in trained:
                d["used"] = "no: part of the training data (its validation frames are already in)"
            elif lab.phase is None:
                d["used"] = "no: not a seed phase"
            else:
                d["used"] = "yes: every frame, as a test"
                frames.extend(FrameRef(s, f, lab, "test") for f in range(s.nframes))
            info["test_systems"].append(d)
            everything.append(s)
    return Loaded(frames, info, everything)


def _describe(s: System, lab: PhaseLabel) -> dict:
    return {"name": s.name, "frames": s.nframes, "natoms": s.natoms, "phase": lab.phase, "group": lab.group,
            "temperature_K": lab.temperature, "dataset": lab.dataset, "how": lab.how}


# ---- accuracy per phase ---------------------------------------------------------------------------

@dataclasses.dataclass
class PhaseAccuracy:
    """What :func:`evaluate` measured: ``metrics`` (JSON-ready) and the per-frame predictions for plots."""

    metrics: dict
    frames: list[FrameRef]
    collected: dict  # "float"/"quantized" -> metrics.collect() output over `frames`
    energy_offsets: dict  # model -> dataset -> mean energy error removed (eV/atom)


def pick_frames(frames: Sequence[FrameRef], max_frames_per_phase: int | None, seed: int = 0) -> list[FrameRef]:
    """At most ``max_frames_per_phase`` frames of each phase (None or 0: all), drawn at random with
    ``seed``, kept in their original order.  Frames without a phase are one more group, capped alike."""
    if not max_frames_per_phase:
        return list(frames)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(frames), dtype=bool)
    by_phase: dict = {}
    for k, fr in enumerate(frames):
        by_phase.setdefault(fr.label.phase, []).append(k)
    for key in sorted(by_phase, key=str):
        idx = np.array(by_phase[key])
        if len(idx) > max_frames_per_phase:
            idx = rng.choice(idx, size=max_frames_per_phase, replace=False)
        keep[idx] = True
    return [fr for fr, k in zip(frames, keep) if k]


def evaluate(qm, frames: Sequence[FrameRef], max_frames_per_phase: int | None = None, seed: int = 0,
             float_net=None, reference_datasets: Sequence[str] | None = None) -> PhaseAccuracy:
    """Float and quantized energy/force RMSE of a model file, overall and per phase, group and temperature.

    ``float_net``: the float model (default: the model file's own float weights,
    :func:`model.quantize.float_model`).  Energies of frames from data sets outside
    ``reference_datasets`` (default: the data sets of the validation frames) are compared with that data
    set's mean per-atom energy error removed, for each model separately (``energy_offsets``); rows that
    contain such frames say so.  Progress bars come from :func:`model.metrics.collect`.
    """
    from model.metrics import collect, predict_float, predict_quantized
    from model.quantize import float_model
    frames = pick_frames(frames, max_frames_per_phase, seed)
    if not frames:
        raise ValueError("no frames to evaluate")
    net = float_net if float_net is not None else float_model(qm)
    items = [(fr.system, fr.frame) for fr in frames]
    collected = {"float": collect(lambda s, f: predict_float(net, s, f), items, "float model"),
                 "quantized": collect(lambda s, f: predict_quantized(qm, s, f), items, "quantized reference")}
    if reference_datasets is None:
        reference_datasets = sorted({fr.label.dataset for fr in frames if fr.role == "validation"})
    dataset = np.array([fr.label.dataset for fr in frames])
    foreign = sorted(set(dataset) - set(reference_datasets))

    per_frame, offsets = {}, {}
    for name, c in collected.items():
        natoms = c["natoms"]
        de = (c["e_pred"] - c["e_ref"]) / natoms
        offsets[name] = {}
        for d in foreign:
            m = dataset == d
            offsets[name][str(d)] = float(np.mean(de[m]))
            de = np.where(m, de - offsets[name][str(d)], de)
        ncomp = 3 * natoms
        bounds = np.concatenate([[0], np.cumsum(ncomp)])
        sq = (c["f_pred"] - c["f_ref"]) ** 2
        per_frame[name] = {"de": de, "de_raw": (c["e_pred"] - c["e_ref"]) / natoms,
                           "sse_f": np.add.reduceat(sq, bounds[:-1]) if len(sq) else np.zeros(0), "ncomp": ncomp}
    ref_sq = np.add.reduceat(collected["float"]["f_ref"] ** 2, np.concatenate([[0], np.cumsum(
        3 * collected["float"]["natoms"])])[:-1])

    def row(mask: np.ndarray) -> dict:
        sel = [fr for fr, m in zip(frames, mask) if m]
        natoms = collected["float"]["natoms"][mask]
        temps = sorted({fr.label.temperature for fr in sel if fr.label.temperature is not None})
        r = {"frames": int(mask.sum()), "atoms": int(natoms.sum()),
             "roles": sorted({fr.role for fr in sel}), "datasets": sorted({fr.label.dataset for fr in sel}),
             "groups": sorted({fr.label.group for fr in sel}),
             "temperatures_K": [temps[0], temps[-1]] if temps else None,
             "dft_force_rms": float(np.sqrt(ref_sq[mask].sum() / (3 * natoms.sum()))),
             "energy": ("offset removed for " + ", ".join(sorted(set(r_d for r_d in dataset[mask] if r_d in foreign)))
                        if any(d in foreign for d in dataset[mask]) else "as labelled")}
        for name, p in per_frame.items():
            de, de_raw = p["de"][mask], p["de_raw"][mask]
            mse_f = p["sse_f"][mask].sum() / p["ncomp"][mask].sum()
            r[name] = {"rmse_e": float(np.sqrt(np.mean(de ** 2))),
                       "rmse_e_offset_removed": float(np.std(de)),
                       "mean_error_e": float(np.mean(de_raw)),
                       "rmse_f": float(np.sqrt(mse_f))}
        return r

    phase = np.array([fr.label.phase or "" for fr in frames])
    group = np.array([fr.label.group for fr in frames])
    role = np.array([fr.role for fr in frames])
    temp = np.array([fr.label.temperature if fr.label.temperature is not None else -1 for fr in frames])
    rows = {}
    if (role == "validation").any():
        rows["overall"] = row(role == "validation")
    for p in PHASES:
        if (phase == p).any():
            rows[p] = row(phase == p)
            groups = sorted(set(group[phase == p]))
            if len(groups) > 1:
                for g in groups:
                    rows[f"{p}: {g}"] = row((phase == p) & (group == g))
    if (phase == "").any():
        rows["no phase"] = row(phase == "")
    per_t = []
    for t in sorted(set(temp[temp >= 0])):
        for st in sorted({fr.label.stage for fr in frames if fr.label.temperature == t}, key=str):
            m = (temp == t) & np.array([fr.label.stage == st for fr in frames])
            per_t.append({"stage": st, "temperature_K": int(t), "phase": frames[int(np.flatnonzero(m)[0])].label.phase,
                          **row(m)})
    per_system = []  # systems without a temperature (structure-classified): one row each
    names = np.array([fr.system.name for fr in frames])
    for name in dict.fromkeys(n for n, t in zip(names, temp) if t < 0):
        m = names == name
        per_system.append({"system": str(name), "phase": frames[int(np.flatnonzero(m)[0])].label.phase, **row(m)})
    metrics = {"model_hash": qm.hash, "frames": len(frames), "max_frames_per_phase": max_frames_per_phase,
               "seed": seed, "reference_datasets": list(reference_datasets), "energy_offsets_eV_per_atom": offsets,
               "units": {"rmse_e": "eV/atom", "rmse_f": "eV/Å"}, "seed_paper_meV": {
                   k: {"rmse_e": v[0], "rmse_f": v[1]} for k, v in seed_numbers(qm.config.type_map).items()},
               "rows": rows, "per_temperature": per_t, "per_system": per_system}
    return PhaseAccuracy(metrics, list(frames), collected, offsets)


# ---- evidence for the mapping ---------------------------------------------------------------------

def quench_evidence(systems: Sequence[System], lag: int = 300, mobile_threshold: float = 1.5,
                    amorphous_max_k: float = AMORPHOUS_MAX_K) -> list[dict]:
    """Per temperature-folder system: mean-square displacement over ``lag`` frames (every time origin,
    centre-of-mass drift removed; needs unwrapped coordinates, as the 216-atom set has), the fraction of
    (atom, origin) pairs displaced farther than ``mobile_threshold`` Å, E/atom and the DFT force RMS.
    Systems with fewer frames use lag = nframes - 1 (the ``lag`` key says which).  A system whose atoms
    jump by more than a third of the box between frames has wrapped coordinates: its displacement
    entries are None."""
    out = []
    for s in systems:
        lab = label_from_folders(s.name, amorphous_max_k)
        if lab is None or s.nframes < 2:
            continue
        x = s.coords - s.coords.mean(axis=1, keepdims=True)
        L = min(lag, s.nframes - 1)
        box = float(np.linalg.norm(s.cells, axis=2).min()) if s.pbc else np.inf
        wrapped = float(np.abs(np.diff(s.coords, axis=0)).max()) > box / 3
        d2 = ((x[L:] - x[:-L]) ** 2).sum(-1)
        out.append({"stage": lab.stage, "temperature_K": lab.temperature, "phase": lab.phase, "group": lab.group,
                    "frames": s.nframes, "lag": L, "wrapped": wrapped,
                    "msd_A2": None if wrapped else float(d2.mean()),
                    "msd_per_K": None if wrapped else float(d2.mean() / lab.temperature),
                    "mobile_fraction": None if wrapped else float(np.mean(d2 > mobile_threshold ** 2)),
                    "energy_per_atom_eV": float(s.energies.mean() / s.natoms) if s.energies is not None else None,
                    "dft_force_rms": float(np.sqrt(np.mean(s.forces ** 2))) if s.forces is not None else None})
    return out


def structure_evidence(systems: Sequence[System], every_frames: int = 10, bond: float = 3.2) -> list[dict]:
    """Per structure-classified system: the translational order parameter (median, min, max), g(r)
    facts from :mod:`science.analysis` (Ge-Ge and Ge-Te coordination within ``bond`` Å, the smallest
    Ge-Te g(r) between 3.3 and 3.9 Å: empty between the shells of a rock-salt crystal), E/atom, DFT
    force RMS and volume per atom.  g(r) uses about ``every_frames`` frames spread over the system."""
    from . import analysis as an
    out = []
    for s in systems:
        if label_from_folders(s.name) is not None:
            continue
        lab = label_from_structure(s)
        order = translational_order(s)
        known = bool(np.isfinite(order).any())
        r = an.rdf(an.frames_from_system(s, every=max(1, s.nframes // every_frames)), rmax=6.0, nbins=120)
        gap = (r.r > 3.3) & (r.r < 3.9)
        have = set(r.elements) >= {"Ge", "Te"}
        out.append({"name": Path(s.name).name, "dataset": lab.dataset, "frames": s.nframes, "phase": lab.phase,
                    "group": lab.group, "order_median": float(np.nanmedian(order)) if known else None,
                    "order_min": float(np.nanmin(order)) if known else None,
                    "order_max": float(np.nanmax(order)) if known else None,
                    "cn_GeGe": r.coordination_number("Ge-Ge", bond) if have else None,
                    "cn_GeTe": r.coordination_number("Ge-Te", bond) if have else None,
                    "g_GeTe_gap_min": float(r.partials["Ge-Te"][gap].min()) if have else None,
                    "energy_per_atom_eV": float(s.energies.mean() / s.natoms) if s.energies is not None else None,
                    "dft_force_rms": float(np.sqrt(np.mean(s.forces ** 2))) if s.forces is not None else None,
                    "volume_per_atom_A3": float(np.abs(np.linalg.det(s.cells)).mean() / s.natoms)})
    return out


# ---- writing: table, report, plots ----------------------------------------------------------------

def _fmt(x, scale=1e3, digits=2):
    return "n/a" if x is None or not math.isfinite(x) else f"{x * scale:.{digits}f}"


def _energy_cells(r: dict, mark: str = "") -> str:
    """Table cells: energy RMSE float | quantized (meV/atom), each followed by `mark`."""
    return f"{_fmt(r['float']['rmse_e'])}{mark} | {_fmt(r['quantized']['rmse_e'])}{mark}"


def _force_cells(r: dict) -> str:
    """Table cells: force RMSE float | quantized | RMS of the force labels (meV/Å)."""
    return (f"{_fmt(r['float']['rmse_f'], digits=1)} | {_fmt(r['quantized']['rmse_f'], digits=1)} | "
            f"{_fmt(r['dft_force_rms'], digits=0)}")


def markdown_table(metrics: dict) -> str:
    """The accuracy table: energy (meV/atom) and force (meV/Å) RMSE, float and quantized, next to the
    seed paper's numbers; sub-rows for groups; a marker on rows whose energies are offset-removed."""
    lines = ["| phase | frames | E RMSE float | E RMSE quantized | F RMSE float | F RMSE quantized | "
             "DFT F RMS (meV/Å) | seed E | seed F |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in metrics["rows"].items():
        seed = metrics["seed_paper_meV"].get(name)
        mark = " †" if r["energy"] != "as labelled" else ""
        temps = f" ({r['temperatures_K'][0]}-{r['temperatures_K'][1]} K)" if r["temperatures_K"] else ""
        label = (f"&nbsp;&nbsp;{name.split(': ', 1)[1]}" if ": " in name else f"**{name}**") + temps
        if "test" in r["roles"] and "validation" not in r["roles"]:
            label += " (test set)"
        lines.append(f"| {label} | {r['frames']} | {_energy_cells(r, mark)} | {_force_cells(r)} | "
                     f"{seed['rmse_e'] if seed else ''} | {seed['rmse_f'] if seed else ''} |")
    return "\n".join(lines) + "\n"


def markdown_per_temperature(metrics: dict) -> str:
    lines = ["| stage | T (K) | phase | frames | E float | E quantized | F float | F quantized | DFT F RMS (meV/Å) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in metrics["per_temperature"]:
        lines.append(f"| {r['stage']} | {r['temperature_K']} | {r['phase'] or '-'} | {r['frames']} | "
                     f"{_energy_cells(r)} | {_force_cells(r)} |")
    return "\n".join(lines) + "\n"


def markdown_per_system(metrics: dict) -> str:
    lines = ["| system | phase | frames | mean E error float (raw) | E RMSE float | E RMSE quantized | "
             "E std within system (float) | F float | F quantized | DFT F RMS |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in metrics.get("per_system", []):
        mark = " †" if r["energy"] != "as labelled" else ""
        lines.append(f"| {Path(r['system']).name} | {r['phase'] or '-'} | {r['frames']} | "
                     f"{_fmt(r['float']['mean_error_e'], digits=1)} | {_energy_cells(r, mark)} | "
                     f"{_fmt(r['float']['rmse_e_offset_removed'])} | {_force_cells(r)} |")
    return "\n".join(lines) + "\n"


def markdown_evidence(quench: list[dict], structure: list[dict]) -> str:
    out = []
    if quench:
        out += ["| stage | T (K) | phase | frames | lag | MSD (Å²) | MSD/T (1e-3 Å²/K) | mobile > 1.5 Å | "
                "E/atom (eV) | DFT F RMS (eV/Å) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for q in quench:
            out.append(f"| {q['stage']} | {q['temperature_K']} | {q['phase']} ({q['group']}) | {q['frames']} | "
                       f"{q['lag']} | {_fmt(q['msd_A2'], 1)} | {_fmt(q['msd_per_K'])} | "
                       f"{_fmt(q['mobile_fraction'], 100, 1)} % | {_fmt(q['energy_per_atom_eV'], 1, 4)} | "
                       f"{_fmt(q['dft_force_rms'], 1, 3)} |")
        out.append("")
    if structure:
        out += ["| system | frames | order median [min, max] | Ge-Ge CN (3.2 Å) | Ge-Te CN (3.2 Å) | "
                "min g_GeTe 3.3-3.9 Å | E/atom (eV) | DFT F RMS (eV/Å) | V/atom (Å³) | phase |",
                "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
        for s in structure:
            out.append(f"| {s['name']} | {s['frames']} | {s['order_median']:.2f} [{s['order_min']:.2f}, "
                       f"{s['order_max']:.2f}] | {s['cn_GeGe']:.2f} | {s['cn_GeTe']:.2f} | "
                       f"{s['g_GeTe_gap_min']:.2f} | {s['energy_per_atom_eV']:.4f} | {s['dft_force_rms']:.3f} | "
                       f"{s['volume_per_atom_A3']:.2f} | {s['phase'] or '- (' + s['group'] + ')'} |")
        out.append("")
    return "\n".join(out)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


PHASE_COLORS = {"amorphous": "tab:blue", "liquid": "tab:red", "crystalline": "tab:green", "": "tab:gray"}
MAX_FORCE_POINTS = 200_000


def _frame_slices(c: dict, mask: np.ndarray) -> np.ndarray:
    """Boolean mask over the flattened force components of the frames in ``mask``."""
    return np.repeat(mask, 3 * c["natoms"])


def plot_parity(result: PhaseAccuracy, path: str | Path, phases: Sequence[str] | None = None, title: str = "",
                seed: int = 0) -> Path:
    """Energy and force parity (rows: float, quantized; columns: energy, force), colored by phase, as
    the seed's Fig. 2.  Energies of offset-removed data sets are drawn shifted by their offset.  At most
    MAX_FORCE_POINTS force components per panel, drawn at random with ``seed``."""
    plt = _pyplot()
    path = Path(path)
    phase = np.array([fr.label.phase or "" for fr in result.frames])
    dataset = np.array([fr.label.dataset for fr in result.frames])
    wanted = list(phases) if phases is not None else [p for p in PHASES if (phase == p).any()]
    fig, axes = plt.subplots(2, 2, figsize=(9.5, 8.6))
    rng = np.random.default_rng(seed)
    for row, name in zip(axes, ("float", "quantized")):
        c = result.collected[name]
        e_ref = c["e_ref"] / c["natoms"]
        e_pred = c["e_pred"] / c["natoms"]
        for d, off in result.energy_offsets[name].items():  # DFT energies moved onto the model's reference
            e_ref = np.where(dataset == d, e_ref + off, e_ref)
        for p in wanted:
            m = phase == p
            if not m.any():
                continue
            r = result.metrics["rows"].get(p or "no phase")
            lab = f"{p or 'no phase'} ({m.sum()} frames)"
            if r:
                lab += f": {r[name]['rmse_e'] * 1e3:.2f} meV/atom" + (" †" if r["energy"] != "as labelled" else "")
            row[0].plot(e_ref[m], e_pred[m], ".", ms=3, alpha=0.6, color=PHASE_COLORS.get(p, None), label=lab)
            fm = _frame_slices(c, m)
            idx = np.flatnonzero(fm)
            share = max(1, MAX_FORCE_POINTS // max(1, len(wanted)))
            if len(idx) > share:
                idx = np.sort(rng.choice(idx, size=share, replace=False))
            flab = f"{p or 'no phase'}" + (f": {r[name]['rmse_f'] * 1e3:.1f} meV/Å" if r else "")
            row[1].plot(c["f_ref"][idx], c["f_pred"][idx], ".", ms=1, alpha=0.25, color=PHASE_COLORS.get(p, None),
                        label=flab, rasterized=True)
        for ax, unit, what in ((row[0], "eV/atom", "energy"), (row[1], "eV/Å", "force")):
            lo, hi = ax.get_xlim()
            lo2, hi2 = ax.get_ylim()
            lims = [min(lo, lo2), max(hi, hi2)]
            ax.plot(lims, lims, "k--", lw=0.8)
            ax.set_xlim(lims)
            ax.set_ylim(lims)
            ax.set_xlabel(f"DFT {what} ({unit})")
            ax.set_ylabel(f"{name} model {what} ({unit})")
            leg = ax.legend(fontsize=7, loc="upper left", markerscale=4 if what == "force" else 2)
            for h in leg.legend_handles:
                h.set_alpha(1)
        row[0].ticklabel_format(useOffset=False)
    shown = set(dataset[np.isin(phase, wanted)])
    if any(d in shown for v in result.energy_offsets.values() for d in v):
        offs = "; ".join(f"{n}: {d} {o * 1e3:+.0f} meV/atom" for n, v in result.energy_offsets.items()
                         for d, o in v.items() if d in shown)
        fig.text(0.5, 0.005, "† DFT energies of a set with its own reference shifted by the model's mean error: "
                 f"{offs}",
                 ha="center", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_evidence(quench: list[dict], structure: list[dict], path: str | Path,
                  amorphous_max_k: float = AMORPHOUS_MAX_K) -> Path:
    """The evidence for the phase mapping: MSD/T and mobile fraction against T for the quench, and the
    rock-salt order parameter against E/atom for the structure-classified systems."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    q = [x for x in quench if x["stage"] and "quench" in x["stage"] and not x["wrapped"]]
    if q:
        t = [x["temperature_K"] for x in q]
        ax.plot(t, [x["msd_per_K"] * 1e3 for x in q], "o-", label=f"MSD/T over {q[0]['lag']} frames (1e-3 Å²/K)")
        ax2 = ax.twinx()
        ax2.plot(t, [x["mobile_fraction"] * 100 for x in q], "s--", color="tab:orange",
                 label="atoms moved > 1.5 Å (%)")
        ax2.set_ylabel("mobile atoms (%)", color="tab:orange")
        ax.axvline(amorphous_max_k + 25, color="k", lw=0.8, ls=":")
        ax.text(amorphous_max_k + 25, 0.5, "amorphous ← | → liquid ", fontsize=7, ha="center", va="center",
                transform=ax.get_xaxis_transform(), bbox={"fc": "white", "ec": "none"})
        ax.set_xlabel("quench temperature (K)")
        ax.set_ylabel("MSD / T (1e-3 Å²/K)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
        ax.set_title("216-atom quench: diffusion")
    ax = axes[1]
    if structure:
        for s in structure:
            color = "tab:green" if s["phase"] == "crystalline" else "tab:gray"
            ax.plot(s["energy_per_atom_eV"], s["order_median"], "o", color=color)
            ax.annotate(s["name"].replace("data.", ""), (s["energy_per_atom_eV"], s["order_median"]), fontsize=6,
                        xytext=(2, 2), textcoords="offset points")
        ax.axhline(CRYSTAL_ORDER_MIN, color="k", lw=0.8, ls=":")
        ax.set_xlabel("E/atom (eV, own DFT reference)")
        ax.set_ylabel("rock-salt (200) order, median")
        ax.set_title("64-atom NPT: crystalline (green) or not")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_outputs(result: PhaseAccuracy, info: dict, json_path=None, markdown_path=None, figure_prefix=None,
                  evidence: dict | None = None, header: str = "", extra: dict | None = None) -> dict:
    """JSON (metrics + what was loaded + evidence), Markdown report, parity PNGs (one per phase and one
    of all phases: ``PREFIX-<phase>.png``, ``PREFIX-all.png``) and the evidence PNG; returns the paths."""
    written = {}
    amk = info.get("amorphous_max_K", AMORPHOUS_MAX_K)
    if figure_prefix:
        prefix = Path(figure_prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        phases_here = [p for p in PHASES if p in result.metrics["rows"]]
        for p in phases_here:
            written[f"parity_{p}"] = plot_parity(result, f"{prefix}-{p}.png", [p], title=f"GeTe {p}")
        written["parity_all"] = plot_parity(result, f"{prefix}-all.png", title="GeTe, all phases")
        if evidence:
            written["evidence"] = plot_evidence(evidence.get("quench", []), evidence.get("structure", []),
                                                f"{prefix}-phases.png", amk)
    doc = {**(extra or {}), "metrics": result.metrics, "loaded": info, "evidence": evidence or {},
           "files": {k: str(v) for k, v in written.items()}}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(doc, indent=1))
        written["json"] = Path(json_path)
    if markdown_path:
        md = Path(markdown_path)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(markdown_report(result.metrics, info, evidence, {k: Path(v) for k, v in written.items()},
                                      md.parent, header))
        written["markdown"] = md
    return written


def markdown_report(metrics: dict, info: dict, evidence: dict | None, files: dict, base: Path,
                    header: str = "") -> str:
    def rel(p):
        return os.path.relpath(p, base)

    m = metrics
    offs = "; ".join(f"{n}: {d} {o * 1e3:+.1f} meV/atom" for n, v in m["energy_offsets_eV_per_atom"].items()
                     for d, o in v.items())
    lines = [header.rstrip() + "\n" if header else "",
             "## Accuracy per phase\n",
             "Energy RMSE in meV/atom, force RMSE in meV/Å; \"float\" is the model file's own float weights, "
             "\"quantized\" the bit-exact fixed-point reference (`model.reference`, what the hardware computes); "
             "\"seed\" the seed paper's numbers for this material (against DFT); \"DFT F RMS\" the RMS of the "
             "force labels of the row's frames (errors grow with it; labels from a teacher potential where the "
             "data says so in its provenance.json). "
             + ("Frames: all. " if not m["max_frames_per_phase"] else
                f"Frames: at most {m['max_frames_per_phase']} per phase (random, seed {m['seed']}). ")
             + "The overall row is the training's validation frames "
             f"(split by frame, valid fraction {info.get('valid_fraction')}, seed {info.get('split_seed')}).\n",
             markdown_table(m)]
    if offs:
        lines.append(f"† energy RMSE with the data set's mean error removed (its DFT energy reference differs "
                     f"from the training data's): {offs}.\n")
    for key, what in (("parity_all", "all phases"), *((f"parity_{p}", p) for p in PHASES)):
        if key in files:
            lines.append(f"![parity, {what}]({rel(files[key])})\n")
    if m["per_temperature"]:
        lines += ["## Per temperature\n", markdown_per_temperature(m)]
    if m.get("per_system"):
        lines += ["## Per system (data without temperatures)\n",
                  "meV/atom and meV/Å. The raw mean energy error includes the data set's different DFT reference; "
                  "† columns remove one constant per data set (the mean over all its evaluated frames), the "
                  "within-system column one constant per system.\n", markdown_per_system(m)]
    if evidence and (evidence.get("quench") or evidence.get("structure")):
        lines += ["## Evidence for the phase mapping (`science.phases`)\n",
                  f"Amorphous: quench stages at or below {info.get('amorphous_max_K')} K. Liquid: melt stages "
                  f"(>= {T_MELT_K} K) and quench stages above the cut. Crystalline: structure-classified systems "
                  f"whose median rock-salt (200) order parameter exceeds {CRYSTAL_ORDER_MIN}.\n",
                  "Quench: mean-square displacement over `lag` frames (every time origin, centre-of-mass drift "
                  "removed), and the share of (atom, origin) pairs displaced more than 1.5 Å. The melt stages hold "
                  "only 40 frames, so their lag is 39 frames and their numbers do not compare with the quench's "
                  "300-frame lag; they are liquid by temperature (>= T_m). 64-atom NPT: rock-salt (200) order "
                  "parameter per frame (1 for an ideal lattice, ~0.12 for 64 random atoms), g(r) facts from "
                  "`science.analysis` over about ten frames per system.\n",
                  markdown_evidence(evidence.get("quench", []), evidence.get("structure", []))]
        if "evidence" in files:
            lines.append(f"![phase evidence]({rel(files['evidence'])})\n")
    return "\n".join(lines)
