"""The self-check top (gen/selfcheck.py) in Amaranth's simulator, with the tiny model.

It must pass with the reference's expected beats, and fail when a single expected bit is flipped
(the atom whose beat was changed loses its LED, the other keeps it), when the pipeline sends a beat
too many, and (watchdog) when an expected beat never comes.
"""

from __future__ import annotations

import numpy as np
import pytest

from contract import wire
from gen.ir import Design, Knobs
from gen.selfcheck import SelfCheckTop, Stimulus, simulate, stimulus
from model.reference import NeighborRecords, evaluate
from support import tiny_qm

KNOBS = Knobs(lanes=1, fit_par=4, desc_par=4)


@pytest.fixture(scope="module")
def setup():
    qm = tiny_qm()
    # Two atoms, their first 6 neighbour records each: a short simulation (~600 cycles).
    return Design(qm, KNOBS), stimulus(qm, KNOBS.lanes, n_atoms=2, max_records=6)


def test_stimulus_is_the_reference_of_its_records(setup):
    design, stim = setup
    ctype, nbr_type, nbr_d, tags = wire.decode_atoms(stim.beats)
    res = evaluate(design.qm, NeighborRecords(ctype, nbr_type, nbr_d))
    energy, dEdr, flags, out_tags = wire.decode_results(stim.expected, stim.n_atoms, nbr_type.shape[1])
    assert (energy == res.energy).all() and (dEdr == res.dEdr).all() and (flags == res.flags).all()
    assert (out_tags == wire.tag_of(stim.centers)).all() and (tags == out_tags).all()
    assert list(stim.counts) == [6, 6] and (energy != 0).all()


def test_passes_with_the_reference_beats(setup):
    design, stim = setup
    r = simulate(SelfCheckTop(design, stim))
    assert r == {"done": 1, "passed": 1, "failed": 0, "timed_out": 0, "atom_ok": 0b11, "cycles": r["cycles"]}
    assert 100 < r["cycles"] < 2000


@pytest.mark.parametrize("atom,beat_in_atom,bit", [(1, 3, 7), (0, 0, 2)])
def test_one_flipped_expected_bit_fails(setup, atom, beat_in_atom, bit):
    """A record bit of atom 1 (dE/dx), then an energy bit of atom 0's header."""
    design, stim = setup
    beat = int(np.flatnonzero(stim.atom_of_beat() == atom)[beat_in_atom])
    r = simulate(SelfCheckTop(design, stim.flipped(beat, bit)))
    assert (r["done"], r["passed"], r["failed"], r["timed_out"]) == (1, 0, 1, 0)
    assert r["atom_ok"] == 0b11 & ~(1 << atom)


def test_missing_output_beat_times_out(setup):
    """One expected beat more than the pipeline sends: the watchdog ends the run as a failure."""
    design, stim = setup
    extra = np.concatenate([stim.expected, stim.expected[-1:]])
    top = SelfCheckTop(design, Stimulus(stim.beats, extra, stim.n_atoms, stim.counts, stim.centers, stim.source),
                       timeout=600)
    r = simulate(top)
    assert (r["done"], r["passed"], r["failed"], r["timed_out"]) == (1, 0, 1, 1)
    assert r["atom_ok"] == 0b01  # atom 1's (made-up) last beat never came


def test_extra_output_beat_fails(setup):
    """The pipeline sends one beat more than expected (expectation shortened by a record)."""
    design, stim = setup
    short = stim.expected[:-1]
    r = simulate(SelfCheckTop(design, Stimulus(stim.beats, short, stim.n_atoms, stim.counts, stim.centers,
                                               stim.source)))
    assert (r["done"], r["passed"], r["failed"]) == (1, 0, 1)


def test_bundled_ecp5_model_passes_at_maximum_folding():
    """What the ulx3s-85f bitstream runs (gen/platforms/ulx3s.py): model/examples/GeTe-small.npz, the
    dataflow pipeline at maximum folding, SELFCHECK_ATOMS atoms with every neighbour inside rcut
    (~4 s: 255 cycles)."""
    from contract.modelfile import load
    from contract.paths import BUNDLED_MODELS
    from gen.platforms.ulx3s import SELFCHECK_ATOMS
    qm = load(BUNDLED_MODELS / "GeTe-small.npz")
    design = Design(qm, Knobs.dataflow(pe=1, simd=1, n_layers=1, desc_rows=1))  # every knob at its most folded
    stim = stimulus(qm, 1, n_atoms=SELFCHECK_ATOMS)
    assert min(stim.counts) > 30  # whole neighbourhoods, not a cut-down stimulus
    r = simulate(SelfCheckTop(design, stim))
    ok = (1 << SELFCHECK_ATOMS) - 1
    assert r == {"done": 1, "passed": 1, "failed": 0, "timed_out": 0, "atom_ok": ok, "cycles": r["cycles"]}
    bad = simulate(SelfCheckTop(design, stim.flipped(len(stim.expected) - 1, 5)))
    assert (bad["passed"], bad["failed"]) == (0, 1)
