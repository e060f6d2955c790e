"""The default platform: no board, the pipeline's Verilog (pipeline.v) and the report only."""

from __future__ import annotations

NAME = "verilog"
DESCRIPTION = "pipeline.v / pipeline.il, lint, resource estimate and report; no board (default)"


def check_fit(qm, design) -> dict:
    return {}  # no device: anything the generator accepts fits


def build_platform(qm, design, hdl, out, log, tools) -> dict:
    return {"files": []}
