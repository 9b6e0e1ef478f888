"""Exact L2 books: one :class:`L2Book` per (venue, symbol), and a :class:`ConsolidatedBook`.

L2Book
------
Each side is a ``dict`` price -> size (ints, see :mod:`otc.model`) plus a ``SortedList`` of its
prices and a cached best price. The common update, a size change at an existing level, is one
dict store; only inserts and deletes touch the sorted list (O(log n)), and the touch is read in
O(1) from the cache, which is recomputed only when the best level itself is deleted. Iteration
from the touch outward follows the sorted list. Every mutation bumps the side's ``version``,
which is how consolidated views know their cached ladders are still valid.

ConsolidatedBook
----------------
The venues of one symbol with their taker fees and sync state. :meth:`ConsolidatedBook.view`
decides which venues may be used *now* (excluding stale, crossed and out-of-sync ones, with
the reason kept) and returns a :class:`BookView`. A view builds, per side and on demand, a
:class:`Ladder`: every (venue, price) level of the included venues ordered by fee-adjusted
price, with cumulative quantity, notional and all-in arrays. Building a ladder costs
O(n log n) for n levels (about one full walk); it is cached on the consolidated book and
reused for as long as the included venues and their side versions are unchanged, so repeated
estimates on an unchanged book cost O(log n + venues) each (see :mod:`otc.slippage`).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import accumulate, islice
from operator import itemgetter, mul

import msgspec
from sortedcontainers import SortedList

from otc.errors import OtcError
from otc.model import FEE_DENOMINATOR, BookEvent, BookSnapshot, Scale, Side, decimal_text

__all__ = [
    "BookView",
    "ConsolidatedBook",
    "Exclusion",
    "L2Book",
    "Ladder",
    "VenueState",
    "apply_event",
]


class L2Book:
    """An exact L2 order book for one instrument on one venue.

    Prices are ticks and sizes lots at ``scale`` (ints). A size of 0 deletes a level. Equal
    books compare and iterate equal whatever order their levels arrived in.

    Args:
        venue: venue name, e.g. ``"binance"``.
        symbol: instrument symbol, e.g. ``"BTC-USDT"``.
        scale: fixed-point resolution of prices and sizes.
        monotonic: a monotonic clock (ns) read whenever a receive time is recorded, into
            ``recv_mono_ns``: what a :class:`ConsolidatedBook` given the same clock measures
            the book's age with (a wall clock's steps do not age it, nor make it young).
    """

    __slots__ = (
        "_ask_prices",
        "_ask_sizes",
        "_bid_prices",
        "_bid_sizes",
        "_monotonic",
        "ask_version",
        "best_ask",
        "best_bid",
        "bid_version",
        "recv_mono_ns",
        "scale",
        "sequence",
        "symbol",
        "ts_event_ns",
        "ts_recv_ns",
        "venue",
    )

    def __init__(
        self, venue: str, symbol: str, scale: Scale, *, monotonic: Callable[[], int] | None = None
    ) -> None:
        self.venue = venue
        self.symbol = symbol
        self.scale = scale
        self._bid_sizes: dict[int, int] = {}
        self._ask_sizes: dict[int, int] = {}
        self._bid_prices: SortedList[int] = SortedList()
        self._ask_prices: SortedList[int] = SortedList()
        #: Best (highest) bid price in ticks, ``None`` when the bid side is empty.
        self.best_bid: int | None = None
        #: Best (lowest) ask price in ticks, ``None`` when the ask side is empty.
        self.best_ask: int | None = None
        #: Venue sequence id of the last message applied (``None`` before any).
        self.sequence: int | None = None
        #: Exchange timestamp of the last message applied, ns since the epoch (0: unknown).
        self.ts_event_ns = 0
        #: Local receive timestamp of the last message applied, ns since the epoch (0: unknown).
        self.ts_recv_ns = 0
        #: When ``ts_recv_ns`` was recorded, on ``monotonic`` (0 without it).
        self.recv_mono_ns = 0
        self._monotonic = monotonic
        self.bid_version = 0
        self.ask_version = 0

    # -- mutation ------------------------------------------------------------------------------

    def apply_snapshot(
        self,
        bids: Iterable[tuple[int, int]],
        asks: Iterable[tuple[int, int]],
        *,
        sequence: int | None = None,
        ts_event_ns: int = 0,
        ts_recv_ns: int = 0,
    ) -> None:
        """Replace the whole book. Levels may come in any order; size-0 levels are ignored.

        Raises:
            ValueError: a negative size or non-positive price, or a price given twice on a side;
                the book is then unchanged (both sides are checked before either is replaced).
        """
        bid_sizes = _side_from_levels(bids, "bid")
        ask_sizes = _side_from_levels(asks, "ask")
        self._bid_sizes = bid_sizes
        self._ask_sizes = ask_sizes
        self._bid_prices = SortedList(self._bid_sizes)
        self._ask_prices = SortedList(self._ask_sizes)
        self.best_bid = self._bid_prices[-1] if self._bid_prices else None
        self.best_ask = self._ask_prices[0] if self._ask_prices else None
        self.sequence = sequence
        self.ts_event_ns = ts_event_ns
        self.ts_recv_ns = ts_recv_ns
        if self._monotonic is not None:
            self.recv_mono_ns = self._monotonic() if ts_recv_ns else 0
        self.bid_version += 1
        self.ask_version += 1

    def update_bid(self, price: int, size: int) -> None:
        """Set the bid at ``price`` to ``size`` (0 deletes).

        Raises:
            ValueError: a negative size, or a new level at a non-positive price (the levels
                are then unchanged).
        """
        sizes = self._bid_sizes
        self.bid_version += 1
        if size > 0:
            if price in sizes:  # the common case: a size change at an existing level
                sizes[price] = size
                return
            if price <= 0:
                raise ValueError(f"non-positive bid price {price}")
            sizes[price] = size
            self._bid_prices.add(price)
            best = self.best_bid
            if best is None or price > best:
                self.best_bid = price
        elif size:
            raise ValueError(f"negative bid size {size} at price {price}")
        elif sizes.pop(price, None) is not None:
            prices = self._bid_prices
            prices.remove(price)
            if price == self.best_bid:
                self.best_bid = prices[-1] if prices else None

    def update_ask(self, price: int, size: int) -> None:
        """Set the ask at ``price`` to ``size`` (0 deletes).

        Raises:
            ValueError: a negative size, or a new level at a non-positive price (the levels
                are then unchanged).
        """
        sizes = self._ask_sizes
        self.ask_version += 1
        if size > 0:
            if price in sizes:  # the common case: a size change at an existing level
                sizes[price] = size
                return
            if price <= 0:
                raise ValueError(f"non-positive ask price {price}")
            sizes[price] = size
            self._ask_prices.add(price)
            best = self.best_ask
            if best is None or price < best:
                self.best_ask = price
        elif size:
            raise ValueError(f"negative ask size {size} at price {price}")
        elif sizes.pop(price, None) is not None:
            prices = self._ask_prices
            prices.remove(price)
            if price == self.best_ask:
                self.best_ask = prices[0] if prices else None

    def update(self, side: Side, price: int, size: int) -> None:
        """Set a level on the side a ``side`` taker would hit (``SELL`` -> bids, ``BUY`` -> asks).

        Prefer :meth:`update_bid` / :meth:`update_ask` on hot paths.
        """
        if size < 0:
            raise ValueError(f"negative size {size} at price {price}")
        if price <= 0:
            raise ValueError(f"non-positive price {price}")
        if side is Side.SELL:
            self.update_bid(price, size)
        else:
            self.update_ask(price, size)

    def set_meta(
        self, *, sequence: int | None = None, ts_event_ns: int = 0, ts_recv_ns: int = 0
    ) -> None:
        """Record the sequence id and timestamps of the message just applied."""
        if sequence is not None:
            self.sequence = sequence
        if ts_event_ns:
            self.ts_event_ns = ts_event_ns
        if ts_recv_ns:
            self.ts_recv_ns = ts_recv_ns
            if self._monotonic is not None:
                self.recv_mono_ns = self._monotonic()

    def truncate(self, depth: int) -> tuple[list[int], list[int]]:
        """Keep only the best ``depth`` levels per side; returns the (bid, ask) prices dropped.

        For venues that stop sending deletes for levels beyond the subscribed depth. Costs
        O(dropped x log n): the worst levels are read from the sorted index, not walked to.
        """
        bid_prices, ask_prices = self._bid_prices, self._ask_prices
        dropped_bids = list(bid_prices[: max(0, len(bid_prices) - depth)])  # ascending: worst first
        dropped_asks = list(ask_prices[depth:])
        for price in dropped_bids:
            self.update_bid(price, 0)
        for price in dropped_asks:
            self.update_ask(price, 0)
        return dropped_bids, dropped_asks

    def clear(self) -> None:
        """Empty both sides (e.g. before a resync); keeps venue, symbol and scale."""
        self.apply_snapshot((), ())
        self.sequence = None

    # -- reading -------------------------------------------------------------------------------

    @property
    def spread(self) -> int | None:
        """Best ask minus best bid in ticks; ``None`` when a side is empty (negative if crossed)."""
        if self.best_bid is None or self.best_ask is None:
            return None
        return self.best_ask - self.best_bid

    @property
    def crossed(self) -> bool:
        """True when the best bid is at or above the best ask (a locked book counts too)."""
        return (
            self.best_bid is not None
            and self.best_ask is not None
            and self.best_bid >= self.best_ask
        )

    def bids(self) -> Iterator[tuple[int, int]]:
        """(price, size) from the best bid downwards."""
        sizes = self._bid_sizes
        for price in reversed(self._bid_prices):
            yield price, sizes[price]

    def asks(self) -> Iterator[tuple[int, int]]:
        """(price, size) from the best ask upwards."""
        sizes = self._ask_sizes
        for price in self._ask_prices:
            yield price, sizes[price]

    def levels(self, side: Side) -> Iterator[tuple[int, int]]:
        """Levels a ``side`` taker would take, from the touch outward."""
        return self.asks() if side is Side.BUY else self.bids()

    def depth(self, side: Side) -> int:
        """Number of price levels on the side a ``side`` taker would take."""
        return len(self._ask_sizes) if side is Side.BUY else len(self._bid_sizes)

    def side_version(self, side: Side) -> int:
        return self.ask_version if side is Side.BUY else self.bid_version

    def bid_size(self, price: int) -> int:
        return self._bid_sizes.get(price, 0)

    def ask_size(self, price: int) -> int:
        return self._ask_sizes.get(price, 0)

    def __len__(self) -> int:
        return len(self._bid_sizes) + len(self._ask_sizes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, L2Book):
            return NotImplemented
        return (
            self.venue == other.venue
            and self.symbol == other.symbol
            and self._bid_sizes == other._bid_sizes
            and self._ask_sizes == other._ask_sizes
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"L2Book({self.venue!r}, {self.symbol!r}, bids={len(self._bid_sizes)}, "
            f"asks={len(self._ask_sizes)}, best_bid={self.best_bid}, best_ask={self.best_ask}, "
            f"sequence={self.sequence})"
        )

    def _check(self) -> None:
        """Assert every invariant of the book (for tests; O(n))."""
        for name, sizes, prices, best, pick in (
            ("bid", self._bid_sizes, self._bid_prices, self.best_bid, max),
            ("ask", self._ask_sizes, self._ask_prices, self.best_ask, min),
        ):
            prices._check()  # type: ignore[attr-defined]  # not in the stubs
            assert list(prices) == sorted(sizes), f"{name} price index out of step with sizes"
            assert all(type(p) is int and p > 0 for p in sizes), f"{name} bad price"
            assert all(type(s) is int and s > 0 for s in sizes.values()), f"{name} bad size"
            expected = pick(sizes) if sizes else None
            assert best == expected, f"best {name} {best} != {expected}"


def _side_from_levels(levels: Iterable[tuple[int, int]], name: str) -> dict[int, int]:
    side: dict[int, int] = {}
    zeros: set[int] = set()  # size-0 levels are not kept, but still count as given
    for price, size in levels:
        if size < 0:
            raise ValueError(f"negative {name} size {size} at price {price}")
        if price <= 0:
            raise ValueError(f"non-positive {name} price {price}")
        if price in side or price in zeros:
            raise ValueError(f"{name} price {price} given twice")
        if size:
            side[price] = size
        else:
            zeros.add(price)
    return side


def apply_event(book: L2Book, event: BookEvent) -> None:
    """Apply a normalized event to ``book`` (a snapshot replaces it, a delta sets levels).

    Raises:
        ValueError: a level the book refuses (a negative size, a non-positive price): a
            snapshot is then refused whole; a delta's levels before that one stay applied.
    """
    if isinstance(event, BookSnapshot):
        book.apply_snapshot(
            event.bids,
            event.asks,
            sequence=event.sequence,
            ts_event_ns=event.ts_event_ns,
            ts_recv_ns=event.ts_recv_ns,
        )
        return
    update_bid, update_ask = book.update_bid, book.update_ask
    for price, size in event.bids:
        update_bid(price, size)
    for price, size in event.asks:
        update_ask(price, size)
    book.set_meta(
        sequence=event.sequence, ts_event_ns=event.ts_event_ns, ts_recv_ns=event.ts_recv_ns
    )


# -- consolidation ---------------------------------------------------------------------------


class Exclusion(msgspec.Struct, frozen=True, gc=False):
    """Why a venue is left out of a consolidated view."""

    venue: str
    reason: str  # "stale", "crossed", "out_of_sync", "disabled"
    detail: str


class VenueState:
    """A venue's book in a consolidated book, with its taker fee and sync flag.

    ``in_sync`` is owned by the feed: it is ``False`` until the first snapshot is applied and
    whenever the feed detects a gap or checksum failure, until it has resynced.
    """

    __slots__ = ("book", "enabled", "fee", "in_sync", "sync_detail")

    def __init__(self, book: L2Book, fee: int, *, in_sync: bool = True) -> None:
        self.book = book
        #: Taker fee in units of 1e-4 bps (see :func:`otc.model.parse_fee_bps`).
        self.fee = fee
        self.in_sync = in_sync
        self.sync_detail = ""
        self.enabled = True


class Ladder:
    """The levels a taker on ``side`` can take, across venues, ordered by fee-adjusted price.

    Level ``i`` has ``venues[i]``, raw ``prices[i]`` (ticks), ``sizes[i]`` (lots) and
    fee-adjusted ``adjusted[i] = price x (FEE_DENOMINATOR +/- fee)``. The cumulative arrays have
    a leading 0, so ``cum_qty[k]`` is the quantity of the first ``k`` levels:

    * ``cum_qty``: lots; ``cum_notional``: price x size before fees;
    * ``cum_all_in``: adjusted price x size (notional x FEE_DENOMINATOR, fees included);
    * ``worst[k]``: the worst raw price among the first ``k`` levels (``worst[0]`` unused).

    For per-venue allocation, ``venue_index[v]`` lists the level indices of venue ``v`` in
    ladder order and ``venue_cum_qty[v]`` / ``venue_cum_notional[v]`` their running sums.
    Ties in adjusted price are broken by venue name, so equal books give equal ladders.

    Built lazily, best levels first: a walk that needs the top 200 of 6,000 levels only pays for
    about 200 (:meth:`ensure_qty`, :meth:`ensure_notional`, :meth:`extend`). Each extension
    pulls the next ``chunk`` levels of every venue (each venue's book is already sorted), sorts
    them together and keeps those no unpulled level can precede: C-speed sorting and cumulative
    sums (``itertools.accumulate``) instead of a Python-level merge. ``len()`` is the number of
    levels built so far; ``complete`` tells whether that is all of them. A ladder reads the
    venue books it was built from: extending it after one of them changed raises
    ``RuntimeError`` (the consolidated book hands out a new ladder instead).
    """

    __slots__ = (
        "_pending",
        "_sources",
        "_versions",
        "adjusted",
        "complete",
        "cum_all_in",
        "cum_notional",
        "cum_qty",
        "prices",
        "scale",
        "side",
        "sizes",
        "venue_cum_notional",
        "venue_cum_qty",
        "venue_index",
        "venues",
        "worst",
    )

    #: Levels pulled per venue by the first extension (later ones double).
    chunk = 16

    def __init__(self, side: Side, scale: Scale, states: Mapping[str, VenueState]) -> None:
        self.side = side
        self.scale = scale
        buy = side is Side.BUY
        sources = [_ladder_rows(name, state, buy) for name, state in states.items()]
        self._sources = sources
        self._pending: list[tuple[int, str, int, int]] = []
        self._versions = [(s.book, s.book.side_version(side)) for s in states.values()]
        self.complete = not sources
        self.adjusted: list[int] = []
        self.venues: list[str] = []
        self.prices: list[int] = []
        self.sizes: list[int] = []
        self.cum_qty = [0]
        self.cum_notional = [0]
        self.cum_all_in = [0]
        self.worst = [0]
        self.venue_index: dict[str, list[int]] = {name: [] for name in states}
        self.venue_cum_qty: dict[str, list[int]] = {name: [0] for name in states}
        self.venue_cum_notional: dict[str, list[int]] = {name: [0] for name in states}

    def __len__(self) -> int:
        return len(self.prices)

    # -- building ------------------------------------------------------------------------------

    def extend(self, max_chunk: int | None = None) -> int:
        """Build the next batch of levels; returns how many were added (0 once complete).

        Each venue gives as many levels as are built already (at least :attr:`chunk`), so
        that a deep walk takes few batches; ``max_chunk`` caps that, to bound the work of one
        call (the engine's ladders build a little per turn of its loop).
        """
        if self.complete:
            return 0
        for book, version in self._versions:
            if book.side_version(self.side) != version:
                raise RuntimeError(f"{book.venue} book changed since this ladder was built")
        chunk = max(self.chunk, len(self.prices))
        if max_chunk is not None:
            chunk = max(1, min(chunk, max_chunk))
        pending = self._pending
        active: list[Iterator[tuple[int, str, int, int]]] = []
        threshold: int | None = None
        for source in self._sources:
            batch = list(islice(source, chunk))
            pending.extend(batch)
            if len(batch) == chunk:  # may have more: nothing beyond its last level is final
                active.append(source)
                last = batch[-1][0]
                if threshold is None or last < threshold:
                    threshold = last
        self._sources = active
        pending.sort()
        if threshold is None:
            rows, self._pending = pending, []
            self.complete = True
        else:
            cut = bisect_right(pending, threshold, key=itemgetter(0))
            rows, self._pending = pending[:cut], pending[cut:]
        self._append(rows)
        return len(rows)

    def _append(self, rows: list[tuple[int, str, int, int]]) -> None:
        if not rows:
            return
        start = len(self.prices)
        adjusted = [abs(r[0]) for r in rows]
        venues = [r[1] for r in rows]
        prices = [r[2] for r in rows]
        sizes = [r[3] for r in rows]
        self.adjusted += adjusted
        self.venues += venues
        self.prices += prices
        self.sizes += sizes
        notionals = list(map(mul, prices, sizes))
        # Running sums continue from the last built level; ``initial`` is dropped by islice.
        self.cum_qty.extend(islice(accumulate(sizes, initial=self.cum_qty[-1]), 1, None))
        self.cum_notional.extend(
            islice(accumulate(notionals, initial=self.cum_notional[-1]), 1, None)
        )
        self.cum_all_in.extend(
            islice(accumulate(map(mul, adjusted, sizes), initial=self.cum_all_in[-1]), 1, None)
        )
        pick = max if self.side is Side.BUY else min
        first = prices[0] if start == 0 else self.worst[-1]
        self.worst.extend(islice(accumulate(prices, pick, initial=first), 1, None))
        for venue, index in self.venue_index.items():
            mine = [i for i, v in enumerate(venues) if v == venue]
            if not mine:
                continue
            index.extend([start + i for i in mine])
            vq = self.venue_cum_qty[venue]
            vq.extend(islice(accumulate([sizes[i] for i in mine], initial=vq[-1]), 1, None))
            vn = self.venue_cum_notional[venue]
            vn.extend(islice(accumulate([notionals[i] for i in mine], initial=vn[-1]), 1, None))

    def ensure_qty(self, lots: int) -> None:
        """Build until the levels cover ``lots`` or the book is exhausted."""
        while self.cum_qty[-1] < lots and not self.complete:
            self.extend()

    def ensure_notional(self, notional: int) -> None:
        """Build until the levels cover ``notional`` (ticks x lots) or the book is exhausted."""
        while self.cum_notional[-1] < notional and not self.complete:
            self.extend()

    def ensure_levels(self, count: int) -> None:
        """Build until at least ``count`` levels exist or the book is exhausted."""
        while len(self.prices) < count and not self.complete:
            self.extend()

    def build_all(self) -> Ladder:
        """Build every level (e.g. for a depth chart); returns ``self``."""
        while not self.complete:
            self.extend()
        return self

    @property
    def total_qty(self) -> int:
        """Visible quantity over all levels (builds them all)."""
        return self.build_all().cum_qty[-1]

    def allocation(self, full_levels: int) -> dict[str, tuple[int, int]]:
        """Per venue (qty, notional) of the first ``full_levels`` levels; O(venues x log n)."""
        out: dict[str, tuple[int, int]] = {}
        for venue, index in self.venue_index.items():
            k = bisect_left(index, full_levels)
            if k:
                out[venue] = (self.venue_cum_qty[venue][k], self.venue_cum_notional[venue][k])
        return out


def _ladder_rows(name: str, state: VenueState, buy: bool) -> Iterator[tuple[int, str, int, int]]:
    """One venue's levels, best first, as ladder rows ``(sort key, venue, price, size)``."""
    if buy:
        factor = FEE_DENOMINATOR + state.fee
        for price, size in state.book.asks():
            yield price * factor, name, price, size
    else:
        factor = FEE_DENOMINATOR - state.fee
        # Negated so that one ascending sort gives best (highest) first, ties by venue name.
        for price, size in state.book.bids():
            yield -price * factor, name, price, size


class BookView:
    """The venues of a consolidated book that may be used at one instant.

    Holds the included venues, the exclusions with reasons, the best bid/ask over the included
    venues (raw prices, ticks) and lazily built, cached :class:`Ladder` s.
    """

    __slots__ = ("_owner", "best_ask", "best_bid", "excluded", "included", "scale", "symbol")

    def __init__(
        self,
        owner: ConsolidatedBook,
        included: dict[str, VenueState],
        excluded: list[Exclusion],
    ) -> None:
        self._owner = owner
        self.symbol = owner.symbol
        self.scale = owner.scale
        self.included = included
        self.excluded = excluded
        bids = [s.book.best_bid for s in included.values() if s.book.best_bid is not None]
        asks = [s.book.best_ask for s in included.values() if s.book.best_ask is not None]
        self.best_bid: int | None = max(bids) if bids else None
        self.best_ask: int | None = min(asks) if asks else None

    @property
    def mid2(self) -> int | None:
        """Best bid + best ask (ticks), i.e. twice the mid; ``None`` when a side is empty."""
        if self.best_bid is None or self.best_ask is None:
            return None
        return self.best_bid + self.best_ask

    def touch(self, side: Side) -> int | None:
        """Best raw price on the side a ``side`` taker would take."""
        return self.best_ask if side is Side.BUY else self.best_bid

    def ladder(self, side: Side) -> Ladder:
        return self._owner._ladder(side, self.included)


class ConsolidatedBook:
    """The books of one symbol across venues, with fees, sync state and exclusion rules.

    Args:
        symbol: the instrument symbol shared by all venues' books.
        scale: fixed-point resolution every venue book of this symbol uses.
        max_book_age_ms: a venue whose last update was received longer ago than this is
            excluded as stale; ``None`` disables the check (e.g. for a book file).
        monotonic: the monotonic clock the venues' books were given (the engine's): a book's
            age is then measured on it (``recv_mono_ns``), and the ``now_ns`` of
            :meth:`view` and :meth:`exclusion` only says whether to check. Without it, the
            age is ``now_ns - ts_recv_ns`` (backtests, tests: their clock does not step).
    """

    def __init__(
        self,
        symbol: str,
        scale: Scale,
        *,
        max_book_age_ms: int | None = None,
        monotonic: Callable[[], int] | None = None,
    ) -> None:
        self.symbol = symbol
        self.scale = scale
        self.max_book_age_ms = max_book_age_ms
        self.monotonic = monotonic
        self.venues: dict[str, VenueState] = {}
        #: ``venues`` sorted by name (venues are only ever added).
        self._sorted: list[tuple[str, VenueState]] = []
        self._cache: dict[Side, tuple[tuple[tuple[str, int, int], ...], Ladder]] = {}

    def add_venue(self, book: L2Book, fee: int, *, in_sync: bool = True) -> VenueState:
        """Add a venue's book with its taker fee (units of 1e-4 bps, see ``parse_fee_bps``)."""
        if book.symbol != self.symbol:
            raise OtcError(f"book of {book.symbol} added to consolidated {self.symbol}")
        if book.scale != self.scale:
            raise OtcError(f"{book.venue} book scale {book.scale} differs from {self.scale}")
        if book.venue in self.venues:
            raise OtcError(f"venue {book.venue} added twice to {self.symbol}")
        state = VenueState(book, fee, in_sync=in_sync)
        self.venues[book.venue] = state
        self._sorted = sorted(self.venues.items())
        return state

    def set_in_sync(self, venue: str, in_sync: bool, detail: str = "") -> None:
        """Mark a venue in or out of sync (the feed calls this on gaps and resyncs)."""
        state = self.venues[venue]
        state.in_sync = in_sync
        state.sync_detail = detail

    def set_enabled(self, venue: str, enabled: bool) -> None:
        self.venues[venue].enabled = enabled

    def exclusion(self, venue: str, now_ns: int | None) -> Exclusion | None:
        """Why ``venue`` may not be used at ``now_ns`` (``None``: it may)."""
        state = self.venues[venue]
        book = state.book
        if not state.enabled:
            return Exclusion(venue, "disabled", "disabled by operator")
        if not state.in_sync:
            return Exclusion(venue, "out_of_sync", state.sync_detail or "feed not in sync")
        if self.max_book_age_ms is not None and now_ns is not None:
            age_ms = self.age_ns(book, now_ns) // 1_000_000
            if age_ms > self.max_book_age_ms:
                return Exclusion(
                    venue, "stale", f"last update {age_ms} ms ago > {self.max_book_age_ms} ms"
                )
        if book.crossed:
            return Exclusion(
                venue,
                "crossed",
                f"best bid {decimal_text(book.scale.price_text(book.best_bid or 0))} >= "
                f"best ask {decimal_text(book.scale.price_text(book.best_ask or 0))}",
            )
        return None

    def age_ns(self, book: L2Book, now_ns: int) -> int:
        """How long ago ``book`` last received something (at ``now_ns`` on the wall clock):
        on the monotonic clock when the consolidated book has one; a book that never received
        anything (``ts_recv_ns`` 0) is as old as the epoch."""
        if self.monotonic is None or not book.ts_recv_ns:
            return now_ns - book.ts_recv_ns
        return self.monotonic() - book.recv_mono_ns

    def view(self, now_ns: int | None = None) -> BookView:
        """The venues usable at ``now_ns`` (ns since the epoch; ``None`` skips staleness; with a
        ``monotonic`` clock, ages are measured on it and ``now_ns`` only says whether to)."""
        included: dict[str, VenueState] = {}
        excluded: list[Exclusion] = []
        # Read on every RFQ: the usual case (every venue usable) is decided inline, and
        # :meth:`exclusion` (the same rules, in the same order) names the reason otherwise.
        stale_at = (  # a book last received at or before this is stale
            None
            if self.max_book_age_ms is None or now_ns is None
            else now_ns - (self.max_book_age_ms + 1) * 1_000_000
        )
        mono_stale_at = (  # the same on the monotonic clock (receive stamps recv_mono_ns)
            None
            if self.max_book_age_ms is None or now_ns is None or self.monotonic is None
            else self.monotonic() - (self.max_book_age_ms + 1) * 1_000_000
        )
        for name, state in self._sorted:
            book = state.book
            bid, ask = book.best_bid, book.best_ask
            if (
                state.enabled
                and state.in_sync
                and (
                    stale_at is None
                    or (
                        book.ts_recv_ns > stale_at
                        if mono_stale_at is None
                        else book.ts_recv_ns != 0 and book.recv_mono_ns > mono_stale_at
                    )
                )
                and (bid is None or ask is None or bid < ask)
            ):
                included[name] = state
            else:
                why = self.exclusion(name, now_ns)
                assert why is not None
                excluded.append(why)
        return BookView(self, included, excluded)

    def _ladder(self, side: Side, included: Mapping[str, VenueState]) -> Ladder:
        if side is Side.BUY:
            key = tuple((n, s.book.ask_version, s.fee) for n, s in included.items())
        else:
            key = tuple((n, s.book.bid_version, s.fee) for n, s in included.items())
        cached = self._cache.get(side)
        if cached is not None and cached[0] == key:
            return cached[1]
        ladder = Ladder(side, self.scale, included)
        self._cache[side] = (key, ladder)
        return ladder
