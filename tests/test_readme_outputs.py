"""Following the README leaves the source tree as it was: every output its commands name lies where git
ignores it (build/, runs/, data/), LAMMPS runs in such a folder (it writes log.lammps and its dumps where
it runs), and a documented command run from the checkout leaves `git status` unchanged."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

#: flags whose value is a file or folder a command writes
OUTPUT_FLAGS = {"-o", "--out", "--output", "--json", "--plot", "--csv", "--markdown", "--figures"}


def git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def in_git():
    if shutil.which("git") is None or git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        pytest.skip("not a git checkout: nothing tells what is ignored")


def readme_commands() -> list[tuple[Path, list[str]]]:
    """(working folder, words) of every command in the README's sh blocks, `cd` followed."""
    text = (REPO / "README.md").read_text()
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        cwd = REPO
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s#\s|^#", line)[0].strip()
            for part in filter(None, (p.strip() for p in line.split("&&"))):
                words = shlex.split(part)
                if words[0] == "cd":
                    cwd = (cwd / words[1]).resolve()
                else:
                    out.append((cwd, words))
    return out


def outputs(cwd: Path, words: list[str]) -> list[Path]:
    """What a command writes: its output flags' values; for LAMMPS, its working folder."""
    found = [cwd / w for flag, w in zip(words, words[1:]) if flag in OUTPUT_FLAGS]
    if "lmp" in words:
        found.append(cwd / "log.lammps")
    return found


def test_the_readme_names_its_commands():
    """The parser sees the commands (a test of the test: an empty list would pass everything below)."""
    cmds = readme_commands()
    assert len(cmds) > 30
    lmp = [(cwd, w) for cwd, w in cmds if "lmp" in w]
    assert lmp and all(cwd == REPO / "runs" / "melt-quench" for cwd, _ in lmp)
    assert any(w[:4] == ["python", "-m", "model", "quantize"] for _, w in cmds)


def test_every_documented_output_is_ignored_by_git(in_git):
    checked, tracked_dirty = [], []
    for cwd, words in readme_commands():
        for path in outputs(cwd, words):
            path = Path(os.path.normpath(path))
            if REPO not in path.parents:
                continue  # /tmp/..., ../shared: outside the checkout
            rel = path.relative_to(REPO).as_posix()
            checked.append(rel)
            if git("check-ignore", "-q", "--no-index", rel).returncode != 0:
                tracked_dirty.append(f"{' '.join(words)}  ->  {rel}")
    assert len(checked) >= 10, checked
    assert not tracked_dirty, "README commands writing into the source tree:\n" + "\n".join(tracked_dirty)


def test_the_demo_leaves_git_status_as_it_was(in_git):
    """The README's main job from the checkout, with its default output folder."""
    before = git("status", "--porcelain", "--untracked-files=all").stdout
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "model", "demo", "--no-dft"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    assert "build/demo/demo.json" in p.stdout
    assert git("status", "--porcelain", "--untracked-files=all").stdout == before
