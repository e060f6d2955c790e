"""benchmarks/sim_speed.py: its cases hold enough atoms for a steady-state cycles/atom (it printed
"steady None cycles/atom" for a case of one atom), and a missing figure is said in words."""

from __future__ import annotations

import importlib.util

import pytest

from support import GETE_216, REPO, require_shared


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def sim_speed(monkeypatch_module):
    monkeypatch_module.syspath_prepend(str(REPO / "benchmarks"))  # its bench_common, as when run as a script
    spec = importlib.util.spec_from_file_location("sim_speed", REPO / "benchmarks" / "sim_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.shared_data
def test_a_few_records_still_give_two_atoms(sim_speed):
    from contract import modelfile
    from contract.paths import EXAMPLE_MODEL
    require_shared(GETE_216)
    qm = modelfile.load(EXAMPLE_MODEL)
    for n in (1, 40, 300):
        rec = sim_speed.gete_records(qm, n)
        records = (rec.nbr_type >= 0).sum(axis=1)
        assert len(rec) >= sim_speed.MIN_ATOMS, n
        # whole atoms up to n records, beyond it only for the minimum
        assert len(rec) == sim_speed.MIN_ATOMS or records.sum() <= n, (n, records)


def test_a_missing_steady_figure_is_said_in_words(sim_speed):
    assert sim_speed.steady_text(130.0) == "130.0 cycles/atom"
    assert "None" not in sim_speed.steady_text(None) and "n/a" in sim_speed.steady_text(None)
