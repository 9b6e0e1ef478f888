"""OKX v5 public order book (``books``, 400 levels), and the OKX-style books protocol it shares
with Bitget.

Follows https://www.okx.com/docs-v5/en/#order-book-trading-market-data-ws-order-book-channel
("Order book channel", with its "Checksum" and "Sequence ID" sections):

* subscribe with ``{"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]}``;
  the first push is an ``action: snapshot`` (400 levels a side), then ``update`` s;
* levels are ``[price, size, "0", numOrders]`` (the third field, liquidated orders, is always
  "0"); in an update an existing price gets the new absolute size, size ``"0"`` deletes it, a
  new price is inserted;
* **Sequence ID:** a snapshot has ``prevSeqId = -1``; every update's ``prevSeqId`` equals the
  previous message's ``seqId``. That one rule covers the three cases the docs list: a normal
  update (``seqId`` grows), the idle heartbeat sent after about 60 s without changes (empty
  ``bids``/``asks``, ``prevSeqId == seqId``), and the reset after maintenance (``seqId <
  prevSeqId``; the message is applied and the following ones chain from the new, lower
  ``seqId``). Anything else is a :class:`~feeds.base.SequenceGap`. Messages recorded before
  OKX added the fields (2022) have neither: they are checked by checksum only;
* **Checksum:** CRC32, as a *signed* 32-bit int, of the first 25 bids and 25 asks after the
  message is applied, interleaved ``bid1px:bid1sz:ask1px:ask1sz:bid2px:...`` (when one side is
  shorter the remaining levels of the other follow), with price and size strings exactly as
  received; compared on every message, snapshots included;
* OKX deprecated ``checksum`` on ``books``, ``books-l2-tbt`` and ``books50-l2-tbt`` (announcement
  "OKX Order Book Channels Checksum Field Deprecation", 2026-05-21): from 2026-06-23 it is
  always 0 in production, so 0 (or an absent field) means "not provided" and ``seqId`` /
  ``prevSeqId`` carry integrity alone;
* keepalive: send the text ``ping`` when nothing arrived for less than 30 s; the answer is the
  text ``pong`` (https://www.okx.com/docs-v5/en/#overview-websocket-connect).

Raw payload (recorded 2022-05-13; current pushes add ``"prevSeqId"`` and ``"seqId"`` ints)::

    {"arg": {"channel": "books", "instId": "UNI-USD-SWAP"}, "action": "update",
     "data": [{"asks": [], "bids": [["5.134", "68", "0", "2"]], "ts": "1652459229648",
               "checksum": 1573501972}]}

Checksum strings
----------------
The book stores ints, and the venue's text of a price or size cannot be rebuilt from an int
(Bitget sends ``"113.50"`` and ``"6.40"``, trailing zeros an int does not keep), so
:class:`OkxStyleBookFeed` keeps, per symbol and side, a dict price -> the level list as
received, updated with the book. A checksum reads the first 25 prices from
:meth:`~otc.book.L2Book.bids` / :meth:`~otc.book.L2Book.asks` and their texts from that dict;
its cost does not grow with book depth (about 14 us a message on the recordings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Annotated, ClassVar

import msgspec

from feeds.base import (
    BookDelta,
    BookEvent,
    BookSnapshot,
    ChecksumMismatch,
    RequestRefused,
    SequenceGap,
    VenueBookFeed,
    crc32_signed,
    parse_levels,
)
from otc.book import L2Book
from otc.errors import ValueParseError
from otc.model import Levels, Scale

__all__ = ["CHECKSUM_DEPTH", "OkxBookFeed", "OkxStyleBookFeed", "checksum_text"]

#: Levels per side that the checksum covers (OKX and Bitget alike).
CHECKSUM_DEPTH = 25


class BookArg(msgspec.Struct, gc=False, rename="camel"):
    """``arg`` of a push or an ack: which channel and instrument (Bitget adds ``instType``)."""

    channel: str = ""
    inst_id: str = ""
    inst_type: str = ""


#: A time in ms sent as text (``"1652459229648"``): checked when decoded, so ``int()`` of it
#: cannot fail later, in the middle of applying a message.
_MsText = Annotated[str, msgspec.Meta(pattern="^[0-9]{1,19}$")]


class BookData(msgspec.Struct, gc=False, rename="camel"):
    """One ``data`` element. OKX sends ``seqId``/``prevSeqId`` (since 2023), Bitget v2 ``seq``;
    a field a venue (or an older recording) does not send stays ``None``."""

    asks: list[list[str]] = []
    bids: list[list[str]] = []
    ts: _MsText = "0"
    checksum: int = 0
    seq_id: int | None = None
    prev_seq_id: int | None = None
    seq: int | None = None


class BookMessage(msgspec.Struct, gc=False):
    arg: BookArg | None = None
    action: str = ""
    data: list[BookData] = []
    event: str = ""
    code: str | int = ""
    msg: str = ""


_decode = msgspec.json.Decoder(BookMessage).decode
_encode = msgspec.json.Encoder().encode

#: Per symbol: (bid texts, ask texts), each price (ticks) -> the level as received.
_Texts = tuple[dict[int, list[str]], dict[int, list[str]]]


def checksum_text(
    bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]], depth: int = CHECKSUM_DEPTH
) -> str:
    """The string OKX and Bitget checksum: ``bid1px:bid1sz:ask1px:ask1sz:...`` over the first
    ``depth`` levels of each side (best first), the longer side's extra levels appended."""
    bids = bids[:depth]
    asks = asks[:depth]
    parts: list[str] = []
    extend = parts.extend
    for bid, ask in zip(bids, asks, strict=False):
        extend((bid[0], bid[1], ask[0], ask[1]))
    common = min(len(bids), len(asks))
    for level in bids[common:] or asks[common:]:
        extend((level[0], level[1]))
    return ":".join(parts)


class OkxStyleBookFeed(VenueBookFeed):
    """The ``books`` protocol of OKX and of Bitget, which copied it: ``snapshot``/``update``
    actions, ``arg.instId``, and the CRC32 checksum over 25 interleaved levels.

    Subclasses declare the venue by class attributes and give its subscription ``arg`` and its
    sequence rules (:meth:`snapshot_sequence`, :meth:`update_sequence`,
    :meth:`sequence_fields`).
    """

    #: Channel name in ``arg`` (``books``: full-depth incremental).
    channel: ClassVar[str] = "books"
    heartbeat_interval_s: ClassVar[float] = 25.0

    def __init__(
        self,
        *,
        symbols: Mapping[str, str] | None = None,
        scales: Mapping[str, Scale] | None = None,
    ) -> None:
        super().__init__(symbols=symbols, scales=scales)
        self._texts: dict[str, _Texts] = {}

    # -- venue specifics -----------------------------------------------------------------------

    def subscription_arg(self, venue_symbol: str) -> dict[str, str]:
        """One element of a subscribe request's ``args``."""
        return {"channel": self.channel, "instId": venue_symbol}

    def snapshot_sequence(self, symbol: str, data: BookData) -> int | None:
        """The sequence id a snapshot sets (``None``: the venue sends none)."""
        raise NotImplementedError

    def update_sequence(self, symbol: str, book: L2Book, data: BookData) -> int | None:
        """Check an update's sequence against ``book`` and return its id.

        Raises:
            SequenceGap: through :meth:`~feeds.base.VenueBookFeed.fail`.
        """
        raise NotImplementedError

    def sequence_fields(self, sequence: int | None) -> dict[str, int]:
        """The sequence fields of a snapshot message the venue would send at ``sequence``."""
        raise NotImplementedError

    # -- protocol ------------------------------------------------------------------------------

    def subscribe_messages(self, venue_symbols: Iterable[str]) -> list[bytes]:
        args = [self.subscription_arg(s) for s in venue_symbols]
        return [_encode({"op": "subscribe", "args": args})]

    def heartbeat_message(self) -> bytes | None:
        return b"ping"

    def resubscribe_messages(self, venue_symbol: str) -> list[bytes] | None:
        args = [self.subscription_arg(venue_symbol)]
        return [
            _encode({"op": "unsubscribe", "args": args}),
            _encode({"op": "subscribe", "args": args}),
        ]

    def snapshot_message(self, symbol: str) -> bytes:
        book = self.books[symbol]
        bid_texts, ask_texts = self._texts[symbol]
        bids = [bid_texts[price] for price, _ in book.bids()]
        asks = [ask_texts[price] for price, _ in book.asks()]
        ts_ms = book.ts_event_ns // 1_000_000
        data: dict[str, object] = {
            "asks": asks,
            "bids": bids,
            "ts": str(ts_ms),
            "checksum": crc32_signed(checksum_text(bids, asks)),
            **self.sequence_fields(book.sequence),
        }
        return _encode(
            {
                "arg": self.subscription_arg(self.venue_symbol(symbol)),
                "action": "snapshot",
                "data": [data],
            }
        )

    def checksum(self, symbol: str) -> int:
        """The venue's checksum of our ``symbol`` book as it is now (signed CRC32)."""
        book = self.books[symbol]
        bid_texts, ask_texts = self._texts[symbol]
        bids = [bid_texts[price] for price, _ in islice(book.bids(), CHECKSUM_DEPTH)]
        asks = [ask_texts[price] for price, _ in islice(book.asks(), CHECKSUM_DEPTH)]
        return crc32_signed(checksum_text(bids, asks))

    def _check(self) -> None:
        """Assert the kept texts are exactly the books' levels (for tests; O(n))."""
        for symbol, book in self.books.items():
            scale = book.scale
            for texts, levels in zip(self._texts[symbol], (book.bids(), book.asks()), strict=True):
                assert {scale.price(t[0]): scale.size(t[1]) for t in texts.values()} == dict(
                    levels
                ), f"{symbol}: checksum texts out of step with the book"
                assert all(scale.price(t[0]) == p for p, t in texts.items())

    def on_message(self, data: bytes, ts_recv_ns: int) -> list[BookEvent]:
        if data == b"pong":
            self.stats.ignored += 1
            return []
        msg = _decode(data)
        arg = msg.arg
        if arg is None or arg.channel != self.channel or not msg.data:
            if msg.event == "error":
                raise RequestRefused(self.venue, f"request refused: {msg.code} {msg.msg}")
            self.stats.ignored += 1  # subscribe/unsubscribe acks
            return []
        action = msg.action
        if action != "snapshot" and action != "update":
            self.stats.ignored += len(msg.data)
            return []
        if not self.follows(arg.inst_id):
            self.stats.unfollowed += 1
            return []
        symbol = self.our_symbol(arg.inst_id)
        scale = self.book(symbol).scale
        # Every item is parsed before any is applied: a malformed one changes nothing.
        try:
            levels = [(parse_levels(i.bids, scale), parse_levels(i.asks, scale)) for i in msg.data]
        except ValueParseError as exc:
            if action == "snapshot":  # the symbol must resync: see malformed_snapshot
                raise self.malformed_snapshot(symbol, exc) from None
            raise
        events: list[BookEvent] = []
        for item, (bids, asks) in zip(msg.data, levels, strict=True):
            event = self._on_book(symbol, action, item, bids, asks, ts_recv_ns)
            if event is not None:
                events.append(event)
        return events

    def _on_book(
        self,
        symbol: str,
        action: str,
        item: BookData,
        bids: Levels,
        asks: Levels,
        ts_recv_ns: int,
    ) -> BookEvent | None:
        """Apply one ``data`` item of a ``snapshot`` or ``update`` (levels already parsed)."""
        book = self.book(symbol)
        ts_event_ns = int(item.ts) * 1_000_000
        if action == "snapshot":
            snap = BookSnapshot(
                self.venue,
                symbol,
                bids,
                asks,
                self.snapshot_sequence(symbol, item),
                ts_event_ns,
                ts_recv_ns,
            )
            self.apply_snapshot(snap)
            self._texts[symbol] = (
                _texts_of(snap.bids, item.bids),
                _texts_of(snap.asks, item.asks),
            )
            self._verify(symbol, item.checksum)
            return snap
        if not self.in_sync.get(symbol):
            self.stats.dropped += 1
            return None
        sequence = self.update_sequence(symbol, book, item)
        delta = BookDelta(
            self.venue,
            symbol,
            bids,
            asks,
            sequence,
            ts_event_ns,
            ts_recv_ns,
        )
        self.apply_delta(delta)
        bid_texts, ask_texts = self._texts[symbol]
        _update_texts(bid_texts, delta.bids, item.bids)
        _update_texts(ask_texts, delta.asks, item.asks)
        self._verify(symbol, item.checksum)
        return delta

    def _verify(self, symbol: str, expected: int) -> None:
        if not expected:
            return  # 0 or absent: not provided (OKX since 2026-06-23, Bitget v2 snapshots)
        computed = self.checksum(symbol)
        if computed != expected:
            raise self.fail(ChecksumMismatch(self.venue, symbol, expected, computed))
        self.stats.checksums_ok += 1


def _texts_of(levels: list[tuple[int, int]], raw: list[list[str]]) -> dict[int, list[str]]:
    return {price: level for (price, size), level in zip(levels, raw, strict=True) if size}


def _update_texts(
    texts: dict[int, list[str]], levels: list[tuple[int, int]], raw: list[list[str]]
) -> None:
    for (price, size), level in zip(levels, raw, strict=True):
        if size:
            texts[price] = level
        else:
            texts.pop(price, None)


class OkxBookFeed(OkxStyleBookFeed):
    venue: ClassVar[str] = "okx"
    url: ClassVar[str] = "wss://ws.okx.com:8443/ws/v5/public"

    def snapshot_sequence(self, symbol: str, data: BookData) -> int | None:
        return data.seq_id

    def update_sequence(self, symbol: str, book: L2Book, data: BookData) -> int | None:
        seq_id, prev_seq_id = data.seq_id, data.prev_seq_id
        if seq_id is None or prev_seq_id is None:
            return None  # recorded before OKX sent sequence ids: the checksum alone guards
        last = book.sequence
        # Normal update, idle heartbeat (prev == seq) and post-maintenance reset (seq < prev)
        # all chain from the last seqId; only a broken chain is a gap.
        if last is not None and prev_seq_id != last:
            raise self.fail(SequenceGap(self.venue, symbol, last, prev_seq_id))
        return seq_id

    def sequence_fields(self, sequence: int | None) -> dict[str, int]:
        return {} if sequence is None else {"prevSeqId": -1, "seqId": sequence}
