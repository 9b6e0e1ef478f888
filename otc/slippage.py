"""The slippage estimator: what a block would cost to hedge on the visible, consolidated book.

Pure functions over a :class:`~otc.book.BookView`; no I/O, no clock, no global state.

* :func:`estimate` walks the levels a taker on ``side`` can take, in order of fee-adjusted price
  (buy: ``price x (1 + fee)``, sell: ``price x (1 - fee)``), for a base quantity or a quote
  notional (price x qty before fees), and returns a :class:`SlippageEstimate`.
* :func:`max_qty_within` answers the inverse question: the largest quantity, at the book's size
  resolution, whose all-in average price stays within ``bps`` of mid.

Definitions (all prices raw quote-currency prices unless "all-in"):

* ``vwap`` = notional / qty (before fees); ``avg_price_all_in`` = (notional + fees) / qty for a
  buy, (notional - fees) / qty for a sell;
* ``mid`` = (best bid + best ask) / 2 over the included venues; ``touch`` = best raw price on the
  side taken; ``worst_price`` = the highest raw price taken by a buy, the lowest by a sell;
* ``slippage_bps_mid`` = (all-in / mid - 1) x 1e4 for a buy, (1 - all-in / mid) x 1e4 for a
  sell; ``slippage_bps_touch`` is the same against the touch using the VWAP;
* ``levels`` counts each (venue, price) level consumed once, partial or not;
* ``shortfall_qty`` / ``shortfall_notional``: what visible depth could not cover (0 when it
  could). Never a sentinel price: an empty side gives ``vwap = None``.

Exactness: the walk runs on integers (see :mod:`otc.model`); filled quantities and notionals are
exact. Ratios that need not terminate (VWAP, averages, bps) are rounded half-even to
``PRICE_PLACES_EXTRA`` more decimals than the book's prices, quantities from a notional request
to ``QTY_PLACES_EXTRA`` more than its sizes, and bps to ``BPS_PLACES`` decimals. No lot or tick
rounding is applied: that belongs to quotes.

Complexity, for a ladder of n levels over v venues (building the ladder is O(n log n) and is
cached by the consolidated book until a used side changes): :func:`estimate` is
O(log n + v log n) (a bisection of the cumulative arrays, then one per venue for the route);
:func:`max_qty_within` is O(log n) big-integer comparisons.

Impact model
------------
Beyond visible depth, an optional square-root-law extrapolation (:class:`ImpactModel`) prices the
shortfall of a quantity request: ``impact_bps(Q) = coefficient x daily_volatility_bps x
sqrt(Q / daily_volume)``, the model all-in average for a block of ``Q`` being
``mid x (1 +/- impact_bps(Q) / 1e4)``. The shortfall ``Q - D`` (D = visible depth) is priced at
the model's marginal average ``(Q m(Q) - D m(D)) / (Q - D)``, never better than the last visible
all-in price; a sell whose shortfall that prices at zero or below (or that the model puts
10,000 bps or more below mid) is refused. The result is reported in a separate
:class:`ImpactExtrapolation`, labelled as model output, and is never folded into the book
figures.
"""

from __future__ import annotations

from bisect import bisect_left
from decimal import Context, Decimal
from typing import Literal

import msgspec

from otc.book import BookView, Exclusion, Ladder
from otc.errors import InsufficientDepth, QuoteError, ValueParseError
from otc.model import (
    BPS_DENOMINATOR,
    FEE_DENOMINATOR,
    Side,
    decimal_text,
    parse_fixed,
    to_decimal,
)

__all__ = [
    "BPS_PLACES",
    "PRICE_PLACES_EXTRA",
    "QTY_PLACES_EXTRA",
    "ImpactExtrapolation",
    "ImpactModel",
    "MaxQty",
    "SlippageEstimate",
    "VenueFill",
    "Walk",
    "estimate",
    "max_qty_within",
    "ratio",
    "walk",
]

PRICE_PLACES_EXTRA = 6
QTY_PLACES_EXTRA = 6
BPS_PLACES = 6
_CTX = Context(prec=60)


class VenueFill(msgspec.Struct, frozen=True, gc=False):
    """The part of a walk routed to one venue: base qty and quote notional before fees."""

    qty: Decimal
    notional: Decimal


class ImpactModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Square-root market impact: ``coefficient x daily_volatility_bps x sqrt(Q / daily_volume)``.

    ``daily_volume`` is in base units.
    """

    model: Literal["sqrt"] = "sqrt"
    coefficient: Decimal = Decimal(1)
    daily_volatility_bps: Decimal
    daily_volume: Decimal

    def impact_bps(self, qty: Decimal) -> Decimal:
        share = _CTX.divide(qty, self.daily_volume)
        return _CTX.multiply(self.coefficient * self.daily_volatility_bps, share.sqrt(_CTX))


class ImpactExtrapolation(msgspec.Struct, frozen=True):
    """Model output for the part of a request beyond visible depth. Not book prices."""

    model: str
    label: str
    qty: Decimal
    avg_price_all_in: Decimal
    impact_bps: Decimal
    total_avg_price_all_in: Decimal
    total_slippage_bps_mid: Decimal


class SlippageEstimate(msgspec.Struct, frozen=True):
    """The cost of walking the consolidated book for one request. See the module docstring."""

    symbol: str
    side: Side
    qty_requested: Decimal | None
    notional_requested: Decimal | None
    qty_filled: Decimal
    notional_filled: Decimal
    fees: Decimal
    vwap: Decimal | None
    avg_price_all_in: Decimal | None
    worst_price: Decimal | None
    mid: Decimal | None
    touch: Decimal | None
    slippage_bps_mid: Decimal | None
    slippage_bps_touch: Decimal | None
    levels: int
    shortfall_qty: Decimal | None
    shortfall_notional: Decimal | None
    allocation: dict[str, VenueFill]
    excluded: list[Exclusion]
    impact: ImpactExtrapolation | None = None

    @property
    def depth_exhausted(self) -> bool:
        return bool(self.shortfall_qty) or bool(self.shortfall_notional)


class MaxQty(msgspec.Struct, frozen=True):
    """Result of :func:`max_qty_within`: the qty, and whether visible depth (not bps) capped it."""

    qty: Decimal
    bps: Decimal
    limit_price_all_in: Decimal
    capped_by_depth: bool


def ratio(num: int, den: int, places: int) -> Decimal:
    """``num / den`` rounded half-even to ``places`` decimals (``den > 0``), zeros stripped."""
    q, r = divmod(num * 10**places, den)
    twice = 2 * r
    if twice > den or (twice == den and q & 1):
        q += 1
    return to_decimal(q, places).normalize(_CTX)  # exact: Decimal.scaleb would round to 28 digits


class Walk:
    """The exact result of walking a ladder, in integers; what :func:`estimate` renders.

    Totals are numerators over the common denominator ``den`` (1 for a quantity request; the
    price of the partial level for a notional request, whose last fill is ``remaining / price``
    lots): ``qty`` in lots, ``notional`` in ticks x lots, ``all_in`` in ticks x lots x
    ``FEE_DENOMINATOR`` (fees included). ``full`` levels were taken whole, then ``partial / den``
    lots of level ``full`` when ``partial`` is non-zero; ``levels`` counts both. Hot paths (the
    pricing of a quote) use this directly: no ``Decimal`` is built.
    """

    __slots__ = (
        "all_in",
        "den",
        "full",
        "ladder",
        "levels",
        "mid2",
        "notional",
        "partial",
        "qty",
        "requested_lots",
        "requested_notional",
        "touch",
    )

    def __init__(
        self,
        view: BookView,
        side: Side,
        *,
        lots: int | None = None,
        notional: int | None = None,
    ) -> None:
        ladder = view.ladder(side)
        if lots is not None:
            ladder.ensure_qty(lots)
        else:
            assert notional is not None
            ladder.ensure_notional(notional)
        n = len(ladder)
        self.ladder = ladder
        self.mid2 = view.mid2
        self.touch = view.touch(side)
        self.requested_lots = lots
        self.requested_notional = notional
        den = 1
        if lots is not None:
            cum_qty = ladder.cum_qty
            if lots >= cum_qty[n]:
                j, partial = n, 0
            else:
                j = bisect_left(cum_qty, lots)
                partial = lots - cum_qty[j - 1]
        else:
            assert notional is not None
            cum_notional = ladder.cum_notional
            if notional >= cum_notional[n]:
                j, partial = n, 0
            else:
                j = bisect_left(cum_notional, notional)
                partial = notional - cum_notional[j - 1]
                den = ladder.prices[j - 1]
        self.levels = j
        self.den = den
        self.partial = partial
        if partial:
            full = j - 1
            if den == 1:
                self.qty = ladder.cum_qty[full] + partial
                self.notional = ladder.cum_notional[full] + ladder.prices[full] * partial
                self.all_in = ladder.cum_all_in[full] + ladder.adjusted[full] * partial
            else:
                self.qty = ladder.cum_qty[full] * den + partial
                self.notional = (ladder.cum_notional[full] + partial) * den
                self.all_in = ladder.cum_all_in[full] * den + ladder.adjusted[full] * partial
        else:
            full = j
            self.qty = ladder.cum_qty[j]
            self.notional = ladder.cum_notional[j]
            self.all_in = ladder.cum_all_in[j]
        self.full = full

    @property
    def worst(self) -> int | None:
        """Worst raw price taken (ticks), ``None`` when nothing was taken."""
        return self.ladder.worst[self.levels] if self.levels else None

    def allocation(self) -> dict[str, tuple[int, int]]:
        """Per venue (qty, notional) numerators over ``den``; O(venues x log n)."""
        ladder, den = self.ladder, self.den
        route = ladder.allocation(self.full)
        if den != 1:
            route = {v: (q * den, nt * den) for v, (q, nt) in route.items()}
        if self.partial:
            venue = ladder.venues[self.full]
            q, nt = route.get(venue, (0, 0))
            if den == 1:
                route[venue] = (q + self.partial, nt + ladder.prices[self.full] * self.partial)
            else:
                route[venue] = (q + self.partial, nt + self.partial * den)
        return route


def walk(
    view: BookView, side: Side, *, lots: int | None = None, notional: int | None = None
) -> Walk:
    """Walk ``view`` for ``lots`` (size units) or ``notional`` (ticks x lots), exactly one > 0.

    O(log n + venues) on a cached ladder. See :class:`Walk`.
    """
    if (lots is None) == (notional is None):
        raise ValueError("give exactly one of lots and notional")
    size = lots if lots is not None else notional
    if size is None or size <= 0:
        raise ValueError(f"the requested size must be positive, got {size}")
    return Walk(view, side, lots=lots, notional=notional)


def estimate(
    view: BookView,
    side: Side,
    *,
    qty: Decimal | None = None,
    notional: Decimal | None = None,
    impact: ImpactModel | None = None,
) -> SlippageEstimate:
    """Walk the book for ``qty`` base units or ``notional`` quote (exactly one of them).

    Raises:
        ValueError: both or neither of ``qty``/``notional``, or a non-positive, non-finite or
            too finely specified value.
        InsufficientDepth: with ``impact``, a sell the model puts 10,000 bps or more below mid,
            or whose shortfall it prices at zero or below (no positive price: beyond what it
            can price).
    """
    scale = view.scale
    pd, sd = scale.price_decimals, scale.size_decimals
    buy = side is Side.BUY
    if (qty is None) == (notional is None):
        raise ValueError("give exactly one of qty and notional")
    if qty is not None:
        lots = _positive(qty, sd, "qty")
        w = Walk(view, side, lots=lots)
    else:
        assert notional is not None
        want = _positive(notional, pd + sd, "notional")
        w = Walk(view, side, notional=want)
    ladder = w.ladder
    n = len(ladder)
    den = w.den
    qty_num, notional_num, all_in_num, levels = w.qty, w.notional, w.all_in, w.levels

    allocation: dict[str, VenueFill] = {}
    for venue, (vq, vn) in sorted(w.allocation().items()):
        if den == 1:
            allocation[venue] = VenueFill(to_decimal(vq, sd), to_decimal(vn, pd + sd))
        else:
            allocation[venue] = VenueFill(
                ratio(vq, den * 10**sd, sd + QTY_PLACES_EXTRA), to_decimal(vn // den, pd + sd)
            )

    places = pd + PRICE_PLACES_EXTRA
    mid2 = w.mid2
    touch = w.touch
    fees_num = (
        (all_in_num - notional_num * FEE_DENOMINATOR)
        if buy
        else (notional_num * FEE_DENOMINATOR - all_in_num)
    )
    # Nothing filled: nothing to average, so no price (``None``) rather than a sentinel.
    vwap: Decimal | None = None
    all_in: Decimal | None = None
    worst: Decimal | None = None
    if qty_num:
        vwap = ratio(notional_num, qty_num * 10**pd, places)
        all_in = ratio(all_in_num, qty_num * FEE_DENOMINATOR * 10**pd, places)
        worst = to_decimal(ladder.worst[levels], pd)
    slip_mid: Decimal | None = None
    slip_touch: Decimal | None = None
    if qty_num and mid2 is not None:
        base = qty_num * FEE_DENOMINATOR * mid2
        diff = 2 * all_in_num - base if buy else base - 2 * all_in_num
        slip_mid = ratio(diff * BPS_DENOMINATOR, base, BPS_PLACES)
    if qty_num and touch is not None:
        base = qty_num * touch
        diff = notional_num - base if buy else base - notional_num
        slip_touch = ratio(diff * BPS_DENOMINATOR, base, BPS_PLACES)

    if den == 1:
        qty_filled = to_decimal(qty_num, sd)
        notional_filled = to_decimal(notional_num, pd + sd)
    else:
        qty_filled = ratio(qty_num, den * 10**sd, sd + QTY_PLACES_EXTRA)
        notional_filled = to_decimal(notional_num // den, pd + sd)
    fees = ratio(fees_num, den * FEE_DENOMINATOR * 10 ** (pd + sd), pd + sd + 8)

    if qty is not None:
        shortfall_lots = max(0, lots - ladder.cum_qty[n])
        shortfall_qty: Decimal | None = to_decimal(shortfall_lots, sd)
        shortfall_notional = None
    else:
        shortfall_qty = None
        shortfall_notional = to_decimal(max(0, want - ladder.cum_notional[n]), pd + sd)

    extrapolation = None
    if impact is not None and qty is not None and shortfall_lots and mid2 is not None:
        extrapolation = _extrapolate(impact, ladder, side, lots, qty_num, all_in_num, mid2, pd, sd)

    return SlippageEstimate(
        symbol=view.symbol,
        side=side,
        qty_requested=qty,
        notional_requested=notional,
        qty_filled=qty_filled,
        notional_filled=notional_filled,
        fees=fees,
        vwap=vwap,
        avg_price_all_in=all_in,
        worst_price=worst,
        mid=None if mid2 is None else to_decimal(mid2 * 5, pd + 1),
        touch=None if touch is None else to_decimal(touch, pd),
        slippage_bps_mid=slip_mid,
        slippage_bps_touch=slip_touch,
        levels=levels,
        shortfall_qty=shortfall_qty,
        shortfall_notional=shortfall_notional,
        allocation=allocation,
        excluded=view.excluded,
        impact=extrapolation,
    )


def max_qty_within(view: BookView, side: Side, bps: Decimal) -> MaxQty:
    """The largest qty (at the book's size resolution) whose all-in average is within ``bps``.

    Within means ``slippage_bps_mid <= bps`` as :func:`estimate` defines it, computed exactly,
    including the partial last level. If the whole visible side satisfies the bound, the answer
    is the visible depth and ``capped_by_depth`` is true.

    Raises:
        QuoteError: there is no mid (a side of the included book is empty).
        ValueError: ``bps`` is not a finite number.
    """
    if not isinstance(bps, Decimal) or not bps.is_finite():
        raise ValueParseError(f"bps must be a finite decimal, got {bps!r}")
    mid2 = view.mid2
    if mid2 is None:
        raise QuoteError(f"{view.symbol}: no mid: {_no_mid(view)}")
    scale = view.scale
    ladder = view.ladder(side)
    buy = side is Side.BUY
    b_num, b_den = bps.as_integer_ratio()
    # Limit on the all-in average, as a fraction of ticks x FEE_DENOMINATOR: lim_num / lim_den.
    shift = b_den * BPS_DENOMINATOR
    lim_num = mid2 * (shift + b_num if buy else shift - b_num) * FEE_DENOMINATOR
    lim_den = 2 * shift
    cum_qty, cum_all_in = ladder.cum_qty, ladder.cum_all_in

    def within(k: int) -> bool:  # the first k levels, taken whole, stay within the bound
        lhs: int = cum_all_in[k] * lim_den
        rhs: int = lim_num * cum_qty[k]
        return lhs <= rhs if buy else lhs >= rhs

    # Build only as deep as the bound reaches: the all-in average only worsens with depth.
    while not ladder.complete and within(len(ladder)):
        ladder.extend()
    n = len(ladder)
    lo, hi = 0, n  # invariant: within(lo) (k = 0 is vacuously within), answer k in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if within(mid):
            lo = mid
        else:
            hi = mid - 1
    k = lo
    limit = ratio(
        lim_num,
        lim_den * FEE_DENOMINATOR * 10**scale.price_decimals,
        scale.price_decimals + PRICE_PLACES_EXTRA,
    )
    if k == n:
        return MaxQty(to_decimal(cum_qty[n], scale.size_decimals), bps, limit, True)
    a = ladder.adjusted[k]
    q, total = cum_qty[k], cum_all_in[k]
    if buy:
        extra = (lim_num * q - total * lim_den) // (a * lim_den - lim_num)
    else:
        extra = (total * lim_den - lim_num * q) // (lim_num - a * lim_den)
    extra = max(0, min(extra, ladder.sizes[k]))
    return MaxQty(to_decimal(q + extra, scale.size_decimals), bps, limit, False)


def _positive(value: Decimal, decimals: int, what: str) -> int:
    if not isinstance(value, Decimal):
        raise ValueParseError(f"{what} must be a Decimal, got {type(value).__name__}")
    fixed = parse_fixed(value, decimals, what=what)
    if fixed <= 0:
        raise ValueParseError(f"{what} must be positive, got {value}")
    return fixed


def _no_mid(view: BookView) -> str:
    """Why ``view`` has no mid: which side is empty, and the venues left out of it."""
    empty = " and ".join(
        side for side, best in (("bid", view.best_bid), ("ask", view.best_ask)) if best is None
    )
    why = f"no {empty} in the included book"
    if view.excluded:
        why += "; excluded: " + ", ".join(f"{e.venue} ({e.reason})" for e in view.excluded)
    return why


def _extrapolate(
    model: ImpactModel,
    ladder: Ladder,
    side: Side,
    lots: int,
    visible_lots: int,
    visible_all_in_num: int,
    mid2: int,
    pd: int,
    sd: int,
) -> ImpactExtrapolation:
    ctx = _CTX
    buy = side is Side.BUY
    sign = 1 if buy else -1
    mid = to_decimal(mid2, pd) / 2
    total_q = to_decimal(lots, sd)
    visible_q = to_decimal(visible_lots, sd)
    shortfall = total_q - visible_q

    def model_avg(q: Decimal) -> Decimal:
        return ctx.multiply(mid, 1 + sign * model.impact_bps(q) / BPS_DENOMINATOR)

    impact = model.impact_bps(total_q)
    if not buy and impact >= BPS_DENOMINATOR:
        # A sell 100 % or more below mid: the model says nothing of the price there any more.
        raise InsufficientDepth(
            f"{decimal_text(total_q)} (the impact model gives {decimal_text(impact.normalize())}"
            " bps at that size: no positive price)",
            decimal_text(visible_q),
        )
    cost_total = ctx.multiply(total_q, model_avg(total_q))
    cost_visible = ctx.multiply(visible_q, model_avg(visible_q)) if visible_lots else Decimal(0)
    marginal = ctx.divide(cost_total - cost_visible, shortfall)
    if not buy and marginal <= 0:
        # The square-root law's marginal sell falls faster than its average (mid x (1 - 1.5
        # x impact) for a small visible depth): from about 6,667 bps on, the shortfall would
        # be sold at a price of zero or less.
        raise InsufficientDepth(
            f"{decimal_text(total_q)} (the impact model prices the "
            f"{decimal_text(shortfall)} beyond visible depth at "
            f"{decimal_text(marginal.quantize(Decimal(1).scaleb(-pd), context=ctx))}: "
            "no positive price)",
            decimal_text(visible_q),
        )
    if len(ladder):
        last = to_decimal(ladder.adjusted[len(ladder) - 1], pd) / FEE_DENOMINATOR
        marginal = max(marginal, last) if buy else min(marginal, last)
    visible_all_in = ctx.divide(to_decimal(visible_all_in_num, pd + sd), FEE_DENOMINATOR)
    total_avg = ctx.divide(visible_all_in + ctx.multiply(marginal, shortfall), total_q)
    slip = (total_avg / mid - 1) if buy else (1 - total_avg / mid)
    places = Decimal(1).scaleb(-(pd + PRICE_PLACES_EXTRA))
    bps_places = Decimal(1).scaleb(-BPS_PLACES)
    return ImpactExtrapolation(
        model=model.model,
        label="model output beyond visible depth, not book prices",
        qty=shortfall,
        avg_price_all_in=marginal.quantize(places, context=ctx).normalize(ctx),
        impact_bps=model.impact_bps(total_q).quantize(bps_places, context=ctx).normalize(ctx),
        total_avg_price_all_in=total_avg.quantize(places, context=ctx).normalize(ctx),
        total_slippage_bps_mid=(slip * BPS_DENOMINATOR)
        .quantize(bps_places, context=ctx)
        .normalize(ctx),
    )
