"""What every venue adapter shares: normalized book events, sync bookkeeping, checksums.

Data flow
---------
A venue adapter (:class:`VenueBookFeed` subclass, one module per venue) receives the venue's raw
messages (bytes, exactly as they came off the websocket or out of a recording), decodes them with
msgspec Structs straight to integer ticks and lots, applies them to one :class:`~otc.book.L2Book`
per symbol, and checks the venue's integrity rules after each message (sequence continuity,
CRC32 checksums). It returns the normalized :data:`BookEvent` s it applied, which the recorder
writes and the engine forwards.

Integrity failures raise :class:`SequenceGap` or :class:`ChecksumMismatch` (both
:class:`~otc.errors.FeedError`); before raising, the adapter marks the symbol out of sync and
counts the failure. A snapshot that does not parse or cannot be applied raises
:class:`MalformedSnapshot` (a :class:`~otc.errors.ValueParseError`), its symbol marked out of
sync the same way and its book left as it was (:meth:`VenueBookFeed.parse_snapshot`,
:meth:`VenueBookFeed.malformed_snapshot`). The connection layer answers all three by resyncing
(resubscribe, or a new REST snapshot); until a fresh snapshot arrives, further deltas for that
symbol are dropped and the book is excluded from the consolidated view. One message may put
several symbols out of sync (a message of many books): the error names the first, lists the
others in ``others`` and carries in ``applied`` the events the message did apply to other books
(see :class:`Resync`), so that the connection resyncs them all and forwards those events.

A message that does not even decode is lost as well. Where the venue numbers its messages, the
next one shows the loss as a gap; where nothing would (no sequence numbers, or a checksum over
the top levels only), the adapter reads what it can of the message to find the books it was
about and answers with :meth:`VenueBookFeed.lost_message`.

Symbols: adapters key books by *our* instrument symbol. ``symbols`` maps the venue's name
(``XBT/USD``) to ours (``BTC-USD``), and names the symbols the adapter *follows*: a message (or
an entry of a message of several books) about any other symbol the venue sends (a venue pushing
more than was asked, a loopback exchange replaying a wider session) is ignored before its levels
are parsed, counted in ``stats.unfollowed``: no book, no buffer, no snapshot request, no resync
(:meth:`VenueBookFeed.follows`). Without a map (``otc feeds verify`` and conversions of
recordings of arbitrary pairs) every symbol is followed, under the venue's own name.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import ClassVar, Protocol, runtime_checkable

import msgspec

from otc.book import L2Book, apply_event
from otc.errors import FeedError, ValueParseError
from otc.model import (  # _MAX_DIGITS: parse_fixed's range, which parse_levels keeps
    _MAX_DIGITS,
    BookDelta,
    BookEvent,
    BookSnapshot,
    Levels,
    Scale,
    decimal_text,
    parse_fixed,
    to_decimal,
)

__all__ = [
    "DEFAULT_SCALE",
    "BookDelta",
    "BookEvent",
    "BookSnapshot",
    "ChecksumMismatch",
    "Feed",
    "FeedStats",
    "LostUpdate",
    "MalformedSnapshot",
    "RequestRefused",
    "Resync",
    "SequenceGap",
    "VenueBookFeed",
    "apply_event",
    "crc32_signed",
    "crc32_unsigned",
    "level_texts",
    "parse_levels",
]

#: Resolution of books for symbols without configuration (enough for every recorded venue).
DEFAULT_SCALE = Scale(price_decimals=12, size_decimals=12)


@runtime_checkable
class Feed(Protocol):
    """Anything that produces normalized book events: a live venue connection, a replay of a
    recording, the synthetic market. The engine and the backtester consume only this."""

    def events(self) -> AsyncIterator[BookEvent]:
        """Events in order; the iterator ends when the source is exhausted (replays)."""
        ...


class Resync:
    """What the integrity errors share: the symbol they put out of sync, and what else the same
    message did.

    ``symbol`` is our symbol, marked out of sync before the error is raised. A message of several
    books may put more of them out of sync: ``others`` lists them, to be resynced as well. It may
    also have applied events to other books before the error is raised: ``applied`` holds them,
    for whoever forwards events (the recorder), in order. Both empty for a message of one book.
    """

    symbol: str
    others: tuple[str, ...] = ()
    applied: tuple[BookEvent, ...] = ()


class SequenceGap(Resync, FeedError):
    """A message does not follow the previous one: updates were lost; the book must resync."""

    def __init__(self, venue: str, symbol: str, expected: object, received: object) -> None:
        self.symbol = symbol
        self.expected = expected
        self.received = received
        super().__init__(venue, f"{symbol}: sequence gap, expected {expected}, got {received}")


class LostUpdate(SequenceGap):
    """An update that cannot be applied (it does not parse), on a feed where nothing would show
    its loss later (no sequence numbers, or a checksum over the top levels only): it counts as a
    gap, and the book must resync rather than carry on without it."""

    def __init__(self, venue: str, symbol: str, problem: str) -> None:
        FeedError.__init__(self, venue, f"{symbol}: update lost, it does not parse: {problem}")
        self.symbol = symbol
        self.expected = "an update that parses"
        self.received = problem


class ChecksumMismatch(Resync, FeedError):
    """Our book disagrees with the venue's checksum after a message; the book must resync."""

    def __init__(self, venue: str, symbol: str, expected: int, computed: int) -> None:
        self.symbol = symbol
        self.expected = expected
        self.computed = computed
        super().__init__(
            venue, f"{symbol}: checksum mismatch, venue sent {expected}, book gives {computed}"
        )


class RequestRefused(FeedError, ValueError):
    """The venue answered a request of ours (a subscription, an unsubscription...) with an
    error: a message of the protocol, not a fault of the book or of the feed.

    The connection logs it (``last_error``) and carries on; the symbols the request was for
    stay out of sync until a snapshot of theirs arrives. A ``ValueError`` as well, which is what
    the adapters raised for it before this class existed.
    """


class MalformedSnapshot(Resync, ValueParseError):
    """A venue snapshot that does not parse or cannot be applied (a level that is not a number,
    a price given twice on a side, a precision out of range...).

    Raised through :meth:`VenueBookFeed.malformed_snapshot`: the symbol is marked out of sync
    first and its book left as it was. Unlike another malformed message it must be answered:
    the venue sends snapshots only on (re)subscription, so the connection resyncs the symbol as
    after a :class:`SequenceGap`, or it would wait for one until the next reconnect.
    """

    def __init__(self, venue: str, symbol: str, problem: str) -> None:
        self.venue = venue
        self.symbol = symbol
        self.problem = problem
        super().__init__(f"{venue} {symbol}: malformed snapshot: {problem}")


class FeedStats(msgspec.Struct):
    """Counters of one adapter; what ``otc feeds verify`` prints and health reports.

    ``unfollowed`` counts the book messages (the entries, in a message of several books) about
    symbols the adapter does not follow, ignored unread (see :meth:`VenueBookFeed.follows`);
    ``ignored`` the other messages it had no use for (acks, other channels, stale repeats).
    """

    applied: int = 0
    snapshots: int = 0
    checksums_ok: int = 0
    checksums_failed: int = 0
    gaps: int = 0
    resyncs: int = 0
    dropped: int = 0
    ignored: int = 0
    unfollowed: int = 0


#: Decimals -> ``10 ** (decimals - k)`` for ``k`` in ``0..decimals``: the factor a value typed
#: with ``k`` decimals is scaled by (indexed by the length of its fraction).
_SCALE_FACTORS: dict[int, tuple[int, ...]] = {}


def _scale_factors(decimals: int) -> tuple[int, ...]:
    factors = _SCALE_FACTORS[decimals] = tuple(10 ** (decimals - k) for k in range(decimals + 1))
    return factors


def parse_levels(levels: Iterable[Sequence[str]], scale: Scale) -> Levels:
    """Venue ``[[price, size, ...], ...]`` decimal strings to (ticks, lots), without Decimal.

    The loop is the hot path of every adapter (over half of decode + apply on level-heavy
    messages), so it is written for the form venues send, ``"64000.12"``: the digits either
    side of the ``.`` are joined, checked at once (ASCII decimal digits, at most as many as
    :func:`~otc.model.parse_fixed` takes at that scale, so ``int`` cannot fail) and scaled by
    a precomputed power of ten; a size of exactly ``"0"`` (a delete) skips the parse. Any other
    text (exponents, signs, spaces, more decimals than the scale keeps but only trailing
    zeros...) goes through ``parse_fixed``, which decides: the values and the errors are those
    of ``parse_fixed`` on each text.

    Raises:
        ValueParseError: a price or size that is not a plain decimal within the scale, negative,
            a non-positive price, or a level without a price and a size.
    """
    pd, sd = scale.price_decimals, scale.size_decimals
    price_factors = _SCALE_FACTORS.get(pd) or _scale_factors(pd)
    size_factors = _SCALE_FACTORS.get(sd) or _scale_factors(sd)
    # Digits of a text that keep it within parse_fixed's range whatever its leading zeros.
    price_room, size_room = _MAX_DIGITS - pd, _MAX_DIGITS - sd
    out: Levels = []
    append = out.append
    for level in levels:
        try:
            whole, _, frac = level[0].partition(".")
            size_text = level[1]
        except IndexError:
            append(_parse_level(level, pd, sd))
            continue
        digits = whole + frac
        if (
            digits.isdecimal()
            and digits.isascii()
            and len(frac) <= pd
            and len(digits) <= price_room
            and (price := int(digits) * price_factors[len(frac)])
        ):
            if size_text == "0" and size_room >= 0:
                append((price, 0))
                continue
            whole, _, frac = size_text.partition(".")
            digits = whole + frac
            if (
                digits.isdecimal()
                and digits.isascii()
                and len(frac) <= sd
                and len(digits) <= size_room
            ):
                append((price, int(digits) * size_factors[len(frac)]))
                continue
        append(_parse_level(level, pd, sd))
    return out


def _parse_level(level: Sequence[str], price_decimals: int, size_decimals: int) -> tuple[int, int]:
    """One level the fast path of :func:`parse_levels` does not take, parsed or refused."""
    if len(level) < 2:
        raise ValueParseError(f"level {level!r} has no price and size")
    price_text, size_text = level[0], level[1]
    price = parse_fixed(price_text, price_decimals, what="price")
    size = parse_fixed(size_text, size_decimals, what="size")
    if price <= 0 or size < 0:
        raise ValueParseError(f"bad level [{price_text!r}, {size_text!r}]")
    return price, size


def level_texts(levels: Iterable[tuple[int, int]], scale: Scale) -> list[list[str]]:
    """(ticks, lots) back to ``[[price, size], ...]`` plain decimal strings (for encoders)."""
    pd, sd = scale.price_decimals, scale.size_decimals
    return [[decimal_text(to_decimal(p, pd)), decimal_text(to_decimal(s, sd))] for p, s in levels]


def crc32_unsigned(text: str) -> int:
    return zlib.crc32(text.encode("ascii")) & 0xFFFFFFFF


def crc32_signed(text: str) -> int:
    value = zlib.crc32(text.encode("ascii")) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


class VenueBookFeed:
    """Base of the venue adapters: books per symbol, sync state, counters.

    Subclasses declare the venue by class attributes and implement :meth:`on_message`.

    Args:
        symbols: venue symbol -> our symbol: the symbols followed (see :meth:`follows`). Empty
            or ``None``: every symbol the venue sends, under its venue name.
        scales: our symbol -> book scale (missing ones get :data:`DEFAULT_SCALE`).
    """

    venue: ClassVar[str]
    #: Public websocket endpoint.
    url: ClassVar[str]
    #: Seconds between application-level heartbeats (see :meth:`heartbeat_message`).
    heartbeat_interval_s: ClassVar[float] = 20.0

    def __init__(
        self,
        *,
        symbols: Mapping[str, str] | None = None,
        scales: Mapping[str, Scale] | None = None,
    ) -> None:
        self.symbols = dict(symbols or {})
        self.scales = dict(scales or {})
        self.books: dict[str, L2Book] = {}
        self.in_sync: dict[str, bool] = {}
        self.stats = FeedStats()
        #: Called with (symbol, in_sync, detail) whenever a symbol enters or leaves sync.
        self.on_sync_change: Callable[[str, bool, str], None] | None = None

    # -- helpers for subclasses ----------------------------------------------------------------

    def follows(self, venue_symbol: str) -> bool:
        """Whether the adapter keeps a book of ``venue_symbol``: one ``symbols`` maps, or any
        when ``symbols`` is empty.

        Adapters ask it as soon as a book message names its symbol, before parsing its levels,
        and skip the message (or the entry) when it says no, counting it in
        ``stats.unfollowed``: nothing of it reaches a book, a buffer, a checksum or a resync.
        """
        return not self.symbols or venue_symbol in self.symbols

    def our_symbol(self, venue_symbol: str) -> str:
        return self.symbols.get(venue_symbol, venue_symbol)

    def venue_symbol(self, symbol: str) -> str:
        """The venue's name for our ``symbol`` (inverse of :meth:`our_symbol`)."""
        for venue_name, ours in self.symbols.items():
            if ours == symbol:
                return venue_name
        return symbol

    def book(self, symbol: str) -> L2Book:
        """The book of our ``symbol``, created empty (and out of sync) on first use."""
        book = self.books.get(symbol)
        if book is None:
            book = L2Book(self.venue, symbol, self.scales.get(symbol, DEFAULT_SCALE))
            self.books[symbol] = book
            self.in_sync[symbol] = False
        return book

    def mark(self, symbol: str, in_sync: bool, detail: str = "") -> None:
        if self.in_sync.get(symbol) != in_sync:
            self.in_sync[symbol] = in_sync
            if self.on_sync_change is not None:
                self.on_sync_change(symbol, in_sync, detail)

    def fail(self, error: SequenceGap | ChecksumMismatch) -> SequenceGap | ChecksumMismatch:
        """Count ``error``, mark its symbol out of sync, and hand it back to be raised."""
        if isinstance(error, SequenceGap):
            self.stats.gaps += 1
        else:
            self.stats.checksums_failed += 1
        self.stats.resyncs += 1
        self.mark(error.symbol, False, str(error))
        return error

    def lost_update(self, symbol: str, problem: object) -> LostUpdate:
        """Count an update of our ``symbol`` that does not parse as a gap (see
        :class:`LostUpdate`), mark the symbol out of sync, and hand back the error to raise.

        For adapters whose feed would not show the loss by itself; where the next message's
        sequence number does, a malformed update can simply be refused.
        """
        error = LostUpdate(self.venue, symbol, str(problem))
        self.fail(error)
        return error

    def malformed_snapshot(self, symbol: str, problem: object) -> MalformedSnapshot:
        """Count a snapshot of our ``symbol`` that does not parse or cannot be applied (a resync
        follows), mark the symbol out of sync, and hand back the error to be raised.

        The caller must not have changed the book: it stays as it was, out of sync, until a
        good snapshot arrives.
        """
        error = MalformedSnapshot(self.venue, symbol, str(problem))
        self.stats.resyncs += 1
        self.mark(symbol, False, str(error))
        return error

    def lost_message(
        self, problem: Exception, books: Iterable[tuple[str, bool]] | None
    ) -> Exception:
        """The error to raise for a message that cannot be applied at all (it does not decode,
        or a part of it does not parse), on a feed where nothing would show its loss later.

        ``books`` are the books the message could be read to be about, as (our symbol, whether
        it brought a snapshot of it); ``None`` when it could not be read that far, so that any
        book in sync may have lost an update. Each book the message brought a snapshot for is
        resynced (:meth:`malformed_snapshot`; only followed symbols, see :meth:`follows`), each
        book in sync it updated is lost (:meth:`lost_update`). Returns the first one's error,
        naming the others (:class:`Resync`), or ``problem`` itself when no book is concerned:
        all were out of sync already (their updates would be dropped anyway).
        """
        if books is None:
            books = [(symbol, False) for symbol, in_sync in self.in_sync.items() if in_sync]
        snapshots: dict[str, bool] = {}  # our symbol -> the message brought a snapshot of it
        for symbol, snapshot in books:
            snapshots[symbol] = snapshots.get(symbol, False) or snapshot
        errors: list[LostUpdate | MalformedSnapshot] = []
        for symbol, snapshot in snapshots.items():
            if snapshot and self.follows(self.venue_symbol(symbol)):
                errors.append(self.malformed_snapshot(symbol, problem))
            elif self.in_sync.get(symbol):
                errors.append(self.lost_update(symbol, problem))
        if not errors:
            return problem
        first = errors[0]
        first.others = tuple(error.symbol for error in errors[1:])
        return first

    def parse_snapshot(
        self, symbol: str, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]]
    ) -> tuple[Levels, Levels]:
        """Both sides of a snapshot of our ``symbol`` through :func:`parse_levels`, at its
        book's scale.

        Raises:
            MalformedSnapshot: a level does not parse (see :meth:`malformed_snapshot`).
        """
        scale = (self.books.get(symbol) or self.book(symbol)).scale
        try:
            return parse_levels(bids, scale), parse_levels(asks, scale)
        except ValueParseError as exc:
            raise self.malformed_snapshot(symbol, exc) from None

    def replace_book(
        self,
        symbol: str,
        bids: Levels,
        asks: Levels,
        *,
        sequence: int | None = None,
        ts_event_ns: int = 0,
        ts_recv_ns: int = 0,
    ) -> L2Book:
        """Replace our ``symbol``'s book by a venue snapshot's levels; returns the book.

        Raises:
            MalformedSnapshot: the snapshot gives a price twice on a side (the only thing
                :func:`parse_levels` output can still get wrong); the book is unchanged and the
                symbol marked out of sync (see :meth:`malformed_snapshot`).
        """
        book = self.book(symbol)
        try:
            book.apply_snapshot(
                bids, asks, sequence=sequence, ts_event_ns=ts_event_ns, ts_recv_ns=ts_recv_ns
            )
        except ValueError as exc:
            raise self.malformed_snapshot(symbol, exc) from None
        return book

    def apply_snapshot(self, event: BookSnapshot) -> None:
        """Apply a snapshot and mark its symbol in sync.

        Raises:
            MalformedSnapshot: see :meth:`replace_book`.
        """
        self.replace_book(
            event.symbol,
            event.bids,
            event.asks,
            sequence=event.sequence,
            ts_event_ns=event.ts_event_ns,
            ts_recv_ns=event.ts_recv_ns,
        )
        self.stats.snapshots += 1
        self.stats.applied += 1
        self.mark(event.symbol, True)

    def apply_delta(self, event: BookDelta) -> None:
        apply_event(self.book(event.symbol), event)
        self.stats.applied += 1

    # -- the adapter's job ---------------------------------------------------------------------

    def subscribe_messages(self, venue_symbols: Iterable[str]) -> list[bytes]:
        """The messages to send after connecting to subscribe to ``venue_symbols``' books."""
        raise NotImplementedError

    def heartbeat_message(self) -> bytes | None:
        """Application-level ping the venue expects every ``heartbeat_interval_s`` (or None)."""
        return None

    def resubscribe_messages(self, venue_symbol: str) -> list[bytes] | None:
        """Messages that make the venue send a fresh snapshot of one symbol.

        ``None`` (the default) means the venue cannot resync a single symbol that way; the
        connection is reopened instead (or a REST snapshot fetched, see
        :meth:`pending_snapshots`).
        """
        return None

    def pending_snapshots(self) -> list[str]:
        """Venue symbols waiting for a REST snapshot (venues that sync from one)."""
        return []

    def snapshot_url(self, venue_symbol: str, *, base: str | None = None) -> str:
        """The REST URL of a depth snapshot of ``venue_symbol`` (``base`` overrides the host)."""
        raise NotImplementedError(f"{self.venue} does not sync from REST snapshots")

    def snapshot_message(self, symbol: str) -> bytes:
        """The venue's own snapshot message for our ``symbol``'s current book.

        The loopback exchange answers (re)subscriptions with it, so it must be what the venue
        would send: same format, same sequence fields, and a checksum the adapter accepts.
        """
        raise NotImplementedError(f"{self.venue}: no snapshot encoder")

    def stamp(self, data: bytes, sequence: int) -> bytes:
        """A recorded message as sent as the ``sequence``-th (from 0) message of a connection.

        The identity for most venues; a venue that numbers messages per connection (Coinbase)
        rewrites the number, so that a loopback exchange can replay a recording on a new
        connection faithfully.
        """
        return data

    def rest_snapshot_body(self, symbol: str) -> bytes:
        """The venue's REST depth snapshot body for our ``symbol`` (snapshot-synced venues)."""
        raise NotImplementedError(f"{self.venue} does not sync from REST snapshots")

    def on_rest(self, url: str, data: bytes, ts_recv_ns: int) -> list[BookEvent]:
        """A REST response (a depth snapshot) for venues that sync from one; others ignore it."""
        self.stats.ignored += 1
        return []

    def on_message(self, data: bytes, ts_recv_ns: int) -> list[BookEvent]:
        """Decode, apply and check one raw message; return the events applied.

        Raises:
            SequenceGap: continuity broken; the symbol is marked out of sync first.
            ChecksumMismatch: book disagrees with the venue's checksum; marked out of sync first.
            MalformedSnapshot: a snapshot does not parse or cannot be applied; its symbol is
                marked out of sync first and its book left as it was.
            msgspec.DecodeError / ValidationError: the message is malformed.
            ValueParseError: a value in it does not parse.
            RequestRefused: the message is the venue's error answer to a request of ours.
        """
        raise NotImplementedError
