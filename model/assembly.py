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

from .fixedpoint import Fmt
from .modelfile import QuantizedModel
from .neighbors import NeighborBlocks, blocks, check_sel, count_by_type, edges
from .reference import FLAG_R_BELOW_MIN, NeighborRecords, ReferenceResult, describe_flags, evaluate


class InputRangeError(ValueError):
    """A neighbour displacement does not fit the pipeline's input format."""


class DeviceFlagError(RuntimeError):
    """The pipeline (or reference) flagged atoms whose results must not be used."""


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
    e = edges(np.asarray(positions, dtype=np.float64), np.asarray(cell, dtype=np.float64), pbc, cfg.rcut)
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
    if values.size and float(np.abs(values).max()) * len(values) >= 2.0 ** 53:
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


def check_flags(flags: np.ndarray, allow=FLAG_R_BELOW_MIN, names=None) -> None:
    """Raise DeviceFlagError naming the first flagged atom (flags in `allow` only warn); `names[k]` is
    how atom k is called in messages (default: k)."""
    import warnings
    flags = np.asarray(flags)
    bad = (flags & ~allow) != 0
    if bad.any():
        a = int(np.argmax(bad))
        raise DeviceFlagError(f"atom {a if names is None else names[a]}: {describe_flags(int(flags[a]))} "
                              f"({int(bad.sum())} atom(s) flagged); results are not usable")
    warn = (flags & allow) != 0
    if warn.any():
        a = int(np.argmax(warn))
        warnings.warn(f"atom {a if names is None else names[a]}: {describe_flags(int(flags[a]))} "
                      f"({int(warn.sum())} atom(s)); "
                      "the tables clamp such pairs to r_min", RuntimeWarning, stacklevel=3)


def compute(qm: QuantizedModel, positions, cell, pbc: bool, types, strict: bool = True) -> Assembled:
    """Energy, forces and virial of one structure through the bit-exact reference."""
    nb = neighbor_blocks(qm, positions, cell, pbc, types)
    rec = quantize_records(qm, nb)
    res = evaluate(qm, rec)
    if strict:
        check_flags(res.flags)
    return assemble(qm, rec, res, nb.nbr_index, len(rec))
