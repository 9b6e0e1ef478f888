"""Bybit v5 orderbook: doc-shaped messages and the real recordings of ../shared/data."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from feeds.base import MalformedSnapshot, SequenceGap
from feeds.bybit import BybitBookFeed
from feeds.recorded import read_recording
from feeds.verify import verify
from otc.errors import ValueParseError


def message(kind: str, u: int, bids: list[list[str]], asks: list[list[str]]) -> bytes:
    return msgspec.json.encode(
        {
            "topic": "orderbook.50.BTCUSDT",
            "type": kind,
            "ts": 1_700_000_000_000 + u,
            "data": {"s": "BTCUSDT", "b": bids, "a": asks, "u": u, "seq": 7},
            "cts": 1_700_000_000_000,
        }
    )


def test_snapshot_then_deltas_apply_absolute_sizes_and_deletes() -> None:
    feed = BybitBookFeed(symbols={"BTCUSDT": "BTC-USDT"})
    feed.on_message(message("snapshot", 10, [["100.5", "1"], ["100", "2"]], [["101", "3"]]), 1)
    feed.on_message(message("delta", 11, [["100.5", "0"], ["99", "4"]], [["101", "1.5"]]), 2)
    book = feed.books["BTC-USDT"]
    scale = book.scale
    assert list(book.bids()) == [
        (scale.price("100"), scale.size("2")),
        (scale.price("99"), scale.size("4")),
    ]
    assert list(book.asks()) == [(scale.price("101"), scale.size("1.5"))]
    assert book.sequence == 11
    assert book.ts_event_ns == 1_700_000_000_000 * 1_000_000
    assert feed.in_sync["BTC-USDT"]


def test_gap_raises_marks_out_of_sync_and_snapshot_recovers() -> None:
    feed = BybitBookFeed()
    feed.on_message(message("snapshot", 10, [["100", "1"]], [["101", "1"]]), 1)
    with pytest.raises(SequenceGap) as info:
        feed.on_message(message("delta", 12, [["100", "2"]], []), 2)
    assert info.value.expected == 11
    assert info.value.received == 12
    assert not feed.in_sync["BTCUSDT"]
    assert feed.stats.gaps == 1
    # Deltas are dropped until a new snapshot resets the book (u = 1 after a service restart).
    assert feed.on_message(message("delta", 13, [["100", "5"]], []), 3) == []
    feed.on_message(message("snapshot", 1, [["100", "7"]], [["101", "1"]]), 4)
    feed.on_message(message("delta", 2, [], [["101", "0"]]), 5)
    book = feed.books["BTCUSDT"]
    assert feed.in_sync["BTCUSDT"]
    assert book.best_ask is None
    assert list(book.bids()) == [(book.scale.price("100"), book.scale.size("7"))]


def test_acks_and_pongs_are_ignored() -> None:
    feed = BybitBookFeed()
    assert feed.on_message(b'{"success":true,"ret_msg":"","conn_id":"x","op":"subscribe"}', 1) == []
    assert feed.stats.ignored == 1


RECORDINGS = {
    "bybit_v5_linear_orderbook200_2026-08-09.jsonl": (4, 1594),
    "bybit_v5_spot_orderbook200_2026-08-09.jsonl": (2, 548),
    "bybit_histdata_linear_XRPUSDT_ob500_2024-12-01.data.jsonl": (1, 49),
}


@pytest.mark.parametrize(("name", "counts"), sorted(RECORDINGS.items()))
def test_recordings_replay_without_gaps(
    shared_data: Path, name: str, counts: tuple[int, int]
) -> None:
    path = shared_data / "bybit" / name
    feed = BybitBookFeed()
    for record in read_recording(path):
        feed.on_message(record.data, record.ts_recv_ns)
    snapshots, deltas = counts
    assert feed.stats.snapshots == snapshots
    assert feed.stats.applied == snapshots + deltas
    assert feed.stats.gaps == 0
    for book in feed.books.values():
        book._check()
        assert not book.crossed


def test_dropped_message_in_recording_is_detected(shared_data: Path) -> None:
    path = shared_data / "bybit" / "bybit_v5_spot_orderbook200_2026-08-09.jsonl"
    records = list(read_recording(path))
    feed = BybitBookFeed()
    gaps = 0
    for i, record in enumerate(records):
        if i == 100:  # lose one delta
            continue
        try:
            feed.on_message(record.data, record.ts_recv_ns)
        except SequenceGap:
            gaps += 1
    assert gaps == 1
    assert feed.stats.resyncs == 1


def test_verify_report(shared_data: Path) -> None:
    report = verify(
        "bybit", [shared_data / "bybit" / "bybit_v5_spot_orderbook200_2026-08-09.jsonl"]
    )
    assert (report.applied, report.gaps, report.malformed) == (550, 0, 0)
    assert set(report.books) == {"BTCUSDT", "ETHUSDT"}


def test_snapshot_giving_a_price_twice_is_malformed_and_changes_nothing() -> None:
    # A price twice on a side used to escape as a bare ValueError from the book (which the
    # connection does not catch), with the bids already replaced and the symbol still in sync.
    feed = BybitBookFeed()
    feed.on_message(message("snapshot", 10, [["100", "2"]], [["101", "3"]]), 1)
    bad = message("snapshot", 20, [["99", "1"]], [["102", "1"], ["102", "2"]])
    with pytest.raises(ValueParseError, match="given twice"):
        feed.on_message(bad, 2)
    book = feed.books["BTCUSDT"]
    book._check()
    assert not feed.in_sync["BTCUSDT"]
    assert book.sequence == 10
    assert list(book.bids()) == [(book.scale.price("100"), book.scale.size("2"))]
    feed.on_message(message("snapshot", 21, [["99", "1"]], [["102", "1"]]), 3)
    assert feed.in_sync["BTCUSDT"]


@pytest.mark.parametrize("bids", [[["NaN", "1"]], [["99", "1", "x"], ["99.5"]], [["-99", "1"]]])
def test_malformed_snapshot_after_a_gap_marks_out_of_sync_and_a_good_one_recovers(
    bids: list[list[str]],
) -> None:
    # The snapshot after a gap's resubscribe, the one that should bring the symbol back, was
    # a bare malformed message: skipped, and nothing asked for another.
    feed = BybitBookFeed()
    feed.on_message(message("snapshot", 10, [["100", "2"]], [["101", "3"]]), 1)
    with pytest.raises(SequenceGap):
        feed.on_message(message("delta", 12, [["100", "1"]], []), 2)
    with pytest.raises(MalformedSnapshot) as info:
        feed.on_message(message("snapshot", 20, bids, [["102", "1"]]), 3)
    assert (info.value.venue, info.value.symbol) == ("bybit", "BTCUSDT")
    assert not feed.in_sync["BTCUSDT"]
    assert feed.stats.resyncs == 2  # the gap's and the malformed snapshot's
    book = feed.books["BTCUSDT"]
    book._check()
    assert book.sequence == 10
    assert list(book.bids()) == [(book.scale.price("100"), book.scale.size("2"))]
    feed.on_message(message("snapshot", 21, [["99", "1"]], [["102", "1"]]), 4)
    assert feed.in_sync["BTCUSDT"]
    assert book.sequence == 21
