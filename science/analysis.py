"""Structure analysis of MD trajectories: g(r), coordination numbers, ALTBC, and comparison with AIMD.

A potential is only useful if the structures it produces look like the ones DFT produces.  This module
measures the usual structural fingerprints of a trajectory (LAMMPS dump, extxyz, a DeePMD npy system:
anything :func:`read_frames` reads) and compares them with the AIMD curves of amorphous GeTe that live
in ``../shared/data/GeTe-aimd-reference`` (third-party data: read from there, never copied).

Reading
    * :func:`read_frames`: lazily yields :class:`ase.Atoms` from any ASE-readable file (LAMMPS text
      dumps with an ``element`` column included) or a DeePMD npy system, with frame selection.

Measuring (every measurement is an accumulator with ``add(atoms)`` / ``result()``, so one pass over a
long trajectory feeds all of them; :func:`rdf` and :func:`altbc` are the one-call forms)
    * :func:`rdf` / :class:`RDFAccumulator`: total and partial g(r), running coordination numbers.
    * :func:`altbc` / :class:`ALTBCAccumulator`: the angular-limited three-body correlation.

Comparing
    * :func:`load_reference`: the AIMD rdf, altbc, adf and cn curves.
    * :func:`first_peak`, :func:`curve_difference`, :func:`compare_rdf`, :func:`compare_altbc`.

Writing
    * :func:`write_rdf_csv`, :func:`write_altbc`, :func:`plot_rdf`, :func:`plot_altbc`.

Conventions.  Lengths in Å.  Cells as rows (Cartesian = fractional @ cell), periodic in all three
directions.  Neighbours are found with ``vesin`` through :func:`model.neighbors.edges`, which counts
every periodic image, so a cutoff beyond half the box (even beyond the box) is exact.  Elements are
ordered as the ``elements`` argument (a type map) gives them, else alphabetically, as
:func:`model.data.load_ase` orders them; pair names join two element names in that order
(``"Ge-Te"``, never ``"Te-Ge"``, for the g(r) partials).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.paths import shared_data
from model.neighbors import edges

__all__ = [
    "default_reference_folder",
    "read_frames",
    "frames_from_system",
    "RDF",
    "RDFAccumulator",
    "rdf",
    "ALTBC",
    "ALTBCAccumulator",
    "altbc",
    "Peak",
    "first_peak",
    "curve_difference",
    "Reference",
    "load_reference",
    "compare_rdf",
    "compare_altbc",
    "write_rdf_csv",
    "write_altbc",
    "plot_rdf",
    "plot_altbc",
]

#: Grid of the AIMD reference ALTBC (``altbc/x.txt``): 2.50 ... 4.50 Å in 0.05 Å bins.  The defaults of
#: :func:`altbc` use it so that a result can be compared with the reference bin for bin.
REFERENCE_ALTBC_RANGE = (2.5, 4.5)
REFERENCE_ALTBC_BINS = 40


def default_reference_folder() -> Path:
    """``$DPFPGA_SHARED_DATA/GeTe-aimd-reference``, else ``../shared/data/GeTe-aimd-reference`` next to
    the checkout (contract.paths.shared_data)."""
    return shared_data() / "GeTe-aimd-reference"


# ---------------------------------------------------------------------------
# Reading trajectories
# ---------------------------------------------------------------------------


def read_frames(path: str | Path, skip: int = 0, every: int = 1, type_map: Sequence[str] | None = None,
                format: str | None = None) -> Iterator:
    """Frames 'skip, skip + every, skip + 2 every, ...' of a trajectory, as an iterator of :class:`ase.Atoms`.

    ``path`` is a DeePMD npy system directory (it holds ``type.raw``) or any file ASE reads.  A LAMMPS
    text dump (``dump ID all custom N FILE id type element x y z`` with ``dump_modify ID element Ge
    Te``) is recognised by its content; ASE takes the elements from its ``element`` column, the
    periodic (also triclinic) box from its header, and sorts the atoms by ``id``.  A dump without an
    ``element`` column only has LAMMPS type numbers, which ASE would read as H, He, ...: ``type_map``
    names them (type 1 is ``type_map[0]``, ASE's ``specorder``).  For a DeePMD system without
    ``type_map.raw`` it names the type ids the same way.  ``format`` overrides ASE's guess.

    The path and arguments are checked at once; frames are read lazily, so a long trajectory never
    has to fit in memory.
    """
    from ase.io.formats import filetype, ioformats

    if skip < 0 or every < 1:
        raise ValueError(f"need skip >= 0 and every >= 1, got skip={skip}, every={every}")
    path = Path(path)
    if path.is_dir():
        from model.data import load_deepmd
        return frames_from_system(load_deepmd(path), skip, every, type_map)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory {path} does not exist")
    if format is None:
        try:
            format = filetype(str(path))
        except Exception as exc:  # ASE raises KeyError, UnknownFileTypeError, ...: all mean "unknown"
            raise ValueError(f"cannot tell the file format of {path} ({exc!r}); name it (ASE format, "
                             "e.g. lammps-dump-text, extxyz)") from exc
    if format not in ioformats:  # filetype() falls back to the extension, which may name nothing
        raise ValueError(f"{path}: {format!r} is no file format ASE reads; name one (e.g. lammps-dump-text, extxyz)")
    return _read_ase(path, skip, every, type_map, format)


def _read_ase(path: Path, skip: int, every: int, type_map: Sequence[str] | None, fmt: str) -> Iterator:
    import ase.io
    from ase.io.formats import ioformats

    kwargs = {}
    if type_map and fmt.startswith("lammps-dump"):
        kwargs["specorder"] = list(type_map)  # used by ASE only when the dump has no element column
    if ioformats[fmt].single:
        # Single-frame formats (POSCAR, ...) accept no frame slice in ase.io.iread.
        yield from itertools.islice([ase.io.read(path, format=fmt, **kwargs)], skip, None, every)
    else:
        # A slice lets ASE skip the unselected frames without building them.
        yield from ase.io.iread(path, index=slice(skip, None, every), format=fmt, **kwargs)


def frames_from_system(system, skip: int = 0, every: int = 1, type_map: Sequence[str] | None = None) -> Iterator:
    """Frames of a :class:`model.data.System` as :class:`ase.Atoms`, coordinates wrapped into the cell.

    The 216-atom GeTe AIMD set stores unwrapped coordinates (up to two boxes outside the cell); they
    are wrapped here so that whatever reads the Atoms sees ordinary periodic frames.
    """
    import dataclasses

    from ase import Atoms
    from ase.data import atomic_numbers

    names = list(system.type_map)
    if type_map is not None and not set(names) <= set(atomic_numbers):
        # A system without type_map.raw calls its types "type0", "type1": name them by index.
        if len(type_map) < len(names):
            raise ValueError(f"type_map {list(type_map)} names fewer types than {system.name!r} has ({len(names)})")
        system = dataclasses.replace(system, type_map=list(type_map)[:len(names)])
    wrapped = system.wrapped_coords()
    symbols = [system.type_map[t] for t in system.types]
    for f in range(skip, system.nframes, every):
        yield Atoms(symbols=symbols, positions=wrapped[f], cell=system.cells[f], pbc=system.pbc)


def _frame_arrays(atoms) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Positions, cell and symbols of a periodic frame; refuse frames without a volume."""
    if not all(atoms.pbc):
        raise ValueError("structure analysis needs a frame periodic in all three directions "
                         f"(got pbc={list(map(bool, atoms.pbc))}): g(r) is normalised by the cell volume")
    cell = atoms.cell.array
    if abs(np.linalg.det(cell)) < 1e-6:
        raise ValueError("frame has a degenerate cell (volume ~ 0)")
    return atoms.positions, cell, atoms.get_chemical_symbols()


def _element_order(symbols: Sequence[str], elements: Sequence[str] | None) -> list[str]:
    """The elements present in this frame, in the order of ``elements`` (else alphabetical)."""
    present = set(symbols)
    if elements is None:
        return sorted(present)
    missing = sorted(present - set(elements))
    if missing:
        raise ValueError(f"element(s) {missing} in the trajectory are not in the type map {list(elements)}")
    return [e for e in elements if e in present]


class _Composition:
    """Fixed element list and per-element atom counts, checked again on every frame.

    The partial g(r) of several frames are averaged with one set of weights, so every frame must hold
    the same number of atoms of each element (the volume may change: NPT is fine).
    """

    def __init__(self, symbols: Sequence[str], elements: Sequence[str] | None):
        self.elements = _element_order(symbols, elements)
        self.index = {e: k for k, e in enumerate(self.elements)}
        self.counts = np.bincount([self.index[s] for s in symbols], minlength=len(self.elements))

    def types_of(self, symbols: Sequence[str]) -> np.ndarray:
        try:
            types = np.array([self.index[s] for s in symbols], dtype=np.int64)
        except KeyError as err:
            raise ValueError(f"element {err.args[0]} appears in a later frame but not in the first") from None
        counts = np.bincount(types, minlength=len(self.elements))
        if not np.array_equal(counts, self.counts):
            raise ValueError(f"composition changed between frames: {self.describe(counts)} after "
                             f"{self.describe(self.counts)}; averaging g(r) needs a fixed composition")
        return types

    def describe(self, counts=None) -> dict[str, int]:
        counts = self.counts if counts is None else counts
        return {e: int(n) for e, n in zip(self.elements, counts)}


# ---------------------------------------------------------------------------
# Radial distribution functions
# ---------------------------------------------------------------------------


@dataclass
class RDF:
    """Total and partial radial distribution functions, averaged over frames.

    Normalisation (that of LAMMPS's ``compute rdf``): in each frame
    ``g_ab(r) = V / (N_a (N_b - δ_ab)) · <pairs (i in a, j in b, i ≠ j) with r_ij in the shell>
    / shell volume``, with exact shell volumes 4π/3 (r_hi³ - r_lo³).  Subtracting an atom's own
    presence makes g exactly 1 on average for an ideal gas of any size; for a crystal it makes
    g(r) of an N-atom cell N/(N-1) times that of a large one at large r.  The frame g are averaged.

    Attributes:
        r: ``(nbins,)`` bin centres.   edges: ``(nbins + 1,)`` bin edges.
        total: g(r) of all atoms regardless of element.
        partials: ``"A-B"`` -> g_AB(r) for every unordered element pair, A before B in ``elements``.
        weights: ``"A-B"`` -> w_AB with ``total == sum(w_AB * partials["A-B"])``; w_AB =
            (2 - δ_AB) N_A (N_B - δ_AB) / (N (N - 1)).
        coordination: running coordination numbers at the *upper* bin edges ``edges[1:]``:
            ``"A-B"`` -> mean number of B atoms within r of an A atom (both orders of A and B are
            present), ``"total"`` -> mean number of atoms within r of any atom.  They are counted
            directly, so they equal ∫ ρ_B g_AB 4π r² dr with ρ_B = (N_B - δ_AB) / V.
        elements, composition: element order and atoms per element.
        nframes: frames averaged.   mean_volume: mean cell volume, Å³.
    """

    r: np.ndarray
    edges: np.ndarray
    total: np.ndarray
    partials: dict[str, np.ndarray]
    weights: dict[str, float]
    coordination: dict[str, np.ndarray]
    elements: list[str]
    composition: dict[str, int]
    nframes: int
    mean_volume: float

    @property
    def rmax(self) -> float:
        return float(self.edges[-1])

    def curve(self, name: str) -> np.ndarray:
        """g(r) by name: ``"total"`` or a pair in either order (``"Te-Ge"`` finds ``"Ge-Te"``)."""
        if name == "total":
            return self.total
        a, _, b = name.partition("-")
        for key in (f"{a}-{b}", f"{b}-{a}"):
            if key in self.partials:
                return self.partials[key]
        raise KeyError(f"no g(r) named {name!r}; have total and {list(self.partials)}")

    def coordination_number(self, name: str, r: float) -> float:
        """Running coordination number ``name`` (``"Ge-Te"``: Te around Ge, or ``"total"``) at ``r``,
        linear between bin edges (pairs spread evenly within a bin); exact at an edge."""
        if name not in self.coordination:
            raise KeyError(f"no coordination number {name!r}; have {list(self.coordination)}")
        return float(np.interp(r, self.edges, np.concatenate([[0.0], self.coordination[name]])))


class RDFAccumulator:
    """Frame-by-frame accumulation of :class:`RDF` (``add`` each frame, then ``result``)."""

    def __init__(self, rmax: float = 8.0, nbins: int = 160, elements: Sequence[str] | None = None):
        if rmax <= 0 or nbins < 1:
            raise ValueError(f"need rmax > 0 and nbins >= 1, got rmax={rmax}, nbins={nbins}")
        self.rmax, self.nbins = float(rmax), int(nbins)
        self.edges = np.linspace(0.0, self.rmax, self.nbins + 1)
        self.shell = 4.0 / 3.0 * np.pi * np.diff(self.edges ** 3)
        self.requested_elements = None if elements is None else list(elements)
        self.composition: _Composition | None = None
        self.pair_counts = None  # (ne, ne, nbins) ordered pair counts summed over frames
        self.g_sum = None  # (ne, ne, nbins) per-frame g of ordered element pairs, summed over frames
        self.total_sum = np.zeros(self.nbins)  # per-frame total g, summed over frames
        self.nframes = 0
        self.volume_sum = 0.0

    def add(self, atoms) -> None:
        positions, cell, symbols = _frame_arrays(atoms)
        if len(symbols) < 2:
            raise ValueError("g(r) needs at least two atoms per frame")
        if self.composition is None:
            self.composition = _Composition(symbols, self.requested_elements)
            ne = len(self.composition.elements)
            self.pair_counts = np.zeros((ne, ne, self.nbins))
            self.g_sum = np.zeros((ne, ne, self.nbins))
        types = self.composition.types_of(symbols)
        ne = len(self.composition.elements)
        e = edges(positions, cell, True, self.rmax)
        d = np.sqrt(np.einsum("ij,ij->i", e.vec, e.vec))
        bins = np.minimum((d * (self.nbins / self.rmax)).astype(np.int64), self.nbins - 1)
        code = (types[e.i] * ne + types[e.j]) * self.nbins + bins
        counts = np.bincount(code, minlength=ne * ne * self.nbins).reshape(ne, ne, self.nbins)
        volume = abs(np.linalg.det(cell))
        n = self.composition.counts.astype(np.float64)
        pairs = n[:, None] * (n[None, :] - np.eye(ne))  # N_a (N_b - δ_ab): ordered pairs of distinct atoms
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(pairs[:, :, None] > 0, counts * volume / (pairs[:, :, None] * self.shell), 0.0)
        self.pair_counts += counts
        self.g_sum += g
        # The total straight from all pairs, not as the weighted sum of partials, so that the
        # identity total = sum(w * partials) is something a test can check.
        ntot = n.sum()
        self.total_sum += counts.sum(axis=(0, 1)) * volume / (ntot * (ntot - 1) * self.shell)
        self.nframes += 1
        self.volume_sum += volume

    def result(self) -> RDF:
        if self.nframes == 0:
            raise ValueError("no frames: nothing to average (check the trajectory and --skip/--every)")
        comp = self.composition
        elements, n = comp.elements, comp.counts.astype(np.float64)
        ntot = n.sum()
        g = self.g_sum / self.nframes
        partials, weights, coordination = {}, {}, {}
        for a, b in itertools.combinations_with_replacement(range(len(elements)), 2):
            name = f"{elements[a]}-{elements[b]}"
            # Both orders hold the same pairs, so their g are equal; averaging them is exact.
            partials[name] = 0.5 * (g[a, b] + g[b, a])
            weights[name] = float((2 - (a == b)) * n[a] * (n[b] - (a == b)) / (ntot * (ntot - 1)))
        for a, b in itertools.product(range(len(elements)), repeat=2):
            coordination[f"{elements[a]}-{elements[b]}"] = np.cumsum(self.pair_counts[a, b]) / (n[a] * self.nframes)
        coordination["total"] = np.cumsum(self.pair_counts.sum(axis=(0, 1))) / (ntot * self.nframes)
        total = self.total_sum / self.nframes
        return RDF(r=0.5 * (self.edges[1:] + self.edges[:-1]), edges=self.edges.copy(), total=total,
                   partials=partials, weights=weights, coordination=coordination, elements=list(elements),
                   composition=comp.describe(), nframes=self.nframes, mean_volume=self.volume_sum / self.nframes)


def rdf(frames: Iterable, rmax: float = 8.0, nbins: int = 160, elements: Sequence[str] | None = None) -> RDF:
    """Total and partial g(r) of ``frames`` (ase.Atoms), averaged; see :class:`RDF`.

    Bins are ``nbins`` equal bins over [0, rmax]; the defaults (0.05 Å up to 8 Å) put the bin centres
    on the AIMD reference grid.  ``elements`` fixes the element order (a type map).
    """
    acc = RDFAccumulator(rmax, nbins, elements)
    for atoms in frames:
        acc.add(atoms)
    return acc.result()


# ---------------------------------------------------------------------------
# ALTBC
# ---------------------------------------------------------------------------


@dataclass
class ALTBC:
    """Angular-limited three-body correlation: the joint histogram of the two bond lengths of nearly
    collinear bond pairs (i-j-k with the angle at j within 180° ± ``angle_tolerance``).

    Every atom j and every *ordered* pair (i, k) of distinct bonds of j counts once at (r_ji, r_jk),
    so the map is exactly symmetric (as the AIMD reference's is).  A bond is a neighbour within
    ``cutoff`` whose element pair is in ``bonds`` (any pair when None).

    Attributes:
        edges: ``(nbins + 1,)`` bin edges of both axes, Å.
        counts: ``(nbins, nbins)`` ordered bond pairs, summed over frames; ``counts[a, b]`` has r_ji in
            bin a and r_jk in bin b.
        nframes, natoms: frames and atoms per frame behind ``counts`` (None for the AIMD reference,
            which gives raw counts only).
        cutoff, angle_tolerance, bonds: the bond criterion (Å, degrees, element pairs); None if unknown.
    """

    edges: np.ndarray
    counts: np.ndarray
    nframes: int | None = None
    natoms: int | None = None
    cutoff: float | None = None
    angle_tolerance: float | None = None
    bonds: list[str] | None = None

    @property
    def centres(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def density(self) -> np.ndarray:
        """Bond pairs per atom per Å² (per frame): counts / (nframes · natoms · Δr²).

        Its integral over the map is the mean number of ordered collinear bond pairs per atom inside
        the grid, comparable between runs of any length and size.
        """
        if not self.nframes or not self.natoms:
            raise ValueError("density needs the frame and atom counts (the AIMD reference has raw counts only)")
        dr = np.diff(self.edges)
        return self.counts / (self.nframes * self.natoms * np.outer(dr, dr))

    @property
    def shape(self) -> np.ndarray:
        """counts / counts.sum(): the distribution alone, for comparing maps of unknown length."""
        total = self.counts.sum()
        return self.counts / total if total else self.counts.astype(np.float64)

    def peak(self) -> tuple[float, float]:
        """Bin centres (r1, r2) of the largest count, with r1 <= r2 (the map is symmetric)."""
        a, b = np.unravel_index(int(np.argmax(self.counts)), self.counts.shape)
        c = self.centres
        return tuple(sorted((float(c[a]), float(c[b]))))


class ALTBCAccumulator:
    """Frame-by-frame accumulation of :class:`ALTBC`; the arguments are those of :func:`altbc`."""

    #: At most this many candidate bond pairs are held in memory at once (centre atoms are processed
    #: in blocks), so a million-atom frame costs a bounded few hundred MB.
    chunk_pairs = 1 << 22

    def __init__(self, cutoff: float | None = None, angle_tolerance: float = 25.0,
                 rrange: tuple[float, float] = REFERENCE_ALTBC_RANGE, nbins: int = REFERENCE_ALTBC_BINS,
                 bonds: Sequence[str] | None = None):
        lo, hi = map(float, rrange)
        if not 0 <= lo < hi or nbins < 1:
            raise ValueError(f"need 0 <= rmin < rmax and nbins >= 1, got range {rrange}, nbins={nbins}")
        if not 0 < angle_tolerance <= 90:
            raise ValueError(f"angle_tolerance must be in (0, 90] degrees, got {angle_tolerance}")
        self.edges = np.linspace(lo, hi, nbins + 1)
        # Bonds beyond the grid cannot land in it: the grid's top is the natural default cutoff.
        self.cutoff = hi if cutoff is None else float(cutoff)
        self.angle_tolerance = float(angle_tolerance)
        # angle >= 180° - tol  <=>  cos(angle) <= -cos(tol)
        self.cos_max = -np.cos(np.radians(self.angle_tolerance))
        self.bonds = None if bonds is None else [_pair_key(b) for b in bonds]
        self.counts = np.zeros((nbins, nbins))
        self.nframes = 0
        self.natoms = None

    def add(self, atoms) -> None:
        positions, cell, symbols = _frame_arrays(atoms)
        if self.natoms is not None and len(positions) != self.natoms:
            raise ValueError(f"atom count changed between frames ({self.natoms} -> {len(positions)})")
        self.natoms = len(positions)
        e = edges(positions, cell, True, self.cutoff)
        if self.bonds is not None:
            names, types = np.unique(symbols, return_inverse=True)
            allowed = np.array([[_pair_key(f"{a}-{b}") in self.bonds for b in names] for a in names])
            keep = allowed[types[e.i], types[e.j]]
            e = type(e)(i=e.i[keep], j=e.j[keep], shift=e.shift[keep], vec=e.vec[keep])  # still sorted by i
        nb = len(self.edges) - 1
        lo, width = self.edges[0], (self.edges[-1] - self.edges[0]) / nb
        d = np.sqrt(np.einsum("ij,ij->i", e.vec, e.vec))
        for first, second in _bond_pairs(e.i, len(positions), self.chunk_pairs):
            cos = np.einsum("ij,ij->i", e.vec[first], e.vec[second]) / (d[first] * d[second])
            keep = cos <= self.cos_max
            b1 = np.floor((d[first[keep]] - lo) / width).astype(np.int64)
            b2 = np.floor((d[second[keep]] - lo) / width).astype(np.int64)
            inside = (b1 >= 0) & (b1 < nb) & (b2 >= 0) & (b2 < nb)
            self.counts += np.bincount(b1[inside] * nb + b2[inside], minlength=nb * nb).reshape(nb, nb)
        self.nframes += 1

    def result(self) -> ALTBC:
        if self.nframes == 0:
            raise ValueError("no frames: nothing to histogram")
        return ALTBC(edges=self.edges.copy(), counts=self.counts.copy(), nframes=self.nframes, natoms=self.natoms,
                     cutoff=self.cutoff, angle_tolerance=self.angle_tolerance, bonds=self.bonds)


def _pair_key(name: str) -> str:
    """``"Te-Ge"`` -> ``"Ge-Te"``: an unordered element pair as one string."""
    a, sep, b = str(name).partition("-")
    if not sep or not a or not b:
        raise ValueError(f"an element pair looks like 'Ge-Te', got {name!r}")
    return "-".join(sorted((a.strip(), b.strip())))


def _bond_pairs(centre: np.ndarray, natoms: int, chunk_pairs: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All ordered pairs (e1, e2), e1 != e2, of edges that share a centre atom, in blocks of centres.

    ``centre`` must be sorted (as :func:`model.neighbors.edges` returns it).  An atom with c
    neighbours gives c (c - 1) pairs; blocks of whole centres hold about ``chunk_pairs`` pairs.
    """
    count = np.bincount(centre, minlength=natoms)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    per_atom = np.cumsum(count * count)
    a0 = 0
    while a0 < natoms:
        # Extend the block while it stays under chunk_pairs (always at least one atom).
        base = per_atom[a0 - 1] if a0 else 0
        a1 = max(a0 + 1, int(np.searchsorted(per_atom, base + chunk_pairs, side="right")))
        a1 = min(a1, natoms)
        e_lo, e_hi = start[a0], start[a1 - 1] + count[a1 - 1]
        group = count[centre[e_lo:e_hi]]  # partners of each edge, itself included
        first = np.repeat(np.arange(e_lo, e_hi), group)
        offset = np.arange(first.size) - np.repeat(np.cumsum(group) - group, group)
        second = start[centre[first]] + offset
        keep = first != second
        yield first[keep], second[keep]
        a0 = a1


def altbc(frames: Iterable, cutoff: float | None = None, angle_tolerance: float = 25.0,
          rrange: tuple[float, float] = REFERENCE_ALTBC_RANGE, nbins: int = REFERENCE_ALTBC_BINS,
          bonds: Sequence[str] | None = None) -> ALTBC:
    """ALTBC of ``frames`` (ase.Atoms); see :class:`ALTBC`.

    ``rrange``/``nbins`` set the grid of both axes; the defaults are the AIMD reference's (2.5-4.5 Å
    in 0.05 Å bins), so a result compares with it bin for bin.  ``cutoff`` (default: the grid's top)
    decides which neighbours are bonds, ``angle_tolerance`` (degrees) how far from 180° a bond pair
    may bend, ``bonds`` which element pairs count as bonds (e.g. ``["Ge-Te"]``; default: all).

    With a 4.5 Å cutoff the second shell (Ge-Ge, Te-Te at 4.1-4.3 Å) makes a large diagonal peak.
    The reference's criteria are undocumented, but its map has that peak much weaker: on the 300 K
    AIMD frames the reference's shape is matched far better with ``bonds=["Ge-Te"]`` (shape L1 0.25
    against 0.60 with every pair; see :func:`compare_altbc`).  For the first-shell Peierls picture
    alone use ``cutoff=3.6, rrange=(2.4, 3.6), nbins=24``.
    """
    acc = ALTBCAccumulator(cutoff, angle_tolerance, rrange, nbins, bonds)
    for atoms in frames:
        acc.add(atoms)
    return acc.result()


# ---------------------------------------------------------------------------
# Peaks and curve differences
# ---------------------------------------------------------------------------


@dataclass
class Peak:
    """A peak of g(r): ``position``/``height`` from a parabola through the highest bin and its two
    neighbours (sub-bin), ``bin_position``/``bin_height`` of the highest bin itself."""

    position: float
    height: float
    bin_position: float
    bin_height: float

    def as_dict(self) -> dict:
        return {"position": self.position, "height": self.height, "bin_position": self.bin_position,
                "bin_height": self.bin_height}


def first_peak(r: np.ndarray, g: np.ndarray, threshold: float = 1.0) -> Peak | None:
    """The first-shell peak: the maximum of the first stretch of bins where g > ``threshold``.

    Returns None when g never exceeds the threshold.  "First stretch above 1" rather than "first
    local maximum" because a histogram's noise makes spurious local maxima on the rising edge; for a
    partial with almost no first-shell pairs (Te-Te in a-GeTe: g ≈ 0.3 at 3 Å) it is the first real
    shell (4.1 Å), which is also what the reference's notes call that curve's first peak.
    The parabola needs equally spaced r (true for every grid here).
    """
    r, g = np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64)
    above = np.flatnonzero(g > threshold)
    if above.size == 0:
        return None
    lo = above[0]
    below_after = np.flatnonzero(g[lo:] <= threshold)
    hi = lo + below_after[0] if below_after.size else len(g)
    k = lo + int(np.argmax(g[lo:hi]))
    position, height = float(r[k]), float(g[k])
    if 0 < k < len(g) - 1:
        gm, g0, gp = g[k - 1], g[k], g[k + 1]
        curvature = gm - 2 * g0 + gp
        if curvature < 0:  # a true maximum of the parabola
            delta = 0.5 * (gm - gp) / curvature  # in bins, within [-0.5, 0.5] since g0 is the largest
            position = float(r[k] + delta * (r[k + 1] - r[k]))
            height = float(g0 - 0.25 * (gm - gp) * delta)
    return Peak(position=position, height=height, bin_position=float(r[k]), bin_height=float(g[k]))


def curve_difference(r: np.ndarray, g: np.ndarray, r_ref: np.ndarray, g_ref: np.ndarray,
                     r_range: tuple[float, float] = (2.0, 8.0), step: float = 0.01) -> dict:
    """∫|g - g_ref| dr and the RMS of g - g_ref over ``r_range``, both curves linearly interpolated onto
    one grid of spacing ``step``.

    The range is clipped to where both curves are defined (their first to last r); the range used is
    returned with the numbers (``l1`` in Å, ``rms`` dimensionless).
    """
    lo = max(r_range[0], r[0], r_ref[0])
    hi = min(r_range[1], r[-1], r_ref[-1])
    if hi <= lo:
        raise ValueError(f"curves share no r in {r_range}: [{r[0]}, {r[-1]}] vs [{r_ref[0]}, {r_ref[-1]}]")
    grid = np.linspace(lo, hi, max(2, int(round((hi - lo) / step)) + 1))
    diff = np.interp(grid, r, g) - np.interp(grid, r_ref, g_ref)
    l1 = float(np.sum(0.5 * (np.abs(diff[1:]) + np.abs(diff[:-1])) * np.diff(grid)))  # trapezoid rule
    return {"l1": l1, "rms": float(np.sqrt(np.mean(diff ** 2))), "range": [float(lo), float(hi)]}


# ---------------------------------------------------------------------------
# AIMD reference curves
# ---------------------------------------------------------------------------


@dataclass
class Reference:
    """The AIMD structure curves of amorphous GeTe (216 atoms, 108 Ge + 108 Te), extracted with OVITO
    by the data's authors (see ``shared/data/README.md``; cutoffs undocumented).

    Attributes:
        folder: where they were read from.
        rdf: ``name -> (r, g)``; names ``total``, ``Ge-Ge``, ``Ge-Te``, ``Te-Te``; r are bin centres
            (0.025 ... 9.975 Å, 0.05 Å bins).
        altbc: raw counts on the 2.5-4.5 Å grid (``altbc/x.txt`` edges, ``z.txt`` counts), or None.
        adf: ``name -> (theta in degrees, percent per 0.9° bin)``; ``Ge`` and ``Te`` are the parts of
            ``total`` centred on each element (not separately normalised).
        cn: ``name -> (n, atoms with coordination n)``, frame averaged; the source names them by type
            number: ``1`` = Ge, ``2`` = Te, ``total``.
    """

    folder: Path
    rdf: dict[str, tuple[np.ndarray, np.ndarray]]
    altbc: ALTBC | None = None
    adf: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    cn: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def reference_from_rdf(result: RDF, folder: str | Path = "") -> Reference:
    """Another run's g(r) as the reference of :func:`compare_rdf` / :func:`plot_rdf` (e.g. a teacher
    potential's MD against the student's)."""
    return Reference(folder=Path(folder), rdf={name: (result.r, result.curve(name))
                                               for name in ["total", *result.partials]})


def _two_columns(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.loadtxt(path, ndmin=2)
    if data.shape[1] != 2:
        raise ValueError(f"{path}: expected two columns (x, value), got shape {data.shape}")
    return data[:, 0], data[:, 1]


def load_reference(folder: str | Path | None = None) -> Reference:
    """Read the AIMD reference curves from ``folder`` (default :func:`default_reference_folder`).

    Layout: ``rdf/*.txt``, ``adf/*.txt`` and ``cn/*.txt`` are two-column text (x, value);
    ``altbc/x.txt`` and ``y.txt`` the bin edges, ``altbc/z.txt`` the counts with row = y bin and
    column = x bin.  ``rdf/`` is required, the rest is optional.
    """
    folder = Path(folder) if folder is not None else default_reference_folder()
    if not (folder / "rdf").is_dir():
        raise FileNotFoundError(f"no AIMD reference curves at {folder} (expected {folder / 'rdf'}/*.txt; "
                                "the data live in ../shared/data/GeTe-aimd-reference, or set DPFPGA_SHARED_DATA)")
    curves = {sub: {p.stem: _two_columns(p) for p in sorted((folder / sub).glob("*.txt"))}
              for sub in ("rdf", "adf", "cn") if (folder / sub).is_dir()}
    if not curves["rdf"]:
        raise FileNotFoundError(f"{folder / 'rdf'} holds no .txt curves")
    ref_altbc = None
    if (folder / "altbc" / "z.txt").is_file():
        x = np.loadtxt(folder / "altbc" / "x.txt")
        y = np.loadtxt(folder / "altbc" / "y.txt")
        z = np.loadtxt(folder / "altbc" / "z.txt", ndmin=2)
        if not np.allclose(x, y) or z.shape != (len(y) - 1, len(x) - 1):
            raise ValueError(f"{folder / 'altbc'}: expected equal x and y edges and z of shape "
                             f"({len(y) - 1}, {len(x) - 1}), got x {x.shape}, y {y.shape}, z {z.shape}")
        # z[row = r2 bin, column = r1 bin]; ALTBC.counts is [r1, r2]: transpose (a no-op for this
        # symmetric map, but it keeps the axes honest).
        ref_altbc = ALTBC(edges=x, counts=z.T.copy())
    return Reference(folder=folder, rdf=curves["rdf"], altbc=ref_altbc, adf=curves.get("adf", {}),
                     cn=curves.get("cn", {}))


def _reference_curve(reference: Reference, name: str):
    a, _, b = name.partition("-")
    for key in (name, f"{b}-{a}"):
        if key in reference.rdf:
            return reference.rdf[key]
    return None


def compare_rdf(result: RDF, reference: Reference | None = None, r_range: tuple[float, float] = (2.0, 8.0)) -> dict:
    """First peaks of every g(r) of ``result`` and, with a reference, its peaks and differences.

    Returns ``{name: {"first_peak": Peak dict or None, "reference_first_peak": ..., "peak_shift":
    position - reference position, "l1": ∫|Δg| dr, "rms": ..., "range": [lo, hi]}}`` for ``total``
    and every partial; the reference keys appear only where the reference has that curve.
    """
    out = {}
    for name in ["total", *result.partials]:
        g = result.curve(name)
        peak = first_peak(result.r, g)
        entry = {"first_peak": peak.as_dict() if peak else None}
        ref = _reference_curve(reference, name) if reference is not None else None
        if ref is not None:
            ref_peak = first_peak(*ref)
            entry["reference_first_peak"] = ref_peak.as_dict() if ref_peak else None
            entry["peak_shift"] = peak.position - ref_peak.position if peak and ref_peak else None
            entry.update(curve_difference(result.r, g, ref[0], ref[1], r_range))
        out[name] = entry
    return out


def compare_altbc(result: ALTBC, reference: ALTBC) -> dict:
    """Peak positions of both maps and, on identical grids, the L1 distance of their shapes
    (Σ|p - p_ref| of the maps normalised to unit sum: 0 identical, 2 disjoint).

    Shapes, not densities, because the reference gives raw counts of an unknown number of frames.
    """
    out = {"peak": list(result.peak()), "reference_peak": list(reference.peak())}
    if result.edges.shape == reference.edges.shape and np.allclose(result.edges, reference.edges):
        out["shape_l1"] = float(np.abs(result.shape - reference.shape).sum())
    else:
        out["shape_l1"] = None  # different grids: no bin-for-bin comparison
    return out


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def write_rdf_csv(path: str | Path, result: RDF) -> Path:
    """CSV with columns r (bin centre), r_upper, g_total, g_<A-B>..., n_total, n_<A-B>...

    ``n_*`` are the running coordination numbers at ``r_upper`` (``n_Ge-Te``: Te atoms around a Ge).
    """
    names = ["r", "r_upper", "g_total", *(f"g_{k}" for k in result.partials),
             *(f"n_{k}" for k in ["total", *(k for k in result.coordination if k != "total")])]
    columns = [result.r, result.edges[1:], result.total, *result.partials.values(), result.coordination["total"],
               *(v for k, v in result.coordination.items() if k != "total")]
    path = Path(path)
    np.savetxt(path, np.column_stack(columns), delimiter=",", header=",".join(names), comments="", fmt="%.8g")
    return path


def write_altbc(prefix: str | Path, result: ALTBC) -> list[Path]:
    """``PREFIX.npy`` (the density map, Å⁻²) and ``PREFIX.csv`` (r1, r2 bin centres, counts, density)."""
    prefix = Path(prefix)
    npy, csv = prefix.with_name(prefix.name + ".npy"), prefix.with_name(prefix.name + ".csv")
    density = result.density
    np.save(npy, density)
    c = result.centres
    r1, r2 = np.meshgrid(c, c, indexing="ij")
    np.savetxt(csv, np.column_stack([r1.ravel(), r2.ravel(), result.counts.ravel(), density.ravel()]),
               delimiter=",", header="r1,r2,counts,density", comments="", fmt="%.8g")
    return [npy, csv]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; no display needed (CI, remote machines)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, title: str) -> Path:
    """Title, lay out, write the PNG and free the figure (every plot here ends this way)."""
    plt = _pyplot()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_rdf(path: str | Path, result: RDF, reference: Reference | None = None, title: str = "",
             label: str = "this run", reference_label: str = "AIMD reference") -> Path:
    """PNG: one panel for the total g(r) and one per partial, the reference dashed where it has one."""
    plt = _pyplot()
    names = ["total", *result.partials]
    ncols = 2 if len(names) <= 4 else 3
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.4 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ax.plot(result.r, result.curve(name), lw=1.3, label=f"{label} ({result.nframes} frames)")
        ref = _reference_curve(reference, name) if reference is not None else None
        if ref is not None:
            ax.plot(ref[0], ref[1], "k--", lw=1.0, label=reference_label)
        ax.axhline(1.0, color="0.7", lw=0.6)
        ax.set_xlim(0, result.rmax)
        ax.set_title(f"g(r) {name}")
        ax.set_xlabel("r (Å)")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return _save(fig, path, title)


def plot_altbc(path: str | Path, result: ALTBC, reference: ALTBC | None = None, title: str = "") -> Path:
    """PNG: the ALTBC map, each map divided by its maximum (as the reference's own plot does), with the
    reference beside it when given."""
    plt = _pyplot()
    maps = [("this run", result)] + ([("AIMD reference", reference)] if reference is not None else [])
    fig, axes = plt.subplots(1, len(maps), figsize=(4.8 * len(maps), 4.2), squeeze=False)
    for ax, (label, m) in zip(axes.flat, maps):
        peak = m.counts.max()
        mesh = ax.pcolormesh(m.edges, m.edges, (m.counts / peak if peak else m.counts).T, cmap="viridis",
                             vmin=0, vmax=1, shading="flat")
        ax.set_aspect("equal")
        ax.set_xlabel("r1 (Å)")
        ax.set_ylabel("r2 (Å)")
        ax.set_title(label)
        fig.colorbar(mesh, ax=ax, fraction=0.046, label="counts / max")
    return _save(fig, path, title)
