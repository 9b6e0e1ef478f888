"""Replay a venue recording through its adapter and report integrity: ``otc feeds verify``.

Every message goes through the adapter exactly as live traffic would (decode, apply, sequence
and checksum checks). A gap or checksum failure is counted and the symbol waits for a fresh
snapshot, as it would live after a resync; a message that cannot be decoded is counted as
malformed. The report ends with each symbol's top of book.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec

from feeds.base import ChecksumMismatch, RequestRefused, SequenceGap, VenueBookFeed
from feeds.recorded import read_recording
from feeds.registry import adapter_class
from otc.errors import ValueParseError
from otc.model import decimal_text

__all__ = ["TopOfBook", "VerifyReport", "verify"]


class TopOfBook(msgspec.Struct, frozen=True):
    bid: str | None
    ask: str | None


class VerifyReport(msgspec.Struct):
    venue: str
    messages: int
    applied: int
    checksums_ok: int
    checksums_failed: int
    gaps: int
    resyncs: int
    malformed: int
    books: dict[str, TopOfBook]
    errors: list[str]


def verify(venue: str, paths: Iterable[str | Path], *, max_errors: int = 20) -> VerifyReport:
    """Replay ``paths`` (in order) through a fresh ``venue`` adapter."""
    feed: VenueBookFeed = adapter_class(venue)()
    messages = malformed = 0
    errors: list[str] = []
    for path in paths:
        for record in read_recording(path):
            messages += 1
            try:
                if record.conn.startswith("REST"):
                    feed.on_rest(record.conn, record.data, record.ts_recv_ns)
                else:
                    feed.on_message(record.data, record.ts_recv_ns)
            except (SequenceGap, ChecksumMismatch, RequestRefused) as exc:
                if len(errors) < max_errors:
                    errors.append(f"{path}:{record.line}: {exc}")
            except (msgspec.DecodeError, msgspec.ValidationError, ValueParseError) as exc:
                malformed += 1
                if len(errors) < max_errors:
                    errors.append(f"{path}:{record.line}: malformed message: {exc}")
    books: dict[str, TopOfBook] = {}
    for symbol, book in sorted(feed.books.items()):
        scale = book.scale
        books[symbol] = TopOfBook(
            bid=None if book.best_bid is None else decimal_text(scale.price_text(book.best_bid)),
            ask=None if book.best_ask is None else decimal_text(scale.price_text(book.best_ask)),
        )
    stats = feed.stats
    return VerifyReport(
        venue=venue,
        messages=messages,
        applied=stats.applied,
        checksums_ok=stats.checksums_ok,
        checksums_failed=stats.checksums_failed,
        gaps=stats.gaps,
        resyncs=stats.resyncs,
        malformed=malformed,
        books=books,
        errors=errors,
    )
