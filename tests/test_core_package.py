"""Package-level behaviour of ``core``."""

import ast
import os
import subprocess
import sys
from pathlib import Path


def test_importing_core_turns_on_onednn_before_tensorflow_loads():
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    code = "import sys, os, core.io.case; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["1", "False"]


def test_core_never_imports_streamlit():
    # every module of every stage subpackage, not just the top level
    code = ("import sys, pkgutil, importlib, core\n"
            "names = [m.name for m in pkgutil.walk_packages(core.__path__, 'core.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "print(len(names), 'streamlit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, imported = out.stdout.strip().splitlines()[-1].split()
    assert int(count) == len(CORE_MODULES) - 1 and imported == "False"  # all but core/__init__.py


ROOT = Path(__file__).resolve().parents[1]
CORE_MODULES = sorted(ROOT.joinpath("core").rglob("*.py"))
# Stage subpackages of core and the stages each may import (lazy imports inside functions included).
STAGE_DEPENDENCIES: dict[str, set[str]] = {
    "io": set(),
    "preprocessing": {"io"},
    "segmentation": {"io", "preprocessing"},
    "synthesis": {"io", "preprocessing", "segmentation"},
    "viewer": {"io"},
    "services": set(),
}
COMMANDS = {"info", "phantom", "segment", "generate"}  # the top-level ``python -m core.X`` entry points


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (module level and inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_core_is_grouped_by_stage():
    top = {p.stem for p in ROOT.joinpath("core").glob("*.py")}
    assert top == {"__init__"} | COMMANDS
    packages = {p.name for p in ROOT.joinpath("core").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(STAGE_DEPENDENCIES)


def test_stages_import_only_lower_stages_and_never_the_commands():
    for path in CORE_MODULES:
        parts = path.relative_to(ROOT / "core").parts
        if len(parts) == 1:
            continue  # core/__init__.py and the command modules may import any stage
        stage = parts[0]
        for name in _imports(path):
            bits = name.split(".")
            if bits[0] != "core" or len(bits) < 2:
                continue
            assert bits[1] not in COMMANDS, f"{path.relative_to(ROOT)} imports the command module core.{bits[1]}"
            assert bits[1] in STAGE_DEPENDENCIES, f"{path.relative_to(ROOT)} imports {name}"
            assert bits[1] == stage or bits[1] in STAGE_DEPENDENCIES[stage], (
                f"{path.relative_to(ROOT)} ({stage}) imports {name}")


def test_core_never_imports_the_app_train_or_serve():
    # train/ and serve/ import core, never the reverse; the app (pages, app, streamlit) sits on top of core
    for path in CORE_MODULES:
        for name in _imports(path):
            assert name.split(".")[0] not in {"train", "serve", "pages", "app", "bench", "streamlit"}, (
                f"{path.relative_to(ROOT)} imports {name}")
