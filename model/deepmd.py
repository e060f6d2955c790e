"""DeePMD-kit models in: read a frozen TensorFlow graph without TensorFlow, check that our float model can
represent it, and build that float model (`import_graph`; `python -m model import`).

A frozen graph (`dp freeze`, a `.pb`) is a protobuf GraphDef whose Const nodes hold every weight and the
model's attributes (`model_attr/tmap`, `descrpt_attr/sel`, `descrpt_attr/t_avg`, ...,
`train_attr/training_script`: the input JSON it was trained with).  `read_graph` parses just enough
protobuf for that: no TensorFlow is needed, and nothing but numbers and strings is read.

What our float model (model/network.py) represents of DeePMD-kit: the se_a / se_e2_a energy model with
one embedding net per neighbour type (type_one_side), tanh embedding nets, per-centre-type fitting nets
with tanh or tanh4, no timestep resnet, no fparam/aparam, no type embedding, no excluded types.  DeePMD's
environment statistics (davg, dstd: one value per centre type and column kind) become the config's
env_norm option, its empty neighbour slots the pad_slots option.  DeePMD divides GR by sum(sel); our GR
carries a power of two (2**-norm_shift), so the ratio's square is folded into the first fitting layer's
weights (D is quadratic in GR).  Anything else is refused with `UnsupportedModel`, naming the graph's
field: a model we cannot compute exactly is not imported approximately.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contract.config import FIT_ACTIVATIONS, ModelConfig
from contract.wire import TYPE_BITS
from .neighbors import MAX_NEIGHBORS
from .network import DeepPot


class UnsupportedModel(ValueError):
    """A DeePMD-kit model (or a part of it) that dpfpga cannot represent; the message names the field."""


# ---- a minimal reader of a frozen TensorFlow graph's constants -----------------------------------
# GraphDef.node (1) -> NodeDef{name 1, op 2, attr 5: map<string, AttrValue>}; AttrValue.tensor (8) ->
# TensorProto{dtype 1, tensor_shape 2 {dim 2 {size 1}}, tensor_content 4, float_val 5, double_val 6,
# int_val 7, string_val 8, int64_val 10}.

def _varint(buf: bytes, i: int):
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated protobuf varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message; value: int or bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        f, w = key >> 3, key & 7
        if w == 0:
            v, i = _varint(buf, i)
        elif w == 1:
            v, i = buf[i:i + 8], i + 8
        elif w == 2:
            ln, i = _varint(buf, i)
            v, i = buf[i:i + ln], i + ln
        elif w == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {w}")
        if i > n:
            raise ValueError("truncated protobuf field")
        yield f, w, v


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_varints(v) -> list[int]:
    if isinstance(v, int):
        return [_signed64(v)]
    out, i = [], 0
    while i < len(v):
        x, i = _varint(v, i)
        out.append(_signed64(x))
    return out


_FLOATS = {1: np.float32, 2: np.float64}  # TensorFlow DataType DT_FLOAT, DT_DOUBLE
_INTS = {3: np.int32, 9: np.int64}  # DT_INT32, DT_INT64
_STRING = 7


def _tensor(buf: bytes):
    """A TensorProto's value: float64 or int64 array, str for a scalar string; None for other dtypes."""
    dtype, shape, content, vals, strings = None, [], b"", [], []
    for f, w, v in _fields(buf):
        if f == 1:
            dtype = v
        elif f == 2:
            shape = [next((x for g, _, x in _fields(d) if g == 1), 0) for g, _, d in _fields(v) if g == 2]
        elif f == 4:
            content = v
        elif f in (5, 6) and dtype in _FLOATS:
            fmt = "<f" if f == 5 else "<d"
            vals += [struct.unpack(fmt, v)[0]] if w != 2 else list(np.frombuffer(v, fmt))
        elif f in (7, 10) and dtype in _INTS:
            vals += _packed_varints(v)
        elif f == 8 and dtype == _STRING:
            strings.append(v)
    if dtype == _STRING:
        return b"".join(strings).decode("utf-8", "replace") if len(strings) <= 1 else [s.decode() for s in strings]
    if dtype in _FLOATS or dtype in _INTS:
        out_t = np.float64 if dtype in _FLOATS else np.int64
        if content:
            raw = _FLOATS.get(dtype) or _INTS[dtype]
            return np.frombuffer(content, np.dtype(raw).newbyteorder("<")).astype(out_t).reshape(shape)
        a = np.array(vals, dtype=out_t)
        return np.broadcast_to(a, shape).copy() if shape else a.reshape(())
    return None


@dataclass
class Graph:
    """The constants of a frozen graph (name -> float64/int64 array or str) and its op counts."""

    path: Path
    sha256: str
    consts: dict
    ops: Counter


def read_graph(path: str | Path) -> Graph:
    path = Path(path)
    raw = path.read_bytes()
    consts, ops = {}, Counter()
    try:
        for f, _, node in _fields(raw):
            if f != 1:
                continue
            name = op = None
            tensor = None
            for g, _, v in _fields(node):
                if g == 1:
                    name = v.decode()
                elif g == 2:
                    op = v.decode()
                elif g == 5:  # attr map entry {key 1, value 2}
                    entry = dict((h, x) for h, _, x in _fields(v))
                    if entry.get(1) == b"value":
                        tensor = next((x for h, _, x in _fields(entry[2]) if h == 8), None)
            ops[op] += 1
            if op == "Const" and tensor is not None:
                a = _tensor(tensor)
                if a is not None:
                    consts[name] = a
    except (ValueError, UnicodeDecodeError, IndexError) as e:
        raise UnsupportedModel(f"{path}: not a readable frozen TensorFlow graph (GraphDef protobuf): {e}; "
                               "(an NVNMD hardware file, nvnmd_qnn/model.pb, is no graph: not supported)") from None
    if not ops:
        raise UnsupportedModel(f"{path}: no graph nodes: not a frozen TensorFlow graph")
    return Graph(path=path, sha256=hashlib.sha256(raw).hexdigest(), consts=consts, ops=ops)


def read_constants(path: str | Path) -> dict[str, np.ndarray]:
    """The float constants of a frozen graph (every weight), by node name."""
    return {k: v for k, v in read_graph(path).consts.items() if isinstance(v, np.ndarray) and v.dtype == np.float64}


# ---- what the graph is, and whether we can represent it ------------------------------------------

#: Descriptor names DeePMD-kit gives the one descriptor we represent.
SE_A = ("se_a", "se_e2_a")
#: The op that computes se_a's environment matrix; any other ProdEnvMat* is another descriptor.
SE_A_OP = "ProdEnvMatA"


def _refuse(g: Graph, field: str, why: str):
    raise UnsupportedModel(f"{g.path}: {field}: {why}")


def _need(g: Graph, name: str):
    if name not in g.consts:
        _refuse(g, name, "missing from the graph (not a DeePMD-kit se_a energy model, or a compressed one "
                         "whose embedding nets were replaced by tables)")
    return g.consts[name]


def describe(g: Graph) -> dict:
    """The se_a energy model in `g` as plain values, or UnsupportedModel naming the first field we
    cannot represent."""
    script_text = _need(g, "train_attr/training_script")
    try:
        script = json.loads(script_text)
        model = script["model"]
        desc, fit = model["descriptor"], model["fitting_net"]
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        _refuse(g, "train_attr/training_script", f"not a DeePMD-kit input with model.descriptor and "
                                                 f"model.fitting_net ({e})")
    model_type = _need(g, "model_attr/model_type")
    if model_type != "ener":
        _refuse(g, "model_attr/model_type", f"{model_type!r}: only energy models ('ener') are supported")
    dtype = desc.get("type")
    if dtype not in SE_A:
        _refuse(g, "model.descriptor.type", f"{dtype!r}: only {' / '.join(SE_A)} is supported")
    others = sorted(op for op in g.ops if op.startswith("ProdEnvMat") and op != SE_A_OP)
    if others or SE_A_OP not in g.ops:
        _refuse(g, "graph ops", f"the environment op is {others or 'absent'}, se_a computes {SE_A_OP}")
    if "type_embedding" in model or any(k.startswith("type_embed_net") for k in g.consts):
        _refuse(g, "model.type_embedding", "type embedding is not supported (one embedding net per neighbour "
                                           "type only)")
    for key in ("use_srtab", "spin"):
        if model.get(key):
            _refuse(g, f"model.{key}", f"{model[key]!r} is not supported")
    for name in ("fitting_attr/dfparam", "fitting_attr/daparam"):
        if int(g.consts.get(name, 0)) != 0:
            _refuse(g, name, f"{int(g.consts[name])}: frame/atomic parameters (fparam/aparam) are not supported")
    for key in ("numb_fparam", "numb_aparam"):
        if fit.get(key, 0):
            _refuse(g, f"model.fitting_net.{key}", f"{fit[key]}: fparam/aparam are not supported")
    if fit.get("type", "ener") != "ener":
        _refuse(g, "model.fitting_net.type", f"{fit['type']!r}: only 'ener' fitting is supported")
    if fit.get("atom_ener"):
        _refuse(g, "model.fitting_net.atom_ener", f"{fit['atom_ener']!r}: fixed atomic energies are not supported")
    if not desc.get("type_one_side", False):
        _refuse(g, "model.descriptor.type_one_side", "false (one embedding net per centre and neighbour type "
                                                     "pair) is not supported; only type_one_side = true")
    if desc.get("exclude_types"):
        _refuse(g, "model.descriptor.exclude_types", f"{desc['exclude_types']!r}: excluded type pairs are not "
                                                     "supported")
    for part, d in (("descriptor", desc), ("fitting_net", fit)):
        if d.get("resnet_dt", False):
            _refuse(g, f"model.{part}.resnet_dt", "true (a timestep on resnet layers) is not supported")
    act_desc = desc.get("activation_function", "tanh")
    if act_desc != "tanh":
        _refuse(g, "model.descriptor.activation_function", f"{act_desc!r}: the embedding nets must use tanh")
    act_fit = fit.get("activation_function", "tanh")
    if act_fit not in FIT_ACTIVATIONS:
        _refuse(g, "model.fitting_net.activation_function", f"{act_fit!r}: one of {list(FIT_ACTIVATIONS)} only")

    type_map = str(_need(g, "model_attr/tmap")).split()
    ntypes = int(_need(g, "descrpt_attr/ntypes"))
    if ntypes != len(type_map):
        _refuse(g, "descrpt_attr/ntypes", f"{ntypes} types but model_attr/tmap names {type_map}")
    if ntypes > 1 << TYPE_BITS:
        _refuse(g, "descrpt_attr/ntypes", f"{ntypes} types; the hardware takes at most {1 << TYPE_BITS}")
    sel = [int(x) for x in np.ravel(_need(g, "descrpt_attr/sel"))]
    if len(sel) != ntypes:
        _refuse(g, "descrpt_attr/sel", f"{sel}: one entry per type expected ({ntypes})")
    if sum(sel) > MAX_NEIGHBORS:
        _refuse(g, "descrpt_attr/sel", f"{sel}: {sum(sel)} neighbours per atom; the hardware takes at most "
                                       f"{MAX_NEIGHBORS}")
    rcut = float(_need(g, "descrpt_attr/rcut"))
    if abs(rcut - float(desc.get("rcut", rcut))) > 1e-12:
        _refuse(g, "descrpt_attr/rcut", f"{rcut} differs from the training script's {desc['rcut']}")
    nnei = sum(sel)
    avg = np.asarray(_need(g, "descrpt_attr/t_avg"), dtype=np.float64)
    std = np.asarray(_need(g, "descrpt_attr/t_std"), dtype=np.float64)
    if avg.shape != (ntypes, nnei * 4) or std.shape != avg.shape:
        _refuse(g, "descrpt_attr/t_avg", f"shape {avg.shape} / t_std {std.shape}, expected ({ntypes}, {nnei * 4})")
    avg, std = avg.reshape(ntypes, nnei, 4), std.reshape(ntypes, nnei, 4)
    # Our env_norm has one number per centre type and column kind: DeePMD's statistics are that (the
    # same in every slot, zero mean for the x, y, z columns, one std for the three), checked here.
    if not (np.array_equal(avg, np.broadcast_to(avg[:, :1], avg.shape))
            and np.array_equal(std, np.broadcast_to(std[:, :1], std.shape))):
        _refuse(g, "descrpt_attr/t_avg", "statistics that differ between neighbour slots of a centre type")
    if np.any(avg[:, 0, 1:] != 0):
        _refuse(g, "descrpt_attr/t_avg", "a non-zero mean of the x, y, z columns")
    if np.any(std[:, 0, 1] != std[:, 0, 2]) or np.any(std[:, 0, 1] != std[:, 0, 3]):
        _refuse(g, "descrpt_attr/t_std", "different std for the x, y, z columns")
    if np.any(std[:, 0] <= 0):
        _refuse(g, "descrpt_attr/t_std", "a std that is not positive")

    emb_neurons = desc.get("neuron")
    embed = []
    for tj in range(ntypes):
        layers = [(_need(g, f"filter_type_all/matrix_{k}_{tj}"), _need(g, f"filter_type_all/bias_{k}_{tj}"))
                  for k in range(1, len(emb_neurons) + 1)]
        embed.append(layers)
    got = [int(W.shape[1]) for W, _ in embed[0]]
    if got != list(emb_neurons) or embed[0][0][0].shape[0] != 1:
        _refuse(g, "filter_type_all/matrix_*", f"embedding widths {got} do not match model.descriptor.neuron "
                                               f"{emb_neurons}")
    axis = int(desc.get("axis_neuron", 4))
    fit_neurons = list(fit.get("neuron", [120, 120, 120]))
    fitting = []
    for ti in range(ntypes):
        layers = [(_need(g, f"layer_{k}_type_{ti}/matrix"), _need(g, f"layer_{k}_type_{ti}/bias"))
                  for k in range(len(fit_neurons))]
        layers.append((_need(g, f"final_layer_type_{ti}/matrix"), _need(g, f"final_layer_type_{ti}/bias")))
        fitting.append(layers)
    if fitting[0][0][0].shape[0] != emb_neurons[-1] * axis:
        _refuse(g, "layer_0_type_0/matrix", f"input width {fitting[0][0][0].shape[0]} is not M1 x axis_neuron = "
                                            f"{emb_neurons[-1]} x {axis}")
    norm = g.consts.get("filter_type_all/truediv/y")  # se_a's 1/nnei on GR, where the graph names it
    if norm is not None and float(norm) != nnei:
        _refuse(g, "filter_type_all/truediv/y", f"GR divided by {float(norm)}, not sum(sel) = {nnei}")
    return {
        "type_map": type_map, "sel": sel, "rcut": rcut, "rcut_smth": float(desc["rcut_smth"]),
        "embed_neurons": list(emb_neurons), "axis_neurons": axis, "fit_neurons": fit_neurons,
        "fit_activation": act_fit, "s_avg": avg[:, 0, 0].tolist(), "s_std": std[:, 0, 0].tolist(),
        "r_std": std[:, 0, 1].tolist(), "embed": embed, "fitting": fitting, "descriptor_type": dtype,
        "original_sel": [int(x) for x in np.ravel(g.consts.get("descrpt_attr/original_sel", sel))],
        "min_nbor_dist": float(g.consts["train_attr/min_nbor_dist"]) if "train_attr/min_nbor_dist" in g.consts
        else None,
        "model_version": str(g.consts.get("model_attr/model_version", "unknown")),
        "precision": {"descriptor": desc.get("precision", "default"), "fitting_net": fit.get("precision", "default")},
    }


# ---- the float model ---------------------------------------------------------------------------------

def import_graph(path: str | Path) -> tuple[DeepPot, dict]:
    """Our float model of the DeePMD-kit se_a energy model in the frozen graph at `path`, and its
    provenance record ({"import": ...}).  UnsupportedModel names what cannot be represented."""
    return model_from_graph(read_graph(path))


def model_from_graph(g: Graph) -> tuple[DeepPot, dict]:
    d = describe(g)
    return build_model(d, {"source": str(g.path.resolve()), "sha256": g.sha256,
                           "format": "DeePMD-kit frozen TensorFlow graph (GraphDef), read without TensorFlow"})


def build_model(d: dict, source: dict) -> tuple[DeepPot, dict]:
    """Our float model of the se_a energy model `d` (describe()'s plain values, from whatever file), and
    its provenance record, which starts with `source` (source, sha256, format)."""
    from .quantize import choose_r_min
    cfg = ModelConfig(type_map=d["type_map"], rcut=d["rcut"], rcut_smth=d["rcut_smth"], sel=d["sel"],
                      embed_neurons=d["embed_neurons"], axis_neurons=d["axis_neurons"], fit_neurons=d["fit_neurons"],
                      r_min=min(1.0, d["rcut_smth"] / 2),
                      env_norm={"s_avg": d["s_avg"], "s_std": d["s_std"], "r_std": d["r_std"]},
                      pad_slots=True, fit_activation=d["fit_activation"])
    # r_min: the quantizer's rule on DeePMD's recorded shortest training distance (the quantizer sets it
    # again from the calibration data's own scan).
    cfg.r_min = choose_r_min(d["min_nbor_dist"] if d["min_nbor_dist"] is not None else float("inf"), cfg)
    cfg.validate()
    model = DeepPot(cfg)
    # DeePMD: GR / sum(sel); ours: GR * 2**-norm_shift, D * 2**desc_shift.  D is quadratic in GR, so the
    # first fitting layer takes the ratio's square (exact up to float64 rounding).
    fold = (2.0 ** cfg.norm_shift / sum(cfg.sel)) ** 2 * 2.0 ** -cfg.desc_shift
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))
    with torch.no_grad():
        for tj, layers in enumerate(d["embed"]):
            for lin, (W, b) in zip(model.embed[tj].layers, layers):
                lin.weight.copy_(t(W).T)
                lin.bias.copy_(t(b))
        for ti, layers in enumerate(d["fitting"]):
            net = model.fit[ti]
            for k, (lin, (W, b)) in enumerate(zip(net.hidden, layers[:-1])):
                lin.weight.copy_(t(W).T * (fold if k == 0 else 1.0))
                lin.bias.copy_(t(b))
            W, b = layers[-1]
            net.out.weight.copy_(t(W).T)
            net.out.bias.copy_(t(b).reshape(1))
        model.bias_atom_e.zero_()  # DeePMD's atomic energy bias lives in the final layer's bias
    provenance = {"import": {
        **source,
        "model_version": d["model_version"], "descriptor": d["descriptor_type"], "type_map": d["type_map"],
        "sel": d["sel"], "original_sel": d["original_sel"], "rcut": d["rcut"], "rcut_smth": d["rcut_smth"],
        "embed_neurons": d["embed_neurons"], "axis_neurons": d["axis_neurons"], "fit_neurons": d["fit_neurons"],
        "fit_activation": d["fit_activation"], "precision": d["precision"], "min_nbor_dist": d["min_nbor_dist"],
        "options": cfg.options(),
        "folded": f"GR / sum(sel) = GR / {sum(cfg.sel)} -> GR * 2^-{cfg.norm_shift}: first fitting layer weights "
                  f"x {fold!r}",
        "energy_bias": "DeePMD's final-layer bias (its bias_atom_e included) kept as the output bias",
    }}
    return model, provenance
