"""Kraken spot order book: WebSocket v2 ``book`` channel (live) and v1 ``book`` (recordings).

Follows the Kraken docs:

* v2 book channel, https://docs.kraken.com/api/docs/websocket-v2/book: subscribe with
  ``{"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 1000}}``
  (depth 10, 25, 100, 500 or 1000); a ``snapshot`` then ``update`` s, each entry of ``data``
  carrying an integer ``checksum``; prices and quantities are JSON *numbers*;
* v2 instrument channel, https://docs.kraken.com/api/docs/websocket-v2/instrument: each pair's
  ``price_precision`` and ``qty_precision``, which the v2 checksum needs;
* v1 book, https://docs.kraken.com/api/docs/guides/spot-ws-book-v1: array messages
  ``[channelID, {...}, ({...},) channelName, pair]``; a snapshot has ``as``/``bs``, an update
  ``a`` and/or ``b`` (asks and bids may come in two dicts) and the checksum ``c`` (a quoted
  int) in the last dict; a 4th level element ``"r"`` flags a republished level;
* book checksums, https://docs.kraken.com/exchange/guides/websockets/book-checksum-v1 and
  .../book-checksum-v2, and ``../shared/data/README.md`` section 1.

Book rules (all versions): apply the levels of a message in array order, size 0 deletes, then
truncate each side to the subscribed depth (the venue sends no deletes for levels pushed out of
scope). The checksum is the unsigned CRC32 of the top 10 asks (ascending) then the top 10 bids
(descending), each as price text + qty text with ``.`` removed and leading zeros stripped. v1
snapshots carry no checksum; v2 snapshots and updates both do. There are no sequence numbers:
the checksum is the only integrity check, and a mismatch resyncs the pair (unsubscribe +
subscribe, which sends a fresh snapshot). The checksum covers the top 10 levels only, so a lost
update deeper would go unseen: a book message that cannot be applied (it does not decode, or one
of its levels does not parse) resyncs every pair it is about, and every pair in sync when its
pairs cannot even be read (see :meth:`~feeds.base.VenueBookFeed.lost_message`).

Checksum strings from ints. With ``.`` removed and leading zeros stripped, a price text with
``d`` decimals is just ``str()`` of the price as an integer of ``10**-d`` units (``"0.05005"``
-> ``5005``). So the adapter keeps no texts: it rebuilds the 20 strings from the book's ints
and the pair's decimals, which is exact when every text of the pair has those decimals:

* v1 pads every price and volume of a pair to fixed decimals (``"354.80000000"``); they are
  learned from each snapshot, which must be uniform (else the snapshot is refused as
  malformed). An update text of another width would make the next checksum fail, i.e. resync;
* v2 checksums the numbers *formatted* to the pair's precisions (``45281.0`` -> ``"452810"``
  at ``price_precision`` 1), which is exactly the int rule. Precisions come from the
  ``precisions`` argument or the instrument channel (subscribed when some are missing); until
  then they are taken from the snapshot's own number texts (Kraken prints them at full
  precision, ``0.80386470``); a wrong guess fails the checksum and resyncs.

Raw payloads::

    v2: {"channel": "book", "type": "update", "data": [{"symbol": "ETH/USD", "bids": [],
         "asks": [{"price": 1797.29, "qty": 0.00000000}, {"price": 1797.52, "qty": 1.56601318}],
         "checksum": 3329440863, "timestamp": "2025-05-06T09:17:26.208075Z"}]}
    v1: [992, {"b": [["354.15000000", "5.00000000", "1618678133.365913"]], "c": "2583817756"},
         "book-1000", "XMR/USD"]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Annotated, ClassVar

import msgspec

from feeds.base import (
    BookDelta,
    BookEvent,
    BookSnapshot,
    ChecksumMismatch,
    MalformedSnapshot,
    RequestRefused,
    VenueBookFeed,
    crc32_unsigned,
    parse_levels,
)
from otc.book import L2Book
from otc.errors import ValueParseError
from otc.model import Scale, decimals_of

__all__ = ["KrakenBookFeed"]

#: Book depths the v2 ``book`` channel accepts.
V2_DEPTHS = (10, 25, 100, 500, 1000)
#: Levels per side the checksum covers, whatever the depth.
CHECKSUM_LEVELS = 10

Levels = list[tuple[int, int]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# -- wire formats ---------------------------------------------------------------------------------


class _V1Body(msgspec.Struct, gc=False):
    """One dict of a v1 book message: a snapshot (``as``/``bs``) or an update (``a``/``b``)."""

    as_: list[list[str]] | None = msgspec.field(default=None, name="as")
    bs: list[list[str]] | None = None
    a: list[list[str]] | None = None
    b: list[list[str]] | None = None
    c: str | None = None


class _V1Subscription(msgspec.Struct, gc=False):
    name: str = ""
    depth: int | None = None


class _V2Level(msgspec.Struct, gc=False):
    # JSON numbers kept as their exact text (a float would lose digits).
    price: msgspec.Raw
    qty: msgspec.Raw


class _V2Book(msgspec.Struct, gc=False):
    """One entry of a v2 book message's ``data`` (other list-shaped channels leave defaults)."""

    symbol: str = ""
    bids: list[_V2Level] = []
    asks: list[_V2Level] = []
    checksum: int | None = None
    timestamp: datetime | None = None


#: Most decimals a pair's prices or volumes may have (Kraken's have at most 10). More would only
#: make the checksum rebuild huge integers (and hang on absurd ones such as 10**9 decimals).
MAX_PRECISION = 18
_Precision = Annotated[int, msgspec.Meta(ge=0, le=MAX_PRECISION)]


class _V2Pair(msgspec.Struct, gc=False):
    symbol: str
    price_precision: _Precision
    qty_precision: _Precision


class _V2Instruments(msgspec.Struct, gc=False):
    pairs: list[_V2Pair] = []


class _V2Result(msgspec.Struct, gc=False):
    channel: str = ""
    symbol: str = ""
    depth: int | None = None


class _Object(msgspec.Struct, gc=False):
    """Every JSON-object message: v1 events and all v2 messages."""

    # v1 events (systemStatus, subscriptionStatus, heartbeat, pong)
    event: str = ""
    channel_name: str = msgspec.field(default="", name="channelName")
    pair: str = ""
    status: str = ""
    error_message: str = msgspec.field(default="", name="errorMessage")
    subscription: _V1Subscription | None = None
    # v2 channel messages and method responses
    channel: str = ""
    type: str = ""
    data: list[_V2Book] | _V2Instruments | None = None
    method: str = ""
    success: bool | None = None
    error: str = ""
    result: _V2Result | None = None


_decode = msgspec.json.Decoder(list[int | _V1Body | str] | _Object).decode
_encode = msgspec.json.Encoder().encode


# -- per-pair state -------------------------------------------------------------------------------


class _Pair:
    """What the adapter knows about one pair beyond its book: protocol, depth, decimals.

    ``price_mul``/``price_div`` turn book ticks into the integer of the checksum text
    (``ticks * mul // div``); one of the two is 1.

    Each side's checksum text is cached with the side's ``version`` and its 10th price (the
    edge). An update whose prices on a side all lie beyond the edge (deeper than the 10th level)
    cannot change that side's top 10, so :meth:`keeps` lets the text survive it; any other
    change of the side, including one made outside this adapter, makes the versions differ and
    the text is rebuilt.
    """

    __slots__ = (
        "ask_edge",
        "ask_text",
        "ask_version",
        "bid_edge",
        "bid_text",
        "bid_version",
        "channel_id",
        "channel_name",
        "depth",
        "price_decimals",
        "price_div",
        "price_mul",
        "qty_decimals",
        "qty_div",
        "qty_mul",
        "scale",
        "v1",
        "venue_symbol",
    )

    def __init__(self, venue_symbol: str, scale: Scale, depth: int) -> None:
        self.venue_symbol = venue_symbol
        self.scale = scale
        self.depth = depth
        self.v1 = False
        self.channel_id = 0
        self.channel_name = ""
        self.price_decimals: int | None = None
        self.qty_decimals: int | None = None
        self.price_mul = self.price_div = self.qty_mul = self.qty_div = 1
        self.ask_text: str | None = None
        self.bid_text: str | None = None
        self.ask_edge: int | None = None
        self.bid_edge: int | None = None
        self.ask_version = self.bid_version = -1

    def set_decimals(self, price_decimals: int, qty_decimals: int) -> None:
        """Rebuild checksum texts at these decimals from now on.

        Raises:
            ValueParseError: a count outside ``0..MAX_PRECISION`` (nothing is changed).
        """
        _check_decimals(self.venue_symbol, price_decimals, qty_decimals)
        self.price_decimals = price_decimals
        self.qty_decimals = qty_decimals
        self.price_mul, self.price_div = _factors(self.scale.price_decimals - price_decimals)
        self.qty_mul, self.qty_div = _factors(self.scale.size_decimals - qty_decimals)
        self.ask_text = self.bid_text = None

    def _side_text(self, levels: list[tuple[int, int]]) -> str:
        pm, pd, qm, qd = self.price_mul, self.price_div, self.qty_mul, self.qty_div
        if pm == 1 and qm == 1:  # the book keeps at least the venue's decimals (the default)
            return "".join([f"{p // pd}{q // qd}" for p, q in levels])
        return "".join([f"{p * pm // pd}{q * qm // qd}" for p, q in levels])

    def checksum(self, book: L2Book) -> int:
        """CRC32 of the top 10 asks then bids, rebuilt from ints (see the module docstring)."""
        ask_text = self.ask_text
        if ask_text is None or self.ask_version != book.ask_version:
            levels = list(islice(book.asks(), CHECKSUM_LEVELS))
            ask_text = self.ask_text = self._side_text(levels)
            self.ask_edge = levels[-1][0] if len(levels) == CHECKSUM_LEVELS else None
            self.ask_version = book.ask_version
        bid_text = self.bid_text
        if bid_text is None or self.bid_version != book.bid_version:
            levels = list(islice(book.bids(), CHECKSUM_LEVELS))
            bid_text = self.bid_text = self._side_text(levels)
            self.bid_edge = levels[-1][0] if len(levels) == CHECKSUM_LEVELS else None
            self.bid_version = book.bid_version
        return crc32_unsigned(ask_text + bid_text)

    def keeps(self, book: L2Book, bids: Levels, asks: Levels) -> tuple[bool, bool]:
        """Whether the cached (bid, ask) texts stay valid once ``bids``/``asks`` are applied
        to ``book`` and it is truncated to ``depth``."""
        keep_asks = self.ask_text is not None and self.ask_version == book.ask_version
        if keep_asks and asks:
            edge = self.ask_edge
            if edge is None:
                keep_asks = False
            else:
                for price, _ in asks:
                    if price <= edge:
                        keep_asks = False
                        break
        keep_bids = self.bid_text is not None and self.bid_version == book.bid_version
        if keep_bids and bids:
            edge = self.bid_edge
            if edge is None:
                keep_bids = False
            else:
                for price, _ in bids:
                    if price >= edge:
                        keep_bids = False
                        break
        if self.depth < CHECKSUM_LEVELS:  # truncation could reach the top 10
            return False, False
        return keep_bids, keep_asks

    def restamp(self, book: L2Book, keep_bids: bool, keep_asks: bool) -> None:
        """Mark the cached texts current after an update :meth:`keeps` let them survive."""
        if keep_asks:
            self.ask_version = book.ask_version
        if keep_bids:
            self.bid_version = book.bid_version

    def texts(self, ticks: int, lots: int) -> tuple[str, str]:
        """A level as the venue prints it: fixed decimals (``"0.00000500"``)."""
        price_decimals, qty_decimals = self.price_decimals, self.qty_decimals
        if price_decimals is None or qty_decimals is None:
            raise ValueError(f"kraken: decimals of {self.venue_symbol} not known yet")
        return (
            _fixed_text(ticks * self.price_mul // self.price_div, price_decimals),
            _fixed_text(lots * self.qty_mul // self.qty_div, qty_decimals),
        )


def _factors(shift: int) -> tuple[int, int]:
    """(mul, div) taking a value at ``d + shift`` decimals to ``d`` decimals."""
    return (1, 10**shift) if shift >= 0 else (10**-shift, 1)


def _fixed_text(value: int, decimals: int) -> str:
    if not decimals:
        return str(value)
    text = str(value).rjust(decimals + 1, "0")
    return f"{text[:-decimals]}.{text[-decimals:]}"


def _uniform_decimals(levels: Iterable[list[str]], index: int) -> set[int]:
    """The set of decimal counts of element ``index`` of v1 ``levels`` (one value if fixed)."""
    out: set[int] = set()
    for level in levels:
        if len(level) < 2:
            raise ValueParseError(f"kraken v1: level {level!r} has no price and volume")
        text = level[index]
        dot = text.find(".")
        out.add(0 if dot < 0 else len(text) - dot - 1)
    return out


def _v1_ts_ns(levels: list[list[str]]) -> int:
    """Latest level timestamp (``"1618678133.365913"``, seconds) in ns; 0 when none.

    Raises:
        ValueParseError: a timestamp that is not such a decimal of seconds.
    """
    # Kraken prints every timestamp with 10 + 6 digits, so text order is time order.
    latest = max((level[2] for level in levels if len(level) > 2), default=None)
    if latest is None:
        return 0
    whole, _, frac = latest.partition(".")
    if not (
        0 < len(whole) <= 12
        and whole.isdigit()
        and whole.isascii()
        and (frac.isdigit() or not frac)
        and frac.isascii()
    ):
        raise ValueParseError(f"kraken v1: level timestamp {latest!r}")
    return int(whole) * 1_000_000_000 + int(frac[:9].ljust(9, "0"))


def _check_decimals(venue_symbol: str, price_decimals: int, qty_decimals: int) -> None:
    """Refuse decimal counts a checksum cannot be rebuilt at.

    Raises:
        ValueParseError: a count outside ``0..MAX_PRECISION``.
    """
    if not (0 <= price_decimals <= MAX_PRECISION and 0 <= qty_decimals <= MAX_PRECISION):
        raise ValueParseError(
            f"kraken {venue_symbol}: {price_decimals}/{qty_decimals} decimals, "
            f"more than {MAX_PRECISION}: checksum undefined"
        )


def _text_decimals(texts: list[tuple[str, str]]) -> tuple[int, int] | None:
    """v2 (price, qty) decimals from the number texts themselves (None without texts).

    Raises:
        ValueParseError: a text that is not a finite number.
    """
    if not texts:
        return None
    return max(decimals_of(p) for p, _ in texts), max(decimals_of(q) for _, q in texts)


def _guess_decimals(pair: _Pair, texts: list[tuple[str, str]]) -> None:
    """v2 precisions from the number texts themselves, until the instrument channel says."""
    decimals = _text_decimals(texts)
    if decimals is not None:
        pair.set_decimals(*decimals)


def _v2_texts(levels: list[_V2Level]) -> list[tuple[str, str]]:
    # msgspec does not check the UTF-8 of a Raw value; a number is ASCII, so anything that is
    # not is left for parse_levels to refuse (ValueParseError), not a UnicodeDecodeError here.
    return [
        (bytes(lv.price).decode(errors="replace"), bytes(lv.qty).decode(errors="replace"))
        for lv in levels
    ]


# -- the adapter ----------------------------------------------------------------------------------


class KrakenBookFeed(VenueBookFeed):
    """Kraken spot L2 books from the WebSocket v2 ``book`` channel, and v1 recordings.

    Each message is recognised on its own: a JSON array is v1, an object v2 (or a v1 event).

    Args:
        symbols: venue symbol (``"BTC/USD"``) -> our symbol.
        scales: our symbol -> book scale.
        precisions: venue symbol -> (``price_precision``, ``qty_precision``) from the instrument
            channel, for v2 checksums; pairs missing here are learned from the instrument
            channel (or, until it arrives, from the snapshot's texts).
        depth: v2 book depth to subscribe to (10, 25, 100, 500 or 1000).

    Raises:
        ValueError: ``depth`` is not one the v2 book channel accepts.
    """

    venue: ClassVar[str] = "kraken"
    url: ClassVar[str] = "wss://ws.kraken.com/v2"

    def __init__(
        self,
        *,
        symbols: Mapping[str, str] | None = None,
        scales: Mapping[str, Scale] | None = None,
        precisions: Mapping[str, tuple[int, int]] | None = None,
        depth: int = 1000,
    ) -> None:
        super().__init__(symbols=symbols, scales=scales)
        if depth not in V2_DEPTHS:
            raise ValueError(f"kraken: book depth must be one of {V2_DEPTHS}, got {depth}")
        self.depth = depth
        #: Venue symbol -> (price_precision, qty_precision), v2.
        self.precisions: dict[str, tuple[int, int]] = dict(precisions or {})
        self._pairs: dict[str, _Pair] = {}
        self._v1_depths: dict[str, int] = {}

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe_messages(self, venue_symbols: Iterable[str]) -> list[bytes]:
        symbols = list(venue_symbols)
        out: list[bytes] = []
        if any(s not in self.precisions for s in symbols):
            out.append(_encode({"method": "subscribe", "params": {"channel": "instrument"}}))
        params = {"channel": "book", "symbol": symbols, "depth": self.depth}
        out.append(_encode({"method": "subscribe", "params": params}))
        return out

    def heartbeat_message(self) -> bytes | None:
        return b'{"method":"ping"}'

    def resubscribe_messages(self, venue_symbol: str) -> list[bytes] | None:
        pair = self._pairs.get(self.our_symbol(venue_symbol))
        if pair is not None and pair.v1:
            subscription = {"name": "book", "depth": pair.depth}
            return [
                _encode({"event": name, "pair": [venue_symbol], "subscription": subscription})
                for name in ("unsubscribe", "subscribe")
            ]
        depth = self.depth if pair is None else pair.depth
        params = {"channel": "book", "symbol": [venue_symbol], "depth": depth}
        return [
            _encode({"method": "unsubscribe", "params": params}),
            _encode({"method": "subscribe", "params": params}),
        ]

    def snapshot_message(self, symbol: str) -> bytes:
        """The pair's book as the venue's snapshot, in the protocol the pair arrived in."""
        book = self.books[symbol]
        pair = self._pairs[symbol]
        if pair.v1:
            whole, frac = divmod(book.ts_event_ns // 1000, 1_000_000)
            ts = f"{whole}.{frac:06d}"
            body = {
                "as": [[*pair.texts(p, q), ts] for p, q in book.asks()],
                "bs": [[*pair.texts(p, q), ts] for p, q in book.bids()],
            }
            return _encode([pair.channel_id, body, pair.channel_name, pair.venue_symbol])

        def levels(side: Iterable[tuple[int, int]]) -> list[dict[str, msgspec.Raw]]:
            out = []
            for p, q in side:
                price, qty = pair.texts(p, q)
                out.append({"price": msgspec.Raw(price.encode()), "qty": msgspec.Raw(qty.encode())})
            return out

        entry = {
            "symbol": pair.venue_symbol,
            "bids": levels(book.bids()),
            "asks": levels(book.asks()),
            "checksum": pair.checksum(book),
        }
        return _encode({"channel": "book", "type": "snapshot", "data": [entry]})

    # -- messages ------------------------------------------------------------------------------

    def on_message(self, data: bytes, ts_recv_ns: int) -> list[BookEvent]:
        try:
            msg = _decode(data)
            if isinstance(msg, list):
                return self._on_v1_book(msg, ts_recv_ns)
        except msgspec.DecodeError as exc:  # ValidationError included: the shape is wrong
            raise self.lost_message(exc, self._books_of(data)) from None
        if msg.channel == "book" and isinstance(msg.data, list):
            return self._on_v2_book(msg.type, msg.data, ts_recv_ns)
        if msg.channel == "instrument" and isinstance(msg.data, _V2Instruments):
            for info in msg.data.pairs:
                self._learn_precisions(info)
        elif msg.method == "subscribe" or msg.event == "subscriptionStatus":
            self._on_subscribed(msg)
        self.stats.ignored += 1
        return []

    def _books_of(self, data: bytes) -> list[tuple[str, bool]] | None:
        """The books a message that did not decode is about, read as loosely as possible (for
        :meth:`~feeds.base.VenueBookFeed.lost_message`): (our symbol, it is a snapshot); ``[]``
        for a message of no book (an event, a method response, another channel); ``None`` when
        it cannot be told (not JSON, or a book message without readable pairs)."""
        try:
            msg = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return None
        if isinstance(msg, list):  # v1: [channelID, {...}, ({...},) channelName, pair]
            if len(msg) < 2 or not isinstance(msg[-2], str):
                return None
            if not msg[-2].startswith("book"):
                return []
            if not isinstance(msg[-1], str):
                return None
            snapshot = any(
                isinstance(body, dict) and ("as" in body or "bs" in body) for body in msg
            )
            return [(self.our_symbol(msg[-1]), snapshot)]
        if not isinstance(msg, dict):
            return None
        channel = msg.get("channel")
        if "event" in msg or "method" in msg or (isinstance(channel, str) and channel != "book"):
            return []
        kind = msg.get("type")
        entries = msg.get("data")
        if channel != "book" or kind not in ("snapshot", "update") or not isinstance(entries, list):
            return [] if channel == "book" and isinstance(kind, str) else None
        books = []
        for entry in entries:
            name = entry.get("symbol") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                return None
            books.append((self.our_symbol(name), kind == "snapshot"))
        return books

    def _pair(self, venue_symbol: str, symbol: str, book: L2Book) -> _Pair:
        pair = self._pairs.get(symbol)
        if pair is None:
            pair = _Pair(venue_symbol, book.scale, self.depth)
            self._pairs[symbol] = pair
        return pair

    def _on_subscribed(self, msg: _Object) -> None:
        if msg.event:  # v1 subscriptionStatus
            if msg.status == "error":
                raise RequestRefused(self.venue, f"subscription refused: {msg.error_message}")
            sub = msg.subscription
            if sub is not None and sub.name == "book" and sub.depth and msg.pair:
                self._v1_depths[msg.pair] = sub.depth
            return
        if msg.success is False:
            raise RequestRefused(self.venue, f"subscription refused: {msg.error}")
        result = msg.result
        if (
            result is not None
            and result.channel == "book"
            and result.depth
            and result.symbol
            and self.follows(result.symbol)
        ):
            symbol = self.our_symbol(result.symbol)
            self._pair(result.symbol, symbol, self.book(symbol)).depth = result.depth

    def _learn_precisions(self, info: _V2Pair) -> None:
        self.precisions[info.symbol] = (info.price_precision, info.qty_precision)
        pair = self._pairs.get(self.our_symbol(info.symbol))
        if pair is not None and not pair.v1:
            pair.set_decimals(info.price_precision, info.qty_precision)

    def _truncate(self, book: L2Book, depth: int) -> tuple[Levels, Levels]:
        """Drop the levels beyond ``depth`` on each side; returns them as deletes."""
        dropped_bids, dropped_asks = book.truncate(depth)
        return [(p, 0) for p in dropped_bids], [(p, 0) for p in dropped_asks]

    def _apply_levels(
        self,
        symbol: str,
        book: L2Book,
        pair: _Pair,
        bids: Levels,
        asks: Levels,
        ts_event_ns: int,
        ts_recv_ns: int,
    ) -> BookDelta:
        """Apply an update's levels in order, truncate to ``depth``; the delta as applied."""
        keep_bids, keep_asks = pair.keeps(book, bids, asks)
        update_bid, update_ask = book.update_bid, book.update_ask
        for price, size in bids:
            update_bid(price, size)
        for price, size in asks:
            update_ask(price, size)
        cut_bids, cut_asks = self._truncate(book, pair.depth)
        pair.restamp(book, keep_bids, keep_asks)
        book.set_meta(ts_event_ns=ts_event_ns, ts_recv_ns=ts_recv_ns)
        return BookDelta(
            self.venue,
            symbol,
            bids + cut_bids if cut_bids else bids,
            asks + cut_asks if cut_asks else asks,
            None,
            ts_event_ns,
            ts_recv_ns,
        )

    def _reset(
        self,
        symbol: str,
        pair: _Pair,
        bids: Levels,
        asks: Levels,
        ts_event_ns: int,
        ts_recv_ns: int,
    ) -> BookSnapshot:
        """Replace the book by a snapshot (truncated to the depth); the snapshot as applied.

        Counts the snapshot and marks the symbol in sync, but leaves ``applied`` to the caller
        (a v2 snapshot counts once its checksum holds).
        """
        book = self.replace_book(symbol, bids, asks, ts_event_ns=ts_event_ns, ts_recv_ns=ts_recv_ns)
        cut_bids, cut_asks = self._truncate(book, pair.depth)
        if cut_bids or cut_asks:  # more levels than subscribed: publish what the book holds
            bids, asks = list(book.bids()), list(book.asks())
        self.stats.snapshots += 1
        self.mark(symbol, True)
        return BookSnapshot(self.venue, symbol, bids, asks, None, ts_event_ns, ts_recv_ns)

    def _verify(self, symbol: str, pair: _Pair, book: L2Book, expected: int) -> None:
        computed = pair.checksum(book)
        if computed != expected:
            raise self.fail(ChecksumMismatch(self.venue, symbol, expected, computed))
        self.stats.checksums_ok += 1

    # -- v1 ------------------------------------------------------------------------------------

    def _on_v1_book(self, msg: list[int | _V1Body | str], ts_recv_ns: int) -> list[BookEvent]:
        if len(msg) < 4:
            raise msgspec.ValidationError("kraken v1: a channel message has at least 4 items")
        channel_id, venue_symbol, channel_name = msg[0], msg[-1], msg[-2]
        bodies = [body for body in msg[1:-2] if isinstance(body, _V1Body)]
        if not (
            isinstance(channel_id, int)
            and isinstance(venue_symbol, str)
            and isinstance(channel_name, str)
            and len(bodies) == len(msg) - 3
        ):
            raise msgspec.ValidationError("kraken v1: expected [channelID, {...}, name, pair]")
        if not channel_name.startswith("book"):
            self.stats.ignored += 1
            return []
        if not self.follows(venue_symbol):
            self.stats.unfollowed += 1
            return []
        symbol = self.our_symbol(venue_symbol)
        book = self.book(symbol)
        pair = self._pair(venue_symbol, symbol, book)
        pair.v1 = True
        if pair.channel_name != channel_name:
            depth = channel_name.rpartition("-")[2]
            if depth.isascii() and depth.isdigit() and len(depth) <= 6:
                pair.depth = int(depth)
            elif venue_symbol in self._v1_depths:
                pair.depth = self._v1_depths[venue_symbol]
            else:
                raise msgspec.ValidationError(f"kraken v1: no depth in {channel_name!r}")
            pair.channel_id = channel_id
            pair.channel_name = channel_name
        first = bodies[0]
        if first.as_ is not None or first.bs is not None:
            return [self._v1_snapshot(symbol, pair, first, ts_recv_ns)]
        if not self.in_sync.get(symbol):
            self.stats.dropped += 1
            return []
        if len(bodies) == 1:  # the common case: one side
            raw_asks = first.a or []
            raw_bids = first.b or []
            checksum = first.c
        else:
            raw_asks = []
            raw_bids = []
            checksum = None
            for body in bodies:
                if body.a:
                    raw_asks += body.a
                if body.b:
                    raw_bids += body.b
                if body.c is not None:
                    checksum = body.c
        scale = book.scale
        try:
            if checksum is not None and not (checksum.isascii() and checksum.isdigit()):
                raise ValueParseError(f"kraken v1 {venue_symbol}: checksum {checksum!r}")
            if pair.price_decimals is None:  # an empty snapshot: learn from the first update
                self._v1_decimals(venue_symbol, pair, raw_asks + raw_bids)
            bids = parse_levels(raw_bids, scale) if raw_bids else []
            asks = parse_levels(raw_asks, scale) if raw_asks else []
            ts_event_ns = _v1_ts_ns(
                raw_asks + raw_bids if raw_asks and raw_bids else raw_asks or raw_bids
            )
        except ValueParseError as exc:
            # The checksum covers the top 10 levels only: a lost update deeper stays unseen.
            raise self.lost_update(symbol, exc) from None
        delta = self._apply_levels(symbol, book, pair, bids, asks, ts_event_ns, ts_recv_ns)
        if checksum is not None:
            self._verify(symbol, pair, book, int(checksum))
        self.stats.applied += 1
        return [delta]

    def _v1_decimals(self, venue_symbol: str, pair: _Pair, levels: list[list[str]]) -> None:
        if not levels:
            return
        price_decimals = _uniform_decimals(levels, 0)
        qty_decimals = _uniform_decimals(levels, 1)
        if len(price_decimals) != 1 or len(qty_decimals) != 1:
            raise ValueParseError(
                f"kraken v1 {venue_symbol}: prices/volumes are not fixed-width "
                f"(decimals {sorted(price_decimals)}/{sorted(qty_decimals)}): checksum undefined"
            )
        pair.set_decimals(price_decimals.pop(), qty_decimals.pop())

    def _v1_snapshot(
        self, symbol: str, pair: _Pair, body: _V1Body, ts_recv_ns: int
    ) -> BookSnapshot:
        raw_asks = body.as_ or []
        raw_bids = body.bs or []
        scale = self.book(symbol).scale
        try:
            pair.price_decimals = pair.qty_decimals = None
            self._v1_decimals(pair.venue_symbol, pair, raw_asks + raw_bids)
            bids = parse_levels(raw_bids, scale)
            asks = parse_levels(raw_asks, scale)
            ts_event_ns = max(_v1_ts_ns(raw_bids), _v1_ts_ns(raw_asks))
        except ValueParseError as exc:
            raise self.malformed_snapshot(symbol, exc) from None
        snap = self._reset(symbol, pair, bids, asks, ts_event_ns, ts_recv_ns)
        self.stats.applied += 1
        return snap

    # -- v2 ------------------------------------------------------------------------------------

    def _on_v2_book(self, kind: str, entries: list[_V2Book], ts_recv_ns: int) -> list[BookEvent]:
        if kind != "snapshot" and kind != "update":
            self.stats.ignored += len(entries)
            return []
        if self.symbols:
            followed = [entry for entry in entries if self.follows(entry.symbol)]
            if len(followed) < len(entries):
                self.stats.unfollowed += len(entries) - len(followed)
                entries = followed
        # Every entry is parsed before any is applied: a malformed one changes no book, and the
        # message is lost for every pair it is about (the checksum covers the top 10 levels
        # only: a lost update deeper would stay unseen).
        try:
            parsed = [self._v2_parse(kind, entry) for entry in entries]
        except ValueParseError as exc:
            books = [(self.our_symbol(entry.symbol), kind == "snapshot") for entry in entries]
            raise self.lost_message(exc, books) from None
        events: list[BookEvent] = []
        failures: list[ChecksumMismatch | MalformedSnapshot] = []
        for entry, (bid_texts, ask_texts, bids, asks, decimals) in zip(
            entries, parsed, strict=True
        ):
            try:
                event = self._v2_entry(
                    kind, entry, bid_texts, ask_texts, bids, asks, decimals, ts_recv_ns
                )
            except (ChecksumMismatch, MalformedSnapshot) as exc:
                # Already counted, that pair out of sync; the other entries still apply.
                failures.append(exc)
                continue
            if event is not None:
                events.append(event)
        if failures:
            first = failures[0]
            first.others = tuple(
                dict.fromkeys(f.symbol for f in failures[1:] if f.symbol != first.symbol)
            )
            first.applied = tuple(events)
            raise first
        return events

    def _v2_parse(
        self, kind: str, entry: _V2Book
    ) -> tuple[
        list[tuple[str, str]], list[tuple[str, str]], Levels, Levels, tuple[int, int] | None
    ]:
        """An entry's level texts, levels and, for a snapshot, the pair's checksum decimals
        (``None``: not known yet).

        Raises:
            ValueParseError: a level does not parse, or a snapshot's decimals are out of range
                (nothing marked: see :meth:`_on_v2_book`).
        """
        scale = self.book(self.our_symbol(entry.symbol)).scale
        bid_texts = _v2_texts(entry.bids)
        ask_texts = _v2_texts(entry.asks)
        bids = parse_levels(bid_texts, scale)
        asks = parse_levels(ask_texts, scale)
        if kind != "snapshot":
            return bid_texts, ask_texts, bids, asks, None
        decimals = self.precisions.get(entry.symbol) or _text_decimals(bid_texts + ask_texts)
        if decimals is not None:
            _check_decimals(entry.symbol, *decimals)
        return bid_texts, ask_texts, bids, asks, decimals

    def _v2_entry(
        self,
        kind: str,
        entry: _V2Book,
        bid_texts: list[tuple[str, str]],
        ask_texts: list[tuple[str, str]],
        bids: Levels,
        asks: Levels,
        decimals: tuple[int, int] | None,
        ts_recv_ns: int,
    ) -> BookEvent | None:
        """Apply one parsed entry (``decimals``: a snapshot's, checked by :meth:`_v2_parse`).

        Raises:
            MalformedSnapshot: a snapshot gives a price twice on a side (the book unchanged).
            ChecksumMismatch: through :meth:`~feeds.base.VenueBookFeed.fail`.
        """
        symbol = self.our_symbol(entry.symbol)
        book = self.book(symbol)
        pair = self._pair(entry.symbol, symbol, book)
        pair.v1 = False
        ts_event_ns = 0
        if entry.timestamp is not None:
            ts = entry.timestamp
            if ts.tzinfo is None:  # RFC 3339 without an offset: Kraken means UTC
                ts = ts.replace(tzinfo=UTC)
            ts_event_ns = (ts - _EPOCH) // _MICROSECOND * 1000
        event: BookEvent
        if kind == "snapshot":
            event = self._reset(symbol, pair, bids, asks, ts_event_ns, ts_recv_ns)
            if decimals is None:
                pair.price_decimals = pair.qty_decimals = None
            else:
                pair.set_decimals(*decimals)  # checked by _v2_parse: cannot fail
        else:
            if not self.in_sync.get(symbol):
                self.stats.dropped += 1
                return None
            if pair.price_decimals is None:  # after an empty snapshot
                _guess_decimals(pair, bid_texts + ask_texts)
            event = self._apply_levels(symbol, book, pair, bids, asks, ts_event_ns, ts_recv_ns)
        if entry.checksum is not None:
            self._verify(symbol, pair, book, entry.checksum)
        self.stats.applied += 1
        return event
