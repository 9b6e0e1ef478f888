"""What the console shows, as msgspec Structs built from the engine's state.

Every number an operator reads is decimal text (:func:`otc.model.decimal_text`), never a float:
prices in the instrument's quote currency, sizes in base units, bps, times in ms since the
epoch (``ts_ms``) or ages in ms (``age_ms``). Builders read the books, the quote engine and the
:class:`~otc.console.activity.Activity`; none of them changes anything.

Views (``GET /api/...`` and the push stream, see :mod:`otc.console.app`):

* :class:`Depth`: cumulative depth per venue and consolidated over the usable venues;
* :class:`VenueHealth`: per venue feed state, update age, gaps, checksum failures, resyncs,
  reconnects, and each of its books' status in the consolidated view;
* :class:`BlotterRow`: one journal event (RFQ, quote, reject, accept, fill, accept reject,
  control) with its client and symbol; :class:`QuoteExplanation`: how a quote was priced;
* :class:`Overview`: controls (kill switches, tier spreads), venues, per-client limit usage,
  inventory per asset, P&L per instrument, markouts of recent fills and the count of unknown
  clients' events kept and dropped.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from decimal import Context, Decimal
from itertools import islice, takewhile
from typing import Any, Protocol

import msgspec

from otc.book import ConsolidatedBook, Exclusion, L2Book
from otc.config import Config, InstrumentConfig
from otc.console.activity import HORIZONS, Activity, markout_bps
from otc.journal import JournalEvent
from otc.market import venue_state
from otc.model import decimal_text, decimals_of, plain
from otc.protocol import Ladder
from otc.quoting import QuoteEngine

__all__ = [
    "BlotterRow",
    "Depth",
    "DepthSeries",
    "Overview",
    "QuoteExplanation",
    "VenueHealth",
]

_CTX = Context(prec=60)
_ZERO = Decimal(0)
_NS_PER_MS = 1_000_000
CONSOLIDATED = "consolidated"


class _View(msgspec.Struct, frozen=True, kw_only=True):
    """A console view: immutable, encoded as JSON objects with every field present."""


# -- depth -------------------------------------------------------------------------------------


class DepthSeries(_View, frozen=True, kw_only=True):
    """One venue's depth (or ``"consolidated"``): ``[price, cumulative size]`` from the touch
    outwards; ``included`` tells whether the venue is in the consolidated view now."""

    venue: str
    included: bool
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


class Depth(_View, frozen=True, kw_only=True):
    """Depth of one symbol: the consolidated series first, then each venue's."""

    symbol: str
    ts_ms: int
    best_bid: str | None
    best_ask: str | None
    mid: str | None
    series: list[DepthSeries]
    excluded: list[Exclusion]


def _cumulative(book: L2Book, levels: Iterable[tuple[int, int]]) -> list[tuple[str, str]]:
    scale = book.scale
    out = []
    total = 0
    for price, size in levels:
        total += size
        out.append((decimal_text(scale.price_text(price)), decimal_text(scale.size_text(total))))
    return out


def _merged(
    books: Sequence[L2Book], levels: int, bids: bool, scale_book: L2Book | None
) -> list[tuple[str, str]]:
    """Consolidated cumulative depth over ``books``' top ``levels`` levels, exact as far as it
    goes: it stops where the first truncated venue's levels end."""
    sizes: dict[int, int] = {}
    bound: int | None = None
    for book in books:
        rows = list(islice(book.bids() if bids else book.asks(), levels))
        for price, size in rows:
            sizes[price] = sizes.get(price, 0) + size
        if len(rows) == levels and rows:  # more beyond: nothing past its last level is complete
            last = rows[-1][0]
            if bound is None or (last > bound if bids else last < bound):
                bound = last
    prices = sorted(sizes, reverse=bids)
    if bound is not None:
        prices = [p for p in prices if (p >= bound if bids else p <= bound)]
    if scale_book is None:
        return []
    return _cumulative(scale_book, ((p, sizes[p]) for p in prices))


def depth(book: ConsolidatedBook, now_ns: int, *, levels: int = 50) -> Depth:
    """Cumulative depth of each venue's top ``levels`` levels per side, and of the venues the
    consolidated view uses at ``now_ns`` (raw prices, before fees)."""
    view = book.view(now_ns)
    included = [s.book for s in view.included.values()]
    first = next(iter(book.venues.values()), None)
    scale_book = first.book if first is not None else None
    series = [
        DepthSeries(
            venue=CONSOLIDATED,
            included=bool(included),
            bids=_merged(included, levels, True, scale_book),
            asks=_merged(included, levels, False, scale_book),
        )
    ]
    for name in sorted(book.venues):
        l2 = book.venues[name].book
        series.append(
            DepthSeries(
                venue=name,
                included=name in view.included,
                bids=_cumulative(l2, islice(l2.bids(), levels)),
                asks=_cumulative(l2, islice(l2.asks(), levels)),
            )
        )
    scale = book.scale

    def price(ticks: int | None) -> str | None:
        return None if ticks is None else decimal_text(scale.price_text(ticks))

    mid2 = view.mid2
    return Depth(
        symbol=book.symbol,
        ts_ms=now_ns // _NS_PER_MS,
        best_bid=price(view.best_bid),
        best_ask=price(view.best_ask),
        mid=None if mid2 is None else decimal_text(scale.price_text(mid2) / 2),
        series=series,
        excluded=view.excluded,
    )


def mid(book: ConsolidatedBook, now_ns: int) -> Decimal | None:
    """Mid of the usable venues' best bid and ask, ``None`` without both sides."""
    view = book.view(now_ns)
    mid2 = view.mid2
    return None if mid2 is None else book.scale.price_text(mid2) / 2


# -- venue health ------------------------------------------------------------------------------


class FeedHealthLike(Protocol):
    """What a feed connection's health report has (:class:`feeds.connection.FeedHealth`)."""

    @property
    def venue(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def age_ms(self) -> int | None: ...
    @property
    def gaps(self) -> int: ...
    @property
    def checksum_failures(self) -> int: ...
    @property
    def resyncs(self) -> int: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def malformed(self) -> int: ...
    @property
    def last_error(self) -> str: ...


class VenueBook(_View, frozen=True, kw_only=True):
    """A venue's book of one symbol: in the consolidated view or why not, sequence, age."""

    symbol: str
    included: bool
    reason: str
    detail: str
    sequence: int | None
    age_ms: int | None
    best_bid: str | None
    best_ask: str | None


class VenueHealth(_View, frozen=True, kw_only=True):
    """One venue: its feed's state and counters, and its books.

    ``state`` is the connection's (``connecting``, ``syncing``, ``live``, ``stale``, ``down``),
    ``stale`` as well for a live connection whose venue has a book left out as stale (messages
    keep coming, the book does not change), ``crossed`` for one whose venue has a book left out
    as crossed (see :func:`otc.market.venue_state`); with the
    synthetic market (``source`` ``"sim"``, no connection, counters 0) it is ``live``
    when every book of the venue is usable, else the first exclusion reason.
    """

    venue: str
    source: str
    state: str
    age_ms: int | None
    symbols_in_sync: int
    symbols: int
    gaps: int
    checksum_failures: int
    resyncs: int
    reconnects: int
    malformed: int
    last_error: str
    books: list[VenueBook]


def venue_health(
    books: dict[str, ConsolidatedBook], feeds: Sequence[FeedHealthLike], now_ns: int
) -> list[VenueHealth]:
    """Health of every venue of ``books``: from its feed connection's report when there is one
    (live feeds), else from its books alone (synthetic or replayed market)."""
    per_venue: dict[str, list[VenueBook]] = {}
    for symbol in sorted(books):
        consolidated = books[symbol]
        for name in sorted(consolidated.venues):
            l2 = consolidated.venues[name].book
            why = consolidated.exclusion(name, now_ns)
            scale = l2.scale
            per_venue.setdefault(name, []).append(
                VenueBook(
                    symbol=symbol,
                    included=why is None,
                    reason="" if why is None else why.reason,
                    detail="" if why is None else why.detail,
                    sequence=l2.sequence,
                    age_ms=(
                        consolidated.age_ns(l2, now_ns) // _NS_PER_MS if l2.ts_recv_ns else None
                    ),
                    best_bid=None
                    if l2.best_bid is None
                    else decimal_text(scale.price_text(l2.best_bid)),
                    best_ask=None
                    if l2.best_ask is None
                    else decimal_text(scale.price_text(l2.best_ask)),
                )
            )
    reports = {h.venue: h for h in feeds}
    out = []
    for name, venue_books in sorted(per_venue.items()):
        in_sync = sum(1 for b in venue_books if b.reason not in ("out_of_sync",))
        ages = [b.age_ms for b in venue_books if b.age_ms is not None]
        report = reports.get(name)
        if report is not None:
            out.append(
                VenueHealth(
                    venue=name,
                    source="feed",
                    state=venue_state(books.values(), name, report.state, now_ns),
                    age_ms=report.age_ms,
                    symbols_in_sync=in_sync,
                    symbols=len(venue_books),
                    gaps=report.gaps,
                    checksum_failures=report.checksum_failures,
                    resyncs=report.resyncs,
                    reconnects=report.reconnects,
                    malformed=report.malformed,
                    last_error=report.last_error,
                    books=venue_books,
                )
            )
            continue
        reasons = [b.reason for b in venue_books if b.reason]
        out.append(
            VenueHealth(
                venue=name,
                source="sim",
                state=reasons[0] if reasons else "live",
                age_ms=min(ages) if ages else None,
                symbols_in_sync=in_sync,
                symbols=len(venue_books),
                gaps=0,
                checksum_failures=0,
                resyncs=0,
                reconnects=0,
                malformed=0,
                last_error="",
                books=venue_books,
            )
        )
    return out


# -- blotter -----------------------------------------------------------------------------------


class BlotterRow(_View, frozen=True, kw_only=True):
    """One journal event as a blotter line. ``side`` is the client's; ``code``/``reason`` are a
    reject's; ``detail`` says what a control did; fields that do not apply are ``""``/``None``.
    ``unknown_client``: the event of a client id the config does not name (kept apart, a few
    only: see :class:`~otc.console.activity.Activity`)."""

    seq: int
    ts_ms: int
    kind: str
    client: str
    symbol: str
    side: str
    qty: str | None
    notional: str | None
    bid: str | None
    ask: str | None
    price: str | None
    code: str
    reason: str
    rfq_id: str
    quote_id: str
    trade_id: str
    operator: str
    detail: str
    unknown_client: bool


class QuoteExplanation(_View, frozen=True, kw_only=True):
    """A quote, its client's tier and, per side quoted (``bid``/``ask``), how it was priced: hedge
    VWAP and all-in, route per venue, spread, risk and skew terms, raw and final price, and the
    sequence and age of each venue's book (see :class:`otc.pricing.PriceExplanation`)."""

    quote_id: str
    rfq_id: str
    client: str
    ts_ms: int
    tier: str
    quote: dict[str, object]
    explanation: dict[str, object]


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def _control_detail(payload: dict[str, object]) -> str:
    action = payload.get("action")
    if action == "halt":
        what = payload.get("symbol") or "all symbols"
        return f"{what} {'halted' if payload.get('halted') else 'resumed'}"
    if action == "client_enabled":
        return "enabled" if payload.get("enabled") else "disabled"
    if action == "tier_spread":
        return f"tier {payload.get('tier')} spread {plain(payload.get('spread_bps'))} bps"
    if action == "position":
        return f"{payload.get('asset')} position set to {plain(payload.get('position'))}"
    return str(action)


class Blotter:
    """Blotter rows of an :class:`Activity`, built once per event, with the symbol of events
    that name none (accepts, rejects) taken from the RFQ or quote they refer to.

    Unknown clients' rows are kept apart, as many as the activity keeps of their events, so
    that a flood of them cannot push the desk's rows out (nor their RFQs' symbols)."""

    def __init__(self, activity: Activity, size: int = 2_000) -> None:
        self._activity = activity
        self._size = size
        self._rows: dict[int, BlotterRow] = {}
        self._unknown_rows: dict[int, BlotterRow] = {}
        self._quotes: dict[str, JournalEvent] = {}
        self._rfq_symbols: dict[tuple[str, str], str] = {}
        self._unknown_rfq_symbols: dict[tuple[str, str], str] = {}
        self._quote_symbols: dict[str, str] = {}
        self._seen = 0

    def _update(self) -> None:
        activity = self._activity
        for seq, event in activity.since(self._seen):
            unknown = activity.unknown(event.client)
            (self._unknown_rows if unknown else self._rows)[seq] = self._row(seq, event, unknown)
            self._seen = seq
        _trim(self._rows, self._size)
        _trim(self._unknown_rows, activity.unknown_size)
        _trim(self._quotes, self._size)
        _trim(self._quote_symbols, self._size)
        _trim(self._rfq_symbols, self._size)
        _trim(self._unknown_rfq_symbols, activity.unknown_size)

    def rows(
        self,
        *,
        after: int = 0,
        client: str | None = None,
        symbol: str | None = None,
        kinds: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[BlotterRow]:
        """Rows numbered after ``after``, oldest first, filtered; the newest ``limit`` of them.

        Rows after ``after`` are read from the newest back: a push stream, which asks for the
        few since its last, does not scan every row kept."""
        self._update()
        newer: Iterable[BlotterRow]
        if after:
            newer = heapq.merge(
                _newer(self._rows, after), _newer(self._unknown_rows, after), key=_seq
            )
        elif self._unknown_rows:
            newer = heapq.merge(self._rows.values(), self._unknown_rows.values(), key=_seq)
        else:
            newer = self._rows.values()
        rows = [
            row
            for row in newer
            if (not client or row.client == client)
            and (not symbol or row.symbol == symbol)
            and (not kinds or row.kind in kinds)
        ]
        return rows[-limit:] if limit else rows

    def explanation(self, quote_id: str) -> QuoteExplanation | None:
        self._update()
        event = self._quotes.get(quote_id)
        if event is None:
            return None
        payload = event.payload
        quote = plain(payload.get("quote", {}))
        explanation = plain(payload.get("explanation", {}))
        return QuoteExplanation(
            quote_id=event.quote_id,
            rfq_id=event.rfq_id,
            client=event.client,
            ts_ms=event.ts_ns // _NS_PER_MS,
            tier=str(payload.get("tier", "")),
            quote=quote if isinstance(quote, dict) else {},
            explanation=explanation if isinstance(explanation, dict) else {},
        )

    def _row(self, seq: int, event: JournalEvent, unknown: bool) -> BlotterRow:
        p = event.payload
        rfq_symbols = self._unknown_rfq_symbols if unknown else self._rfq_symbols
        fields: dict[str, object] = {}
        symbol = str(p.get("symbol") or "")
        if event.kind == "rfq":
            fields = {
                "side": str(p.get("side") or ""),
                "qty": _opt(p.get("qty")),
                "notional": _opt(p.get("notional")),
            }
            if "invalid" in p:
                fields["reason"] = str(p["invalid"])
            if symbol and event.rfq_id:
                rfq_symbols[(event.client, event.rfq_id)] = symbol
        elif event.kind == "quote":
            quote = p.get("quote")
            q: dict[str, object] = quote if isinstance(quote, dict) else {}
            symbol = str(q.get("symbol") or "")
            fields = {
                "side": str(q.get("side") or ""),
                "qty": _opt(q.get("qty")),
                "notional": _opt(q.get("notional")),
                "bid": _opt(q.get("bid")),
                "ask": _opt(q.get("ask")),
            }
            self._quotes[event.quote_id] = event
            self._quote_symbols[event.quote_id] = symbol
        elif event.kind in ("reject", "accept_reject"):
            fields = {"code": str(p.get("code") or ""), "reason": str(p.get("reason") or "")}
        elif event.kind == "accept":
            fields = {"side": str(p.get("side") or ""), "qty": _opt(p.get("qty"))}
            if "invalid" in p:
                fields["reason"] = str(p["invalid"])
        elif event.kind == "fill":
            fields = {
                "side": str(p.get("side") or ""),
                "qty": _opt(p.get("qty")),
                "price": _opt(p.get("price")),
            }
        elif event.kind == "control":
            fields = {"operator": str(p.get("operator") or ""), "detail": _control_detail(p)}
            if p.get("action") == "halt":
                symbol = str(p.get("symbol") or "")
        if not symbol and event.quote_id:
            symbol = self._quote_symbols.get(event.quote_id, "")
        if not symbol and event.rfq_id:
            symbol = rfq_symbols.get((event.client, event.rfq_id), "")
        return BlotterRow(
            seq=seq,
            ts_ms=event.ts_ns // _NS_PER_MS,
            kind=event.kind,
            client=event.client,
            symbol=symbol,
            side=str(fields.get("side", "")),
            qty=fields.get("qty"),  # type: ignore[arg-type]
            notional=fields.get("notional"),  # type: ignore[arg-type]
            bid=fields.get("bid"),  # type: ignore[arg-type]
            ask=fields.get("ask"),  # type: ignore[arg-type]
            price=fields.get("price"),  # type: ignore[arg-type]
            code=str(fields.get("code", "")),
            reason=str(fields.get("reason", "")),
            rfq_id=event.rfq_id,
            quote_id=event.quote_id,
            trade_id=event.trade_id,
            operator=str(fields.get("operator", "")),
            detail=str(fields.get("detail", "")),
            unknown_client=unknown,
        )


def _trim(index: dict[Any, Any], size: int) -> None:
    """Forget the oldest entries of ``index`` beyond ``size``."""
    while len(index) > size:
        del index[next(iter(index))]


def _seq(row: BlotterRow) -> int:
    return row.seq


def _newer(rows: dict[int, BlotterRow], after: int) -> list[BlotterRow]:
    """``rows`` (by number, in increasing order) numbered after ``after``, oldest first; read
    from the newest back."""
    backwards = map(rows.__getitem__, reversed(rows))
    return list(takewhile(lambda row: row.seq > after, backwards))[::-1]


# -- overview ----------------------------------------------------------------------------------


class Controls(_View, frozen=True, kw_only=True):
    """The operator controls in force: kill switches and spread per tier (bps)."""

    halted_all: bool
    halted_symbols: list[str]
    tier_spreads_bps: dict[str, str]


class BrokerLink(_View, frozen=True, kw_only=True):
    """The engine's broker connection: ``connected`` false while it reconnects."""

    connected: bool
    address: str
    reconnects: int


class ClientLimits(_View, frozen=True, kw_only=True):
    """A client's switch, tier and limit usage (notionals in the instruments' quote currency,
    the daily one over the UTC day; ``daily_used_pct`` of the daily limit)."""

    client: str
    enabled: bool
    tier: str
    spread_bps: str
    symbols: list[str]
    max_trade_notional: str
    max_daily_notional: str
    daily_notional: str
    daily_used_pct: str


class AssetInventory(_View, frozen=True, kw_only=True):
    """The desk's position in an asset (its units; positive: long) and its limit usage."""

    asset: str
    position: str
    limit: str | None
    used_pct: str | None


class InstrumentPnl(_View, frozen=True, kw_only=True):
    """Client flows in one instrument since start-up, marked to the consolidated mid:
    ``pnl = cash + position x mid``, in the quote currency (``None`` without a mid)."""

    symbol: str
    base: str
    quote: str
    position: str
    cash: str
    mid: str | None
    pnl: str | None


class FillMarkout(_View, frozen=True, kw_only=True):
    """A recent fill and its markout in bps from the desk's side (positive: the mid moved in
    our favour) at 1, 5, 30 and 60 s (``None`` until reached, and for good when there was no
    usable mid then) and against the mid now."""

    trade_id: str
    client: str
    symbol: str
    side: str
    qty: str
    price: str
    ts_ms: int
    markouts_bps: dict[str, str | None]
    now_bps: str | None


class UnknownClients(_View, frozen=True, kw_only=True):
    """Events of client ids the config does not name (possible on a broker without the
    shipped ACL): how many the console keeps (the newest) and how many it dropped since
    start-up. The journal has them all."""

    kept: int
    dropped: int


class Overview(_View, frozen=True, kw_only=True):
    """Everything the console shows but the depth, ladder and blotter."""

    ts_ms: int
    symbols: list[str]
    controls: Controls
    venues: list[VenueHealth]
    clients: list[ClientLimits]
    inventory: list[AssetInventory]
    pnl: list[InstrumentPnl]
    markouts: list[FillMarkout]
    unknown_clients: UnknownClients
    #: ``None`` when the console runs without an engine's broker connection (tests).
    broker: BrokerLink | None = None


def _pct(used: Decimal, limit: Decimal) -> str:
    return decimal_text(_CTX.divide(used * 100, limit).quantize(Decimal("0.01"), context=_CTX))


def _pnl_unit(inst: InstrumentConfig) -> Decimal:
    """What P&L in ``inst``'s quote currency is rounded to: the decimals of its tick, at
    least cents (0.01 USDT for BTC-USDT; 0.00001 BTC for an ETH-BTC ticking at 0.00001)."""
    return Decimal(1).scaleb(-max(2, decimals_of(str(inst.tick_size))))


def overview(
    config: Config,
    quotes: QuoteEngine,
    activity: Activity,
    venues: list[VenueHealth],
    mid_of: Callable[[str], Decimal | None],
    now_ns: int,
    broker: BrokerLink | None = None,
) -> Overview:
    spreads = quotes.tier_spreads
    clients = []
    for c in config.clients:
        used = quotes.daily_notional(c.id)
        clients.append(
            ClientLimits(
                client=c.id,
                enabled=quotes.client_enabled(c.id),
                tier=c.tier,
                spread_bps=decimal_text(spreads.get(c.tier, _ZERO)),
                symbols=list(c.symbols),
                max_trade_notional=decimal_text(c.max_trade_notional),
                max_daily_notional=decimal_text(c.max_daily_notional),
                daily_notional=decimal_text(used),
                daily_used_pct=_pct(used, c.max_daily_notional),
            )
        )
    positions = quotes.positions
    limits = config.inventory.limits
    assets: list[str] = []
    for inst in config.instruments:
        for asset in (inst.base, inst.quote):
            if asset not in assets:
                assets.append(asset)
    inventory = []
    for asset in assets:
        position = positions.get(asset, _ZERO)
        limit = limits.get(asset)
        inventory.append(
            AssetInventory(
                asset=asset,
                position=decimal_text(position),
                limit=None if limit is None else decimal_text(limit),
                used_pct=None if limit is None else _pct(abs(position), limit),
            )
        )
    pnl = []
    for inst in config.instruments:
        base, cash = activity.flows.get(inst.symbol, (_ZERO, _ZERO))
        m = mid_of(inst.symbol)
        pnl.append(
            InstrumentPnl(
                symbol=inst.symbol,
                base=inst.base,
                quote=inst.quote,
                position=decimal_text(base),
                cash=decimal_text(cash),
                mid=None if m is None else decimal_text(m),
                pnl=None
                if m is None
                else decimal_text(
                    (cash + _CTX.multiply(base, m)).quantize(_pnl_unit(inst), context=_CTX)
                ),
            )
        )
    markouts = []
    for item in activity.markouts:
        fill = item.fill
        now_mid = mid_of(fill.symbol)
        markouts.append(
            FillMarkout(
                trade_id=fill.trade_id,
                client=fill.client,
                symbol=fill.symbol,
                side=fill.side,
                qty=decimal_text(fill.qty),
                price=decimal_text(fill.price),
                ts_ms=fill.ts_ns // _NS_PER_MS,
                markouts_bps={
                    label: None if at is None else decimal_text(markout_bps(fill, at))
                    for label in HORIZONS
                    for at in (item.mids.get(label),)
                },
                now_bps=None if now_mid is None else decimal_text(markout_bps(fill, now_mid)),
            )
        )
    return Overview(
        ts_ms=now_ns // _NS_PER_MS,
        symbols=[inst.symbol for inst in config.instruments],
        controls=Controls(
            halted_all=quotes.halted(),
            halted_symbols=quotes.halted_symbols,
            tier_spreads_bps={k: decimal_text(v) for k, v in sorted(spreads.items())},
        ),
        venues=venues,
        clients=clients,
        inventory=inventory,
        pnl=pnl,
        markouts=markouts,
        unknown_clients=UnknownClients(
            kept=activity.unknown_kept, dropped=activity.unknown_dropped
        ),
        broker=broker,
    )


def ladder(quotes: QuoteEngine, symbol: str) -> Ladder | None:
    """The indicative ladder of ``symbol`` as the bus publishes it, priced now."""
    return quotes.indicative_ladder(symbol)
