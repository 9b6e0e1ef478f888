"""Binance spot diff depth stream (``<symbol>@depth@100ms``) synced from REST snapshots.

Follows the Binance spot API docs (binance/binance-spot-api-docs):

* ``web-socket-streams.md``, "Diff. Depth Stream": events ``depthUpdate`` with ``U`` (first
  update id of the event), ``u`` (final update id), ``b``/``a`` levels ``[price, quantity]``;
  the quantity is absolute, ``"0.00000000"`` removes the level (a removal of an unknown level
  is normal);
* ``web-socket-streams.md``, "How to manage a local order book correctly":

  1. buffer the stream's events and fetch ``GET /api/v3/depth?symbol=...&limit=5000``;
  2. discard buffered events with ``u <= lastUpdateId``; the first remaining one must have
     ``U <= lastUpdateId + 1 <= u``, else the snapshot is older than the buffer: fetch again
     (the docs phrase it ``lastUpdateId < U``, one id more conservative than the exact
     bridge, which is the rule used here);
  3. then for every event: ``u <= book id`` is old, ignored; ``U > book id + 1`` is a gap
     (discard the book, buffer again, new snapshot); else apply and set book id = ``u``;

* ``rest-api.md``, "Order book" (``GET /api/v3/depth``): ``{"lastUpdateId", "bids", "asks"}``;
* ``web-socket-streams.md``, "Live Subscribing/Unsubscribing to streams": ``{"method":
  "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 1}``, answered ``{"result": null,
  "id": 1}``. On the combined endpoint (``/stream``) events come wrapped as ``{"stream",
  "data"}``; on ``/ws`` they come bare: both are accepted. The server pings every 20 s and the
  websocket library answers; there is no application heartbeat.

Resync is by REST only: a symbol waiting for a snapshot is listed by :meth:`pending_snapshots`
(with :meth:`snapshot_url`) and the connection layer fetches it and hands the body to
:meth:`on_rest`. While it waits, the symbol's events are buffered (at most
:attr:`BinanceBookFeed.max_buffered`, oldest dropped first), never applied; buffered events
the snapshot already covers count as ``dropped``. An event's levels are parsed when it arrives,
buffered or not, so a malformed one is refused then and leaves a hole the bridge treats as a gap.

Raw payload (combined stream, recorded 2024-08-08, levels shortened)::

    {"stream": "btcusdt@depth@100ms",
     "data": {"e": "depthUpdate", "E": 1723161255308, "s": "BTCUSDT",
              "U": 50093239203, "u": 50093239207,
              "b": [["55653.87000000", "0.00000000"]],
              "a": [["61838.04000000", "0.32332000"], ["61862.51000000", "0.00000000"]]}}

REST snapshot body (``GET /api/v3/depth?symbol=BTCUSDT&limit=5000``, shortened)::

    {"lastUpdateId": 50093239218, "bids": [["61837.63000000", "3.78826000"]],
     "asks": [["61837.64000000", "1.60520000"]]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import msgspec

from feeds.base import (
    BookDelta,
    BookEvent,
    BookSnapshot,
    RequestRefused,
    SequenceGap,
    VenueBookFeed,
    level_texts,
    parse_levels,
)
from otc.book import L2Book
from otc.errors import ValueParseError
from otc.model import Scale

__all__ = ["BinanceBookFeed"]


class _Depth(msgspec.Struct, gc=False):
    """A ``depthUpdate`` event (every field defaulted: the envelope below extends it)."""

    event: str = msgspec.field(default="", name="e")
    event_time_ms: int = msgspec.field(default=0, name="E")
    symbol: str = msgspec.field(default="", name="s")
    first_update_id: int = msgspec.field(default=0, name="U")
    final_update_id: int = msgspec.field(default=0, name="u")
    bids: list[list[str]] = msgspec.field(default_factory=list, name="b")
    asks: list[list[str]] = msgspec.field(default_factory=list, name="a")


class _Error(msgspec.Struct, gc=False):
    code: int = 0
    msg: str = ""


class _Message(_Depth, gc=False):
    """Anything the stream sends: a bare event (the inherited fields), a combined-stream
    wrapper (``stream``/``data``), or a request's answer (``id`` with ``result`` or
    ``error``)."""

    stream: str = ""
    data: _Depth | None = None
    id: int | str | None = None
    error: _Error | None = None


class _RestDepth(msgspec.Struct, gc=False):
    last_update_id: int = msgspec.field(name="lastUpdateId")
    bids: list[list[str]]
    asks: list[list[str]]


_decode = msgspec.json.Decoder(_Message).decode
_decode_rest = msgspec.json.Decoder(_RestDepth).decode
_encode = msgspec.json.Encoder().encode

#: A buffered event and its receive time.
_Buffered = tuple[_Depth, int]


def _levels(event: _Depth) -> int:
    return len(event.bids) + len(event.asks)


def _url_symbol(url: str) -> str:
    """The ``symbol=`` of a depth URL (a recording's ``conn`` may prefix it with ``REST``)."""
    symbols = parse_qs(urlsplit(url.removeprefix("REST").strip()).query).get("symbol")
    if not symbols:
        raise ValueParseError(f"no symbol= in snapshot url {url!r}")
    return symbols[0]


class BinanceBookFeed(VenueBookFeed):
    """Binance spot books from the diff depth stream and REST snapshots.

    Args:
        symbols: venue symbol (``BTCUSDT``) -> our symbol.
        scales: our symbol -> book scale.
        max_buffered: events kept per symbol while it waits for a snapshot.
        max_buffered_levels: price levels those events may hold in all (oldest events dropped
            first): events of thousands of levels each must not fill the memory while
            snapshots keep failing.
    """

    venue: ClassVar[str] = "binance"
    url: ClassVar[str] = "wss://stream.binance.com:9443/stream"
    rest_url: ClassVar[str] = "https://api.binance.com"
    #: Stream suffix: the diff depth stream at its fastest documented speed.
    stream: ClassVar[str] = "depth@100ms"
    #: Levels per side of a REST snapshot (the documented maximum).
    snapshot_limit: ClassVar[int] = 5000

    def __init__(
        self,
        *,
        symbols: Mapping[str, str] | None = None,
        scales: Mapping[str, Scale] | None = None,
        max_buffered: int = 10_000,
        max_buffered_levels: int = 1_000_000,
    ) -> None:
        super().__init__(symbols=symbols, scales=scales)
        self.max_buffered = max_buffered
        self.max_buffered_levels = max_buffered_levels
        #: Our symbol -> events waiting for its snapshot (only while out of sync).
        self._buffers: dict[str, list[_Buffered]] = {}
        #: Our symbol -> the levels its buffered events hold (see ``max_buffered_levels``).
        self._buffered_levels: dict[str, int] = {}
        #: Our symbol -> the venue's name, as the stream spells it (for the REST query).
        self._venue_names: dict[str, str] = {}

    # -- connection ----------------------------------------------------------------------------

    def subscribe_messages(self, venue_symbols: Iterable[str]) -> list[bytes]:
        # A new connection: events buffered on the previous one can no longer be bridged.
        self._buffers.clear()
        self._buffered_levels.clear()
        params = [f"{s.lower()}@{self.stream}" for s in venue_symbols]
        return [_encode({"method": "SUBSCRIBE", "params": params, "id": 1})]

    def pending_snapshots(self) -> list[str]:
        in_sync = self.in_sync
        return [
            self._venue_names[symbol]
            for symbol, buffered in self._buffers.items()
            if buffered and not in_sync.get(symbol)
        ]

    def snapshot_url(self, venue_symbol: str, *, base: str | None = None) -> str:
        root = (base or self.rest_url).rstrip("/")
        return f"{root}/api/v3/depth?symbol={venue_symbol}&limit={self.snapshot_limit}"

    def rest_snapshot_body(self, symbol: str) -> bytes:
        if not self.in_sync.get(symbol):
            raise KeyError(f"binance: no synced book for {symbol}")
        book = self.books[symbol]
        return _encode(
            {
                "lastUpdateId": book.sequence or 0,
                "bids": level_texts(book.bids(), book.scale),
                "asks": level_texts(book.asks(), book.scale),
            }
        )

    # -- messages ------------------------------------------------------------------------------

    def on_message(self, data: bytes, ts_recv_ns: int) -> list[BookEvent]:
        msg = _decode(data)
        body: _Depth = msg if msg.data is None else msg.data
        if body.event != "depthUpdate":
            if msg.error is not None:
                raise RequestRefused(self.venue, f"request {msg.id} refused: {msg.error.msg}")
            self.stats.ignored += 1  # subscription answers, other streams
            return []
        if not self.follows(body.symbol):
            self.stats.unfollowed += 1  # no book, no buffer, no snapshot
            return []
        symbol = self.our_symbol(body.symbol)
        book = self.books.get(symbol) or self.book(symbol)
        if not self.in_sync[symbol]:
            self._buffer(symbol, body, ts_recv_ns)
            return []
        delta = self._apply(symbol, book, body, ts_recv_ns)
        return [] if delta is None else [delta]

    def on_rest(self, url: str, data: bytes, ts_recv_ns: int) -> list[BookEvent]:
        """A ``/api/v3/depth`` body: the snapshot that bridges the buffered events.

        Raises:
            SequenceGap: the buffered events themselves have a gap (the symbol buffers again
                from the event after it and waits for another snapshot).
            MalformedSnapshot: a level does not parse, or a price is given twice (the symbol
                stays pending, its buffer kept).
            msgspec.DecodeError / ValidationError: not a depth snapshot (e.g. an error body).
            ValueParseError: the url names no symbol.
        """
        venue_symbol = _url_symbol(url)
        if not self.follows(venue_symbol):
            self.stats.unfollowed += 1  # a recording's snapshot of another symbol
            return []
        rest = _decode_rest(data)
        symbol = self.our_symbol(venue_symbol)
        book = self.book(symbol)
        if self.in_sync[symbol]:
            self.stats.ignored += 1  # the stream already keeps this book
            return []
        self._venue_names.setdefault(symbol, venue_symbol)
        last_id = rest.last_update_id
        buffered = self._buffers.get(symbol, [])
        keep = [item for item in buffered if item[0].final_update_id > last_id]
        if keep and keep[0][0].first_update_id > last_id + 1:
            # Older than the first buffered event: nothing bridges it. Stay pending: fetch again.
            self._set_buffer(symbol, keep)
            self.stats.ignored += 1
            return []
        # A body that does not parse or apply raises MalformedSnapshot here: the symbol stays
        # pending, its buffer kept, and the connection fetches another snapshot.
        bids, asks = self.parse_snapshot(symbol, rest.bids, rest.asks)
        snap = BookSnapshot(self.venue, symbol, bids, asks, last_id, 0, ts_recv_ns)  # no time
        self.apply_snapshot(snap)
        self.stats.dropped += len(buffered) - len(keep)
        self._set_buffer(symbol, [])
        events: list[BookEvent] = [snap]
        for index, (event, event_ts_recv_ns) in enumerate(keep):
            try:
                delta = self._apply(symbol, book, event, event_ts_recv_ns)
            except SequenceGap as exc:
                self._set_buffer(symbol, keep[index:])
                exc.applied = tuple(events)  # the snapshot and the deltas bridged before it
                raise
            if delta is not None:
                events.append(delta)
        return events

    # -- internals -----------------------------------------------------------------------------

    def _buffer(self, symbol: str, event: _Depth, ts_recv_ns: int) -> None:
        """Keep ``event`` for the snapshot to come.

        Raises:
            ValueParseError: a level does not parse; the event is not kept. Refused now, not
                when the snapshot arrives, where it would stop the bridge half-way.
        """
        scale = self.books[symbol].scale
        parse_levels(event.bids, scale)
        parse_levels(event.asks, scale)
        buffered = self._buffers.get(symbol)
        if buffered is None:
            buffered = self._buffers[symbol] = []
            self._venue_names[symbol] = event.symbol
        buffered.append((event, ts_recv_ns))
        levels = self._buffered_levels.get(symbol, 0) + _levels(event)
        while len(buffered) > 1 and (
            len(buffered) > self.max_buffered or levels > self.max_buffered_levels
        ):
            levels -= _levels(buffered.pop(0)[0])
            self.stats.dropped += 1
        self._buffered_levels[symbol] = levels

    def _set_buffer(self, symbol: str, events: list[_Buffered]) -> None:
        """Replace ``symbol``'s buffer (empty: none), its level count with it."""
        if events:
            self._buffers[symbol] = events
            self._buffered_levels[symbol] = sum(_levels(event) for event, _ in events)
        else:
            self._buffers.pop(symbol, None)
            self._buffered_levels.pop(symbol, None)

    def _apply(self, symbol: str, book: L2Book, event: _Depth, ts_recv_ns: int) -> BookDelta | None:
        """The documented update procedure on an in-sync book (None: an old event)."""
        book_id = book.sequence or 0
        if event.final_update_id <= book_id:
            self.stats.ignored += 1
            return None
        scale = book.scale
        bids, asks = parse_levels(event.bids, scale), parse_levels(event.asks, scale)
        if event.first_update_id > book_id + 1:
            self._set_buffer(symbol, [(event, ts_recv_ns)])  # parsed above: it will apply
            self._venue_names[symbol] = event.symbol
            raise self.fail(SequenceGap(self.venue, symbol, book_id + 1, event.first_update_id))
        delta = BookDelta(
            self.venue,
            symbol,
            bids,
            asks,
            event.final_update_id,
            event.event_time_ms * 1_000_000,
            ts_recv_ns,
        )
        self.apply_delta(delta)
        return delta
