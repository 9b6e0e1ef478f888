"""The README's CLI synopsis and `otc.cli`'s docstring name every command and option the
parser takes, and no other."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import otc.cli
from otc.cli import _parser

README = Path(__file__).parents[2] / "README.md"


def _commands() -> dict[str, tuple[set[str], bool]]:
    """Command path ("bench book") -> (its options, whether it has subcommands)."""
    found: dict[str, tuple[set[str], bool]] = {}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        options = {
            option
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--") and option != "--help"
        }
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        found[path] = (options, bool(subs))
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, f"{path} {name}".strip())

    walk(_parser(), "")
    return found


def _synopsis(text: str) -> dict[str, set[str]]:
    """Command path -> the options its synopsis entry names (an entry: a line starting with
    ``otc `` and the lines indented under it)."""
    commands = _commands()
    entries: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        if line.lstrip().startswith("otc "):
            words = line.split()[1:]
            path = ""
            for word in words:
                if f"{path} {word}".strip() not in commands:
                    break
                path = f"{path} {word}".strip()
            assert path not in entries, f"{path} listed twice"
            current = entries.setdefault(path, set())
        if current is not None:
            for no, name in re.findall(r"--(\[no-\])?([a-z][a-z0-9-]*)", line):
                current.add(f"--{name}")
                if no:
                    current.add(f"--no-{name}")
    return entries


def _expected(path: str) -> set[str]:
    """The options of ``path``, its subcommands' included (``control``'s ``halt --symbol``)."""
    return {
        option
        for other, (options, _) in _commands().items()
        if other == path or other.startswith(f"{path} ")
        for option in options
    }


def _readme_synopsis() -> str:
    return README.read_text().split("## CLI\n\n```\n", 1)[1].split("```", 1)[0]


def _docstring_synopsis() -> str:
    doc = otc.cli.__doc__
    assert doc is not None
    return doc.split("Subcommands::", 1)[1].split("\n\n", 2)[1]


@pytest.mark.parametrize("source", ["README", "docstring"])
def test_the_synopsis_names_every_command_and_option(source: str) -> None:
    text = _readme_synopsis() if source == "README" else _docstring_synopsis()
    entries = _synopsis(text)
    commands = _commands()
    # Every command without subcommands of its own, or listed with them (control).
    leaves = {
        path
        for path, (_, has_subs) in commands.items()
        if path and not has_subs and not any(path.startswith(f"{e} ") for e in entries)
    }
    assert leaves - set(entries) == set(), "commands missing from the synopsis"
    wrong = {
        path: (sorted(_expected(path) - named), sorted(named - _expected(path)))
        for path, named in entries.items()
        if named != _expected(path)
    }
    assert wrong == {}, "(missing, unknown) options per command"
