"""The package's layers: no import circle between modules, no import of a higher layer.

Every ``import`` and ``from ... import`` of a module counts, at any depth (inside functions
and ``if TYPE_CHECKING:`` too): a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"disktrain": ROOT / "disktrain", "disktrain.kernels": ROOT / "kernels",
           "disktrain.cluster": ROOT / "cluster"}

LAYERS = [
    ("disktrain.errors", "disktrain.kernels"),
    ("disktrain.storage",),
    ("disktrain.ingest", "disktrain.sample"),
    ("disktrain.pack",),
    ("disktrain.loader",),
    ("disktrain.models", "disktrain.robust"),
    ("disktrain.train",),
    ("disktrain.infer",),
    ("disktrain.cluster",),
    ("disktrain", "disktrain.train.__main__", "disktrain.cluster.job"),
]
"""Bottom to top: a module may import its own layer's packages and those of layers below.
Packages in one layer are independent of each other (``ingest`` and ``sample`` do not
import each other; nor do ``models`` and ``robust``). The top, ``disktrain`` itself, holds
what uses everything: the command line, the demo, ``verify`` and the package's exports, and
the entry points that launchers run (``python -m disktrain.train`` under torchrun, the Ray
job's ``disktrain.cluster.job``), which call the command line."""


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``name`` imports (resolved to the longest known module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def layer_of(module: str) -> tuple[int, str]:
    """The layer index and the package (of :data:`LAYERS`) that ``module`` belongs to."""
    best = None
    for i, layer in enumerate(LAYERS):
        for package in layer:
            inside = module == package or module.startswith(package + ".")
            if inside and (best is None or len(package) > len(best[1])):
                best = (i, package)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert cycles(graph()) == []


def test_no_upward_or_sideways_imports():
    bad = []
    for module, targets in graph().items():
        level, package = layer_of(module)
        for target in targets:
            t_level, t_package = layer_of(target)
            sideways = t_level == level < len(LAYERS) - 1 and t_package != package
            if t_level > level or sideways:
                bad.append(f"{module} -> {target}")
    assert bad == []


def test_kernels_know_nothing_of_disktrain():
    edges = graph()
    bad = [f"{m} -> {t}" for m, targets in edges.items() if m.startswith("disktrain.kernels")
           for t in targets if not t.startswith("disktrain.kernels")]
    assert bad == []


def test_the_checker_sees_a_circle(tmp_path):
    """The checks fail on what they are for (a circle, an upward import)."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    (tmp_path / "m.py").write_text("import disktrain.train.loop\nfrom . import x\n")
    got = imports("disktrain.storage.m", tmp_path / "m.py",
                  {"disktrain.train.loop", "disktrain.storage.x", "disktrain.storage"})
    assert got == {"disktrain.train.loop", "disktrain.storage.x", "disktrain.storage"}
    assert layer_of("disktrain.train.loop")[0] > layer_of("disktrain.storage.m")[0]


@pytest.mark.parametrize("module", ["disktrain.storage.dataset", "disktrain.loader.loader"])
def test_layer_of_known_modules(module):
    assert layer_of(module)[1] in module


def test_every_package_is_in_the_distribution():
    """A package folder missing from pyproject's list works in an editable checkout and is
    absent from every installed one (as disktrain.infer once was)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    folders = {"disktrain." + ".".join(p.parent.relative_to(ROOT / "disktrain").parts)
               for p in (ROOT / "disktrain").rglob("__init__.py")} - {"disktrain."}
    found = {"disktrain", "disktrain.kernels", "disktrain.cluster", *folders}
    assert found == listed
