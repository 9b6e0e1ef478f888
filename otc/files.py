"""Files replaced whole: a reader sees the old file or the new one, never part of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

__all__ = ["replaced"]


@contextlib.contextmanager
def replaced(
    path: Path,
    *,
    mode: int | None = None,
    owner: os.stat_result | None = None,
    newline: str | None = None,
) -> Iterator[TextIO]:
    """A new ``path``, written through the text file this yields: a temporary file next to it,
    synced and renamed over ``path`` when the block ends (the folder synced too), removed when
    it raises. A crash leaves the old file or the new one.

    ``mode``: the new file's permissions (``None``: 0o666 less the umask); it never has wider
    ones in between. ``owner``: its owner and group are given to the new file where the
    process may (else it keeps ours).

    Raises:
        OSError: the temporary file cannot be created (``filename`` is ``path``), or a write,
            the sync or the rename fails.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "w", newline=newline, encoding="utf-8") as file:  # owns fd now
            if mode is None:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o666 & ~umask
            os.fchmod(file.fileno(), mode)
            if owner is not None:
                with contextlib.suppress(PermissionError):  # not ours to give away: keep ours
                    os.fchown(file.fileno(), owner.st_uid, owner.st_gid)
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
