"""`python -m contract`: the generated C/C++ headers (contract/headers.py) and the layer graph
(contract/layers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from contract.cli import CommandLine, arg, out_arg

OVERVIEW = """\
dpfpga contract: the rules every layer and language shares, defined once.

  python -m contract headers [--check] [-o DIR]   write (or check) the generated C/C++ headers
  python -m contract layers [--root DIR]          the import graph between packages and the layer order
"""

cli = CommandLine("python -m contract", OVERVIEW)


@cli.command("headers", "write the C/C++ headers generated from the contract (contract/include/dpfpga/*.h)",
             arg("--check", action="store_true", help="write nothing; exit 1 naming the stale headers"),
             out_arg("include folder (default: contract/include)", type=Path, default=None))
def cmd_headers(args) -> int:
    """Write wire.h, protocol.h and regs.h from contract.wire, contract.protocol and contract.registers;
    with --check, compare instead and exit 1 naming every stale header."""
    from . import headers
    root = args.out or headers.INCLUDE_DIR
    if args.check:
        bad = headers.stale(root)
        for path in bad:
            print(f"{root / path} is stale: run `{headers.COMMAND}`", file=sys.stderr)
        return 1 if bad else 0
    for path in headers.write(root):
        print(f"wrote {path}")
    return 0


@cli.command("layers", "the import graph between the project's packages, and any upward import or cycle",
             arg("--root", type=Path, default=None, help="checkout to read (default: this one)"))
def cmd_layers(args) -> int:
    """Print the packages bottom to top, their lines of Python, the imports between them, and every
    import of a higher layer or cycle (exit 1 if there is one)."""
    from . import layers
    return layers.main([] if args.root is None else ["--root", str(args.root)])


def main(argv=None) -> int:
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
