"""Host-side input checks and assembly: every bad input gets an error that names the atom."""

from __future__ import annotations

import numpy as np
import pytest

from contract.fixedpoint import Fmt
from contract.flags import FLAG_NEIGHBOR_OVERFLOW
from model.assembly import DeviceFlagError, InputRangeError, check_flags, compute, map_types, quantize_displacements
from model.neighbors import NeighborOverflowError
from model.reference import ReferenceResult
from support import random_structure, tiny_qm


def test_unknown_element_named():
    qm = tiny_qm()
    with pytest.raises(KeyError, match="atom 2: element 'Sb' is not in the model's type map"):
        map_types(["Ge", "Te", "Sb"], qm.config.type_map)


def test_type_index_outside_map():
    qm = tiny_qm()
    pos, cell, types = random_structure(seed=1)
    types = types.copy()
    types[4] = 5
    with pytest.raises(KeyError, match="atom 4: type 5"):
        compute(qm, pos, cell, True, types)


def test_more_neighbours_than_sel_is_an_error_naming_the_atom():
    qm = tiny_qm()
    # A dense box: every atom has far more than sel=40 neighbours of each type within 7 Å.
    pos, cell, types = random_structure(natoms=100, box=11.0, dmin=1.7, seed=2)
    with pytest.raises(NeighborOverflowError, match=r"atom \d+ has \d+ neighbours of type (Ge|Te) .* more than sel"):
        compute(qm, pos, cell, True, types)


def test_coordinate_overflow_names_the_atom():
    fmt = Fmt(18, 13)
    vec = np.zeros((3, 2, 3))
    vec[1, 1, 2] = 17.0  # beyond +-16 Å
    with pytest.raises(InputRangeError, match=r"atom 1: displacement component 17 Å does not fit .*s18\.13"):
        quantize_displacements(vec, fmt, np.array([[0, 0], [1, 1], [2, 2]]))
    # Rounding at the edge: the largest representable value passes, the next does not.
    ok = np.full((1, 1, 3), fmt.max_value)
    assert quantize_displacements(ok, fmt).max() == fmt.hi


def test_open_boundary_structure():
    """Non-periodic input: same integers as the periodic one when the box is far larger than rcut."""
    qm = tiny_qm()
    pos, cell, types = random_structure(natoms=20, box=8, seed=3, triclinic=False)
    a = compute(qm, pos, np.eye(3) * 100, True, types)
    b = compute(qm, pos, np.zeros((3, 3)), False, types)
    assert a.energy_int == b.energy_int and np.array_equal(a.forces_int, b.forces_int)


def test_flag_check_raises():
    res = ReferenceResult(energy=np.zeros(3, dtype=np.int64), dEdr=np.zeros((3, 1, 3), dtype=np.int64),
                          flags=np.array([0, FLAG_NEIGHBOR_OVERFLOW, 0]))
    with pytest.raises(DeviceFlagError, match="atom 1: neighbour count above sel"):
        check_flags(res.flags)
