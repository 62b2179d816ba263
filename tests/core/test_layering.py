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
