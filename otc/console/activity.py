"""The journal's events as they happen, for the console's blotter, explanations and markouts.

:class:`ObservedJournal` stands between the :class:`~otc.quoting.QuoteEngine` and the real
journal: it hands every event over unchanged and then tells an :class:`Activity` about it. A
submitted event (RFQ, quote, reject, accept) is reported once it is queued, an appended one (a
fill, a control) once it is committed, so the console never shows a fill the journal may lose.
Recording costs one append to a bounded deque; everything else (blotter rows, symbol lookups,
decimal text) is done when the console reads, off the quote path.

Events of client ids the config does not name (an RFQ on a broker without the shipped ACL, and
its ``UNKNOWN_CLIENT`` reject) are kept apart, in a small ring of their own, and those it
drops are counted: a flood of them cannot push the desk's events (quotes, fills, controls) out
of what the console shows. The journal keeps every event all the same.

:class:`Activity` also keeps the desk's fills since start-up, for the P&L per instrument, and
the :class:`Markouts` of the most recent ones. A markout's horizons (1, 5, 30, 60 s) are time
passed since the fill was committed, on the engine's monotonic clock: a step of the wall clock
neither brings them all at once nor holds them back. The fill's wall time is kept for display.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Collection, Iterator
from decimal import Context, Decimal

import msgspec

from otc.clock import Clock, SystemClock
from otc.journal import Journal, JournalEvent, Receipt

__all__ = ["Activity", "Markouts", "ObservedJournal", "TradeFill"]

_CTX = Context(prec=60)
_ZERO = Decimal(0)
_NS_PER_MS = 1_000_000
#: Markout horizons: label -> ns of time passed after the fill (monotonic clock).
HORIZONS: dict[str, int] = {
    "1s": 1_000_000_000,
    "5s": 5_000_000_000,
    "30s": 30_000_000_000,
    "60s": 60_000_000_000,
}


class ObservedJournal:
    """A :class:`~otc.journal.Journal` that reports each event to ``observer`` once handed over.

    Args:
        journal: where events are recorded.
        observer: called with each event after ``submit`` queued it or ``append`` committed it
            (an ``urgent`` submit, a fill, once committed too; never when the journal refused
            it).
    """

    def __init__(self, journal: Journal, observer: Callable[[JournalEvent], None]) -> None:
        self._journal = journal
        self._observer = observer

    async def append(self, event: JournalEvent) -> None:
        await self._journal.append(event)
        self._observer(event)

    async def submit(self, event: JournalEvent, *, urgent: bool = False) -> Receipt:
        receipt = await self._journal.submit(event, urgent=urgent)
        if not urgent:
            self._observer(event)
        elif receipt.done():
            self._committed(event, receipt)
        else:  # a fill: a trade only once it is on disk (the engine publishes it then)
            receipt.add_done_callback(functools.partial(self._committed, event))
        return receipt

    def _committed(self, event: JournalEvent, receipt: Receipt) -> None:
        if not receipt.cancelled() and receipt.exception() is None:
            self._observer(event)

    async def aclose(self) -> None:
        await self._journal.aclose()


class TradeFill(msgspec.Struct, frozen=True):
    """A client fill as the desk sees it: ``side`` is the client's (a client buy: we sold)."""

    trade_id: str
    client: str
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    ts_ns: int


class Markout(msgspec.Struct):
    """A fill and the mid at each horizon after it: a horizon is absent until it is reached,
    then the mid sampled then, ``None`` when there was no usable mid (never a later one).
    ``mono_ns``: when the fill was booked, on the monotonic clock the horizons count on."""

    fill: TradeFill
    mono_ns: int
    mids: dict[str, Decimal | None]


def markout_bps(fill: TradeFill, mid: Decimal) -> Decimal:
    """The fill's markout against ``mid``, in bps, from the desk's side (positive: we gained).

    A client buy (we sold at ``price``): ``(price - mid) / mid``; a client sell: ``(mid - price)
    / mid``; rounded half-even to 0.01 bps.
    """
    move = fill.price - mid if fill.side == "buy" else mid - fill.price
    return _CTX.divide(move * 10_000, mid).quantize(Decimal("0.01"), context=_CTX)


class Markouts:
    """The last ``size`` fills and the mid at 1, 5, 30 and 60 s after each."""

    def __init__(self, size: int = 50) -> None:
        self._items: deque[Markout] = deque(maxlen=size)

    def add(self, fill: TradeFill, mono_ns: int) -> None:
        """Follow ``fill``, booked at ``mono_ns`` on the monotonic clock."""
        self._items.append(Markout(fill, mono_ns, {}))

    def sample(self, mono_ns: int, mid: Callable[[str], Decimal | None]) -> None:
        """Record the mid of every horizon that has come by ``mono_ns`` (the monotonic clock
        the fills were booked on, never the wall clock); call it often (every ~100 ms).

        A horizon is sampled once: without a usable mid then, its markout stays unknown
        rather than be read from a mid that comes back later."""
        for item in self._items:
            for label, after_ns in HORIZONS.items():
                if label not in item.mids and mono_ns >= item.mono_ns + after_ns:
                    item.mids[label] = mid(item.fill.symbol)

    def __iter__(self) -> Iterator[Markout]:
        return iter(reversed(self._items))  # newest first


def _after(ring: deque[tuple[int, JournalEvent]], seq: int) -> list[tuple[int, JournalEvent]]:
    """The items of ``ring`` (numbered in increasing order) numbered after ``seq``, oldest
    first; read from the newest back, so that what is new costs, not what is kept."""
    return list(itertools.takewhile(lambda item: item[0] > seq, reversed(ring)))[::-1]


class Activity:
    """Recent journal events (newest ``size``), in the order they were handed over.

    Each event gets a sequence number (from 1); :meth:`since` returns those after a number and
    :meth:`wait` waits for the next. Quotes' explanations are kept with their events; fills
    also update the desk's flows per instrument (:attr:`flows`) and the :attr:`markouts`.

    Args:
        size: the desk's events kept (those of ``clients``, and controls).
        clients: the configured client ids; an event of any other id (non-empty) is an unknown
            client's, kept among the newest ``unknown_size`` of those only, each dropped from
            there counted in :attr:`unknown_dropped`. ``None``: every id is the desk's.
        unknown_size: how many unknown clients' events are kept; by default a tenth of
            ``size``, from 10 to 200 (never many: the push stream's backlog of 500 rows is
            mostly the desk's).
        clock: the engine's clock; its monotonic part times the markouts' horizons.
    """

    def __init__(
        self,
        size: int = 2_000,
        *,
        clients: Collection[str] | None = None,
        unknown_size: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = SystemClock() if clock is None else clock
        self._events: deque[tuple[int, JournalEvent]] = deque(maxlen=size)
        self._clients = None if clients is None else frozenset(clients)
        if unknown_size is None:
            unknown_size = min(200, max(10, size // 10))
        self._unknown: deque[tuple[int, JournalEvent]] = deque(maxlen=unknown_size)
        #: Unknown clients' events dropped from their ring (the journal has them).
        self.unknown_dropped = 0
        self._seq = itertools.count(1)
        self.last_seq = 0
        #: Completed by the next event; created only while someone waits for one.
        self._changed: asyncio.Future[None] | None = None
        #: symbol -> (base position, quote-currency cash) from client fills since start-up.
        self.flows: dict[str, tuple[Decimal, Decimal]] = {}
        self.markouts = Markouts()

    @property
    def unknown_size(self) -> int:
        """How many unknown clients' events are kept."""
        return self._unknown.maxlen or 0

    @property
    def unknown_kept(self) -> int:
        """Unknown clients' events kept now."""
        return len(self._unknown)

    def unknown(self, client: str) -> bool:
        """Whether ``client`` is an id the config does not name (``""``, no client: never)."""
        return bool(client) and self._clients is not None and client not in self._clients

    def record(self, event: JournalEvent) -> None:
        """Keep ``event`` (the :class:`ObservedJournal`'s observer); O(1)."""
        seq = next(self._seq)
        clients = self._clients
        if clients is not None and event.client and event.client not in clients:
            ring = self._unknown
            if len(ring) == ring.maxlen:
                self.unknown_dropped += 1
            ring.append((seq, event))
        else:
            self._events.append((seq, event))
        self.last_seq = seq
        if event.kind == "fill":
            self._fill(event)
        changed = self._changed
        if changed is not None:  # nothing to do (on the quote path) while nobody waits
            self._changed = None
            if not changed.done():
                changed.set_result(None)

    def _fill(self, event: JournalEvent) -> None:
        payload = event.payload
        try:
            fill = TradeFill(
                trade_id=str(payload["trade_id"]),
                client=event.client,
                symbol=str(payload["symbol"]),
                side=str(payload["side"]),
                qty=Decimal(str(payload["qty"])),
                price=Decimal(str(payload["price"])),
                ts_ns=event.ts_ns,
            )
        except (KeyError, ArithmeticError):  # not a fill the engine wrote: nothing to book
            return
        base, cash = self.flows.get(fill.symbol, (_ZERO, _ZERO))
        notional = _CTX.multiply(fill.qty, fill.price)
        if fill.side == "buy":  # the client bought: we sold base for cash
            base, cash = base - fill.qty, cash + notional
        else:
            base, cash = base + fill.qty, cash - notional
        self.flows[fill.symbol] = (base, cash)
        self.markouts.add(fill, self._clock.monotonic_ns())

    def since(self, seq: int) -> list[tuple[int, JournalEvent]]:
        """Events numbered after ``seq`` still kept (the desk's and unknown clients'), oldest
        first; read from the newest back: what is new costs, not what is kept."""
        if self.last_seq <= seq:
            return []
        desk = _after(self._events, seq)
        unknown = _after(self._unknown, seq)
        if not unknown:
            return desk
        if not desk:
            return unknown
        return list(heapq.merge(desk, unknown, key=_number))

    def events(self) -> list[tuple[int, JournalEvent]]:
        """Every event kept, oldest first."""
        return list(heapq.merge(self._events, self._unknown, key=_number))

    async def wait(self, seq: int, timeout_s: float) -> bool:
        """Wait until an event after ``seq`` is recorded, at most ``timeout_s``; whether one was."""
        if self.last_seq > seq:
            return True
        changed = self._changed
        if changed is None:
            changed = self._changed = asyncio.get_running_loop().create_future()
        # asyncio.wait neither cancels the shared future on a timeout nor when cancelled itself
        done, _ = await asyncio.wait({changed}, timeout=timeout_s)
        return bool(done)


def _number(item: tuple[int, JournalEvent]) -> int:
    return item[0]
