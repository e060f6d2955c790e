"""examples/GeTe/in.melt-quench as the README runs it: the same thermo output on 1 and 2 MPI ranks.

The README promises that `mpirun -np 2 lmp -in ../../examples/GeTe/in.melt-quench` gives the numbers of
one rank.  That holds only if nothing in the input depends on the domain decomposition: `velocity
create` without `loop geom` draws each rank's atoms from its own stream (step 50 potential energy
-35609.337 on 1 rank against -35609.712 on 2, before the input said `loop geom`).  The run here is the
documented input itself, shortened with its own `scale` variable (55 steps: every stage, every
physics command)."""

from __future__ import annotations

import re
import subprocess

import pytest

from contract.paths import EXAMPLE_MODEL
from host.lammps_plugin import console_script
from support import REPO

INPUT = REPO / "examples" / "GeTe" / "in.melt-quench"
TIMEOUT = 600.0  # s: each run took ~140 s on the busy 2-core machine, most of it the private service's start


def thermo_rows(screen: str) -> list[str]:
    """Every thermo line (the rows under each `Step ...` header, up to its `Loop time`)."""
    rows, inside = [], False
    for line in screen.splitlines():
        if re.match(r"\s*Step\s", line):
            inside = True
        elif line.startswith("Loop time"):
            inside = False
        elif inside and line.strip():
            rows.append(line)
    return rows


def run_example(folder, ranks: int) -> str:
    folder.mkdir()
    cmd = ([console_script("mpirun"), "-np", str(ranks)] if ranks > 1 else []) + \
        [console_script("lmp"), "-in", str(INPUT), "-var", "scale", "0.01", "-var", "model", str(EXAMPLE_MODEL)]
    try:
        p = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{ranks}-rank run did not finish in {TIMEOUT} s:\n{(e.stdout or '')[-3000:]}")
    assert p.returncode == 0, f"{ranks} ranks:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    # the outputs land in the folder LAMMPS runs in (the README's runs/melt-quench), none beside the input
    for name in ("log.lammps", "melt-quench.lammpstrj", "liquid.lammpstrj", "amorphous.lammpstrj"):
        assert (folder / name).stat().st_size > 0, name
    return p.stdout


@pytest.mark.slow
def test_the_documented_melt_quench_gives_the_same_thermo_on_1_and_2_ranks(tmp_path):
    assert "loop geom" in INPUT.read_text()
    one, two = (thermo_rows(run_example(tmp_path / f"np{n}", n)) for n in (1, 2))
    # scale 0.01: five runs of 5, 10, 10, 20 and 10 steps, thermo every step -> 5 + 55 rows
    assert len(one) == 60 and re.match(r"\s*55\s", one[-1]), one[-3:]
    assert one == two


def test_the_readme_runs_the_example_from_runs():
    """The README's folder for the example is two levels below the checkout, where the input's default
    model path (../../model/examples/...) resolves, and git ignores it."""
    readme = (REPO / "README.md").read_text()
    assert "mkdir -p runs/melt-quench && cd runs/melt-quench" in readme
    assert "mpirun -np 2 lmp -in ../../examples/GeTe/in.melt-quench" in readme
    default = re.search(r"^variable model\s+index\s+(\S+)", INPUT.read_text(), re.M).group(1)
    assert (REPO / "runs" / "melt-quench" / default).resolve() == EXAMPLE_MODEL.resolve()
