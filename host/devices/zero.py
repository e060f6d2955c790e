"""A transport-only device: it answers every atom with zero energy and zero dE/dr_ij.

It reads the chunk's atom headers and record counts and writes a well-formed output stream (same
tags, same record counts, no flags), so everything around a device (neighbour lists, encoding,
the service socket, the LAMMPS plugin, folding results into forces) runs exactly as with a real one.
Its physics is meaningless: it exists to *measure* that surrounding cost (benchmarks/lammps_loop.py
subtracts it from the reference device's time to split pair time into transport and compute).
"""

from __future__ import annotations

import numpy as np

from contract import wire

from .base import WorkerDevice


class ZeroDevice(WorkerDevice):
    name = "zero"

    def process(self, beats, n_atoms):
        _, nbr_type, _, tags, count = self.decode(beats, n_atoms)
        zeros = np.zeros(n_atoms, dtype=np.int64)
        return wire.encode_results(zeros, np.zeros(nbr_type.shape + (3,), dtype=np.int64), zeros, count, tags,
                                   self.lanes)
