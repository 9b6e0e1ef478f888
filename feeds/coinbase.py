"""Coinbase books: Advanced Trade ``level2`` (live), and the legacy Exchange ``level2`` feed.

Advanced Trade (:class:`CoinbaseBookFeed`)
------------------------------------------
Follows https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels
("Level2 Channel", "Heartbeats Channel") and the "Sequence Numbers" section of the Advanced Trade
WebSocket overview:

* subscribe with one message per channel: ``{"type": "subscribe", "product_ids": ["BTC-USD"],
  "channel": "level2"}`` and ``{"type": "subscribe", "channel": "heartbeats"}``: most channels
  close after 60-90 s without updates, and heartbeats (one a second) keep the subscriptions and
  the sequence numbers flowing; no authentication is needed for either;
* messages arrive on channel ``l2_data``; each ``event`` is a ``snapshot`` (the whole book) or
  an ``update``; ``updates`` carry ``side`` (``bid`` / ``offer``), ``price_level`` and
  ``new_quantity``, the absolute size, ``"0"`` removing the level. The channel "guarantees
  delivery of all updates"; there is no checksum;
* ``sequence_num`` counts the messages of the **connection**, every channel together (0, 1, 2
  ...). A skipped number means a lost message, of any channel, for any product: every book is
  suspect, so the adapter marks them all out of sync, raises one :class:`~feeds.base.SequenceGap`
  and :meth:`CoinbaseBookFeed.resubscribe_messages` resubscribes every product out of sync
  (a new subscription starts with a new snapshot). A new connection numbers from 0 again:
  :meth:`~CoinbaseBookFeed.subscribe_messages` (sent on every connect) resets the count.
  An ``l2_data`` message that does not parse counts as lost too: its number is not taken, so
  the next message is a gap (a dropped update would otherwise go unnoticed for good).

Whole connection or not
-----------------------
The skip check is only sound on the whole connection. Derived recordings keep the ``l2_data``
messages of one product, so their numbers skip those of the other channels and products (the
ETH-USD file runs 21, 22, 23, 25, 27 ...). ``check_sequence`` says which applies:

* ``True``: the adapter sees every message of the connection: each ``sequence_num`` must be
  the previous one plus 1;
* ``False``: it may see a filtered part: per product, ``sequence_num`` must only increase (a
  repeat or a decrease, i.e. a duplicated or reordered message, is still a gap);
* ``None`` (default): ``False`` until the first message of a channel other than ``l2_data``
  (subscriptions, heartbeats...) shows that nothing is filtered, ``True`` from there on. A
  live connection subscribes to heartbeats, so it is checked whole within a second; a replay
  of a derived file stays on the per-product check; a replay of a whole capture is checked
  whole.

Raw payload (recorded 2026-08-09)::

    {"channel": "l2_data", "timestamp": "2026-08-09T21:05:48.506659391Z", "sequence_num": 15,
     "events": [{"type": "update", "product_id": "BTC-USD", "updates": [
        {"side": "offer", "event_time": "2026-08-09T21:05:48.264069Z",
         "price_level": "65106.54", "new_quantity": "0.15361938"},
        {"side": "offer", "event_time": "2026-08-09T21:05:48.264069Z",
         "price_level": "65155.5", "new_quantity": "0.00000011"}]}]}

Legacy Exchange (:class:`CoinbaseLegacyBookFeed`)
-------------------------------------------------
Follows https://docs.cdp.coinbase.com/exchange/websocket-feed/channels ("Level2 Channel",
"Level2 Batch Channel"): a ``snapshot`` (``bids``/``asks`` as ``[price, size]``) then
``l2update`` s whose ``changes`` are ``[side, price, size]``, side ``buy``/``sell``, size
absolute, ``"0"`` removing the level. There is no sequence number nor checksum in level2, so
nothing can be checked, and nothing would show a lost update: a book message that cannot be
applied (it does not decode, or a change does not parse) resyncs its product, and every product
in sync when the message cannot be read far enough to name one. ``level2`` itself now requires
authentication; live, the adapter subscribes to ``level2_batch``, the same messages batched
every 50 ms without authentication.

Raw payload (recorded 2021-04-17)::

    {"type": "l2update", "product_id": "SKL-BTC", "changes": [["sell", "0.00001306", "660.5"]],
     "time": "2021-04-17T16:43:37.075687Z"}

Timestamps are RFC 3339 with up to nanoseconds; :func:`rfc3339_ns` converts them to integer ns
without going through a float.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import ClassVar, Literal

import msgspec

from feeds.base import (
    BookDelta,
    BookEvent,
    BookSnapshot,
    MalformedSnapshot,
    RequestRefused,
    SequenceGap,
    VenueBookFeed,
    level_texts,
    parse_levels,
)
from otc.errors import ValueParseError
from otc.model import Scale

__all__ = ["CoinbaseBookFeed", "CoinbaseLegacyBookFeed", "rfc3339_ns"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


@lru_cache(maxsize=1024)
def _epoch_seconds(text: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS`` (UTC) to whole seconds since the epoch, exactly."""
    return (datetime.fromisoformat(text).replace(tzinfo=UTC) - _EPOCH) // _SECOND


def rfc3339_ns(text: str) -> int:
    """An RFC 3339 time (``2026-08-09T21:05:48.618125631Z``, or with a ``+hh:mm`` offset) to
    ns since the epoch; fraction digits beyond the ninth are truncated.

    Raises:
        ValueParseError: not such a time.
    """
    offset_s = 0
    if text.endswith(("Z", "z")):
        body = text[:-1]
    elif len(text) > 6 and text[-6] in "+-" and text[-3] == ":":
        body = text[:-6]
        hours, minutes = text[-5:-3], text[-2:]
        if not (hours.isdecimal() and minutes.isdecimal()):
            raise ValueParseError(f"bad time offset in {text!r}")
        offset_s = int(hours) * 3600 + int(minutes) * 60
        if text[-6] == "-":
            offset_s = -offset_s
    else:
        raise ValueParseError(f"time {text!r} has no zone")
    head, dot, frac = body.partition(".")
    if dot and not (frac.isdecimal() and frac.isascii()):
        raise ValueParseError(f"bad fraction of a second in {text!r}")
    if len(head) != 19 or head[10] not in "Tt ":
        raise ValueParseError(f"not an RFC 3339 time: {text!r}")
    try:
        seconds = _epoch_seconds(head)
    except ValueError:
        raise ValueParseError(f"not an RFC 3339 time: {text!r}") from None
    return (seconds - offset_s) * 1_000_000_000 + int(frac[:9].ljust(9, "0"))


# -- Advanced Trade --------------------------------------------------------------------------


class _Update(msgspec.Struct, gc=False):
    side: Literal["bid", "offer"]
    price_level: str
    new_quantity: str


class _Event(msgspec.Struct, gc=False):
    """An event of any channel; only ``l2_data`` ones carry ``product_id`` and ``updates``."""

    type: str = ""
    product_id: str = ""
    updates: list[_Update] = []


class _Message(msgspec.Struct, gc=False):
    channel: str = ""
    timestamp: str = ""
    sequence_num: int | None = None
    events: list[_Event] = []
    type: str = ""  # "error" for a refused request
    message: str = ""


_decode = msgspec.json.Decoder(_Message).decode
_SEQUENCE_NUM = re.compile(rb'"sequence_num"\s*:\s*[0-9]+')


def _rfc3339(ts_ns: int) -> str:
    """RFC 3339 UTC text with nanoseconds, the inverse of :func:`rfc3339_ns`."""
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


_encode = msgspec.json.Encoder().encode


class CoinbaseBookFeed(VenueBookFeed):
    """Coinbase Advanced Trade ``level2`` books, with the connection's sequence check.

    Args:
        symbols: venue product id (``BTC-USD``) -> our symbol.
        scales: our symbol -> book scale.
        check_sequence: ``True`` when the adapter sees the whole connection (every
            ``sequence_num`` follows the previous one), ``False`` when it may see only part
            (numbers must only increase, per product), ``None`` to decide from the traffic (see
            the module docstring).
    """

    venue: ClassVar[str] = "coinbase"
    url: ClassVar[str] = "wss://advanced-trade-ws.coinbase.com"
    channel: ClassVar[str] = "level2"

    def __init__(
        self,
        *,
        symbols: Mapping[str, str] | None = None,
        scales: Mapping[str, Scale] | None = None,
        check_sequence: bool | None = None,
    ) -> None:
        super().__init__(symbols=symbols, scales=scales)
        self.check_sequence = check_sequence
        #: Whether the whole-connection check runs (fixed by ``check_sequence``, or learnt).
        self.whole_connection = check_sequence is True
        #: ``sequence_num`` of the previous message of the connection (whole-connection check).
        self.last_sequence: int | None = None
        #: Our symbol -> ``sequence_num`` of its last ``l2_data`` message (per-product check).
        self._product_sequence: dict[str, int] = {}
        #: Venue product ids subscribed on this connection.
        self._subscribed: list[str] = []

    # -- connection ----------------------------------------------------------------------------

    def subscribe_messages(self, venue_symbols: Iterable[str]) -> list[bytes]:
        # Every connection numbers its messages from 0.
        self.last_sequence = None
        self._product_sequence.clear()
        self.whole_connection = self.check_sequence is True
        self._subscribed = list(venue_symbols)
        return [
            _encode(
                {"type": "subscribe", "product_ids": self._subscribed, "channel": self.channel}
            ),
            _encode({"type": "subscribe", "channel": "heartbeats"}),
        ]

    def resubscribe_messages(self, venue_symbol: str) -> list[bytes] | None:
        """Unsubscribe and subscribe ``level2`` again for ``venue_symbol`` and every other
        product out of sync (a connection-wide gap leaves them all waiting): each gets a new
        snapshot."""
        products = [venue_symbol]
        for symbol, in_sync in self.in_sync.items():
            name = self.venue_symbol(symbol)
            if not in_sync and name not in products:
                products.append(name)
        return [
            _encode({"type": "unsubscribe", "product_ids": products, "channel": self.channel}),
            _encode({"type": "subscribe", "product_ids": products, "channel": self.channel}),
        ]

    def stamp(self, data: bytes, sequence: int) -> bytes:
        return _SEQUENCE_NUM.sub(b'"sequence_num":%d' % sequence, data, count=1)

    def snapshot_message(self, symbol: str) -> bytes:
        book = self.books[symbol]
        stamp = _rfc3339(book.ts_event_ns)
        scale = book.scale
        updates = [
            {"side": side, "event_time": stamp, "price_level": p, "new_quantity": q}
            for side, levels in (("bid", book.bids()), ("offer", book.asks()))
            for p, q in level_texts(levels, scale)
        ]
        return _encode(
            {
                "channel": "l2_data",
                "timestamp": stamp,
                "sequence_num": 0,  # set per connection by stamp()
                "events": [
                    {
                        "type": "snapshot",
                        "product_id": self.venue_symbol(symbol),
                        "updates": updates,
                    }
                ],
            }
        )

    # -- messages ------------------------------------------------------------------------------

    def on_message(self, data: bytes, ts_recv_ns: int) -> list[BookEvent]:
        msg = _decode(data)
        if msg.type == "error":
            raise RequestRefused(self.venue, f"request refused: {msg.message}")
        sequence = msg.sequence_num
        is_book = msg.channel == "l2_data"
        if sequence is not None:
            if not (is_book or self.whole_connection or self.check_sequence is False):
                self.whole_connection = True  # another channel: nothing is filtered out
                self.last_sequence = None
            if self.whole_connection:
                self._check_connection(sequence, msg)
        if not is_book:
            self.stats.ignored += 1
            return []
        if sequence is not None and not self.whole_connection:
            for product in {event.product_id for event in msg.events}:
                if self.follows(product):
                    self._check_product(self.our_symbol(product), sequence)
        try:
            parsed = self._parse_l2(msg, sequence, ts_recv_ns)
        except ValueParseError as exc:
            # An update that could not be applied is as good as lost, and there is no checksum
            # to notice it later: forget its number, so that the next message of the
            # connection shows the loss as a gap and the books resync. A message of snapshots
            # only loses no update: its products are out of sync and resubscribed together.
            if (
                self.whole_connection
                and sequence is not None
                and sequence == self.last_sequence
                and not (
                    isinstance(exc, MalformedSnapshot)
                    and all(
                        event.type != "update" or not self.follows(event.product_id)
                        for event in msg.events
                    )
                )
            ):
                self.last_sequence = sequence - 1
            raise
        return self._apply_l2(parsed)

    def _parse_l2(self, msg: _Message, sequence: int | None, ts_recv_ns: int) -> list[BookEvent]:
        """Every event of an ``l2_data`` message, parsed (none applied yet).

        Raises:
            MalformedSnapshot: a snapshot's time or levels do not parse; its product is marked
                out of sync (every snapshot's, for the time).
            ValueParseError: an update's time or level does not parse.
        """
        try:
            ts_event_ns = rfc3339_ns(msg.timestamp) if msg.timestamp else 0
        except ValueParseError as exc:
            snapshots = [
                self.our_symbol(e.product_id)
                for e in msg.events
                if e.type == "snapshot" and self.follows(e.product_id)
            ]
            if not snapshots:
                raise
            errors = [self.malformed_snapshot(symbol, exc) for symbol in snapshots]
            raise errors[0] from None
        # Every event is parsed before any is applied: a malformed one leaves all books as
        # they were, not the events before it applied (and never returned).
        parsed: list[BookEvent] = []
        for event in msg.events:
            if event.type != "snapshot" and event.type != "update":
                self.stats.ignored += 1
                continue
            if not self.follows(event.product_id):
                self.stats.unfollowed += 1
                continue
            symbol = self.our_symbol(event.product_id)
            scale = (self.books.get(symbol) or self.book(symbol)).scale
            bids: list[tuple[str, str]] = []
            asks: list[tuple[str, str]] = []
            for update in event.updates:
                level = (update.price_level, update.new_quantity)
                (bids if update.side == "bid" else asks).append(level)
            if event.type == "snapshot":
                bid_levels, ask_levels = self.parse_snapshot(symbol, bids, asks)
                parsed.append(
                    BookSnapshot(
                        self.venue,
                        symbol,
                        bid_levels,
                        ask_levels,
                        sequence,
                        ts_event_ns,
                        ts_recv_ns,
                    )
                )
                continue
            parsed.append(
                BookDelta(
                    self.venue,
                    symbol,
                    parse_levels(bids, scale),
                    parse_levels(asks, scale),
                    sequence,
                    ts_event_ns,
                    ts_recv_ns,
                )
            )
        return parsed

    def _apply_l2(self, parsed: list[BookEvent]) -> list[BookEvent]:
        """Apply the parsed events of a message; the events applied.

        Raises:
            MalformedSnapshot: a snapshot gives a price twice (its product out of sync, its book
                as it was); the other events are applied all the same and carried in its
                ``applied``. The first such error when there are several: the connection's
                resubscription covers every product out of sync.
        """
        out: list[BookEvent] = []
        failures: list[MalformedSnapshot] = []
        for book_event in parsed:
            if isinstance(book_event, BookSnapshot):
                try:
                    self.apply_snapshot(book_event)
                except MalformedSnapshot as exc:
                    failures.append(exc)
                    continue
            elif self.in_sync[book_event.symbol]:
                self.apply_delta(book_event)
            else:
                self.stats.dropped += 1
                continue
            out.append(book_event)
        if failures:
            failures[0].applied = tuple(out)
            raise failures[0]
        return out

    # -- sequence checks -----------------------------------------------------------------------

    def _check_connection(self, sequence: int, msg: _Message) -> None:
        last = self.last_sequence
        self.last_sequence = sequence
        if last is None or sequence == last + 1:
            return
        # A lost message of the connection: any product may have lost an update.
        suspects = [s for s, in_sync in self.in_sync.items() if in_sync]
        suspects += [
            self.our_symbol(p)
            for p in self._subscribed
            if self.our_symbol(p) not in self.in_sync  # waiting for a first snapshot
        ]
        named = [
            self.our_symbol(e.product_id)
            for e in msg.events
            if e.product_id and self.follows(e.product_id)
        ]
        symbol = named[0] if named else (suspects[0] if suspects else "")
        if not symbol:
            return  # no book yet and none subscribed: nothing to resync
        error = SequenceGap(self.venue, symbol, last + 1, sequence)
        for other in suspects:
            if other != symbol:
                self.mark(other, False, str(error))
        raise self.fail(error)

    def _check_product(self, symbol: str, sequence: int) -> None:
        last = self._product_sequence.get(symbol)
        if last is not None and sequence <= last:
            raise self.fail(SequenceGap(self.venue, symbol, f"> {last}", sequence))
        self._product_sequence[symbol] = sequence


# -- legacy Exchange feed ----------------------------------------------------------------------


class _LegacyMessage(msgspec.Struct, gc=False):
    type: str
    product_id: str = ""
    bids: list[list[str]] = []
    asks: list[list[str]] = []
    changes: list[tuple[Literal["buy", "sell"], str, str]] = []
    time: str = ""
    message: str = ""
    reason: str = ""


_decode_legacy = msgspec.json.Decoder(_LegacyMessage).decode


class CoinbaseLegacyBookFeed(VenueBookFeed):
    """Coinbase Exchange (legacy) ``level2`` / ``level2_batch`` books; nothing to check."""

    venue: ClassVar[str] = "coinbase"
    url: ClassVar[str] = "wss://ws-feed.exchange.coinbase.com"
    #: ``level2`` needs authentication; ``level2_batch`` sends the same messages without.
    channel: ClassVar[str] = "level2_batch"

    def subscribe_messages(self, venue_symbols: Iterable[str]) -> list[bytes]:
        products = list(venue_symbols)
        return [
            _encode(
                {
                    "type": "subscribe",
                    "product_ids": products,
                    "channels": [self.channel, "heartbeat"],
                }
            )
        ]

    def resubscribe_messages(self, venue_symbol: str) -> list[bytes] | None:
        request = {"product_ids": [venue_symbol], "channels": [self.channel]}
        return [
            _encode({"type": "unsubscribe", **request}),
            _encode({"type": "subscribe", **request}),
        ]

    def snapshot_message(self, symbol: str) -> bytes:
        book = self.books[symbol]
        return _encode(
            {
                "type": "snapshot",
                "product_id": self.venue_symbol(symbol),
                "bids": level_texts(book.bids(), book.scale),
                "asks": level_texts(book.asks(), book.scale),
            }
        )

    def on_message(self, data: bytes, ts_recv_ns: int) -> list[BookEvent]:
        try:
            msg = _decode_legacy(data)
        except msgspec.DecodeError as exc:  # ValidationError included: the shape is wrong
            # Nothing numbers this feed's messages: a book message lost here is lost for good.
            raise self.lost_message(exc, self._books_of(data)) from None
        kind = msg.type
        if kind == "error":
            raise RequestRefused(self.venue, f"request refused: {msg.message} {msg.reason}".strip())
        if kind != "l2update" and kind != "snapshot":
            self.stats.ignored += 1  # subscriptions, heartbeat, ticker...
            return []
        if not self.follows(msg.product_id):
            self.stats.unfollowed += 1
            return []
        symbol = self.our_symbol(msg.product_id)
        book = self.books.get(symbol) or self.book(symbol)
        scale = book.scale
        if kind == "snapshot":
            bids, asks = self.parse_snapshot(symbol, msg.bids, msg.asks)
            try:
                ts_event_ns = rfc3339_ns(msg.time) if msg.time else 0
            except ValueParseError as exc:
                raise self.malformed_snapshot(symbol, exc) from None
            snap = BookSnapshot(self.venue, symbol, bids, asks, None, ts_event_ns, ts_recv_ns)
            self.apply_snapshot(snap)
            return [snap]
        if not self.in_sync[symbol]:
            self.stats.dropped += 1
            return []
        changed_bids: list[tuple[str, str]] = []
        changed_asks: list[tuple[str, str]] = []
        for side, price, size in msg.changes:
            (changed_bids if side == "buy" else changed_asks).append((price, size))
        try:
            delta = BookDelta(
                self.venue,
                symbol,
                parse_levels(changed_bids, scale),
                parse_levels(changed_asks, scale),
                None,
                rfc3339_ns(msg.time) if msg.time else 0,
                ts_recv_ns,
            )
        except ValueParseError as exc:
            # Nothing numbers this feed's updates: without this one the book would stay wrong.
            raise self.lost_update(symbol, exc) from None
        self.apply_delta(delta)
        return [delta]

    def _books_of(self, data: bytes) -> list[tuple[str, bool]] | None:
        """The book a message that did not decode is about, read as loosely as possible (for
        :meth:`~feeds.base.VenueBookFeed.lost_message`): ``[(our symbol, it is a snapshot)]``;
        ``[]`` for a message of no book (subscriptions, heartbeat...); ``None`` when it cannot
        be told (not a JSON object, or a book message without a readable product)."""
        try:
            msg = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if not isinstance(kind, str):
            return None
        if kind != "snapshot" and kind != "l2update":
            return []
        product = msg.get("product_id")
        return (
            [(self.our_symbol(product), kind == "snapshot")] if isinstance(product, str) else None
        )
