"""The package's layers, held by reading its imports (every ``import``, at module level or in a function).

plumbing (redaction, retry, storage, figures, config) ← io ← catalog, model, tiles, engine ← pipeline ←
batch, train, evaluate, demo ← cli. Each rule below is one line of ARCHITECTURE in README's "How it works".
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stacsr"
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts ``a`` and ``a.b`` when that is a module)."""
    known = modules()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imports(path) if m in known and m != name} for name, path in known.items()}


def layer(name: str) -> str:
    return name.split(".")[1] if name.count(".") else ""


def outside(prefixes: tuple[str, ...], name: str) -> set[str]:
    """stacsr modules ``name`` imports that are not under one of ``prefixes``."""
    return {m for m in graph()[name] if m != "stacsr" and not m.startswith(prefixes)}


@pytest.mark.parametrize("name", [m for m in modules() if layer(m) == "plumbing"])
def test_plumbing_imports_only_plumbing(name):
    assert outside(("stacsr.plumbing",), name) == set()


@pytest.mark.parametrize("name", [m for m in modules() if layer(m) == "io"])
def test_io_imports_nothing_above_it(name):
    assert outside(("stacsr.io", "stacsr.plumbing"), name) == set()


@pytest.mark.parametrize("name", [m for m in modules() if layer(m) == "model"])
def test_model_imports_only_model_and_plumbing(name):
    assert outside(("stacsr.model", "stacsr.plumbing"), name) == set()


@pytest.mark.parametrize("name", [m for m in modules() if layer(m) == "catalog"])
def test_catalog_knows_no_model_engine_or_torch(name):
    assert outside(("stacsr.catalog", "stacsr.io", "stacsr.plumbing"), name) == set()
    assert not {m for m in imports(modules()[name]) if m.split(".")[0] == "torch"}


def test_catalog_does_not_load_torch():
    code = (
        "import sys, stacsr.catalog.items, stacsr.catalog.publish, stacsr.catalog.search; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_nothing_imports_the_cli():
    users = {
        n
        for n, deps in graph().items()
        if not n.startswith("stacsr.cli") and any(d.startswith("stacsr.cli") for d in deps)
    }
    assert users == set()


def test_no_import_cycles():
    deps, state, cycles = graph(), {}, []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(deps[name]):
            if dep.startswith(name + ".") or name.startswith(dep + ".") and dep in ("stacsr",):
                continue  # a package and its own submodules, or the root package's __version__
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep) :] + [dep] if dep in path else [name, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[name] = "done"

    for name in sorted(deps):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("name", list(modules()))
def test_no_module_is_over_450_lines(name):
    assert len(modules()[name].read_text().splitlines()) <= MAX_LINES
