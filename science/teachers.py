"""Teachers: the ASE calculators that label generated data when no DFT data exists.

A teacher is named by a short spec string, so that a dataset's provenance can say exactly which
potential made its labels and a config file can ask for one:

    sevenn:7net-0          SevenNet universal potential, weights shipped in the `sevenn` wheel
    sevenn:7net-l3i5       (any checkpoint name `sevenn` knows, or a path to a checkpoint file)
    mace:PATH              a MACE model file, e.g. ../shared/data/GST/GST-mace-swa.model (float64, CPU)
    lj[:SIGMA:EPSILON]     Lennard-Jones (ASE), one parameter set for every element.  A *toy* for tests
                           and dry runs of the protocol: its labels are not physics, never train on them
                           for science.
    dpfpga:MODEL.npz[@DEVICE]
                           a dpfpga model file through the host's ASE calculator (device `reference` by
                           default): not a teacher but the student, run through the same protocol so that
                           its MD can be compared with the teacher's (g(r) of the same stages).

The physics teachers are optional (`pip install -e ".[teachers]"`): the core and the default tests
never import them; asking for one that is not installed raises TeacherError naming the pip extra.
Every teacher runs on the CPU in float64 and gives energy (eV), forces (eV/Å) and stress (eV/Å^3).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

EXTRA = 'pip install -e ".[teachers]"'


class TeacherError(ValueError):
    """A teacher spec that cannot be honoured (unknown kind, missing package or model file)."""


@dataclass
class Teacher:
    """An ASE calculator and what a provenance file needs to say about it."""

    spec: str
    calculator: object
    provenance: dict = field(default_factory=dict)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _allow_slice_pickles() -> None:
    """e3nn's constants (imported by sevenn and mace) and sevenn's checkpoints pickle `slice`
    objects; torch >= 2.6 loads with weights_only by default and refuses them.  Allow exactly that
    builtin rather than turning weights_only off."""
    import torch
    torch.serialization.add_safe_globals([slice])


def make_teacher(spec: str) -> Teacher:
    """The Teacher for a spec string (module docstring); TeacherError says what is wrong."""
    kind, _, arg = spec.partition(":")
    makers = {"sevenn": _sevenn, "mace": _mace, "lj": _lj, "dpfpga": _dpfpga}
    if kind not in makers:
        raise TeacherError(f"unknown teacher {spec!r}: expected one of sevenn:NAME, mace:PATH, "
                           f"lj[:SIGMA:EPSILON], dpfpga:MODEL.npz[@DEVICE]")
    return makers[kind](spec, arg)


def _sevenn(spec: str, name: str) -> Teacher:
    if not name:
        raise TeacherError(f"teacher {spec!r}: name a SevenNet model, e.g. sevenn:7net-0")
    _allow_slice_pickles()
    try:
        from sevenn.calculator import SevenNetCalculator
    except ImportError as e:
        raise TeacherError(f"teacher {spec!r} needs the `sevenn` package ({EXTRA}): {e}") from None
    path = Path(name)
    try:
        calc = SevenNetCalculator(str(path) if path.is_file() else name, device="cpu")
    except Exception as e:  # sevenn raises plain exceptions for unknown names
        raise TeacherError(f"teacher {spec!r}: SevenNet cannot load {name!r}: {e}") from None
    prov = {"package": "sevenn", "version": _version("sevenn"), "model": name}
    if path.is_file():
        prov["model_sha256"] = _sha256(path)
    return Teacher(spec, calc, prov)


def _mace(spec: str, name: str) -> Teacher:
    path = Path(name)
    if not name or not path.is_file():
        raise TeacherError(f"teacher {spec!r}: MACE model file {name!r} not found")
    _allow_slice_pickles()
    try:
        from mace.calculators import MACECalculator
    except ImportError as e:
        raise TeacherError(f"teacher {spec!r} needs the `mace-torch` package ({EXTRA}): {e}") from None
    calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
    return Teacher(spec, calc, {"package": "mace-torch", "version": _version("mace-torch"),
                                "model": str(path), "model_sha256": _sha256(path)})


def _dpfpga(spec: str, arg: str) -> Teacher:
    name, _, device = arg.partition("@")
    path = Path(name)
    if not name or not path.is_file():
        raise TeacherError(f"teacher {spec!r}: model file {name!r} not found")
    from contract.modelfile import ModelFileError, load
    from host.ase import Calculator
    try:
        qm = load(path)
    except ModelFileError as e:
        raise TeacherError(f"teacher {spec!r}: {e}") from None
    calc = Calculator(model=str(path), device=device or "reference")
    return Teacher(spec, calc, {"package": "dpfpga", "model": str(path), "model_hash": qm.hash,
                                "device": device or "reference", "note": "the quantized student, not a teacher"})


def _lj(spec: str, arg: str) -> Teacher:
    from ase.calculators.lj import LennardJones

    class LennardJones(LennardJones):
        """ASE's LJ with its neighbour list rebuilt at every call.  The stock one keeps a list with a
        skin between calls, so the order of its pair sums (and the last bits of the labels) would
        depend on the positions it was built at: a resumed run would not repeat a straight one."""

        def calculate(self, *args, **kwargs):
            self.nl = None
            super().calculate(*args, **kwargs)

    try:
        sigma, epsilon = (float(x) for x in arg.split(":")) if arg else (2.6, 0.2)
    except ValueError:
        raise TeacherError(f"teacher {spec!r}: expected lj:SIGMA:EPSILON (Å, eV)") from None
    calc = LennardJones(sigma=sigma, epsilon=epsilon, rc=2.5 * sigma, smooth=True)
    return Teacher(spec, calc, {"package": "ase", "version": _version("ase"), "model": "LennardJones",
                                "sigma": sigma, "epsilon": epsilon, "rc": 2.5 * sigma,
                                "note": "toy teacher: not physics"})


def teacher_errors(teacher: Teacher, systems, max_frames: int | None = None, seed: int = 0) -> dict:
    """RMSE of a teacher against labelled frames (e.g. the GST DFT validation set): the teacher's own
    error, the yardstick for a student trained on its labels.

    Energies per atom, with and without the mean error removed (a teacher fitted to another DFT
    setup may sit on another energy reference); forces per component.  `max_frames`: a seeded
    random subset of all frames (model.metrics.select_frames, as `python -m model test` picks them).
    """
    import numpy as np

    from model.metrics import collect, rmse_of, select_frames
    labelled = [s for s in systems if s.energies is not None and s.forces is not None]
    if not labelled:
        raise TeacherError("no frames with energies and forces to compare with")

    def predict(system, frame):
        atoms = system.to_atoms(frame)
        atoms.calc = teacher.calculator
        # No virial: asking for stress would cost some teachers a second evaluation.
        return atoms.get_potential_energy(), np.asarray(atoms.get_forces()), np.full(9, np.nan)

    c = collect(predict, select_frames(labelled, max_frames, seed), f"teacher {teacher.spec}")
    m = rmse_of(c)
    return {"teacher": teacher.spec, **teacher.provenance, "frames": m["frames"],
            "energy_rmse_meV_per_atom": 1e3 * m["rmse_e"],
            "energy_rmse_offset_removed_meV_per_atom": 1e3 * m["rmse_e_offset_removed"],
            "energy_mean_error_meV_per_atom": 1e3 * m["mean_error_e"],
            "force_rmse_meV_per_A": 1e3 * m["rmse_f"],
            "reference_force_rms_meV_per_A": 1e3 * float(np.sqrt(np.mean(c["f_ref"] ** 2)))}
