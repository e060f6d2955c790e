"""gen/flow/emit.py: the one emitter of the pipeline's Verilog, and its cache key.

The key must change whenever anything the Verilog depends on changes: a source file of contract/,
model/ or gen/ (shown on a copied package tree, so the checkout is never edited), the model, the
knobs.  The simulators (sim/runner.py) and `python -m gen build` both go through it.
"""

from __future__ import annotations

import ast
import copy
import shutil
from pathlib import Path

import pytest
from support import REPO

from gen.flow import emit
from gen.ir import Design, Knobs


def _tree(tmp_path: Path) -> list[Path]:
    """A small copy of the package layout: contract/, model/ (with a subpackage), gen/."""
    files = {"contract/__init__.py": "", "contract/fixedpoint.py": "def rq(v, k):\n    return (v + (1 << (k - 1))) >> k\n",
             "model/__init__.py": "", "model/sub/__init__.py": "", "model/sub/rules.py": "ROUND = 'half up'\n",
             "gen/__init__.py": "", "gen/stage.py": "from contract.fixedpoint import rq\n"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return [tmp_path / p for p in emit.SOURCE_PACKAGES]


def test_source_hash_changes_with_any_file_of_any_package(tmp_path):
    roots = _tree(tmp_path)
    h0 = emit.source_hash(roots)
    rules = tmp_path / "model" / "sub" / "rules.py"
    rules.write_text("ROUND = 'half even'\n")  # a model/ edit, gen/ untouched
    h1 = emit.source_hash(roots)
    assert h1 != h0
    rules.write_text("ROUND = 'half up'\n")
    assert emit.source_hash(roots) == h0  # content, not timestamps
    (tmp_path / "contract" / "fixedpoint.py").write_text("def rq(v, k):\n    return v >> k\n")
    assert emit.source_hash(roots) not in (h0, h1)
    # a new file counts, bytecode caches do not
    (tmp_path / "contract" / "fixedpoint.py").write_text("def rq(v, k):\n    return (v + (1 << (k - 1))) >> k\n")
    (tmp_path / "model" / "__pycache__").mkdir()
    (tmp_path / "model" / "__pycache__" / "rules.cpython-311.pyc").write_bytes(b"\0junk")
    assert emit.source_hash(roots) == h0
    (tmp_path / "model" / "extra.py").write_text("")
    assert emit.source_hash(roots) != h0


def test_hdl_key_follows_sources_model_and_knobs(tmp_path, monkeypatch):
    """The simulators' cache key (gen.flow.emit.hdl_key, used by sim.runner.pipeline_verilog): an edit
    under model/ changes it, as do the model and the knobs."""
    from test_build import small_qm
    qm = small_qm()
    roots = _tree(tmp_path)
    k0 = emit.hdl_key(qm, Knobs(), roots)
    assert emit.hdl_key(qm, Knobs(), roots) == k0
    (tmp_path / "model" / "sub" / "rules.py").write_text("ROUND = 'down'\n")
    k1 = emit.hdl_key(qm, Knobs(), roots)
    assert k1 != k0
    assert emit.hdl_key(qm, Knobs(lanes=2), roots) != k1
    other = copy.copy(qm)
    other.provenance = {**qm.provenance, "note": "changed"}
    assert emit.hdl_key(other, Knobs(), roots) != k1
    # without roots: this checkout's contract/, model/ and gen/
    monkeypatch.setattr(emit, "source_roots", lambda: roots)
    assert emit.hdl_key(qm, Knobs()) == k1


def test_hashed_set_is_every_python_file_of_contract_model_and_gen():
    hashed = set(emit.source_files(emit.source_roots()))
    for pkg in ("contract", "model", "gen"):
        files = {f for f in (REPO / pkg).rglob("*.py") if "__pycache__" not in f.parts}
        assert files and files <= hashed, sorted(map(str, files - hashed))[:5]
    assert {f.relative_to(REPO).parts[0] for f in hashed} == {"contract", "model", "gen"}


def test_hashed_packages_are_gen_and_the_layers_below_it():
    layers = pytest.importorskip("contract.layers").LAYERS
    assert emit.SOURCE_PACKAGES == layers[:layers.index("gen") + 1]


def test_the_pipelines_imports_stay_inside_the_hashed_packages():
    """Every project package the pipeline's modules import (at any depth, lazily or not) is hashed."""
    project = {p.parent.name for p in REPO.glob("*/__init__.py")}
    seen, todo, packages = set(), [REPO / "gen" / "pipeline.py", REPO / "gen" / "ir.py"], set()
    while todo:
        f = todo.pop()
        if f in seen or not f.exists():
            continue
        seen.add(f)
        rel = f.relative_to(REPO).with_suffix("").parts
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = list(rel[:len(rel) - node.level]) if node.level else []
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] not in project:
                    continue
                packages.add(parts[0])
                for k in range(len(parts), 0, -1):
                    for cand in (REPO.joinpath(*parts[:k]).with_suffix(".py"), REPO.joinpath(*parts[:k], "__init__.py")):
                        if cand.exists():
                            todo.append(cand)
    assert packages and packages <= set(emit.SOURCE_PACKAGES), packages


def test_simulator_cache_is_invalidated_by_a_model_source_edit(tmp_path, monkeypatch):
    """sim.runner.pipeline_verilog elaborates once per key: again after an edit under model/, not before;
    the Verilog lives in a directory named by its content, the same emitter's files as gen build's."""
    from test_build import small_qm

    from sim import runner
    roots = _tree(tmp_path / "src")
    monkeypatch.setattr(emit, "source_roots", lambda: roots)
    calls, hardware = [], ["v1"]

    def fake_elaborate(design):
        calls.append(design)
        return emit._Text("rtlil text\n", f"module dpfpga_pipeline();\nendmodule // {hardware[0]}\n",
                          "test", {"rtlil": 0.0, "verilog": 0.0})
    monkeypatch.setattr(emit, "elaborate", fake_elaborate)
    monkeypatch.setattr(runner, "BUILD", tmp_path / "sim")
    qm = small_qm()
    v1 = runner.pipeline_verilog(qm, Knobs())
    assert v1.parent.parent == tmp_path / "sim" and v1.read_text().startswith("module dpfpga_pipeline")
    assert runner.pipeline_verilog(qm, Knobs()) == v1 and len(calls) == 1  # cached
    (tmp_path / "src" / "model" / "sub" / "rules.py").write_text("ROUND = 'down'\n")
    v2 = runner.pipeline_verilog(qm, Knobs())
    assert len(calls) == 2 and v2 == v1  # elaborated again; the same text lands in the same directory
    (tmp_path / "src" / "contract" / "fixedpoint.py").write_text("X = 1\n")
    hardware[0] = "v2"
    v3 = runner.pipeline_verilog(qm, Knobs())
    assert len(calls) == 3 and v3 != v1  # different text: its own directory
    assert emit._load(v3.parent, key=None).key == emit.hdl_key(qm, Knobs())


def test_build_and_simulator_emit_the_same_verilog(tmp_path, monkeypatch):
    """emit() (gen build's out/) and cached() (the simulators') elaborate identically and stamp the key."""
    roots = _tree(tmp_path / "src")  # a fixed tree: the key must not follow edits made meanwhile
    monkeypatch.setattr(emit, "source_roots", lambda: roots)
    from test_build import small_qm
    design = Design(small_qm(), Knobs(fit_par=4))
    a = emit.emit(design, tmp_path / "out")
    assert not a.reused and a.key == emit.hdl_key(design.qm, design.knobs)
    b = emit.cached(design, tmp_path / "sim")
    assert b.verilog_sha256 == a.verilog_sha256 and b.verilog.read_text() == a.verilog.read_text()
    assert b.verilog.parent.name == a.verilog_sha256[:16]
    again = emit.emit(design, tmp_path / "out")
    assert again.reused and again.verilog == a.verilog
    # a stamp that no longer matches the file is not trusted
    a.verilog.write_text(a.verilog.read_text() + "// edited\n")
    assert not emit.emit(design, tmp_path / "out").reused
    shutil.rmtree(tmp_path / "out")
