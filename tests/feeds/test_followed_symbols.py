"""Every adapter given a symbol map follows those symbols only: the venue's messages about any
other symbol are skipped unread (no book, no checksum, no resync), and the followed books are
exactly what an adapter following everything builds.

Over the multi-symbol recordings of ../shared/data (each venue's symbols interleaved as the venue
sent them), following one symbol at a time: summed over the symbols, the checksum and sequence
counts are the README's, and every book message is counted once as applied and once as skipped
by each of the other adapters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from feeds.base import SequenceGap, VenueBookFeed
from feeds.coinbase import CoinbaseBookFeed
from feeds.kraken import KrakenBookFeed
from feeds.recorded import RecordedMessage, read_recording
from feeds.registry import adapter_class
from otc.book import L2Book


def replay(feed: VenueBookFeed, records: list[RecordedMessage]) -> None:
    for record in records:
        if record.conn.startswith("REST"):
            feed.on_rest(record.conn, record.data, record.ts_recv_ns)
        else:
            feed.on_message(record.data, record.ts_recv_ns)


def state(book: L2Book) -> tuple[object, ...]:
    return (
        list(book.bids()),
        list(book.asks()),
        book.sequence,
        book.ts_event_ns,
        book.ts_recv_ns,
    )


def coinbase_connection(shared_data: Path) -> list[RecordedMessage]:
    """The two derived Advanced Trade files, one connection's ``l2_data`` of ETH-USD and of
    BTC-USD, merged back in ``sequence_num`` order: both products interleaved as sent."""
    folder = shared_data / "coinbase"
    records = [
        *read_recording(folder / "coinbase_advtrade_level2_ETH-USD_2026-08-09.jsonl"),
        *read_recording(folder / "coinbase_advtrade_level2_BTC-USD_2026-08-09.jsonl.gz"),
    ]
    return sorted(records, key=lambda r: json.loads(r.data)["sequence_num"])


#: venue, recording (under ../shared/data), and from its README: the book messages (snapshots
#: and updates, REST snapshots included), the checksums that match and the deltas applied.
CASES: list[tuple[str, str, int, int, int | None]] = [
    ("okx", "okx/okx_v5_books400_3inst_2022-05-13.jsonl", 3 + 287, 290, None),
    ("bitget", "bitget/bitget_v1_spot_books_2022-04-07.jsonl", 8 + 435, 443, None),
    ("bitget", "bitget/bitget_v1_mix_books_2022-04-07.jsonl", 2 + 192, 194, None),
    ("kraken", "kraken/kraken_v1_book1000_10pairs_2021-04-17.jsonl", 10 + 4269, 4269, 4269),
    ("bybit", "bybit/bybit_v5_linear_orderbook200_2026-08-09.jsonl", 4 + 1594, 0, 1594),
    ("bybit", "bybit/bybit_v5_spot_orderbook200_2026-08-09.jsonl", 2 + 548, 0, 548),
    (
        "binance",
        "binance/binance_spot_depth_4sym_with_rest_snapshots_2021-10-12.jsonl",
        177 + 4,
        0,
        None,
    ),
    (
        "coinbase_legacy",
        "coinbase/coinbase_exchange_legacy_level2_10products_2021-04-17.jsonl",
        10 + 9719,
        0,
        9719,
    ),
    ("coinbase", "(ETH-USD and BTC-USD merged)", 375 + 400, 0, 374 + 399),
]


@pytest.mark.parametrize(
    ("venue", "name", "book_messages", "checksums", "deltas"),
    CASES,
    ids=[f"{case[0]}-{case[1].rpartition('/')[2]}" for case in CASES],
)
def test_following_one_symbol_of_a_recording_gives_its_book_alone_and_exact(
    shared_data: Path,
    venue: str,
    name: str,
    book_messages: int,
    checksums: int,
    deltas: int | None,
) -> None:
    if venue == "coinbase":
        records = coinbase_connection(shared_data)
    else:
        records = list(read_recording(shared_data / name))
    cls = adapter_class(venue)
    everything = cls()  # no symbol map: every symbol the venue sends
    replay(everything, records)
    symbols = sorted(everything.books)
    assert len(symbols) > 1
    assert everything.stats.unfollowed == 0
    totals = {"checksums_ok": 0, "snapshots": 0, "applied": 0, "unfollowed": 0}
    for symbol in symbols:
        ours = f"OURS {symbol}"  # another name: the map's keys are the venue's names
        feed = cls(symbols={symbol: ours})
        replay(feed, records)
        assert set(feed.books) == {ours}, symbol
        assert feed.in_sync == {ours: True}
        book = feed.books[ours]
        assert state(book) == state(everything.books[symbol]), symbol
        book._check()
        if hasattr(feed, "_check"):  # OKX and Bitget: the checksum texts follow the book
            feed._check()
        stats = feed.stats
        assert (stats.gaps, stats.checksums_failed, stats.resyncs) == (0, 0, 0), symbol
        for counter in totals:
            totals[counter] += getattr(stats, counter)
    reference = everything.stats
    assert totals["checksums_ok"] == reference.checksums_ok == checksums
    assert totals["snapshots"] == reference.snapshots
    assert totals["applied"] == reference.applied
    if deltas is not None:
        assert reference.applied - reference.snapshots == deltas
    # Each book message is skipped by every adapter but the one following its symbol.
    assert totals["unfollowed"] == (len(symbols) - 1) * book_messages


def test_kraken_v2_entry_of_an_unasked_pair_is_skipped_unparsed(shared_data: Path) -> None:
    """The real ETH/USD snapshot and update of 2025-05-06, each with an entry of XBT/USD (not
    asked for, and with levels that do not parse) put before ETH/USD's, and its ack."""
    vectors = json.loads((shared_data / "kraken" / "kraken_checksum_vectors.json").read_text())
    raw = vectors["v2_live_snapshot_plus_update_ETHUSD_2025-05-06"]["raw_messages_in_order"]
    junk = {"symbol": "XBT/USD", "bids": [{"price": -1, "qty": "x"}], "asks": [], "checksum": 7}
    messages = []
    for text in raw:
        message: dict[str, Any] = json.loads(text)
        if message.get("channel") == "book":
            message["data"].insert(0, junk)
        elif message.get("method") == "subscribe":
            messages.append(
                json.dumps({**message, "result": {**message["result"], "symbol": "XBT/USD"}})
            )
        messages.append(json.dumps(message))
    feed = KrakenBookFeed(symbols={"ETH/USD": "ETH-USD"})
    results = [feed.on_message(m.encode(), 1) for m in messages]
    assert [len(r) for r in results] == [0, 0, 1, 1]
    assert set(feed.books) == {"ETH-USD"}
    assert feed.in_sync == {"ETH-USD": True}
    assert (feed.stats.checksums_ok, feed.stats.checksums_failed) == (2, 0)  # as without junk
    assert feed.stats.unfollowed == 2
    assert len(feed.books["ETH-USD"]) == 20  # the ack's depth 10, each side


def test_coinbase_event_of_an_unasked_product_is_skipped_unparsed(shared_data: Path) -> None:
    """A real ETH-USD message with a BTC-USD event (not asked for, its level not a number) put
    first: only ETH-USD is applied, and the numbers of the connection still count."""
    path = shared_data / "coinbase" / "coinbase_advtrade_level2_ETH-USD_2026-08-09.jsonl"
    records = list(read_recording(path))[:20]
    junk = {
        "type": "update",
        "product_id": "BTC-USD",
        "updates": [{"side": "bid", "event_time": "x", "price_level": "NaN", "new_quantity": "1"}],
    }
    clean = CoinbaseBookFeed()
    feed = CoinbaseBookFeed(symbols={"ETH-USD": "ETH-USD"})
    for record in records:
        clean.on_message(record.data, record.ts_recv_ns)
        message = json.loads(record.data)
        message["events"].insert(0, junk)
        feed.on_message(msgspec.json.encode(message), record.ts_recv_ns)
    assert set(feed.books) == {"ETH-USD"}
    assert state(feed.books["ETH-USD"]) == state(clean.books["ETH-USD"])
    assert feed.stats.unfollowed == len(records)
    assert feed.stats.gaps == 0


def test_a_gap_of_the_connection_names_a_followed_product_not_the_unasked_one() -> None:
    """Coinbase: a skipped ``sequence_num`` on a message of a product not followed resyncs the
    followed books; it must not put the other product out of sync (it would be resubscribed:
    a subscription we never asked for)."""

    def l2(sequence: int, kind: str, product: str) -> bytes:
        update = {"side": "bid", "event_time": "", "price_level": "10", "new_quantity": "1"}
        return msgspec.json.encode(
            {
                "channel": "l2_data",
                "timestamp": "2026-08-09T21:05:48.506659391Z",
                "sequence_num": sequence,
                "events": [{"type": kind, "product_id": product, "updates": [update]}],
            }
        )

    feed = CoinbaseBookFeed(symbols={"ETH-USD": "ETH-USD"}, check_sequence=True)
    feed.on_message(l2(0, "snapshot", "ETH-USD"), 1)
    feed.on_message(l2(1, "snapshot", "BTC-USD"), 1)
    with pytest.raises(SequenceGap) as caught:
        feed.on_message(l2(3, "update", "BTC-USD"), 1)
    assert (caught.value.symbol, caught.value.expected, caught.value.received) == ("ETH-USD", 2, 3)
    assert feed.in_sync == {"ETH-USD": False}
    assert set(feed.books) == {"ETH-USD"}
    assert feed.resubscribe_messages("ETH-USD") == [
        b'{"type":"unsubscribe","product_ids":["ETH-USD"],"channel":"level2"}',
        b'{"type":"subscribe","product_ids":["ETH-USD"],"channel":"level2"}',
    ]


def test_binance_rest_snapshot_of_an_unasked_symbol_makes_no_book(shared_data: Path) -> None:
    """A recording's REST snapshots of the other symbols made books of their own (in sync)."""
    path = shared_data / "binance" / "binance_spot_depth_4sym_with_rest_snapshots_2021-10-12.jsonl"
    rest = [r for r in read_recording(path) if r.conn.startswith("REST")]
    feed = adapter_class("binance")(symbols={"LRCBTC": "LRC-BTC"})
    for record in rest:
        feed.on_rest(record.conn, record.data, record.ts_recv_ns)
    assert set(feed.books) <= {"LRC-BTC"}
    assert feed.stats.unfollowed == len(rest) - 1
