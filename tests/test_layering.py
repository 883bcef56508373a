"""The subpackages of detector/ import each other in one direction only (docs/architecture.md,
"Import layering"): a module may import its own subpackage and the subpackages of lower
layers, never a higher layer nor a sibling of its own layer.

Entry points are outside the rule: a ``__main__.py`` module (``python -m detector.data``)
and the package's top-level modules (the public API in ``detector/__init__.py``) may import
any layer, as the command lines do.
"""

from tests.test_imports import ROOT, import_graph

# Lowest first. Subpackages on one line are siblings: neither imports the other.
LAYERS = (
    ("utils",),
    ("model",),
    ("data",),
    ("config", "darknet"),
    ("inference",),
    ("evaluation",),
    ("engine", "export"),
    ("api",),
    ("cli",),
    ("bench",),
)


def subpackage(module: str, package: str) -> str | None:
    """The subpackage (``detector.model.loss`` -> ``model``) of a module of `package`, or
    None for the package's own top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else None


RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def back_edges(graph: dict[str, set[str]], package: str) -> list[str]:
    """Every import that goes up a layer or sideways to a sibling, as "a -> b" lines."""
    found = []
    for module, targets in sorted(graph.items()):
        here = subpackage(module, package)
        if here is None or module.endswith("__main__"):
            continue
        if here not in RANK:
            found.append(f"{module}: subpackage {here!r} is in no layer")
            continue
        for target in sorted(targets):
            there = subpackage(target, package)
            if there is None or there == here:
                continue
            if there not in RANK or RANK[there] >= RANK[here]:
                found.append(f"{module} -> {target}")
    return found


def test_detector_imports_go_down_the_layers_only():
    graph = import_graph(ROOT / "detector")
    packages = {subpackage(m, "detector") for m in graph} - {None}
    assert packages == set(RANK), "every subpackage has a layer, every layer a subpackage"
    assert back_edges(graph, "detector") == []


def test_the_check_finds_upward_and_sideways_imports(tmp_path):
    pkg = tmp_path / "detector"
    for sub in ("utils", "model", "engine", "export"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from detector.engine import run\n")  # the API: allowed
    (pkg / "utils" / "io.py").write_text("import os\n")
    (pkg / "model" / "net.py").write_text("from detector.utils import io\n")
    (pkg / "engine" / "run.py").write_text("from detector.model.net import x\n")
    (pkg / "export" / "onnx.py").write_text("from detector.model import net\n")
    assert back_edges(import_graph(pkg), "detector") == []
    (pkg / "utils" / "io.py").write_text("def f():\n    from detector.model import net\n")
    (pkg / "export" / "onnx.py").write_text("from detector.engine.run import fit\n")
    (pkg / "export" / "__main__.py").write_text("from detector.engine import run\n")
    assert back_edges(import_graph(pkg), "detector") == [
        "detector.export.onnx -> detector.engine.run",
        "detector.utils.io -> detector.model.net",
    ]
