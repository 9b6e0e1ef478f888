"""otc.pricing: the formula, the worked example of its docstring, rounding in the desk's favour."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from otc.book import ConsolidatedBook, L2Book
from otc.errors import InsufficientDepth, QuoteError
from otc.model import Scale, Side, parse_fee_bps
from otc.pricing import (
    BookState,
    PriceExplanation,
    RiskPremium,
    hedge_all_in,
    inventory_skew_bps,
    lots_down,
    price_from_estimate,
    risk_premium,
    round_to_tick,
    size_premium_bps,
    volatility_premium_bps,
)
from otc.slippage import ImpactModel, VenueFill, estimate

SCALE = Scale(8, 8)
TICK = Decimal("0.01")
D = Decimal


def levels(rows: list[tuple[str, str]]) -> list[tuple[int, int]]:
    return [(SCALE.price(p), SCALE.size(q)) for p, q in rows]


def worked_example_book() -> ConsolidatedBook:
    """The two venues of the module docstring's worked example."""
    book = ConsolidatedBook("BTC-USDT", SCALE)
    for venue, fee, seq, bids, asks in (
        ("alpha", "10", 1, [("63990", "2")], [("64010", "1"), ("64030", "4")]),
        ("beta", "2.5", 7, [("63980", "3")], [("64020", "2"), ("64060", "5")]),
    ):
        l2 = L2Book(venue, "BTC-USDT", SCALE)
        l2.apply_snapshot(levels(bids), levels(asks), sequence=seq)
        book.add_venue(l2, parse_fee_bps(fee))
    return book


def example_terms() -> tuple[RiskPremium, Decimal]:
    risk = risk_premium(
        volatility_coefficient=D(1),
        daily_volatility_bps=D(300),
        hedge_latency_ms=240,
        size_premium_bps_per_million_notional=D(1),
        notional=D("2.5") * D(64000),
    )
    skew = inventory_skew_bps(D(10), D(50), D(5))
    return risk, skew


def price_example(side: Side) -> PriceExplanation:
    view = worked_example_book().view()
    risk, skew = example_terms()
    books = {"alpha": BookState(1, 0), "beta": BookState(7, 0)}
    est = estimate(view, side, qty=D("2.5"))
    return price_from_estimate(
        est, spread_bps=D(2), risk=risk, skew_bps=skew, tick_size=TICK, books=books
    )


def test_the_docstring_worked_example_terms() -> None:
    risk, skew = example_terms()
    assert risk.volatility_bps == D("0.5")  # 300 x sqrt(240 / 86_400_000) = 300 / 600
    assert risk.size_bps == D("0.16")  # 1 bps per million x 160,000
    assert risk.total_bps == D("0.66")
    assert skew == D(-1)  # long 10 of 50, 5 bps at the limit


def test_the_docstring_worked_example_ask() -> None:
    ask = price_example(Side.BUY)
    assert ask.side == "buy"
    assert ask.mid == D(64000)
    assert ask.hedge_vwap == D(64018)
    assert ask.hedge_all_in == D("64043.606")
    assert ask.route == {
        "alpha": VenueFill(D("0.5"), D(32005)),
        "beta": VenueFill(D(2), D(128040)),
    }
    assert (ask.spread_bps, ask.risk_bps, ask.skew_bps) == (D(2), D("0.66"), D(-1))
    assert ask.price_raw == D("64054.237238596")
    assert ask.price == D("64054.24")
    assert ask.books == {"alpha": BookState(1, 0), "beta": BookState(7, 0)}


def test_the_docstring_worked_example_bid() -> None:
    bid = price_example(Side.SELL)
    assert bid.hedge_vwap == D(63980)
    assert bid.hedge_all_in == D("63964.005")
    assert bid.route == {"beta": VenueFill(D("2.5"), D(159950))}
    assert bid.price_raw == D("63940.59417417")
    assert bid.price == D("63940.59")


def test_the_docstring_quotes_the_numbers_the_code_computes() -> None:
    import otc.pricing

    doc = otc.pricing.__doc__ or ""
    for text in ("64043.606", "64054.237238596", "**64054.24**", "63940.59417417", "**63940.59**"):
        assert text in doc


def test_long_inventory_lowers_both_prices_and_short_raises_them() -> None:
    view = worked_example_book().view()
    risk = RiskPremium(D(0), D(0))
    prices = {}
    for position in (D(-25), D(0), D(25)):
        skew = inventory_skew_bps(position, D(50), D(5))
        prices[position] = tuple(
            price_from_estimate(
                estimate(view, side, qty=D(1)),
                spread_bps=D(2),
                risk=risk,
                skew_bps=skew,
                tick_size=TICK,
                books={},
            ).price
            for side in (Side.SELL, Side.BUY)
        )
    short, flat, long = prices[D(-25)], prices[D(0)], prices[D(25)]
    assert long[0] < flat[0] < short[0]  # bids
    assert long[1] < flat[1] < short[1]  # asks


@pytest.mark.parametrize(
    ("position", "limit", "expected"),
    [
        (D(0), D(50), D(0)),
        (D(25), D(50), D("-2.5")),
        (D(-25), D(50), D("2.5")),
        (D(80), D(50), D(-5)),  # clamped at the limit
        (D(-80), D(50), D(5)),
        (D(10), None, D(0)),  # no limit, no skew
    ],
)
def test_inventory_skew(position: Decimal, limit: Decimal | None, expected: Decimal) -> None:
    assert inventory_skew_bps(position, limit, D(5)) == expected


def test_premium_terms() -> None:
    assert volatility_premium_bps(D(1), D(300), 0) == 0
    assert volatility_premium_bps(D(2), D(300), 240) == D(1)
    # sqrt(1000 / 86_400_000) = 0.0034020690...; x 250 = 0.85051726 -> 6 places
    assert volatility_premium_bps(D(1), D(250), 1000) == D("0.850517")
    assert size_premium_bps(D("0.5"), D(3_000_000)) == D("1.5")
    assert size_premium_bps(D(0), D(3_000_000)) == 0


@pytest.mark.parametrize(
    ("price", "side", "expected"),
    [
        (D("100.001"), Side.BUY, D("100.01")),  # our ask: up
        (D("100.009"), Side.SELL, D("100.00")),  # our bid: down
        (D("100.01"), Side.BUY, D("100.01")),  # on the grid: unchanged
        (D("100.01"), Side.SELL, D("100.01")),
    ],
)
def test_round_to_tick_in_the_desks_favour(price: Decimal, side: Side, expected: Decimal) -> None:
    assert round_to_tick(price, TICK, side) == expected


def test_rounding_never_favours_the_client_seeded() -> None:
    rng = random.Random(5)
    for _ in range(2_000):
        tick = D(rng.choice(["0.01", "0.1", "0.5", "1", "0.0001"]))
        raw = D(rng.randrange(1, 10**12)).scaleb(-rng.randrange(0, 10))
        ask = round_to_tick(raw, tick, Side.BUY)
        bid = round_to_tick(raw, tick, Side.SELL)
        assert ask >= raw > ask - tick
        assert bid <= raw < bid + tick
        assert ask % tick == 0
        assert bid % tick == 0


def test_lots_down() -> None:
    assert lots_down(D("1.234567"), D("0.00001")) == D("1.23456")
    assert lots_down(D("0.000009"), D("0.00001")) == 0
    assert lots_down(D("3"), D("0.5")) == D(3)


def test_no_depth_raises_without_a_model_and_uses_it_with_one() -> None:
    view = worked_example_book().view()
    short = estimate(view, Side.BUY, qty=D(20))  # 12 visible
    with pytest.raises(InsufficientDepth):
        hedge_all_in(short)
    model = ImpactModel(daily_volatility_bps=D(300), daily_volume=D(25_000))
    extended = estimate(view, Side.BUY, qty=D(20), impact=model)
    assert extended.impact is not None
    all_in = hedge_all_in(extended)
    assert all_in == extended.impact.total_avg_price_all_in
    assert all_in > estimate(view, Side.BUY, qty=D(12)).avg_price_all_in  # type: ignore[operator]
    expl = price_from_estimate(
        extended,
        spread_bps=D(0),
        risk=RiskPremium(D(0), D(0)),
        skew_bps=D(0),
        tick_size=TICK,
        books={},
    )
    assert expl.model_qty == D(8)
    assert expl.price >= all_in


def test_terms_that_leave_no_positive_price_raise() -> None:
    view = worked_example_book().view()
    with pytest.raises(QuoteError, match="no positive sell price"):
        price_from_estimate(
            estimate(view, Side.SELL, qty=D(1)),
            spread_bps=D(10_000),
            risk=RiskPremium(D(0), D(0)),
            skew_bps=D(0),
            tick_size=TICK,
            books={},
        )
