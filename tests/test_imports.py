"""No import cycle among the modules of detector/ (a cycle makes import order matter and
module boundaries meaningless).

Every import counts, also one inside a function (importing lazily hides a cycle, it does
not remove it), except under ``if __name__ == "__main__":``, which runs only when the file
is the program itself.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_names(package: Path) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under `package` (a package folder)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_main_guard(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _imports(tree: ast.AST):
    """The Import / ImportFrom nodes of `tree`, outside ``if __name__ == "__main__"``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack += [child for child in ast.iter_child_nodes(node) if not _is_main_guard(child)]


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}; ``from a import b`` means a.b when that
    is a module, else a."""
    modules = module_names(package)
    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
                continue
            base = node.module or ""
            if node.level:  # relative: from the package `level - 1` above this one
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                edges.add(target if target in modules else base)
        graph[name] = {m for m in edges if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_detector_has_no_import_cycle():
    graph = import_graph(ROOT / "detector")
    assert {"detector.data.pipeline", "detector.model.network"} <= graph[
        "detector.inference.detector"
    ]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_check_finds_cycles_lazy_and_relative_ones_included(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import VALUE\n")
    (pkg / "c.py").write_text("import os\n")
    assert import_graph(pkg)["pkg.sub.b"] == {"pkg.c"}
    assert find_cycle(import_graph(pkg)) is None
    (pkg / "c.py").write_text("if __name__ == '__main__':\n    import pkg.a\n")
    assert find_cycle(import_graph(pkg)) is None  # a program's own imports are no cycle
    (pkg / "c.py").write_text("def g():\n    import pkg.a\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
