"""Coinbase Advanced Trade ``level2`` and legacy Exchange ``level2``: doc-shaped messages and
the recordings of ../shared/data."""

from __future__ import annotations

import calendar
import functools
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

from feeds.base import LostUpdate, MalformedSnapshot, SequenceGap, level_texts
from feeds.coinbase import CoinbaseBookFeed, CoinbaseLegacyBookFeed, rfc3339_ns
from feeds.recorded import read_recording
from feeds.verify import verify
from otc.book import L2Book
from otc.errors import ValueParseError
from otc.model import decimal_text

TIMESTAMP = "2023-02-09T20:32:50.714964855Z"


def l2(
    kind: str, sequence: int, updates: list[tuple[str, str, str]], product: str = "BTC-USD"
) -> bytes:
    """An ``l2_data`` message shaped like the docs' level2 example."""
    return msgspec.json.encode(
        {
            "channel": "l2_data",
            "client_id": "",
            "timestamp": TIMESTAMP,
            "sequence_num": sequence,
            "events": [
                {
                    "type": kind,
                    "product_id": product,
                    "updates": [
                        {
                            "side": side,
                            "event_time": "2023-02-09T20:32:50.714964855Z",
                            "price_level": price,
                            "new_quantity": size,
                        }
                        for side, price, size in updates
                    ],
                }
            ],
        }
    )


def heartbeat(sequence: int) -> bytes:
    """A ``heartbeats`` message as in the docs' example."""
    return msgspec.json.encode(
        {
            "channel": "heartbeats",
            "client_id": "",
            "timestamp": "2023-06-23T20:31:26.122969572Z",
            "sequence_num": sequence,
            "events": [
                {"current_time": "2023-06-23 20:31:56.121961769 +0000 UTC", "heartbeat_counter": 3}
            ],
        }
    )


def snapshot_from(book: L2Book, sequence: int, product: str) -> bytes:
    """The ``l2_data`` snapshot a new subscription would bring for ``book``."""
    sides = (
        ("bid", level_texts(book.bids(), book.scale)),
        ("offer", level_texts(book.asks(), book.scale)),
    )
    updates = [(side, px, sz) for side, texts in sides for px, sz in texts]
    return l2("snapshot", sequence, updates, product)


def levels(book: L2Book) -> tuple[list[str], list[str]]:
    scale = book.scale

    def text(price: int, size: int) -> str:
        return f"{decimal_text(scale.price_text(price))}@{decimal_text(scale.size_text(size))}"

    return [text(*level) for level in book.bids()], [text(*level) for level in book.asks()]


# -- timestamps --------------------------------------------------------------------------------


def test_rfc3339_to_ns_is_exact() -> None:
    seconds = calendar.timegm((2023, 2, 9, 20, 32, 50))
    assert rfc3339_ns(TIMESTAMP) == seconds * 10**9 + 714_964_855
    assert rfc3339_ns("2023-02-09T20:32:50Z") == seconds * 10**9
    assert rfc3339_ns("2023-02-09T20:32:50.5Z") == seconds * 10**9 + 500_000_000
    assert rfc3339_ns("2023-02-09T21:32:50.000000001+01:00") == seconds * 10**9 + 1
    assert rfc3339_ns("2023-02-09T19:32:50.1234567891-01:00") == seconds * 10**9 + 123_456_789
    for bad in (
        "2023-02-09T20:32:50",
        "2023-02-09 junk Z",
        "2023-02-30T20:32:50Z",
        "x.1Z",
        "2023-02-09T20:32:50.-1Z",
    ):
        with pytest.raises(ValueParseError):
            rfc3339_ns(bad)


# -- Advanced Trade, doc-shaped ------------------------------------------------------------------


def test_snapshot_then_updates_with_absolute_sizes_and_deletes() -> None:
    feed = CoinbaseBookFeed(symbols={"BTC-USD": "BTC-USD"})
    [snap] = feed.on_message(
        l2(
            "snapshot",
            0,
            [
                ("bid", "21921.73", "0.06317902"),
                ("bid", "21921.3", "0.02"),
                ("offer", "21921.74", "0.5"),
            ],
        ),
        1,
    )
    assert snap.ts_event_ns == rfc3339_ns(TIMESTAMP)
    [delta] = feed.on_message(
        l2("update", 1, [("bid", "21921.73", "0"), ("offer", "21922", "1.25")]), 2
    )
    assert (delta.sequence, delta.ts_recv_ns) == (1, 2)
    book = feed.books["BTC-USD"]
    assert levels(book) == (["21921.3@0.02"], ["21921.74@0.5", "21922@1.25"])
    assert feed.in_sync["BTC-USD"]


def test_updates_before_a_snapshot_are_dropped() -> None:
    feed = CoinbaseBookFeed()
    assert feed.on_message(l2("update", 4, [("bid", "1", "1")]), 1) == []
    assert feed.stats.dropped == 1
    assert not feed.in_sync["BTC-USD"]


def test_whole_connection_gap_resyncs_every_product() -> None:
    feed = CoinbaseBookFeed(check_sequence=True)
    feed.subscribe_messages(["BTC-USD", "ETH-USD"])
    feed.on_message(l2("snapshot", 0, [("bid", "100", "1")]), 1)
    feed.on_message(l2("snapshot", 1, [("bid", "10", "1")], "ETH-USD"), 2)
    feed.on_message(heartbeat(2), 3)
    # Message 3 is lost (whatever its channel): both books are suspect.
    with pytest.raises(SequenceGap) as info:
        feed.on_message(heartbeat(4), 4)
    assert (info.value.expected, info.value.received) == (3, 4)
    assert feed.in_sync == {"BTC-USD": False, "ETH-USD": False}
    assert (feed.stats.gaps, feed.stats.resyncs) == (1, 1)
    unsub, sub = feed.resubscribe_messages(info.value.symbol) or []
    assert msgspec.json.decode(sub) == {
        "type": "subscribe",
        "product_ids": ["BTC-USD", "ETH-USD"],
        "channel": "level2",
    }
    assert msgspec.json.decode(unsub)["type"] == "unsubscribe"
    assert feed.on_message(l2("update", 5, [("bid", "100", "2")]), 5) == []
    assert feed.stats.dropped == 1
    feed.on_message(l2("snapshot", 6, [("bid", "100", "3")]), 6)
    feed.on_message(l2("update", 7, [("bid", "100", "4")]), 7)
    assert feed.in_sync == {"BTC-USD": True, "ETH-USD": False}
    assert levels(feed.books["BTC-USD"]) == (["100@4"], [])


def test_sequence_check_decides_from_the_traffic_by_default() -> None:
    feed = CoinbaseBookFeed()
    # Only l2_data: numbers may skip (other channels were filtered out), not go back.
    feed.on_message(l2("snapshot", 21, [("bid", "100", "1")]), 1)
    feed.on_message(l2("update", 25, [("bid", "100", "2")]), 2)
    assert not feed.whole_connection
    with pytest.raises(SequenceGap):
        feed.on_message(l2("update", 25, [("bid", "100", "3")]), 3)  # a repeat
    assert feed.stats.gaps == 1
    feed.on_message(l2("snapshot", 26, [("bid", "100", "5")]), 4)
    # A heartbeat: the adapter sees the whole connection, skips become gaps.
    feed.on_message(heartbeat(27), 5)
    assert feed.whole_connection
    feed.on_message(l2("update", 28, [("bid", "100", "6")]), 6)
    with pytest.raises(SequenceGap):
        feed.on_message(l2("update", 30, [("bid", "100", "7")]), 7)
    assert feed.stats.gaps == 2
    # A new connection numbers from 0 again.
    feed.subscribe_messages(["BTC-USD"])
    feed.on_message(l2("snapshot", 0, [("bid", "100", "8")]), 8)
    assert feed.in_sync["BTC-USD"]


def test_partial_check_never_accepts_going_back() -> None:
    feed = CoinbaseBookFeed(check_sequence=False)
    feed.on_message(l2("snapshot", 5, [("bid", "100", "1")]), 1)
    feed.on_message(heartbeat(6), 2)
    assert not feed.whole_connection  # forced
    feed.on_message(l2("update", 9, [("bid", "100", "2")]), 3)
    with pytest.raises(SequenceGap):
        feed.on_message(l2("update", 8, [("bid", "100", "3")]), 4)
    # Per product: another product's numbers are its own.
    feed.on_message(l2("snapshot", 10, [("bid", "10", "1")], "ETH-USD"), 5)
    assert feed.in_sync == {"BTC-USD": False, "ETH-USD": True}


def test_subscription_messages_and_errors() -> None:
    feed = CoinbaseBookFeed()
    level2, heartbeats = feed.subscribe_messages(["BTC-USD", "ETH-USD"])
    assert msgspec.json.decode(level2) == {
        "type": "subscribe",
        "product_ids": ["BTC-USD", "ETH-USD"],
        "channel": "level2",
    }
    assert msgspec.json.decode(heartbeats) == {"type": "subscribe", "channel": "heartbeats"}
    assert feed.heartbeat_message() is None  # the heartbeats channel keeps it alive
    with pytest.raises(ValueError, match="bad product"):
        feed.on_message(b'{"type":"error","message":"bad product"}', 1)
    with pytest.raises(msgspec.ValidationError):
        feed.on_message(l2("snapshot", 0, [("buy", "1", "1")]), 2)


# -- legacy Exchange feed, doc-shaped ----------------------------------------------------------


def test_legacy_snapshot_and_l2update() -> None:
    feed = CoinbaseLegacyBookFeed()
    feed.on_message(
        b'{"type":"snapshot","product_id":"BTC-USD","bids":[["10101.10","0.45054140"]],'
        b'"asks":[["10102.55","0.57753524"]]}',
        1,
    )
    [delta] = feed.on_message(
        b'{"type":"l2update","product_id":"BTC-USD","time":"2019-08-14T20:42:27.265Z",'
        b'"changes":[["buy","10101.80000000","0.162567"],["sell","10102.55","0"]]}',
        2,
    )
    assert delta.ts_event_ns == rfc3339_ns("2019-08-14T20:42:27.265Z")
    assert delta.sequence is None
    assert levels(feed.books["BTC-USD"]) == (["10101.8@0.162567", "10101.1@0.4505414"], [])
    assert feed.on_message(b'{"type":"heartbeat","sequence":90,"product_id":"BTC-USD"}', 3) == []
    # The legacy feed's snapshot encoder round-trips.
    copy = CoinbaseLegacyBookFeed()
    copy.on_message(feed.snapshot_message("BTC-USD"), 4)
    assert levels(copy.books["BTC-USD"]) == levels(feed.books["BTC-USD"])
    [sub] = feed.subscribe_messages(["BTC-USD"])
    assert msgspec.json.decode(sub)["channels"] == ["level2_batch", "heartbeat"]


def test_legacy_updates_wait_for_the_snapshot() -> None:
    feed = CoinbaseLegacyBookFeed()
    update = (
        b'{"type":"l2update","product_id":"ETH-EUR","changes":[["buy","1","1"]],'
        b'"time":"2021-04-17T16:43:37Z"}'
    )
    assert feed.on_message(update, 1) == []
    assert feed.stats.dropped == 1


@pytest.mark.parametrize(
    "changes",
    [b'[["buy","100","NaN"]]', b'[["sell","-101","1"]]', b'[["buy","100","2"]],"time":"soon"'],
)
def test_legacy_update_that_does_not_parse_is_lost_and_resyncs(changes: bytes) -> None:
    # Nothing numbers the legacy feed's updates: one refused as merely malformed left the book
    # without it, in sync, for good. It is a gap now, and the connection resyncs the product.
    feed = CoinbaseLegacyBookFeed()
    good = b'{"type":"snapshot","product_id":"BTC-USD","bids":[["100","1"]],"asks":[["101","1"]]}'
    feed.on_message(good, 1)
    with pytest.raises(LostUpdate) as info:
        feed.on_message(b'{"type":"l2update","product_id":"BTC-USD","changes":' + changes + b"}", 2)
    assert isinstance(info.value, SequenceGap)  # the connection resyncs it like any gap
    assert info.value.symbol == "BTC-USD"
    assert not feed.in_sync["BTC-USD"]
    assert (feed.stats.gaps, feed.stats.resyncs) == (1, 1)
    assert levels(feed.books["BTC-USD"]) == (["100@1"], ["101@1"])
    feed.on_message(good, 3)
    assert feed.in_sync["BTC-USD"]


# -- recordings --------------------------------------------------------------------------------

ETH = "coinbase_advtrade_level2_ETH-USD_2026-08-09.jsonl"
BTC = "coinbase_advtrade_level2_BTC-USD_2026-08-09.jsonl.gz"
LEGACY = "coinbase_exchange_legacy_level2_10products_2021-04-17.jsonl"
WHOLE = "cryptofeed_v3_COINBASE.jsonl.zst"


@pytest.mark.parametrize(
    ("name", "symbol", "snapshot_levels", "updates", "total_levels"),
    [(ETH, "ETH-USD", 23_334, 374, 26_263), (BTC, "BTC-USD", 46_000, 399, None)],
)
def test_advanced_trade_recordings(
    shared_data: Path,
    name: str,
    symbol: str,
    snapshot_levels: int,
    updates: int,
    total_levels: int | None,
) -> None:
    feed = CoinbaseBookFeed()
    events = []
    for record in read_recording(shared_data / "coinbase" / name):
        events += feed.on_message(record.data, record.ts_recv_ns)
        assert not feed.books[symbol].crossed, record.line
    snap, *deltas = events
    assert len(snap.bids) + len(snap.asks) == snapshot_levels
    assert len(deltas) == updates
    if total_levels is not None:  # the README counts the snapshot's levels too
        assert sum(len(e.bids) + len(e.asks) for e in events) == total_levels
    assert (feed.stats.snapshots, feed.stats.applied) == (1, 1 + updates)
    assert (feed.stats.gaps, feed.stats.dropped, feed.stats.ignored) == (0, 0, 0)
    assert not feed.whole_connection  # a derived file: l2_data only
    feed.books[symbol]._check()


def test_derived_file_skips_are_not_gaps_only_because_the_check_knows(shared_data: Path) -> None:
    records = list(read_recording(shared_data / "coinbase" / ETH))[:4]  # numbers 21, 22, 23, 25
    feed = CoinbaseBookFeed(check_sequence=True)
    for record in records[:3]:
        feed.on_message(record.data, record.ts_recv_ns)
    with pytest.raises(SequenceGap) as info:
        feed.on_message(records[3].data, records[3].ts_recv_ns)
    assert (info.value.expected, info.value.received) == (24, 25)
    lenient = CoinbaseBookFeed()
    for record in records:
        lenient.on_message(record.data, record.ts_recv_ns)
    assert lenient.stats.gaps == 0


class _Channel(msgspec.Struct):
    channel: str = ""
    sequence_num: int = -1


def whole_connection(shared_data: Path) -> list[bytes]:
    """The ``recv`` messages of the whole capture (every channel), in order."""
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    return _capture(shared_data / "coinbase" / WHOLE)


@functools.cache
def _capture(path: Path) -> list[bytes]:
    text = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    records = [msgspec.json.decode(line) for line in text.splitlines()]
    return [r["data"].encode() for r in records if r["t"] == "recv"]


def test_whole_connection_capture_is_gap_free(shared_data: Path) -> None:
    messages = whole_connection(shared_data)
    assert len(messages) == 1030
    feed = CoinbaseBookFeed()
    for data in messages:
        feed.on_message(data, 1)
    assert feed.whole_connection
    assert feed.last_sequence == 1029
    assert (feed.stats.gaps, feed.stats.snapshots, feed.stats.applied) == (0, 2, 775)
    # Same books as the two derived files.
    for name, symbol in ((ETH, "ETH-USD"), (BTC, "BTC-USD")):
        derived = CoinbaseBookFeed()
        for record in read_recording(shared_data / "coinbase" / name):
            derived.on_message(record.data, record.ts_recv_ns)
        assert levels(feed.books[symbol]) == levels(derived.books[symbol])


def test_lost_message_of_any_channel_is_a_gap_and_resubscribing_recovers(
    shared_data: Path,
) -> None:
    messages = whole_connection(shared_data)
    headers = [msgspec.json.decode(m, type=_Channel) for m in messages]
    kinds = [h.channel for h in headers]
    lost = next(i for i, kind in enumerate(kinds) if kind == "ticker" and i > 300)
    clean = CoinbaseBookFeed()
    feed = CoinbaseBookFeed()
    waiting: list[str] = []  # products resubscribed, whose new snapshot is still to come
    for index, data in enumerate(messages):
        clean.on_message(data, 1)
        if index == lost:
            continue
        if waiting and kinds[index] != "l2_data":
            # The new subscription's snapshot takes this message's connection number.
            symbol = waiting.pop(0)
            sequence = headers[index].sequence_num
            feed.on_message(snapshot_from(clean.books[symbol], sequence, symbol), 1)
            continue
        try:
            feed.on_message(data, 1)
        except SequenceGap as exc:
            assert feed.in_sync == {"BTC-USD": False, "ETH-USD": False}
            _, sub = feed.resubscribe_messages(feed.venue_symbol(exc.symbol)) or []
            waiting = msgspec.json.decode(sub)["product_ids"]
    assert (feed.stats.gaps, feed.stats.resyncs) == (1, 1)
    assert feed.stats.dropped > 0
    assert feed.in_sync == {"BTC-USD": True, "ETH-USD": True}
    for symbol in ("BTC-USD", "ETH-USD"):
        assert levels(feed.books[symbol]) == levels(clean.books[symbol])


def test_duplicated_update_in_a_derived_file_is_detected(shared_data: Path) -> None:
    records = list(read_recording(shared_data / "coinbase" / ETH))
    feed = CoinbaseBookFeed()
    gaps = 0
    for index, record in enumerate(records):
        copies = 2 if index == 100 else 1
        for _ in range(copies):
            try:
                feed.on_message(record.data, record.ts_recv_ns)
            except SequenceGap:
                gaps += 1
    assert (gaps, feed.stats.resyncs) == (1, 1)
    assert not feed.in_sync["ETH-USD"]  # waits for a new snapshot
    assert feed.stats.dropped == len(records) - 101


def test_legacy_recording(shared_data: Path) -> None:
    feed = CoinbaseLegacyBookFeed()
    for record in read_recording(shared_data / "coinbase" / LEGACY):
        events = feed.on_message(record.data, record.ts_recv_ns)
        for event in events:
            assert not feed.books[event.symbol].crossed, record.line
    assert (feed.stats.snapshots, feed.stats.applied) == (10, 10 + 9719)
    assert feed.stats.ignored == 3 + 107  # subscriptions and ticker
    assert (feed.stats.gaps, feed.stats.dropped) == (0, 0)
    assert len(feed.books) == 10
    for book in feed.books.values():
        book._check()


def test_verify_reports(shared_data: Path) -> None:
    data = shared_data / "coinbase"
    report = verify("coinbase", [data / ETH, data / BTC])
    assert report.messages == 775
    assert (report.applied, report.gaps, report.resyncs, report.malformed) == (775, 0, 0, 0)
    assert set(report.books) == {"ETH-USD", "BTC-USD"}
    assert (report.books["BTC-USD"].bid, report.books["BTC-USD"].ask) == ("65083.66", "65083.67")
    legacy = verify("coinbase_legacy", [data / LEGACY])
    assert (legacy.applied, legacy.gaps, legacy.malformed) == (9729, 0, 0)
    assert len(legacy.books) == 10


def test_malformed_event_changes_no_book_even_after_a_good_event() -> None:
    # The events of a message were parsed and applied one by one: a bad level in the second
    # left the first applied (book in sync) while the message raised, so the caller never got
    # that event.
    feed = CoinbaseBookFeed()
    feed.on_message(l2("snapshot", 0, [("bid", "100", "1"), ("offer", "101", "1")]), 1)
    good = msgspec.json.decode(l2("update", 1, [("bid", "100", "2")]))
    bad = msgspec.json.decode(l2("update", 1, [("offer", "101", "7.25-23674")]))
    good["events"] += bad["events"]
    with pytest.raises(ValueParseError, match="not a number"):
        feed.on_message(msgspec.json.encode(good), 2)
    assert feed.in_sync["BTC-USD"]
    assert levels(feed.books["BTC-USD"]) == (["100@1"], ["101@1"])
    feed.on_message(l2("update", 2, [("bid", "100", "3")]), 3)
    assert levels(feed.books["BTC-USD"]) == (["100@3"], ["101@1"])


def test_malformed_update_is_a_lost_message_to_the_connection_check() -> None:
    # Its sequence_num used to count as received: the next message followed it, no gap was
    # seen and the book stayed in sync without the update, for good (there is no checksum).
    feed = CoinbaseBookFeed(check_sequence=True)
    feed.subscribe_messages(["BTC-USD"])
    feed.on_message(l2("snapshot", 0, [("bid", "100", "1")]), 1)
    with pytest.raises(ValueParseError):
        feed.on_message(l2("update", 1, [("bid", "101", "NaN")]), 2)
    assert feed.in_sync["BTC-USD"]
    with pytest.raises(SequenceGap) as info:
        feed.on_message(l2("update", 2, [("bid", "100", "2")]), 3)
    assert (info.value.expected, info.value.received) == (1, 2)
    assert not feed.in_sync["BTC-USD"]
    assert levels(feed.books["BTC-USD"]) == (["100@1"], [])


def test_malformed_snapshot_marks_its_product_out_of_sync_and_a_good_one_recovers() -> None:
    feed = CoinbaseBookFeed(check_sequence=True)
    feed.subscribe_messages(["BTC-USD", "ETH-USD"])
    feed.on_message(l2("snapshot", 0, [("bid", "100", "1"), ("offer", "101", "1")]), 1)
    feed.on_message(l2("snapshot", 1, [("bid", "10", "1")], "ETH-USD"), 2)
    bad = l2("snapshot", 2, [("bid", "99", "1"), ("offer", "102", "inf")])
    with pytest.raises(MalformedSnapshot) as info:
        feed.on_message(bad, 3)
    assert (info.value.venue, info.value.symbol) == ("coinbase", "BTC-USD")
    assert feed.in_sync == {"BTC-USD": False, "ETH-USD": True}
    assert levels(feed.books["BTC-USD"]) == (["100@1"], ["101@1"])
    # Nothing but the snapshot was lost: its number counts, the other product stays in sync.
    feed.on_message(l2("update", 3, [("bid", "10", "2")], "ETH-USD"), 4)
    assert feed.in_sync["ETH-USD"]
    assert feed.on_message(l2("update", 4, [("bid", "100", "2")]), 5) == []
    feed.on_message(l2("snapshot", 5, [("bid", "99", "1"), ("offer", "102", "1")]), 6)
    assert feed.in_sync == {"BTC-USD": True, "ETH-USD": True}
    assert levels(feed.books["BTC-USD"]) == (["99@1"], ["102@1"])


def test_snapshot_with_a_bad_time_or_a_price_twice_is_a_malformed_snapshot() -> None:
    feed = CoinbaseBookFeed()
    feed.on_message(l2("snapshot", 0, [("bid", "100", "1")]), 1)
    bad_time = l2("snapshot", 1, [("bid", "99", "1")]).replace(TIMESTAMP.encode(), b"yesterday")
    with pytest.raises(MalformedSnapshot, match="yesterday"):
        feed.on_message(bad_time, 2)
    assert not feed.in_sync["BTC-USD"]
    feed.on_message(l2("snapshot", 2, [("bid", "99", "1")]), 3)
    assert feed.in_sync["BTC-USD"]
    with pytest.raises(MalformedSnapshot, match="given twice"):
        feed.on_message(l2("snapshot", 3, [("bid", "98", "1"), ("bid", "98", "2")]), 4)
    assert not feed.in_sync["BTC-USD"]
    assert levels(feed.books["BTC-USD"]) == (["99@1"], [])


@pytest.mark.parametrize(
    "body",
    [
        b'"bids":[["10101.10","NaN"]],"asks":[]',
        b'"bids":[["10101.10","1"],["10101.10","2"]],"asks":[]',
        b'"bids":[],"asks":[],"time":"2019-08-14 20:42"',
    ],
)
def test_legacy_malformed_snapshot_marks_out_of_sync_and_a_good_one_recovers(body: bytes) -> None:
    feed = CoinbaseLegacyBookFeed()
    good = b'{"type":"snapshot","product_id":"BTC-USD","bids":[["100","1"]],"asks":[["101","1"]]}'
    feed.on_message(good, 1)
    with pytest.raises(MalformedSnapshot) as info:
        feed.on_message(b'{"type":"snapshot","product_id":"BTC-USD",' + body + b"}", 2)
    assert (info.value.venue, info.value.symbol) == ("coinbase", "BTC-USD")
    assert not feed.in_sync["BTC-USD"]
    assert levels(feed.books["BTC-USD"]) == (["100@1"], ["101@1"])
    update = b'{"type":"l2update","product_id":"BTC-USD","changes":[["buy","100","2"]]}'
    assert feed.on_message(update, 3) == []
    feed.on_message(good.replace(b'"1"]]}', b'"5"]]}'), 4)
    assert feed.in_sync["BTC-USD"]
    assert levels(feed.books["BTC-USD"]) == (["100@1"], ["101@5"])


@pytest.mark.parametrize(
    ("message", "lost"),
    [
        # A legacy book message that does not decode, its product readable: that product.
        (b'{"type":"l2update","product_id":"ETH-USD","changes":[["bid","100","2"]]}', {"ETH-USD"}),
        (b'{"type":"l2update","product_id":"BTC-USD","changes":[["buy","100"]]}', {"BTC-USD"}),
        (b'{"type":"snapshot","product_id":"BTC-USD","bids":{"100":"1"}}', {"BTC-USD"}),
        # Nothing tells which product: every product in sync.
        (b'{"type":"l2update","product_id":5,"changes":[]}', {"BTC-USD", "ETH-USD"}),
        (b'{"type":"l2update","product_id":"BTC-USD","chan', {"BTC-USD", "ETH-USD"}),
        (b"[1, 2]", {"BTC-USD", "ETH-USD"}),
        (b'{"type":7}', {"BTC-USD", "ETH-USD"}),
        # Messages of no book: merely malformed.
        (b'{"type":"heartbeat","product_id":5}', set()),
        (b'{"type":"subscriptions","channels":5,"message":[]}', set()),
        (b'{"type":"error","message":{"a":1}}', set()),
    ],
)
def test_legacy_message_that_does_not_decode_is_lost_for_the_products_it_may_be_about(
    message: bytes, lost: set[str]
) -> None:
    # Such a message was counted as malformed and skipped, its product in sync: nothing numbers
    # this feed's messages, so the book carried on without that update for good.
    feed = CoinbaseLegacyBookFeed()
    for product in ("BTC-USD", "ETH-USD"):
        feed.on_message(
            b'{"type":"snapshot","product_id":"%s","bids":[["100","1"]],"asks":[["101","1"]]}'
            % product.encode(),
            1,
        )
    with pytest.raises((SequenceGap, MalformedSnapshot, msgspec.DecodeError)) as caught:
        feed.on_message(message, 2)
    assert {p for p, in_sync in feed.in_sync.items() if not in_sync} == lost
    if lost:
        error = caught.value
        assert isinstance(error, LostUpdate | MalformedSnapshot)
        assert {error.symbol, *error.others} == lost
    else:
        assert isinstance(caught.value, msgspec.DecodeError)
    for product in ("BTC-USD", "ETH-USD"):  # nothing applied
        assert levels(feed.books[product]) == (["100@1"], ["101@1"])


def test_snapshot_giving_a_price_twice_leaves_the_other_products_events_applied() -> None:
    # The error stopped the message at that snapshot: the other product's update after it was
    # never applied, the connection's number forgotten so that every product resynced, and the
    # update before it was applied but never reached the recorder.
    feed = CoinbaseBookFeed()
    feed.on_message(heartbeat(0), 1)  # the whole connection: numbers are checked
    feed.on_message(l2("snapshot", 1, [("bid", "100", "1")]), 2)
    feed.on_message(l2("snapshot", 2, [("bid", "10", "1")], "ETH-USD"), 3)
    feed.on_message(l2("snapshot", 3, [("bid", "5", "1")], "SOL-USD"), 4)
    events = [
        msgspec.json.decode(l2("update", 4, [("bid", "101", "2")]))["events"][0],
        msgspec.json.decode(l2("snapshot", 4, [("bid", "9", "1"), ("bid", "9", "2")], "ETH-USD"))[
            "events"
        ][0],
        msgspec.json.decode(l2("update", 4, [("bid", "6", "3")], "SOL-USD"))["events"][0],
    ]
    message = msgspec.json.decode(l2("update", 4, []))
    message["events"] = events
    with pytest.raises(MalformedSnapshot, match="given twice") as caught:
        feed.on_message(msgspec.json.encode(message), 5)
    assert caught.value.symbol == "ETH-USD"
    assert [e.symbol for e in caught.value.applied] == ["BTC-USD", "SOL-USD"]
    assert feed.in_sync == {"BTC-USD": True, "ETH-USD": False, "SOL-USD": True}
    assert levels(feed.books["BTC-USD"]) == (["101@2", "100@1"], [])
    assert levels(feed.books["SOL-USD"]) == (["6@3", "5@1"], [])
    assert levels(feed.books["ETH-USD"]) == (["10@1"], [])
    # Nothing lost: the next message follows on.
    feed.on_message(heartbeat(5), 6)
    assert feed.in_sync["SOL-USD"]
