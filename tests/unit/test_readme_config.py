"""The README's configuration table names every key `otc.config.Config` takes, and no other."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from otc.config import Config

README = Path(__file__).parents[2] / "README.md"


def _table() -> list[tuple[str, set[str]]]:
    """(section, identifiers in backticks on the row) for each row of the key table."""
    lines = README.read_text().splitlines()
    start = lines.index("| key | meaning |")
    rows: list[tuple[str, set[str]]] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(re.findall(r"`([^`]*)`", line))))
        first = re.search(r"`([A-Za-z_]+)", line)
        assert first is not None, line
        rows.append((first.group(1), names))
    return rows


def _keys(info: msgspec.inspect.Type, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every key under a Struct type, as (section, ..., key) paths."""
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    if isinstance(info, msgspec.inspect.UnionType):
        return [k for t in info.types for k in _keys(t, path)]
    if isinstance(info, msgspec.inspect.ListType):
        return _keys(info.item_type, path)
    if isinstance(info, msgspec.inspect.DictType):  # tiers: {name: TierConfig}
        return _keys(info.value_type, path)
    if isinstance(info, msgspec.inspect.StructType):
        keys = []
        for field in info.fields:
            keys.append((*path, field.encode_name))
            keys += _keys(field.type, (*path, field.encode_name))
        return keys
    return []


def test_every_config_key_is_in_the_readme_table() -> None:
    rows = _table()
    missing = []
    for key in _keys(msgspec.inspect.type_info(Config), ()):
        section = key[0]
        if len(key) == 1:
            continue  # a section: its keys are checked
        if not any(s == section and set(key[1:]) <= names for s, names in rows):
            missing.append(".".join(key))
    assert missing == []


def test_the_readme_table_names_only_config_sections() -> None:
    sections = {f.encode_name for f in msgspec.inspect.type_info(Config).fields}
    assert {section for section, _ in _table()} <= sections
