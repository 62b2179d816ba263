"""The core is acyclic and protocol-blind: checked on the source, so it stays that way.

Session, dispatch, upstream and pool import nothing of each other (not even under
TYPE_CHECKING): they meet through core.interfaces. None of them names a protocol.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import tcp_multiplexer.core

CORE = Path(tcp_multiplexer.core.__file__).parent
HOPS = ("session", "dispatch", "upstream", "pool", "router")
ALLOWED_CORE_IMPORTS = {"tcp_multiplexer.core.interfaces", "tcp_multiplexer.core.backoff"}
PROTOCOL_WORDS = re.compile(r"modbus|http|iso.?8583|\bmpu\b|\becho\b|transaction id", re.I)


def imported_modules(source: str) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


@pytest.mark.parametrize("name", HOPS)
def test_a_core_module_imports_only_the_interfaces_of_the_others(name: str) -> None:
    modules = imported_modules((CORE / f"{name}.py").read_text())
    core = {module for module in modules if module.startswith("tcp_multiplexer.core")}
    assert core <= ALLOWED_CORE_IMPORTS
    assert not any(module.startswith("tcp_multiplexer.protocols") for module in modules)


@pytest.mark.parametrize("name", HOPS)
def test_a_core_module_names_no_protocol(name: str) -> None:
    found = PROTOCOL_WORDS.findall((CORE / f"{name}.py").read_text())
    assert not found


PACKAGE = CORE.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def project_imports(source: str) -> set[str]:
    """The project's modules a source imports (``from pkg import module`` names the
    module, not the package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tcp_multiplexer"):
            module = str(node.module)
            named = [f"{module}.{alias.name}" for alias in node.names]
            found.update(named if all(is_module(name) for name in named) else [module])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tcp_multiplexer"))
    return found


def test_no_module_imports_itself_through_others() -> None:
    """No import cycle anywhere in the package, lazy imports inside functions included."""
    graph = {module_name(path): project_imports(path.read_text()) for path in PACKAGE.rglob("*.py")}
    for start in graph:
        seen: set[str] = set()
        todo = [name for name in graph[start] if name in graph and name != start]
        while todo:
            name = todo.pop()
            assert name != start, f"{start} imports itself through {sorted(seen)}"
            if name in seen:
                continue
            seen.add(name)
            todo.extend(other for other in graph[name] if other in graph)
