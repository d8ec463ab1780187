"""The project's import graph has no cycles (issue 39): every ``import`` of a project module counts, also the
ones inside functions, so a lazy import cannot hide a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "core", "serve", "train", "bench", "pages")


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every Python module in the project's packages (and the top-level scripts)."""
    modules = {p.stem: p for p in root.glob("*.py")}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py") if (root / package).is_dir() else ():
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imported_modules(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``path`` (module ``name``) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in modules:  # "core.io.case.load_case" -> "core.io.case"
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_cycles(modules: dict[str, Path]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    graph = {name: imported_modules(path, name, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def test_the_project_has_no_import_cycle():
    assert import_cycles(project_modules()) == []


def test_the_walker_finds_a_lazy_cycle(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "__init__.py").write_text("")
    (tmp_path / "train" / "a.py").write_text("from train.b import thing\n")
    (tmp_path / "train" / "b.py").write_text("def thing():\n    from train import a\n    return a\n")
    (tmp_path / "train" / "c.py").write_text("from . import a\n")
    assert import_cycles(project_modules(tmp_path)) == [["train.a", "train.b"]]


def test_core_never_imports_the_layers_above_it():
    modules = project_modules()
    upward = {name: sorted(m for m in imported_modules(path, name, modules)
                           if m.split(".")[0] in {"app", "serve", "train", "bench", "pages", "streamlit_app"})
              for name, path in modules.items() if name.split(".")[0] == "core"}
    assert {k: v for k, v in upward.items() if v} == {}
