"""A seeded synthetic market: several venues quoting one symbol around a shared, moving mid.

Used by ``make demo`` and by load tests. Deterministic for a given seed: the same seed gives the
same books and the same stream of deltas, on every machine (``random.Random``, integer ticks).

Model:

* a common mid follows a Gaussian random walk (``volatility_bps_per_step``); each venue's own
  mid is the common mid plus a small persistent offset (venues disagree by a few bps);
* each venue quotes ``levels`` levels per side from ``half_spread_bps`` outward; level ``i``'s
  size grows linearly with distance (``touch_size x (1 + depth_growth x i)``) with log-normal
  noise, and gaps between levels are a random number of ticks;
* :meth:`SyntheticMarket.step` moves the mid and emits realistic deltas: mostly size changes
  near the touch, some levels inserted and deleted, and the touch re-priced when the mid moves.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal

import msgspec
from sortedcontainers import SortedDict

from feeds.base import BookDelta, BookEvent, BookSnapshot
from otc.book import ConsolidatedBook, L2Book
from otc.model import Scale, Side, parse_fee_bps, parse_fixed

__all__ = ["SimDelta", "SimFeed", "SimVenue", "SyntheticMarket", "default_venues"]


class SimVenue(msgspec.Struct, frozen=True, kw_only=True):
    """How one synthetic venue quotes: fee, spread, depth profile, price tick (quote units)."""

    name: str
    taker_fee_bps: Decimal
    half_spread_bps: float = 0.5
    touch_size: float = 0.4
    depth_growth: float = 0.02
    levels: int = 200
    level_spacing_bps: float = 0.4
    tick: Decimal = Decimal("0.1")
    offset_bps: float = 0.0


class SimDelta(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One level change on one venue: ``side`` is the book side (``SELL``: bids)."""

    venue: str
    side: Side
    price: int
    size: int


def default_venues() -> list[SimVenue]:
    """Six venues with fee schedules and depth of the shape big spot venues show."""
    return [
        SimVenue(
            name="binance",
            taker_fee_bps=Decimal("10"),
            touch_size=0.9,
            tick=Decimal("0.01"),
            half_spread_bps=0.05,
            levels=400,
            level_spacing_bps=0.2,
        ),
        SimVenue(
            name="okx",
            taker_fee_bps=Decimal("8"),
            touch_size=0.5,
            tick=Decimal("0.1"),
            half_spread_bps=0.3,
            offset_bps=0.4,
        ),
        SimVenue(
            name="bybit",
            taker_fee_bps=Decimal("10"),
            touch_size=0.4,
            tick=Decimal("0.1"),
            half_spread_bps=0.4,
            offset_bps=-0.3,
        ),
        SimVenue(
            name="coinbase",
            taker_fee_bps=Decimal("6"),
            touch_size=0.25,
            tick=Decimal("0.01"),
            half_spread_bps=0.8,
            offset_bps=0.8,
            depth_growth=0.015,
        ),
        SimVenue(
            name="kraken",
            taker_fee_bps=Decimal("2.6"),
            touch_size=0.15,
            tick=Decimal("0.1"),
            half_spread_bps=1.2,
            offset_bps=-0.6,
            depth_growth=0.015,
            levels=150,
            level_spacing_bps=0.6,
        ),
        SimVenue(
            name="bitget",
            taker_fee_bps=Decimal("6"),
            touch_size=0.3,
            tick=Decimal("0.01"),
            half_spread_bps=0.6,
            offset_bps=0.2,
        ),
    ]


def _end(sizes: SortedDict[int, int], direction: int) -> int:
    """The highest price of a side (``direction`` 1) or its lowest (-1)."""
    return sizes.peekitem(-1 if direction > 0 else 0)[0]


class SyntheticMarket:
    """A seeded multi-venue market for one symbol.

    Args:
        symbol: instrument symbol, e.g. ``"BTC-USDT"``.
        scale: fixed-point resolution of the books produced.
        mid: starting mid price (quote currency).
        venues: venue profiles; :func:`default_venues` when omitted.
        seed: random seed; the same seed gives the same market.
        volatility_bps_per_step: standard deviation of the common mid's move per step.
        lot: size granularity of generated levels (base units).
    """

    def __init__(
        self,
        symbol: str,
        scale: Scale,
        *,
        mid: Decimal = Decimal("64000"),
        venues: list[SimVenue] | None = None,
        seed: int = 1,
        volatility_bps_per_step: float = 0.3,
        lot: Decimal = Decimal("0.0001"),
    ) -> None:
        self.symbol = symbol
        self.scale = scale
        self.venues = venues if venues is not None else default_venues()
        self._rng = random.Random(seed)
        self._mid = float(mid)
        self._vol = volatility_bps_per_step / 1e4
        self._lot = parse_fixed(lot, scale.size_decimals, what="lot")
        self._ticks = {
            v.name: parse_fixed(v.tick, scale.price_decimals, what="tick") for v in self.venues
        }
        #: Each venue's (bids, asks), price -> size, sorted by price: the touch and the far end
        #: of a side are at its ends (a step used to scan every level for them, several times).
        self._books: dict[str, tuple[SortedDict[int, int], SortedDict[int, int]]] = {}
        for venue in self.venues:
            self._books[venue.name] = self._fresh_sides(venue)

    # -- generation ----------------------------------------------------------------------------

    def _venue_mid(self, venue: SimVenue) -> float:
        return self._mid * (1 + venue.offset_bps / 1e4)

    def _size(self, venue: SimVenue, level: int) -> int:
        base = venue.touch_size * (1 + venue.depth_growth * level)
        size = base * math.exp(self._rng.gauss(0.0, 0.5))
        lots = int(size * 10**self.scale.size_decimals) // self._lot * self._lot
        return max(lots, self._lot)

    def _gap(self, venue: SimVenue) -> int:
        """Ticks between two levels: exponential around ``level_spacing_bps`` of the mid."""
        tick = self._ticks[venue.name]
        spacing = self._mid * 10**self.scale.price_decimals * venue.level_spacing_bps / 1e4
        ticks: int = round(self._rng.expovariate(1.0) * spacing / tick)
        return tick * max(1, ticks)

    def _fresh_sides(self, venue: SimVenue) -> tuple[SortedDict[int, int], SortedDict[int, int]]:
        tick = self._ticks[venue.name]
        one = 10**self.scale.price_decimals
        mid = self._venue_mid(venue)
        best_bid = int(mid * (1 - venue.half_spread_bps / 1e4) * one) // tick * tick
        best_ask = -(-int(mid * (1 + venue.half_spread_bps / 1e4) * one) // tick) * tick
        if best_ask <= best_bid:
            best_ask = best_bid + tick
        bids: SortedDict[int, int] = SortedDict()
        asks: SortedDict[int, int] = SortedDict()
        bid, ask = best_bid, best_ask
        for i in range(venue.levels):
            bids[bid] = self._size(venue, i)
            asks[ask] = self._size(venue, i)
            bid -= self._gap(venue)
            ask += self._gap(venue)
        return bids, asks

    def step(self) -> list[SimDelta]:
        """Advance one step: move the mid and return the deltas every venue publishes."""
        return [delta for deltas in self._step() for delta in deltas]

    def _step(self) -> Iterator[Iterator[SimDelta]]:
        """Advance one step lazily: move the mid, then each venue's deltas in turn.

        Must be drained before the next step (every venue shares the random generator).
        """
        rng = self._rng
        self._mid *= 1 + rng.gauss(0.0, self._vol)
        for venue in self.venues:
            yield self._venue_step(venue)

    def _venue_step(self, venue: SimVenue) -> Iterator[SimDelta]:
        rng = self._rng
        tick = self._ticks[venue.name]
        one = 10**self.scale.price_decimals
        bids, asks = self._books[venue.name]
        mid = self._venue_mid(venue) * one
        fair_bid = int(mid * (1 - venue.half_spread_bps / 1e4)) // tick * tick
        fair_ask = -(-int(mid * (1 + venue.half_spread_bps / 1e4)) // tick) * tick
        name = venue.name
        # Re-price the touch: remove levels through the fair price, fill in from the fair price
        # to the old touch, and replenish the far end so each side keeps its depth.
        for sizes, side, fair, direction in (
            (bids, Side.SELL, fair_bid, -1),
            (asks, Side.BUY, fair_ask, 1),
        ):
            through = (
                sizes.irange(minimum=fair, inclusive=(False, True))
                if direction < 0
                else sizes.irange(maximum=fair, inclusive=(True, False))
            )
            for price in list(through):
                del sizes[price]
                yield SimDelta(name, side, price, 0)
            old_touch = _end(sizes, -direction) if sizes else fair + direction * tick
            price, level = fair, 0
            while (old_touch - price) * direction > 0:
                sizes[price] = self._size(venue, level)
                yield SimDelta(name, side, price, sizes[price])
                price += direction * self._gap(venue)
                level += 1
            far = _end(sizes, direction)
            while len(sizes) < venue.levels:
                far += direction * self._gap(venue)
                sizes[far] = self._size(venue, len(sizes))
                yield SimDelta(name, side, far, sizes[far])
            while len(sizes) > venue.levels:
                far = _end(sizes, direction)
                del sizes[far]
                yield SimDelta(name, side, far, 0)
        if fair_ask <= _end(bids, 1):
            return
        # A burst of activity now and then; otherwise a few changes near the touch.
        changes = rng.randint(8, 30) if rng.random() < 0.05 else rng.randint(1, 4)
        for _ in range(changes):
            side = Side.SELL if rng.random() < 0.5 else Side.BUY
            sizes = bids if side is Side.SELL else asks
            distance = min(int(rng.expovariate(0.15)), venue.levels - 1)
            direction = -1 if side is Side.SELL else 1
            touch = _end(sizes, -direction)
            price = touch + direction * distance * tick
            roll = rng.random()
            if roll < 0.1 and price in sizes and len(sizes) > venue.levels // 2 and price != touch:
                del sizes[price]
                yield SimDelta(name, side, price, 0)
            else:
                sizes[price] = self._size(venue, distance)
                yield SimDelta(name, side, price, sizes[price])

    # -- as a feed -----------------------------------------------------------------------------

    def snapshot_events(self, ts_ns: int = 0) -> list[BookSnapshot]:
        """One snapshot per venue of the current books."""
        out = []
        for venue in self.venues:
            bids, asks = self.levels(venue.name)
            out.append(BookSnapshot(venue.name, self.symbol, bids, asks, 0, ts_ns, ts_ns))
        return out

    def step_events(self, sequence: int, ts_ns: int = 0) -> list[BookDelta]:
        """Advance one step; the deltas grouped into one event per venue that changed."""
        return list(self.iter_step_events(sequence, ts_ns))

    def iter_step_events(self, sequence: int, ts_ns: int = 0) -> Iterator[BookDelta]:
        """:meth:`step_events`, computing each venue's event only when it is asked for.

        A step of six venues takes about a third of a millisecond; a consumer that yields to its
        event loop between events keeps that off any one turn. Drain it before the next step.
        """
        for deltas in self._step():
            bids: list[tuple[int, int]] = []
            asks: list[tuple[int, int]] = []
            venue = None
            for delta in deltas:
                venue = delta.venue
                (bids if delta.side is Side.SELL else asks).append((delta.price, delta.size))
            if venue is not None:
                yield BookDelta(venue, self.symbol, bids, asks, sequence, ts_ns, ts_ns)

    # -- books ---------------------------------------------------------------------------------

    def levels(self, venue: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The current (bids, asks) of ``venue`` as (ticks, lots) lists."""
        bids, asks = self._books[venue]
        return sorted(bids.items(), reverse=True), sorted(asks.items())

    def consolidated(
        self, *, ts_recv_ns: int = 0, max_book_age_ms: int | None = None
    ) -> ConsolidatedBook:
        """A consolidated book holding the current books of every venue."""
        book = ConsolidatedBook(self.symbol, self.scale, max_book_age_ms=max_book_age_ms)
        for venue in self.venues:
            l2 = L2Book(venue.name, self.symbol, self.scale)
            bids, asks = self.levels(venue.name)
            l2.apply_snapshot(bids, asks, sequence=0, ts_recv_ns=ts_recv_ns)
            book.add_venue(l2, parse_fee_bps(venue.taker_fee_bps))
        return book


class SimFeed:
    """The synthetic market behind the :class:`~feeds.base.Feed` protocol.

    Yields a snapshot per venue, then each step's deltas (one event per venue), ``steps`` times
    (forever when ``None``), sleeping ``interval_s`` between steps. Event timestamps come from
    ``clock_ns``; ``sleep`` is injectable so tests and load runs control time.

    Args:
        markets: one :class:`SyntheticMarket` per symbol.
        interval_s: pause between steps (0: as fast as the consumer takes them).
        steps: number of steps, or ``None`` for an endless feed.
    """

    def __init__(
        self,
        markets: list[SyntheticMarket],
        *,
        interval_s: float = 0.1,
        steps: int | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.markets = markets
        self.interval_s = interval_s
        self.steps = steps
        self.clock_ns = clock_ns
        self.sleep = sleep

    async def events(self) -> AsyncIterator[BookEvent]:
        now = self.clock_ns()
        for market in self.markets:
            for snap in market.snapshot_events(now):
                yield snap
        step = 0
        while self.steps is None or step < self.steps:
            await self.sleep(self.interval_s)
            step += 1
            now = self.clock_ns()
            for market in self.markets:
                for delta in market.iter_step_events(step, now):
                    yield delta
