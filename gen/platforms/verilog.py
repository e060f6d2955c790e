"""The default platform: no board, the pipeline's Verilog (pipeline.v) and the report only.

Without a device of its own, its resource estimate is for a reference device: the vu9p platform's
xcvu9p (Yosys synth_xilinx -family xcup), and the report names it as such.
"""

from __future__ import annotations

import dataclasses

from . import vu9p

NAME = "verilog"
DESCRIPTION = "pipeline.v / pipeline.il, lint, resource estimate (reference device xcvu9p) and report; no board (default)"
ESTIMATE = dataclasses.replace(vu9p.ESTIMATE, reference=True)


def check_fit(qm, design) -> dict:
    return {}  # no device: anything the generator accepts fits


def build_platform(qm, design, hdl, out, log, tools, *, neighbours=None) -> dict:
    return {"files": []}
