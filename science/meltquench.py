"""Labelled melt-quench data from a teacher potential: `python -m science data melt-quench CONFIG -o DIR`.

Where no DFT data exists (Sb) or only a validation set does (GST), training data comes from MD with
a DFT-fitted or universal potential (science.teachers), following the seed's protocol scaled to this
machine: start from the crystal, heat, hold the liquid, quench, hold the glass; NVT throughout.

    config (JSON) ─► structure (ASE) ─► Langevin NVT, stage by stage, target T ramped linearly
                                             │ every `sample_every` steps: a frame
                                             ▼
           DIR/<stage folder>/temp-<T>K/set.NNN/{box,coord,energy,force,virial}.npy   (DeePMD npy)
           DIR/provenance.json   teacher, versions, model hash, protocol, structure, seed, timings,
                                 frames per system, force decorrelation per stage
           DIR/state.json + state-K.npz   checkpoint: the run resumes from it

Frames are grouped by stage and by the thermostat's target temperature rounded to `bin_K`, in the
folder layout of the GeTe AIMD data, so science.phases labels them the same way (`sN-melt-*`: liquid
above T_m; `sN-quench-*`: liquid above `amorphous_max_k`, amorphous below; other stages: no phase).

Config::

    {"structure": {"builder": "a7", "element": "Sb", "a": 4.3084, "c": 11.274, "u": 0.2336,
                   "repeat": [4, 4, 1]},
     "teacher": "sevenn:7net-0",
     "seed": 1,
     "protocol": {"timestep_fs": 2.0, "friction_per_fs": 0.01, "sample_every": 10, "bin_K": 50,
                  "checkpoint_every": 100, "max_force": 50.0,
                  "stages": [{"folder": "s1-heat", "T": [300, 2000], "steps": 2000}, ...]},
     "short": {"protocol": {...}, "structure": {...}}}          (overrides for --short)

Structures: `a7` (the rhombohedral A7 structure of Sb/As/Bi, hexagonal setting, 6 atoms per cell),
`rocksalt` (anion sublattice of one element, cation sublattice shared at random, in the given ratio,
by elements and vacancies: Ge2Sb2Te5 is {"Ge": 2, "Sb": 2, "vacancy": 1} on the Te rock salt), or
`file` (anything ase.io.read reads).

Resuming.  Frames are written in chunks (one new `set.NNN` per system per chunk) together with a
checkpoint of the MD state (positions, momenta, the thermostat's random-generator state, the stage
and step).  Interrupted for any reason, the same command resumes from the last checkpoint and gives
the same frames, bit for bit, as an uninterrupted run (sets written after the last checkpoint are
removed).  A directory made with another config is refused.

Decorrelation.  For each stage the provenance reports the mean cosine between the force vectors of
consecutive frames (1 = identical frames, ~0 = independent): `sample_every` should make it small.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .teachers import Teacher, make_teacher

FORMAT = "dpfpga-melt-quench"
VERSION = 1


class MeltQuenchError(ValueError):
    """A config, structure or run that cannot go on; the message says what and where."""


# ---- config ---------------------------------------------------------------------------------------

@dataclass
class Stage:
    folder: str
    t_start: float
    t_end: float
    steps: int

    def target(self, step: int) -> float:
        """Thermostat target (K) at `step` of this stage: linear from t_start to t_end."""
        if self.steps <= 1:
            return self.t_end
        return self.t_start + (self.t_end - self.t_start) * step / (self.steps - 1)


@dataclass
class Protocol:
    stages: list[Stage]
    timestep_fs: float = 2.0
    friction_per_fs: float = 0.01
    sample_every: int = 10
    bin_K: float = 50.0
    checkpoint_every: int = 100
    max_force: float = 50.0

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


@dataclass
class Config:
    structure: dict
    teacher: str
    protocol: Protocol
    seed: int = 1
    type_map: list[str] | None = None
    source: dict = field(default_factory=dict)  # the resolved JSON, for the fingerprint and provenance

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.source, sort_keys=True).encode()).hexdigest()[:16]


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_config(path: str | Path, short: bool = False, scale: float | None = None,
                teacher: str | None = None, volume_per_atom: float | None = None) -> Config:
    """Read a melt-quench config; `short` applies its "short" overrides, `scale` multiplies every
    stage's step count (same rates of heating and cooling per step count: a faster quench),
    `volume_per_atom` (Å³) rescales the starting cell, hence the whole NVT run's density.  Relative
    structure and teacher model files are taken relative to the config file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MeltQuenchError(f"cannot read melt-quench config {path}: {e}") from None
    short_part = raw.pop("short", {})
    if short:
        raw = _merge(raw, short_part)
    for key in ("structure", "teacher", "protocol"):
        if key not in raw:
            raise MeltQuenchError(f"{path}: missing key {key!r}")
    if volume_per_atom is not None:
        if not volume_per_atom > 0:
            raise MeltQuenchError(f"volume per atom must be > 0 Å³, got {volume_per_atom}")
        raw["structure"] = dict(raw["structure"], volume_per_atom=float(volume_per_atom))
    st = dict(raw["structure"])
    if "file" in st:
        st["file"] = str((path.parent / st["file"]).resolve())
    if scale is not None:
        if not scale > 0:
            raise MeltQuenchError(f"scale must be > 0, got {scale}")
        raw["protocol"] = dict(raw["protocol"], stages=[dict(s, steps=max(1, round(s["steps"] * scale)))
                                                        for s in raw["protocol"].get("stages", [])])
        raw["scale"] = scale
    p = dict(raw["protocol"])
    stages = []
    for k, s in enumerate(p.pop("stages", [])):
        try:
            t = s["T"]
            t0, t1 = (float(t), float(t)) if isinstance(t, (int, float)) else (float(t[0]), float(t[1]))
            stages.append(Stage(str(s["folder"]), t0, t1, int(s["steps"])))
        except (KeyError, TypeError, ValueError, IndexError):
            raise MeltQuenchError(f"{path}: stage {k} needs folder, T (K or [K0, K1]) and steps: {s}") from None
        if stages[-1].steps < 1 or min(t0, t1) <= 0:
            raise MeltQuenchError(f"{path}: stage {k} ({s['folder']}) needs steps >= 1 and T > 0")
    if not stages:
        raise MeltQuenchError(f"{path}: the protocol has no stages")
    try:
        protocol = Protocol(stages, **p)
    except TypeError as e:
        raise MeltQuenchError(f"{path}: bad protocol key: {e}") from None
    if protocol.sample_every < 1 or protocol.checkpoint_every < 1:
        raise MeltQuenchError(f"{path}: sample_every and checkpoint_every must be >= 1")
    # A model file in the spec is relative to the config file, or to the working directory when the
    # spec comes from the caller (`teacher`, e.g. dpfpga:MODEL.npz: the student through this protocol).
    spec, base = (str(raw["teacher"]), path.parent) if teacher is None else (teacher, Path.cwd())
    kind, sep, arg = spec.partition(":")
    if sep and "/" in arg and not Path(arg).is_absolute():
        spec = f"{kind}:{(base / arg).resolve()}"
    if teacher is not None:
        raw["teacher"] = spec  # the provenance and fingerprint name the teacher actually used
    teacher = spec
    source = {**raw, "structure": st}
    return Config(st, teacher, protocol, int(raw.get("seed", 1)), raw.get("type_map"), source)


# ---- structures -----------------------------------------------------------------------------------

def build_structure(spec: dict, seed: int):
    """The starting crystal (ase.Atoms, periodic) for a structure spec (module docstring)."""
    from ase.spacegroup import crystal
    kind = spec.get("builder", "file" if "file" in spec else None)
    repeat = tuple(spec.get("repeat", (1, 1, 1)))
    if kind == "file":
        from ase.io import read
        try:
            atoms = read(spec["file"])
        except Exception as e:
            raise MeltQuenchError(f"cannot read structure file {spec.get('file')}: {e}") from None
        atoms = atoms.repeat(repeat)
    elif kind == "a7":
        a, c, u = float(spec.get("a", 4.3084)), float(spec.get("c", 11.274)), float(spec.get("u", 0.2336))
        atoms = crystal(spec.get("element", "Sb"), [(0, 0, u)], spacegroup=166,
                        cellpar=[a, a, c, 90, 90, 120]).repeat(repeat)
    elif kind == "rocksalt":
        atoms = _rocksalt(spec, repeat, seed)
    else:
        raise MeltQuenchError(f"unknown structure builder {kind!r}: expected a7, rocksalt or file")
    if "volume_per_atom" in spec:
        scale = (float(spec["volume_per_atom"]) * len(atoms) / atoms.get_volume()) ** (1 / 3)
        atoms.set_cell(atoms.cell * scale, scale_atoms=True)
    atoms.pbc = True
    return atoms


def _rocksalt(spec: dict, repeat, seed: int):
    from ase.build import bulk
    anion, cations = spec.get("anion"), spec.get("cations")
    if not anion or not isinstance(cations, dict) or not cations:
        raise MeltQuenchError("rocksalt needs anion (an element) and cations ({element or 'vacancy': ratio})")
    cubic = spec.get("cell", "primitive") == "cubic"
    # "Na"/"Cl" are placeholders for the two sublattices, replaced below.
    atoms = bulk("NaCl", "rocksalt", a=float(spec.get("a", 6.0)), cubic=cubic).repeat(repeat)
    sites = [k for k, s in enumerate(atoms.get_chemical_symbols()) if s == "Na"]
    total = sum(int(v) for v in cations.values())
    if len(sites) % total:
        raise MeltQuenchError(f"rocksalt: {len(sites)} cation sites cannot be shared in the ratio {cations} "
                              f"(the site count must be a multiple of {total}; change repeat)")
    labels = [el for el, n in cations.items() for _ in range(int(n) * len(sites) // total)]
    labels = list(np.random.default_rng(seed).permutation(labels))
    symbols = atoms.get_chemical_symbols()
    for k, el in zip(sites, labels):
        symbols[k] = el
    symbols = [anion if s == "Cl" else s for s in symbols]
    keep = [k for k, s in enumerate(symbols) if s != "vacancy"]
    atoms.set_chemical_symbols(["X" if s == "vacancy" else s for s in symbols])
    return atoms[keep]


# ---- the run --------------------------------------------------------------------------------------

def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def finished(outdir: str | Path, config: Config) -> dict | None:
    """The checkpoint state of a complete dataset that `config` made in `outdir` (its "frames" per system
    and MD "seconds"), or None: callers can reuse the data without making the teacher."""
    path = Path(outdir) / "state.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state if state.get("done") and state.get("fingerprint") == config.fingerprint() else None


class MeltQuench:
    """One dataset run: `MeltQuench(config, outdir).run()`; resumes from `outdir`'s checkpoint."""

    def __init__(self, config: Config, outdir: str | Path, teacher: Teacher | None = None, fresh: bool = False,
                 progress: bool = True, log=print):
        self.cfg, self.out, self.log, self.progress = config, Path(outdir), log, progress
        self.p = config.protocol
        if fresh and self.out.exists():
            # Only ever delete what this tool made: a folder without our checkpoint may be anything.
            if not (self.out / "state.json").is_file() and any(self.out.iterdir()):
                raise MeltQuenchError(f"--fresh: {self.out} holds no melt-quench checkpoint (state.json); "
                                      f"refusing to delete a folder this tool did not make")
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_out()
        self.teacher = teacher or make_teacher(config.teacher)
        self.atoms = build_structure(config.structure, config.seed)
        symbols = sorted(set(self.atoms.get_chemical_symbols()))
        self.type_map = list(config.type_map or symbols)
        unknown = sorted(set(symbols) - set(self.type_map))
        if unknown:
            raise MeltQuenchError(f"structure has elements {unknown} that type_map {self.type_map} lacks")
        self.types = np.array([self.type_map.index(s) for s in self.atoms.get_chemical_symbols()])
        self.buffer: dict[str, list[dict]] = {}
        self.state = {"stage": 0, "step": 0, "sets": {}, "frames": {}, "checkpoint": 0, "seconds": 0.0,
                      "stages": [{"steps_done": 0, "seconds": 0.0, "t_sum": 0.0, "t_n": 0, "cos_sum": 0.0,
                                  "cos_n": 0} for _ in self.p.stages]}
        self.rng = np.random.default_rng(config.seed)
        self._prev_forces = None

    # -- files

    def _check_out(self):
        state = self.out / "state.json"
        if state.exists():
            s = json.loads(state.read_text())
            if s.get("fingerprint") != self.cfg.fingerprint():
                raise MeltQuenchError(f"{self.out} holds a dataset made with another config (fingerprint "
                                      f"{s.get('fingerprint')}, this config {self.cfg.fingerprint()}); "
                                      f"choose another output directory or pass --fresh to delete it")
        elif any(self.out.iterdir()):
            raise MeltQuenchError(f"{self.out} is not empty and holds no melt-quench checkpoint; "
                                  f"choose an empty or new output directory")

    def _resume(self) -> bool:
        path = self.out / "state.json"
        if not path.exists():
            return False
        s = json.loads(path.read_text())
        npz = np.load(self.out / s["state_file"])
        if len(npz["positions"]) != len(self.atoms) or not np.array_equal(npz["numbers"], self.atoms.numbers):
            raise MeltQuenchError(f"checkpoint {self.out / s['state_file']} does not match the structure")
        self.atoms.set_cell(npz["cell"])
        self.atoms.set_positions(npz["positions"])
        self.atoms.set_momenta(npz["momenta"])
        self.rng.bit_generator.state = s["rng"]
        self.state = s
        # Sets written after the checkpoint (a crash between writing frames and the checkpoint)
        # would be frames the resumed run writes again: remove them.
        for sysdir in self.out.glob("*/temp-*K"):
            rel = str(sysdir.relative_to(self.out))
            keep = self.state["sets"].get(rel, 0)
            for d in sysdir.glob("set.*"):
                if int(d.name.split(".")[1]) >= keep:
                    shutil.rmtree(d)
        return True

    def _system(self, stage: Stage, target: float) -> str:
        t = int(round(target / self.p.bin_K) * self.p.bin_K)
        return f"{stage.folder}/temp-{t}K"

    def _flush(self):
        """Write the buffered frames (one new set per system), then the checkpoint."""
        for rel, frames in self.buffer.items():
            if not frames:
                continue
            root = self.out / rel
            root.mkdir(parents=True, exist_ok=True)
            if not (root / "type.raw").exists():
                (root / "type.raw").write_text("".join(f"{t}\n" for t in self.types))
                (root / "type_map.raw").write_text("".join(f"{n}\n" for n in self.type_map))
            k = self.state["sets"].get(rel, 0)
            tmp = root / f".set.{k:03d}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            n = len(frames)
            np.save(tmp / "box.npy", np.stack([f["cell"] for f in frames]).reshape(n, 9))
            np.save(tmp / "coord.npy", np.stack([f["pos"] for f in frames]).reshape(n, -1))
            np.save(tmp / "energy.npy", np.array([f["energy"] for f in frames]))
            np.save(tmp / "force.npy", np.stack([f["forces"] for f in frames]).reshape(n, -1))
            if all(f["virial"] is not None for f in frames):
                np.save(tmp / "virial.npy", np.stack([f["virial"] for f in frames]).reshape(n, 9))
            os.replace(tmp, root / f"set.{k:03d}")
            self.state["sets"][rel] = k + 1
            self.state["frames"][rel] = self.state["frames"].get(rel, 0) + n
        self.buffer = {}
        self._checkpoint()

    def _checkpoint(self):
        k = self.state["checkpoint"] + 1
        name = f"state-{k}.npz"
        np.savez(self.out / name, positions=self.atoms.get_positions(), momenta=self.atoms.get_momenta(),
                 cell=self.atoms.cell[:], numbers=self.atoms.numbers)
        old = self.state.get("state_file")
        self.state.update(checkpoint=k, state_file=name, rng=self.rng.bit_generator.state,
                          fingerprint=self.cfg.fingerprint())
        _write_json(self.out / "state.json", self.state)
        if old and old != name:
            (self.out / old).unlink(missing_ok=True)
        _write_json(self.out / "provenance.json", self.provenance())

    # -- MD

    def _label(self, where: str) -> dict:
        a = self.atoms
        e = float(a.get_potential_energy())
        # The teacher's forces, not the MD's: FixCom would remove their sum.
        f = np.array(a.get_forces(apply_constraint=False), dtype=np.float64)
        if not (math.isfinite(e) and np.isfinite(f).all()):
            raise MeltQuenchError(f"{where}: the teacher returned a non-finite energy or force")
        big = np.abs(f).max(axis=1)
        if big.max() > self.p.max_force:
            k = int(big.argmax())
            raise MeltQuenchError(f"{where}: force {big[k]:.1f} eV/Å on atom {k} ({a[k].symbol}) exceeds "
                                  f"max_force {self.p.max_force} eV/Å: the run has blown up (timestep too "
                                  f"long, temperature too high for the teacher, or atoms overlapping)")
        virial = None
        if "stress" in getattr(a.calc, "implemented_properties", ()):
            virial = -a.get_stress(voigt=False) * a.get_volume()
        return {"cell": a.cell[:].copy(), "pos": a.get_positions(wrap=True), "energy": e, "forces": f,
                "virial": virial}

    def run(self) -> dict:
        from ase import units
        from ase.constraints import FixCom
        from ase.md.langevin import Langevin
        from ase.md.velocitydistribution import Stationary, thermalize_momenta
        self.atoms.calc = self.teacher.calculator
        resumed = self._resume()
        if self.state.get("done"):
            self.log(f"{self.out}: already complete ({sum(self.state['frames'].values())} frames)")
            return self.provenance()
        if not resumed:
            thermalize_momenta(self.atoms, temperature_K=self.p.stages[0].target(0), rng=self.rng)
            Stationary(self.atoms)
            self._checkpoint()
        else:
            self.log(f"resuming {self.out} at stage {self.state['stage']} step {self.state['step']}")
        # The centre of mass stays put (FixCom; Langevin's own fixcm is deprecated as not quite NVT).
        self.atoms.set_constraint(FixCom())
        dyn = Langevin(self.atoms, timestep=self.p.timestep_fs * units.fs,
                       temperature_K=self.p.stages[0].t_start, friction=self.p.friction_per_fs / units.fs,
                       rng=self.rng, fixcm=False)
        done_steps = sum(s.steps for s in self.p.stages[:self.state["stage"]]) + self.state["step"]
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=self.p.total_steps, initial=done_steps, unit="step", desc="melt-quench",
                       mininterval=2.0)
        buffered = 0
        try:
            for si in range(self.state["stage"], len(self.p.stages)):
                stage, st = self.p.stages[si], self.state["stages"][si]
                self._prev_forces = None
                while self.state["step"] < stage.steps:
                    step = self.state["step"]
                    n = min(self.p.sample_every, stage.steps - step)
                    target = stage.target(step + n - 1)
                    dyn.set_temperature(temperature_K=target)
                    t0 = time.perf_counter()
                    dyn.run(n)
                    self.state["step"] = step + n
                    st["steps_done"] += n
                    frame = self._label(f"stage {si} ({stage.folder}), step {step + n}")
                    dt = time.perf_counter() - t0
                    st["seconds"] += dt
                    self.state["seconds"] += dt
                    st["t_sum"] += float(self.atoms.get_temperature())
                    st["t_n"] += 1
                    if self._prev_forces is not None:
                        a, b = self._prev_forces.ravel(), frame["forces"].ravel()
                        st["cos_sum"] += float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))
                        st["cos_n"] += 1
                    self._prev_forces = frame["forces"]
                    if n == self.p.sample_every:  # a stage's short last chunk is not a full interval
                        self.buffer.setdefault(self._system(stage, target), []).append(frame)
                        buffered += 1
                    if bar is not None:
                        bar.update(n)
                        bar.set_postfix(stage=stage.folder, T=f"{self.atoms.get_temperature():.0f}K")
                    if buffered >= self.p.checkpoint_every:
                        self._flush()
                        buffered = 0
                self.state["stage"], self.state["step"] = si + 1, 0
                self._flush()
                buffered = 0
        except KeyboardInterrupt:
            self.log(f"\ninterrupted: the dataset in {self.out} resumes from its last checkpoint "
                     f"(stage {self.state['stage']}, step {self.state['step']} minus the unsaved frames); "
                     f"run the same command again")
            raise
        finally:
            if bar is not None:
                bar.close()
        self.state["done"] = True
        self._checkpoint()
        return self.provenance()

    # -- report

    def provenance(self) -> dict:
        a = self.atoms
        stages = []
        for s, st in zip(self.p.stages, self.state["stages"]):
            stages.append({"folder": s.folder, "T_start_K": s.t_start, "T_end_K": s.t_end, "steps": s.steps,
                           "steps_done": st["steps_done"],
                           "seconds_per_step": st["seconds"] / st["steps_done"] if st["steps_done"] else None,
                           "mean_T_K": st["t_sum"] / st["t_n"] if st["t_n"] else None,
                           "force_cosine_consecutive_frames": st["cos_sum"] / st["cos_n"] if st["cos_n"] else None})
        symbols = a.get_chemical_symbols()
        return {"format": FORMAT, "version": VERSION, "complete": bool(self.state.get("done")),
                "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "teacher": {"spec": self.teacher.spec, **self.teacher.provenance},
                "labels": "teacher potential (not DFT)",
                "seed": self.cfg.seed, "config": self.cfg.source, "config_fingerprint": self.cfg.fingerprint(),
                "dpfpga_commit": _git_commit(),
                "structure": {"natoms": len(a), "formula": a.get_chemical_formula(),
                              "counts": {el: symbols.count(el) for el in self.type_map},
                              "type_map": self.type_map, "volume_A3": float(a.get_volume()),
                              "volume_per_atom_A3": float(a.get_volume() / len(a)),
                              "density_g_cm3": float(a.get_masses().sum() / a.get_volume() * 1.66053907)},
                "protocol": {"timestep_fs": self.p.timestep_fs, "friction_per_fs": self.p.friction_per_fs,
                             "thermostat": "Langevin NVT (ase.md.langevin), target T ramped linearly per stage",
                             "sample_every": self.p.sample_every, "bin_K": self.p.bin_K,
                             "total_steps": self.p.total_steps,
                             "simulated_ps": self.p.total_steps * self.p.timestep_fs / 1000},
                "stages": stages,
                "frames": dict(sorted(self.state["frames"].items())),
                "total_frames": sum(self.state["frames"].values()),
                "seconds": self.state["seconds"]}


# ---- teacher vs student ----------------------------------------------------------------------------

def hold_systems(root: str | Path) -> list[str]:
    """The systems of a dataset that are thermostat holds worth comparing: the hottest folder of each
    melt stage (the liquid) and the coldest of each quench stage (the glass), as `stage/temp-TK`."""
    from .phases import parse_folders
    root = Path(root)
    by_stage: dict[str, list[tuple[int, str]]] = {}
    for d in sorted(root.glob("*/temp-*K")):
        _, stage, t = parse_folders(d)
        if stage and t is not None:
            by_stage.setdefault(stage, []).append((t, f"{d.parent.name}/{d.name}"))
    out = []
    for stage, items in sorted(by_stage.items()):
        if "-melt" in stage:
            out.append(max(items)[1])
        elif "-quench" in stage:
            out.append(min(items)[1])
    return out


def compare_structures(teacher_dir: str | Path, student_dir: str | Path, prefix: str | Path,
                       systems: list[str] | None = None, rmax: float = 8.0, nbins: int = 160,
                       skip: int = 0) -> dict:
    """g(r) (total, partials) of the student's MD against the teacher's, system by system (the same
    protocol run twice: `python -m science data melt-quench ... --teacher dpfpga:MODEL.npz`).

    Writes PREFIX-<stage>-<temp>.png (student solid, teacher dashed) and PREFIX.json: per system and
    curve the first peaks, the peak shift (student - teacher) and ∫|Δg| dr over 2-8 Å.
    """
    from . import analysis as an
    from model.data import load_deepmd
    teacher_dir, student_dir, prefix = Path(teacher_dir), Path(student_dir), Path(prefix)
    systems = systems or [s for s in hold_systems(teacher_dir) if (student_dir / s).is_dir()]
    if not systems:
        raise MeltQuenchError(f"no system folders common to {teacher_dir} and {student_dir} to compare")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    report = {"teacher": str(teacher_dir), "student": str(student_dir), "systems": {}}
    for name in systems:
        curves = {}
        for who, root in (("teacher", teacher_dir), ("student", student_dir)):
            if not (root / name).is_dir():
                raise MeltQuenchError(f"{root / name} does not exist")
            system = load_deepmd(root / name)
            curves[who] = an.rdf(an.frames_from_system(system, skip=skip), rmax=rmax, nbins=nbins)
        ref = an.reference_from_rdf(curves["teacher"], teacher_dir / name)
        metrics = an.compare_rdf(curves["student"], ref)
        png = prefix.parent / f"{prefix.name}-{name.replace('/', '-')}.png"
        an.plot_rdf(png, curves["student"], ref, title=f"{name}: student vs teacher",
                    label="student (quantized)", reference_label=f"teacher ({curves['teacher'].nframes} frames)")
        report["systems"][name] = {"frames": {k: v.nframes for k, v in curves.items()}, "rdf": metrics,
                                   "figure": str(png)}
    _write_json(prefix.parent / f"{prefix.name}.json", report)
    return report
