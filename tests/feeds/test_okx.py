"""OKX v5 ``books``: doc vectors and doc-shaped sequences, and the recording of ../shared/data."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import msgspec
import pytest

from feeds.base import ChecksumMismatch, MalformedSnapshot, SequenceGap
from feeds.okx import OkxBookFeed, checksum_text
from feeds.recorded import read_recording
from feeds.verify import verify
from otc.errors import ValueParseError

RECORDING = "okx_v5_books400_3inst_2022-05-13.jsonl"


def signed_crc(text: str) -> int:
    value = zlib.crc32(text.encode())
    return value - 2**32 if value >= 2**31 else value


def message(
    action: str,
    bids: list[list[str]],
    asks: list[list[str]],
    *,
    checksum: int = 0,
    seq_id: int | None = None,
    prev_seq_id: int | None = None,
) -> bytes:
    data: dict[str, object] = {
        "asks": asks,
        "bids": bids,
        "ts": "1597026383085",
        "checksum": checksum,
    }
    if seq_id is not None:
        data["prevSeqId"] = prev_seq_id
        data["seqId"] = seq_id
    return msgspec.json.encode(
        {"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": action, "data": [data]}
    )


def test_doc_checksum_vectors(shared_data: Path) -> None:
    doc = json.loads((shared_data / "okx" / "okx_checksum_vectors.json").read_text())
    for vector in doc["vectors"]:
        book = vector["book"]
        text = checksum_text(book["bids"], book["asks"])
        assert text == vector["checksum_input_string"]
        assert signed_crc(text) == vector["expected_checksum_signed_int32"]
        # The adapter accepts a snapshot of that book carrying the doc's checksum.
        feed = OkxBookFeed()
        expected = vector["expected_checksum_signed_int32"]
        feed.on_message(message("snapshot", book["bids"], book["asks"], checksum=expected), 1)
        assert feed.stats.checksums_ok == 1
        assert feed.checksum("BTC-USDT") == expected


def test_checksum_text_interleaves_25_levels_and_appends_the_longer_side() -> None:
    bids = [[f"{100 - i}", f"{i + 1}", "0", "1"] for i in range(30)]
    asks = [[f"{200 + i}", "1.50", "0", "1"] for i in range(3)]
    text = checksum_text(bids, asks)
    expected = ["100:1:200:1.50", "99:2:201:1.50", "98:3:202:1.50"]
    expected += [f"{100 - i}:{i + 1}" for i in range(3, 25)]
    assert text == ":".join(expected)


def test_update_keeps_received_strings_and_checks_the_doc_vector() -> None:
    """Doc vector 1's book, then an update giving doc vector 2's book (-> 831078360)."""
    feed = OkxBookFeed(symbols={"BTC-USDT": "BTC-USDT"})
    bids = [["3366.1", "7", "0", "3"], ["3366", "6", "3", "4"]]
    asks = [["3366.8", "9", "10", "3"], ["3368", "8", "3", "4"]]
    feed.on_message(message("snapshot", bids, asks, checksum=-1881014294), 1)
    update = message(
        "update", [["3366", "0", "0", "0"]], [["3372", "8", "3", "4"]], checksum=831078360
    )
    [delta] = feed.on_message(update, 2)
    book = feed.books["BTC-USDT"]
    scale = book.scale
    assert list(book.bids()) == [(scale.price("3366.1"), scale.size("7"))]
    assert [p for p, _ in book.asks()] == [scale.price(p) for p in ("3366.8", "3368", "3372")]
    assert delta.ts_event_ns == 1597026383085 * 1_000_000
    assert feed.stats.checksums_ok == 2
    assert feed.stats.applied == 2


def test_wrong_checksum_fails_zero_is_not_provided_and_snapshot_recovers() -> None:
    feed = OkxBookFeed()
    feed.on_message(message("snapshot", [["100", "1", "0", "1"]], [["101", "2", "0", "1"]]), 1)
    # checksum 0: not provided (deprecated from 2026-06-23); applied, nothing counted.
    feed.on_message(message("update", [["100", "3", "0", "1"]], []), 2)
    assert (feed.stats.checksums_ok, feed.stats.checksums_failed) == (0, 0)
    good = signed_crc("100:4:101:2")
    feed.on_message(message("update", [["100", "4", "0", "1"]], [], checksum=good), 3)
    assert feed.stats.checksums_ok == 1
    with pytest.raises(ChecksumMismatch) as info:
        feed.on_message(message("update", [["100", "5", "0", "1"]], [], checksum=good), 4)
    assert info.value.expected == good
    assert info.value.computed == signed_crc("100:5:101:2")
    assert not feed.in_sync["BTC-USDT"]
    assert (feed.stats.checksums_failed, feed.stats.resyncs) == (1, 1)
    assert feed.on_message(message("update", [["100", "6", "0", "1"]], []), 5) == []
    assert feed.stats.dropped == 1
    snap = message("snapshot", [["99", "1", "0", "1"]], [], checksum=signed_crc("99:1"))
    feed.on_message(snap, 6)
    assert feed.in_sync["BTC-USDT"]
    assert feed.stats.checksums_ok == 2


def test_sequence_ids_as_documented_heartbeat_reset_and_gap() -> None:
    """The docs' cases: snapshot prevSeqId=-1; updates chain prevSeqId to the last seqId; an
    idle heartbeat has empty sides and prevSeqId == seqId; after maintenance seqId < prevSeqId
    (10 -> 15 -> 3 -> 5); any other prevSeqId is a gap."""
    feed = OkxBookFeed()
    lvl = [["100", "1", "0", "1"]]
    feed.on_message(
        message("snapshot", lvl, [["101", "1", "0", "1"]], seq_id=10, prev_seq_id=-1), 1
    )
    feed.on_message(message("update", [["99", "2", "0", "1"]], [], seq_id=15, prev_seq_id=10), 2)
    [heartbeat] = feed.on_message(message("update", [], [], seq_id=15, prev_seq_id=15), 3)
    assert (heartbeat.bids, heartbeat.asks, heartbeat.ts_recv_ns) == ([], [], 3)
    feed.on_message(message("update", [["98", "1", "0", "1"]], [], seq_id=3, prev_seq_id=15), 4)
    feed.on_message(message("update", [["98", "0", "0", "0"]], [], seq_id=5, prev_seq_id=3), 5)
    book = feed.books["BTC-USDT"]
    assert book.sequence == 5
    assert book.ts_recv_ns == 5
    assert len(list(book.bids())) == 2
    assert feed.stats.gaps == 0
    with pytest.raises(SequenceGap) as info:
        feed.on_message(message("update", lvl, [], seq_id=9, prev_seq_id=7), 6)
    assert (info.value.expected, info.value.received) == (5, 7)
    assert (feed.stats.gaps, feed.stats.resyncs) == (1, 1)
    assert not feed.in_sync["BTC-USDT"]
    assert feed.on_message(message("update", lvl, [], seq_id=11, prev_seq_id=9), 7) == []
    feed.on_message(message("snapshot", lvl, [], seq_id=20, prev_seq_id=-1), 8)
    feed.on_message(message("update", [["100", "0", "0", "0"]], [], seq_id=21, prev_seq_id=20), 9)
    assert feed.in_sync["BTC-USDT"]
    assert book.sequence == 21
    assert book.best_bid is None
    # A snapshot as OKX sends it (prevSeqId -1) restarts the chain of a fresh client.
    fresh = OkxBookFeed()
    fresh.on_message(feed.snapshot_message("BTC-USDT"), 10)
    fresh.on_message(message("update", lvl, [], seq_id=22, prev_seq_id=21), 11)
    assert fresh.books["BTC-USDT"].sequence == 22
    assert feed.stats.applied == 7  # 2 snapshots, 5 updates (the gap and the drop not)


def test_acks_pongs_ignored_errors_raise_and_subscriptions() -> None:
    feed = OkxBookFeed()
    ack = b'{"event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"},"connId":"a"}'
    assert feed.on_message(ack, 1) == []
    assert feed.on_message(b"pong", 2) == []
    assert feed.stats.ignored == 2
    with pytest.raises(ValueError, match="60018"):
        feed.on_message(b'{"event":"error","code":"60018","msg":"doesn\'t exist","connId":"a"}', 3)
    [sub] = feed.subscribe_messages(["BTC-USDT", "ETH-USDT"])
    assert msgspec.json.decode(sub) == {
        "op": "subscribe",
        "args": [
            {"channel": "books", "instId": "BTC-USDT"},
            {"channel": "books", "instId": "ETH-USDT"},
        ],
    }
    unsub, resub = feed.resubscribe_messages("BTC-USDT") or []
    assert msgspec.json.decode(unsub)["op"] == "unsubscribe"
    assert msgspec.json.decode(resub)["op"] == "subscribe"
    assert feed.heartbeat_message() == b"ping"


def test_recording_replays_with_every_checksum(shared_data: Path) -> None:
    feed = OkxBookFeed()
    for record in read_recording(shared_data / "okx" / RECORDING):
        for event in feed.on_message(record.data, record.ts_recv_ns):
            assert not feed.books[event.symbol].crossed
    stats = feed.stats
    assert stats.snapshots == 3
    assert stats.applied == 290  # 3 snapshots + 287 updates
    assert (stats.checksums_ok, stats.checksums_failed) == (290, 0)
    assert (stats.gaps, stats.resyncs, stats.dropped, stats.ignored) == (0, 0, 0, 3)
    assert set(feed.books) == {"BTC-USD-220527", "UNI-USD-SWAP", "BTC-USDT"}
    for book in feed.books.values():
        book._check()
        assert len(book) > 100
    feed._check()  # the kept checksum texts are the book


def corrupt_size(data: bytes) -> bytes:
    """The update with its first non-zero bid size changed (a digit appended)."""
    msg = json.loads(data)
    for level in msg["data"][0]["bids"]:
        if level[1] != "0":
            level[1] += "1"
            return json.dumps(msg).encode()
    raise AssertionError("no bid to corrupt")


def test_corrupted_update_is_detected_and_a_fresh_snapshot_resyncs(shared_data: Path) -> None:
    records = list(read_recording(shared_data / "okx" / RECORDING))
    reference, feed = OkxBookFeed(), OkxBookFeed()
    target = next(
        i
        for i, r in enumerate(records)
        if i > 100 and b'"update"' in r.data and b'BTC-USDT"' in r.data and b'"bids":[[' in r.data
    )
    failures: list[ChecksumMismatch] = []
    for i, record in enumerate(records):
        reference.on_message(record.data, record.ts_recv_ns)
        data = corrupt_size(record.data) if i == target else record.data
        try:
            feed.on_message(data, record.ts_recv_ns)
        except ChecksumMismatch as exc:
            failures.append(exc)
        if i == target + 20:  # the resubscription's snapshot arrives
            assert feed.stats.dropped > 0
            feed.on_message(reference.snapshot_message("BTC-USDT"), record.ts_recv_ns)
    assert [f.symbol for f in failures] == ["BTC-USDT"]
    assert (feed.stats.checksums_failed, feed.stats.resyncs, feed.stats.gaps) == (1, 1, 0)
    assert all(feed.in_sync.values())
    assert feed.books == reference.books
    feed._check()  # the kept checksum texts are the book
    # Every message after the resync matched its checksum again.
    assert feed.stats.checksums_ok == 290 - 1 - feed.stats.dropped + 1


def test_verify_report(shared_data: Path) -> None:
    report = verify("okx", [shared_data / "okx" / RECORDING])
    assert (report.messages, report.applied, report.malformed) == (293, 290, 0)
    assert (report.checksums_ok, report.checksums_failed, report.gaps) == (290, 0, 0)
    assert report.errors == []
    assert report.books["BTC-USDT"].bid == "30236.1"
    assert report.books["BTC-USDT"].ask == "30236.2"


def test_snapshot_giving_a_price_twice_is_malformed_and_changes_nothing() -> None:
    # It used to escape as a bare ValueError from the book, the bids already replaced.
    feed = OkxBookFeed()
    feed.on_message(message("snapshot", [["100", "1", "0", "1"]], [["101", "2", "0", "1"]]), 1)
    twice = [["102", "1", "0", "1"], ["102", "3", "0", "1"]]
    with pytest.raises(ValueParseError, match="given twice"):
        feed.on_message(message("snapshot", [["99", "1", "0", "1"]], twice), 2)
    assert not feed.in_sync["BTC-USDT"]
    feed._check()
    feed.books["BTC-USDT"]._check()
    assert feed.checksum("BTC-USDT") == signed_crc("100:1:101:2")


@pytest.mark.parametrize(
    "ts", ["16524592297@3", "", "-1", "1.5", "1e12", "\u0661\u0662", "9" * 5000]
)
def test_time_that_is_not_ms_digits_is_malformed_and_changes_nothing(ts: str) -> None:
    # int(ts) used to raise a bare ValueError (not a malformed message) after the snapshot
    # had been decoded, which the connection does not catch.
    feed = OkxBookFeed()
    feed.on_message(message("snapshot", [["100", "1", "0", "1"]], [["101", "2", "0", "1"]]), 1)
    bad = message("update", [["100", "5", "0", "1"]], []).replace(b"1597026383085", ts.encode())
    with pytest.raises(msgspec.ValidationError, match=r"\$\.data\[0\]\.ts"):
        feed.on_message(bad, 2)
    assert feed.in_sync["BTC-USDT"]
    assert feed.checksum("BTC-USDT") == signed_crc("100:1:101:2")


def test_malformed_item_changes_nothing_even_after_a_good_item() -> None:
    # Items of ``data`` were parsed and applied one by one: a bad level in the second left the
    # first applied while the message raised.
    feed = OkxBookFeed()
    feed.on_message(message("snapshot", [["100", "1", "0", "1"]], [["101", "2", "0", "1"]]), 1)
    doc = msgspec.json.decode(message("update", [["100", "5", "0", "1"]], []))
    doc["data"].append(dict(doc["data"][0], bids=[["99", "NaN", "0", "1"]]))
    with pytest.raises(ValueParseError, match="finite"):
        feed.on_message(msgspec.json.encode(doc), 2)
    assert feed.in_sync["BTC-USDT"]
    assert feed.checksum("BTC-USDT") == signed_crc("100:1:101:2")


@pytest.mark.parametrize(
    "asks",
    [
        [["NaN", "1", "0", "1"]],
        [["101", "-1", "0", "1"]],
        [["101", "2", "0", "1"], ["101", "3", "0", "1"]],
    ],
)
def test_malformed_snapshot_marks_out_of_sync_keeps_the_book_and_a_good_one_recovers(
    asks: list[list[str]],
) -> None:
    # A snapshot whose level did not parse raised a bare ValueParseError before anything was
    # marked: the symbol stayed in sync with its previous, obsolete book.
    feed = OkxBookFeed()
    feed.on_message(message("snapshot", [["100", "1", "0", "1"]], [["101", "2", "0", "1"]]), 1)
    with pytest.raises(MalformedSnapshot) as info:
        feed.on_message(message("snapshot", [["99", "1", "0", "1"]], asks), 2)
    assert (info.value.venue, info.value.symbol) == ("okx", "BTC-USDT")
    assert not feed.in_sync["BTC-USDT"]
    assert feed.stats.resyncs == 1
    feed._check()
    assert feed.checksum("BTC-USDT") == signed_crc("100:1:101:2")
    # Updates wait for the next snapshot, which brings the symbol back.
    assert feed.on_message(message("update", [["100", "5", "0", "1"]], []), 3) == []
    good = message("snapshot", [["99", "1", "0", "1"]], [["102", "1", "0", "1"]])
    feed.on_message(good, 4)
    assert feed.in_sync["BTC-USDT"]
    assert feed.checksum("BTC-USDT") == signed_crc("99:1:102:1")


def test_malformed_update_is_not_a_malformed_snapshot() -> None:
    feed = OkxBookFeed()
    feed.on_message(message("snapshot", [["100", "1", "0", "1"]], [["101", "2", "0", "1"]]), 1)
    with pytest.raises(ValueParseError) as info:
        feed.on_message(message("update", [["100", "NaN", "0", "1"]], []), 2)
    assert not isinstance(info.value, MalformedSnapshot)
    assert feed.in_sync["BTC-USDT"]
