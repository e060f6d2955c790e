"""Dataset I/O for a DeePMD-style potential trainer.

The unit of data is a :class:`System`: a block of frames that share one atom
list (same atom count, same type of every atom, same order).  That is exactly
what a DeePMD-kit ``npy`` system directory holds, and it is what a trainer
wants, because every frame of a system can be batched into one tensor.

Reading and writing
    * :func:`load_deepmd` / :func:`write_deepmd`: the DeePMD-kit ``npy``
      layout (``type.raw``, ``type_map.raw``, ``set.*/{box,coord,energy,
      force,virial}.npy``, optional ``nopbc`` marker file).
    * :func:`load_ase`: any file ASE can read (extxyz, VASP OUTCAR, ...);
      frames are grouped into systems by their chemical symbol sequence.
    * :func:`find_systems` / :func:`load_systems`: walk directory trees and
      mixed lists of paths, as a training input file lists them.

Using
    * :func:`split_frames`: a deterministic train/validation split by frame.
    * :func:`dataset_summary`: counts and label statistics, JSON-ready.

Units and conventions (DeePMD-kit's): lengths in Å, energies in eV, forces in
eV/Å, virials in eV.  Cells are stored as rows (``cells[f, i]`` is cell vector
``i`` of frame ``f``), so Cartesian = fractional @ cell.  The DeePMD virial is
``-stress * volume``, with the ASE sign convention for the stress.

Every loader validates what it returns and raises :class:`DataError` (a
``ValueError``) whose message names the system or file and the problem, so a
bad dataset fails at load time with a readable message instead of as a shape
error deep inside training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "System",
    "load_deepmd",
    "write_deepmd",
    "find_systems",
    "load_systems",
    "load_ase",
    "split_frames",
    "dataset_summary",
]


class DataError(ValueError):
    """A dataset is missing, malformed or inconsistent.

    The message always names the system (or file) and the problem.
    """


# ---------------------------------------------------------------------------
# The in-memory system
# ---------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)  # eq=False: `==` on arrays is ambiguous
class System:
    """A set of frames with one fixed atom list.

    Attributes:
        name: where the data came from (a directory, or ``"file.xyz[k]"``);
            used in every error message.
        type_map: element symbols; ``type_map[t]`` is the name of type id ``t``.
        types: ``(nat,)`` int64 type id of every atom.
        coords: ``(nf, nat, 3)`` float64 Cartesian positions, Å.
        cells: ``(nf, 3, 3)`` float64 cell, one cell vector per row, Å.
        pbc: periodic in all three directions (DeePMD has no partial PBC).
        energies: ``(nf,)`` float64 total energies, eV, or None.
        forces: ``(nf, nat, 3)`` float64, eV/Å, or None.
        virials: ``(nf, 3, 3)`` float64, eV (DeePMD convention), or None.
    """

    name: str
    type_map: list[str]
    types: np.ndarray
    coords: np.ndarray
    cells: np.ndarray
    pbc: bool = True
    energies: np.ndarray | None = None
    forces: np.ndarray | None = None
    virials: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Normalise dtypes once here so that every consumer can rely on them
        # (float32 input would otherwise leak into training and into
        # round-trips).  Shapes are checked by validate(), which the loaders
        # call; constructing a System by hand does not validate implicitly so
        # that intermediate objects (e.g. an empty subset) stay possible.
        self.name = str(self.name)
        self.type_map = [str(t) for t in self.type_map]
        self.types = np.asarray(self.types, dtype=np.int64)
        self.coords = np.asarray(self.coords, dtype=np.float64)
        self.cells = np.asarray(self.cells, dtype=np.float64)
        self.pbc = bool(self.pbc)
        for field in ("energies", "forces", "virials"):
            value = getattr(self, field)
            if value is not None:
                setattr(self, field, np.asarray(value, dtype=np.float64))

    # -- basic properties ---------------------------------------------------

    @property
    def nframes(self) -> int:
        return int(self.coords.shape[0])

    @property
    def natoms(self) -> int:
        return int(self.types.shape[0])

    def __repr__(self) -> str:  # the dataclass repr would print whole arrays
        labels = [f for f in ("energies", "forces", "virials") if getattr(self, f) is not None]
        return (
            f"System(name={self.name!r}, nframes={self.nframes}, natoms={self.natoms}, "
            f"type_map={self.type_map}, pbc={self.pbc}, labels={labels})"
        )

    # -- checks -------------------------------------------------------------

    def validate(self) -> System:
        """Check shapes, dtypes, type ids and finiteness; return self.

        Raises:
            DataError: naming this system and the first problem found.
        """

        def fail(problem: str) -> None:
            raise DataError(f"system {self.name!r}: {problem}")

        if self.types.ndim != 1:
            fail(f"types must have shape (nat,), got {self.types.shape}")
        nat = self.natoms
        if nat == 0:
            fail("has no atoms")
        if len(set(self.type_map)) != len(self.type_map):
            fail(f"type_map has duplicate names: {self.type_map}")
        if self.types.min() < 0 or self.types.max() >= len(self.type_map):
            fail(
                f"type ids must lie in [0, {len(self.type_map)}) for type_map "
                f"{self.type_map}, got range [{self.types.min()}, {self.types.max()}]"
            )
        if self.coords.ndim != 3 or self.coords.shape[1:] != (nat, 3):
            fail(f"coords must have shape (nf, {nat}, 3), got {self.coords.shape}")
        nf = self.nframes
        if nf == 0:
            fail("has no frames")

        expected = {
            "cells": (nf, 3, 3),
            "energies": (nf,),
            "forces": (nf, nat, 3),
            "virials": (nf, 3, 3),
        }
        for field, shape in expected.items():
            value = getattr(self, field)
            if value is not None and value.shape != shape:
                fail(f"{field} must have shape {shape}, got {value.shape}")

        for field in ("coords", "cells", "energies", "forces", "virials"):
            value = getattr(self, field)
            if value is not None and not np.all(np.isfinite(value)):
                bad = np.unique(np.nonzero(~np.isfinite(value.reshape(nf, -1)))[0])
                fail(f"{field} has non-finite values in frame(s) {bad[:10].tolist()}")

        if self.pbc:
            # A singular cell cannot be wrapped into and breaks every
            # neighbour search; catch it here rather than as a NaN later.
            volumes = np.abs(np.linalg.det(self.cells))
            if np.any(volumes < 1e-6):
                bad = np.nonzero(volumes < 1e-6)[0]
                fail(f"periodic system has a degenerate cell (volume ~ 0) in frame(s) {bad[:10].tolist()}")
        return self

    # -- derived views --------------------------------------------------------

    def subset(self, frame_indices: Sequence[int] | np.ndarray) -> System:
        """A new System holding the given frames (copies; order as given).

        ``frame_indices`` may be integers or a boolean mask over frames.
        """
        idx = np.asarray(frame_indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx].copy()

        return System(
            name=self.name,
            type_map=list(self.type_map),
            types=self.types.copy(),
            coords=take(self.coords),
            cells=take(self.cells),
            pbc=self.pbc,
            energies=take(self.energies),
            forces=take(self.forces),
            virials=take(self.virials),
        )

    def wrapped_coords(self) -> np.ndarray:
        """Coordinates wrapped into the cell: fractional coordinates mod 1.

        Some data sets (e.g. the 216-atom GeTe AIMD set) store unwrapped
        trajectories.  DeePMD-kit wraps internally, but our own neighbour
        search assumes atoms inside the cell.  A non-periodic system is
        returned unchanged (as a copy).
        """
        if not self.pbc:
            return self.coords.copy()
        frac = np.matmul(self.coords, np.linalg.inv(self.cells))
        frac -= np.floor(frac)
        # x - floor(x) can round up to exactly 1.0 for x = -1e-17; fold it
        # back so the result is strictly inside [0, 1).
        frac[frac >= 1.0] = 0.0
        return np.matmul(frac, self.cells)

    def to_atoms(self, frame: int):
        """Frame ``frame`` as an :class:`ase.Atoms`.

        When labels are present they are attached through a
        SinglePointCalculator, so ``get_potential_energy()``, ``get_forces()``
        and ``get_stress()`` work on the result and ASE writers store them.
        """
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.data import atomic_numbers
        from ase.stress import full_3x3_to_voigt_6_stress

        unknown = sorted({self.type_map[t] for t in self.types} - set(atomic_numbers))
        if unknown:
            raise DataError(
                f"system {self.name!r}: type names {unknown} are not chemical symbols; "
                f"use remap_types() or provide a type_map.raw to convert to ase.Atoms"
            )
        atoms = Atoms(
            symbols=[self.type_map[t] for t in self.types],
            positions=self.coords[frame],
            cell=self.cells[frame],
            pbc=self.pbc,
        )
        results = {}
        if self.energies is not None:
            results["energy"] = float(self.energies[frame])
        if self.forces is not None:
            results["forces"] = self.forces[frame].copy()
        if self.virials is not None and self.pbc:
            # Inverse of the conversion in load_ase: stress = -virial / V.
            # Voigt form, because ASE warns when handed a 3x3 stress.
            stress = -self.virials[frame] / abs(np.linalg.det(self.cells[frame]))
            results["stress"] = full_3x3_to_voigt_6_stress(stress)
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    def remap_types(self, type_map: Sequence[str]) -> System:
        """Re-index the atom types to a model's ``type_map``.

        Data sets number their types independently (and a model may know more
        elements than one data set contains), so before training every system
        must use the model's numbering.  Only elements that actually occur in
        this system must be in ``type_map``; unused names in the system's own
        map are ignored, as DeePMD-kit does.

        Raises:
            DataError: an element of this system is not in ``type_map``
                (the message names the element and the system), or
                ``type_map`` has duplicates.

        The returned System shares the frame arrays with this one (only
        ``types`` and ``type_map`` are new); treat loaded arrays as read-only.
        """
        target = [str(t) for t in type_map]
        if len(set(target)) != len(target):
            raise DataError(f"target type_map has duplicate names: {target}")
        index = {name: i for i, name in enumerate(target)}
        used = np.unique(self.types)
        missing = [self.type_map[t] for t in used if self.type_map[t] not in index]
        if missing:
            raise DataError(
                f"system {self.name!r}: element(s) {missing} not in the target "
                f"type_map {target}"
            )
        lookup = np.full(len(self.type_map), -1, dtype=np.int64)
        for t in used:
            lookup[t] = index[self.type_map[t]]
        return dataclasses.replace(self, type_map=target, types=lookup[self.types])


# ---------------------------------------------------------------------------
# DeePMD npy format
# ---------------------------------------------------------------------------

# npy file stem -> (System field, per-frame shape as a function of nat).
# Order matters only for readability of the written sets.
_SET_FILES = {
    "box": ("cells", lambda nat: (3, 3)),
    "coord": ("coords", lambda nat: (nat, 3)),
    "energy": ("energies", lambda nat: ()),
    "force": ("forces", lambda nat: (nat, 3)),
    "virial": ("virials", lambda nat: (3, 3)),
}


def _read_npy(path: Path) -> np.ndarray:
    """np.load with errors turned into DataError naming the file."""
    if not path.is_file():
        raise DataError(f"missing file {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        # A truncated npy surfaces as "cannot reshape array of size ..." or
        # an EOF; neither mentions which file, so say it here.
        raise DataError(f"cannot read {path} (truncated or not a .npy file?): {exc}") from exc
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path} holds {array.dtype} data, expected numbers")
    return array


def _frames_from(path: Path, array: np.ndarray, nframes: int, frame_shape: tuple[int, ...]) -> np.ndarray:
    """Reshape a DeePMD array to ``(nframes, *frame_shape)`` float64.

    DeePMD stores per-frame data flattened, e.g. coord as (nf, 3*nat) and box
    as (nf, 9); a single frame may also be stored 1-D.  Anything whose size
    or leading dimension does not match is an error that states the expected
    and actual shapes.
    """
    per_frame = int(np.prod(frame_shape, dtype=np.int64))
    leading_ok = array.shape[0] == nframes if array.ndim >= 1 else False
    if array.ndim == 1 and nframes == 1:
        leading_ok = True  # a one-frame file written without the frame axis
    if array.size != nframes * per_frame or not leading_ok:
        expected = (nframes,) if per_frame == 1 and not frame_shape else (nframes, per_frame)
        raise DataError(
            f"{path} has shape {array.shape}, expected {expected} "
            f"({nframes} frame(s) from coord.npy, {per_frame} value(s) per frame)"
        )
    out = array.astype(np.float64).reshape((nframes, *frame_shape))
    if not np.all(np.isfinite(out)):
        bad = np.unique(np.nonzero(~np.isfinite(out.reshape(nframes, -1)))[0])
        raise DataError(f"{path} has non-finite values in frame(s) {bad[:10].tolist()}")
    return out


def _read_raw_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_deepmd(path: str | Path) -> System:
    """Read one DeePMD-kit ``npy`` system directory.

    Layout::

        type.raw            one integer type id per atom (whitespace separated)
        type_map.raw        optional: one name per line (else "type0", "type1", ...)
        nopbc               optional marker: the system is not periodic
        set.*/box.npy       (nf, 9)        cell rows, Å (optional only with nopbc)
        set.*/coord.npy     (nf, 3*nat)    Å
        set.*/energy.npy    (nf,)          eV       optional
        set.*/force.npy     (nf, 3*nat)    eV/Å     optional
        set.*/virial.npy    (nf, 9)        eV       optional

    All ``set.*`` directories are read in sorted order and concatenated.  An
    optional label must be present in every set or in none; a partial label
    would silently weight some frames differently, so it is an error.
    float32 files are converted to float64.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"DeePMD system {root} is not a directory")

    type_file = root / "type.raw"
    if not type_file.is_file():
        raise DataError(f"missing file {type_file} (not a DeePMD system directory?)")
    try:
        types = np.loadtxt(type_file, dtype=np.int64, ndmin=1)
    except ValueError as exc:
        raise DataError(f"cannot parse {type_file}: {exc}") from exc
    if types.ndim != 1 or types.size == 0:
        raise DataError(f"{type_file} must hold one integer per atom, got shape {types.shape}")
    if types.min() < 0:
        raise DataError(f"{type_file} has negative type ids")
    nat = int(types.size)

    map_file = root / "type_map.raw"
    if map_file.is_file():
        type_map = _read_raw_lines(map_file)
        if types.max() >= len(type_map):
            raise DataError(
                f"{type_file} uses type id {types.max()} but {map_file} names only "
                f"{len(type_map)} type(s): {type_map}"
            )
    else:
        type_map = [f"type{i}" for i in range(int(types.max()) + 1)]

    pbc = not (root / "nopbc").exists()

    set_dirs = sorted(p for p in root.glob("set.*") if p.is_dir())
    if not set_dirs:
        raise DataError(f"DeePMD system {root} has no set.* directories")

    # Read every set; keep per-field lists of per-set arrays.
    per_set: dict[str, list[np.ndarray | None]] = {field: [] for field, _ in _SET_FILES.values()}
    for set_dir in set_dirs:
        if (set_dir / "real_atom_types.npy").exists():
            raise DataError(f"{set_dir}: DeePMD mixed-type sets (real_atom_types.npy) are not supported")
        coord_raw = _read_npy(set_dir / "coord.npy")
        # DeePMD's own rule: the leading axis of coord.npy is the frame axis.
        nframes = coord_raw.shape[0] if coord_raw.ndim > 1 else 1
        for stem, (field, frame_shape) in _SET_FILES.items():
            file = set_dir / f"{stem}.npy"
            if stem == "coord":
                raw = coord_raw
            elif file.is_file():
                raw = _read_npy(file)
            elif stem == "box" and pbc:
                raise DataError(f"missing file {file} (required for a periodic system)")
            else:
                per_set[field].append(None)
                continue
            per_set[field].append(_frames_from(file, raw, nframes, frame_shape(nat)))
        if per_set["cells"][-1] is None:  # nopbc without box.npy
            per_set["cells"][-1] = np.zeros((nframes, 3, 3))

    arrays: dict[str, np.ndarray | None] = {}
    for stem, (field, _) in _SET_FILES.items():
        chunks = per_set[field]
        present = [c is not None for c in chunks]
        if all(present):
            arrays[field] = np.concatenate(chunks, axis=0)
        elif not any(present):
            arrays[field] = None
        else:
            have = [d.name for d, p in zip(set_dirs, present) if p]
            lack = [d.name for d, p in zip(set_dirs, present) if not p]
            raise DataError(
                f"DeePMD system {root}: {stem}.npy is present in {have} but missing in {lack}"
            )

    return System(name=str(root), type_map=type_map, types=types, pbc=pbc, **arrays).validate()


def write_deepmd(
    system: System,
    path: str | Path,
    set_size: int | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``system`` as a DeePMD-kit ``npy`` system directory; return its path.

    Frames go to ``set.000``, ``set.001``, ... with at most ``set_size``
    frames each (all in ``set.000`` when None).  Arrays are float64 in the
    standard flat layout, so ``load_deepmd`` gives back the identical arrays.
    A ``nopbc`` marker is written for a non-periodic system.

    An existing system at ``path`` is refused unless ``overwrite`` is True,
    because a stale ``set.*`` left behind by a larger earlier write would be
    silently merged into the data on the next load.  With ``overwrite`` only
    the files this function writes (``type*.raw``, ``nopbc``, ``set.*``) are
    removed.
    """
    import shutil

    system.validate()
    if set_size is not None and set_size < 1:
        raise ValueError(f"set_size must be >= 1 or None, got {set_size}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)

    ours = ("type.raw", "type_map.raw", "nopbc")
    old = sorted(p for p in root.iterdir() if p.name in ours or p.name.startswith("set."))
    if old and not overwrite:
        raise FileExistsError(
            f"{root} already holds a DeePMD system ({', '.join(p.name for p in old)}); "
            f"pass overwrite=True to replace it"
        )
    for p in old:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()

    (root / "type.raw").write_text("".join(f"{t}\n" for t in system.types))
    (root / "type_map.raw").write_text("".join(f"{name}\n" for name in system.type_map))
    if not system.pbc:
        (root / "nopbc").write_text("")

    nf = system.nframes
    step = nf if set_size is None else set_size
    for k, start in enumerate(range(0, nf, step)):
        stop = min(start + step, nf)
        set_dir = root / f"set.{k:03d}"
        set_dir.mkdir()
        for stem, (field, _) in _SET_FILES.items():
            value = getattr(system, field)
            if value is None:
                continue
            block = value[start:stop]
            flat = block.reshape(stop - start) if stem == "energy" else block.reshape(stop - start, -1)
            np.save(set_dir / f"{stem}.npy", np.ascontiguousarray(flat, dtype=np.float64))
    return root


# ---------------------------------------------------------------------------
# Finding and loading many systems
# ---------------------------------------------------------------------------


def find_systems(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (itself included) that holds ``type.raw``, sorted."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob("type.raw") if p.is_file())


def load_systems(
    paths_or_roots: str | Path | Iterable[str | Path],
    type_map: Sequence[str] | None = None,
) -> list[System]:
    """Load systems from one path or a list of paths.

    Each path may be
      * a DeePMD system directory (holds ``type.raw``): loaded directly;
      * any other directory: searched recursively with :func:`find_systems`;
      * a file: read with ASE via :func:`load_ase`.

    If ``type_map`` is given (a model's type map), every system is remapped to
    it, so that all returned systems share one numbering.

    Raises:
        DataError: a path does not exist, or nothing was found at all.
    """
    if isinstance(paths_or_roots, (str, Path)):
        paths_or_roots = [paths_or_roots]
    systems: list[System] = []
    for entry in paths_or_roots:
        p = Path(entry)
        if p.is_dir():
            dirs = [p] if (p / "type.raw").is_file() else find_systems(p)
            if not dirs:
                raise DataError(f"no DeePMD systems (directories with type.raw) under {p}")
            found = [load_deepmd(d) for d in dirs]
        elif p.is_file():
            found = load_ase(p, type_map=type_map)
        else:
            raise DataError(f"data path {p} does not exist")
        if type_map is not None:
            found = [s.remap_types(type_map) for s in found]
        systems.extend(found)
    if not systems:
        raise DataError(f"no systems found in {paths_or_roots!r}")
    return systems


# ---------------------------------------------------------------------------
# ASE-readable files
# ---------------------------------------------------------------------------


def load_ase(
    path: str | Path,
    index: str | int | slice = ":",
    type_map: Sequence[str] | None = None,
) -> list[System]:
    """Read any ASE-readable file (extxyz, OUTCAR, ...) into Systems.

    Frames with the same chemical symbol sequence (and periodicity) form one
    System, named ``f"{file stem}[{k}]"`` with ``k`` counting groups in order
    of first appearance.  Labels come from the calculator results attached by
    the ASE reader: energy, forces, and stress converted to the DeePMD virial
    ``-stress * volume`` (eV; ASE's stress is eV/Å^3, 3x3 or Voigt).

    ``type_map`` defaults to the sorted unique symbols of the whole file, so
    every group of one file shares the numbering.

    Raises:
        DataError: unreadable file, no frames, partial periodicity, a label
            present in some frames but not others, or an element missing from
            the given ``type_map``.
    """
    import ase.io

    path = Path(path)
    try:
        frames = ase.io.read(path, index=index)
    except Exception as exc:  # ASE raises many types; all mean "unreadable"
        raise DataError(f"cannot read {path} with ASE: {exc}") from exc
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise DataError(f"{path}: no frames read (index={index!r})")

    def result(atoms, key: str):
        calc = atoms.calc
        return None if calc is None else calc.results.get(key)

    # One label must be in all frames or none: a partial label would make the
    # loss silently skip some frames.
    has = {}
    for key in ("energy", "forces", "stress"):
        flags = [result(a, key) is not None for a in frames]
        if any(flags) and not all(flags):
            missing = [i for i, f in enumerate(flags) if not f]
            raise DataError(
                f"{path}: {key} is present in some frames but missing in frame(s) {missing[:10]}"
            )
        has[key] = all(flags)

    symbols_all = sorted({s for a in frames for s in a.get_chemical_symbols()})
    if type_map is None:
        type_map = symbols_all
    type_map = [str(t) for t in type_map]
    unknown = [s for s in symbols_all if s not in type_map]
    if unknown:
        raise DataError(f"{path}: element(s) {unknown} not in type_map {type_map}")
    type_index = {name: i for i, name in enumerate(type_map)}

    # Group frames by (symbol sequence, pbc), keeping first-appearance order.
    groups: dict[tuple, list[int]] = {}
    for i, atoms in enumerate(frames):
        pbc = atoms.pbc
        if pbc.any() and not pbc.all():
            raise DataError(
                f"{path}: frame {i} has partial periodicity pbc={pbc.tolist()}; "
                f"the DeePMD format supports only fully periodic or non-periodic frames"
            )
        key = (tuple(atoms.get_chemical_symbols()), bool(pbc.all()))
        groups.setdefault(key, []).append(i)

    systems = []
    for k, ((symbols, pbc), idx) in enumerate(groups.items()):
        sel = [frames[i] for i in idx]
        virials = None
        if has["stress"]:
            # get_stress(voigt=False) accepts both 6-vector and 3x3 results.
            virials = np.stack([-a.get_stress(voigt=False) * a.get_volume() for a in sel])
        system = System(
            name=f"{path.stem}[{k}]",
            type_map=list(type_map),
            types=[type_index[s] for s in symbols],
            coords=np.stack([a.get_positions() for a in sel]),
            cells=np.stack([a.cell.array for a in sel]),
            pbc=pbc,
            energies=np.array([a.get_potential_energy() for a in sel]) if has["energy"] else None,
            forces=np.stack([a.get_forces() for a in sel]) if has["forces"] else None,
            virials=virials,
        )
        systems.append(system.validate())
    return systems


# ---------------------------------------------------------------------------
# Splitting and summarising
# ---------------------------------------------------------------------------


def split_indices(
    systems: Sequence[System],
    valid_fraction: float = 0.4,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The frame numbers `split_frames` puts on each side: one ``(train, valid)`` pair of sorted index
    arrays per system, in system order (so a caller can name the frames it evaluates)."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    rng = np.random.default_rng(seed)
    out = []
    for system in systems:
        n = system.nframes
        if n <= 1:
            out.append((np.arange(n), np.zeros(0, dtype=np.int64)))
            continue
        perm = rng.permutation(n)
        # floor(x + 0.5) instead of round(): Python rounds halves to even.
        n_valid = min(int(np.floor(n * valid_fraction + 0.5)), n - 1)
        out.append((np.sort(perm[n_valid:]), np.sort(perm[:n_valid])))
    return out


def split_frames(
    systems: Sequence[System],
    valid_fraction: float = 0.4,
    seed: int = 0,
) -> tuple[list[System], list[System]]:
    """Split every system by frame into a training and a validation part.

    Within each system, ``round(nframes * valid_fraction)`` randomly chosen
    frames go to validation and the rest to training (the NVNMD seed paper
    splits 60/40 by frame).  The permutations come from one
    ``np.random.default_rng(seed)`` drawn in system order, so the same inputs
    and seed always give the same split.  Each side keeps its frames in
    their original order.  Training never ends up empty for a system: a
    one-frame system goes entirely to training.  Systems left with no frames
    on a side are dropped from that side.  `split_indices` gives the frame
    numbers of each side.
    """
    train: list[System] = []
    valid: list[System] = []
    for system, (train_idx, valid_idx) in zip(systems, split_indices(systems, valid_fraction, seed)):
        if len(train_idx):
            train.append(system.subset(train_idx))
        if len(valid_idx):
            valid.append(system.subset(valid_idx))
    return train, valid


def dataset_summary(systems: Sequence[System]) -> dict:
    """Counts and label statistics, as plain JSON-serialisable Python types.

    Keys: ``systems``, ``frames``, ``atoms`` (atom environments = sum of
    frames x atoms), ``energy_per_atom_mean`` / ``_std`` (eV, over frames
    with energies; None if no system has them), ``force_rms`` (eV/Å, over all
    force components; None without forces), and ``per_system``: one dict per
    system with ``name``, ``frames``, ``natoms``, ``type_counts`` (element ->
    count), ``pbc``, ``labels`` and the same statistics.

    Energies of different systems may not share a DFT reference (the GeTe
    64- and 216-atom sets differ by ~0.34 eV/atom), so read the pooled
    energy statistics with care; the per-system ones are always meaningful.
    """

    def energy_stats(e_per_atom: np.ndarray | None) -> tuple[float | None, float | None]:
        if e_per_atom is None or e_per_atom.size == 0:
            return None, None
        return float(e_per_atom.mean()), float(e_per_atom.std())

    per_system = []
    all_e: list[np.ndarray] = []
    f_sq_sum, f_count = 0.0, 0
    for s in systems:
        e = None if s.energies is None else s.energies / s.natoms
        e_mean, e_std = energy_stats(e)
        f_rms = None
        if s.forces is not None and s.forces.size:
            f_rms = float(np.sqrt(np.mean(s.forces**2)))
            f_sq_sum += float(np.sum(s.forces**2))
            f_count += s.forces.size
        if e is not None:
            all_e.append(e)
        counts = np.bincount(s.types, minlength=len(s.type_map))
        per_system.append(
            {
                "name": s.name,
                "frames": s.nframes,
                "natoms": s.natoms,
                "type_counts": {s.type_map[t]: int(c) for t, c in enumerate(counts) if c},
                "pbc": s.pbc,
                "labels": [f for f in ("energies", "forces", "virials") if getattr(s, f) is not None],
                "energy_per_atom_mean": e_mean,
                "energy_per_atom_std": e_std,
                "force_rms": f_rms,
            }
        )

    e_mean, e_std = energy_stats(np.concatenate(all_e) if all_e else None)
    return {
        "systems": len(systems),
        "frames": int(sum(s.nframes for s in systems)),
        "atoms": int(sum(s.nframes * s.natoms for s in systems)),
        "energy_per_atom_mean": e_mean,
        "energy_per_atom_std": e_std,
        "force_rms": float(np.sqrt(f_sq_sum / f_count)) if f_count else None,
        "per_system": per_system,
    }
