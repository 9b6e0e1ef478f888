"""The import direction holds: feeds -> books -> estimator; the core does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

# Modules of the pure core: value types, books, estimator. They must not reach up the stack
# (CLI, files, feeds) nor do I/O of their own.
PURE = ["otc/model.py", "otc/errors.py", "otc/book.py", "otc/slippage.py"]
FORBIDDEN_IN_PURE = {
    "feeds",
    "otc.cli",
    "otc.snapshot",
    "otc.config",
    "otc.report",
    "otc.bench",
    "asyncio",
    "socket",
    "os",
    "pathlib",
    "subprocess",
    "time",
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def clashes(found: set[str], forbidden: set[str]) -> set[str]:
    return {m for m in found for f in forbidden if m == f or m.startswith(f + ".")}


@pytest.mark.parametrize("module", PURE)
def test_pure_core_imports_nothing_above_it(module: str) -> None:
    assert clashes(imports_of(ROOT / module), FORBIDDEN_IN_PURE) == set()


def test_feeds_never_import_the_service_layers() -> None:
    forbidden = {"otc.cli", "otc.report", "otc.bench", "otc.quoting", "otc.console"}
    for path in sorted((ROOT / "feeds").rglob("*.py")):
        assert clashes(imports_of(path), forbidden) == set(), path


def test_checker_sees_a_forbidden_import() -> None:
    assert clashes({"feeds.sim", "decimal"}, FORBIDDEN_IN_PURE) == {"feeds.sim"}
