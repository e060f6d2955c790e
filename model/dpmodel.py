"""DeePMD-kit v3 models in its backend-neutral format, read without DeePMD-kit: `.dp` (HDF5: the model as
JSON in the root's `json` attribute, every array a dataset it names) and `.yaml` (the same dict, arrays
inline).  DeePMD-kit writes them with `dp convert-backend MODEL.pth MODEL.dp` from a PyTorch model (and
from its other backends), so this is how models trained with its PyTorch backend come in.

The serialized dict describes the model's objects (`@class` / `@version` / `@variables`): an atomic model
("standard") of a descriptor, a fitting and the output bias.  What we represent is what model/deepmd.py
says for frozen graphs (se_e2_a, type_one_side, tanh embedding nets, tanh or tanh4 fitting, no timestep,
no fparam/aparam, no excluded types); in addition this format gives each network layer its own residual
flag, and a residual our fitting net does not have (its rule: layers after the first, equal widths) is
refused.  The atomic energy is the fitting's output plus its `bias_atom_e` plus the atomic model's
`out_bias`; both go into the final layer's bias, as the frozen-graph import does.  Anything else is
refused with UnsupportedModel, naming the field by its path in the dict.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from contract.config import FIT_ACTIVATIONS
from contract.wire import TYPE_BITS
from .deepmd import SE_A, UnsupportedModel, build_model
from .neighbors import MAX_NEIGHBORS
from .network import DeepPot

#: File suffixes of the format, and what reads them.
SUFFIXES = {".dp": "HDF5 (h5py)", ".hlo": "HDF5 (h5py)", ".yaml": "YAML (PyYAML)", ".yml": "YAML (PyYAML)"}


def _variables(obj, fetch, is_variable: bool = False):
    """DeePMD-kit's traversal: every non-None leaf under an `@variables` key, and every dict marked
    `@is_variable`, replaced by fetch(leaf)."""
    if isinstance(obj, dict):
        if obj.get("@is_variable", False):
            return fetch(obj)
        return {k: _variables(v, fetch, is_variable or k == "@variables") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_variables(v, fetch, is_variable) for v in obj]
    if obj is None or not is_variable:
        return obj
    return fetch(obj)


def read_dpmodel(path: str | Path) -> tuple[dict, str]:
    """The file's dict with its arrays in place (float64 / int64), and the file's SHA-256."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix)
    if kind is None:
        raise UnsupportedModel(f"{path}: not a DeePMD-kit native model file (suffixes {sorted(SUFFIXES)})")
    raw = path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    try:
        if kind.startswith("HDF5"):
            try:
                import h5py
            except ImportError:
                raise UnsupportedModel(f"{path}: reading DeePMD-kit's .dp files needs h5py "
                                       "(pip install 'dpfpga[deepmd]')") from None
            with h5py.File(path, "r") as f:
                data = json.loads(f.attrs["json"])
                data = _variables(data, lambda name: np.asarray(f[name][()]).copy())
        else:
            try:
                import yaml
            except ImportError:
                raise UnsupportedModel(f"{path}: reading DeePMD-kit's .yaml files needs PyYAML "
                                       "(pip install 'dpfpga[deepmd]')") from None
            with open(path) as f:
                data = yaml.safe_load(f)
            data = _variables(data, lambda v: np.asarray(v["value"], dtype=np.dtype(v["dtype"]))
                              if isinstance(v, dict) else np.asarray(v))
    except UnsupportedModel:
        raise
    except Exception as e:  # h5py/yaml/json raise many kinds on damaged input: all mean "not readable"
        raise UnsupportedModel(f"{path}: not a readable DeePMD-kit native model ({kind}): "
                               f"{type(e).__name__}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise UnsupportedModel(f"{path}: model: missing (not a DeePMD-kit native model file)")
    return data, sha


def describe_dpmodel(path: Path, data: dict) -> dict:
    """The se_e2_a energy model in `data` as model/deepmd.py describe()'s plain values, or UnsupportedModel
    naming the first field we cannot represent."""

    def refuse(field: str, why: str):
        raise UnsupportedModel(f"{path}: {field}: {why}")

    def need(d: dict, key: str, where: str):
        if not isinstance(d, dict) or key not in d:
            refuse(f"{where}.{key}", "missing (not a DeePMD-kit se_e2_a energy model)")
        return d[key]

    def array(d: dict, key: str, where: str) -> np.ndarray:
        v = need(need(d, "@variables", where), key, f"{where}.@variables")
        if v is None:
            refuse(f"{where}.@variables.{key}", "absent")
        return np.asarray(v, dtype=np.float64)

    m = data["model"]
    if m.get("type", "standard") != "standard":
        refuse("model.type", f"{m.get('type')!r}: only the standard atomic model is supported (no linear, "
                             "ZBL or pairtab combinations)")
    for key in ("atom_exclude_types", "pair_exclude_types"):
        if m.get(key):
            refuse(f"model.{key}", f"{m[key]!r}: excluded types are not supported")
    if m.get("spin"):
        refuse("model.spin", "spin models are not supported")
    desc, fit = need(m, "descriptor", "model"), need(m, "fitting", "model")
    type_map = list(need(m, "type_map", "model"))
    ntypes = len(type_map)
    if ntypes > 1 << TYPE_BITS:
        refuse("model.type_map", f"{ntypes} types; the hardware takes at most {1 << TYPE_BITS}")

    # -- the descriptor
    dtype = desc.get("type")
    if dtype not in SE_A:
        refuse("model.descriptor.type", f"{dtype!r}: only {' / '.join(SE_A)} is supported")
    if not desc.get("type_one_side", False):
        refuse("model.descriptor.type_one_side", "false (one embedding net per centre and neighbour type pair) "
                                                 "is not supported; only type_one_side = true")
    # resnet_dt is per layer here (a timestep only where a layer has a residual): network() checks idt
    for key, ok in (("exclude_types", []), ("env_protection", 0.0), ("spin", None)):
        if desc.get(key, ok) != ok:
            refuse(f"model.descriptor.{key}", f"{desc[key]!r} is not supported (only {ok!r})")
    if desc.get("env_mat", {}).get("use_exp_switch", False):
        refuse("model.descriptor.env_mat.use_exp_switch", "true: only DeePMD's polynomial switch is supported")
    if desc.get("env_mat", {}).get("protection", 0.0) != 0.0:
        refuse("model.descriptor.env_mat.protection", f"{desc['env_mat']['protection']!r} is not supported")
    if any("compress" in k for k in desc):
        refuse("model.descriptor.compress", "a compressed model (tabulated embedding) is not supported: "
                                            "convert the uncompressed one")
    if desc.get("activation_function", "tanh") != "tanh":
        refuse("model.descriptor.activation_function", f"{desc['activation_function']!r}: the embedding nets "
                                                      "must use tanh")
    sel = [int(x) for x in need(desc, "sel", "model.descriptor")]
    if len(sel) != ntypes:
        refuse("model.descriptor.sel", f"{sel}: one entry per type expected ({ntypes})")
    if sum(sel) > MAX_NEIGHBORS:
        refuse("model.descriptor.sel", f"{sel}: {sum(sel)} neighbours per atom; the hardware takes at most "
                                       f"{MAX_NEIGHBORS}")
    nnei = sum(sel)
    avg, std = array(desc, "davg", "model.descriptor"), array(desc, "dstd", "model.descriptor")
    if avg.shape != (ntypes, nnei, 4) or std.shape != avg.shape:
        refuse("model.descriptor.@variables.davg", f"shape {avg.shape} / dstd {std.shape}, expected "
                                                   f"({ntypes}, {nnei}, 4)")
    if not (np.array_equal(avg, np.broadcast_to(avg[:, :1], avg.shape))
            and np.array_equal(std, np.broadcast_to(std[:, :1], std.shape))):
        refuse("model.descriptor.@variables.davg", "statistics that differ between neighbour slots of a centre type")
    if np.any(avg[:, 0, 1:] != 0):
        refuse("model.descriptor.@variables.davg", "a non-zero mean of the x, y, z columns")
    if np.any(std[:, 0, 1] != std[:, 0, 2]) or np.any(std[:, 0, 1] != std[:, 0, 3]):
        refuse("model.descriptor.@variables.dstd", "different std for the x, y, z columns")
    if np.any(std[:, 0] <= 0):
        refuse("model.descriptor.@variables.dstd", "a std that is not positive")

    def network(net: dict, where: str, activation: str) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """A network's layers as (W (in, out), b, residual flag); refused: timesteps, other activations."""
        out = []
        for k, layer in enumerate(need(net, "layers", where)):
            at = f"{where}.layers[{k}]"
            if layer.get("use_timestep") or layer.get("@variables", {}).get("idt") is not None:
                refuse(f"{at}.idt", "a timestep on a resnet layer is not supported")
            if not layer.get("bias", True):
                refuse(f"{at}.bias", "a layer without bias is not supported")
            act = layer.get("activation_function")
            if act is not None and act.lower() not in (activation, "none", "linear"):
                refuse(f"{at}.activation_function", f"{act!r}: expected {activation}")
            out.append((array(layer, "w", at), array(layer, "b", at), bool(layer.get("resnet", False))))
        return out

    emb = need(desc, "embeddings", "model.descriptor")
    nets = need(emb, "networks", "model.descriptor.embeddings")
    if int(emb.get("ndim", 1)) != 1 or len(nets) != ntypes:
        refuse("model.descriptor.embeddings.networks", f"{len(nets)} networks of ndim {emb.get('ndim')}: one per "
                                                       f"neighbour type expected ({ntypes})")
    emb_neurons = [int(x) for x in need(desc, "neuron", "model.descriptor")]
    embed = []
    for tj, net in enumerate(nets):
        where = f"model.descriptor.embeddings.networks[{tj}]"
        layers = network(net, where, "tanh")
        widths = [int(W.shape[1]) for W, _, _ in layers]
        if widths != emb_neurons or layers[0][0].shape[0] != 1:
            refuse(f"{where}.layers", f"widths {widths} do not match model.descriptor.neuron {emb_neurons}")
        for k, (W, _, res) in enumerate(layers):
            # DeePMD's embedding residual (equal or doubled widths) is our embedding net's; a layer
            # without it where the widths would take one is not
            if not res and W.shape[1] in (W.shape[0], 2 * W.shape[0]):
                refuse(f"{where}.layers[{k}].resnet", "false on a layer whose widths take a residual: not supported")
        embed.append([(W, b) for W, b, _ in layers])
    axis = int(need(desc, "axis_neuron", "model.descriptor"))

    # -- the fitting
    if fit.get("type", "ener") != "ener" or fit.get("var_name", "energy") != "energy":
        refuse("model.fitting.type", f"{fit.get('type')!r}: only energy fitting ('ener') is supported")
    for key in ("numb_fparam", "numb_aparam", "dim_case_embd"):
        if fit.get(key, 0):
            refuse(f"model.fitting.{key}", f"{fit[key]}: frame/atomic parameters are not supported")
    for key, ok in (("exclude_types", []), ("mixed_types", False), ("atom_ener", None), ("spin", None)):
        if fit.get(key, ok) not in (ok, [] if ok is None else ok):
            refuse(f"model.fitting.{key}", f"{fit[key]!r} is not supported (only {ok!r})")
    act_fit = str(fit.get("activation_function", "tanh")).lower()
    if act_fit not in FIT_ACTIVATIONS:
        refuse("model.fitting.activation_function", f"{act_fit!r}: one of {list(FIT_ACTIVATIONS)} only")
    fnets = need(need(fit, "nets", "model.fitting"), "networks", "model.fitting.nets")
    if len(fnets) != ntypes:
        refuse("model.fitting.nets.networks", f"{len(fnets)} networks, one per centre type expected ({ntypes})")
    fit_neurons = [int(x) for x in need(fit, "neuron", "model.fitting")]
    bias_atom_e = array(fit, "bias_atom_e", "model.fitting").reshape(ntypes, -1)
    out_bias = m.get("@variables", {}).get("out_bias")
    out_bias = np.zeros((ntypes,)) if out_bias is None else np.asarray(out_bias, np.float64).reshape(-1, ntypes)[0]
    if bias_atom_e.shape[1] != 1:
        refuse("model.fitting.@variables.bias_atom_e", f"shape {bias_atom_e.shape}: one energy per type expected")
    fitting = []
    for ti, net in enumerate(fnets):
        where = f"model.fitting.nets.networks[{ti}]"
        layers = network(net, where, act_fit)
        widths = [int(W.shape[1]) for W, _, _ in layers]
        if widths != fit_neurons + [1] or layers[0][0].shape[0] != emb_neurons[-1] * axis:
            refuse(f"{where}.layers", f"widths {widths} from {layers[0][0].shape[0]} inputs: expected "
                                      f"{fit_neurons + [1]} from M1 x axis_neuron = {emb_neurons[-1] * axis}")
        for k, (W, _, res) in enumerate(layers[:-1]):
            theirs = res and W.shape[1] in (W.shape[0], 2 * W.shape[0])
            ours = k >= 1 and W.shape[1] == W.shape[0]
            if theirs != ours:
                refuse(f"{where}.layers[{k}].resnet", f"{'a' if theirs else 'no'} residual on a {W.shape[0]} -> "
                                                      f"{W.shape[1]} layer: our fitting net has one exactly on "
                                                      "equal-width layers after the first")
        if layers[-1][2] and layers[-1][0].shape[1] in (layers[-1][0].shape[0], 2 * layers[-1][0].shape[0]):
            refuse(f"{where}.layers[{len(layers) - 1}].resnet", "a residual on the output layer is not supported")
        pairs = [(W, b) for W, b, _ in layers]
        W, b = pairs[-1]
        pairs[-1] = (W, b + bias_atom_e[ti] + out_bias[ti])  # E_i = fit(D) + bias_atom_e + out_bias
        fitting.append(pairs)

    variables = data.get("@variables") or {}
    mnd = variables.get("min_nbor_dist")
    return {
        "type_map": type_map, "sel": sel, "rcut": float(need(desc, "rcut", "model.descriptor")),
        "rcut_smth": float(need(desc, "rcut_smth", "model.descriptor")),
        "embed_neurons": emb_neurons, "axis_neurons": axis, "fit_neurons": fit_neurons, "fit_activation": act_fit,
        "s_avg": avg[:, 0, 0].tolist(), "s_std": std[:, 0, 0].tolist(), "r_std": std[:, 0, 1].tolist(),
        "embed": embed, "fitting": fitting, "descriptor_type": dtype, "original_sel": sel,
        "min_nbor_dist": float(mnd) if mnd is not None else None,
        "model_version": f"{data.get('software', 'deepmd-kit')} {data.get('version', 'unknown')}",
        "precision": {"descriptor": desc.get("precision", "default"), "fitting_net": fit.get("precision", "default")},
    }


def import_dpmodel(path: str | Path) -> tuple[DeepPot, dict]:
    """Our float model of the DeePMD-kit se_e2_a energy model in the native file at `path` (.dp, .yaml), and
    its provenance record ({"import": ...}).  UnsupportedModel names what cannot be represented."""
    path = Path(path)
    data, sha = read_dpmodel(path)
    d = describe_dpmodel(path, data)
    return build_model(d, {"source": str(path.resolve()), "sha256": sha,
                           "format": f"DeePMD-kit native model ({SUFFIXES[path.suffix]}), read without DeePMD-kit",
                           "backend": data.get("backend", "unknown")})
