"""Book files: a consolidated book as JSON, read by ``otc estimate`` and written by the engine.

Format (prices and sizes are decimal strings; levels may come in any order)::

    {"symbol": "BTC-USDT",
     "venues": {"binance": {"taker_fee_bps": "10",
                            "bids": [["64000.1", "1.25"], ...],
                            "asks": [["64000.2", "0.5"], ...]},
                ...}}

Optional per venue: ``sequence`` (int), ``ts_event_ns`` and ``ts_recv_ns`` (ints, ns since the
epoch). ``taker_fee_bps`` may be a JSON number or a decimal string. A malformed file raises
:class:`~otc.errors.ConfigError` whose one-line message names the file, the JSON path and the
problem (bad JSON, missing side, non-numeric price, negative size, duplicate price...).

The books' fixed-point scale is the finest one the file needs, so reading is always exact.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec

from otc.book import ConsolidatedBook, L2Book
from otc.config import config_error
from otc.errors import ConfigError, ValueParseError
from otc.model import (
    Scale,
    decimal_text,
    decimals_of,
    parse_fee_bps,
    repeated_member_at,
    to_decimal,
)

__all__ = ["MAX_DECIMALS", "BookFile", "VenueLevels", "dump_book", "load_book", "parse_book"]

#: Most decimal places a book file's prices or sizes may have.
MAX_DECIMALS = 18


class VenueLevels(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One venue's side of a book file."""

    #: A decimal string is read as prices are (plain ASCII: not ``"1_000"`` nor ``"١٢"``, which
    #: ``Decimal`` would take); a JSON number as the shortest text that gives it back.
    taker_fee_bps: str | int | float
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    sequence: int | None = None
    ts_event_ns: int = 0
    ts_recv_ns: int = 0


class BookFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    symbol: str
    venues: dict[str, VenueLevels]


class _RawBookFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """First decoding stage: venues kept raw so that errors can name the venue in the path."""

    symbol: str
    venues: dict[str, msgspec.Raw]


_decoder = msgspec.json.Decoder(_RawBookFile)
_venue_decoder = msgspec.json.Decoder(VenueLevels)


def load_book(path: str | Path, *, size_decimals: int = 0) -> ConsolidatedBook:
    """Read a book file into a :class:`ConsolidatedBook` (staleness checks off); see
    :func:`parse_book` for ``size_decimals``."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, "$", f"cannot read: {exc.strerror}") from None
    return parse_book(data, source=source, size_decimals=size_decimals)


def parse_book(data: bytes, *, source: str = "<book>", size_decimals: int = 0) -> ConsolidatedBook:
    """Parse the bytes of a book file; ``source`` names it in errors.

    The books' scale is the finest the file needs, and at least ``size_decimals`` decimal
    places for sizes: what a query of a finer size (``otc estimate --qty 0.001`` on a book of
    whole sizes) needs.
    """
    try:
        raw = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise config_error(source, exc) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(source, "$", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(source, "$", "nested too deeply for a book file") from None
    venues: dict[str, VenueLevels] = {}
    for name, body in raw.venues.items():
        try:
            venues[name] = _venue_decoder.decode(body)
        except msgspec.ValidationError as exc:
            err = config_error(source, exc)
            raise ConfigError(source, f"$.venues.{name}{err.path[1:]}", err.problem) from None
        except msgspec.DecodeError as exc:  # invalid UTF-8 inside a string
            raise ConfigError(source, f"$.venues.{name}", f"not valid JSON: {exc}") from None
        except RecursionError:
            raise ConfigError(source, f"$.venues.{name}", "nested too deeply") from None
    repeated = repeated_member_at(data)
    if repeated is not None:
        raise ConfigError(
            source, repeated[0], "given twice (JSON leaves which one counts undefined)"
        )
    doc = BookFile(symbol=raw.symbol, venues=venues)
    if not doc.venues:
        raise ConfigError(source, "$.venues", "no venues")

    price_decimals = 0
    for name, venue in doc.venues.items():
        for side in ("bids", "asks"):
            for i, (price, size) in enumerate(getattr(venue, side)):
                at = f"$.venues.{name}.{side}[{i}]"
                try:
                    price_decimals = max(price_decimals, decimals_of(price))
                except ValueParseError:
                    raise ConfigError(
                        source, f"{at}[0]", f"price is not a number: {price!r}"
                    ) from None
                try:
                    size_decimals = max(size_decimals, decimals_of(size))
                except ValueParseError:
                    raise ConfigError(
                        source, f"{at}[1]", f"size is not a number: {size!r}"
                    ) from None
    if price_decimals > MAX_DECIMALS or size_decimals > MAX_DECIMALS:
        raise ConfigError(source, "$.venues", f"more than {MAX_DECIMALS} decimal places")
    scale = Scale(price_decimals, size_decimals)

    book = ConsolidatedBook(doc.symbol, scale)
    for name, venue in sorted(doc.venues.items()):
        try:
            fee_bps = venue.taker_fee_bps
            fee = parse_fee_bps(fee_bps if isinstance(fee_bps, str) else Decimal(repr(fee_bps)))
        except ValueParseError as exc:
            raise ConfigError(source, f"$.venues.{name}.taker_fee_bps", str(exc)) from None
        sides: dict[str, list[tuple[int, int]]] = {}
        for side in ("bids", "asks"):
            levels: list[tuple[int, int]] = []
            seen: set[int] = set()
            for i, (price_text, size_text) in enumerate(getattr(venue, side)):
                at = f"$.venues.{name}.{side}[{i}]"
                try:
                    price = scale.price(price_text)
                except ValueParseError as exc:
                    raise ConfigError(source, f"{at}[0]", str(exc)) from None
                try:
                    size = scale.size(size_text)
                except ValueParseError as exc:
                    raise ConfigError(source, f"{at}[1]", str(exc)) from None
                if price in seen:
                    raise ConfigError(source, f"{at}[0]", f"price {price_text} given twice")
                seen.add(price)
                levels.append((price, size))
            sides[side] = levels
        l2 = L2Book(name, doc.symbol, scale)
        l2.apply_snapshot(
            sides["bids"],
            sides["asks"],
            sequence=venue.sequence,
            ts_event_ns=venue.ts_event_ns,
            ts_recv_ns=venue.ts_recv_ns,
        )
        book.add_venue(l2, fee)
    return book


def dump_book(book: ConsolidatedBook) -> bytes:
    """The book file of a consolidated book (all venues, included or not), levels from the touch."""
    scale = book.scale
    venues: dict[str, VenueLevels] = {}
    for name, state in sorted(book.venues.items()):
        l2 = state.book
        venues[name] = VenueLevels(
            taker_fee_bps=_text(state.fee, 4),
            bids=[
                (_text(p, scale.price_decimals), _text(s, scale.size_decimals))
                for p, s in l2.bids()
            ],
            asks=[
                (_text(p, scale.price_decimals), _text(s, scale.size_decimals))
                for p, s in l2.asks()
            ],
            sequence=l2.sequence,
            ts_event_ns=l2.ts_event_ns,
            ts_recv_ns=l2.ts_recv_ns,
        )
    doc = BookFile(symbol=book.symbol, venues=venues)
    return msgspec.json.encode(doc)


def _text(value: int, decimals: int) -> str:
    return decimal_text(to_decimal(value, decimals))
