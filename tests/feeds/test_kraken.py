"""Kraken book (v2 live, v1 recordings): doc checksum vectors, recordings, resync."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from feeds.base import (
    BookDelta,
    BookSnapshot,
    ChecksumMismatch,
    LostUpdate,
    MalformedSnapshot,
)
from feeds.kraken import KrakenBookFeed
from feeds.recorded import read_recording
from feeds.verify import verify
from otc.errors import ValueParseError
from otc.model import Side

RECORDING = "kraken_v1_book1000_10pairs_2021-04-17.jsonl"
PAIRS = {
    "WAVES/EUR",
    "XMR/USD",
    "KSM/XBT",
    "GRT/ETH",
    "SC/EUR",
    "ETH/CHF",
    "OCEAN/XBT",
    "OMG/USD",
    "XBT/CHF",
    "ADA/XBT",
}


def reference_checksum(asks: Iterable[Sequence[str]], bids: Iterable[Sequence[str]]) -> int:
    """The docs' algorithm on texts, verbatim: top 10 asks then bids, '.' out, zeros stripped."""
    parts = [
        f"{level[0].replace('.', '').lstrip('0')}{level[1].replace('.', '').lstrip('0')}"
        for side in (list(asks)[:10], list(bids)[:10])
        for level in side
    ]
    return zlib.crc32("".join(parts).encode())


def v1_snapshot(pair: str, asks: list[list[str]], bids: list[list[str]], depth: int) -> bytes:
    ts = "1618678123.481570"
    body = {"as": [[*lv[:2], ts] for lv in asks], "bs": [[*lv[:2], ts] for lv in bids]}
    return json.dumps([42, body, f"book-{depth}", pair]).encode()


def v1_update(pair: str, depth: int, *bodies: dict[str, Any]) -> bytes:
    return json.dumps([42, *bodies, f"book-{depth}", pair]).encode()


def v2_message(kind: str, symbol: str, bids: str, asks: str, checksum: int) -> bytes:
    """A v2 book message; ``bids``/``asks`` are JSON arrays written by hand (exact numbers)."""
    return (
        f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{symbol}",'
        f'"bids":{bids},"asks":{asks},"checksum":{checksum},'
        f'"timestamp":"2023-10-06T17:35:55.440295Z"}}]}}'
    ).encode()


def v2_levels(levels: Iterable[tuple[str, str]]) -> str:
    return "[" + ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in levels) + "]"


def v2_snapshot(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> bytes:
    """A v2 snapshot of XBT/USD with these levels and their checksum."""
    checksum = reference_checksum(asks, bids)
    return v2_message("snapshot", "XBT/USD", v2_levels(bids), v2_levels(asks), checksum)


@pytest.fixture
def vectors(shared_data: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (shared_data / "kraken" / "kraken_checksum_vectors.json").read_text()
    )
    return data


# -- doc examples and checksum vectors -----------------------------------------------------------


def test_reference_checksum_agrees_with_the_vector_file(vectors: dict[str, Any]) -> None:
    def text(levels: list[list[str]]) -> str:
        return "".join(
            f"{lv[0].replace('.', '').lstrip('0')}{lv[1].replace('.', '').lstrip('0')}"
            for lv in levels
        )

    v2 = vectors["v2_official_doc_example"]
    assert text(v2["asks_low_to_high"] + v2["bids_high_to_low"]) == v2["checksum_input_string"]
    assert reference_checksum(v2["asks_low_to_high"], v2["bids_high_to_low"]) == 3310070434
    for vector in vectors["v1_recorded_vectors"]["vectors"]:
        assert text(vector["asks"][:10] + vector["bids"][:10]) == vector["checksum_input_string"]
        assert reference_checksum(vector["asks"], vector["bids"]) == vector["expected_checksum"]
    # (The file's v1 doc "checksum_input_string" is a copy of the third recorded vector's; the
    # doc's levels and expected checksum agree with each other.)
    v1 = vectors["v1_official_doc_example"]["book_state_after_update"]
    assert reference_checksum(v1["asks_low_to_high"], v1["bids_high_to_low"]) == 974947235


def test_v1_doc_example_two_dict_update_matches_974947235(vectors: dict[str, Any]) -> None:
    doc = vectors["v1_official_doc_example"]
    state = doc["book_state_after_update"]
    feed = KrakenBookFeed()
    feed.on_message(
        v1_snapshot("BTC/USD", state["asks_low_to_high"], state["bids_high_to_low"], 1000), 1
    )
    # The docs' update: asks in one dict, bids and the checksum in a second one.
    events = feed.on_message(json.dumps(doc["doc_example_update_message"]).encode(), 2)
    assert feed.stats.checksums_ok == 1
    assert feed.stats.checksums_failed == 0
    (delta,) = events
    assert isinstance(delta, BookDelta)
    scale = feed.books["BTC/USD"].scale
    assert delta.asks == [
        (scale.price("0.05120"), scale.size("0.000005")),
        (scale.price("0.05275"), scale.size("0.000005")),
    ]
    assert len(delta.bids) == 2
    assert delta.ts_event_ns == 1582905486_493034000
    book = feed.books["BTC/USD"]
    assert book.depth(Side.BUY) == book.depth(Side.SELL) == 12


def test_v1_doc_update_with_wrong_checksum_fails(vectors: dict[str, Any]) -> None:
    doc = vectors["v1_official_doc_example"]
    state = doc["book_state_after_update"]
    feed = KrakenBookFeed()
    feed.on_message(
        v1_snapshot("BTC/USD", state["asks_low_to_high"], state["bids_high_to_low"], 1000), 1
    )
    update = doc["doc_example_update_message"]
    update[2]["b"][1][1] = "0.00000600"  # 0.04940 is deeper than the top 10: still matches
    feed.on_message(json.dumps(update).encode(), 2)
    update[2]["b"][0] = ["0.05000", "0.00000600", "1582905486.493008"]  # the best bid: fails
    with pytest.raises(ChecksumMismatch) as info:
        feed.on_message(json.dumps(update).encode(), 3)
    assert info.value.expected == 974947235
    assert feed.stats.checksums_ok == 1
    assert feed.stats.checksums_failed == 1


@pytest.mark.parametrize("index", [0, 1, 2])
def test_v1_recorded_vectors(vectors: dict[str, Any], index: int) -> None:
    vector = vectors["v1_recorded_vectors"]["vectors"][index]
    asks, bids = vector["asks"], vector["bids"]
    assert reference_checksum(asks, bids) == vector["expected_checksum"]
    feed = KrakenBookFeed()
    feed.on_message(v1_snapshot("ADA/XBT", asks, bids, 25), 1)
    # Re-send the best ask unchanged, with the vector's checksum (snapshots carry none).
    again = {"a": [[*asks[0], "1618678124.000000"]], "c": str(vector["expected_checksum"])}
    feed.on_message(v1_update("ADA/XBT", 25, again), 2)
    assert feed.stats.checksums_ok == 1


def test_v1_tiny_volume_is_never_scientific(vectors: dict[str, Any]) -> None:
    vector = vectors["v1_recorded_vectors"]["vectors"][2]
    assert vector["bids"][0][1] == "0.00000048"
    feed = KrakenBookFeed()
    feed.on_message(v1_snapshot("ADA/XBT", vector["asks"], vector["bids"], 25), 1)
    # Change the tiny volume to another tiny one: the checksum must follow exactly.
    bids = [["0.000017670", "0.00000007"], *vector["bids"][1:]]
    checksum = reference_checksum(vector["asks"], bids)
    feed.on_message(
        v1_update("ADA/XBT", 25, {"b": [[*bids[0], "1618678124.0"]], "c": str(checksum)}), 2
    )
    assert feed.stats.checksums_ok == 1
    assert feed.books["ADA/XBT"].best_bid == feed.books["ADA/XBT"].scale.price("0.00001767")


def test_v1_republished_level_is_applied() -> None:
    asks = [["1.00000", "1.00000000"], ["1.10000", "2.00000000"]]
    bids = [["0.90000", "1.00000000"]]
    feed = KrakenBookFeed()
    feed.on_message(v1_snapshot("XBT/EUR", asks, bids, 10), 1)
    new_asks = [asks[0], ["1.10000", "3.00000000"]]
    update = {
        "a": [["1.10000", "3.00000000", "1618678124.100000", "r"]],
        "c": str(reference_checksum(new_asks, bids)),
    }
    feed.on_message(v1_update("XBT/EUR", 10, update), 2)
    assert feed.stats.checksums_ok == 1


def test_v1_snapshot_that_is_not_fixed_width_is_refused() -> None:
    feed = KrakenBookFeed()
    message = v1_snapshot("XBT/EUR", [["1.1", "1.00000000"]], [["0.95", "1.00000000"]], 10)
    with pytest.raises(ValueParseError, match="fixed-width"):
        feed.on_message(message, 1)
    assert not feed.in_sync["XBT/EUR"]


def test_v2_doc_example_with_shortest_numbers_matches_3310070434(vectors: dict[str, Any]) -> None:
    doc = vectors["v2_official_doc_example"]
    # JSON numbers as a float printer writes them: 45281.0 stays, 0.10000000 becomes 0.1.
    bids = v2_levels((p, repr(float(q))) for p, q in doc["bids_high_to_low"])
    asks = v2_levels((p, repr(float(q))) for p, q in doc["asks_low_to_high"])
    assert '"qty":0.1}' in bids
    message = v2_message("snapshot", "BTC/USD", bids, asks, doc["expected_checksum"])
    feed = KrakenBookFeed(precisions={"BTC/USD": (1, 8)})
    (snap,) = feed.on_message(message, 1)
    assert isinstance(snap, BookSnapshot)
    assert feed.stats.checksums_ok == 1
    assert feed.in_sync["BTC/USD"]
    assert snap.ts_event_ns == 1696613755_440295000
    # Formatted to the wrong precision the same book fails.
    wrong = KrakenBookFeed(precisions={"BTC/USD": (2, 8)})
    with pytest.raises(ChecksumMismatch):
        wrong.on_message(message, 1)
    assert not wrong.in_sync["BTC/USD"]


def test_v2_real_eth_usd_snapshot_and_update(vectors: dict[str, Any]) -> None:
    live = vectors["v2_live_snapshot_plus_update_ETHUSD_2025-05-06"]
    for precisions in ({"ETH/USD": (2, 8)}, None):  # given, or taken from the texts
        feed = KrakenBookFeed(precisions=precisions)
        results = [feed.on_message(raw.encode(), 1) for raw in live["raw_messages_in_order"]]
        assert [len(r) for r in results] == [0, 1, 1]
        assert feed.stats.checksums_ok == 2
        assert (feed.stats.applied, feed.stats.snapshots) == (2, 1)
        book = feed.books["ETH/USD"]
        assert book.depth(Side.BUY) == 10  # the ack's depth
        assert book.ask_size(book.scale.price("1797.29")) == 0
        assert book.ask_size(book.scale.price("1797.52")) == book.scale.size("1.56601318")
        book._check()


def test_v2_precisions_learned_from_the_instrument_channel() -> None:
    # Shortest numbers: guessing the precisions from these texts gives (1, 1), which is wrong.
    bids = [("100.1", "0.5")]
    asks = [("100.3", "2")]
    checksum = reference_checksum([("100.30", "2.00000000")], [("100.10", "0.50000000")])
    message = v2_message("snapshot", "BTC/USD", v2_levels(bids), v2_levels(asks), checksum)
    guessing = KrakenBookFeed()
    with pytest.raises(ChecksumMismatch):
        guessing.on_message(message, 1)
    instrument = {
        "channel": "instrument",
        "type": "snapshot",
        "data": {
            "assets": [{"id": "BTC", "status": "enabled", "precision": 10}],
            "pairs": [
                {
                    "symbol": "BTC/USD",
                    "base": "BTC",
                    "quote": "USD",
                    "qty_precision": 8,
                    "qty_increment": 1e-08,
                    "price_precision": 2,
                    "price_increment": 0.01,
                }
            ],
        },
    }
    feed = KrakenBookFeed()
    assert len(feed.subscribe_messages(["BTC/USD"])) == 2  # instrument + book
    assert feed.on_message(json.dumps(instrument).encode(), 1) == []
    assert feed.precisions == {"BTC/USD": (2, 8)}
    assert len(feed.subscribe_messages(["BTC/USD"])) == 1
    feed.on_message(message, 2)
    assert feed.stats.checksums_ok == 1


def test_v2_truncates_to_the_subscribed_depth() -> None:
    feed = KrakenBookFeed(precisions={"XBT/USD": (1, 8)})
    ack = {
        "method": "subscribe",
        "result": {"channel": "book", "depth": 10, "snapshot": True, "symbol": "XBT/USD"},
        "success": True,
    }
    feed.on_message(json.dumps(ack).encode(), 0)
    asks = [(f"{101 + i}.0", "1.00000000") for i in range(10)]
    bids = [(f"{100 - i}.0", "1.00000000") for i in range(10)]
    feed.on_message(v2_snapshot(bids, asks), 1)
    # A better ask pushes the 10th (110.0) out of scope: no delete is sent for it.
    asks = [("100.5", "1.00000000"), *asks[:9]]
    (delta,) = feed.on_message(
        v2_message("update", "XBT/USD", "[]", v2_levels(asks[:1]), reference_checksum(asks, bids)),
        2,
    )
    book = feed.books["XBT/USD"]
    assert isinstance(delta, BookDelta)
    assert delta.asks == [
        (book.scale.price("100.5"), book.scale.size("1")),
        (book.scale.price("110"), 0),
    ]
    # Deleting the best ask leaves 9 asks; the stale 110.0 must not come back into the top 10.
    asks = asks[1:]
    feed.on_message(
        v2_message(
            "update",
            "XBT/USD",
            "[]",
            v2_levels([("100.5", "0.00000000")]),
            reference_checksum(asks, bids),
        ),
        3,
    )
    assert feed.stats.checksums_ok == 3
    assert book.depth(Side.BUY) == 9
    book._check()


def test_v2_checksum_failure_drops_updates_until_a_new_snapshot() -> None:
    feed = KrakenBookFeed(precisions={"XBT/USD": (1, 8)})
    asks, bids = [("101.0", "1.00000000")], [("100.0", "2.00000000")]
    feed.on_message(v2_snapshot(bids, asks), 1)
    new_bids = [("100.0", "3.00000000")]
    bad = v2_message("update", "XBT/USD", v2_levels(new_bids), "[]", reference_checksum(asks, bids))
    with pytest.raises(ChecksumMismatch) as info:
        feed.on_message(bad, 2)
    assert info.value.symbol == "XBT/USD"
    assert (feed.stats.checksums_failed, feed.stats.resyncs) == (1, 1)
    assert not feed.in_sync["XBT/USD"]
    good = v2_message(
        "update", "XBT/USD", v2_levels(new_bids), "[]", reference_checksum(asks, new_bids)
    )
    assert feed.on_message(good, 3) == []
    assert feed.stats.dropped == 1
    feed.on_message(v2_snapshot(bids, asks), 4)
    feed.on_message(good, 5)
    assert feed.in_sync["XBT/USD"]
    assert feed.stats.checksums_ok == 3  # two snapshots and the last update


def test_checksum_follows_changes_made_outside_the_adapter(vectors: dict[str, Any]) -> None:
    doc = vectors["v1_official_doc_example"]
    asks, bids = (
        doc["book_state_after_update"]["asks_low_to_high"],
        doc["book_state_after_update"]["bids_high_to_low"],
    )
    feed = KrakenBookFeed()
    feed.on_message(v1_snapshot("BTC/USD", asks, bids, 1000), 1)
    deep = {
        "a": [["0.06000", "0.00000500", "1582905490.0"]],
        "c": str(reference_checksum(asks, bids)),
    }
    feed.on_message(v1_update("BTC/USD", 1000, deep), 2)
    book = feed.books["BTC/USD"]
    book.update_ask(book.scale.price("0.05005"), book.scale.size("0.00000600"))
    changed = [["0.05005", "0.00000600"], *asks[1:]]
    deeper = {
        "a": [["0.06005", "0.00000500", "1582905491.0"]],
        "c": str(reference_checksum(changed, bids)),
    }
    feed.on_message(v1_update("BTC/USD", 1000, deeper), 3)
    assert feed.stats.checksums_ok == 2


def test_control_messages() -> None:
    feed = KrakenBookFeed()
    for message in (
        b'{"channel":"heartbeat"}',
        b'{"channel":"status","type":"update","data":[{"api_version":"v2","connection_id":1,"system":"online","version":"2.0.0"}]}',
        b'{"method":"pong","time_in":"2023-09-24T14:10:23.799685Z","time_out":"2023-09-24T14:10:23.799703Z"}',
        b'{"event":"heartbeat"}',
        b'{"connectionID":17843232920108168701,"event":"systemStatus","status":"online","version":"1.8.3"}',
    ):
        assert feed.on_message(message, 1) == []
    assert feed.stats.ignored == 5
    refused = {"error": "Unknown pair", "method": "subscribe", "success": False, "symbol": "X/Y"}
    with pytest.raises(ValueError, match="refused"):
        feed.on_message(json.dumps(refused).encode(), 2)
    refused_v1 = {
        "errorMessage": "Currency pair not supported",
        "event": "subscriptionStatus",
        "pair": "X/Y",
        "status": "error",
        "subscription": {"depth": 10, "name": "book"},
    }
    with pytest.raises(ValueError, match="refused"):
        feed.on_message(json.dumps(refused_v1).encode(), 3)
    with pytest.raises(msgspec.ValidationError):
        feed.on_message(b'[1, "book-10", "XBT/USD"]', 4)


def test_subscriptions() -> None:
    feed = KrakenBookFeed(precisions={"BTC/USD": (1, 8)}, depth=100)
    (book_sub,) = feed.subscribe_messages(["BTC/USD"])
    assert json.loads(book_sub) == {
        "method": "subscribe",
        "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 100},
    }
    assert json.loads(feed.heartbeat_message() or b"") == {"method": "ping"}
    unsub, sub = feed.resubscribe_messages("BTC/USD") or []
    assert json.loads(unsub)["method"] == "unsubscribe"
    assert json.loads(sub) == json.loads(book_sub)
    feed.on_message(v1_snapshot("XBT/EUR", [["1.00000", "1.00000000"]], [], 25), 1)
    unsub, sub = feed.resubscribe_messages("XBT/EUR") or []
    assert json.loads(sub) == {
        "event": "subscribe",
        "pair": ["XBT/EUR"],
        "subscription": {"name": "book", "depth": 25},
    }
    with pytest.raises(ValueError, match="depth"):
        KrakenBookFeed(depth=50)


# -- recordings -----------------------------------------------------------------------------------


def test_recording_replays_with_every_checksum(shared_data: Path) -> None:
    feed = KrakenBookFeed()
    for record in read_recording(shared_data / "kraken" / RECORDING):
        events = feed.on_message(record.data, record.ts_recv_ns)
        for event in events:
            assert not feed.books[event.symbol].crossed
    stats = feed.stats
    assert stats.checksums_ok == 4269
    assert (stats.checksums_failed, stats.gaps, stats.resyncs, stats.dropped) == (0, 0, 0, 0)
    assert (stats.snapshots, stats.applied, stats.ignored) == (10, 10 + 4269, 11)
    assert set(feed.books) == PAIRS
    assert all(feed.in_sync.values())
    for book in feed.books.values():
        book._check()
        assert book.depth(Side.BUY) <= 1000
        assert book.depth(Side.SELL) <= 1000


def test_snapshot_message_round_trips(shared_data: Path) -> None:
    reference = KrakenBookFeed()
    for record in read_recording(shared_data / "kraken" / RECORDING):
        reference.on_message(record.data, record.ts_recv_ns)
    for symbol in PAIRS:
        copy = KrakenBookFeed()
        copy.on_message(reference.snapshot_message(symbol), 1)
        assert copy.books[symbol] == reference.books[symbol]


def _top10_update_index(records: list[bytes], start: int) -> int:
    """Index of the first update at or after ``start`` that changes a top-10 level."""
    feed = KrakenBookFeed()
    for i, data in enumerate(records):
        feed.on_message(data, 1)
        message = json.loads(data)
        if i < start or not isinstance(message, list) or "c" not in message[-3]:
            continue
        book = feed.books[message[-1]]
        body = message[1]
        side, levels = ("a", book.asks()) if "a" in body else ("b", book.bids())
        price = book.scale.price(body[side][0][0])
        top = [p for p, _ in list(levels)[:10]]
        if price in top and len(body[side]) == 1:
            return i
    raise AssertionError("no top-10 update")


@pytest.mark.parametrize("fault", ["corrupt", "drop"])
def test_fault_is_detected_and_a_fresh_snapshot_resyncs(shared_data: Path, fault: str) -> None:
    records = [r.data for r in read_recording(shared_data / "kraken" / RECORDING)]
    target = _top10_update_index(records, 1000)
    pair = json.loads(records[target])[-1]
    reference = KrakenBookFeed()
    feed = KrakenBookFeed()
    failures: list[tuple[int, str]] = []
    for i, data in enumerate(records):
        reference.on_message(data, 1)
        if i == target:
            if fault == "drop":
                continue
            message = json.loads(data)
            level = message[1]["a" if "a" in message[1] else "b"][0]
            level[1] = str(Decimal(level[1]) + Decimal("0.00000001"))
            data = json.dumps(message).encode()
        try:
            feed.on_message(data, 1)
        except ChecksumMismatch as exc:
            failures.append((i, exc.symbol))
        if i == target + 200:
            assert not feed.in_sync[pair]
            feed.on_message(reference.snapshot_message(pair), 1)
    ((index, symbol),) = failures
    assert symbol == pair
    assert target <= index < target + 200
    assert (feed.stats.checksums_failed, feed.stats.resyncs) == (1, 1)
    assert feed.stats.dropped > 0
    assert feed.stats.snapshots == 11
    assert all(feed.in_sync.values())
    for symbol, book in reference.books.items():
        assert feed.books[symbol] == book


def test_verify_report(shared_data: Path) -> None:
    report = verify("kraken", [shared_data / "kraken" / RECORDING])
    assert report.messages == 4290
    assert (report.applied, report.checksums_ok, report.checksums_failed) == (4279, 4269, 0)
    assert (report.gaps, report.resyncs, report.malformed, report.errors) == (0, 0, 0, [])
    assert set(report.books) == PAIRS
    assert report.books["XMR/USD"].bid is not None


def test_v2_snapshot_giving_a_price_twice_is_malformed_and_changes_nothing() -> None:
    # It used to escape as a bare ValueError from the book, the bids already replaced.
    feed = KrakenBookFeed(precisions={"XBT/USD": (1, 8)})
    asks = [("101.0", "1.00000000")]
    bids = [("100.0", "1.00000000")]
    feed.on_message(v2_snapshot(bids, asks), 1)
    twice = v2_levels([("102.0", "1.00000000"), ("102.0", "2.00000000")])
    with pytest.raises(ValueParseError, match="given twice"):
        feed.on_message(v2_message("snapshot", "XBT/USD", v2_levels(bids), twice, 1), 2)
    book = feed.books["XBT/USD"]
    book._check()
    assert not feed.in_sync["XBT/USD"]
    assert list(book.asks()) == [(book.scale.price("101"), book.scale.size("1"))]


def test_precision_beyond_18_decimals_is_malformed_not_a_hang() -> None:
    # An instrument message with price_precision 10**9 made set_decimals compute 10**999999988
    # (the feed hung); decimals guessed from a text with 5000 trailing zeros made the checksum
    # str() an int of over 4300 digits, a bare ValueError.
    feed = KrakenBookFeed()
    instrument = {
        "channel": "instrument",
        "type": "snapshot",
        "data": {"pairs": [{"symbol": "ETH/USD", "price_precision": 10**9, "qty_precision": 8}]},
    }
    with pytest.raises(msgspec.ValidationError, match="price_precision"):
        feed.on_message(json.dumps(instrument).encode(), 1)
    assert feed.precisions == {}
    zeros = "1." + "0" * 5000
    with pytest.raises(ValueParseError, match="5000/8 decimals"):
        feed.on_message(
            v2_message("snapshot", "ETH/USD", v2_levels([(zeros, "1.00000000")]), "[]", 1), 2
        )
    assert not feed.in_sync["ETH/USD"]
    # After an empty snapshot the decimals are guessed from the first update's texts.
    feed.on_message(v2_message("snapshot", "ETH/USD", "[]", "[]", 0), 3)
    with pytest.raises(ValueParseError, match="5000/8 decimals"):
        feed.on_message(
            v2_message("update", "ETH/USD", v2_levels([(zeros, "1.00000000")]), "[]", 1), 4
        )
    book = feed.books["ETH/USD"]
    assert feed.in_sync["ETH/USD"]
    assert len(book) == 0
    update = v2_levels([("2.50", "1.00000000")])
    checksum = reference_checksum([], [("2.50", "1.00000000")])
    feed.on_message(v2_message("update", "ETH/USD", update, "[]", checksum), 5)
    assert feed.stats.checksums_ok == 2  # the empty snapshot's (0) and this update's


@pytest.mark.parametrize(
    ("level", "match"),
    [
        (["1.10000"], "has no price and"),
        (["1.10000", "3.00000000", "1618A78107.100000"], "timestamp"),
        (["1.10000", "3.00000000", "1618678124.x"], "timestamp"),
        (["1.10000", "3.00000000", "9" * 5000], "timestamp"),
    ],
)
def test_v1_level_of_a_bad_shape_or_time_is_malformed_and_changes_nothing(
    level: list[str], match: str
) -> None:
    # A one-element level raised IndexError, a timestamp that is not digits a bare ValueError
    # from int(): neither is a malformed message to the connection, which stopped the feed.
    # Such an update is lost (the checksum covers the top 10 levels only): the pair resyncs.
    asks = [["1.00000", "1.00000000"], ["1.10000", "2.00000000"]]
    bids = [["0.90000", "1.00000000"]]
    feed = KrakenBookFeed()
    feed.on_message(v1_snapshot("XBT/EUR", asks, bids, 10), 1)
    with pytest.raises(LostUpdate, match=match):
        feed.on_message(v1_update("XBT/EUR", 10, {"a": [level], "c": "1"}), 2)
    assert not feed.in_sync["XBT/EUR"]
    assert (feed.stats.gaps, feed.stats.resyncs) == (1, 1)
    assert len(feed.books["XBT/EUR"]) == 3
    feed.on_message(v1_snapshot("XBT/EUR", asks, bids, 10), 3)
    assert feed.in_sync["XBT/EUR"]
    # The same levels in a snapshot: refused, the pair waits for a good one.
    with pytest.raises(ValueParseError, match=match):
        feed.on_message(
            json.dumps([42, {"as": [level], "bs": []}, "book-10", "XBT/EUR"]).encode(), 3
        )
    assert not feed.in_sync["XBT/EUR"]
    assert len(feed.books["XBT/EUR"]) == 3


def test_v1_channel_depth_must_be_ascii_digits() -> None:
    # "book-²" passed str.isdigit() and int() then raised a bare ValueError.
    # A snapshot of the pair all the same: lost, so the pair resyncs.
    feed = KrakenBookFeed()
    with pytest.raises(MalformedSnapshot, match="no depth"):
        feed.on_message(v1_snapshot("XBT/EUR", [], [], 10).replace(b"book-10", b"book-\\u00b2"), 1)
    assert feed.in_sync["XBT/EUR"] is False


def test_v2_level_with_invalid_utf8_is_malformed() -> None:
    # msgspec keeps a Raw value's bytes unchecked: decoding them raised UnicodeDecodeError.
    feed = KrakenBookFeed(precisions={"XBT/USD": (1, 8)})
    bad = v2_message("snapshot", "XBT/USD", v2_levels([('"1.5\\xff"', "1.0")]), "[]", 0)
    with pytest.raises(ValueParseError, match="not a number"):
        feed.on_message(bad.replace(b"\\xff", b"\xff"), 1)
    assert not feed.in_sync["XBT/USD"]


def test_v2_malformed_entry_changes_no_book_even_after_a_good_entry() -> None:
    # Entries of ``data`` were parsed and applied one by one: a bad level in the second left
    # the first applied while the message raised (the next checksum then failed).
    feed = KrakenBookFeed(precisions={"XBT/USD": (1, 8)})
    asks = [("101.0", "1.00000000")]
    bids = [("100.0", "1.00000000")]
    feed.on_message(v2_snapshot(bids, asks), 1)
    good = v2_message("update", "XBT/USD", v2_levels([("100.0", "2.00000000")]), "[]", 0)
    bad = v2_message("update", "XBT/USD", v2_levels([("99.0", "-0.5")]), "[]", 0)
    entries = [msgspec.json.decode(m)["data"][0] for m in (good, bad)]
    message = msgspec.json.encode({"channel": "book", "type": "update", "data": entries})
    with pytest.raises(LostUpdate, match="bad level"):
        feed.on_message(message, 2)
    # Lost, not skipped: beyond the checksummed top 10 nothing would show it; the pair resyncs.
    assert not feed.in_sync["XBT/USD"]
    book = feed.books["XBT/USD"]
    assert list(book.bids()) == [(book.scale.price("100"), book.scale.size("1"))]
    feed.on_message(v2_snapshot(bids, asks), 3)
    bids = [("100.0", "2.00000000")]
    update = v2_message("update", "XBT/USD", v2_levels(bids), "[]", reference_checksum(asks, bids))
    feed.on_message(update, 4)
    assert feed.stats.checksums_ok == 3
    # An update for a pair out of sync would be dropped anyway: it is merely malformed.
    with pytest.raises(LostUpdate):
        feed.on_message(bad, 5)
    with pytest.raises(ValueParseError, match="bad level"):
        feed.on_message(bad, 6)


@pytest.mark.parametrize(
    "asks",
    [
        [["1.00000", "NaN"]],
        [["1.00000", "1.00000000"], ["1.00000", "2.00000000"]],
        [["1.0000", "1.00000000"], ["1.10000", "2.00000000"]],  # not fixed-width
    ],
)
def test_v1_malformed_snapshot_marks_out_of_sync_keeps_the_book_and_a_good_one_recovers(
    asks: list[list[str]],
) -> None:
    feed = KrakenBookFeed()
    good_asks = [["1.00000", "1.00000000"]]
    bids = [["0.90000", "1.00000000"]]
    feed.on_message(v1_snapshot("XBT/EUR", good_asks, bids, 10), 1)
    with pytest.raises(MalformedSnapshot) as info:
        feed.on_message(v1_snapshot("XBT/EUR", asks, bids, 10), 2)
    assert (info.value.venue, info.value.symbol) == ("kraken", "XBT/EUR")
    assert not feed.in_sync["XBT/EUR"]
    book = feed.books["XBT/EUR"]
    book._check()
    assert list(book.asks()) == [(book.scale.price("1"), book.scale.size("1"))]
    update = v1_update("XBT/EUR", 10, {"a": [["1.00000", "3.00000000", "1618678124.0"]]})
    assert feed.on_message(update, 3) == []
    feed.on_message(v1_snapshot("XBT/EUR", [["1.10000", "2.00000000"]], bids, 10), 4)
    assert feed.in_sync["XBT/EUR"]
    assert list(book.asks()) == [(book.scale.price("1.1"), book.scale.size("2"))]


@pytest.mark.parametrize(
    "asks",
    [
        v2_levels([("101.0", "-1.00000000")]),
        v2_levels([("101.0", "1.00000000"), ("101.0", "2.00000000")]),
        v2_levels([("1." + "0" * 40, "1.00000000")]),  # more decimals than a checksum takes
    ],
)
def test_v2_malformed_snapshot_marks_out_of_sync_keeps_the_book_and_a_good_one_recovers(
    asks: str,
) -> None:
    feed = KrakenBookFeed()
    good = [("101.0", "1.00000000")]
    bids = [("100.0", "1.00000000")]
    feed.on_message(v2_snapshot(bids, good), 1)
    with pytest.raises(MalformedSnapshot) as info:
        feed.on_message(v2_message("snapshot", "XBT/USD", v2_levels(bids), asks, 0), 2)
    assert (info.value.venue, info.value.symbol) == ("kraken", "XBT/USD")
    assert not feed.in_sync["XBT/USD"]
    book = feed.books["XBT/USD"]
    book._check()
    assert list(book.asks()) == [(book.scale.price("101"), book.scale.size("1"))]
    update = v2_message("update", "XBT/USD", "[]", v2_levels([("101.0", "3.00000000")]), 0)
    assert feed.on_message(update, 3) == []
    asks2 = [("102.0", "1.00000000")]
    feed.on_message(v2_snapshot(bids, asks2), 4)
    assert feed.in_sync["XBT/USD"]
    assert feed.stats.checksums_ok == 2


def test_v2_malformed_snapshot_entry_leaves_the_other_entries_applied() -> None:
    # A price twice in one entry is refused when applied: the entries after it were skipped.
    feed = KrakenBookFeed(precisions={"XBT/USD": (1, 8), "ETH/USD": (2, 8)})
    twice = v2_levels([("101.0", "1.00000000"), ("101.0", "2.00000000")])
    bad = v2_message("snapshot", "XBT/USD", "[]", twice, 0)
    bids = [("10.00", "1.00000000")]
    good = v2_message("snapshot", "ETH/USD", v2_levels(bids), "[]", reference_checksum([], bids))
    entries = [msgspec.json.decode(m)["data"][0] for m in (bad, good)]
    message = msgspec.json.encode({"channel": "book", "type": "snapshot", "data": entries})
    with pytest.raises(MalformedSnapshot, match="given twice"):
        feed.on_message(message, 1)
    assert feed.in_sync == {"XBT/USD": False, "ETH/USD": True}


def _two_pairs(kind: str, first: bytes, second: bytes) -> bytes:
    """One v2 book message of ``kind`` holding the entries of two one-entry messages."""
    entries = [msgspec.json.decode(m)["data"][0] for m in (first, second)]
    return msgspec.json.encode({"channel": "book", "type": kind, "data": entries})


def _two_pairs_in_sync() -> KrakenBookFeed:
    feed = KrakenBookFeed(precisions={"XBT/USD": (1, 8), "ETH/USD": (1, 8)})
    asks = [("101.0", "1.00000000")]
    bids = [("100.0", "1.00000000")]
    checksum = reference_checksum(asks, bids)
    for pair in ("XBT/USD", "ETH/USD"):
        feed.on_message(v2_message("snapshot", pair, v2_levels(bids), v2_levels(asks), checksum), 1)
    return feed


def test_v2_message_with_a_bad_entry_is_lost_for_every_pair_it_updates() -> None:
    # A bad level in one pair's entry stopped the whole message, the other pair's update with
    # it, while that pair stayed in sync: below the checksummed top 10 nothing would show it.
    feed = _two_pairs_in_sync()
    good = v2_message("update", "XBT/USD", v2_levels([("99.0", "1.00000000")]), "[]", 0)
    bad = v2_message("update", "ETH/USD", v2_levels([("99.0", "-0.5")]), "[]", 0)
    with pytest.raises(LostUpdate, match="bad level") as caught:
        feed.on_message(_two_pairs("update", good, bad), 2)
    assert (caught.value.symbol, caught.value.others) == ("XBT/USD", ("ETH/USD",))
    assert feed.in_sync == {"XBT/USD": False, "ETH/USD": False}
    assert (feed.stats.gaps, feed.stats.resyncs) == (2, 2)
    assert all(len(feed.books[pair]) == 2 for pair in ("XBT/USD", "ETH/USD"))  # unchanged


def test_v2_snapshot_message_with_a_bad_entry_resyncs_every_pair_it_brings() -> None:
    # Both pairs wait for this snapshot: the good entry is lost with the bad one (nothing is
    # applied), so both must be resubscribed, not only the one that did not parse.
    feed = KrakenBookFeed(precisions={"XBT/USD": (1, 8), "ETH/USD": (1, 8)})
    good = v2_snapshot([("100.0", "1.00000000")], [("101.0", "1.00000000")])
    bad = v2_message("snapshot", "ETH/USD", v2_levels([("99.0", "-0.5")]), "[]", 0)
    with pytest.raises(MalformedSnapshot, match="bad level") as caught:
        feed.on_message(_two_pairs("snapshot", good, bad), 1)
    assert (caught.value.symbol, caught.value.others) == ("XBT/USD", ("ETH/USD",))
    assert feed.in_sync == {"XBT/USD": False, "ETH/USD": False}
    assert feed.stats.resyncs == 2
    assert len(feed.books["XBT/USD"]) == 0


def test_v2_checksum_failure_of_one_pair_names_the_others_and_carries_the_applied() -> None:
    # The entries after a failed checksum still apply; their events were lost to the recorder
    # (the message raised), and a second failure waited for the watchdog to be resynced.
    feed = KrakenBookFeed(precisions=dict.fromkeys(("XBT/USD", "ETH/USD", "SOL/USD"), (1, 8)))
    asks = [("101.0", "1.00000000")]
    bids = [("100.0", "1.00000000")]
    checksum = reference_checksum(asks, bids)
    for pair in ("XBT/USD", "ETH/USD", "SOL/USD"):
        feed.on_message(v2_message("snapshot", pair, v2_levels(bids), v2_levels(asks), checksum), 1)
    update = v2_levels([("99.0", "1.00000000")])
    right = reference_checksum(asks, [*bids, ("99.0", "1.00000000")])
    entries = [
        msgspec.json.decode(v2_message("update", pair, update, "[]", ok))["data"][0]
        for pair, ok in (("XBT/USD", 1), ("ETH/USD", right), ("SOL/USD", 2))
    ]
    message = msgspec.json.encode({"channel": "book", "type": "update", "data": entries})
    with pytest.raises(ChecksumMismatch) as caught:
        feed.on_message(message, 2)
    assert (caught.value.symbol, caught.value.others) == ("XBT/USD", ("SOL/USD",))
    (applied,) = caught.value.applied
    assert isinstance(applied, BookDelta)
    assert applied.symbol == "ETH/USD"
    assert feed.in_sync == {"XBT/USD": False, "ETH/USD": True, "SOL/USD": False}


@pytest.mark.parametrize(
    ("message", "lost"),
    [
        # A v2 book message that does not decode, its pair readable: that pair.
        (
            b'{"channel":"book","type":"update","data":[{"symbol":"ETH/USD","checksum":"x"}]}',
            {"ETH/USD"},
        ),
        # A v1 one: [channelID, {...}, name, pair] of a wrong shape.
        (b'[42, {"a": 5}, "book-10", "XBT/USD"]', {"XBT/USD"}),
        (b'[42, "book-10", "XBT/USD"]', {"XBT/USD"}),
        # Nothing tells which pairs: every pair in sync.
        (b'{"channel":"book","type":"update","data":[{"symbol":7}]}', {"XBT/USD", "ETH/USD"}),
        (b'{"channel":"book","type":"update","data":[{"sym', {"XBT/USD", "ETH/USD"}),
        (b"\xff\xfe", {"XBT/USD", "ETH/USD"}),
        (b'[42, {"a": []}, 5, "XBT/USD"]', {"XBT/USD", "ETH/USD"}),
        # Messages of no book: merely malformed.
        (b'{"channel":"status","type":"update","data":[{"symbol":7}]}', set()),
        (b'{"channel":"instrument","type":"snapshot","data":{"pairs":[{"symbol":1}]}}', set()),
        (b'{"method":"subscribe","success":"yes"}', set()),
        (b'{"event":"heartbeat","status":5}', set()),
        (b'[42, {"a": 5}, "trade", "XBT/USD"]', set()),
    ],
)
def test_message_that_does_not_decode_is_lost_for_the_pairs_it_may_be_about(
    message: bytes, lost: set[str]
) -> None:
    # Such a message was counted as malformed and skipped, its pair in sync: an update lost
    # below the checksummed top 10 levels would never be noticed.
    feed = _two_pairs_in_sync()
    with pytest.raises((LostUpdate, msgspec.DecodeError)) as caught:
        feed.on_message(message, 2)
    out = {pair for pair, in_sync in feed.in_sync.items() if not in_sync}
    assert out == lost
    if lost:
        assert isinstance(caught.value, LostUpdate)
        assert {caught.value.symbol, *caught.value.others} == lost
    else:
        assert isinstance(caught.value, msgspec.DecodeError)
