"""Host side of the contract: structure -> quantized neighbour records, and integer results -> physics.

`quantize_records` turns a neighbour list into the pipeline's input words; anything that does not fit
(a coordinate difference outside the input format, an unknown element, more neighbours than sel)
raises an error naming the atom.  `assemble` turns per-atom energy words and per-record dE/dr_ij
words into total energy, forces and virial *in exact integer arithmetic* and converts to float once
at the end:

    E     = sum_i (e_i + bias[type_i])
    F_i   = sum_j dE/dr_ij  -  sum_j dE/dr_ji          (r_ij = x_j - x_i)
    W     = - sum_ij r_ij (x) dE/dr_ij                 (r_ij as the quantized words the hardware saw)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.fixedpoint import Fmt
from contract.flags import FLAG_R_BELOW_MIN, describe_flags
from contract.modelfile import QuantizedModel

from .neighbors import NeighborBlocks, blocks, check_sel, count_by_type, edges
from .reference import NeighborRecords, ReferenceResult, evaluate


class InputRangeError(ValueError):
    """A neighbour displacement does not fit the pipeline's input format."""


class DeviceFlagError(RuntimeError):
    """The pipeline (or reference) flagged atoms whose results must not be used."""


class CloseContactError(DeviceFlagError):
    """Two atoms closer than the model's r_min, where its tables (and its training data) end."""


def below_rmin(qm: QuantizedModel, nbr_type: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(N, M) mask of the records that the pipeline's radial tables see below r_min: the hardware's own
    integer test (u = dx^2 + dy^2 + dz^2 in the coord format squared, below the s table's first input)."""
    return (nbr_type >= 0) & ((d * d).sum(axis=-1) < qm.table_s.x_min)


def close_contact_error(qm: QuantizedModel, close: np.ndarray, nbr_vec: np.ndarray, center_names,
                        nbr_names) -> CloseContactError:
    """The error for the closest of the `close` records (N, M mask): names both atoms, their distance,
    r_min and the training data's shortest distance when the model file records it, and the remedies."""
    r = np.where(close, np.sqrt((np.asarray(nbr_vec) ** 2).sum(axis=-1)), np.inf)
    a, k = np.unravel_index(int(np.argmin(r)), r.shape)
    seen = qm.provenance.get("r_min", {}).get("training_min_distance")
    data = f"; the training data's shortest distance is {seen:.3f} Å" if seen else ""
    return CloseContactError(
        f"atoms {center_names[a]} and {nbr_names[a, k]} are {r[a, k]:.4f} Å apart, closer than the model's "
        f"r_min {qm.config.r_min:g} Å where its tables start{data} ({int(close.any(axis=1).sum())} atom(s) with "
        "such a neighbour). The model says nothing about such distances: usually the time step or the "
        "temperature is too high, or a short-range repulsion is missing. To go on, allow it (LAMMPS: "
        "`pair_style nvnmd MODEL below_rmin allow`, best inside `pair_style hybrid/overlay ... zbl INNER "
        "OUTER`; ASE: Calculator(..., allow_below_rmin=True)): the tables are then held constant below r_min")


def quantize_displacements(vec: np.ndarray, fmt: Fmt, atom_index: np.ndarray | None = None) -> np.ndarray:
    q = np.floor(vec * 2.0 ** fmt.frac + 0.5)
    bad = (q < fmt.lo) | (q > fmt.hi)
    if bad.any():
        k = np.argwhere(bad)[0]
        where = f"atom {int(atom_index[tuple(k[:-1])])}" if atom_index is not None else f"record {tuple(k[:-1])}"
        raise InputRangeError(
            f"{where}: displacement component {vec[tuple(k)]:.6g} Å does not fit the input format "
            f"{fmt.describe()} (|dx| <= {fmt.max_value:.4g} Å); {int(bad.any(axis=-1).sum())} record(s) affected")
    return q.astype(np.int64)


def quantize_records(qm: QuantizedModel, nb: NeighborBlocks) -> NeighborRecords:
    atom = np.broadcast_to(np.arange(len(nb.center_type))[:, None], nb.nbr_type.shape)
    d = quantize_displacements(nb.nbr_vec, qm.formats["coord"], atom)
    d[nb.nbr_type < 0] = 0
    return NeighborRecords(center_type=nb.center_type.copy(), nbr_type=nb.nbr_type.copy(), nbr_d=d)


def map_types(symbols, type_map) -> np.ndarray:
    lookup = {e: i for i, e in enumerate(type_map)}
    out = np.empty(len(symbols), dtype=np.int64)
    for k, e in enumerate(symbols):
        if e not in lookup:
            raise KeyError(f"atom {k}: element {e!r} is not in the model's type map {list(type_map)}")
        out[k] = lookup[e]
    return out


def check_types(types, cfg) -> np.ndarray:
    """Types as int64; a type outside the model's type map is a KeyError naming the atom."""
    types = np.asarray(types, dtype=np.int64)
    if types.size and (types.min() < 0 or types.max() >= cfg.ntypes):
        bad = int(np.argmax((types < 0) | (types >= cfg.ntypes)))
        raise KeyError(f"atom {bad}: type {types[bad]} outside the model's type map {cfg.type_map}")
    return types


def neighbor_blocks(qm: QuantizedModel, positions, cell, pbc, types) -> NeighborBlocks:
    cfg = qm.config
    types = check_types(types, cfg)
    e = edges(np.asarray(positions, dtype=np.float64), np.asarray(cell, dtype=np.float64), pbc, cfg.rcut,
              max_neighbors=sum(cfg.sel))
    check_sel(count_by_type(e, types, len(types), cfg.ntypes), cfg.sel, cfg.type_map)
    return blocks(e, types, len(types))


@dataclass
class Assembled:
    energy: float
    forces: np.ndarray  # (N, 3) eV/Å
    virial: np.ndarray  # (3, 3) eV
    atomic_energies: np.ndarray  # (N,) eV
    energy_int: int  # total energy in format E (exact)
    forces_int: np.ndarray  # (N, 3) int64 in format F
    virial_int: np.ndarray  # (3, 3) Python-int object array, frac coord + F
    flags: np.ndarray  # (N,)


def scatter_add(out: np.ndarray, index, values) -> None:
    """out[index[k]] += values[k], several times faster than np.add.at.  bincount sums in float64: for
    int64 arrays that is exact while every partial sum stays below 2**53 in magnitude, which is checked
    (pipeline results are 20-bit words, so it holds for any realistic atom); float arrays (per-atom
    virials) are summed in float64 as np.add.at would."""
    values = np.asarray(values)
    if values.size == 0:  # no pairs at all (atoms without neighbours): nothing to add
        return
    if float(np.abs(values).max()) * len(values) >= 2.0 ** 53:
        np.add.at(out, index, values)
        return
    flat_out, flat_v = out.reshape(len(out), -1), values.reshape(len(values), -1)
    for c in range(flat_out.shape[1]):
        flat_out[:, c] += np.bincount(index, weights=flat_v[:, c], minlength=len(out)).astype(out.dtype)


def add_pair_terms(forces: np.ndarray, virial: np.ndarray, ci, nj, d, g) -> None:
    """Fold pair results into the totals, exactly: F_ci += g, F_nj -= g (int64), and
    virial -= sum d (x) g (Python ints; int64 partial sums over bounded blocks cannot overflow)."""
    scatter_add(forces, ci, g)
    scatter_add(forces, nj, -g)
    step = 1 << 16
    for lo in range(0, len(g), step):
        virial -= np.einsum("ea,eb->ab", d[lo:lo + step], g[lo:lo + step]).astype(object)


def assemble(qm: QuantizedModel, rec: NeighborRecords, res: ReferenceResult, nbr_index: np.ndarray,
             natoms: int | None = None) -> Assembled:
    F = qm.formats
    n = natoms if natoms is not None else len(rec)
    valid = rec.nbr_type >= 0
    e_atom = res.energy + qm.energy_bias[rec.center_type]
    energy_int = int(e_atom.sum(dtype=np.int64)) if len(e_atom) < 2 ** 20 else sum(int(x) for x in e_atom)
    forces = np.zeros((n, 3), dtype=np.int64)
    virial = np.zeros((3, 3), dtype=object)
    ci = np.broadcast_to(np.arange(len(rec))[:, None], valid.shape)[valid]
    add_pair_terms(forces, virial, ci, nbr_index[valid], rec.nbr_d[valid], res.dEdr[valid])
    scale_v = 2.0 ** -(F["coord"].frac + F["F"].frac)
    return Assembled(
        energy=energy_int * 2.0 ** -F["E"].frac,
        forces=forces * 2.0 ** -F["F"].frac,
        virial=np.array([[float(x) * scale_v for x in row] for row in virial]),
        atomic_energies=e_atom * 2.0 ** -F["E"].frac,
        energy_int=energy_int, forces_int=forces, virial_int=virial, flags=res.flags)


def check_flags(flags: np.ndarray, allow: int = 0, names=None) -> None:
    """Raise DeviceFlagError naming the first flagged atom (flags in `allow` are accepted: the caller
    asked for them); `names[k]` is how atom k is called in messages (default: k).  R_BELOW_MIN is an
    error unless allowed: callers check the pairs first (close_contact_error names both atoms), so the
    flag here is the device's backstop."""
    flags = np.asarray(flags)
    bad = (flags & ~allow) != 0
    if bad.any():
        a = int(np.argmax(bad))
        raise DeviceFlagError(f"atom {a if names is None else names[a]}: {describe_flags(int(flags[a]))} "
                              f"({int(bad.sum())} atom(s) flagged); results are not usable")


def compute(qm: QuantizedModel, positions, cell, pbc: bool, types, strict: bool = True,
            allow_below_rmin: bool = False) -> Assembled:
    """Energy, forces and virial of one structure through the bit-exact reference.  A pair closer than
    r_min is a CloseContactError unless `allow_below_rmin` (then the tables are constant below r_min);
    `strict` turns the other flags (saturation, ...) into DeviceFlagError."""
    nb = neighbor_blocks(qm, positions, cell, pbc, types)
    rec = quantize_records(qm, nb)
    close = below_rmin(qm, rec.nbr_type, rec.nbr_d)
    if close.any() and not allow_below_rmin:
        raise close_contact_error(qm, close, nb.nbr_vec, np.arange(len(rec)), nb.nbr_index)
    res = evaluate(qm, rec)
    if strict:
        check_flags(res.flags, allow=FLAG_R_BELOW_MIN if allow_below_rmin else 0)
    return assemble(qm, rec, res, nb.nbr_index, len(rec))
