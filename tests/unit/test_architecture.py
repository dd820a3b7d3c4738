"""The package's import graph: imports point downward through the layers and never form a cycle.

Every ``import`` counts, including those inside functions (a lazy import dodges a cycle at
run time but is still a dependency); only imports under ``if TYPE_CHECKING:`` are exempt.
Run ``python -m tests.unit.test_architecture`` to print the graph's layer violations and cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import elfkit

PACKAGE = Path(elfkit.__file__).resolve().parent

# Lowest first. A module may import modules of its own layer or a lower one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("elfkit.errors", "elfkit.config", "elfkit.records", "elfkit.fileio", "elfkit.hookspecs"),
    ("elfkit.contracts",),
    ("elfkit.core",),
    ("elfkit.components",),
    ("elfkit.generation",),
    ("elfkit.registry",),
    ("elfkit.recipe",),
    ("elfkit.pipeline",),
    ("elfkit.testing",),
    ("elfkit.cli",),
    ("elfkit", "elfkit.types"),   # the public surface re-exports from below
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The elfkit modules ``name`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    out.add(sub)
                elif source in modules:
                    out.add(source)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best < 0:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS in {__file__}")
    return best


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
                  for a, deps in g.items() for b in deps if layer_of(b) > layer_of(a))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def package_graph(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """Modules collapsed to their package; edges between a package and its own parent are dropped
    (a stage module using its sub-package is structure, not a cycle)."""
    modules = all_modules()

    def package(m: str) -> str:
        return m if modules[m].name == "__init__.py" else m.rpartition(".")[0]

    out: dict[str, set[str]] = {}
    for a, deps in g.items():
        for b in deps:
            pa, pb = package(a), package(b)
            if pa != pb and not pa.startswith(pb + ".") and not pb.startswith(pa + "."):
                out.setdefault(pa, set()).add(pb)
    return out


def test_every_module_has_a_layer():
    for name in all_modules():
        layer_of(name)


def test_no_upward_imports():
    assert upward_imports(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_no_cycles_between_packages():
    assert cycles(package_graph(graph())) == []


if __name__ == "__main__":
    g = graph()
    print("\n".join(upward_imports(g)) or "no upward imports")
    print("\n".join(" <-> ".join(c) for c in cycles(g) + cycles(package_graph(g))) or "no cycles")
