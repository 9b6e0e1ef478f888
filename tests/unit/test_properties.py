"""estimate() and max_qty_within() against a plain reference walk in exact fractions; the quote
path's price_walk() against price_from_estimate(estimate()).

The reference knows nothing of ladders, ticks or lots: it lists every level of every usable
venue in real units, sorts them by fee-adjusted price (ties: venue name) and takes them one by
one. The engine's fields must equal the reference's exact values after the documented rounding
(half-even; ``PRICE_PLACES_EXTRA`` more places than prices for averages, ``QTY_PLACES_EXTRA``
more than sizes for quantities bought by notional, ``BPS_PLACES`` for bps, and
``price_decimals + size_decimals + 8`` for fees).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from unittest import mock

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from otc.book import ConsolidatedBook, L2Book, Ladder
from otc.errors import InsufficientDepth, QuoteError
from otc.model import FEE_DENOMINATOR, Scale, Side, plain, to_decimal
from otc.pricing import (
    BookState,
    PriceExplanation,
    RiskPremium,
    price_from_estimate,
    price_walk,
    size_premium_bps,
)
from otc.slippage import (
    BPS_PLACES,
    PRICE_PLACES_EXTRA,
    QTY_PLACES_EXTRA,
    SlippageEstimate,
    Walk,
    estimate,
    max_qty_within,
)

SETTINGS = settings(max_examples=200, deadline=None)
NAMES = ["alpha", "beta", "delta", "gamma"]


# -- random markets ----------------------------------------------------------------------------


@dataclass
class VenueSpec:
    name: str
    fee: int  # units of 1e-4 bps
    bids: list[tuple[int, int]]  # (ticks, lots)
    asks: list[tuple[int, int]]

    @property
    def crossed(self) -> bool:
        return bool(self.bids and self.asks) and max(self.bids)[0] >= min(self.asks)[0]


@dataclass
class Market:
    scale: Scale
    venues: list[VenueSpec]
    chunk: int
    deltas: list[bool] = field(default_factory=list)  # per venue: built by deltas, not snapshot

    @property
    def usable(self) -> list[VenueSpec]:
        return [v for v in self.venues if not v.crossed]


fees = st.one_of(
    st.sampled_from([0, 0, 25_000, 100_000, 300_000]),  # repeated fees make ties likely
    st.integers(min_value=0, max_value=300_000),  # 0 to 30 bps with 4 decimals
)


def side_levels(
    draw: st.DrawFn, low: int, high: int, max_levels: int = 12
) -> list[tuple[int, int]]:
    prices = draw(
        st.lists(st.integers(low, high), unique=True, max_size=max_levels)  # may be empty
    )
    return [(p, draw(st.integers(1, 400))) for p in prices]


@st.composite
def markets(draw: st.DrawFn) -> Market:
    scale = Scale(draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    venues = []
    for name in names:
        center = draw(st.integers(170, 190))  # narrow ranges: equal prices across venues
        bids = side_levels(draw, center - 25, center - 1)
        asks = side_levels(draw, center, center + 25)
        if asks and draw(st.integers(0, 4)) == 0:  # now and then a crossed or locked venue
            through = min(asks)[0] + draw(st.integers(0, 3))
            bids = [(p, s) for p, s in bids if p != through] + [(through, draw(st.integers(1, 9)))]
        venues.append(VenueSpec(name, draw(fees), bids, asks))
    chunk = draw(st.sampled_from([1, 2, 3, 64]))  # small chunks exercise the lazy ladder
    deltas = [draw(st.booleans()) for _ in venues]
    return Market(scale, venues, chunk, deltas)


def build(market: Market, rng: random.Random | None = None) -> ConsolidatedBook:
    """The consolidated book of ``market``; with ``rng``, levels arrive in a shuffled order."""
    book = ConsolidatedBook("X", market.scale)
    order = list(zip(market.venues, market.deltas or [False] * len(market.venues), strict=True))
    if rng:
        rng.shuffle(order)
    for spec, by_deltas in order:
        l2 = L2Book(spec.name, "X", market.scale)
        bids, asks = list(spec.bids), list(spec.asks)
        if rng:
            rng.shuffle(bids)
            rng.shuffle(asks)
        if by_deltas:
            for price, size in bids:
                l2.update_bid(price, size)
            for price, size in asks:
                l2.update_ask(price, size)
        else:
            l2.apply_snapshot(bids, asks)
        l2._check()
        book.add_venue(l2, spec.fee)
    return book


@contextmanager
def chunked(size: int) -> Iterator[None]:
    with mock.patch.object(Ladder, "chunk", size):
        yield


# -- the reference walk ------------------------------------------------------------------------


@dataclass
class Ref:
    qty: Fraction
    notional: Fraction
    all_in: Fraction  # total paid (buy) or received (sell) after fees
    levels: int
    worst: Fraction | None
    allocation: dict[str, tuple[Fraction, Fraction]]


def ref_levels(market: Market, side: Side) -> list[tuple[Fraction, str, Fraction, Fraction]]:
    """(fee-adjusted price, venue, price, size) of every usable level, best first."""
    pd, sd = market.scale.price_decimals, market.scale.size_decimals
    rows = []
    for v in market.usable:
        fee = Fraction(v.fee, FEE_DENOMINATOR)
        factor = 1 + fee if side is Side.BUY else 1 - fee
        for ticks, lots in v.asks if side is Side.BUY else v.bids:
            price = Fraction(ticks, 10**pd)
            rows.append((price * factor, v.name, price, Fraction(lots, 10**sd)))
    if side is Side.BUY:
        rows.sort(key=lambda r: (r[0], r[1]))
    else:
        rows.sort(key=lambda r: (-r[0], r[1]))
    return rows


def ref_walk(
    market: Market, side: Side, *, qty: Fraction | None = None, notional: Fraction | None = None
) -> Ref:
    remaining = qty if qty is not None else notional
    assert remaining is not None
    out = Ref(Fraction(0), Fraction(0), Fraction(0), 0, None, {})
    for adjusted, venue, price, size in ref_levels(market, side):
        if remaining <= 0:
            break
        if qty is not None:
            take = min(size, remaining)
            remaining -= take
        else:
            take = min(size, remaining / price)
            remaining -= take * price
        out.qty += take
        out.notional += take * price
        out.all_in += take * adjusted
        out.levels += 1
        if out.worst is None or (price > out.worst if side is Side.BUY else price < out.worst):
            out.worst = price
        q, n = out.allocation.get(venue, (Fraction(0), Fraction(0)))
        out.allocation[venue] = (q + take, n + take * price)
    return out


def ref_touch_mid(market: Market, side: Side) -> tuple[Fraction | None, Fraction | None]:
    pd = market.scale.price_decimals
    bids = [p for v in market.usable for p, _ in v.bids]
    asks = [p for v in market.usable for p, _ in v.asks]
    best_bid = Fraction(max(bids), 10**pd) if bids else None
    best_ask = Fraction(min(asks), 10**pd) if asks else None
    touch = best_ask if side is Side.BUY else best_bid
    mid = None if best_bid is None or best_ask is None else (best_bid + best_ask) / 2
    return touch, mid


def slippage_vs(price: Fraction, reference: Fraction, side: Side) -> Fraction:
    """Exact bps of ``price`` against ``reference``, positive when worse for the taker."""
    ratio = price / reference
    return (ratio - 1 if side is Side.BUY else 1 - ratio) * 10_000


def rounded(value: Fraction, places: int) -> Fraction:
    return round(value, places)  # Fraction rounds half to even


def frac(value: Decimal | None) -> Fraction | None:
    return None if value is None else Fraction(value)


def check_estimate(
    market: Market,
    est: SlippageEstimate,
    side: Side,
    *,
    qty: Fraction | None = None,
    notional: Fraction | None = None,
) -> Ref:
    pd, sd = market.scale.price_decimals, market.scale.size_decimals
    ref = ref_walk(market, side, qty=qty, notional=notional)
    touch, mid = ref_touch_mid(market, side)

    # Crossed venues are left out, and said so.
    crossed = sorted(v.name for v in market.venues if v.crossed)
    assert [e.venue for e in est.excluded] == crossed
    assert all(e.reason == "crossed" for e in est.excluded)
    assert not set(est.allocation) & set(crossed)

    if qty is not None:
        assert Fraction(est.qty_filled) == ref.qty
        assert frac(est.shortfall_qty) == qty - ref.qty
        assert est.shortfall_notional is None
    else:
        assert notional is not None
        assert Fraction(est.qty_filled) == rounded(ref.qty, sd + QTY_PLACES_EXTRA)
        assert frac(est.shortfall_notional) == notional - ref.notional
        assert est.shortfall_qty is None
    assert Fraction(est.notional_filled) == ref.notional
    fees = ref.all_in - ref.notional if side is Side.BUY else ref.notional - ref.all_in
    assert Fraction(est.fees) == rounded(fees, pd + sd + 8)
    assert est.levels == ref.levels
    assert frac(est.touch) == touch
    assert frac(est.mid) == mid

    if ref.qty:
        vwap, all_in = ref.notional / ref.qty, ref.all_in / ref.qty
        assert frac(est.vwap) == rounded(vwap, pd + PRICE_PLACES_EXTRA)
        assert frac(est.avg_price_all_in) == rounded(all_in, pd + PRICE_PLACES_EXTRA)
        assert frac(est.worst_price) == ref.worst
        expected_mid = None if mid is None else rounded(slippage_vs(all_in, mid, side), BPS_PLACES)
        assert frac(est.slippage_bps_mid) == expected_mid
        assert touch is not None
        assert frac(est.slippage_bps_touch) == rounded(slippage_vs(vwap, touch, side), BPS_PLACES)
    else:  # nothing to take: no price at all, never a sentinel
        assert est.vwap is None
        assert est.avg_price_all_in is None
        assert est.worst_price is None
        assert est.slippage_bps_mid is None
        assert est.slippage_bps_touch is None

    assert set(est.allocation) == set(ref.allocation)
    for venue, fill in est.allocation.items():
        q, n = ref.allocation[venue]
        if qty is not None:
            assert Fraction(fill.qty) == q
        else:
            assert Fraction(fill.qty) == rounded(q, sd + QTY_PLACES_EXTRA)
        assert Fraction(fill.notional) == n
    assert est.depth_exhausted == (ref.qty < qty if qty is not None else ref.notional < notional)
    return ref


# -- properties --------------------------------------------------------------------------------


@given(market=markets(), side=st.sampled_from(Side), data=st.data())
@SETTINGS
def test_estimate_by_qty_matches_the_reference_walk(
    market: Market, side: Side, data: st.DataObject
) -> None:
    sd = market.scale.size_decimals
    depth = sum(lots for v in market.usable for _, lots in (v.asks if side is Side.BUY else v.bids))
    lots = data.draw(st.integers(1, depth + depth // 5 + 3), label="lots")  # some exhaust depth
    with chunked(market.chunk):
        view = build(market).view()
        est = estimate(view, side, qty=to_decimal(lots, sd))
    check_estimate(market, est, side, qty=Fraction(lots, 10**sd))


@given(market=markets(), side=st.sampled_from(Side), data=st.data())
@SETTINGS
def test_estimate_by_notional_matches_the_reference_walk(
    market: Market, side: Side, data: st.DataObject
) -> None:
    nd = market.scale.notional_decimals
    depth = sum(
        p * s for v in market.usable for p, s in (v.asks if side is Side.BUY else v.bids)
    )  # ticks x lots
    units = data.draw(st.integers(1, depth + depth // 5 + 3), label="notional")
    with chunked(market.chunk):
        view = build(market).view()
        est = estimate(view, side, notional=to_decimal(units, nd))
    check_estimate(market, est, side, notional=Fraction(units, 10**nd))


bps_values = st.one_of(
    st.integers(0, 3_000).map(lambda n: Decimal(n).scaleb(-1)),  # 0 to 300 bps by 0.1
    st.decimals(min_value=-5, max_value=500, places=4, allow_nan=False, allow_infinity=False),
)


@given(market=markets(), side=st.sampled_from(Side), bps=bps_values)
@SETTINGS
def test_max_qty_within_is_the_largest_qty_within_bps(
    market: Market, side: Side, bps: Decimal
) -> None:
    sd = market.scale.size_decimals
    lot = Fraction(1, 10**sd)
    _, mid = ref_touch_mid(market, side)
    assume(mid is not None)
    assert mid is not None
    with chunked(market.chunk):
        view = build(market).view()
        result = max_qty_within(view, side, bps)
    limit = Fraction(bps)
    assert Fraction(result.limit_price_all_in) == rounded(
        mid * (1 + limit / 10_000 if side is Side.BUY else 1 - limit / 10_000),
        market.scale.price_decimals + PRICE_PLACES_EXTRA,
    )
    qty = Fraction(result.qty)
    assert (qty / lot).denominator == 1  # a whole number of lots

    def slippage(q: Fraction) -> Fraction:
        ref = ref_walk(market, side, qty=q)
        assert ref.qty == q
        return slippage_vs(ref.all_in / ref.qty, mid, side)

    depth = ref_walk(market, side, qty=Fraction(10**9)).qty
    assert result.capped_by_depth == (qty == depth)
    if qty:
        assert slippage(qty) <= limit
        est = estimate(view, side, qty=result.qty)  # the estimator agrees, after rounding
        assert est.slippage_bps_mid is not None
        assert est.slippage_bps_mid <= bps.quantize(Decimal(1).scaleb(-BPS_PLACES))
        assert not est.depth_exhausted
    if not result.capped_by_depth:
        assert slippage(qty + lot) > limit


@given(market=markets(), side=st.sampled_from(Side), seed=st.integers(0, 2**32), data=st.data())
@SETTINGS
def test_results_do_not_depend_on_level_insertion_order(
    market: Market, side: Side, seed: int, data: st.DataObject
) -> None:
    sd, nd = market.scale.size_decimals, market.scale.notional_decimals
    qty = to_decimal(data.draw(st.integers(1, 3_000), label="lots"), sd)
    notional = to_decimal(data.draw(st.integers(1, 10**6), label="notional"), nd)
    bps = data.draw(bps_values, label="bps")
    results = []
    for rng in (None, random.Random(seed)):
        with chunked(market.chunk):
            view = build(market, rng).view()
            mq = max_qty_within(view, side, bps) if view.mid2 is not None else None
            results.append(
                (
                    plain(estimate(view, side, qty=qty)),
                    plain(estimate(view, side, notional=notional)),
                    plain(mq),
                )
            )
    assert results[0] == results[1]


bps_terms = st.decimals(
    min_value=-50, max_value=50, places=6, allow_nan=False, allow_infinity=False
)


@given(
    market=markets(),
    side=st.sampled_from(Side),
    data=st.data(),
    spread=st.decimals(min_value=0, max_value=100, places=3, allow_nan=False),
    volatility=bps_terms,
    per_million=st.decimals(min_value=0, max_value=20, places=4, allow_nan=False),
    skew=bps_terms,
    tick=st.sampled_from(["1", "0.1", "0.01", "0.5", "5", "0.001"]),
)
@SETTINGS
def test_price_walk_prices_exactly_as_the_estimate(
    market: Market,
    side: Side,
    data: st.DataObject,
    spread: Decimal,
    volatility: Decimal,
    per_million: Decimal,
    skew: Decimal,
    tick: str,
) -> None:
    """The quote path prices from the integer walk; the result must be the one the full
    estimate gives, field for field, wherever visible depth covers the size."""
    sd = market.scale.size_decimals
    depth = sum(lots for v in market.usable for _, lots in (v.asks if side is Side.BUY else v.bids))
    assume(depth > 0)
    lots = data.draw(st.integers(1, depth), label="lots")
    qty = to_decimal(lots, sd)
    books = {"alpha": BookState(7, 12)}
    with chunked(market.chunk):
        view = build(market).view()
        assume(view.mid2 is not None)
        walked = Walk(view, side, lots=lots)
        full = estimate(view, side, qty=qty)
        risk = RiskPremium(
            volatility,
            size_premium_bps(per_million, qty * full.mid),  # type: ignore[operator]
        )
        terms = {"spread_bps": spread, "skew_bps": skew, "tick_size": Decimal(tick)}
        try:
            expected: PriceExplanation | str = price_from_estimate(
                full, risk=risk, books=books, **terms
            )
        except QuoteError as exc:  # terms that leave no positive price
            expected = str(exc)
        try:
            got: PriceExplanation | str = price_walk(
                walked,
                view,
                side,
                qty,
                volatility_bps=volatility,
                size_premium_bps_per_million_notional=per_million,
                books=books,
                **terms,
            )
        except QuoteError as exc:
            got = str(exc)
    assert got == expected
    if isinstance(got, PriceExplanation):
        assert plain(got) == plain(expected)  # the same text in the journal, too


def test_price_walk_refuses_a_walk_that_visible_depth_does_not_cover() -> None:
    market = Market(Scale(2, 2), [VenueSpec("alpha", 0, [(100, 5)], [(101, 5)])], 64)
    view = build(market).view()
    walked = Walk(view, Side.BUY, lots=6)
    with pytest.raises(InsufficientDepth):
        price_walk(
            walked,
            view,
            Side.BUY,
            Decimal("0.06"),
            spread_bps=Decimal(1),
            volatility_bps=Decimal(0),
            size_premium_bps_per_million_notional=Decimal(0),
            skew_bps=Decimal(0),
            tick_size=Decimal("0.01"),
            books={},
        )
