"""otc.slippage on small books whose every figure is worked out by hand in the comments.

Books are at ``Scale(2, 3)`` unless said otherwise: prices to the cent, sizes to 0.001. Averages
are rounded half-even to 2 + 6 = 8 decimals, notional-request quantities to 3 + 6 = 9, bps to 6.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from otc.book import BookView, ConsolidatedBook, Exclusion, L2Book
from otc.errors import InsufficientDepth, QuoteError, ValueParseError
from otc.model import Scale, Side, decimal_text, parse_fee_bps, plain
from otc.slippage import (
    ImpactModel,
    MaxQty,
    VenueFill,
    estimate,
    max_qty_within,
    ratio,
    walk,
)

D = Decimal
SCALE = Scale(2, 3)

Levels = list[tuple[str, str]]


def view_of(venues: dict[str, tuple[str, Levels, Levels]], scale: Scale = SCALE) -> BookView:
    """A view of ``{venue: (taker fee bps, bids, asks)}``, levels as decimal text."""
    book = ConsolidatedBook("BTC-USDT", scale)
    for name, (fee, bids, asks) in venues.items():
        l2 = L2Book(name, "BTC-USDT", scale)
        l2.apply_snapshot(
            [(scale.price(p), scale.size(s)) for p, s in bids],
            [(scale.price(p), scale.size(s)) for p, s in asks],
        )
        book.add_venue(l2, parse_fee_bps(fee))
    return book.view()


# One venue, no fee: asks 100 x 1, 101 x 2, 103 x 5; bids 99 x 1, 98 x 2. Mid = 99.5.
SIMPLE = {"a": ("0", [("99", "1"), ("98", "2")], [("100", "1"), ("101", "2"), ("103", "5")])}

# Two venues where the cheaper raw price loses to the lower fee:
#   buy:  cheap  100.00 x (1 + 30 bps) = 100.30      sell: cheap  99.00 x (1 - 30 bps) = 98.703
#         lowfee 100.20 x (1 +  5 bps) = 100.2501          lowfee 98.90 x (1 -  5 bps) = 98.85055
# so lowfee comes first on both sides. Best bid 99.00, best ask 100.00: mid = 99.5.
FEES = {
    "cheap": ("30", [("99", "1")], [("100", "1")]),
    "lowfee": ("5", [("98.9", "1")], [("100.2", "1")]),
}


# -- quantity requests -------------------------------------------------------------------------


def test_buy_qty_walks_levels_in_price_order() -> None:
    est = estimate(view_of(SIMPLE), Side.BUY, qty=D("2.5"))
    # 1 @ 100 = 100.00, then 1.5 @ 101 = 151.50: notional 251.50 for 2.5.
    assert est.qty_requested == D("2.5")
    assert est.notional_requested is None
    assert est.qty_filled == D("2.5")
    assert est.notional_filled == D("251.5")
    assert est.fees == 0
    assert est.vwap == D("100.6")  # 251.5 / 2.5
    assert est.avg_price_all_in == D("100.6")  # no fee
    assert est.mid == D("99.5")  # (99 + 100) / 2
    assert est.touch == D("100")
    assert est.worst_price == D("101")
    # (100.6 / 99.5 - 1) x 1e4 = 1.1 / 99.5 x 1e4 = 110.55276381909... -> 110.552764
    assert est.slippage_bps_mid == D("110.552764")
    # (100.6 / 100 - 1) x 1e4 = 60
    assert est.slippage_bps_touch == D("60")
    assert est.levels == 2  # the second level only partly, but it counts
    assert est.shortfall_qty == 0
    assert est.shortfall_notional is None
    assert not est.depth_exhausted
    assert est.allocation == {"a": VenueFill(D("2.5"), D("251.5"))}
    assert est.excluded == []
    assert est.impact is None


def test_sell_qty_hits_bids_from_the_top() -> None:
    est = estimate(view_of(SIMPLE), Side.SELL, qty=D("1.5"))
    # 1 @ 99 = 99.00, then 0.5 @ 98 = 49.00: notional 148 for 1.5.
    assert est.notional_filled == D("148")
    # 148 / 1.5 = 98.6666... -> 98.66666667
    assert est.vwap == D("98.66666667")
    assert est.avg_price_all_in == D("98.66666667")
    assert est.worst_price == D("98")  # a sell's worst is the lowest price
    assert est.touch == D("99")
    # (1 - 98.6666.../99.5) x 1e4 = 0.8333.../99.5 x 1e4 = 83.75209380... -> 83.752094
    assert est.slippage_bps_mid == D("83.752094")
    # (1 - 98.6666.../99) x 1e4 = 0.3333.../99 x 1e4 = 33.67003367... -> 33.670034
    assert est.slippage_bps_touch == D("33.670034")
    assert est.levels == 2


def test_a_request_ending_on_a_level_boundary_counts_only_the_levels_it_took() -> None:
    est = estimate(view_of(SIMPLE), Side.BUY, qty=D("3"))
    # 1 @ 100 + 2 @ 101 = 302: exactly two whole levels, the 103 level untouched.
    assert est.levels == 2
    assert est.notional_filled == D("302")
    assert est.worst_price == D("101")


def test_lower_fee_venue_beats_a_cheaper_raw_price_when_buying() -> None:
    est = estimate(view_of(FEES), Side.BUY, qty=D("1"))
    # All from lowfee at 100.20; fee 100.20 x 0.0005 = 0.0501; all-in 100.2501.
    assert est.allocation == {"lowfee": VenueFill(D("1"), D("100.2"))}
    assert est.vwap == D("100.2")
    assert est.fees == D("0.0501")
    assert est.avg_price_all_in == D("100.2501")
    assert est.touch == D("100")  # the touch is cheap's raw 100.00, not what was taken
    assert est.worst_price == D("100.2")
    # (100.2 / 100 - 1) x 1e4 = 20
    assert est.slippage_bps_touch == D("20")
    # (100.2501 / 99.5 - 1) x 1e4 = 0.7501 / 99.5 x 1e4 = 75.38693467... -> 75.386935
    assert est.slippage_bps_mid == D("75.386935")


def test_fee_ordering_across_venues_and_worst_price_versus_touch() -> None:
    est = estimate(view_of(FEES), Side.BUY, qty=D("1.5"))
    # 1 @ lowfee 100.20 (fee 0.0501), then 0.5 @ cheap 100.00 = 50.00 (fee 50 x 0.003 = 0.15).
    assert est.allocation == {
        "cheap": VenueFill(D("0.5"), D("50")),
        "lowfee": VenueFill(D("1"), D("100.2")),
    }
    assert list(est.allocation) == ["cheap", "lowfee"]  # sorted by venue name
    assert est.notional_filled == D("150.2")
    assert est.fees == D("0.2001")  # 0.0501 + 0.15
    # 150.2 / 1.5 = 100.1333... -> 100.13333333
    assert est.vwap == D("100.13333333")
    # (150.2 + 0.2001) / 1.5 = 150.4001 / 1.5 = 100.26673333...
    assert est.avg_price_all_in == D("100.26673333")
    # The worst raw price is lowfee's 100.20, although it was taken first.
    assert est.worst_price == D("100.2")
    assert est.touch == D("100")
    assert est.levels == 2


def test_lower_fee_venue_beats_a_higher_raw_bid_when_selling() -> None:
    est = estimate(view_of(FEES), Side.SELL, qty=D("1"))
    # All to lowfee at 98.90; fee 98.90 x 0.0005 = 0.04945; all-in 98.85055 (beats 98.703).
    assert est.allocation == {"lowfee": VenueFill(D("1"), D("98.9"))}
    assert est.fees == D("0.04945")
    assert est.avg_price_all_in == D("98.85055")
    assert est.touch == D("99")
    assert est.worst_price == D("98.9")
    # (1 - 98.9 / 99) x 1e4 = 0.1 / 99 x 1e4 = 10.1010101... -> 10.10101
    assert est.slippage_bps_touch == D("10.10101")
    # (1 - 98.85055 / 99.5) x 1e4 = 0.64945 / 99.5 x 1e4 = 65.27135678... -> 65.271357
    assert est.slippage_bps_mid == D("65.271357")


def test_levels_count_each_venue_price_level_once() -> None:
    view = view_of(
        {
            "a": ("0", [("99", "1")], [("100", "1"), ("100.5", "1")]),
            "b": ("0", [], [("100", "1"), ("100.5", "1")]),
        }
    )
    # Buy 2.5: a 100 x 1, b 100 x 1 (tie broken by venue name), then 0.5 of a 100.5.
    est = estimate(view, Side.BUY, qty=D("2.5"))
    assert est.levels == 3
    assert est.allocation == {
        "a": VenueFill(D("1.5"), D("150.25")),  # 100 + 0.5 x 100.5
        "b": VenueFill(D("1"), D("100")),
    }
    assert est.notional_filled == D("250.25")


def test_qty_beyond_visible_depth_reports_a_shortfall() -> None:
    est = estimate(view_of(SIMPLE), Side.BUY, qty=D("10"))
    # Visible: 1 @ 100 + 2 @ 101 + 5 @ 103 = 100 + 202 + 515 = 817 for 8.
    assert est.qty_filled == D("8")
    assert est.notional_filled == D("817")
    assert est.shortfall_qty == D("2")
    assert est.shortfall_notional is None
    assert est.depth_exhausted
    assert est.vwap == D("102.125")  # 817 / 8
    assert est.worst_price == D("103")
    assert est.levels == 3
    assert est.impact is None  # no model given


def test_an_empty_side_gives_no_prices_rather_than_a_sentinel() -> None:
    view = view_of({"a": ("10", [("99", "1")], [])})
    est = estimate(view, Side.BUY, qty=D("1"))
    assert est.qty_filled == 0
    assert est.notional_filled == 0
    assert est.fees == 0
    assert est.vwap is None
    assert est.avg_price_all_in is None
    assert est.worst_price is None
    assert est.touch is None
    assert est.mid is None
    assert est.slippage_bps_mid is None
    assert est.slippage_bps_touch is None
    assert est.levels == 0
    assert est.shortfall_qty == D("1")
    assert est.depth_exhausted
    assert est.allocation == {}
    doc = plain(est)
    assert isinstance(doc, dict)
    assert doc["vwap"] is None
    assert doc["avg_price_all_in"] is None


def test_excluded_venues_are_reported_and_not_used() -> None:
    venues = dict(FEES)
    venues["crossed"] = ("0", [("101", "1")], [("90", "1")])  # bid 101 over ask 90
    est = estimate(view_of(venues), Side.BUY, qty=D("1"))
    assert est.excluded == [Exclusion("crossed", "crossed", "best bid 101 >= best ask 90")]
    assert est.allocation == {"lowfee": VenueFill(D("1"), D("100.2"))}  # never the 90 ask
    assert est.touch == D("100")


# -- notional requests -------------------------------------------------------------------------

# One venue, 10 bps: asks 100 x 1, 300 x 1 (notional 100 + 300 = 400); bid 99. Mid = 99.5.
NOTIONAL = {"a": ("10", [("99", "1")], [("100", "1"), ("300", "1")])}


def test_buy_notional_ends_with_a_partial_level() -> None:
    est = estimate(view_of(NOTIONAL), Side.BUY, notional=D("200"))
    # 100 buys 1 @ 100; the other 100 buys 100 / 300 = 1/3 @ 300: qty 4/3.
    assert est.notional_requested == D("200")
    assert est.qty_requested is None
    assert est.notional_filled == D("200")
    assert est.qty_filled == D("1.333333333")  # 4/3 to 3 + 6 places
    assert est.vwap == D("150")  # 200 / (4/3), exact although the qty is not
    assert est.fees == D("0.2")  # 200 x 0.001
    assert est.avg_price_all_in == D("150.15")  # 200.2 / (4/3)
    assert est.worst_price == D("300")
    assert est.levels == 2
    # (150.15 / 99.5 - 1) x 1e4 = 50.65 / 99.5 x 1e4 = 5090.45226130... -> 5090.452261
    assert est.slippage_bps_mid == D("5090.452261")
    # (150 / 100 - 1) x 1e4 = 5000
    assert est.slippage_bps_touch == D("5000")
    assert est.shortfall_notional == 0
    assert est.shortfall_qty is None
    assert est.allocation == {"a": VenueFill(D("1.333333333"), D("200"))}


def test_notional_rounds_the_quantity_half_even() -> None:
    view = view_of({"a": ("0", [("1", "1")], [("3", "1")])})
    # 0.002 buys 0.002 / 3 = 0.000666666... units -> 0.000666667 at 9 places.
    est = estimate(view, Side.BUY, notional=D("0.002"))
    assert est.qty_filled == D("0.000666667")
    # 0.001 / 3 = 0.000333333... -> 0.000333333 (rounds down).
    assert estimate(view, Side.BUY, notional=D("0.001")).qty_filled == D("0.000333333")


def test_notional_beyond_visible_depth_reports_a_shortfall() -> None:
    est = estimate(view_of(NOTIONAL), Side.BUY, notional=D("500"))
    assert est.notional_filled == D("400")
    assert est.qty_filled == D("2")
    assert est.shortfall_notional == D("100")
    assert est.depth_exhausted
    assert est.levels == 2


def test_sell_notional() -> None:
    # Bids 100 x 1, 50 x 4 (10 bps); sell for 150: 1 @ 100, then 50 / 50 = 1 @ 50.
    view = view_of({"a": ("10", [("100", "1"), ("50", "4")], [("101", "1")])})
    est = estimate(view, Side.SELL, notional=D("150"))
    assert est.qty_filled == D("2")
    assert est.vwap == D("75")
    assert est.fees == D("0.15")  # 150 x 0.001
    assert est.avg_price_all_in == D("74.925")  # (150 - 0.15) / 2
    assert est.worst_price == D("50")


# -- exactness -----------------------------------------------------------------------------------


def test_fees_are_exact_beyond_28_significant_digits() -> None:
    scale = Scale(8, 8)
    view = view_of(
        {"a": ("2.6001", [("64000", "1")], [("64000.12345678", "5000")])},
        scale,
    )
    est = estimate(view, Side.BUY, qty=D("1000.12345679"))
    exact = (
        Fraction("64000.12345678") * Fraction("1000.12345679") * Fraction(26001, 10**8)
    )  # 2.6001 bps; about 16642 with 24 decimals: 29 significant digits
    assert exact.denominator <= 10**24
    assert Fraction(est.fees) == exact
    assert Fraction(est.notional_filled) == Fraction("64000.12345678") * Fraction("1000.12345679")


@pytest.mark.parametrize(
    ("cheap", "dear", "vwap"),
    [
        # 1.999999 @ 1 + 0.000001 @ 2 = 2.000001 for 2: vwap 1.0000005, a tie at 6 places that
        # goes to the even 1.000000 (half-up would give 1.000001).
        ("1.999999", "0.000001", "1"),
        # 1.999997 @ 1 + 0.000003 @ 2 = 2.000003 for 2: 1.0000015 goes to the even 1.000002.
        ("1.999997", "0.000003", "1.000002"),
    ],
)
def test_averages_round_half_even(cheap: str, dear: str, vwap: str) -> None:
    view = view_of({"a": ("0", [], [("1", cheap), ("2", dear)])}, Scale(0, 6))
    assert estimate(view, Side.BUY, qty=D("2")).vwap == D(vwap)


@pytest.mark.parametrize(
    ("num", "den", "places", "expected"),
    [
        (5, 10, 0, "0"),  # 0.5 -> 0
        (15, 10, 0, "2"),  # 1.5 -> 2
        (25, 10, 0, "2"),  # 2.5 -> 2
        (-5, 10, 0, "0"),  # -0.5 -> 0
        (-15, 10, 0, "-2"),  # -1.5 -> -2
        (-25, 10, 0, "-2"),
        (1, 8, 2, "0.12"),  # 0.125 -> 0.12
        (3, 8, 2, "0.38"),  # 0.375 -> 0.38
        (2, 3, 4, "0.6667"),
        (-2, 3, 4, "-0.6667"),
        (80, 1, 0, "80"),
    ],
)
def test_ratio_rounds_half_even(num: int, den: int, places: int, expected: str) -> None:
    result = ratio(num, den, places)
    assert result == D(expected)
    assert decimal_text(result) == expected


# -- the inverse question -------------------------------------------------------------------------


def test_max_qty_within_buy_ends_inside_a_level() -> None:
    view = view_of({"a": ("0", [("99", "10")], [("100", "1"), ("101", "1"), ("102", "10")])})
    result = max_qty_within(view, Side.BUY, D("100"))
    # Limit: 99.5 x (1 + 100 / 1e4) = 100.495.
    # Level 1 (avg 100) fits; levels 1-2 (avg 100.5) do not; x of level 2 fits while
    #   (100 + 101 x) / (1 + x) <= 100.495  <=>  0.505 x <= 0.495  <=>  x <= 0.98019...
    # so x = 0.980 at size resolution 0.001, and qty = 1.980.
    assert result == MaxQty(D("1.98"), D("100"), D("100.495"), False)
    # Cross-check with the estimator: 1.980 is within 100 bps, 1.981 is not.
    # 1.980: 198.98 / 1.98 = 100.49494949..., 99.99492... bps
    assert estimate(view, Side.BUY, qty=D("1.98")).slippage_bps_mid <= 100  # type: ignore[operator]
    # 1.981: 199.081 / 1.981 = 100.49520444..., 100.00205... bps
    assert estimate(view, Side.BUY, qty=D("1.981")).slippage_bps_mid > 100  # type: ignore[operator]


def test_max_qty_within_sell() -> None:
    view = view_of({"a": ("0", [("100", "1"), ("99", "5")], [("100.2", "1")])})
    result = max_qty_within(view, Side.SELL, D("50"))
    # Mid (100 + 100.2) / 2 = 100.1; limit 100.1 x (1 - 0.005) = 99.5995.
    # (100 + 99 x) / (1 + x) >= 99.5995  <=>  0.4005 >= 0.5995 x  <=>  x <= 0.66805...
    assert result == MaxQty(D("1.668"), D("50"), D("99.5995"), False)


def test_max_qty_within_counts_fees() -> None:
    # As the buy example, at 10 bps: adjusted asks 100.1, 101.101, 102.102.
    view = view_of({"a": ("10", [("99", "10")], [("100", "1"), ("101", "1"), ("102", "10")])})
    result = max_qty_within(view, Side.BUY, D("100"))
    # (100.1 + 101.101 x) / (1 + x) <= 100.495  <=>  0.606 x <= 0.395  <=>  x <= 0.65181...
    assert result.qty == D("1.651")
    assert not result.capped_by_depth


def test_max_qty_within_capped_by_depth_and_at_zero() -> None:
    view = view_of({"a": ("0", [("99", "10")], [("100", "1"), ("101", "1"), ("102", "10")])})
    assert max_qty_within(view, Side.BUY, D("10000")) == MaxQty(D("12"), D("10000"), D("199"), True)
    # 50 bps: limit 99.9975, below the best ask of 100: nothing fits.
    assert max_qty_within(view, Side.BUY, D("50")).qty == 0


def test_max_qty_within_refuses_bad_input() -> None:
    view = view_of(SIMPLE)
    for bad in (D("NaN"), D("Infinity"), 10.0):
        with pytest.raises(ValueParseError, match="finite decimal"):
            max_qty_within(view, Side.BUY, bad)  # type: ignore[arg-type]
    one_sided = view_of({"a": ("0", [], [("100", "1")])})
    with pytest.raises(QuoteError, match="no mid"):
        max_qty_within(one_sided, Side.BUY, D("10"))


# -- impact extrapolation -------------------------------------------------------------------------

# Visible: ask 100 x 1, bid 99 x 1 (mid 99.5), no fee. Model: 1 x 100 bps x sqrt(Q / 4), so
# impact(4) = 100 bps and impact(1) = 50 bps; model average m(Q) = 99.5 x (1 + impact / 1e4):
# m(4) = 100.495 and m(1) = 99.9975.
THIN = {"a": ("0", [("99", "1")], [("100", "1")])}
MODEL = ImpactModel(coefficient=D(1), daily_volatility_bps=D(100), daily_volume=D(4))


def test_impact_extrapolation_prices_the_shortfall_of_a_buy() -> None:
    est = estimate(view_of(THIN), Side.BUY, qty=D("4"), impact=MODEL)
    assert est.depth_exhausted
    assert est.qty_filled == D("1")  # the book figures stay book figures
    assert est.avg_price_all_in == D("100")
    impact = est.impact
    assert impact is not None
    assert impact.model == "sqrt"
    assert "model output" in impact.label
    assert impact.qty == D("3")
    assert impact.impact_bps == D("100")
    # Marginal: (4 x 100.495 - 1 x 99.9975) / 3 = 301.9825 / 3 = 100.66083333...
    assert impact.avg_price_all_in == D("100.66083333")
    # Total: (100 + 301.9825) / 4 = 100.495625; worse than the book's 100 for a buy.
    assert impact.total_avg_price_all_in == D("100.495625")
    assert impact.total_avg_price_all_in > est.avg_price_all_in  # type: ignore[operator]
    # (100.495625 / 99.5 - 1) x 1e4 = 0.995625 / 99.5 x 1e4 = 100.06281407... -> 100.062814
    assert impact.total_slippage_bps_mid == D("100.062814")


def test_impact_extrapolation_prices_the_shortfall_of_a_sell() -> None:
    view = view_of({"a": ("0", [("100", "1")], [("101", "1")])})
    est = estimate(view, Side.SELL, qty=D("4"), impact=MODEL)
    impact = est.impact
    assert impact is not None
    # Mid 100.5; m(4) = 100.5 x 0.99 = 99.495, m(1) = 100.5 x 0.995 = 99.9975.
    # Marginal (397.98 - 99.9975) / 3 = 99.3275; total (100 + 297.9825) / 4 = 99.495625.
    assert impact.avg_price_all_in == D("99.3275")
    assert impact.total_avg_price_all_in == D("99.495625")
    assert impact.total_avg_price_all_in < est.avg_price_all_in  # type: ignore[operator]
    # (1 - 99.495625 / 100.5) x 1e4 = 1.004375 / 100.5 x 1e4 = 99.93781094... -> 99.937811
    assert impact.total_slippage_bps_mid == D("99.937811")


def test_impact_extrapolation_refuses_a_sell_its_marginal_prices_at_or_below_zero() -> None:
    # 25,000 visible at 100 (mid 100.5); impact(25,600) = 100 x sqrt(6,400) = 8,000 bps and
    # impact(25,000) = 7,905.69 bps: the model's averages are still positive (20.1 and
    # 21.048...), but the shortfall's marginal (Q m(Q) - D m(D)) / (Q - D) =
    # (514,560 - 526,201.9...) / 600 is below zero: the estimate printed a negative price.
    deep = view_of({"a": ("0", [("100", "25000")], [("101", "1")])})
    with pytest.raises(InsufficientDepth, match="no positive price"):
        estimate(deep, Side.SELL, qty=D("25600"), impact=MODEL)
    # Past visible depth by as much at 5,000 bps (impact(10,000)): marginal positive, priced.
    shallow = view_of({"a": ("0", [("100", "9400")], [("101", "1")])})
    est = estimate(shallow, Side.SELL, qty=D("10000"), impact=MODEL)
    assert est.impact is not None
    assert est.impact.avg_price_all_in > 0


def test_impact_extrapolation_is_never_better_than_the_last_visible_price() -> None:
    gentle = ImpactModel(daily_volatility_bps=D(100), daily_volume=D(100))
    est = estimate(view_of(THIN), Side.BUY, qty=D("4"), impact=gentle)
    # m(4) = 99.5 x 1.002 = 99.699, m(1) = 99.5 x 1.001 = 99.5995: marginal 99.73216...
    # is below the visible 100, so the shortfall is priced at 100.
    assert est.impact is not None
    assert est.impact.avg_price_all_in == D("100")
    assert est.impact.total_avg_price_all_in == D("100")


def test_impact_extrapolation_only_when_asked_and_needed() -> None:
    view = view_of(THIN)
    assert estimate(view, Side.BUY, qty=D("0.5"), impact=MODEL).impact is None  # within depth
    assert estimate(view, Side.BUY, qty=D("4")).impact is None  # no model
    assert estimate(view, Side.BUY, notional=D("1000"), impact=MODEL).impact is None


# -- bad requests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "exactly one of qty and notional"),
        ({"qty": D("1"), "notional": D("100")}, ValueError, "exactly one of qty and notional"),
        ({"qty": D("0")}, ValueParseError, "qty must be positive"),
        ({"qty": D("-0")}, ValueParseError, "qty must be positive"),
        ({"qty": D("-1")}, ValueParseError, "qty must be positive"),
        ({"notional": D("0")}, ValueParseError, "notional must be positive"),
        ({"notional": D("-5")}, ValueParseError, "notional must be positive"),
        ({"qty": D("NaN")}, ValueParseError, "qty must be finite"),
        ({"qty": D("Infinity")}, ValueParseError, "qty must be finite"),
        ({"notional": D("-Infinity")}, ValueParseError, "notional must be finite"),
        ({"qty": D("0.0001")}, ValueParseError, "more than 3 decimal places"),
        ({"notional": D("1.000001")}, ValueParseError, "more than 5 decimal places"),
        ({"qty": 1.5}, ValueParseError, "qty must be a Decimal"),
        ({"notional": "100"}, ValueParseError, "notional must be a Decimal"),
    ],
)
def test_estimate_refuses_bad_requests(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        estimate(view_of(SIMPLE), Side.BUY, **kwargs)  # type: ignore[arg-type]


def test_walk_refuses_bad_requests() -> None:
    view = view_of(SIMPLE)
    with pytest.raises(ValueError, match="exactly one of lots and notional"):
        walk(view, Side.BUY)
    with pytest.raises(ValueError, match="exactly one of lots and notional"):
        walk(view, Side.BUY, lots=1, notional=1)
    with pytest.raises(ValueError, match="must be positive, got 0"):
        walk(view, Side.BUY, lots=0)
    with pytest.raises(ValueError, match="must be positive, got -3"):
        walk(view, Side.SELL, notional=-3)
    w = walk(view, Side.BUY, lots=2_500)  # the integer walk behind the first example
    assert (w.qty, w.notional, w.levels, w.worst) == (2_500, 25_150_000, 2, 10_100)
