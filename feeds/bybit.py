"""Bybit v5 public order book (``orderbook.{depth}.{symbol}``), spot and linear.

Follows https://bybit-exchange.github.io/docs/v5/websocket/public/orderbook:

* subscribe with ``{"op": "subscribe", "args": ["orderbook.200.BTCUSDT"]}``; the first message of
  a topic is a ``snapshot``, then ``delta`` s;
* in a delta, size ``"0"`` deletes the level, any other size is absolute;
* ``u`` is the update id and grows by 1 from one message to the next: a jump is a gap;
* any new snapshot resets the book (the service sends one with ``u = 1`` after a restart);
* ``ts`` is the system push time, ``cts`` the matching-engine time (ms).

Raw payload::

    {"topic": "orderbook.200.BTCUSDT", "ts": 1786310816816, "type": "delta",
     "data": {"s": "BTCUSDT", "b": [], "a": [["65140.5", "0.472215"], ["65239", "0"]],
              "u": 62505426, "seq": 112488545879},
     "cts": 1786310816779}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

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

__all__ = ["BybitBookFeed"]


class _Data(msgspec.Struct, gc=False):
    s: str
    b: list[list[str]]
    a: list[list[str]]
    u: int
    seq: int = 0


class _Message(msgspec.Struct, gc=False):
    topic: str = ""
    type: str = ""
    ts: int = 0
    cts: int = 0
    data: _Data | None = None
    op: str = ""
    success: bool | None = None
    ret_msg: str = ""


_decode = msgspec.json.Decoder(_Message).decode
_encode = msgspec.json.Encoder().encode


class BybitBookFeed(VenueBookFeed):
    venue: ClassVar[str] = "bybit"
    url: ClassVar[str] = "wss://stream.bybit.com/v5/public/spot"
    #: Book depth subscribed to (1, 50, 200 or 1000 on spot).
    depth: ClassVar[int] = 200

    def subscribe_messages(self, venue_symbols: Iterable[str]) -> list[bytes]:
        args = [f"orderbook.{self.depth}.{s}" for s in venue_symbols]
        return [_encode({"op": "subscribe", "args": args})]

    def heartbeat_message(self) -> bytes | None:
        return b'{"op":"ping"}'

    def resubscribe_messages(self, venue_symbol: str) -> list[bytes] | None:
        topic = f"orderbook.{self.depth}.{venue_symbol}"
        return [
            _encode({"op": "unsubscribe", "args": [topic]}),
            _encode({"op": "subscribe", "args": [topic]}),
        ]

    def snapshot_message(self, symbol: str) -> bytes:
        book = self.books[symbol]
        venue_symbol = self.venue_symbol(symbol)
        ts_ms = book.ts_event_ns // 1_000_000
        return _encode(
            {
                "topic": f"orderbook.{self.depth}.{venue_symbol}",
                "type": "snapshot",
                "ts": ts_ms,
                "data": {
                    "s": venue_symbol,
                    "b": level_texts(book.bids(), book.scale),
                    "a": level_texts(book.asks(), book.scale),
                    "u": book.sequence or 0,
                    "seq": 0,
                },
                "cts": ts_ms,
            }
        )

    def on_message(self, data: bytes, ts_recv_ns: int) -> list[BookEvent]:
        msg = _decode(data)
        body = msg.data
        if body is None or not msg.topic.startswith("orderbook."):
            if msg.op == "subscribe" and msg.success is False:
                raise RequestRefused(self.venue, f"subscription refused: {msg.ret_msg}")
            self.stats.ignored += 1
            return []
        if not self.follows(body.s):
            self.stats.unfollowed += 1
            return []
        symbol = self.our_symbol(body.s)
        book = self.book(symbol)
        scale = book.scale
        ts_event_ns = (msg.cts or msg.ts) * 1_000_000
        if msg.type == "snapshot":
            bids, asks = self.parse_snapshot(symbol, body.b, body.a)
            snap = BookSnapshot(
                self.venue,
                symbol,
                bids,
                asks,
                body.u,
                ts_event_ns,
                ts_recv_ns,
            )
            self.apply_snapshot(snap)
            return [snap]
        if not self.in_sync.get(symbol):
            self.stats.dropped += 1
            return []
        if book.sequence is not None and body.u <= book.sequence:
            self.stats.ignored += 1  # a repeat of what the book already has
            return []
        if book.sequence is not None and body.u != book.sequence + 1:
            raise self.fail(SequenceGap(self.venue, symbol, book.sequence + 1, body.u))
        delta = BookDelta(
            self.venue,
            symbol,
            parse_levels(body.b, scale),
            parse_levels(body.a, scale),
            body.u,
            ts_event_ns,
            ts_recv_ns,
        )
        self.apply_delta(delta)
        return [delta]
