"""A stand-in for a slow disk: hold an SQLite database's write lock from a connection of our own."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Hold the database's write lock: nothing (the journal's writer included) can commit
    until we let go."""
    with closing(sqlite3.connect(path, isolation_level=None)) as blocker:
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
