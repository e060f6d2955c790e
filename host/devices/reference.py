"""The NumPy reference as a device: it reads and writes the wire format exactly as the pipeline does
(model.reference.process_beats), in a worker thread."""

from __future__ import annotations

from model.reference import process_beats

from .base import WorkerDevice


class ReferenceDevice(WorkerDevice):
    name = "reference"

    def process(self, beats, n_atoms):
        return process_beats(self.qm, beats, n_atoms, self.lanes)
