"""Only the engine and its entry point (otc/app.py, otc/cli.py) import the console; the console
never imports the engine."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_only_the_engine_and_the_cli_import_the_console() -> None:
    importers = {
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "otc").rglob("*.py"))
        if "console" not in path.parts
        and any(m == "otc.console" or m.startswith("otc.console.") for m in imports_of(path))
    }
    assert importers == {"otc/app.py", "otc/cli.py"}


def test_the_console_reads_state_and_never_imports_the_engine_or_feeds() -> None:
    for path in sorted((ROOT / "otc" / "console").rglob("*.py")):
        found = imports_of(path)
        assert not {m for m in found if m in ("otc.app", "otc.cli", "otc.bus")}, path
        assert not {m for m in found if m == "feeds" or m.startswith("feeds.")}, path
