"""ASE calculator: the quantized model through any device.

    from host.ase import Calculator
    atoms.calc = Calculator(model="model.npz", device="reference")   # or "rtl", "xdma:/dev/xdma0",
                                                                     # "socket:/path/to/service.sock"
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()

`model=None` is the bundled example model.  Properties: energy (= free_energy), forces, stress
(periodic cells), per-atom energies and per-atom stresses.  The numbers are the fixed-point
results converted to float once (host.evaluate): identical for every device, chunk size and run.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.data import atomic_numbers, chemical_symbols
from ase.calculators.calculator import PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from contract import modelfile
from model.assembly import map_types

from .devices import open_device
from .evaluate import Evaluator


def default_model_path():
    from contract.paths import EXAMPLE_MODEL
    return EXAMPLE_MODEL


class Calculator(_AseCalculator):
    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies", "stresses"]

    def __init__(self, model=None, device: str = "reference", chunk_atoms: int = 4096, strict: bool = True,
                 timeout: float = 600.0, progress: bool = False, allow_below_rmin: bool = False,
                 native: bool | None = None, **kwargs):
        """`native`: the native host core (host.native) does the per-atom host work when it is built or can
        be built here (None), must (True), or the Python path does (False); the same numbers either way.
        `allow_below_rmin`: evaluate pairs closer than the model's r_min with its tables held constant
        below r_min (forces stay the energy's gradient) instead of raising CloseContactError; pair it with
        a short-range repulsion (e.g. ASE's SumCalculator with a ZBL-like term)."""
        super().__init__(**kwargs)
        self.allow_below_rmin = allow_below_rmin
        self.model_path = model if model is not None else default_model_path()
        self.qm = modelfile.load(self.model_path)
        self.device_spec = device
        self.chunk_atoms, self.strict, self.timeout, self.progress = chunk_atoms, strict, timeout, progress
        self.native = native
        self._device = None

    @property
    def device(self):
        if self._device is None:
            if self.device_spec.startswith("socket:"):
                from .service import SocketDevice
                self._device = SocketDevice(self.qm, self.device_spec.partition(":")[2], timeout=self.timeout)
                self._device.open()
            else:
                self._device = open_device(self.device_spec, self.qm)
        return self._device

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        types = self._types(atoms)
        periodic = bool(atoms.pbc.all()) and atoms.cell.volume > 0
        want_stress = "stress" in properties or "stresses" in properties
        if want_stress and not periodic:
            raise PropertyNotImplementedError("stress needs a cell that is periodic along all three axes")
        ev = Evaluator(self.qm, self.device, self.chunk_atoms, self.strict, self.timeout, self.progress,
                       allow_below_rmin=self.allow_below_rmin, native=self.native)
        # A cell with NaN or inf goes through, to be named in the error (its "volume" is not > 0).
        cell = atoms.cell.array if atoms.cell.volume > 0 or not np.isfinite(atoms.cell.array).all() else None
        res = ev.compute(atoms.positions, cell, atoms.pbc, types, atomic_virial="stresses" in properties)
        self.results = {"energy": res.energy, "free_energy": res.energy, "forces": res.forces,
                        "energies": res.atomic_energies}
        if periodic:
            vol = atoms.cell.volume
            # stress = (1/V) dE/d(strain) = -virial / V
            self.results["stress"] = full_3x3_to_voigt_6_stress(-res.virial / vol)
            if res.atomic_virial is not None:
                self.results["stresses"] = np.array([full_3x3_to_voigt_6_stress(-w / vol) for w in res.atomic_virial])
        self.last_result = res

    def _types(self, atoms) -> np.ndarray:
        """Model types by atomic number through one lookup table (a per-symbol Python loop costs more
        than the native core's whole evaluation); an element outside the type map is named as
        map_types names it."""
        lut = np.full(len(chemical_symbols), -1, dtype=np.int64)
        for t, element in enumerate(self.qm.config.type_map):
            if element in atomic_numbers:
                lut[atomic_numbers[element]] = t
        types = lut[atoms.numbers]
        if (types < 0).any():
            return map_types(atoms.get_chemical_symbols(), self.qm.config.type_map)  # raises, naming the atom
        return types

    def close(self):
        if self._device is not None:
            self._device.close()
            self._device = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass
