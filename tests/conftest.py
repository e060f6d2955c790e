"""Shared pytest set-up: make `tests/support.py` importable from every test folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_addoption(parser):
    parser.addoption("--records", type=int, default=0,
                     help="run the long Verilator regression over this many neighbour records (e.g. 1000000)")
