"""The layer order of the project's packages, and the import graph that must respect it.

    python -m contract.layers [--root DIR]      # the graph, lines per package, and any violation

A package may import only packages to its left (the contract at the bottom, the science workflows
on top); imports inside functions count too (a lazy import is still a dependency).  The graph is
read from the source with `ast`, without importing anything, so it also works on an old checkout
(`--root`).  tests/test_layers.py fails on any upward import or cycle.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter, defaultdict
from pathlib import Path

#: Bottom to top.
LAYERS = ("contract", "model", "gen", "sim", "host", "science")


def packages(root: Path) -> list[str]:
    """Top-level packages of the tree at `root`: the layers that exist, then any other package."""
    found = sorted(p.parent.name for p in root.glob("*/__init__.py"))
    return [p for p in LAYERS if p in found] + [p for p in found if p not in LAYERS and p != "tests"]


def _imported(tree: ast.AST, package: str, module_parts: list[str]) -> list[tuple[str, int]]:
    """(top-level name, line) of every import in a module, relative ones resolved."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside the module's own package
                base = module_parts[:len(module_parts) - node.level]
                out.append(((base or [package])[0], node.lineno))
            elif node.module:
                out.append((node.module.split(".")[0], node.lineno))
    return out


def import_graph(root: Path) -> tuple[dict, dict]:
    """({(importer, imported): [file:line, ...]}, {package: lines of Python})."""
    pkgs = set(packages(root))
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    lines: Counter = Counter()
    for pkg in pkgs:
        for path in sorted((root / pkg).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            lines[pkg] += text.count("\n")
            rel = path.relative_to(root)
            parts = list(rel.with_suffix("").parts)
            tree = ast.parse(text, filename=str(path))
            for name, lineno in _imported(tree, pkg, parts):
                if name in pkgs and name != pkg:
                    edges[(pkg, name)].append(f"{rel}:{lineno}")
    return dict(edges), dict(lines)


def violations(edges: dict) -> list[str]:
    """Every import of a package from a higher layer, with where it happens."""
    rank = {p: k for k, p in enumerate(LAYERS)}
    out = []
    for (a, b), where in sorted(edges.items()):
        if a in rank and b in rank and rank[b] > rank[a]:
            out.append(f"{a} imports {b} (a higher layer) at {', '.join(where[:5])}"
                       + (f" and {len(where) - 5} more" if len(where) > 5 else ""))
    return out


def cycles(edges: dict) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(graph) | {b for _, b in edges}):
        if v not in index:
            visit(v)
    return out


def report(root: Path) -> str:
    edges, lines = import_graph(root)
    pkgs = packages(root)
    text = [f"packages (bottom to top): {' <- '.join(pkgs)}", "", "lines of Python per package:"]
    text += [f"  {p:<10} {lines.get(p, 0):>6}" for p in pkgs]
    text += ["", "imports between packages (importer -> imported: count):"]
    for p in pkgs:
        deps = [(b, len(w)) for (a, b), w in sorted(edges.items()) if a == p]
        text.append(f"  {p:<10} -> " + (", ".join(f"{b} ({n})" for b, n in deps) or "nothing"))
    bad, cyc = violations(edges), cycles(edges)
    text += ["", f"upward imports: {len(bad)}"] + [f"  {v}" for v in bad]
    text += [f"cycles: {len(cyc)}"] + [f"  {{{', '.join(c)}}}" for c in cyc]
    return "\n".join(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="The import graph between the project's packages and its layer order.")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                    help="checkout to read (default: this one)")
    args = ap.parse_args(argv)
    print(report(args.root))
    edges, _ = import_graph(args.root)
    return 1 if violations(edges) or cycles(edges) else 0


if __name__ == "__main__":
    sys.exit(main())
