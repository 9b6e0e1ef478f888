"""Reading venue recordings in the derived JSONL format of ``../shared/data``.

One record a line, ``{"recv_ts": <epoch s>, ["conn": "<endpoint | WS | REST <url>>",] "msg": <venue
JSON, verbatim>}``; a line without ``msg`` is a bare venue message (Bybit's historical dumps),
timed by its own ``ts`` (ms) when it has one. Files may be gzip-compressed (``.gz``).

The venue message is handed on as the exact bytes of its JSON text (``msgspec.Raw``), so adapters
decode recorded and live traffic with the very same code.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import msgspec

from otc.errors import ConfigError

__all__ = ["RecordedMessage", "read_recording"]


class RecordedMessage(msgspec.Struct, frozen=True):
    """One venue message from a recording: where it came from, when, and its raw bytes."""

    conn: str
    ts_recv_ns: int
    data: bytes
    line: int


#: Times must give ns that fit an int64 (what msgspec and our recordings hold): year 2262.
_MAX_NS = 2**63 - 1
_EpochS = Annotated[float, msgspec.Meta(ge=0, le=_MAX_NS // 1_000_000_000)]
_EpochMs = Annotated[int, msgspec.Meta(ge=0, le=_MAX_NS // 1_000_000)]


class _Record(msgspec.Struct, gc=False):
    msg: msgspec.Raw = msgspec.Raw()
    recv_ts: _EpochS | None = None
    conn: str = ""
    ts: _EpochMs | None = None


_decode = msgspec.json.Decoder(_Record).decode


def read_recording(path: str | Path) -> Iterator[RecordedMessage]:
    """Yield the messages of a derived-JSONL recording in file order.

    Raises:
        ConfigError: the file cannot be opened or read (a ``.gz`` that is not gzip, or cut
            short, included), a line is not JSON, or its times are negative or beyond 2262;
            the message names the file and line.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rb") as fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    yield _message(path, number, line)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        where = f"line {number + 1}" if number else "$"
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(str(path), where, f"cannot read: {problem}") from None


def _message(path: Path, number: int, line: bytes) -> RecordedMessage:
    """Line ``number`` of ``path``, a record, as the message it holds."""
    try:
        record = _decode(line)
    except msgspec.DecodeError as exc:
        raise ConfigError(str(path), f"line {number}", f"not a JSON record: {exc}") from None
    except RecursionError:
        raise ConfigError(str(path), f"line {number}", "nested too deeply") from None
    if len(record.msg):
        data = bytes(record.msg)
        ts_ns = round(record.recv_ts * 1e9) if record.recv_ts is not None else 0
    else:
        data = line.rstrip(b"\r\n")
        ts_ns = record.ts * 1_000_000 if record.ts is not None else 0
    return RecordedMessage(record.conn, ts_ns, data, number)
