"""A DeePMD-kit frozen graph written by the tests (our own protobuf encoder, so that the reader in
model/deepmd.py is tested on bytes it did not write), the constants of a small se_a energy model, and
that model imported and quantized: shared by tests/model/test_deepmd.py and the host's tests."""

from __future__ import annotations

import functools
import json
import struct

import numpy as np

from support import random_structure


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload) -> bytes:
    if isinstance(payload, int):
        return _varint(num << 3) + _varint(payload)
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _tensor(value) -> bytes:
    if isinstance(value, str):
        return _field(1, 7) + _field(8, value.encode())
    a = np.asarray(value)
    shape = b"".join(_field(2, _field(1, int(n))) for n in a.shape)
    if a.dtype.kind == "f":
        if a.ndim == 0:  # a scalar as double_val, as TensorFlow writes small constants
            return _field(1, 2) + _field(2, shape) + _varint(6 << 3 | 1) + struct.pack("<d", float(a))
        return _field(1, 2) + _field(2, shape) + _field(4, a.astype("<f8").tobytes())
    if a.ndim == 0:  # int_val, negative numbers as 10-byte varints
        return _field(1, 3) + _field(2, shape) + _field(7, int(a))
    return _field(1, 3) + _field(2, shape) + _field(4, a.astype("<i4").tobytes())


def _node(name: str, op: str, value=None) -> bytes:
    body = _field(1, name.encode()) + _field(2, op.encode())
    if value is not None:
        body += _field(5, _field(1, b"value") + _field(2, _field(8, _tensor(value))))
    return _field(1, body)


def write_graph(path, consts: dict, ops=("ProdEnvMatA", "ProdForceSeA")):
    path.write_bytes(b"".join(_node(k, "Const", v) for k, v in consts.items()) + b"".join(_node(op, op) for op in ops))
    return path


def small_se_a(seed: int = 0, sel=(9, 8), emb=(2, 4), axis=2, fit=(6, 6), activation="tanh") -> dict:
    """The constants of a small DeePMD-kit se_a energy model (type_one_side), random weights."""
    rng = np.random.default_rng(seed)
    nnei, nt = sum(sel), len(sel)
    avg = np.zeros((nt, nnei, 4))
    avg[:, :, 0] = rng.uniform(0.2, 0.4, (nt, 1))
    std = np.repeat(rng.uniform(0.25, 0.4, (nt, 1, 2)), [1, 3], axis=2) * np.ones((nt, nnei, 4))
    script = {"model": {"type_map": ["A", "B"], "descriptor": {
        "type": "se_e2_a", "sel": list(sel), "rcut": 4.0, "rcut_smth": 1.5, "neuron": list(emb), "type_one_side": True,
        "axis_neuron": axis, "resnet_dt": False, "activation_function": "tanh", "exclude_types": []},
        "fitting_net": {"neuron": list(fit), "resnet_dt": False, "activation_function": activation,
                        "numb_fparam": 0, "numb_aparam": 0}}}
    c = {"train_attr/training_script": json.dumps(script), "model_attr/model_type": "ener",
         "model_attr/tmap": "A B", "model_attr/model_version": "1.1", "descrpt_attr/rcut": np.float64(4.0),
         "descrpt_attr/ntypes": np.int32(nt), "descrpt_attr/sel": np.array(sel, np.int32),
         "descrpt_attr/original_sel": np.array(sel, np.int32),
         "descrpt_attr/t_avg": avg.reshape(nt, -1), "descrpt_attr/t_std": std.reshape(nt, -1),
         "fitting_attr/dfparam": np.int32(0), "fitting_attr/daparam": np.int32(0),
         "train_attr/min_nbor_dist": np.float64(1.9), "filter_type_all/truediv/y": np.float64(nnei)}
    sizes = [1, *emb]
    for tj in range(nt):
        for k in range(1, len(sizes)):
            c[f"filter_type_all/matrix_{k}_{tj}"] = rng.normal(0, 1, (sizes[k - 1], sizes[k]))
            c[f"filter_type_all/bias_{k}_{tj}"] = rng.normal(0, 1, sizes[k])
    fsizes = [emb[-1] * axis, *fit]
    for ti in range(nt):
        for k in range(len(fit)):
            # a first layer that keeps z = W D + b of order 1 (D ~ 10 here): a fitting net that is not flat
            scale = (0.1 if k == 0 else 1.0) / np.sqrt(fsizes[k])
            c[f"layer_{k}_type_{ti}/matrix"] = rng.normal(0, scale, (fsizes[k], fsizes[k + 1]))
            c[f"layer_{k}_type_{ti}/bias"] = rng.normal(0, 1, fsizes[k + 1])
        c[f"final_layer_type_{ti}/matrix"] = rng.normal(0, 1, (fit[-1], 1))
        c[f"final_layer_type_{ti}/bias"] = np.array([-3.0 - ti])
    return c


@functools.lru_cache(maxsize=None)
def imported_qm(activation: str = "tanh"):
    """A small imported se_a model, quantized (calibrated on random structures), and its float model.
    Fitting layers as wide as the descriptor (4 x 2), as the generator needs."""
    import tempfile
    from pathlib import Path
    from model.deepmd import import_graph
    from model.quantize import quantize
    from support import as_system
    with tempfile.TemporaryDirectory() as d:
        model, prov = import_graph(write_graph(Path(d) / "m.pb", small_se_a(seed=7, sel=(16, 16), fit=(8, 8), activation=activation)))
    systems = [as_system(*random_structure(natoms=30, box=9.0, dmin=2.0, seed=k), type_map=("A", "B")) for k in range(2)]
    qm = quantize(model, systems, nframes=2)
    qm.provenance.update(prov)
    return qm, model
