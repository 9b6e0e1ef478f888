"""Seeded random operations on an L2Book, checked after every one against a plain dict model.

Inserts, size changes, deletes (of the best level, of any level, of missing levels), snapshots,
truncation and clears, with ``book._check()`` asserting the book's own invariants each time.
"""

from __future__ import annotations

import random

import pytest

from otc.book import L2Book
from otc.model import Scale, Side

OPS_PER_SEED = 4_000
SEEDS = range(5)  # 20,000 operations in all


class Model:
    """The obviously correct book: two dicts, sorted when read."""

    def __init__(self) -> None:
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    def set(self, sizes: dict[int, int], price: int, size: int) -> None:
        if size:
            sizes[price] = size
        else:
            sizes.pop(price, None)


def assert_same(book: L2Book, model: Model) -> None:
    book._check()
    bids = sorted(model.bids.items(), reverse=True)
    asks = sorted(model.asks.items())
    assert list(book.bids()) == bids
    assert list(book.asks()) == asks
    assert book.best_bid == (bids[0][0] if bids else None)
    assert book.best_ask == (asks[0][0] if asks else None)
    assert len(book) == len(bids) + len(asks)
    assert book.depth(Side.SELL) == len(bids)
    assert book.depth(Side.BUY) == len(asks)
    if bids and asks:
        assert book.spread == asks[0][0] - bids[0][0]
        assert book.crossed == (bids[0][0] >= asks[0][0])
    else:
        assert book.spread is None
        assert not book.crossed


def random_side(rng: random.Random, low: int, high: int) -> dict[int, int]:
    prices = rng.sample(range(low, high), rng.randint(0, min(60, high - low)))
    return {p: rng.randint(1, 1_000) for p in prices}


@pytest.mark.parametrize("seed", SEEDS)
def test_random_operations_keep_the_book_equal_to_the_model(seed: int) -> None:
    rng = random.Random(seed)
    book = L2Book("x", "BTC-USDT", Scale(2, 3))
    model = Model()
    counts: dict[str, int] = {}
    for _ in range(OPS_PER_SEED):
        bid_side = rng.random() < 0.5
        sizes = model.bids if bid_side else model.asks
        update = book.update_bid if bid_side else book.update_ask
        # Bids mostly below 1000 and asks mostly above, with some overlap: crossed books too.
        price = rng.randint(900, 1_010) if bid_side else rng.randint(990, 1_100)
        roll = rng.random()
        if roll < 0.35:
            op = "insert or change"
            size = rng.randint(1, 1_000)
        elif roll < 0.55 and sizes:
            op = "change existing"
            price = rng.choice(list(sizes))
            size = rng.randint(1, 1_000)
        elif roll < 0.70 and sizes:
            op = "delete best"
            price = max(sizes) if bid_side else min(sizes)
            size = 0
        elif roll < 0.85 and sizes:
            op = "delete any"
            price = rng.choice(list(sizes))
            size = 0
        elif roll < 0.95:
            op = "delete missing"
            while price in sizes:
                price += 1
            size = 0
        elif roll < 0.985:
            op = "snapshot"
            model.bids = random_side(rng, 900, 1_000)
            model.asks = random_side(rng, 1_000, 1_100)
            levels_bids = list(model.bids.items())
            levels_asks = list(model.asks.items())
            rng.shuffle(levels_bids)
            rng.shuffle(levels_asks)
            book.apply_snapshot(levels_bids, levels_asks, sequence=rng.randint(0, 10**6))
            counts[op] = counts.get(op, 0) + 1
            assert_same(book, model)
            continue
        elif roll < 0.995:
            op = "truncate"
            depth = rng.randint(0, 20)
            keep_bids = sorted(model.bids, reverse=True)[:depth]
            keep_asks = sorted(model.asks)[:depth]
            dropped = (
                sorted(p for p in model.bids if p not in keep_bids),
                sorted(p for p in model.asks if p not in keep_asks),
            )
            assert book.truncate(depth) == dropped
            model.bids = {p: model.bids[p] for p in keep_bids}
            model.asks = {p: model.asks[p] for p in keep_asks}
            counts[op] = counts.get(op, 0) + 1
            assert_same(book, model)
            continue
        else:
            op = "clear"
            book.clear()
            model.bids, model.asks = {}, {}
            assert book.sequence is None
            counts[op] = counts.get(op, 0) + 1
            assert_same(book, model)
            continue
        before = book.bid_version if bid_side else book.ask_version
        other = book.ask_version if bid_side else book.bid_version
        update(price, size)
        model.set(sizes, price, size)
        assert (book.bid_version if bid_side else book.ask_version) == before + 1
        assert (book.ask_version if bid_side else book.bid_version) == other
        counts[op] = counts.get(op, 0) + 1
        assert_same(book, model)
    # Every kind of operation ran, so a quiet pass means something.
    assert set(counts) == {
        "insert or change",
        "change existing",
        "delete best",
        "delete any",
        "delete missing",
        "snapshot",
        "truncate",
        "clear",
    }
