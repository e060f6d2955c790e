"""Lint: `verilator --lint-only -Wall` over the generated Verilog.

Amaranth's Verilog always produces a few kinds of warning (LINT_ACCEPTED, each with the reason); they
are counted but do not fail the lint.  Width warnings are off outright: Amaranth relies on Verilog's
implicit extension and truncation (hundreds of them even for small designs).  Any other warning, or
an error, fails it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from . import TOP, version

LINT_DISABLED = ("WIDTHEXPAND", "WIDTHTRUNC")
LINT_ACCEPTED = {
    "UNUSEDSIGNAL": "Amaranth keeps every named intermediate wire and unused payload field",
    "PROCASSINIT": "registers carry their reset value as a declaration initialiser",
    "CASEINCOMPLETE": "FSM/switch case statements follow a default assignment, so no latch",
    "DECLFILENAME": "all modules are in one file, pipeline.v",
    "UNDRIVEN": "unused outputs of submodules",
    "UNUSEDPARAM": "generated parameters",
}

_WARNING = re.compile(r"^%Warning-([A-Z0-9_]+):", re.M)
_ERROR = re.compile(r"^%Error", re.M)


def run_lint(verilog: Path | list, out: Path, tool: dict, log, top: str = TOP) -> dict:
    """Lint `verilog` (one file, or a list: a platform's top with its black-box stubs) with the
    Verilator in `tool` ({"exe", "env"}, gen.build.find_tools); the log goes to out/lint.log.
    Passes with no error and only accepted warnings; returns the counts for the report."""
    # Absolute: Verilator runs in `out`, and the CLI's default out (build/<stem>) is relative.
    files = [Path(f).resolve() for f in ([verilog] if isinstance(verilog, (str, Path)) else verilog)]
    cmd = [tool["exe"], "--lint-only", "-Wall", "-Wno-fatal", *(f"-Wno-{w}" for w in LINT_DISABLED),
           "--top-module", top, *map(str, files)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=tool["env"], cwd=out)
    text = p.stdout + p.stderr
    (out / "lint.log").write_text(" ".join(cmd) + "\n" + text)
    by_code: dict[str, int] = {}
    for code in _WARNING.findall(text):
        by_code[code] = by_code.get(code, 0) + 1
    unexpected = {c: n for c, n in by_code.items() if c not in LINT_ACCEPTED}
    errors = len(_ERROR.findall(text))
    passed = p.returncode == 0 and errors == 0 and not unexpected
    log(f"      {'passed' if passed else 'FAILED'}: {sum(by_code.values())} warnings "
        f"({', '.join(f'{c} {n}' for c, n in sorted(by_code.items())) or 'none'}), {errors} errors")
    return {"tool": "verilator " + (version("verilator") or "?"), "passed": passed,
            "warnings": sum(by_code.values()), "errors": errors, "by_code": dict(sorted(by_code.items())),
            "unexpected": unexpected, "accepted": {c: LINT_ACCEPTED[c] for c in sorted(by_code) if c in LINT_ACCEPTED},
            "disabled": list(LINT_DISABLED), "command": " ".join(cmd[1:]), "log": str((out / "lint.log").resolve())}


def skipped(why: str) -> dict:
    return {"tool": "verilator", "passed": None, "warnings": None, "skipped": why}
