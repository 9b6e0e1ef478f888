"""The engine's books: one :class:`~otc.book.ConsolidatedBook` per configured instrument.

:class:`Market` is built from the config (instruments with their book scale, venues with their
fees and symbol names) and is where book events land, whatever produced them: a live venue
adapter bound with :meth:`Market.bind`, or a :class:`~feeds.base.Feed` (replay, synthetic)
whose events are passed to :meth:`Market.apply`. A venue's book is excluded from its
consolidated view while it is out of sync, stale or crossed (see :mod:`otc.book`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from typing import Protocol

from otc.book import ConsolidatedBook, L2Book, apply_event
from otc.clock import Clock
from otc.config import Config
from otc.errors import OtcError
from otc.model import BookEvent, BookSnapshot

__all__ = ["BookSource", "Market", "venue_state"]


class BookSource(Protocol):
    """What :meth:`Market.bind` needs of a venue adapter: its books and sync notifications."""

    venue: str
    books: MutableMapping[str, L2Book]
    in_sync: MutableMapping[str, bool]
    on_sync_change: Callable[[str, bool, str], None] | None


class Market:
    """Consolidated books for every configured instrument, fed by venues.

    Args:
        config: instruments and venues; only enabled venues that list an instrument take part.
        clock: the engine's clock: books are stamped with its monotonic time as they receive,
            and their age (``max_book_age_ms``) is measured on it, so that a wall clock
            stepped back cannot make a stale book look fresh, nor one stepped forward make
            every book look stale. Without it (backtests, whose clock does not step), the age
            is measured on the wall times given.
    """

    def __init__(self, config: Config, *, clock: Clock | None = None) -> None:
        self.config = config
        self.books: dict[str, ConsolidatedBook] = {}
        monotonic = None if clock is None else clock.monotonic_ns
        for inst in config.instruments:
            consolidated = ConsolidatedBook(
                inst.symbol,
                inst.scale,
                max_book_age_ms=config.estimator.max_book_age_ms,
                monotonic=monotonic,
            )
            for venue in config.venues:
                if venue.enabled and inst.symbol in venue.symbols:
                    book = L2Book(venue.name, inst.symbol, inst.scale, monotonic=monotonic)
                    consolidated.add_venue(book, venue.fee, in_sync=False)
            self.books[inst.symbol] = consolidated

    def l2(self, venue: str, symbol: str) -> L2Book:
        """The book of ``symbol`` on ``venue``.

        Raises:
            OtcError: the instrument is not configured, or the venue does not list it.
        """
        try:
            return self.books[symbol].venues[venue].book
        except KeyError:
            raise OtcError(f"no book for {symbol} on {venue}") from None

    def venue_symbols(self, venue: str) -> dict[str, str]:
        """The venue's names for our instruments it lists: venue symbol -> our symbol."""
        for cfg in self.config.venues:
            if cfg.name == venue:
                return {theirs: ours for ours, theirs in cfg.symbols.items() if ours in self.books}
        raise OtcError(f"venue {venue} is not configured")

    def bind(self, source: BookSource) -> None:
        """Make a venue adapter write into our books and report its sync state to them."""
        for symbol, consolidated in self.books.items():
            state = consolidated.venues.get(source.venue)
            if state is not None:
                source.books[symbol] = state.book
                source.in_sync[symbol] = False

        def on_sync_change(symbol: str, in_sync: bool, detail: str) -> None:
            consolidated = self.books.get(symbol)
            if consolidated is not None and source.venue in consolidated.venues:
                consolidated.set_in_sync(source.venue, in_sync, detail)

        source.on_sync_change = on_sync_change

    def apply(self, event: BookEvent, symbol: str | None = None) -> None:
        """Apply one event from a feed; a snapshot brings the venue's book into sync.

        ``symbol`` is our instrument when the event names it by the venue's own symbol (a
        recording converted without a symbol map, a tardis CSV); default ``event.symbol``.
        Events for instruments or venues that are not configured are ignored.
        """
        consolidated = self.books.get(event.symbol if symbol is None else symbol)
        if consolidated is None:
            return
        state = consolidated.venues.get(event.venue)
        if state is None:
            return
        apply_event(state.book, event)
        if isinstance(event, BookSnapshot):
            consolidated.set_in_sync(event.venue, True)


def venue_state(books: Iterable[ConsolidatedBook], venue: str, feed_state: str, now_ns: int) -> str:
    """The state the status reports for ``venue``, whose feed connection says ``feed_state``.

    ``stale`` when the connection is ``live`` but a book of the venue is left out of its
    consolidated view as stale at ``now_ns`` (last updated longer than ``max_book_age_ms``
    ago): a venue repeating one update, or sending heartbeats only, keeps its connection live
    while its books freeze. ``crossed`` when one is left out because its best bid is at or
    above its best ask (a venue's own book: an update lost or misapplied, or the venue's own
    glitch). Otherwise ``feed_state`` as it is.
    """
    if feed_state != "live":
        return feed_state
    for consolidated in books:
        if venue in consolidated.venues:
            why = consolidated.exclusion(venue, now_ns)
            if why is not None and why.reason in ("stale", "crossed"):
                return why.reason
    return feed_state
