"""Folding from a target (gen/folding.py, `python -m gen build --cycles-per-atom N`)."""

from __future__ import annotations

import pytest

from gen import cycles
from gen.__main__ import main
from gen.build import knob_label
from gen.folding import COST_BWD_UNIT, COST_FWD_UNIT, fold_for, layer_folding
from gen.ir import DesignError, Knobs

SHAPE = cycles.Shape()  # the bundled model's: 3 layers of 128, M1 32
GETE = 47.95  # its mean neighbour count


@pytest.mark.parametrize("target", [16, 25, 40, 70, 100, 300, 1000])
def test_every_stage_within_the_target(target):
    k = fold_for(target, SHAPE, GETE)
    stages = cycles.dataflow_stages(k, SHAPE)
    assert cycles.cycles_per_atom(GETE, k, SHAPE) <= target
    assert all(s["cycles"] <= target for s in stages.values())
    assert float(cycles.record_cycles(GETE, k.lanes)) <= target


@pytest.mark.parametrize("target", [25, 70, 300])
def test_no_stage_is_folded_less_than_needed(target):
    """SetFolding's point: each stage no faster than the target needs, so no multiplier is spent for
    nothing.  Every cheaper (pe, simd) of a layer (multipliers and output units, gen/folding.py's cost) and one
    lane fewer anywhere else misses the target."""
    k = fold_for(target, SHAPE, GETE)
    epi = cycles.DATAFLOW_EPILOGUE["fwd"]
    cost = lambda p, s: p * s + COST_FWD_UNIT * p + COST_BWD_UNIT * s  # noqa: E731
    for pe, simd in zip(k.pe, k.simd):
        cheaper = [(p, s) for p in range(1, 129) for s in range(1, 129) if cost(p, s) < cost(pe, simd)]
        assert all(cycles.matvec_cycles(-(-128 // p) * -(-128 // s), epi) > target for p, s in cheaper)
    assert k.energy_simd == 1 or cycles.matvec_cycles(-(-128 // (k.energy_simd - 1)), 0) > target
    assert k.lanes == 1 or float(cycles.record_cycles(GETE, k.lanes - 1)) > target
    # the descriptor stages: every (desc_par, desc_rows) with fewer products takes too many steps
    assert all(cycles.descriptor_steps(Knobs(desc_par=dp, desc_rows=rows), SHAPE) + 2 > target
               for dp in (1, 2, 4, 8, 16, 32) for rows in (1, 2, 4) if dp * rows < k.desc_par * k.desc_rows)


def test_the_seed_throughput_and_the_fast_design():
    """The two builds of the report: 70 cycles/atom (the seed's 2.8e-7 s at 250 MHz) with one record lane,
    25 (1e-7 s) with two."""
    k70, k25 = fold_for(70, SHAPE, GETE), fold_for(25, SHAPE, GETE)
    assert (k70.lanes, k25.lanes) == (1, 2)
    # descriptor stages: 70 folds GR's rows by 2 (64 steps), 25 takes 2 columns of all 4 rows (16 steps)
    assert (k70.desc_par, k70.desc_rows, k25.desc_par, k25.desc_rows) == (1, 2, 2, 4)
    assert cycles.cycles_per_atom(GETE, k70, SHAPE) == 70
    assert cycles.cycles_per_atom(GETE, k25, SHAPE) == 25
    macs = lambda k: sum(2 * p * s for p, s in zip(k.pe, k.simd)) + k.energy_simd  # noqa: E731
    # 2 x 3 layers of 128 x 128 products per atom: the MAC arrays are near the bound work / cycles
    assert 6 * 128 * 128 / 70 <= macs(k70) <= 1.25 * 6 * 128 * 128 / 70
    assert 6 * 128 * 128 / 25 <= macs(k25) <= 1.25 * 6 * 128 * 128 / 25


@pytest.mark.parametrize("args,message", [
    ((1, SHAPE, GETE), "the record stages take at least 2 cycles per atom"),
    ((0, SHAPE, GETE), "--cycles-per-atom must be a positive integer, got 0"),
    ((70, SHAPE, None), "--cycles-per-atom needs the mean neighbour count"),
    ((2, SHAPE, 1.0), "the descriptor stages take at least 3 cycles per atom"),
    ((5, SHAPE, 1.0), "no folding of a 128x128 fitting layer reaches 5 cycles per atom"),
])
def test_unreachable_targets_say_why(args, message):
    with pytest.raises(DesignError, match=message):
        fold_for(*args)


def test_layer_folding_prefers_the_fewest_multipliers():
    assert layer_folding(128, 128, 16384) == (1, 1)
    pe, simd = layer_folding(128, 128, 64)
    assert -(-128 // pe) * -(-128 // simd) <= 64
    with pytest.raises(DesignError, match="no folding of a 128x128 fitting layer reaches 3 cycles"):
        layer_folding(128, 128, 3)


def test_knob_label_names_the_folding():
    k = Knobs.dataflow(pe=(13, 13, 13), simd=19, energy_simd=2)
    assert knob_label(k) == "L1-dp1-DF-pe13.13.13-simd19.19.19-e2"
    assert knob_label(Knobs(lanes=1, engines=13)) == "L1-fp1-dp1-E13"
    assert knob_label(Knobs.dataflow(pe=1, simd=1, desc_rows=1)) == "L1-dp1r1-DF-pe1.1.1-simd1.1.1-e1"


@pytest.mark.parametrize("argv,message", [
    (["--cycles-per-atom", "70", "--pe", "4"], "--cycles-per-atom chooses the folding: leave out --pe"),
    (["--cycles-per-atom", "70", "--lanes", "2"], "--cycles-per-atom chooses the folding: leave out --lanes"),
    (["--cycles-per-atom", "70", "--desc-rows", "4"], "--cycles-per-atom chooses the folding: leave out --desc-rows"),
    (["--cycles-per-atom", "70", "--engines", "2"], "--engines are options of --arch engines"),
    (["--pe", "4"], "--pe are options of --arch dataflow"),
    (["--arch", "dataflow", "--pe", "4,x"], "--pe takes integers separated by commas, got '4,x'"),
    (["--arch", "dataflow", "--pe", "4,4"], r"pe must give one value per fitting layer \(3\)"),
])
def test_cli_rejects_conflicting_options(argv, message, capsys):
    assert main(["build", "--no-synth", "--no-lint", "-o", "/nonexistent/never-written", *argv]) == 2
    assert message.replace("\\", "") in capsys.readouterr().err.replace("\\", "")
