"""Bitget public order book (``books``): v2 spot live, and the v1 stream of the recordings.

Follows https://www.bitget.com/api-doc/spot/websocket/public/Depth-Channel ("Depth Channel",
with its "Checksum" section; the futures "Order-Book-Channel" page has the same text) and
https://www.bitget.com/api-doc/common/websocket-intro (connecting, ``ping``/``pong``). Bitget's
books protocol is OKX's (see :mod:`feeds.okx`, whose :class:`~feeds.okx.OkxStyleBookFeed` this
adapter is):

* connect to ``wss://ws.bitget.com/v2/ws/public`` and subscribe with ``{"op": "subscribe",
  "args": [{"instType": "SPOT", "channel": "books", "instId": "BTCUSDT"}]}``; the first push
  is an ``action: snapshot`` of the whole book, then ``update`` s;
* levels are ``[price, size]``; in an update size ``"0"`` deletes the price, any other size
  replaces it, a new price is inserted;
* **Checksum:** CRC32 as a *signed* 32-bit int over the first 25 bids and asks interleaved,
  ``bid1px:bid1sz:ask1px:ask1sz:...``, the longer side's extra levels appended, strings exactly
  as received (``"113.50"`` keeps its zero). v1 sends it on snapshots and updates; v2 sends 0 on
  snapshots, which we read as "not provided", as for OKX;
* **Sequence:** v2 data carries ``seq``, which grows with every change of the book but not by
  1 (a real push went from 395681152 to 395681167), and there is no previous-``seq`` field on
  this channel; so ``seq`` can only show disorder: one that does not grow is a
  :class:`~feeds.base.SequenceGap`; a lost update is caught by the next checksum. v1 has no
  ``seq``;
* keepalive: send the text ``ping`` every 30 s at most; the answer is the text ``pong``.

The recordings are of the deprecated v1 stream (``wss://ws.bitget.com/spot/v1/stream``,
``instType`` ``"sp"``; ``.../mix/v1/stream``, ``"mc"``): the same messages without ``seq``, so
this adapter parses both. Books are keyed by ``instId``; a spot and a futures book of the same
name need two adapters.

Raw payload (v1, recorded 2022-04-07; v2 adds ``"seq": <int>`` to the data and a top-level
``"ts": <ms>``, and has ``instType`` ``"SPOT"``)::

    {"action": "update", "arg": {"instType": "sp", "channel": "books", "instId": "GOGUSDT"},
     "data": [{"asks": [["0.5625", "16.3333"], ["0.5631", "9.0000"]],
               "bids": [["0.5512", "15.0667"], ["0.5500", "9.0919"]],
               "checksum": 871848329, "ts": "1649290078141"}]}

(levels shortened; the recorded message has 12 asks and 14 bids).
"""

from __future__ import annotations

from typing import ClassVar

from feeds.base import SequenceGap
from feeds.okx import BookData, OkxStyleBookFeed
from otc.book import L2Book

__all__ = ["BitgetBookFeed"]


class BitgetBookFeed(OkxStyleBookFeed):
    venue: ClassVar[str] = "bitget"
    url: ClassVar[str] = "wss://ws.bitget.com/v2/ws/public"
    #: v2 product line subscribed to: ``SPOT``, ``USDT-FUTURES``, ``COIN-FUTURES``...
    inst_type: ClassVar[str] = "SPOT"

    def subscription_arg(self, venue_symbol: str) -> dict[str, str]:
        return {"instType": self.inst_type, "channel": self.channel, "instId": venue_symbol}

    def snapshot_sequence(self, symbol: str, data: BookData) -> int | None:
        return data.seq

    def update_sequence(self, symbol: str, book: L2Book, data: BookData) -> int | None:
        seq = data.seq
        if seq is None:
            return None  # v1: the checksum alone guards
        last = book.sequence
        if last is not None and seq <= last:
            raise self.fail(SequenceGap(self.venue, symbol, f"> {last}", seq))
        return seq

    def sequence_fields(self, sequence: int | None) -> dict[str, int]:
        return {} if sequence is None else {"seq": sequence}
