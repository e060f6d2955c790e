"""The NumPy reference as a device: it reads and writes the wire format exactly as the pipeline does."""

from __future__ import annotations

import numpy as np

from contract.flags import FLAG_NEIGHBOR_OVERFLOW
from gen import wire
from model.reference import NeighborRecords, evaluate

from .base import WorkerDevice


class ReferenceDevice(WorkerDevice):
    name = "reference"

    def process(self, beats, n_atoms):
        ctype, nbr_type, nbr_d, tags, count = self.decode(beats, n_atoms)
        # The pipeline drops an atom with more records than it can buffer: no records come back.
        over = count > sum(self.qm.config.sel)
        res = evaluate(self.qm, NeighborRecords(ctype, np.where(over[:, None], -1, nbr_type), nbr_d))
        flags = np.where(over, FLAG_NEIGHBOR_OVERFLOW, res.flags)
        return wire.encode_results(np.where(over, 0, res.energy), res.dEdr, flags, np.where(over, 0, count),
                                   tags, self.lanes)
