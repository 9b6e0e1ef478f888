"""otc.snapshot: book files parse exactly, fail naming the JSON path, and round-trip."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from otc.book import ConsolidatedBook, L2Book
from otc.errors import ConfigError
from otc.model import Scale, Side
from otc.snapshot import dump_book, load_book, parse_book

DATA = Path(__file__).parents[1] / "data"

GOOD: dict[str, Any] = {
    "symbol": "BTC-USDT",
    "venues": {
        "binance": {
            "taker_fee_bps": 10,
            "bids": [["64000.1", "1.25"], ["63999", "2"]],
            "asks": [["64000.2", "0.5"], ["64001", "3"]],
        },
        "okx": {
            "taker_fee_bps": "8",
            "bids": [["64000", "1"]],
            "asks": [["64002", "5"], ["64000.5", "1"]],  # any order
            "sequence": 42,
            "ts_event_ns": 1_000,
            "ts_recv_ns": 2_000,
        },
    },
}


def edited(edit: Callable[[dict[str, Any]], object]) -> bytes:
    doc = json.loads(json.dumps(GOOD))
    edit(doc)
    return json.dumps(doc).encode()


def assert_same_book(a: ConsolidatedBook, b: ConsolidatedBook) -> None:
    assert a.symbol == b.symbol
    assert a.scale == b.scale
    assert sorted(a.venues) == sorted(b.venues)
    for name, state in a.venues.items():
        other = b.venues[name]
        assert state.fee == other.fee
        assert state.book == other.book
        assert list(state.book.bids()) == list(other.book.bids())
        assert list(state.book.asks()) == list(other.book.asks())
        assert state.book.sequence == other.book.sequence
        assert state.book.ts_event_ns == other.book.ts_event_ns
        assert state.book.ts_recv_ns == other.book.ts_recv_ns


def test_a_good_file_parses_exactly() -> None:
    book = parse_book(json.dumps(GOOD).encode())
    assert book.symbol == "BTC-USDT"
    assert book.scale == Scale(1, 2)  # the finest the file needs: 64000.1 and 1.25
    assert book.max_book_age_ms is None  # a file has no clock
    binance = book.venues["binance"]
    assert binance.fee == 100_000
    assert list(binance.book.bids()) == [(640_001, 125), (639_990, 200)]
    assert list(binance.book.asks()) == [(640_002, 50), (640_010, 300)]
    okx = book.venues["okx"]
    assert okx.fee == 80_000
    assert list(okx.book.asks()) == [(640_005, 100), (640_020, 500)]
    assert (okx.book.sequence, okx.book.ts_event_ns, okx.book.ts_recv_ns) == (42, 1_000, 2_000)
    assert binance.book.sequence is None
    view = book.view()
    assert view.excluded == []
    assert (view.best_bid, view.best_ask) == (640_001, 640_002)


def test_the_shared_test_book_loads() -> None:
    book = load_book(DATA / "book_small.json")
    assert set(book.venues) == {"binance", "okx"}
    assert book.view().touch(Side.BUY) == book.scale.price("64000.2")


@pytest.mark.parametrize(
    ("data", "path", "problem"),
    [
        (b'{"symbol": ', "$", "not valid JSON"),
        (b"[]", "$", "Expected `object`, got `array`"),
        (
            edited(lambda d: d["venues"]["okx"].pop("asks")),
            "$.venues.okx",
            "Object missing required field `asks`",
        ),
        (edited(lambda d: d.pop("symbol")), "$", "Object missing required field `symbol`"),
        (
            edited(lambda d: d["venues"]["binance"]["bids"].append(["abc", "1"])),
            "$.venues.binance.bids[2][0]",
            "price is not a number: 'abc'",
        ),
        (
            edited(lambda d: d["venues"]["okx"]["asks"].append(["64003", "x"])),
            "$.venues.okx.asks[2][1]",
            "size is not a number: 'x'",
        ),
        (
            edited(lambda d: d["venues"]["binance"]["bids"].append(["NaN", "1"])),
            "$.venues.binance.bids[2][0]",
            "price is not a number: 'NaN'",
        ),
        (
            edited(lambda d: d["venues"]["okx"]["asks"].append(["64003", "-1"])),
            "$.venues.okx.asks[2][1]",
            "size must not be negative, got '-1'",
        ),
        (
            edited(lambda d: d["venues"]["okx"]["bids"].append(["0", "1"])),
            "$.venues.okx.bids[1][0]",
            "price must be positive",
        ),
        (
            # Equal to 64000.2 once parsed: the same price, however it is written.
            edited(lambda d: d["venues"]["binance"]["asks"].append(["64000.20", "1"])),
            "$.venues.binance.asks[2][0]",
            "price 64000.20 given twice",
        ),
        (
            edited(lambda d: d["venues"]["binance"].update(fees=1)),
            "$.venues.binance.fees",
            "unknown field",
        ),
        (edited(lambda d: d.update(extra=1)), "$.extra", "unknown field"),
        (
            edited(lambda d: d["venues"]["okx"]["bids"].append(["1", "1", "1"])),
            "$.venues.okx.bids[1]",
            "Expected `array` of length 2",
        ),
        (
            edited(lambda d: d["venues"]["okx"]["bids"].append([64000, "1"])),
            "$.venues.okx.bids[1][0]",
            "Expected `str`, got `int`",
        ),
        (
            edited(lambda d: d["venues"]["okx"].update(taker_fee_bps="-1")),
            "$.venues.okx.taker_fee_bps",
            "fee must be in [0, 10000) bps",
        ),
        (
            edited(lambda d: d["venues"]["okx"].update(sequence="42")),
            "$.venues.okx.sequence",
            "Expected `int | null`, got `str`",
        ),
        (edited(lambda d: d.update(venues={})), "$.venues", "no venues"),
        (
            edited(lambda d: d["venues"]["okx"]["bids"].append(["1.0000000000000000001", "1"])),
            "$.venues",
            "more than 18 decimal places",
        ),
        (
            # Must fail at once: building this number exactly would take many seconds.
            edited(lambda d: d["venues"]["okx"]["bids"].append(["1e999990", "1"])),
            "$.venues.okx.bids[1][0]",
            "out of range",
        ),
    ],
)
def test_a_broken_file_names_the_path(data: bytes, path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_book(data, source="books/today.json")
    error = info.value
    assert error.source == "books/today.json"
    assert error.path == path
    assert problem in error.problem
    assert str(error).startswith(f"books/today.json: {path}: ")


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read") as info:
        load_book(tmp_path / "none.json")
    assert info.value.path == "$"


def test_dump_then_parse_gives_an_equal_book() -> None:
    book = parse_book(json.dumps(GOOD).encode())
    text = dump_book(book)
    again = parse_book(text)
    assert_same_book(book, again)
    assert dump_book(again) == text
    doc = json.loads(text)
    # Levels come out from the touch, as plain decimal text.
    assert doc["venues"]["okx"]["asks"] == [["64000.5", "1"], ["64002", "5"]]
    assert doc["venues"]["binance"]["bids"] == [["64000.1", "1.25"], ["63999", "2"]]
    assert doc["venues"]["binance"]["taker_fee_bps"] == "10"


@pytest.mark.parametrize("seed", range(20))
def test_random_books_round_trip(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    # Levels that use the last decimal place, so that the file needs the full scale.
    scale = Scale(rng.randint(0, 10), rng.randint(0, 10))
    book = ConsolidatedBook("ETH-USDT", scale)
    for name in rng.sample(["a", "bb", "c_1", "okx", "z9"], rng.randint(1, 5)):
        l2 = L2Book(name, "ETH-USDT", scale)
        bids = {p * 10 + 1: rng.randint(1, 10**6) * 10 + 1 for p in rng.sample(range(1, 500), 20)}
        asks = {p * 10 + 1: rng.randint(1, 10**6) * 10 + 1 for p in rng.sample(range(500, 999), 9)}
        l2.apply_snapshot(
            bids.items(),
            asks.items(),
            sequence=rng.choice([None, rng.randint(0, 10**12)]),
            ts_event_ns=rng.randint(0, 2**62),
            ts_recv_ns=rng.randint(0, 2**62),
        )
        book.add_venue(l2, rng.randint(0, 99_999_999))
    path = tmp_path / "book.json"
    path.write_bytes(dump_book(book))
    assert_same_book(book, load_book(path))
