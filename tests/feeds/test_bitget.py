"""Bitget ``books``: doc vectors, v2-shaped messages, and the v1 recordings of ../shared/data."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import msgspec
import pytest

from feeds.base import ChecksumMismatch, MalformedSnapshot, SequenceGap
from feeds.bitget import BitgetBookFeed
from feeds.okx import checksum_text
from feeds.recorded import read_recording
from feeds.verify import verify

SPOT = "bitget_v1_spot_books_2022-04-07.jsonl"
MIX = "bitget_v1_mix_books_2022-04-07.jsonl"


def signed_crc(text: str) -> int:
    value = zlib.crc32(text.encode())
    return value - 2**32 if value >= 2**31 else value


def message(
    action: str,
    bids: list[list[str]],
    asks: list[list[str]],
    *,
    checksum: int = 0,
    seq: int | None = None,
) -> bytes:
    """A v2 push as documented: instType SPOT, ``seq`` in the data, ``ts`` twice."""
    data: dict[str, object] = {
        "asks": asks,
        "bids": bids,
        "checksum": checksum,
        "ts": "1695710946294",
    }
    if seq is not None:
        data["seq"] = seq
    return msgspec.json.encode(
        {
            "action": action,
            "arg": {"instType": "SPOT", "channel": "books", "instId": "BTCUSDT"},
            "data": [data],
            "ts": 1695710946296,
        }
    )


def test_doc_checksum_vectors(shared_data: Path) -> None:
    doc = json.loads((shared_data / "bitget" / "bitget_checksum_vectors.json").read_text())
    for vector in doc["vectors"]:
        book = vector["book"]
        text = checksum_text(book["bids"], book["asks"])
        assert text == vector["checksum_input_string"]
        expected = vector["crc32_signed_int32_computed"]
        assert signed_crc(text) == expected
        feed = BitgetBookFeed()
        feed.on_message(message("snapshot", book["bids"], book["asks"], checksum=expected), 1)
        assert feed.stats.checksums_ok == 1
        assert feed.checksum("BTCUSDT") == expected


def test_checksum_uses_strings_as_received_trailing_zeros_included() -> None:
    feed = BitgetBookFeed(symbols={"BTCUSDT": "BTC-USDT"})
    bids = [["113.50", "6.40"], ["113.49", "2.00"]]
    asks = [["113.52", "0.10"]]
    feed.on_message(message("snapshot", bids, asks, checksum=0, seq=100), 1)
    assert feed.stats.checksums_ok == 0  # v2 snapshots carry 0: not provided
    checksum = signed_crc("113.50:7.10:113.52:0.10:113.49:2.00")
    assert checksum != signed_crc("113.5:7.1:113.52:0.1:113.49:2")
    [delta] = feed.on_message(
        message("update", [["113.50", "7.10"]], [], checksum=checksum, seq=115), 2
    )
    assert feed.stats.checksums_ok == 1
    book = feed.books["BTC-USDT"]
    assert book.bid_size(book.scale.price("113.5")) == book.scale.size("7.1")
    assert (delta.sequence, book.sequence) == (115, 115)


def test_seq_must_grow_mismatch_resyncs() -> None:
    feed = BitgetBookFeed()
    feed.on_message(message("snapshot", [["100", "1"]], [["101", "1"]], seq=395681152), 1)
    feed.on_message(message("update", [["100", "2"]], [], seq=395681167), 2)  # seq jumps: fine
    with pytest.raises(SequenceGap) as info:
        feed.on_message(message("update", [["100", "3"]], [], seq=395681167), 3)
    assert info.value.received == 395681167
    assert (feed.stats.gaps, feed.stats.resyncs) == (1, 1)
    assert feed.on_message(message("update", [["100", "4"]], [], seq=395681170), 4) == []
    assert feed.stats.dropped == 1
    feed.on_message(message("snapshot", [["100", "5"]], [["101", "1"]], seq=395681180), 5)
    assert feed.in_sync["BTCUSDT"]
    with pytest.raises(ChecksumMismatch):
        feed.on_message(message("update", [["99", "1"]], [], checksum=12345, seq=395681181), 6)
    assert not feed.in_sync["BTCUSDT"]
    assert (feed.stats.checksums_failed, feed.stats.resyncs) == (1, 2)


def test_protocol_messages() -> None:
    feed = BitgetBookFeed()
    [sub] = feed.subscribe_messages(["BTCUSDT"])
    assert msgspec.json.decode(sub) == {
        "op": "subscribe",
        "args": [{"instType": "SPOT", "channel": "books", "instId": "BTCUSDT"}],
    }
    unsub, resub = feed.resubscribe_messages("BTCUSDT") or []
    assert msgspec.json.decode(unsub)["op"] == "unsubscribe"
    assert msgspec.json.decode(resub) == msgspec.json.decode(sub)
    assert feed.heartbeat_message() == b"ping"
    ack = b'{"event":"subscribe","arg":{"instType":"SPOT","channel":"books","instId":"BTCUSDT"}}'
    assert feed.on_message(ack, 1) == []
    assert feed.on_message(b"pong", 2) == []
    assert feed.stats.ignored == 2
    with pytest.raises(ValueError, match="30001"):
        feed.on_message(b'{"event":"error","code":30001,"msg":"instId doesn\'t exist"}', 3)


RECORDINGS = {SPOT: (8, 435, 8), MIX: (2, 192, 2)}  # snapshots, updates, acks


@pytest.mark.parametrize(("name", "counts"), sorted(RECORDINGS.items()))
def test_recordings_replay_with_every_checksum(
    shared_data: Path, name: str, counts: tuple[int, int, int]
) -> None:
    feed = BitgetBookFeed()
    for record in read_recording(shared_data / "bitget" / name):
        for event in feed.on_message(record.data, record.ts_recv_ns):
            assert not feed.books[event.symbol].crossed
    snapshots, updates, acks = counts
    stats = feed.stats
    assert stats.snapshots == snapshots
    assert stats.applied == snapshots + updates
    assert (stats.checksums_ok, stats.checksums_failed) == (snapshots + updates, 0)
    assert (stats.gaps, stats.resyncs, stats.dropped, stats.ignored) == (0, 0, 0, acks)
    assert len(feed.books) == snapshots
    for book in feed.books.values():
        book._check()
    feed._check()  # the kept checksum texts are the book


def test_corrupted_update_is_detected_and_a_fresh_snapshot_resyncs(shared_data: Path) -> None:
    records = list(read_recording(shared_data / "bitget" / SPOT))
    target = next(
        i
        for i, r in enumerate(records)
        if i > 200 and b'"AVAXUSDT"' in r.data and b'"update"' in r.data
    )
    reference, feed = BitgetBookFeed(), BitgetBookFeed()
    failures: list[str] = []
    for i, record in enumerate(records):
        reference.on_message(record.data, record.ts_recv_ns)
        data = record.data
        if i == target:  # one best-ask size changed
            msg = json.loads(data)
            msg["data"][0]["asks"][0][1] += "1"
            data = json.dumps(msg).encode()
        try:
            feed.on_message(data, record.ts_recv_ns)
        except ChecksumMismatch as exc:
            failures.append(exc.symbol)
        if i == target + 30:  # the resubscription's snapshot arrives
            feed.on_message(reference.snapshot_message("AVAXUSDT"), record.ts_recv_ns)
    assert failures == ["AVAXUSDT"]
    assert (feed.stats.checksums_failed, feed.stats.resyncs, feed.stats.gaps) == (1, 1, 0)
    assert feed.stats.dropped > 0
    assert all(feed.in_sync.values())
    assert feed.books == reference.books
    feed._check()  # the kept checksum texts are the book
    # Everything but the failed and the dropped messages matched, the fresh snapshot too.
    assert feed.stats.checksums_ok == 443 - 1 - feed.stats.dropped + 1


def test_verify_report(shared_data: Path) -> None:
    spot = verify("bitget", [shared_data / "bitget" / SPOT])
    assert (spot.messages, spot.applied, spot.malformed) == (451, 443, 0)
    assert (spot.checksums_ok, spot.checksums_failed, spot.gaps) == (443, 0, 0)
    assert spot.books["CULTUSDT"].bid == "0.00003505"
    mix = verify("bitget", [shared_data / "bitget" / MIX])
    assert (mix.messages, mix.applied, mix.checksums_ok, mix.checksums_failed) == (196, 194, 194, 0)
    assert set(mix.books) == {"DASHUSDT", "UNIUSDT"}
    assert mix.errors == []


def test_malformed_snapshot_marks_out_of_sync_keeps_the_book_and_a_good_one_recovers() -> None:
    feed = BitgetBookFeed()
    feed.on_message(message("snapshot", [["100.0", "1.5"]], [["101.0", "2.0"]], seq=10), 1)
    bad = message("snapshot", [["100.0", "1.5"]], [["1e", "2.0"]], seq=20)
    with pytest.raises(MalformedSnapshot) as info:
        feed.on_message(bad, 2)
    assert (info.value.venue, info.value.symbol) == ("bitget", "BTCUSDT")
    assert not feed.in_sync["BTCUSDT"]
    feed._check()
    book = feed.books["BTCUSDT"]
    assert book.sequence == 10
    assert list(book.asks()) == [(book.scale.price("101"), book.scale.size("2"))]
    assert feed.on_message(message("update", [["100.0", "3"]], [], seq=21), 3) == []
    feed.on_message(message("snapshot", [["99.0", "1"]], [["102.0", "1"]], seq=22), 4)
    assert feed.in_sync["BTCUSDT"]
    assert book.sequence == 22
