"""`python -m science`: its help names every command; the commands that left `python -m model` say where
they went, in one line, with exit status 2."""

from __future__ import annotations

import re

import os
import subprocess
import sys

import pytest

from support import REPO

# Every command line that `python -m model` accepted before the workflows moved.
MOVED = [("rdf",), ("recipe",), ("phases",), ("data",), ("data", "melt-quench"), ("data", "teacher-test"),
         ("data", "compare")]


def run(package, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", package, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def test_help_lists_every_command():
    r = run("science", "--help")
    assert r.returncode == 0, r.stderr
    for cmd in MOVED:
        assert f"python -m science {' '.join(cmd)}" in r.stdout, cmd
    listing = r.stdout.split("COMMAND\n", 1)[1]
    for cmd in ("rdf", "recipe", "phases", "data"):
        assert re.search(rf"^ +{cmd} ", listing, re.M), cmd
    r = run("science", "data", "--help")
    assert r.returncode == 0, r.stderr
    for sub in ("melt-quench", "teacher-test", "compare"):
        assert sub in r.stdout, sub


def test_no_arguments_explains_itself():
    r = run("science")
    assert r.returncode == 0 and "python -m science rdf" in r.stdout and "python -m model" in r.stdout


def test_model_help_points_to_science():
    r = run("model", "--help")
    assert r.returncode == 0, r.stderr
    assert "python -m science" in r.stdout
    listing = r.stdout.split("COMMAND\n", 1)[1]
    for cmd in ("train", "quantize", "test", "info", "example", "demo"):
        assert re.search(rf"^ +{cmd} ", listing, re.M), cmd


def test_moved_names_are_the_science_commands():
    """model/cli.py lists the moved commands itself (model must not import science): the two lists agree."""
    from model.cli import MOVED_TO_SCIENCE
    from science.cli import COMMANDS
    assert set(MOVED_TO_SCIENCE) == set(COMMANDS)


@pytest.mark.parametrize("cmd", MOVED, ids=" ".join)
def test_moved_command_says_where_it_went(cmd, tmp_path):
    name = " ".join(cmd)
    r = run("model", *cmd, tmp_path / "input", "-o", tmp_path / "out")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == f"error: `{name}` moved to `python -m science {name}` (same arguments)\n"
    assert not (tmp_path / "out").exists()
    # the command it names exists there, with the same name
    assert run("science", *cmd, "--help").returncode == 0


def test_every_torch_command_has_threads_defaulting_to_one():
    """The workflows that train or evaluate (recipe, phases, the teachers' data) run on one torch thread
    unless told otherwise: torch's every-core default oversubscribes the 2-core machine (5-7x slower)."""
    import argparse

    from science.cli import cli

    def leaves(parser, words=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from leaves(sub, words + (name,))
                return
        yield " ".join(words), parser

    threads = {name: next((a.default for a in p._actions if a.dest == "threads"), None)
               for name, p in leaves(cli.parser())}
    for name in ("recipe", "phases", "data melt-quench", "data teacher-test"):
        assert threads[name] == 1, (name, threads)
