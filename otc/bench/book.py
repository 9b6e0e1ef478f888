"""``otc bench book``: our L2 book and estimator next to their baselines, in one process.

What it measures, on one seeded delta stream generated beforehand (generation is not timed):

1. **Updates.** Throughput (updates/s) of applying the stream to a two-sided book ("apply"),
   and of applying it while reading the best bid and ask after every update ("apply + best"),
   for :class:`~otc.book.L2Book`; a bare ``sortedcontainers.SortedDict`` per side (the
   baseline: ``d[p] = s``, ``del d[p]``, best via ``peekitem``); a plain ``dict`` per side
   (apply only: unordered, an upper bound for any Python book); and bmoscon's C
   ``order_book.OrderBook`` when it is installed (``pip install 'otc[bench]'``). Its sorted
   dict is a ``dict`` plus a key tuple that it re-sorts on the first read after any write
   (``index(0)`` is its best level); it takes any ordered keys, so it is given the same
   ``int`` prices as everyone else, no float conversion.
2. **Walks.** Microseconds per :func:`~otc.slippage.estimate`, per integer
   :func:`~otc.slippage.walk` and per :func:`~otc.slippage.max_qty_within` call on a
   three-venue :class:`~otc.book.ConsolidatedBook` (different fees), for sizes consuming ~10,
   ~100 and ~1000 levels, on an unchanged book (cached ladder) and on the first call after an
   update (ladder rebuilt), next to a plain-Python walk over the already merged, fee-sorted
   levels (a baseline that is given the merge for free).
3. **Memory.** Bytes per 1,000 levels of a book built from a snapshot (``tracemalloc``; the
   price and size ``int`` objects are the input and are not counted), next to the baselines.

The stream: a book of ``levels`` levels per side around a mid (prices in ticks and sizes in
lots at the engine's default 8/8 decimals, a 0.01 tick and a 0.00001 lot), then ``deltas``
deltas: ~84 % size changes at existing levels, ~8 % inserts of new levels, ~8 % deletes, each
at a geometric distance from the touch (so the best level itself is sometimes deleted), with
inserts inside the spread when it is wider than a tick. Inserts and deletes trade places when
a side drifts more than 5 % from ``levels``, which keeps the depth stable. Every price is a
fresh ``int`` object, as a feed's parser would hand over. The same seed gives the same stream.

Method: the same lists feed every contender through the same loop; each figure is the best of
``repeats`` runs, each on a freshly built book, garbage collector off, ``perf_counter_ns``.
The loop's own cost is included in every figure and printed on its own ("loop overhead"). Each
contender's final book, and the last touch it read, are checked against a replay of the stream
on plain dicts; the walks are checked against the plain loop.
"""

from __future__ import annotations

import gc
import importlib
import os
import platform
import random
import statistics
import sys
import tracemalloc
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from importlib import metadata
from time import perf_counter_ns
from types import ModuleType
from typing import Any, TextIO

from sortedcontainers import SortedDict, SortedList

from otc.book import ConsolidatedBook, L2Book
from otc.model import Scale, Side, parse_fee_bps, to_decimal
from otc.slippage import estimate, max_qty_within, walk

__all__ = ["DeltaStream", "make_stream", "run"]

SCALE = Scale(price_decimals=8, size_decimals=8)
SYMBOL = "BTC-USDT"
#: One tick (0.01 USDT) and one lot (0.00001 BTC) in book units at ``SCALE``.
TICK = 10**6
LOT = 10**3
MID_TICKS = 6_400_000  # 64,000.00
#: Delta mix: size changes, inserts; the rest are deletes.
P_CHANGE = 0.84
P_INSERT = 0.08
#: Mean distance from the touch, in levels (changes, deletes) and in ticks (inserts).
MEAN_LEVELS = 8.0
MEAN_INSERT_TICKS = 16.0
#: Gaps between adjacent levels of a snapshot, in ticks (drawn uniformly from these).
GAPS = (1, 1, 1, 1, 2, 2, 3, 5)
#: Venues of the walk benchmark: name, taker fee (bps), offset of its mid (ticks).
VENUES = (("binance", "10", 0), ("coinbase", "6", 1), ("kraken", "2.6", -1))
WALK_LEVELS = (10, 100, 1000)
MAX_BPS = Decimal(10)
#: Goals of the project, apply + best: ours / SortedDict and ours / order_book.
GOAL_SORTEDDICT = 3.0
GOAL_ORDER_BOOK = 10.0

Touch = tuple[int | None, int | None]
Levels = list[tuple[int, int]]


# -- the delta stream ------------------------------------------------------------------------


class DeltaStream:
    """A snapshot and the deltas that follow it, as parallel lists (``size`` 0 deletes).

    ``is_bid[i]`` is the side of delta ``i``, ``prices[i]`` its price (ticks at :data:`SCALE`),
    ``sizes[i]`` its new size (lots). ``kinds`` counts changes, inserts, deletes and deletes
    of the best level; ``depth_range`` is the (min, max) depth a side reached.
    """

    __slots__ = (
        "asks",
        "bids",
        "depth_range",
        "distances",
        "final_spread_ticks",
        "is_bid",
        "kinds",
        "prices",
        "sizes",
    )

    def __init__(self, bids: Levels, asks: Levels) -> None:
        self.bids = bids
        self.asks = asks
        self.is_bid: list[bool] = []
        self.prices: list[int] = []
        self.sizes: list[int] = []
        self.kinds = {"change": 0, "insert": 0, "delete": 0, "delete_best": 0}
        self.depth_range = (len(bids), len(bids))
        self.distances: list[int] = []
        self.final_spread_ticks = 0

    def __len__(self) -> int:
        return len(self.prices)


def _rng(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311  # a seeded, reproducible market, not cryptography


def _level_lots(rng: random.Random, distance: int) -> int:
    """A level size in lots: ~0.4 BTC at the touch, growing with distance, log-normal noise."""
    lots = 40_000.0 * (1.0 + 0.02 * distance) * rng.lognormvariate(0.0, 0.8)
    return (int(lots) + 1) * LOT


def _snapshot_ticks(
    rng: random.Random, levels: int, mid: int, half_spread: int = 1
) -> tuple[list[int], list[int]]:
    """Bid and ask tick indices, best first, one to a few ticks apart around ``mid``."""
    bids, asks = [], []
    bid, ask = mid - half_spread, mid + half_spread
    for _ in range(levels):
        bids.append(bid)
        asks.append(ask)
        bid -= rng.choice(GAPS)
        ask += rng.choice(GAPS)
    return bids, asks


def make_snapshot(
    rng: random.Random, levels: int, mid: int = MID_TICKS, half_spread: int = 1
) -> tuple[Levels, Levels]:
    """A ``levels``-deep book around ``mid`` (ticks): (bids, asks) of (price, size), best first."""
    bid_ticks, ask_ticks = _snapshot_ticks(rng, levels, mid, half_spread)
    bids = [(t * TICK, _level_lots(rng, i)) for i, t in enumerate(bid_ticks)]
    asks = [(t * TICK, _level_lots(rng, i)) for i, t in enumerate(ask_ticks)]
    return bids, asks


def make_stream(*, deltas: int, levels: int, seed: int) -> DeltaStream:
    """The seeded snapshot and delta stream described in the module docstring."""
    if levels < 10:
        raise ValueError(f"levels must be at least 10, got {levels}")
    if deltas < 1:
        raise ValueError(f"deltas must be positive, got {deltas}")
    rng = _rng(seed)
    bid_list, ask_list = _snapshot_ticks(rng, levels, MID_TICKS)
    bid_size = {t: _level_lots(rng, i) for i, t in enumerate(bid_list)}
    ask_size = {t: _level_lots(rng, i) for i, t in enumerate(ask_list)}
    stream = DeltaStream(
        [(t * TICK, s) for t, s in bid_size.items()], [(t * TICK, s) for t, s in ask_size.items()]
    )
    bid_ticks: SortedList[int] = SortedList(bid_size)
    ask_ticks: SortedList[int] = SortedList(ask_size)
    low, high = max(2, levels * 95 // 100), levels * 105 // 100 + 1
    min_depth = max_depth = levels
    n_change = n_insert = n_delete = n_delete_best = 0
    is_bid_out, prices_out, sizes_out = stream.is_bid, stream.prices, stream.sizes
    distances = stream.distances
    random_, expovariate = rng.random, rng.expovariate
    level_rate, insert_rate = 1.0 / MEAN_LEVELS, 1.0 / MEAN_INSERT_TICKS
    for _ in range(deltas):
        is_bid = random_() < 0.5
        ticks, sizes = (bid_ticks, bid_size) if is_bid else (ask_ticks, ask_size)
        n = len(ticks)
        u = random_()
        insert = P_CHANGE <= u < P_CHANGE + P_INSERT
        delete = u >= P_CHANGE + P_INSERT
        if insert and n >= high:
            insert, delete = False, True
        elif delete and n <= low:
            insert, delete = True, False
        if insert:
            best_bid, best_ask = bid_ticks[-1], ask_ticks[0]
            inside = best_ask - best_bid - 1  # free ticks strictly inside the spread
            if inside > 0 and random_() < min(0.5, 0.15 * inside):
                t = best_bid + 1 + int(random_() * inside)
            elif is_bid:
                t = best_bid - 1 - int(expovariate(insert_rate))
                while t in sizes:
                    t -= 1
            else:
                t = best_ask + 1 + int(expovariate(insert_rate))
                while t in sizes:
                    t += 1
            ticks.add(t)
            distance = n - ticks.index(t) - 1 if is_bid else ticks.index(t)
            size = sizes[t] = _level_lots(rng, distance)
            n_insert += 1
            max_depth = max(max_depth, n + 1)
        else:
            distance = int(expovariate(level_rate)) % n
            t = ticks[n - 1 - distance] if is_bid else ticks[distance]
            if delete:
                size = 0
                del sizes[t]
                ticks.remove(t)
                n_delete += 1
                n_delete_best += distance == 0
                min_depth = min(min_depth, n - 1)
            else:
                size = sizes[t] = _level_lots(rng, distance)
                n_change += 1
        distances.append(distance)
        is_bid_out.append(is_bid)
        prices_out.append(t * TICK)
        sizes_out.append(size)
    stream.kinds = {
        "change": n_change,
        "insert": n_insert,
        "delete": n_delete,
        "delete_best": n_delete_best,
    }
    stream.depth_range = (min_depth, max_depth)
    stream.final_spread_ticks = ask_ticks[0] - bid_ticks[-1]
    return stream


# -- update contenders -----------------------------------------------------------------------
#
# One builder and two loops per contender. The loops are written out, not shared through a
# callback, so that each figure is the contender's own cost plus the same zip/if loop.


def _ours_build(bids: Levels, asks: Levels) -> L2Book:
    book = L2Book("bench", SYMBOL, SCALE)
    book.apply_snapshot(bids, asks)
    return book


def _ours_apply(book: L2Book, is_bid: list[bool], prices: list[int], sizes: list[int]) -> int:
    update_bid, update_ask = book.update_bid, book.update_ask
    start = perf_counter_ns()
    for bid, price, size in zip(is_bid, prices, sizes, strict=True):
        if bid:
            update_bid(price, size)
        else:
            update_ask(price, size)
    return perf_counter_ns() - start


def _ours_apply_best(
    book: L2Book, is_bid: list[bool], prices: list[int], sizes: list[int]
) -> tuple[int, Touch]:
    update_bid, update_ask = book.update_bid, book.update_ask
    best_bid = best_ask = None
    start = perf_counter_ns()
    for bid, price, size in zip(is_bid, prices, sizes, strict=True):
        if bid:
            update_bid(price, size)
        else:
            update_ask(price, size)
        best_bid = book.best_bid
        best_ask = book.best_ask
    return perf_counter_ns() - start, (best_bid, best_ask)


def _ours_state(book: L2Book) -> tuple[dict[int, int], dict[int, int], Touch]:
    return dict(book.bids()), dict(book.asks()), (book.best_bid, book.best_ask)


SortedSides = tuple["SortedDict[int, int]", "SortedDict[int, int]"]


def _sorted_build(bids: Levels, asks: Levels) -> SortedSides:
    return SortedDict(bids), SortedDict(asks)


def _sorted_apply(
    book: SortedSides, is_bid: list[bool], prices: list[int], sizes: list[int]
) -> int:
    bids, asks = book
    start = perf_counter_ns()
    for bid, price, size in zip(is_bid, prices, sizes, strict=True):
        if bid:
            if size:
                bids[price] = size
            else:
                del bids[price]
        elif size:
            asks[price] = size
        else:
            del asks[price]
    return perf_counter_ns() - start


def _sorted_apply_best(
    book: SortedSides, is_bid: list[bool], prices: list[int], sizes: list[int]
) -> tuple[int, Touch]:
    bids, asks = book
    best_bid = best_ask = (0, 0)
    start = perf_counter_ns()
    for bid, price, size in zip(is_bid, prices, sizes, strict=True):
        if bid:
            if size:
                bids[price] = size
            else:
                del bids[price]
        elif size:
            asks[price] = size
        else:
            del asks[price]
        best_bid = bids.peekitem(-1)
        best_ask = asks.peekitem(0)
    return perf_counter_ns() - start, (best_bid[0], best_ask[0])


def _sorted_state(book: SortedSides) -> tuple[dict[int, int], dict[int, int], Touch]:
    bids, asks = book
    return dict(bids), dict(asks), (bids.peekitem(-1)[0], asks.peekitem(0)[0])


DictSides = tuple[dict[int, int], dict[int, int]]


def _dict_build(bids: Levels, asks: Levels) -> DictSides:
    return dict(bids), dict(asks)


def _dict_apply(book: DictSides, is_bid: list[bool], prices: list[int], sizes: list[int]) -> int:
    bids, asks = book
    start = perf_counter_ns()
    for bid, price, size in zip(is_bid, prices, sizes, strict=True):
        if bid:
            if size:
                bids[price] = size
            else:
                del bids[price]
        elif size:
            asks[price] = size
        else:
            del asks[price]
    return perf_counter_ns() - start


def _dict_state(book: DictSides) -> tuple[dict[int, int], dict[int, int], Touch]:
    bids, asks = book
    return bids, asks, (max(bids), min(asks))


def _loop_only(book: None, is_bid: list[bool], prices: list[int], sizes: list[int]) -> int:
    """The feeding loop alone: what every contender's figure includes."""
    start = perf_counter_ns()
    for bid, _price, size in zip(is_bid, prices, sizes, strict=True):
        if bid:
            if size:
                pass
        elif size:
            pass
    return perf_counter_ns() - start


def _load_order_book() -> ModuleType | None:
    try:
        return importlib.import_module("order_book")
    except ImportError:  # optional baseline: pip install 'otc[bench]'
        return None


def _ob_build(module: ModuleType, bids: Levels, asks: Levels) -> Any:
    book = module.OrderBook()
    book_bids, book_asks = book.bids, book.asks
    for price, size in bids:
        book_bids[price] = size
    for price, size in asks:
        book_asks[price] = size
    book_bids.index(0)  # materialise its sorted key tuple, as any reader would
    book_asks.index(0)
    return book


def _ob_apply(book: Any, is_bid: list[bool], prices: list[int], sizes: list[int]) -> int:
    bids, asks = book.bids, book.asks
    start = perf_counter_ns()
    for bid, price, size in zip(is_bid, prices, sizes, strict=True):
        if bid:
            if size:
                bids[price] = size
            else:
                del bids[price]
        elif size:
            asks[price] = size
        else:
            del asks[price]
    return perf_counter_ns() - start


def _ob_apply_best(
    book: Any, is_bid: list[bool], prices: list[int], sizes: list[int]
) -> tuple[int, Touch]:
    bids, asks = book.bids, book.asks
    best_bid = best_ask = (0, 0)
    start = perf_counter_ns()
    for bid, price, size in zip(is_bid, prices, sizes, strict=True):
        if bid:
            if size:
                bids[price] = size
            else:
                del bids[price]
        elif size:
            asks[price] = size
        else:
            del asks[price]
        best_bid = bids.index(0)
        best_ask = asks.index(0)
    return perf_counter_ns() - start, (best_bid[0], best_ask[0])


def _ob_state(book: Any) -> tuple[dict[int, int], dict[int, int], Touch]:
    bids, asks = book.bids.to_dict(), book.asks.to_dict()
    return bids, asks, (book.bids.index(0)[0], book.asks.index(0)[0])


Lists = tuple[list[bool], list[int], list[int]]
State = tuple[dict[int, int], dict[int, int], Touch]


class _Contender:
    """One book implementation: how to build it, feed it (with or without reading the touch)."""

    __slots__ = ("apply", "apply_best", "build", "label", "name", "state")

    def __init__(
        self,
        name: str,
        label: str,
        build: Callable[[Levels, Levels], Any],
        apply: Callable[..., int],
        apply_best: Callable[..., tuple[int, Touch]] | None,
        state: Callable[[Any], State],
    ) -> None:
        self.name = name
        self.label = label
        self.build = build
        self.apply = apply
        self.apply_best = apply_best
        self.state = state


def _contenders(ob: ModuleType | None) -> list[_Contender]:
    found = [
        _Contender("otc", "otc L2Book", _ours_build, _ours_apply, _ours_apply_best, _ours_state),
        _Contender(
            "sorteddict",
            "SortedDict x2 (baseline)",
            _sorted_build,
            _sorted_apply,
            _sorted_apply_best,
            _sorted_state,
        ),
        _Contender("dict", "dict x2 (unordered)", _dict_build, _dict_apply, None, _dict_state),
    ]
    if ob is not None:
        found.append(
            _Contender(
                "order_book",
                "order_book.OrderBook (C)",
                partial(_ob_build, ob),
                _ob_apply,
                _ob_apply_best,
                _ob_state,
            )
        )
    return found


def _expected(stream: DeltaStream) -> State:
    """The book after the whole stream, replayed on plain dicts (the reference)."""
    bids, asks = dict(stream.bids), dict(stream.asks)
    for bid, price, size in zip(stream.is_bid, stream.prices, stream.sizes, strict=True):
        side = bids if bid else asks
        if size:
            side[price] = size
        else:
            del side[price]
    return bids, asks, (max(bids), min(asks))


def _time_updates(
    contender: _Contender, stream: DeltaStream, lists: Lists, repeats: int, *, best: bool
) -> tuple[int, State, Touch | None]:
    """Best ns of ``repeats`` runs on fresh books; the final state and touch read of the last."""
    best_ns: int | None = None
    touch: Touch | None = None
    book: Any = None
    for _ in range(repeats):
        book = contender.build(stream.bids, stream.asks)
        gc.collect()
        gc.disable()
        try:
            if best:
                assert contender.apply_best is not None
                elapsed, touch = contender.apply_best(book, *lists)
            else:
                elapsed = contender.apply(book, *lists)
        finally:
            gc.enable()
        best_ns = elapsed if best_ns is None else min(best_ns, elapsed)
    assert best_ns is not None
    return best_ns, contender.state(book), touch


def _check_final(name: str, got: State, touch: Touch | None, expected: State) -> None:
    if got != expected:
        raise RuntimeError(f"bench invalid: {name} ends with a different book than the reference")
    if touch is not None and touch != expected[2]:
        raise RuntimeError(f"bench invalid: {name} read touch {touch}, expected {expected[2]}")


def _loop_overhead(lists: Lists, repeats: int) -> int:
    best: int | None = None
    for _ in range(repeats):
        gc.disable()
        try:
            elapsed = _loop_only(None, *lists)
        finally:
            gc.enable()
        best = elapsed if best is None else min(best, elapsed)
    assert best is not None
    return best


def _rate(elapsed_ns: int, n: int) -> dict[str, float]:
    return {
        "updates_per_s": round(n * 1e9 / elapsed_ns),
        "ns_per_update": round(elapsed_ns / n, 1),
    }


# -- walks -----------------------------------------------------------------------------------


def consolidated_book(levels: int, seed: int) -> ConsolidatedBook:
    """Three venues (:data:`VENUES`) of ``levels`` levels per side, seeded."""
    book = ConsolidatedBook(SYMBOL, SCALE)
    for i, (venue, fee, offset) in enumerate(VENUES):
        rng = _rng(seed * 1_000 + i + 1)
        bids, asks = make_snapshot(rng, levels, MID_TICKS + offset, half_spread=2)
        l2 = L2Book(venue, SYMBOL, SCALE)
        l2.apply_snapshot(bids, asks)
        book.add_venue(l2, parse_fee_bps(fee))
    return book


def reference_walk(levels: list[tuple[int, int, int]], lots: int) -> tuple[int, int, int, int]:
    """The plain walk: (adjusted, price, size) levels in order until ``lots`` are filled.

    Returns (qty, notional, all-in numerator, levels touched), as :class:`~otc.slippage.Walk`.
    """
    qty = notional = all_in = touched = 0
    for adjusted, price, size in levels:
        touched += 1
        need = lots - qty
        if size >= need:
            return lots, notional + price * need, all_in + adjusted * need, touched
        qty += size
        notional += price * size
        all_in += adjusted * size
    return qty, notional, all_in, touched


def _per_call_ns(fn: Callable[[], object], calls: int, repeats: int) -> float:
    best: int | None = None
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            start = perf_counter_ns()
            for _ in range(calls):
                fn()
            elapsed = perf_counter_ns() - start
        finally:
            gc.enable()
        best = elapsed if best is None else min(best, elapsed)
    assert best is not None
    return best / calls


def _after_update_ns(book: ConsolidatedBook, qty: Decimal, samples: int) -> float:
    """Median ns of the first ``estimate`` after a size change on one venue's asks.

    Sizes go up one lot and back down at the same level, so the book ends as it started.
    """
    venue = book.venues[VENUES[0][0]].book
    near = [price for price, _ in venue.asks()][:50]
    times = []
    for i in range(samples):
        price = near[(i // 2) % len(near)]
        venue.update_ask(price, venue.ask_size(price) + (LOT if i % 2 == 0 else -LOT))
        view = book.view()
        gc.disable()
        try:
            start = perf_counter_ns()
            estimate(view, Side.BUY, qty=qty)
            times.append(perf_counter_ns() - start)
        finally:
            gc.enable()
    return statistics.median(times)


def _walk_figures(levels: int, seed: int, plan: _Plan) -> dict[str, Any]:
    book = consolidated_book(levels, seed)
    view = book.view()
    ladder = view.ladder(Side.BUY).build_all()  # the baseline loop needs every level merged
    merged = list(zip(ladder.adjusted, ladder.prices, ladder.sizes, strict=True))
    sizes: list[dict[str, Any]] = []
    for target in WALK_LEVELS:  # on the unchanged book: the ladder is built once, then cached
        k = min(target, len(ladder))
        if sizes and sizes[-1]["levels"] == k:  # a shallow book: deeper targets are the same
            continue
        lots = ladder.cum_qty[k - 1] + max(1, ladder.sizes[k - 1] // 2)
        qty = to_decimal(lots, SCALE.size_decimals)
        est = estimate(view, Side.BUY, qty=qty)
        w = walk(view, Side.BUY, lots=lots)
        if est.levels != k or reference_walk(merged, lots) != (w.qty, w.notional, w.all_in, k):
            raise RuntimeError(f"bench invalid: walks disagree at {k} levels")
        calls = max(20, plan.walk_calls // k)
        estimate_ns = _per_call_ns(partial(estimate, view, Side.BUY, qty=qty), calls, plan.repeats)
        walk_ns = _per_call_ns(partial(walk, view, Side.BUY, lots=lots), calls, plan.repeats)
        ref_ns = _per_call_ns(partial(reference_walk, merged, lots), calls, plan.repeats)
        sizes.append(
            {
                "target_levels": target,
                "levels": k,
                "qty": str(qty),
                "estimate_us": round(estimate_ns / 1e3, 2),
                "walk_us": round(walk_ns / 1e3, 2),
                "reference_us": round(ref_ns / 1e3, 2),
                "reference_over_estimate": round(ref_ns / estimate_ns, 2),
                "reference_over_walk": round(ref_ns / walk_ns, 2),
            }
        )
    max_qty_ns = _per_call_ns(
        partial(max_qty_within, view, Side.BUY, MAX_BPS), plan.walk_calls // 10, plan.repeats
    )
    view_ns = _per_call_ns(book.view, plan.walk_calls // 10, plan.repeats)
    for row in sizes:  # now each call follows an update: the ladder is rebuilt every time
        qty = Decimal(row["qty"])
        row["estimate_after_update_us"] = round(
            _after_update_ns(book, qty, plan.rebuild_samples) / 1e3, 1
        )
    return {
        "venues": [{"name": name, "taker_fee_bps": fee} for name, fee, _ in VENUES],
        "levels_per_side_per_venue": levels,
        "ladder_levels": len(ladder),
        "sizes": sizes,
        "max_qty_within_bps": str(MAX_BPS),
        "max_qty_within_us": round(max_qty_ns / 1e3, 2),
        "view_us": round(view_ns / 1e3, 2),
    }


# -- memory ----------------------------------------------------------------------------------


def _traced_bytes(build: Callable[[], object]) -> int:
    """Bytes still allocated after ``build()`` (tracemalloc; what existed before is not seen)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        built = build()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del built
    return used


def _memory_figures(
    levels: int, seed: int, contenders: list[_Contender]
) -> dict[str, dict[str, int]]:
    bids, asks = make_snapshot(_rng(seed), levels)
    out = {}
    for contender in contenders:
        used = _traced_bytes(partial(contender.build, bids, asks))
        out[contender.name] = {
            "bytes": used,
            "bytes_per_1000_levels": round(used * 1000 / (2 * levels)),
        }
    return out


# -- report ----------------------------------------------------------------------------------


class _Plan:
    """How much work each part does: the defaults, or ``quick`` for tests."""

    __slots__ = ("rebuild_samples", "repeats", "walk_calls")

    def __init__(self, *, quick: bool) -> None:
        self.repeats = 1 if quick else 3
        self.walk_calls = 2_000 if quick else 50_000
        self.rebuild_samples = 5 if quick else 25


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """Platform, CPU, Python and the versions of the packages measured."""
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": {
            dist: _version(dist) for dist in ("otc", "sortedcontainers", "order-book", "msgspec")
        },
    }


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %"


def _ratio_text(ratio: float, goal: float) -> str:
    verdict = "met" if ratio >= goal else "NOT met"
    return f"{ratio:.2f}x (goal >= {goal:g}x: {verdict})"


def run(
    *,
    deltas: int = 1_000_000,
    levels: int = 1000,
    seed: int = 7,
    out: TextIO | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Run the benchmark, print the report to ``out`` (stdout) and return the figures.

    Args:
        deltas: length of the delta stream (``quick`` caps it at 100,000).
        levels: levels per side of the streamed book and of each venue in the walk benchmark.
        seed: seed of every generated book and stream.
        out: where the report goes; ``None`` is ``sys.stdout`` at call time.
        quick: a fast run for tests: fewer deltas, one repeat, fewer walk calls.
    """
    write = (out if out is not None else sys.stdout).write
    plan = _Plan(quick=quick)
    if quick:
        deltas = min(deltas, 100_000)
    info = machine()
    versions = info["versions"]
    write(
        "otc bench book: L2 book updates, walks and memory, ours next to baselines\n"
        f"machine   {info['platform']}; {info['cpu']}; {info['cpus']} CPUs; {info['python']}\n"
        "versions  "
        + ", ".join(f"{name} {v or 'not installed'}" for name, v in versions.items())
        + "\n"
        f"method    best of {plan.repeats} run(s), fresh books, gc off, perf_counter_ns; "
        "one stream for all\n\n"
    )

    start = perf_counter_ns()
    stream = make_stream(deltas=deltas, levels=levels, seed=seed)
    generation_s = (perf_counter_ns() - start) / 1e9
    kinds = stream.kinds
    n = len(stream)
    mean_distance = statistics.fmean(stream.distances)
    write(
        f"stream    {n:,} deltas on {levels:,} levels/side, seed {seed}, "
        f"generated in {generation_s:.1f} s (not timed)\n"
        f"          size changes {_pct(kinds['change'], n)}, inserts {_pct(kinds['insert'], n)}, "
        f"deletes {_pct(kinds['delete'], n)} (of the best level: "
        f"{_pct(kinds['delete_best'], n)})\n"
        f"          mean distance from the touch {mean_distance:.1f} levels; depth per side "
        f"{stream.depth_range[0]:,}..{stream.depth_range[1]:,}; "
        f"final spread {stream.final_spread_ticks} tick(s)\n\n"
    )

    ob = _load_order_book()
    contenders = _contenders(ob)
    lists = (stream.is_bid, stream.prices, stream.sizes)
    expected = _expected(stream)
    loop_ns = _loop_overhead(lists, plan.repeats)
    apply: dict[str, dict[str, float]] = {}
    apply_best: dict[str, dict[str, float]] = {}
    write(
        f"updates   {'':26}{'apply':>22}{'apply + best bid/ask':>26}\n"
        f"          {'':26}{'updates/s':>14}{'ns/upd':>8}{'updates/s':>18}{'ns/upd':>8}\n"
    )
    for contender in contenders:
        elapsed, state, _ = _time_updates(contender, stream, lists, plan.repeats, best=False)
        _check_final(contender.name, state, None, expected)
        apply[contender.name] = _rate(elapsed, n)
        row = f"          {contender.label:26}{_cols(apply[contender.name])}"
        if contender.apply_best is not None:
            elapsed, state, touch = _time_updates(contender, stream, lists, plan.repeats, best=True)
            _check_final(contender.name, state, touch, expected)
            apply_best[contender.name] = _rate(elapsed, n)
            row += f"    {_cols(apply_best[contender.name])}"
        write(row + "\n")
    write(f"          {'loop overhead (in all)':26}{_cols(_rate(loop_ns, n))}\n")

    ratios: dict[str, float] = {}
    for base, label, goal in (
        ("sorteddict", "SortedDict", GOAL_SORTEDDICT),
        ("order_book", "order_book", GOAL_ORDER_BOOK),
    ):
        if base not in apply:
            write(f"          {label} not installed: pip install 'otc[bench]' for that baseline\n")
            continue
        ratios[f"apply_vs_{base}"] = round(
            apply["otc"]["updates_per_s"] / apply[base]["updates_per_s"], 2
        )
        ratios[f"apply_best_vs_{base}"] = round(
            apply_best["otc"]["updates_per_s"] / apply_best[base]["updates_per_s"], 2
        )
        write(
            f"          ours / {label}: apply {ratios[f'apply_vs_{base}']:.2f}x; apply + best "
            f"{_ratio_text(ratios[f'apply_best_vs_{base}'], goal)}\n"
        )
    write("\n")

    walk_figures = _walk_figures(levels, seed, plan)
    venues = ", ".join(f"{v['name']} {v['taker_fee_bps']} bps" for v in walk_figures["venues"])
    write(
        f"walks     {len(VENUES)} venues x {levels:,} levels/side ({venues})\n"
        f"          buying on a ladder of {walk_figures['ladder_levels']:,} levels\n"
        f"          {'levels':>8}{'estimate':>11}{'walk':>9}{'plain loop':>12}"
        f"{'loop/est.':>11}{'loop/walk':>11}{'estimate after update':>24}\n"
        f"          {'':>8}{'us':>11}{'us':>9}{'us':>12}{'':>22}{'us (ladder rebuilt)':>24}\n"
    )
    for row in walk_figures["sizes"]:
        write(
            f"          {row['levels']:>8,}{row['estimate_us']:>11.2f}{row['walk_us']:>9.2f}"
            f"{row['reference_us']:>12.2f}{row['reference_over_estimate']:>10.2f}x"
            f"{row['reference_over_walk']:>10.2f}x{row['estimate_after_update_us']:>24,.1f}\n"
        )
    write(
        f"          max_qty_within({walk_figures['max_qty_within_bps']} bps): "
        f"{walk_figures['max_qty_within_us']:.2f} us/call; "
        f"view(): {walk_figures['view_us']:.2f} us/call\n"
        "          estimate: the Decimal report; walk: the integer result (quoting hot path);\n"
        "          plain loop: a Python loop over the merged, fee-sorted levels (merge not "
        "counted);\n"
        "          loop/x: plain-loop time over x's time, > 1 when ours is faster\n\n"
    )

    memory = _memory_figures(levels, seed, contenders)
    write(
        f"memory    a {levels:,}-level-per-side book built from a snapshot (tracemalloc;\n"
        "          the price and size ints, shared with the input, not counted)\n"
    )
    for contender in contenders:
        per_1000 = memory[contender.name]["bytes_per_1000_levels"]
        write(f"          {contender.label:26}{per_1000:>10,} bytes per 1,000 levels\n")

    return {
        "machine": info,
        "params": {
            "deltas": n,
            "levels": levels,
            "seed": seed,
            "quick": quick,
            "repeats": plan.repeats,
        },
        "stream": {
            "generation_s": round(generation_s, 2),
            "kinds": kinds,
            "mean_distance_levels": round(mean_distance, 2),
            "depth_range": list(stream.depth_range),
            "final_spread_ticks": stream.final_spread_ticks,
        },
        "updates": {
            "loop_overhead_ns_per_update": round(loop_ns / n, 1),
            "apply": apply,
            "apply_best": apply_best,
            "ratios": ratios,
            "goals": {
                "apply_best_vs_sorteddict": GOAL_SORTEDDICT,
                "apply_best_vs_order_book": GOAL_ORDER_BOOK,
            },
        },
        "walk": walk_figures,
        "memory": memory,
    }


def _cols(rate: dict[str, float]) -> str:
    return f"{rate['updates_per_s']:>14,.0f}{rate['ns_per_update']:>8.1f}"
