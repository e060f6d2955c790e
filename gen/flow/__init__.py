"""The steps from a Design to files, shared by `python -m gen build` (gen/build.py) and the simulators.

    emit     Design -> pipeline.il + pipeline.v, cached by everything the Verilog depends on
             (gen/flow/emit.py: the only path from a model to Verilog; sim/runner.py uses it too)
    lint     verilator --lint-only -Wall over the Verilog (gen/flow/lint.py)
    synth    Yosys resource estimate for the platform's device, per module or flat (gen/flow/synth.py)
    report   throughput from the model's neighbour statistics, report.json and report.md
             (gen/flow/report.py)

gen/build.py runs them in order, with the platform's fit check and files in between.
"""

from __future__ import annotations

#: Name of the pipeline's top module in every Verilog file the flow writes.
TOP = "dpfpga_pipeline"


class BuildError(Exception):
    """A build that cannot start or go on, with a one-line reason (the CLI prints it, exit code 2)."""


def version(dist: str) -> str | None:
    """Installed version of a distribution, or None."""
    import importlib.metadata
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
