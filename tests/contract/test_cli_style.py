"""One command-line style (contract/cli.py) for every entry point: `python -m model`, `science`,
`gen`, `host`.  The same flag for the same thing, every command listed in the entry point's help."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys

import pytest

from support import REPO

ENTRY_POINTS = {"contract": "contract.__main__", "model": "model.cli", "science": "science.cli", "gen": "gen.__main__",
                "host": "host.cli"}


def subcommands(parser: argparse.ArgumentParser, prefix=()):
    """(command words, parser) of every leaf command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, prefix + (name,))
            return
    yield prefix, parser


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_the_same_flag_for_the_same_thing(entry):
    cli = importlib.import_module(ENTRY_POINTS[entry]).cli
    seen = list(subcommands(cli.parser()))
    assert len(seen) == len(cli.commands()) >= 1
    for words, parser in seen:
        where = f"python -m {entry} {' '.join(words)}"
        for a in parser._actions:
            visible = a.help != argparse.SUPPRESS
            if a.dest == "out" and visible:
                assert a.option_strings == ["-o", "--out"], (where, a.option_strings)
            if a.dest == "model" and a.option_strings:
                assert a.option_strings == ["--model"], (where, a.option_strings)
            if a.dest == "threads":
                assert a.option_strings == ["--threads"], (where, a.option_strings)
            if visible:
                # an output under another name, or a model file option under another name
                assert not set(a.option_strings) & {"--output", "--out-dir", "--outdir", "--model-file"}, \
                    (where, a.option_strings)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_help_lists_every_command(entry):
    cli = importlib.import_module(ENTRY_POINTS[entry]).cli
    r = subprocess.run([sys.executable, "-m", entry, "--help"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    listing = r.stdout.split("positional arguments:", 1)[1]
    for command in cli.commands():
        assert re.search(rf"^ +{command.split()[0]}\s", listing, re.M), (entry, command)


def test_the_older_output_flag_still_parses():
    cli = importlib.import_module("model.cli").cli
    args = cli.parser().parse_args(["demo", "--output", "somewhere"])
    assert args.out == "somewhere"
