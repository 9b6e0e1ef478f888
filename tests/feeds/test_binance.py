"""Binance spot diff depth + REST snapshot: doc-shaped messages and the recordings of
../shared/data."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from feeds.base import MalformedSnapshot, SequenceGap
from feeds.binance import BinanceBookFeed
from feeds.recorded import RecordedMessage, read_recording
from feeds.verify import verify
from otc.errors import ValueParseError
from otc.model import decimal_text

URL = "https://api.binance.com/api/v3/depth?symbol=BNBBTC&limit=5000"


def event(first: int, last: int, bids: list[list[str]], asks: list[list[str]]) -> dict[str, object]:
    """A ``depthUpdate`` as in the docs' "Diff. Depth Stream" example."""
    return {
        "e": "depthUpdate",
        "E": 1_672_515_782_136 + last,
        "s": "BNBBTC",
        "U": first,
        "u": last,
        "b": bids,
        "a": asks,
    }


def combined(first: int, last: int, bids: list[list[str]], asks: list[list[str]]) -> bytes:
    """The event wrapped as the combined-stream endpoint sends it."""
    return msgspec.json.encode(
        {"stream": "bnbbtc@depth@100ms", "data": event(first, last, bids, asks)}
    )


def bare(first: int, last: int, bids: list[list[str]], asks: list[list[str]]) -> bytes:
    return msgspec.json.encode(event(first, last, bids, asks))


def snapshot(last_update_id: int, bids: list[list[str]], asks: list[list[str]]) -> bytes:
    """A ``GET /api/v3/depth`` body as in the docs' "Order book" example."""
    return msgspec.json.encode({"lastUpdateId": last_update_id, "bids": bids, "asks": asks})


def levels(feed: BinanceBookFeed, symbol: str = "BNBBTC") -> tuple[list[str], list[str]]:
    book = feed.books[symbol]
    scale = book.scale

    def text(price: int, size: int) -> str:
        return f"{decimal_text(scale.price_text(price))}@{decimal_text(scale.size_text(size))}"

    return [text(*level) for level in book.bids()], [text(*level) for level in book.asks()]


def test_events_buffer_until_the_snapshot_then_bridge() -> None:
    feed = BinanceBookFeed()
    assert feed.on_message(combined(157, 160, [["0.0024", "10"]], [["0.0026", "100"]]), 1) == []
    assert feed.on_message(bare(161, 165, [["0.0023", "5"]], []), 2) == []
    assert feed.on_message(combined(166, 170, [["0.0024", "0"]], [["0.0027", "1"]]), 3) == []
    assert feed.pending_snapshots() == ["BNBBTC"]
    assert feed.snapshot_url("BNBBTC") == URL
    assert feed.snapshot_url("BNBBTC", base="http://127.0.0.1:9/") == (
        "http://127.0.0.1:9/api/v3/depth?symbol=BNBBTC&limit=5000"
    )
    # lastUpdateId 162 covers the first event (u 160) and falls inside the second [161, 165].
    body = snapshot(162, [["0.0024", "9"], ["0.0022", "1"]], [["0.0026", "100"]])
    events = feed.on_rest(f"REST {URL}", body, 4)
    assert [type(e).__name__ for e in events] == ["BookSnapshot", "BookDelta", "BookDelta"]
    assert [e.sequence for e in events] == [162, 165, 170]
    assert feed.stats.dropped == 1  # the buffered event the snapshot already has
    assert feed.in_sync["BNBBTC"]
    assert feed.pending_snapshots() == []
    assert levels(feed) == (
        ["0.0023@5", "0.0022@1"],
        ["0.0026@100", "0.0027@1"],
    )
    # Live: an old event is ignored, a contiguous one applied.
    assert feed.on_message(combined(168, 170, [["0.0001", "1"]], []), 5) == []
    assert feed.stats.ignored == 1
    [delta] = feed.on_message(combined(171, 171, [], [["0.0026", "0"]]), 6)
    assert delta.sequence == 171
    assert delta.ts_event_ns == (1_672_515_782_136 + 171) * 1_000_000
    assert feed.books["BNBBTC"].best_ask == feed.books["BNBBTC"].scale.price("0.0027")


def test_snapshot_older_than_the_buffer_is_fetched_again() -> None:
    feed = BinanceBookFeed()
    feed.on_message(combined(157, 160, [["0.0024", "10"]], []), 1)
    # lastUpdateId + 1 < U: the updates 151..156 are neither in the snapshot nor buffered.
    assert feed.on_rest(URL, snapshot(150, [["0.0024", "1"]], []), 2) == []
    assert not feed.in_sync["BNBBTC"]
    assert feed.pending_snapshots() == ["BNBBTC"]
    # The next fetch is recent enough; lastUpdateId + 1 == U bridges exactly.
    events = feed.on_rest(URL, snapshot(156, [["0.0024", "1"]], [["0.0026", "2"]]), 3)
    assert [e.sequence for e in events] == [156, 160]
    assert levels(feed) == (["0.0024@10"], ["0.0026@2"])


def test_gap_marks_out_of_sync_buffers_and_a_new_snapshot_recovers() -> None:
    feed = BinanceBookFeed()
    feed.on_rest(URL, snapshot(100, [["0.0024", "1"]], [["0.0026", "1"]]), 1)
    assert feed.pending_snapshots() == []
    feed.on_message(combined(101, 105, [["0.0024", "2"]], []), 2)
    with pytest.raises(SequenceGap) as info:
        feed.on_message(combined(108, 110, [["0.0024", "3"]], []), 3)  # 106, 107 lost
    assert (info.value.expected, info.value.received) == (106, 108)
    assert (feed.stats.gaps, feed.stats.resyncs) == (1, 1)
    assert not feed.in_sync["BNBBTC"]
    assert feed.pending_snapshots() == ["BNBBTC"]
    # Further events are buffered (not applied) until the new snapshot.
    assert feed.on_message(combined(111, 112, [["0.0025", "4"]], []), 4) == []
    assert feed.books["BNBBTC"].sequence == 105
    events = feed.on_rest(URL, snapshot(110, [["0.0024", "3"]], [["0.0026", "1"]]), 5)
    assert [e.sequence for e in events] == [110, 112]
    assert feed.in_sync["BNBBTC"]
    assert levels(feed) == (["0.0025@4", "0.0024@3"], ["0.0026@1"])


def test_gap_inside_the_buffer_is_caught_when_the_snapshot_arrives() -> None:
    feed = BinanceBookFeed()
    feed.on_message(combined(101, 105, [["0.0024", "2"]], []), 1)
    feed.on_message(combined(109, 110, [["0.0024", "3"]], []), 2)  # 106..108 lost
    feed.on_message(combined(111, 111, [["0.0024", "4"]], []), 3)
    with pytest.raises(SequenceGap) as caught:
        feed.on_rest(URL, snapshot(103, [["0.0024", "1"]], []), 4)
    # What the snapshot did apply before the gap reaches the recorder all the same.
    assert [e.sequence for e in caught.value.applied] == [103, 105]
    assert not feed.in_sync["BNBBTC"]
    assert feed.pending_snapshots() == ["BNBBTC"]
    events = feed.on_rest(URL, snapshot(109, [["0.0024", "7"]], []), 5)
    assert [e.sequence for e in events] == [109, 110, 111]
    assert levels(feed) == (["0.0024@4"], [])


def test_snapshot_for_a_synced_symbol_is_ignored_and_the_buffer_is_bounded() -> None:
    feed = BinanceBookFeed(max_buffered=2)
    for first in (1, 2, 3):
        feed.on_message(combined(first, first, [["0.0024", str(first)]], []), first)
    assert feed.stats.dropped == 1
    feed.on_rest(URL, snapshot(1, [], []), 4)
    assert feed.books["BNBBTC"].sequence == 3
    assert feed.on_rest(URL, snapshot(2, [], []), 5) == []
    assert feed.books["BNBBTC"].sequence == 3


def test_acks_errors_and_bad_urls() -> None:
    feed = BinanceBookFeed()
    assert feed.on_message(b'{"result":null,"id":1}', 1) == []
    assert feed.stats.ignored == 1
    with pytest.raises(ValueError, match="Invalid request"):
        feed.on_message(b'{"error":{"code":2,"msg":"Invalid request"},"id":1}', 2)
    with pytest.raises(ValueParseError):
        feed.on_rest("https://api.binance.com/api/v3/depth", snapshot(1, [], []), 3)
    with pytest.raises(msgspec.ValidationError):
        feed.on_rest(URL, b'{"code":-1121,"msg":"Invalid symbol."}', 4)


def test_subscription_and_rest_body_round_trip() -> None:
    feed = BinanceBookFeed(symbols={"BNBBTC": "BNB-BTC"})
    [sub] = feed.subscribe_messages(["BNBBTC", "ETHBTC"])
    assert msgspec.json.decode(sub) == {
        "method": "SUBSCRIBE",
        "params": ["bnbbtc@depth@100ms", "ethbtc@depth@100ms"],
        "id": 1,
    }
    assert feed.resubscribe_messages("BNBBTC") is None  # resync is by REST
    feed.on_message(combined(5, 6, [["0.00240000", "1.50000000"]], []), 1)
    feed.on_rest(URL, snapshot(4, [["0.0023", "2"]], [["0.0026", "3"]]), 2)
    with pytest.raises(KeyError):
        feed.rest_snapshot_body("ETH-BTC")
    copy = BinanceBookFeed(symbols={"BNBBTC": "BNB-BTC"})
    copy.on_rest(URL, feed.rest_snapshot_body("BNB-BTC"), 3)
    assert levels(copy, "BNB-BTC") == levels(feed, "BNB-BTC")
    assert copy.books["BNB-BTC"].sequence == 6


# -- recordings --------------------------------------------------------------------------------

BTCUSDT = "binance_spot_btcusdt_depth100ms_with_rest_snapshot_2024-08-08.jsonl"
FOUR = "binance_spot_depth_4sym_with_rest_snapshots_2021-10-12.jsonl"


def feed_record(feed: BinanceBookFeed, record: RecordedMessage) -> None:
    if record.conn.startswith("REST"):
        feed.on_rest(record.conn, record.data, record.ts_recv_ns)
    else:
        feed.on_message(record.data, record.ts_recv_ns)


def replay(path: Path) -> BinanceBookFeed:
    feed = BinanceBookFeed()
    for record in read_recording(path):
        feed_record(feed, record)
        assert not any(book.crossed for book in feed.books.values()), record.line
    return feed


def test_btcusdt_recording_matches_the_readme(shared_data: Path) -> None:
    feed = replay(shared_data / "binance" / BTCUSDT)
    stats = feed.stats
    assert stats.dropped == 2  # buffered events discarded by the snapshot
    assert (stats.snapshots, stats.applied - stats.snapshots) == (1, 3449)
    assert (stats.gaps, stats.resyncs, stats.ignored) == (0, 0, 0)
    book = feed.books["BTCUSDT"]
    assert book.sequence == 50093421584
    assert feed.in_sync["BTCUSDT"]
    book._check()


def test_four_symbol_recording_is_gap_free(shared_data: Path) -> None:
    feed = replay(shared_data / "binance" / FOUR)
    assert set(feed.books) == {"NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"}
    assert all(feed.in_sync.values())
    assert feed.pending_snapshots() == []
    assert (feed.stats.snapshots, feed.stats.gaps, feed.stats.resyncs) == (4, 0, 0)
    # 177 events: 4 covered by the snapshots while buffered, 1 old one after, 172 applied.
    assert (feed.stats.dropped, feed.stats.ignored, feed.stats.applied) == (4, 1, 4 + 172)
    for book in feed.books.values():
        book._check()


def test_lost_event_is_a_gap_and_a_fresh_snapshot_resyncs(shared_data: Path) -> None:
    records = list(read_recording(shared_data / "binance" / BTCUSDT))
    clean = BinanceBookFeed()
    feed = BinanceBookFeed()
    lost = 500
    gaps = 0
    for index, record in enumerate(records):
        feed_record(clean, record)
        if index == lost:
            continue
        try:
            feed_record(feed, record)
        except SequenceGap:
            gaps += 1
            assert feed.pending_snapshots() == ["BTCUSDT"]
            # The recorded (old) snapshot no longer bridges: it is refused, still pending.
            rest = next(r for r in records if r.conn.startswith("REST"))
            assert feed.on_rest(rest.conn, rest.data, rest.ts_recv_ns) == []
            assert feed.pending_snapshots() == ["BTCUSDT"]
            # A snapshot taken now (the clean book, as the REST API would serve it) does.
            url = feed.snapshot_url("BTCUSDT")
            feed.on_rest(url, clean.rest_snapshot_body("BTCUSDT"), record.ts_recv_ns)
            assert feed.in_sync["BTCUSDT"]
    assert (gaps, feed.stats.gaps, feed.stats.resyncs) == (1, 1, 1)
    book, reference = feed.books["BTCUSDT"], clean.books["BTCUSDT"]
    assert book.sequence == reference.sequence == 50093421584
    assert list(book.bids()) == list(reference.bids())
    assert list(book.asks()) == list(reference.asks())


def test_verify_report(shared_data: Path) -> None:
    report = verify("binance", [shared_data / "binance" / BTCUSDT, shared_data / "binance" / FOUR])
    assert report.messages == 3452 + 181
    assert (report.applied, report.gaps, report.resyncs, report.malformed) == (3450 + 176, 0, 0, 0)
    assert report.errors == []
    assert set(report.books) == {"BTCUSDT", "NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"}
    top = report.books["BTCUSDT"]
    assert (top.bid, top.ask) == ("61685.99", "61686")


def test_rest_snapshot_giving_a_price_twice_keeps_the_buffer_pending() -> None:
    # It used to escape as a bare ValueError from the book, after the buffered events had been
    # dropped: the symbol was no longer pending and waited for the next event to fetch again.
    feed = BinanceBookFeed()
    feed.on_message(combined(157, 160, [["0.0024", "10"]], []), 1)
    bad = snapshot(158, [["0.0024", "9"], ["0.0024", "8"]], [["0.0026", "100"]])
    with pytest.raises(ValueParseError, match="given twice"):
        feed.on_rest(URL, bad, 2)
    assert not feed.in_sync["BNBBTC"]
    assert feed.pending_snapshots() == ["BNBBTC"]
    events = feed.on_rest(URL, snapshot(158, [["0.0024", "9"]], [["0.0026", "100"]]), 3)
    assert [e.sequence for e in events] == [158, 160]
    assert levels(feed) == (["0.0024@10"], ["0.0026@100"])


def test_malformed_event_is_refused_when_buffered_not_when_the_snapshot_bridges() -> None:
    # Buffered events were parsed only once the snapshot arrived: a bad one made on_rest raise
    # after the snapshot and the events before it were applied (the symbol in sync, those
    # events never returned to the caller) and dropped the events buffered after it.
    feed = BinanceBookFeed()
    feed.on_message(combined(157, 160, [["0.0024", "10"]], []), 1)
    with pytest.raises(ValueParseError, match="finite"):
        feed.on_message(combined(161, 165, [["0.0023", "NaN"]], []), 2)
    feed.on_message(combined(166, 170, [["0.0022", "1"]], []), 3)
    # The refused event is a hole in the buffer: the bridge stops at it as at any gap.
    with pytest.raises(SequenceGap):
        feed.on_rest(URL, snapshot(158, [], [["0.0026", "1"]]), 4)
    assert not feed.in_sync["BNBBTC"]
    assert feed.pending_snapshots() == ["BNBBTC"]
    events = feed.on_rest(URL, snapshot(166, [["0.0023", "5"]], [["0.0026", "1"]]), 5)
    assert [e.sequence for e in events] == [166, 170]
    assert levels(feed) == (["0.0023@5", "0.0022@1"], ["0.0026@1"])


def test_malformed_event_after_a_gap_is_refused_before_it_is_buffered() -> None:
    feed = BinanceBookFeed()
    feed.on_message(combined(1, 2, [], []), 1)
    feed.on_rest(URL, snapshot(2, [["0.0024", "1"]], []), 2)
    with pytest.raises(ValueParseError):
        feed.on_message(combined(9, 9, [["0.0023", "-1"]], []), 3)
    assert feed.in_sync["BNBBTC"]
    with pytest.raises(SequenceGap):
        feed.on_message(combined(10, 10, [["0.0023", "1"]], []), 4)
    assert feed.on_rest(URL, snapshot(9, [], []), 5)[-1].sequence == 10


@pytest.mark.parametrize("bids", [[["NaN", "1"]], [["0.0024", "1"], ["0.0024", "2"]]])
def test_malformed_rest_snapshot_stays_pending_and_the_next_one_bridges(
    bids: list[list[str]],
) -> None:
    feed = BinanceBookFeed()
    feed.on_message(combined(157, 160, [["0.0024", "10"]], []), 1)
    with pytest.raises(MalformedSnapshot) as info:
        feed.on_rest(URL, snapshot(158, bids, [["0.0026", "100"]]), 2)
    assert (info.value.venue, info.value.symbol) == ("binance", "BNBBTC")
    assert not feed.in_sync["BNBBTC"]
    assert len(feed.books["BNBBTC"]) == 0
    assert feed.pending_snapshots() == ["BNBBTC"]  # the connection fetches another
    events = feed.on_rest(URL, snapshot(158, [["0.0024", "9"]], [["0.0026", "100"]]), 3)
    assert len(events) == 2  # the snapshot and the buffered event it bridges
    assert feed.in_sync["BNBBTC"]
    assert levels(feed) == (["0.0024@10"], ["0.0026@100"])


def test_the_buffer_is_bounded_by_levels_too() -> None:
    # Capped at 10,000 events only: events of 20,000 levels each took ~4.6 MiB apiece while
    # snapshots kept failing (a gigabyte in seconds).
    feed = BinanceBookFeed(max_buffered_levels=10)
    for first in range(1, 6):  # five events of four levels each
        levels = [[f"0.00{20 + first}{i}", "1"] for i in range(4)]
        feed.on_message(combined(first, first, levels, []), first)
    assert feed.stats.dropped == 3  # the two newest (8 levels) fit, a third would not
    events = feed.on_rest(URL, snapshot(3, [], []), 6)
    assert [e.sequence for e in events] == [3, 4, 5]
    huge = [[f"0.{i:05d}", "1"] for i in range(1, 30)]
    feed = BinanceBookFeed(max_buffered_levels=10)
    feed.on_message(combined(1, 1, huge, []), 1)  # one event over the bound is still kept
    assert feed.pending_snapshots() == ["BNBBTC"]
