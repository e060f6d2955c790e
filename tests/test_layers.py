"""The layer order (contract <- model <- gen <- sim <- host <- science): no package imports one above
it, lazily or not, and no cycle; contract imports nothing of the project."""

from __future__ import annotations

from contract import layers
from support import REPO


def test_no_package_imports_a_higher_layer_and_there_is_no_cycle():
    edges, _ = layers.import_graph(REPO)
    assert layers.violations(edges) == []
    assert layers.cycles(edges) == []
    assert not [e for e in edges if e[0] == "contract"], "contract must import nothing of the project"


def test_the_checker_sees_upward_and_lazy_imports_and_cycles(tmp_path):
    """The checker itself, on a made-up tree: a lazy upward import inside a function is found, and so
    is the cycle it closes."""
    for pkg, body in {"contract": "", "model": "import contract\n",
                      "gen": "from model import x\n\ndef f():\n    from host import y\n", "host": "from gen import z\n"}.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(body)
    edges, lines = layers.import_graph(tmp_path)
    assert layers.violations(edges) == ["gen imports host (a higher layer) at gen/__init__.py:4"]
    assert layers.cycles(edges) == [["gen", "host"]]
    assert lines["gen"] == 4
