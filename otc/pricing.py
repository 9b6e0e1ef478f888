"""Pricing: hedge cost + spread + risk premium + inventory skew -> a price, in the desk's favour.

Pure functions, no I/O, no clock: the quoting engine hands in the
:class:`~otc.slippage.SlippageEstimate` of the hedge and the terms, and gets back a
:class:`PriceExplanation` that is journaled with the quote.

Sides are the client's. A client **buy** is filled at our **ask**: we sell to the client and
hedge by *buying* on the market, so the ask is priced from an estimate on the ``BUY`` side (the
asks of the consolidated book). A client **sell** is filled at our **bid**, hedged by *selling*
(an estimate on the ``SELL`` side, the bids).

Formula
-------
With ``A`` the hedge's all-in average price (fees included; consolidated over the healthy
venues; for a size beyond visible depth with the impact model enabled, the model's total
average), all terms in bps::

    spread  s = the client tier's spread_bps
    risk    r = volatility_coefficient x daily_volatility_bps x sqrt(hedge_latency_ms / 86_400_000)
              + size_premium_bps_per_million_notional x qty x mid / 1_000_000
    skew    k = -skew_bps_at_limit x clamp(position / limit, -1, 1)   (base asset; 0 without limit)

    ask = A_buy  x (1 + (s + r + k) / 10_000), rounded UP   to the tick
    bid = A_sell x (1 - (s + r - k) / 10_000), rounded DOWN to the tick

A long position (``position > 0``) makes ``k`` negative and lowers both bid and ask (we would
rather sell); a short one raises both. The volatility term is the move to expect while the hedge
is being done (a day is 86,400,000 ms: crypto trades around the clock); the size term grows with
the notional at mid. Terms are rounded half-even to 6 decimals of a bps (``BPS_PLACES``); the
raw price is exact; the tick rounding is always against the client, so the desk never gives
away a fraction of a tick. Quantities are rounded to the lot by the engine: a quantity request
must already be a multiple of the lot (else ``INVALID_QTY``); a notional request is quoted for
``floor_to_lot(notional / price)`` at the price of its hedge's size, cut again while ``qty x
price`` is over the notional (never more than the notional; maybe a lot or two less).

Worked example
--------------
BTC-USDT, tick 0.01. Two venues: ``alpha`` (taker fee 10 bps) and ``beta`` (2.5 bps)::

    alpha  bids 63990.00 x 2            asks 64010.00 x 1, 64030.00 x 4
    beta   bids 63980.00 x 3            asks 64020.00 x 2, 64060.00 x 5

mid = (63990 + 64010) / 2 = 64000. A gold client (spread 2 bps) asks for a two-way price in
2.5 BTC. Risk: ``volatility_coefficient = 1``, ``daily_volatility_bps = 300``,
``hedge_latency_ms = 240``, ``size_premium_bps_per_million_notional = 1``. Inventory: the desk is
long 10 BTC against a limit of 50, ``skew_bps_at_limit = 5``.

* Hedge of a client buy (we buy 2.5): asks by fee-adjusted price are beta 64020 x 1.00025 =
  64036.005, alpha 64010 x 1.001 = 64074.01, ... so 2 from beta at 64020 and 0.5 from alpha at
  64010. VWAP = (2 x 64020 + 0.5 x 64010) / 2.5 = 64018; all-in
  A_buy = (2 x 64036.005 + 0.5 x 64074.01) / 2.5 = 64043.606.
* Hedge of a client sell (we sell 2.5): bids by fee-adjusted price are beta 63980 x 0.99975 =
  63964.005, alpha 63990 x 0.999 = 63926.01, so all 2.5 from beta: VWAP 63980,
  A_sell = 63964.005.
* s = 2; r = 1 x 300 x sqrt(240 / 86_400_000) = 300 / 600 = 0.5 plus
  1 x 2.5 x 64000 / 1_000_000 = 0.16, so r = 0.66; k = -5 x 10 / 50 = -1.
* ask = 64043.606 x (1 + (2 + 0.66 - 1) / 10_000) = 64043.606 x 1.000166 = 64054.237238596
  -> rounded up: **64054.24**.
* bid = 63964.005 x (1 - (2 + 0.66 + 1) / 10_000) = 63964.005 x 0.999634 = 63940.59417417
  -> rounded down: **63940.59**.

The explanation stored with the quote holds every line of this: the hedge VWAP and all-in price,
the route per venue, ``spread_bps``, ``risk_bps`` (and its two parts), ``skew_bps``, the raw and
the final price, and the sequence id and age of each venue's book the price was read from.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal

import msgspec

from otc.book import BookView, Exclusion
from otc.errors import InsufficientDepth, QuoteError
from otc.model import BPS_DENOMINATOR, FEE_DENOMINATOR, Side, decimal_text, to_decimal
from otc.slippage import (
    BPS_PLACES,
    PRICE_PLACES_EXTRA,
    SlippageEstimate,
    VenueFill,
    Walk,
    ratio,
)

__all__ = [
    "DAY_MS",
    "BookState",
    "PriceExplanation",
    "RiskPremium",
    "hedge_all_in",
    "inventory_skew_bps",
    "lots_down",
    "price_from_estimate",
    "price_walk",
    "risk_premium",
    "round_to_tick",
    "size_premium_bps",
    "volatility_premium_bps",
]

#: Milliseconds in a (24 h) trading day: the unit of ``daily_volatility_bps``.
DAY_MS = 86_400_000
_CTX = Context(prec=60)
_BPS_QUANTUM = Decimal(1).scaleb(-BPS_PLACES)
_MILLION = Decimal(1_000_000)


class BookState(msgspec.Struct, frozen=True, gc=False):
    """A venue's book as it was when a price was read from it."""

    sequence: int | None
    age_ms: int


class RiskPremium(msgspec.Struct, frozen=True, gc=False):
    """The risk premium in bps: a volatility part and a size part."""

    volatility_bps: Decimal
    size_bps: Decimal

    @property
    def total_bps(self) -> Decimal:
        return self.volatility_bps + self.size_bps


class PriceExplanation(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """How one side of a quote was priced (journaled with the quote). See the module docstring.

    ``side`` is the client's (``"buy"`` is priced at our ask); ``hedge_vwap`` is the average raw
    price of the visible levels taken, ``hedge_all_in`` the all-in average of the whole hedge
    (fees included; with the impact model, including ``model_qty`` priced by the model beyond
    visible depth). ``route`` is the visible hedge per venue (base qty, notional before fees).
    """

    symbol: str
    side: str
    qty: Decimal
    mid: Decimal
    hedge_vwap: Decimal | None
    hedge_all_in: Decimal
    route: dict[str, VenueFill]
    model_qty: Decimal
    spread_bps: Decimal
    risk_bps: Decimal
    risk_volatility_bps: Decimal
    risk_size_bps: Decimal
    skew_bps: Decimal
    price_raw: Decimal
    price: Decimal
    books: dict[str, BookState]
    #: A tuple, not a list. Explanations wait in the journal's queue and the console's recent
    #: events by the thousand: they and their parts are untracked by the cyclic garbage
    #: collector (``gc=False``: they hold no reference cycles), and a tuple of untracked
    #: structs is untracked too, where a list would be walked by every collection.
    excluded: tuple[Exclusion, ...] = ()


def _bps(value: Decimal) -> Decimal:
    return value.quantize(_BPS_QUANTUM, rounding=ROUND_HALF_EVEN, context=_CTX).normalize(_CTX)


def volatility_premium_bps(
    volatility_coefficient: Decimal, daily_volatility_bps: Decimal, hedge_latency_ms: int
) -> Decimal:
    """``volatility_coefficient x daily_volatility_bps x sqrt(hedge_latency_ms / DAY_MS)``."""
    horizon = _CTX.divide(Decimal(hedge_latency_ms), Decimal(DAY_MS)).sqrt(_CTX)
    return _bps(_CTX.multiply(volatility_coefficient * daily_volatility_bps, horizon))


def size_premium_bps(per_million_notional_bps: Decimal, notional: Decimal) -> Decimal:
    """``per_million_notional_bps x notional / 1_000_000`` (notional: qty x mid)."""
    return _bps(_CTX.divide(_CTX.multiply(per_million_notional_bps, notional), _MILLION))


def risk_premium(
    *,
    volatility_coefficient: Decimal,
    daily_volatility_bps: Decimal,
    hedge_latency_ms: int,
    size_premium_bps_per_million_notional: Decimal,
    notional: Decimal,
) -> RiskPremium:
    """The risk premium for a hedge of ``notional`` (quote currency, qty x mid)."""
    return RiskPremium(
        volatility_premium_bps(volatility_coefficient, daily_volatility_bps, hedge_latency_ms),
        size_premium_bps(size_premium_bps_per_million_notional, notional),
    )


def inventory_skew_bps(
    position: Decimal, limit: Decimal | None, skew_bps_at_limit: Decimal
) -> Decimal:
    """How far both prices move for an inventory ``position`` (negative when long).

    ``-skew_bps_at_limit x clamp(position / limit, -1, 1)``; 0 without a limit.
    """
    if limit is None or not limit or not skew_bps_at_limit:
        return Decimal(0)
    ratio = max(Decimal(-1), min(Decimal(1), _CTX.divide(position, limit)))
    return _bps(-_CTX.multiply(skew_bps_at_limit, ratio)) + 0  # + 0: no "-0"


def round_to_tick(price: Decimal, tick: Decimal, side: Side) -> Decimal:
    """``price`` on the tick grid, in the desk's favour: our ask (``BUY``) up, our bid down."""
    rounding = ROUND_CEILING if side is Side.BUY else ROUND_FLOOR
    ticks = _CTX.divide(price, tick).to_integral_value(rounding=rounding, context=_CTX)
    return _CTX.multiply(ticks, tick)


def lots_down(qty: Decimal, lot: Decimal) -> Decimal:
    """``qty`` rounded down to a whole number of lots."""
    lots = _CTX.divide(qty, lot).to_integral_value(rounding=ROUND_FLOOR, context=_CTX)
    return _CTX.multiply(lots, lot)


def hedge_all_in(estimate: SlippageEstimate) -> Decimal:
    """The all-in average of the whole hedge: the book's, or the impact model's when it extends it.

    Raises:
        InsufficientDepth: visible depth does not cover the request and no model extends it.
        QuoteError: nothing can be taken at all (an empty side).
    """
    if estimate.impact is not None:
        return estimate.impact.total_avg_price_all_in
    if estimate.depth_exhausted:
        requested = estimate.qty_requested or estimate.notional_requested
        available = estimate.notional_filled if estimate.qty_requested is None else None
        raise InsufficientDepth(
            decimal_text(requested or Decimal(0)),
            decimal_text(available if available is not None else estimate.qty_filled),
        )
    if estimate.avg_price_all_in is None:
        raise QuoteError(f"{estimate.symbol}: no {estimate.side.value} side to hedge on")
    return estimate.avg_price_all_in


def price_from_estimate(
    estimate: SlippageEstimate,
    *,
    spread_bps: Decimal,
    risk: RiskPremium,
    skew_bps: Decimal,
    tick_size: Decimal,
    books: dict[str, BookState],
) -> PriceExplanation:
    """Price one side of a quote from the estimate of its hedge (``estimate.side`` = client side).

    Raises:
        InsufficientDepth: see :func:`hedge_all_in`.
        QuoteError: no mid, or the terms leave no positive price.
    """
    all_in = hedge_all_in(estimate)
    if estimate.mid is None:
        raise QuoteError(f"{estimate.symbol}: no mid, a side of the book is empty")
    qty = estimate.qty_requested if estimate.qty_requested is not None else estimate.qty_filled
    return _priced(
        symbol=estimate.symbol,
        side=estimate.side,
        qty=qty,
        mid=estimate.mid,
        hedge_vwap=estimate.vwap,
        all_in=all_in,
        route=estimate.allocation,
        model_qty=estimate.impact.qty if estimate.impact is not None else Decimal(0),
        spread_bps=spread_bps,
        risk=risk,
        skew_bps=skew_bps,
        tick_size=tick_size,
        books=books,
        excluded=estimate.excluded,
    )


def price_walk(
    w: Walk,
    view: BookView,
    side: Side,
    qty: Decimal,
    *,
    spread_bps: Decimal,
    volatility_bps: Decimal,
    size_premium_bps_per_million_notional: Decimal,
    skew_bps: Decimal,
    tick_size: Decimal,
    books: dict[str, BookState],
) -> PriceExplanation:
    """:func:`price_from_estimate` of ``estimate(view, side, qty=qty)``, straight from its walk.

    The quote path's version: ``w`` is the walk of ``qty`` on ``view`` (``Walk(view, side,
    lots=...)``), which visible depth covers; only the figures the price and its explanation
    need are built (the estimate's fees, worst price, slippages and shortfalls are not), with
    the very same arithmetic, so the result is identical. The risk premium's size part is
    computed here, from the walk's mid.

    Raises:
        InsufficientDepth: visible depth does not cover ``qty``.
        QuoteError: no mid, or the terms leave no positive price.
    """
    scale = view.scale
    pd, sd = scale.price_decimals, scale.size_decimals
    if w.den != 1 or w.requested_lots is None:
        raise ValueError("price_walk needs the walk of a quantity")
    if w.qty < w.requested_lots:
        raise InsufficientDepth(decimal_text(qty), decimal_text(to_decimal(w.qty, sd)))
    if w.mid2 is None:
        raise QuoteError(f"{view.symbol}: no mid, a side of the book is empty")
    places = pd + PRICE_PLACES_EXTRA
    mid = to_decimal(w.mid2 * 5, pd + 1)
    route = {
        venue: VenueFill(to_decimal(vq, sd), to_decimal(vn, pd + sd))
        for venue, (vq, vn) in sorted(w.allocation().items())
    }
    risk = RiskPremium(
        volatility_bps,
        size_premium_bps(size_premium_bps_per_million_notional, _CTX.multiply(qty, mid)),
    )
    return _priced(
        symbol=view.symbol,
        side=side,
        qty=qty,
        mid=mid,
        hedge_vwap=ratio(w.notional, w.qty * 10**pd, places),
        all_in=ratio(w.all_in, w.qty * FEE_DENOMINATOR * 10**pd, places),
        route=route,
        model_qty=Decimal(0),
        spread_bps=spread_bps,
        risk=risk,
        skew_bps=skew_bps,
        tick_size=tick_size,
        books=books,
        excluded=view.excluded,
    )


def _priced(
    *,
    symbol: str,
    side: Side,
    qty: Decimal,
    mid: Decimal,
    hedge_vwap: Decimal | None,
    all_in: Decimal,
    route: dict[str, VenueFill],
    model_qty: Decimal,
    spread_bps: Decimal,
    risk: RiskPremium,
    skew_bps: Decimal,
    tick_size: Decimal,
    books: dict[str, BookState],
    excluded: list[Exclusion],
) -> PriceExplanation:
    """The price of one side from its hedge's all-in average and the terms (the formula)."""
    margin = spread_bps + risk.total_bps
    if side is Side.BUY:
        factor = 1 + _CTX.divide(margin + skew_bps, BPS_DENOMINATOR)
    else:
        factor = 1 - _CTX.divide(margin - skew_bps, BPS_DENOMINATOR)
    raw = _CTX.multiply(all_in, factor)
    price = round_to_tick(raw, tick_size, side) if raw > 0 else Decimal(0)
    if price <= 0:
        raise QuoteError(f"{symbol}: the terms leave no positive {side.value} price")
    return PriceExplanation(
        symbol=symbol,
        side=side.value,
        qty=qty,
        mid=mid.normalize(_CTX),
        hedge_vwap=hedge_vwap,
        hedge_all_in=all_in,
        route=route,
        model_qty=model_qty,
        spread_bps=spread_bps,
        risk_bps=risk.total_bps,
        risk_volatility_bps=risk.volatility_bps,
        risk_size_bps=risk.size_bps,
        skew_bps=skew_bps,
        price_raw=raw.normalize(_CTX),
        price=price,
        books=books,
        excluded=tuple(excluded),
    )
