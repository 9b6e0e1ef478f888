"""Market: consolidated books from config, fed by the synthetic feed and by a venue adapter."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from feeds.base import SequenceGap
from feeds.bybit import BybitBookFeed
from feeds.sim import SimFeed, SyntheticMarket
from otc.config import load_config
from otc.market import Market
from otc.model import Side
from otc.slippage import estimate

CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"


async def no_sleep(_: float) -> None:
    return None


async def test_sim_feed_fills_every_configured_venue_and_is_deterministic() -> None:
    config = load_config(CONFIG)
    inst = config.instrument("BTC-USDT")

    async def run(seed: int) -> Market:
        market = Market(config)
        sim = SyntheticMarket("BTC-USDT", inst.scale, seed=seed)
        feed = SimFeed([sim], steps=50, clock_ns=lambda: 1_000, sleep=no_sleep)
        async for event in feed.events():
            market.apply(event)
        return market

    first, again = await run(11), await run(11)
    book = first.books["BTC-USDT"]
    view = book.view()
    assert view.excluded == []
    assert set(view.included) == {"binance", "bitget", "bybit", "coinbase", "kraken", "okx"}
    for state in book.venues.values():
        state.book._check()
        assert not state.book.crossed
    est = estimate(view, Side.BUY, qty=Decimal(25))
    assert est.qty_filled == 25
    assert est == estimate(again.books["BTC-USDT"].view(), Side.BUY, qty=Decimal(25))


def test_sim_events_rebuild_the_sims_own_books_step_after_step() -> None:
    # The events a step publishes are the whole change of the sim's books (kept sorted, its
    # touch and far end read at their ends): applied to plain dicts, they give the same books.
    inst = load_config(CONFIG).instrument("BTC-USDT")
    sim = SyntheticMarket("BTC-USDT", inst.scale, seed=5)
    books = {e.venue: (dict(e.bids), dict(e.asks)) for e in sim.snapshot_events()}
    for step in range(1, 301):
        for event in sim.step_events(step):
            bids, asks = books[event.venue]
            for side, levels in ((bids, event.bids), (asks, event.asks)):
                for price, size in levels:
                    if size:
                        side[price] = size
                    else:
                        assert side.pop(price, None) is not None, (step, event.venue, price)
        for venue in sim.venues:
            bids, asks = books[venue.name]
            assert sim.levels(venue.name) == (
                sorted(bids.items(), reverse=True),
                sorted(asks.items()),
            )
            # Refilled to its depth each step; a burst (at most 30 changes) adds or takes some.
            assert all(abs(len(side) - venue.levels) <= 30 for side in (bids, asks))
            assert max(bids) < min(asks)


def test_unconfigured_venues_start_out_of_sync_and_stay_excluded() -> None:
    market = Market(load_config(CONFIG))
    view = market.books["BTC-USD"].view()
    assert {e.venue for e in view.excluded} == {"coinbase", "kraken"}
    assert {e.reason for e in view.excluded} == {"out_of_sync"}


def bybit_message(kind: str, u: int, bids: list[list[str]], asks: list[list[str]]) -> bytes:
    return msgspec.json.encode(
        {
            "topic": "orderbook.200.BTCUSDT",
            "type": kind,
            "ts": 1,
            "data": {"s": "BTCUSDT", "b": bids, "a": asks, "u": u},
        }
    )


def test_bound_adapter_writes_our_books_and_its_gaps_exclude_the_venue() -> None:
    market = Market(load_config(CONFIG))
    feed = BybitBookFeed(symbols=market.venue_symbols("bybit"))
    market.bind(feed)
    feed.on_message(bybit_message("snapshot", 5, [["64000", "1"]], [["64001", "2"]]), 1)
    consolidated = market.books["BTC-USDT"]
    assert feed.books["BTC-USDT"] is consolidated.venues["bybit"].book
    assert "bybit" in consolidated.view().included
    with pytest.raises(SequenceGap):
        feed.on_message(bybit_message("delta", 7, [["64000", "3"]], []), 2)
    excluded = {e.venue: e for e in consolidated.view().excluded}
    assert excluded["bybit"].reason == "out_of_sync"
    assert "gap" in excluded["bybit"].detail
    feed.on_message(bybit_message("snapshot", 8, [["64000", "3"]], [["64001", "2"]]), 3)
    assert "bybit" in consolidated.view().included
