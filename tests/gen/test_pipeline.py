"""The whole generated pipeline in Amaranth's simulator against the NumPy reference (integers, ==).

Every stream runs without stalls, with random idle input cycles and with random output backpressure;
all three must give exactly the reference's integers.  The cocotb/Verilog runs of the same cases are
in tests/sim/.
"""

from __future__ import annotations

import numpy as np
import pytest

import cases
from contract import wire
from gen.ir import Design, Knobs
from gen.pipeline import Pipeline
from streams import run_stream
from support import GETE_216, require_shared, tiny_qm

MODES = {"plain": (0.0, 0.0), "idle": (0.3, 0.0), "backpressure": (0.0, 0.4)}
CONFIGS = {"L1": Knobs(lanes=1, fit_par=4, desc_par=4), "L2E2": Knobs(lanes=2, fit_par=4, desc_par=4, engines=2)}
#: arch "dataflow" (gen/stages/dataflow.py): divisor lanes, and lanes that leave some idle (pe 5, simd 40)
DATAFLOW = {"DF": Knobs.dataflow(pe=(4, 2, 8), simd=(16, 32, 8), desc_par=4, energy_simd=16),
            "DF-L2-idle-lanes": Knobs.dataflow(pe=(5, 8, 16), simd=(40, 16, 8), lanes=2, desc_par=2, energy_simd=24),
            "DF-rows1": Knobs.dataflow(pe=(4, 2, 8), simd=(16, 32, 8), desc_par=8, desc_rows=1, energy_simd=16)}


def simulate(knobs, case: cases.Case, idle: float, backpressure: float, seed: int, qm=None):
    dut = Pipeline(Design(qm or tiny_qm(), knobs))
    lanes = knobs.lanes
    beats = [sum(int(w) << (64 * l) for l, w in enumerate(b)) for b in case.beats]
    n_heads = case.n_atoms

    def finished(out):
        words = np.array([[(int(p) >> (64 * l)) & (2 ** 64 - 1) for l in range(lanes)] for p in out], dtype=np.uint64)
        if not len(words):
            return False
        k = wire.kind(words)
        heads = np.flatnonzero(k[:, 0] == wire.HEADER)
        if len(heads) < n_heads:
            return False
        n = int(wire.decode_output_header(words[heads[-1], 0])[1])
        return int((k[heads[-1] + 1:] == wire.RECORD).sum()) >= n

    out, cycles, _ = run_stream(dut, beats, n_out=10 ** 9, idle=idle, backpressure=backpressure, seed=seed,
                             done=finished)
    words = np.array([[(int(p) >> (64 * l)) & (2 ** 64 - 1) for l in range(lanes)] for p in out], dtype=np.uint64)
    assert_framing(words, lanes)
    return wire.decode_results(words, case.n_atoms, case.max_records), cycles


def assert_framing(words: np.ndarray, lanes: int):
    """The output is exactly one header beat and ceil(n / lanes) record beats per atom, nothing between:
    the host's readers (rtl, xdma) cut the stream that way (wire.result_beats)."""
    at = 0
    while at < len(words):
        assert wire.kind(words[at, 0]) == wire.HEADER, f"beat {at}: {int(words[at, 0]):#018x} is not a header"
        at += wire.result_beats(words[at, 0], lanes)
    assert at == len(words)


def check(result, case: cases.Case):
    energy, dEdr, flags, tags = result
    assert (energy == case.expected.energy).all()
    assert (dEdr == case.expected.dEdr).all()
    assert (flags == case.expected.flags).all()
    assert (tags == np.arange(case.n_atoms) % 4096).all()


def mixed_case(lanes: int, seed: int) -> cases.Case:
    """Random atoms, edge records and stream errors back to back in one stream."""
    qm = tiny_qm()
    return cases.concat([cases.random_atoms(qm, lanes, seed, n_atoms=2), cases.edge_atoms(qm, lanes, seed),
                         cases.stream_errors(qm, lanes, seed)])


@pytest.mark.parametrize("mode", list(MODES))
def test_mixed_stream_seed0(mode):
    """Quick run: one configuration, every kind of record and stream error, all three flow modes."""
    knobs = CONFIGS["L1"]
    case = mixed_case(knobs.lanes, 0)
    check(simulate(knobs, case, *MODES[mode], 0)[0], case)


@pytest.mark.parametrize("arch,desc_rows", [("engines", 2), ("dataflow", 1)])
def test_descriptor_rows_folded_seed2(arch, desc_rows):
    """Descriptor products folded over GR's rows (desc_rows < 4: an accumulator across the row steps of D,
    dGR's rows one block after the other) give the same integers, stalls and idle input included."""
    knobs = (Knobs(lanes=1, fit_par=8, desc_par=8, desc_rows=desc_rows) if arch == "engines" else
             DATAFLOW["DF-rows1"])
    case = mixed_case(knobs.lanes, 2)
    check(simulate(knobs, case, 0.25, 0.35, 2)[0], case)


def test_mixed_stream_two_lanes_two_engines_seed1():
    knobs = CONFIGS["L2E2"]
    case = mixed_case(knobs.lanes, 1)
    check(simulate(knobs, case, 0.25, 0.35, 1)[0], case)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1])
def test_random_atoms(config, seed, mode):
    knobs = CONFIGS[config]
    case = cases.random_atoms(tiny_qm(), knobs.lanes, seed, n_atoms=3)
    check(simulate(knobs, case, *MODES[mode], seed)[0], case)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_edge_records(config, mode):
    knobs = CONFIGS[config]
    case = cases.edge_atoms(tiny_qm(), knobs.lanes)
    check(simulate(knobs, case, *MODES[mode], 7)[0], case)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_stream_errors_flag_and_recover(mode):
    knobs = CONFIGS["L1"]
    case = cases.stream_errors(tiny_qm(), knobs.lanes)
    check(simulate(knobs, case, *MODES[mode], 3)[0], case)


@pytest.mark.shared_data
def test_gete_frame_atoms():
    require_shared(GETE_216)
    knobs = CONFIGS["L2E2"]
    case = cases.gete_atoms(tiny_qm(), knobs.lanes, n_atoms=3)
    check(simulate(knobs, case, 0.2, 0.3, 5)[0], case)


@pytest.mark.parametrize("activation", ["tanh", "tanh4"])
def test_imported_deepmd_model(activation):
    """A quantized DeePMD-kit import (env_norm: u-tables per centre type, G tables below zero; pad_slots;
    fit_activation tanh: the act table) == the reference: random atoms, edge records (exactly sel, at
    the cutoff, below r_min), stream errors, with backpressure."""
    from deepmd_graph import imported_qm
    qm, _ = imported_qm(activation)
    case = cases.concat([cases.random_atoms(qm, 1, 3, n_atoms=3), cases.edge_atoms(qm, 1, 3),
                         cases.stream_errors(qm, 1, 3)])
    result, _ = simulate(Knobs(lanes=1, fit_par=4, desc_par=2), case, 0.1, 0.3, seed=3, qm=qm)
    check(result, case)


@pytest.mark.parametrize("desc_rows", [4, 2])
def test_banded_descriptor_model(desc_rows):
    """NVNMD's banded descriptor (desc_band, with env_norm and pad_slots) == the reference through the
    engines design: DescriptorProduct selects the band's second factor per step, DescriptorGradient both
    terms per column; with GR's rows folded (desc_rows 2) both select the rows per step too."""
    import copy
    import dataclasses
    from contract import modelfile
    from deepmd_graph import imported_qm
    base = imported_qm("tanh4")[0]
    qm = dataclasses.replace(copy.deepcopy(base), config=dataclasses.replace(base.config, desc_band=True))
    qm.hash = ""
    qm.hash = modelfile.content_hash(qm)
    case = cases.concat([cases.random_atoms(qm, 1, 4, n_atoms=3), cases.edge_atoms(qm, 1, 4)])
    result, _ = simulate(Knobs(lanes=1, fit_par=4, desc_par=2, desc_rows=desc_rows), case, 0.1, 0.3, seed=4, qm=qm)
    check(result, case)
    plain = cases.concat([cases.random_atoms(base, 1, 4, n_atoms=3), cases.edge_atoms(base, 1, 4)])
    assert not np.array_equal(case.expected.energy, plain.expected.energy)  # the band is computed


# ---- arch "dataflow": the layer-pipelined fitting net, the same streams ----------------------------------
def test_dataflow_mixed_stream_seed0():
    """Quick run: every kind of record and stream error through the dataflow design, with idle input
    and backpressure together (each alone, and no stalls: -m slow, test_dataflow_streams)."""
    knobs = DATAFLOW["DF"]
    case = mixed_case(knobs.lanes, 0)
    check(simulate(knobs, case, 0.25, 0.35, 0)[0], case)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("config", list(DATAFLOW))
@pytest.mark.parametrize("seed", [1, 2], ids=lambda s: f"seed{s}")
def test_dataflow_streams(config, seed, mode):
    knobs = DATAFLOW[config]
    case = cases.concat([cases.random_atoms(tiny_qm(), knobs.lanes, seed, n_atoms=4),
                         cases.edge_atoms(tiny_qm(), knobs.lanes, seed), cases.stream_errors(tiny_qm(), knobs.lanes, seed)])
    check(simulate(knobs, case, *MODES[mode], seed)[0], case)
