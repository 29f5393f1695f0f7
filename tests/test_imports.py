"""No import cycles in the project, not even through imports inside functions.

The graph is built from the source with ``ast``: every ``import`` / ``from ... import`` of a project module anywhere in
a file (module level, functions, methods) is an edge, except those under ``if TYPE_CHECKING:``. ``from a import b``
points at the module ``a.b`` when that is a module, else at ``a``. Run this file as a script to print the numbers:
``python tests/test_imports.py [ROOT]`` (cycles, modules in the largest strongly connected component).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("plasticity_core", "dashboard")
ROOT = Path(__file__).resolve().parents[1]


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the project's packages under ``root``."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes anywhere in the tree, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in its source)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                while t and t not in modules:  # ``import a.b.c`` of a non-module attribute path: its module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (each a knot of cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, out = set(), [], []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def cycle_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The edges inside a knot (each lies on at least one cycle): what to cut."""
    comps = {m: i for i, comp in enumerate(strongly_connected(graph)) for m in comp}
    return sorted((a, b) for a, bs in graph.items() for b in bs if a in comps and comps.get(b) == comps[a])


def count_cycles(graph: dict[str, set[str]], limit: int = 100_000) -> int:
    """Elementary cycles (Johnson's idea, simple DFS per start node over higher-ordered nodes), capped at ``limit``."""
    order = {m: i for i, m in enumerate(sorted(graph))}
    total = 0
    for start in sorted(graph):
        s = order[start]
        stack = [(start, iter(sorted(graph[start])))]
        path = {start}
        while stack and total < limit:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                path.discard(node)
                continue
            if nxt == start:
                total += 1
            elif order[nxt] > s and nxt not in path:
                path.add(nxt)
                stack.append((nxt, iter(sorted(graph[nxt]))))
    return total


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "plasticity_core.runs.executors" in graph["plasticity_core.runs"]  # module level
    assert "plasticity_core.metrics.diagnose" in graph["plasticity_core.cli"]  # inside a function


def test_no_import_cycles():
    graph = import_graph()
    knots = strongly_connected(graph)
    assert not knots, "import cycles (cut one of these edges in each): " + "; ".join(
        f"{a} -> {b}" for a, b in cycle_edges(graph))


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    g = import_graph(root)
    knots = strongly_connected(g)
    print(f"{root}: {len(g)} modules, {sum(map(len, g.values()))} import edges, {count_cycles(g)} elementary cycles, "
          f"{len(knots)} knots, largest knot {max(map(len, knots), default=0)} modules")
    for comp in knots:
        print("  knot:", ", ".join(comp))
    for a, b in cycle_edges(g):
        print(f"  {a} -> {b}")
