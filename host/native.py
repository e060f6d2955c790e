"""The native host core (host/native/, C++17): built on first use, loaded as a Python extension, and
compiled into the LAMMPS plugin from the same sources with the same flags.

    from host import native
    native.available()            # True when the extension is built or can be built here
    native.module()               # the extension (pybind11): Model, Device, evaluate_*; builds if needed
    native.host_model_text(qm)    # what the C++ core reads of a model file (HostModel::parse)
    native.open_device("zero", qm)          # an in-process device (zero, cpu, xdma:PREFIX, rtl)
    native.open_device("cpu", qm, threads=2)  # the bit-exact pipeline on this machine's cores

host.evaluate.Evaluator uses the core when it is available (native=None) and the Python path, the
readable specification, with native=False: both give the same integers (tests/host/test_native.py).

The extension is compiled into a per-user cache keyed by every source and header it includes, the
compiler, the flags and the Python version, and moved into place atomically.  CXXFLAGS hold
-ffp-contract=off: the core uses floating point only where the Python path does, in the same order of
operations, and a fused multiply-add would round differently.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tempfile
from functools import cache, lru_cache
from pathlib import Path

from contract.paths import INCLUDE_DIR

SOURCE_DIR = Path(__file__).resolve().parent / "native"
NATIVE_INCLUDE = SOURCE_DIR / "include"
#: The core and its in-process devices: compiled into the Python extension and into the LAMMPS plugin.
CORE_SOURCES = ("core.cpp", "records.cpp", "cells.cpp", "devices.cpp", "zero.cpp", "cpu.cpp", "xdma.cpp", "rtl.cpp")
BINDING_SOURCE = "python.cpp"
MODULE_NAME = "_dpfpga_native"
#: One set of flags for every build of the core (extension, plugin, sanitizer tests).  -O3 vectorizes the
#: core's per-record loops (and their AVX2 clones, target_clones); -fno-trapping-math lets it do so where
#: a loop has a comparison or conversion (the results are the same: no FP exception flag is read).
CXXFLAGS = ("-std=c++17", "-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math", "-Wall", "-Wextra",
            "-pthread")
#: DPFPGA_NATIVE_SANITIZE=1 builds (and caches separately) the extension with these as well; run Python
#: with LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
#: ASAN_OPTIONS=detect_leaks=0 to use it (libstdc++ preloaded too: else ASan cannot intercept a C++ throw).
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined")


def build_flags() -> tuple[str, ...]:
    return CXXFLAGS + (SANITIZE_FLAGS if os.environ.get("DPFPGA_NATIVE_SANITIZE") == "1" else ())


class NativeBuildError(RuntimeError):
    """The native core cannot be built here (no compiler, no pybind11, a compile error)."""


def compiler() -> str:
    import shutil
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise NativeBuildError("no C++ compiler (g++) found; install one (Debian: apt-get install g++)")
    return cxx


def include_flags() -> list[str]:
    """-I for the core's headers and the contract's generated ones (dpfpga/wire.h, regs.h, protocol.h)."""
    return [f"-I{NATIVE_INCLUDE}", f"-I{INCLUDE_DIR}"]


def core_source_paths() -> list[Path]:
    return [SOURCE_DIR / s for s in CORE_SOURCES]


def source_digest(extra: tuple[str, ...] = ()) -> hashlib._Hash:
    """A hash over every native source and header, the contract's headers, the compiler and the flags."""
    h = hashlib.sha256()
    for path in sorted(SOURCE_DIR.rglob("*")) + sorted(INCLUDE_DIR.rglob("*.h")):
        if path.is_file() and path.suffix in (".cpp", ".h"):
            h.update(path.as_posix().encode() + b"\0" + path.read_bytes())
    cxx = compiler()
    try:
        h.update(subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.encode())
    except (OSError, subprocess.TimeoutExpired):
        h.update(cxx.encode())
    h.update(" ".join(build_flags() + extra).encode())
    return h


def cache_root() -> Path:
    """$DPFPGA_CACHE/native, else $XDG_CACHE_HOME (or ~/.cache)/dpfpga/native."""
    if os.environ.get("DPFPGA_CACHE"):
        return Path(os.environ["DPFPGA_CACHE"]) / "native"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dpfpga" / "native"


def _pybind11_include() -> str:
    try:
        import pybind11
    except ImportError:
        raise NativeBuildError("pybind11 is not installed (pip install pybind11)") from None
    return pybind11.get_include()


def extension_path() -> Path:
    py = f"{sys.implementation.cache_tag}-{sysconfig.get_config_var('EXT_SUFFIX')}"
    key = source_digest((py,)).hexdigest()[:16]
    return cache_root() / key / (MODULE_NAME + sysconfig.get_config_var("EXT_SUFFIX"))


def build(force: bool = False, quiet: bool = True) -> Path:
    """The extension for these sources: compiled now (about a minute) unless the cache has it."""
    target = extension_path()
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler(), *build_flags(), "-fPIC", "-shared", "-fvisibility=hidden", *include_flags(),
           f"-I{_pybind11_include()}", f"-I{sysconfig.get_paths()['include']}",
           str(SOURCE_DIR / BINDING_SOURCE), *map(str, core_source_paths()), "-o", tmp]
    if not quiet:
        print(f"building the native host core: {' '.join(cmd)}", file=sys.stderr)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise NativeBuildError(f"compiling the native host core failed ({' '.join(cmd)}):\n{r.stderr[-4000:]}")
        os.replace(tmp, target)  # atomic: processes building at once each install a complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@cache
def module():
    """The extension module, built on first use (NativeBuildError says why it cannot be)."""
    if os.environ.get("DPFPGA_NATIVE") == "0":
        raise NativeBuildError("the native core is switched off (DPFPGA_NATIVE=0)")
    path = build()
    loader = importlib.machinery.ExtensionFileLoader(MODULE_NAME, str(path))
    spec = importlib.util.spec_from_file_location(MODULE_NAME, str(path), loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


@cache
def available() -> bool:
    """True when the extension loads (building it now if needed); the reason it does not: `why_not()`.
    The first time it does not, a warning says why (the Python path then does the work: the same numbers,
    slower), unless the core was switched off on purpose (DPFPGA_NATIVE=0)."""
    try:
        module()
        return True
    except (NativeBuildError, ImportError, OSError) as e:
        if os.environ.get("DPFPGA_NATIVE") != "0":
            import warnings
            warnings.warn(f"dpfpga: the native host core is not available, the Python path runs instead: "
                          f"{str(e)[-2000:]}", RuntimeWarning, stacklevel=2)
        return False


def record_kernels(vector: bool | None = None) -> str:
    """Which build of the core's per-pair kernels (host/native/records.h) runs in this process:
    "avx512" (8 pairs per step, on CPUs with AVX-512 F, DQ and VL) or "portable".  `vector=False`
    switches to the portable build, `True` back (tests compare the two: the same bits); the build that
    ran before is returned.  The LAMMPS plugin's core runs the build its CPU allows."""
    return module().record_kernels(vector)


def why_not() -> str:
    try:
        module()
        return ""
    except (NativeBuildError, ImportError, OSError) as e:
        return str(e)


# ---- what the core reads of a model file --------------------------------------------------------------

def host_model_text(qm, pipeline: bool = False) -> str:
    """The model constants the host core needs, one `key value...` line each (HostModel::parse reads it;
    floats in Python's repr, which strtod reads back exactly).  `pipeline`: also every integer of the
    fixed-point pipeline (formats, tables, fitting weights: `pipeline_*` lines, host/native/pipeline.h),
    which the cpu device computes with (about 2 MB of text for the bundled models)."""
    from contract.config import require_options
    from contract.modelfile import content_hash
    cfg, F = qm.config, qm.formats
    if pipeline:  # the host core's own work (neighbours, records, fold) is the same with every option
        require_options(cfg, "cpu")
    coord = F["coord"]
    seen = qm.provenance.get("r_min", {}).get("training_min_distance") or 0.0
    lines = [
        "dpfpga-host-model 1",
        f"hash {content_hash(qm)}",
        f"ntypes {cfg.ntypes}",
        "type_map " + " ".join(cfg.type_map),
        "sel " + " ".join(str(int(s)) for s in cfg.sel),
        f"rcut {float(cfg.rcut)!r}",
        f"coord_frac {coord.frac}",
        f"coord_lo {coord.lo}",
        f"coord_hi {coord.hi}",
        f"coord_max_value {float(coord.max_value)!r}",
        f"coord_describe {coord.describe()}",
        f"table_x_min {int(qm.table_s.x_min)}",
        f"r_min {float(cfg.r_min)!r}",
        f"training_min_distance {float(seen)!r}",
        f"energy_frac {F['E'].frac}",
        f"force_frac {F['F'].frac}",
        "energy_bias " + " ".join(str(int(b)) for b in qm.energy_bias),
    ]
    if pipeline:
        lines += pipeline_lines(qm)
    lines.append("end")
    return "\n".join(lines) + "\n"


def pipeline_lines(qm) -> list[str]:
    """The `pipeline_*` lines of the host model text: the model file's integers, unchanged."""
    import numpy as np
    cfg = qm.config

    def ints(a) -> str:
        return " ".join(map(str, np.asarray(a, dtype=np.int64).ravel().tolist()))

    def fmt(f) -> str:
        return f"{f.bits} {f.frac} {int(f.signed)}"

    lines = [f"pipeline_config {cfg.m1} {cfg.axis_neurons} {cfg.norm_shift} {cfg.desc_shift}"]
    if cfg.options():  # the cpu device computes each option it knows and refuses any other by name
        lines.append("pipeline_options " + " ".join(sorted(cfg.options())))
    lines += [f"pipeline_format {name} {fmt(f)}" for name, f in sorted(qm.formats.items())]
    tables = [("s", qm.table_s), ("h", qm.table_h)] + [(f"g{t}", g) for t, g in enumerate(qm.table_g)]
    if qm.table_act is not None:
        tables.append(("act", qm.table_act))
    for name, t in tables:
        lines.append(f"pipeline_table {name} {t.x_frac} {t.seg_shift} {t.xi_bits} {t.x_min} {t.nseg} {t.nch} "
                     f"{fmt(t.coef_fmt)} {fmt(t.out_fmt)} {fmt(t.dout_fmt)}")
        if t.first_seg:
            lines.append(f"pipeline_table_first_seg {name} {t.first_seg}")
        lines.append(f"pipeline_table_coef {name} {ints(t.coef)}")
    if cfg.pad_slots:
        from model.reference import padding_products
        pad = padding_products(qm)
        lines += [f"pipeline_pad {ct} {t} {ints(pad[ct, t, 0])}" for ct in range(cfg.ntypes) for t in range(cfg.ntypes)]
    for t, layers in enumerate(qm.fit):
        for k, layer in enumerate(layers):
            lines.append(f"pipeline_layer {t} {k} {layer.W.shape[0]} {layer.W.shape[1]} {layer.wfrac} "
                         f"{int(layer.resnet)}")
            lines.append(f"pipeline_layer_w {t} {k} {ints(layer.W)}")
            lines.append(f"pipeline_layer_b {t} {k} {ints(layer.b)}")
        lines.append(f"pipeline_out {t} {qm.out_wfrac[t]} {ints(qm.out_w[t])}")
    return lines


def rtl_harness(qm, lanes: int = 1) -> Path:
    """The standalone Verilator harness of the model's pipeline (host/devices/rtl.py's knobs), built if
    needed: what `rtl:HARNESS` runs in-process."""
    from gen.ir import Knobs
    from sim import runner, standalone
    return standalone.build_harness(runner.pipeline_verilog(qm, Knobs(lanes=lanes, fit_par=2, desc_par=4)))


# ---- evaluation through the core (host.evaluate.Evaluator with native on) ------------------------------

class NativeDevice:
    """An in-process device of the native core (zero, xdma:PREFIX[,PREFIX...], rtl:HARNESS) as a Python
    device (host/devices/base.py): usable by both paths; the native path drives it without the GIL."""

    depth = 2

    def __init__(self, spec: str, qm, lanes: int = 1, timeout: float = 60.0, node_rank: int = 0,
                 stall_cycles: int = 5_000_000, threads: int = 0):
        self.qm, self.spec = qm, spec
        # The cpu device computes with the pipeline's constants: the text that carries them (~2 MB).
        model = model_of(qm, pipeline=spec.partition(":")[0] == "cpu")
        self.handle = _call(module().open_device, spec, model, lanes=lanes, timeout=timeout,
                            node_rank=node_rank, stall_cycles=stall_cycles, threads=threads)
        self.name, self.lanes, self.depth = self.handle.name, self.handle.lanes, self.handle.depth
        self.model_hash = qm.hash

    def open(self) -> None:  # opened on construction
        pass

    def submit(self, beats, n_atoms: int) -> None:
        import numpy as np
        _call(self.handle.submit, np.ascontiguousarray(beats, dtype=np.uint64), int(n_atoms))

    def collect(self, timeout: float | None = None):
        return _call(self.handle.collect, timeout)

    def run(self, beats, n_atoms: int, timeout: float | None = None):
        self.submit(beats, n_atoms)
        return self.collect(timeout)

    def begin(self) -> None:
        _call(self.handle.begin)

    def end(self) -> None:
        _call(self.handle.end)

    def describe(self) -> str:
        return f"{self.handle.describe()} (native), model {self.model_hash[:12]}"

    def close(self) -> None:
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_device(spec: str, qm, **options) -> NativeDevice:
    """An in-process native device: `zero`, `cpu` (the bit-exact pipeline on this machine's cores;
    `threads=N`, default the cores this process may use; `cpu:generic`: portable kernels, `cpu:int64`: D
    and dGR in int64 for every atom, options joined by commas),
    `xdma:PREFIX[,PREFIX...]` or `rtl` (its harness is built here, `host.native.rtl_harness`) /
    `rtl:HARNESS`."""
    if spec == "rtl":
        spec = f"rtl:{rtl_harness(qm, options.get('lanes', 1))}"
    return NativeDevice(spec, qm, **options)


@lru_cache(maxsize=8)
def _model_for_text(text: str):
    return module().Model(text)


def model_of(qm, pipeline: bool = False):
    """The core's HostModel of a model (parsed once per model); `pipeline`: with the pipeline's constants
    (what the cpu device needs)."""
    return _model_for_text(host_model_text(qm, pipeline=pipeline))


def _errors() -> dict:
    from contract.modelfile import ModelFileError
    from model.assembly import CloseContactError, DeviceFlagError, InputRangeError
    from model.neighbors import NeighborOverflowError, StructureError

    from .devices import DeviceError, DeviceTimeout
    return {"StructureError": StructureError, "NeighborOverflowError": NeighborOverflowError,
            "InputRangeError": InputRangeError, "CloseContactError": CloseContactError,
            "DeviceFlagError": DeviceFlagError, "KeyError": KeyError, "DeviceError": DeviceError,
            "DeviceTimeout": DeviceTimeout, "ModelFileError": ModelFileError}


def _call(fn, *args, **kwargs):
    """Call into the core; its NativeError(kind, message) becomes the Python path's exception."""
    mod = module()
    try:
        return fn(*args, **kwargs)
    except mod.NativeError as e:
        kind, message = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], tuple) else e.args
        raise _errors().get(kind, RuntimeError)(message) from None


def _device_for_core(device):
    """What the core drives: a native device's handle; the zero device natively (it holds no state, and
    its Python version would cost as much as everything else); any other Python device as it is."""
    from .devices.zero import ZeroDevice
    if isinstance(device, NativeDevice):
        return device.handle
    if isinstance(device, ZeroDevice):
        return _zero(device.qm, device.lanes)
    return device


@lru_cache(maxsize=8)
def _zero_for(text: str, lanes: int):
    return module().open_device("zero", _model_for_text(text), lanes=lanes)


def _zero(qm, lanes: int):
    return _zero_for(host_model_text(qm), lanes)


def _result(ev, d: dict, atomic_virial: bool):
    """The core's integers -> host.evaluate.Result, converted exactly as the Python path converts."""
    import numpy as np

    from .evaluate import Result
    F = ev.qm.formats
    virial = np.empty((3, 3), dtype=object)
    for k, (hi, lo) in enumerate(d["virial"]):
        virial[k // 3, k % 3] = (int(hi) << 64) + int(lo)
    scale_v = 2.0 ** -(F["coord"].frac + F["F"].frac)
    forces, e_atom = d["forces"], d["e_atom"]
    return Result(
        energy=int(d["energy"]) * 2.0 ** -F["E"].frac, forces=forces * 2.0 ** -F["F"].frac,
        virial=np.array([[float(x) * scale_v for x in row] for row in virial]),
        atomic_energies=e_atom * 2.0 ** -F["E"].frac,
        atomic_virial=d["s_atom"] * (-0.5 * scale_v) if atomic_virial else None,
        energy_int=int(d["energy"]), forces_int=forces, virial_int=virial, flags=d["flags"],
        timings=dict(d["timings"]), below_rmin_records=int(d["below_rmin"]), pair_list=d.get("pair_list", ""))


def _options(ev) -> dict:
    return dict(chunk_atoms=int(ev.chunk_atoms), strict=bool(ev.strict), allow_below_rmin=bool(ev.allow_below_rmin),
                timeout=1e9 if ev.timeout is None else float(ev.timeout))


def _evaluate(ev, fn, n_centres: int, *args, **kwargs):
    """Run one core evaluation, with the Python path's progress bar (tqdm, per chunk) when asked."""
    if not ev.progress:
        return _call(fn, *args, **kwargs)
    from tqdm import tqdm
    with tqdm(total=n_centres, unit="atom", desc=f"{ev.device.name}", leave=False) as bar:
        return _call(fn, *args, progress=bar.update, **kwargs)


def evaluate_neighbors(ev, positions, types, nlocal, numneigh, neighbors, atomic_virial=False, atom_ids=None):
    """Evaluator.compute_neighbors through the core (same checks, same errors, same integers)."""
    import numpy as np

    from model.assembly import check_types

    from .neighbors import GivenNeighbors
    types = check_types(types, ev.qm.config)
    g = GivenNeighbors(positions, types, nlocal, numneigh, neighbors, ev.qm.config.rcut, ev.chunk_atoms)
    ids = None if atom_ids is None else np.ascontiguousarray(atom_ids, dtype=np.int64)
    d = _evaluate(ev, module().evaluate_neighbors, g.nlocal, model_of(ev.qm), _device_for_core(ev.device), g.x,
              np.ascontiguousarray(types, dtype=np.int32), g.nlocal, g.numneigh, g.neighbors, ids,
              atomic_virial=bool(atomic_virial), **_options(ev))
    return _result(ev, d, atomic_virial)


def evaluate_structure(ev, positions, cell, pbc, types, atomic_virial=False):
    """Evaluator.compute through the core: the structure's checks and search basis here (host.neighbors
    .frame, the Python path's own), the search, records and fold in C++."""
    import numpy as np

    from model.assembly import check_types

    from .neighbors import frame
    cfg = ev.qm.config
    types = check_types(types, cfg)
    f = frame(positions, cell, pbc, cfg.rcut, sum(cfg.sel))
    d = _evaluate(ev, module().evaluate_periodic, len(f.pos), model_of(ev.qm), _device_for_core(ev.device), f.pos,
              np.ascontiguousarray(types, dtype=np.int32), np.ascontiguousarray(f.cell, dtype=np.float64),
              np.ascontiguousarray(f.basis, dtype=np.float64), np.ascontiguousarray(f.op, dtype=np.int64),
              np.ascontiguousarray(f.origin, dtype=np.float64), [bool(p) for p in f.pbc],
              atomic_virial=bool(atomic_virial), **_options(ev))
    return _result(ev, d, atomic_virial)
