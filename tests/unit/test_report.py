"""otc.report: the tables ``otc estimate`` and ``otc demo`` print."""

from __future__ import annotations

from decimal import Context, Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from otc.book import ConsolidatedBook, L2Book
from otc.model import Scale, Side, parse_fee_bps
from otc.report import format_estimate
from otc.slippage import estimate

SCALE = Scale(2, 3)


def one_venue_book(fee_bps: str, ask: str, size: str) -> ConsolidatedBook:
    book = ConsolidatedBook("X", SCALE)
    l2 = L2Book("alpha", "X", SCALE)
    l2.apply_snapshot([(SCALE.price("1"), SCALE.size("1"))], [(SCALE.price(ask), SCALE.size(size))])
    book.add_venue(l2, parse_fee_bps(fee_bps))
    return book


def test_money_that_rounds_up_to_one_more_digit_is_printed() -> None:
    # 1 @ 99960 with a 1 bps fee: fees 9.996, printed to the cent as 10.00 (one digit more).
    est = estimate(one_venue_book("1", "99960", "1").view(), Side.BUY, qty=Decimal(1))
    assert est.fees == Decimal("9.996")
    table = format_estimate(est, quote="USDT")
    assert "fees                10.00 USDT" in table
    assert "notional (pre-fee)  99,960.00 USDT" in table


@given(st.integers(min_value=1, max_value=10**33))
@settings(max_examples=300, deadline=None)
def test_every_money_amount_is_printed_to_the_cent(ticks: int) -> None:
    # 1 lot (0.001) at a price of ``ticks`` cents: a notional of ``ticks`` x 0.00001.
    price = str(Decimal(ticks).scaleb(-2))
    est = estimate(one_venue_book("0", price, "0.001").view(), Side.BUY, qty=Decimal("0.001"))
    expected = est.notional_filled.quantize(Decimal("0.01"), context=Context(prec=80))
    assert f"notional (pre-fee)  {expected:,}" in format_estimate(est)
