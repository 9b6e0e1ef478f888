"""The lazily built ladder equals an eager merge of all levels, whatever the chunk size (or
its cap per extension)."""

from __future__ import annotations

import random

import pytest

from otc.book import ConsolidatedBook, L2Book, Ladder
from otc.model import FEE_DENOMINATOR, Scale, Side

SCALE = Scale(2, 3)


def random_book(rng: random.Random, venues: int) -> ConsolidatedBook:
    book = ConsolidatedBook("X", SCALE)
    for v in range(venues):
        l2 = L2Book(f"v{v}", "X", SCALE)
        # Few distinct prices and fees make ties in adjusted price common.
        bids = {rng.randint(900, 1000): rng.randint(1, 50) for _ in range(rng.randint(0, 40))}
        asks = {rng.randint(1001, 1100): rng.randint(1, 50) for _ in range(rng.randint(0, 40))}
        l2.apply_snapshot(bids.items(), asks.items())
        book.add_venue(l2, rng.choice([0, 0, 10_000, 25_000, 100_000]))
    return book


def eager_rows(book: ConsolidatedBook, side: Side) -> list[tuple[int, str, int, int]]:
    rows = []
    for name, state in book.venues.items():
        if side is Side.BUY:
            factor = FEE_DENOMINATOR + state.fee
            rows += [(p * factor, name, p, s) for p, s in state.book.asks()]
        else:
            factor = FEE_DENOMINATOR - state.fee
            rows += [(-p * factor, name, p, s) for p, s in state.book.bids()]
    rows.sort()
    return rows


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize(
    ("chunk", "max_chunk"), [(1, None), (2, None), (7, None), (64, None), (16, 1), (16, 5)]
)
def test_lazy_ladder_matches_eager_merge(
    seed: int, chunk: int, max_chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Ladder, "chunk", chunk)
    rng = random.Random(seed)
    book = random_book(rng, rng.randint(1, 4))
    for side in Side:
        ladder = book.view().ladder(side)
        built = 0
        while not ladder.complete:  # extend step by step: every prefix must already be final
            assert ladder.extend(max_chunk) >= 0
            rows = eager_rows(book, side)[: len(ladder)]
            assert ladder.prices == [r[2] for r in rows]
            assert ladder.venues == [r[1] for r in rows]
            assert len(ladder) >= built
            built = len(ladder)
        rows = eager_rows(book, side)
        assert len(ladder) == len(rows)
        qty = 0
        notional = 0
        for k, (_, _, price, size) in enumerate(rows, start=1):
            qty += size
            notional += price * size
            assert ladder.cum_qty[k] == qty
            assert ladder.cum_notional[k] == notional
            worst = max(r[2] for r in rows[:k]) if side is Side.BUY else min(r[2] for r in rows[:k])
            assert ladder.worst[k] == worst
        for venue, index in ladder.venue_index.items():
            assert [ladder.venues[i] for i in index] == [venue] * len(index)
            assert ladder.venue_cum_qty[venue][-1] == sum(ladder.sizes[i] for i in index)


def test_extending_after_the_book_changed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Ladder, "chunk", 1)
    book = random_book(random.Random(3), 2)
    ladder = book.view().ladder(Side.BUY)
    ladder.extend()
    next(iter(book.venues.values())).book.update_ask(5000, 1)
    with pytest.raises(RuntimeError, match="changed"):
        ladder.extend()
    assert book.view().ladder(Side.BUY) is not ladder
