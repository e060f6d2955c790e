"""The one model file: everything the reference, the RTL generator and the host need, and nothing else.

Layout: a NumPy `.npz` (zip) archive holding

* `header`: UTF-8 JSON (stored as a uint8 array) with `@class`, `@version`, the model configuration
  (type map, rcut, rcut_smth, sel, ...), every fixed-point format, the table geometries, the per-layer
  weight fraction bits, provenance (training/quantization metrics), and `hash`;
* `int/...`: the integer weights, biases and table coefficients (int64 arrays) that the hardware bakes in;
* `float/...`: the float64 weights of the trained model they came from (float32-exact values).

`hash` is the SHA-256 of the header without its `hash` field (canonical JSON) followed by every array's
name, dtype, shape and bytes in sorted name order: any change to any constant changes the hash, and the
host refuses to talk to hardware built from another model.

`load` validates everything and raises `ModelFileError` naming the file and what is wrong, for any
input: a missing, empty, truncated or corrupt file (bad zip structure, deflate data or CRC), a
directory, a single `.npy`, a member that is not a plain numeric array (object arrays are refused
unread: nothing in a model file is ever unpickled), a header that is not UTF-8 JSON, a bad hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.config import ModelConfig, require_quantizable
from contract.fixedpoint import Fmt

MODEL_CLASS = "dpfpga.QuantizedDeepPot"
MODEL_VERSION = 1


class ModelFileError(ValueError):
    """A model file that cannot be used, with the reason and the file named."""


@dataclass
class Table:
    """Piecewise-quadratic table y(x) over uniform segments of width 2**-seg_shift.

    Input x is an integer with `x_frac` fraction bits.  Segment index = (x >> (x_frac - seg_shift)) -
    first_seg (first_seg < 0: a table whose input goes below zero, e.g. a normalised s; 0 for every
    table of a model without options); xi = the next `xi_bits` bits of x (the position inside the
    segment, in [0, 1)).
    Per segment and channel the coefficients (a, b, c) give y = a + xi (b + c xi) and the
    derivative dy/dx = (b + 2 c xi) * 2**seg_shift, all in `coef_fmt`.
    Inputs below `x_min` are clamped to it (and flagged); segments past the end give y = dy = 0.
    """

    x_frac: int
    seg_shift: int
    xi_bits: int
    x_min: int
    coef: np.ndarray  # (nseg, nch, 3) int64
    coef_fmt: Fmt
    out_fmt: Fmt
    dout_fmt: Fmt
    first_seg: int = 0  # the segment of coefficient row 0 (left out of meta when 0: headers unchanged)

    @property
    def nseg(self) -> int:
        return self.coef.shape[0]

    @property
    def nch(self) -> int:
        return self.coef.shape[1]

    @property
    def index_shift(self) -> int:
        return self.x_frac - self.seg_shift

    def meta(self) -> dict:
        return {"x_frac": self.x_frac, "seg_shift": self.seg_shift, "xi_bits": self.xi_bits, "x_min": self.x_min,
                "nseg": self.nseg, "nch": self.nch, "coef_fmt": self.coef_fmt.to_dict(),
                "out_fmt": self.out_fmt.to_dict(), "dout_fmt": self.dout_fmt.to_dict(),
                **({"first_seg": self.first_seg} if self.first_seg else {})}


@dataclass
class Layer:
    """One fitting layer: y = phi(round(x @ W * 2**-wfrac) + b), W integer (n_in, n_out)."""

    W: np.ndarray  # (n_in, n_out) int64
    b: np.ndarray  # (n_out,) int64 in the Z format
    wfrac: int
    resnet: bool


@dataclass
class QuantizedModel:
    config: ModelConfig
    formats: dict[str, Fmt]
    # With the env_norm option the u-tables have one channel per centre type (channel t: the normalised
    # s, h of centre type t) and G's input is that normalised s; without it, one channel each.
    table_s: Table  # u = r^2 -> s(r)
    table_h: Table  # u = r^2 -> h(r) = s / r
    table_g: list[Table]  # per neighbour type: s -> G(s), 32 channels
    fit: list[list[Layer]]  # per centre type: hidden layers
    out_w: list[np.ndarray]  # per centre type: (n_hidden,) int64
    out_wfrac: list[int]
    energy_bias: np.ndarray  # (ntypes,) int64 in formats['E'] (added by the host, not the hardware)
    float_state: dict[str, np.ndarray] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    hash: str = ""
    #: fit_activation "tanh": |z| -> tanh|z| and its derivative, one channel (None for tanh4, computed)
    table_act: Table | None = None

    # -- serialization ----------------------------------------------------------------------------
    def header(self) -> dict:
        return {
            "@class": MODEL_CLASS,
            "@version": MODEL_VERSION,
            "config": self.config.to_dict(),
            "formats": {k: v.to_dict() for k, v in sorted(self.formats.items())},
            "tables": {"s": self.table_s.meta(), "h": self.table_h.meta(),
                       "g": [t.meta() for t in self.table_g],
                       **({"act": self.table_act.meta()} if self.table_act is not None else {})},
            "fit": [[{"wfrac": l.wfrac, "resnet": l.resnet, "shape": list(l.W.shape)} for l in layers]
                    for layers in self.fit],
            "out_wfrac": list(self.out_wfrac),
            "provenance": self.provenance,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        a = {"int/table_s": self.table_s.coef, "int/table_h": self.table_h.coef,
             "int/energy_bias": self.energy_bias}
        for t, tab in enumerate(self.table_g):
            a[f"int/table_g/{t}"] = tab.coef
        if self.table_act is not None:
            a["int/table_act"] = self.table_act.coef
        for t, layers in enumerate(self.fit):
            for k, l in enumerate(layers):
                a[f"int/fit/{t}/{k}/W"] = l.W
                a[f"int/fit/{t}/{k}/b"] = l.b
            a[f"int/fit/{t}/out"] = self.out_w[t]
        for k, v in self.float_state.items():
            a[f"float/{k}"] = v
        return a


def compute_hash(header: dict, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    hd = {k: v for k, v in header.items() if k != "hash"}
    h.update(json.dumps(hd, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _file_arrays(qm: QuantizedModel) -> dict[str, np.ndarray]:
    """The arrays as the file stores them: integers as int64, floats as float64."""
    return {k: np.asarray(v).astype(np.int64 if k.startswith("int/") else np.float64) for k, v in qm.arrays().items()}


def content_hash(qm: QuantizedModel) -> str:
    """The model's hash: the one it was saved or loaded with, else the one its file would carry."""
    return qm.hash or compute_hash(qm.header(), _file_arrays(qm))


def save(qm: QuantizedModel, path: str | Path) -> str:
    """Write the model file; returns its content hash (also stored in the header)."""
    arrays = _file_arrays(qm)
    header = qm.header()
    qm.hash = header["hash"] = compute_hash(header, arrays)
    buf = {"header": np.frombuffer(json.dumps(header, indent=1).encode(), dtype=np.uint8)}
    buf.update(arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **buf)
    return qm.hash


# ---- loading and validation ---------------------------------------------------------------------

def _fail(path, msg):
    raise ModelFileError(f"{path}: {msg}")


# Everything the zip and npy layers raise on damaged bytes (zlib.error for bad deflate data,
# struct.error for short records, NotImplementedError for an unknown compression method,
# RuntimeError for an encrypted member).
_DAMAGED = (zipfile.BadZipFile, zlib.error, struct.error, EOFError, OSError, ValueError, NotImplementedError,
            RuntimeError)


class _BadMember(ValueError):
    """A member that is readable but is not what a model file holds."""


def _read_npy(data: bytes, name: str) -> np.ndarray:
    """One `.npy` member from its bytes: header parsed by numpy.lib.format, the data taken as raw
    bytes of a numeric dtype, so that nothing is ever unpickled and no allocation exceeds the bytes
    actually present.  Raises ValueError naming the member and what is wrong."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise _BadMember(f".npy format version {version} (model files are written as 1.0)")
        # numpy refuses headers over 10,000 bytes with advice to trust the file with allow_pickle: a
        # damaged length field is named here instead (a model file's headers are ~100 bytes).
        size = struct.unpack("<H" if version == (1, 0) else "<I", data[8:10 if version == (1, 0) else 12])[0]
        if size > 10_000:
            raise ValueError(f".npy header length {size} bytes (damaged: a model file's are about 100)")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
    except (ValueError, EOFError, struct.error) as e:
        raise _BadMember(f"member {name!r} is not a readable .npy array: {e}") from None
    if dtype.hasobject:
        raise _BadMember(f"member {name!r} holds Python objects (dtype {dtype}), which a model file never "
                         "contains: refused unread")
    body = memoryview(data)[f.tell():]
    want = math.prod(shape) * dtype.itemsize
    if len(body) != want:
        raise _BadMember(f"member {name!r}: {len(body)} bytes of data, its header says shape {shape} of "
                         f"{dtype} ({want} bytes)")
    return np.frombuffer(body, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _read_archive(path: Path) -> dict[str, np.ndarray]:
    """Every member of the .npz at `path`, by name without `.npy`; ModelFileError on any damage."""
    if path.is_dir():
        _fail(path, "is a directory, not a model file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        _fail(path, f"cannot be read: {e.strerror or e}")
    if not raw:
        _fail(path, "is empty (0 bytes): not a model archive")
    if raw.startswith(b"\x93NUMPY"):
        _fail(path, "is a single NumPy array (.npy), not a model archive (.npz)")
    arrays = {}
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    raise _BadMember(f"member {info.filename!r} is not a .npy array")
                key = info.filename[:-len(".npy")]
                if key in arrays:
                    raise _BadMember(f"member {info.filename!r} appears twice")
                try:
                    data = z.read(info)  # checks the CRC
                except (zlib.error, EOFError, struct.error, NotImplementedError, RuntimeError) as e:
                    raise ValueError(f"member {info.filename!r}: {e}") from None
                arrays[key] = _read_npy(data, info.filename)
    except _BadMember as e:
        _fail(path, f"not a dpfpga model archive: {e}")
    except _DAMAGED as e:
        _fail(path, f"not a readable model archive (corrupt or truncated): {e}")
    except MemoryError:
        _fail(path, "not a readable model archive: a member claims more data than fits in memory (corrupt)")
    return arrays


def load(path: str | Path) -> QuantizedModel:
    path = Path(path)
    if not path.exists():
        _fail(path, "no such model file")
    arrays = _read_archive(path)
    if "header" not in arrays:
        _fail(path, "missing 'header' entry: not a dpfpga model file")
    head = arrays.pop("header")
    if head.dtype != np.uint8 or head.ndim != 1:
        _fail(path, f"header is a {head.dtype} array of shape {head.shape}, not UTF-8 bytes")
    try:
        header = json.loads(head.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(path, f"header is not valid JSON: {e}")
    if not isinstance(header, dict):
        _fail(path, f"header is JSON {type(header).__name__}, not an object")
    if header.get("@class") != MODEL_CLASS:
        _fail(path, f"@class is {header.get('@class')!r}, expected {MODEL_CLASS!r}")
    if header.get("@version") != MODEL_VERSION:
        _fail(path, f"@version is {header.get('@version')!r}; this dpfpga reads version {MODEL_VERSION} "
                    "(re-export the model with this version)")
    stored = header.get("hash")
    actual = compute_hash(header, arrays)
    if stored != actual:
        _fail(path, f"content hash mismatch (header says {stored}, content gives {actual}): "
                    "the file was modified or damaged")
    # Content with a matching hash can still be inconsistent (written by another tool): whatever it
    # trips over is named, never a traceback.
    try:
        qm = _from_parts(header, arrays)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        _fail(path, f"inconsistent content: {e}")
    qm.hash = actual
    try:
        validate(qm)
    except (ValueError, TypeError, AttributeError, IndexError, OverflowError) as e:
        _fail(path, str(e))
    return qm


def _need(arrays, name):
    if name not in arrays:
        raise KeyError(f"missing array {name!r}")
    return arrays[name]


def _table(meta: dict, coef: np.ndarray, name: str) -> Table:
    t = Table(x_frac=int(meta["x_frac"]), seg_shift=int(meta["seg_shift"]), xi_bits=int(meta["xi_bits"]),
              x_min=int(meta["x_min"]), coef=coef.astype(np.int64), coef_fmt=Fmt.from_dict(meta["coef_fmt"]),
              out_fmt=Fmt.from_dict(meta["out_fmt"]), dout_fmt=Fmt.from_dict(meta["dout_fmt"]),
              first_seg=int(meta.get("first_seg", 0)))
    if coef.ndim != 3 or coef.shape[2] != 3 or coef.shape[0] != meta["nseg"] or coef.shape[1] != meta["nch"]:
        raise ValueError(f"table {name}: coefficient array shape {coef.shape} does not match "
                         f"(nseg={meta['nseg']}, nch={meta['nch']}, 3)")
    return t


def _from_parts(header: dict, arrays: dict) -> QuantizedModel:
    cfg = ModelConfig.from_dict(header["config"])
    formats = {k: Fmt.from_dict(v) for k, v in header["formats"].items()}
    tabs = header["tables"]
    table_g = [_table(m, _need(arrays, f"int/table_g/{t}"), f"g[{t}]") for t, m in enumerate(tabs["g"])]
    fit, out_w = [], []
    for t, layers in enumerate(header["fit"]):
        fit.append([Layer(W=_need(arrays, f"int/fit/{t}/{k}/W").astype(np.int64),
                          b=_need(arrays, f"int/fit/{t}/{k}/b").astype(np.int64),
                          wfrac=int(m["wfrac"]), resnet=bool(m["resnet"])) for k, m in enumerate(layers)])
        out_w.append(_need(arrays, f"int/fit/{t}/out").astype(np.int64))
    float_state = {k[len("float/"):]: v for k, v in arrays.items() if k.startswith("float/")}
    return QuantizedModel(
        config=cfg, formats=formats,
        table_s=_table(tabs["s"], _need(arrays, "int/table_s"), "s"),
        table_h=_table(tabs["h"], _need(arrays, "int/table_h"), "h"),
        table_g=table_g, fit=fit, out_w=out_w, out_wfrac=[int(x) for x in header["out_wfrac"]],
        energy_bias=_need(arrays, "int/energy_bias").astype(np.int64), float_state=float_state,
        provenance=header.get("provenance", {}),
        table_act=_table(tabs["act"], _need(arrays, "int/table_act"), "act") if "act" in tabs else None)


REQUIRED_FORMATS = ("coord", "W", "s", "h", "ds", "dh", "R", "G", "dG", "GR", "D", "Z", "A", "E",
                    "GA", "DELTA", "dD", "dGR", "dR", "dGj", "dS", "dH", "dU", "F")


def validate(qm: QuantizedModel) -> None:
    """Structural checks a generator or reference relies on; raises ValueError naming the problem."""
    cfg = qm.config
    cfg.validate()
    require_quantizable(cfg)
    missing = [k for k in REQUIRED_FORMATS if k not in qm.formats]
    if missing:
        raise ValueError(f"formats missing: {missing}")
    nt = cfg.ntypes
    if len(qm.table_g) != nt or len(qm.fit) != nt or len(qm.out_w) != nt or qm.energy_bias.shape != (nt,):
        raise ValueError(f"per-type sections do not match ntypes={nt}")
    act = [("act", qm.table_act)] if qm.table_act is not None else []
    for name, tab in [("s", qm.table_s), ("h", qm.table_h)] + [(f"g[{t}]", g) for t, g in enumerate(qm.table_g)] + act:
        if tab.xi_bits < 1 or tab.index_shift < tab.xi_bits:
            raise ValueError(f"table {name}: xi_bits={tab.xi_bits} must be in [1, x_frac - seg_shift]")
        if tab.x_min < tab.first_seg << tab.index_shift:
            raise ValueError(f"table {name}: x_min={tab.x_min} lies before its first segment {tab.first_seg}")
        lo, hi = tab.coef_fmt.lo, tab.coef_fmt.hi
        if tab.coef.min() < lo or tab.coef.max() > hi:
            raise ValueError(f"table {name}: coefficient outside {tab.coef_fmt.describe()}")
    u_channels = cfg.ntypes if cfg.env_norm is not None else 1
    for name, tab in (("s", qm.table_s), ("h", qm.table_h)):
        if tab.nch != u_channels:
            raise ValueError(f"table {name} has {tab.nch} channels; this model needs {u_channels} (one per centre type "
                             "with env_norm, else one)")
        if tab.first_seg != 0:
            raise ValueError(f"table {name}: first_seg={tab.first_seg}, a u-table starts at u = 0")
    if (cfg.fit_activation == "tanh") != (qm.table_act is not None):
        have = "present" if qm.table_act is not None else "absent"
        raise ValueError(f"fit_activation {cfg.fit_activation!r} and the activation table ({have}) disagree: tanh "
                         "needs the table, tanh4 has none")
    if qm.table_act is not None and (qm.table_act.nch != 1 or qm.table_act.x_frac != qm.formats["Z"].frac):
        raise ValueError(f"table act: {qm.table_act.nch} channels, input frac {qm.table_act.x_frac}; needs 1 channel "
                         f"and the Z format's {qm.formats['Z'].frac} fraction bits")
    for t, g in enumerate(qm.table_g):
        if g.nch != cfg.m1:
            raise ValueError(f"table g[{t}] has {g.nch} channels, embedding width is {cfg.m1}")
        if g.x_frac != qm.formats["s"].frac:
            raise ValueError(f"table g[{t}] input frac {g.x_frac} != s format frac {qm.formats['s'].frac}")
    for t, layers in enumerate(qm.fit):
        n_in = cfg.descriptor_dim
        for k, l in enumerate(layers):
            if l.W.ndim != 2 or l.W.shape[0] != n_in or l.b.shape != (l.W.shape[1],):
                raise ValueError(f"fit[{t}] layer {k}: weight shape {l.W.shape} / bias {l.b.shape} "
                                 f"do not chain from input width {n_in}")
            wf = Fmt(qm.formats["W"].bits, l.wfrac)
            if l.W.min() < wf.lo or l.W.max() > wf.hi:
                raise ValueError(f"fit[{t}] layer {k}: weight outside {wf.describe()}")
            n_in = l.W.shape[1]
        if qm.out_w[t].shape != (n_in,):
            raise ValueError(f"fit[{t}] output weights shape {qm.out_w[t].shape}, expected ({n_in},)")
