"""The RFQ service: requests for quote in, firm quotes out; accepts in, fills out, exactly once.

:class:`QuoteEngine` is transport-free: the bus hands it ``(client, payload)`` pairs from
``otc/v1/{client}/rfq`` and ``otc/v1/{client}/accept``, and publishes the :class:`Outgoing`
messages it returns. Every reply goes to the asking client's own ``quotes`` or ``fills`` topic
(the ``client`` argument is the only source of the topic), so no client ever sees another's
traffic. It never raises for bad input: every malformed or refused message gets a reject with a
code (:class:`otc.protocol.Code`) and a reason naming the problem.

RFQ checks, in order (the first that fails decides the reject code):

1. payload: JSON, types, fields, sizes (``INVALID_MESSAGE``, ``INVALID_SIDE``, ``INVALID_QTY``);
2. client known (``UNKNOWN_CLIENT``) and enabled (``CLIENT_DISABLED``);
3. rate limit, a token bucket per client (``RATE_LIMITED``);
4. ``rfq_id`` not used by this client within ``duplicate_window_ms`` (``DUPLICATE_RFQ_ID``);
   an id counts as used once its RFQ got this far, whatever the outcome;
5. symbol configured (``UNKNOWN_SYMBOL``) and allowed for the client (``SYMBOL_NOT_ALLOWED``);
   a ``qty`` must be a whole number of lots (``INVALID_QTY``);
6. kill switch, global or for the symbol (``MARKET_HALTED``);
7. market usable: at least one healthy venue (not stale, crossed or out of sync) and both sides
   present (``MARKET_UNAVAILABLE``, with each venue's exclusion reason);
8. size: more than ``max_qty_depth_factor`` x the visible depth is absurd (``INVALID_QTY``);
   beyond visible depth is ``NO_LIQUIDITY`` unless the impact model is enabled and the
   instrument has one;
9. limits (``LIMIT_EXCEEDED``): per-trade notional, the client's daily notional (UTC day,
   filled trades plus this one), the desk's inventory per asset (a trade may always reduce a
   position, but not turn it into one beyond the limit on the other side). For a two-way
   quote, each side must pass.

Accept checks: payload; the quote exists *for this client* (``UNKNOWN_QUOTE``: another client's
quote is unknown too); a filled quote returns the same fill to the same accept (same quote,
side and qty) and ``ALREADY_FILLED`` to any other; the quote was recorded by the journal
(``INTERNAL_ERROR`` if its write failed); ``EXPIRED`` after ``valid_until``; side (required for
two-way) and qty (at most the quoted, whole lots); client enabled, kill switch and limits again;
the optional last look. A quote fills at most once: concurrent accepts of one quote queue on the
quote's lock, and the fill is returned only after the journal committed it.

Broker expiry (MQTT 5). A quote is published with a Message Expiry Interval: the validity it
has left when it is made, rounded UP to whole seconds (MQTT's unit), so that the broker never
drops a quote the engine would still fill, and a client session that was offline (persistent,
QoS 1) is not handed, on reconnecting, a quote long expired. Rounding up means a quote may
still be delivered after its ``valid_until_ms`` (a 1.5 s quote lives 2 s in the broker, and a
broker that counts whole seconds, as mosquitto does, may keep it up to one more): the client
must check ``valid_until_ms``, and the engine refuses a late accept (``EXPIRED``) anyway. RFQ
rejects carry no validity and do not expire; nor do fills and accept rejects: a client must
always learn the outcome of its accept.

Journal and durability. Every RFQ, quote (with its :class:`~otc.pricing.PriceExplanation`),
reject, accept, fill and accept reject is journaled, as are the runtime controls (``control``,
with the operator), all through the journal's one ordered queue:

* RFQs, quotes, rejects, accepts and accept rejects are *submitted*
  (:meth:`~otc.journal.Journal.submit`): queued in order, and the reply is returned without
  waiting for their commit (a quote is not a trade; waiting would add a commit and an fsync to
  every quote). A crash in the few milliseconds before their group commit loses them; a write
  that fails is logged and counted by the journal, and a quote whose write failed cannot be
  filled (``INTERNAL_ERROR``). A failure the journal reports at once (a closed journal, an
  error already on the receipt) makes the reply an ``INTERNAL_ERROR`` reject, and the quote
  is then forgotten (never published, it cannot be accepted).
* A fill is handed to the journal at once (:meth:`~otc.journal.Journal.submit`, ``urgent``)
  and returned only once it is committed. An accept cancelled meanwhile (its broker
  connection lost) leaves the fill to the journal: the quote is filled if it commits, the
  booking undone if not, and a repeated accept waits for that. The journal commits in queue
  order, so by then the quote and the accept it
  answers are committed too. An accept of a quote whose commit is still pending is appended
  as well, which commits the quote at once, so that the fill is decided on a quote known to
  be on disk without waiting for the journal's next group commit. A journal error fills
  nothing: the accept gets ``INTERNAL_ERROR`` and may be repeated.
* A journal error never stops the engine: the RFQ or accept it hit is refused
  ``INTERNAL_ERROR`` (logged), and the next message is served as usual (the journal carries on
  with later events).
* Controls are synchronous; their events are appended by :meth:`QuoteEngine.flush_controls`
  (await it after a control) and at the latest before the next RFQ or accept is handled.

Restarts: :meth:`QuoteEngine.restore` rebuilds, before the first message, what earlier runs
left in the journal (positions, today's notionals, kill switches, disabled clients, remembered
quotes with their fills, recent rfq ids), so exactly-once and the limits hold across a restart.

Memory is bounded: quotes are forgotten ``quote_memory_ms`` after they expire and rfq ids after
``duplicate_window_ms`` (:meth:`QuoteEngine.prune`, called on every RFQ); per-client state
exists only for configured clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable
from decimal import Context, Decimal
from typing import Final, TypeVar

import msgspec

from otc.book import BookView
from otc.clock import Clock
from otc.config import ClientConfig, Config, InstrumentConfig
from otc.errors import InsufficientDepth, OtcError, QuoteError
from otc.journal import Journal, JournalError, JournalEvent, JournalRow, Receipt
from otc.market import Market
from otc.model import BPS_DENOMINATOR, Side, decimal_text, parse_fixed, to_decimal
from otc.pricing import (
    BookState,
    PriceExplanation,
    RiskPremium,
    hedge_all_in,
    inventory_skew_bps,
    lots_down,
    price_from_estimate,
    price_walk,
    size_premium_bps,
    volatility_premium_bps,
)
from otc.protocol import (
    FILLS_TOPIC,
    LADDER_TOPIC,
    MAX_PAYLOAD_BYTES,
    QUOTES_TOPIC,
    Accept,
    AcceptReject,
    Code,
    Fill,
    Ladder,
    LadderBand,
    Outgoing,
    ParsedAccept,
    ParsedRfq,
    ProtocolError,
    Quote,
    Reject,
    Rfq,
    check_accept,
    check_rfq,
    decode_accept,
    decode_rfq,
    encode,
)
from otc.slippage import SlippageEstimate, Walk, estimate

__all__ = [
    "ClientRecord",
    "ControlRecord",
    "HaltRecord",
    "Outgoing",
    "PositionRecord",
    "QuoteEngine",
    "Restored",
    "SpreadRecord",
    "read_control",
]

T = TypeVar("T")
M = TypeVar("M", Rfq, Accept)

log = logging.getLogger(__name__)

_NS_PER_MS = 1_000_000
#: Levels per venue one step of a ladder may add to the consolidated book (bounds its time).
_LADDER_CHUNK: Final = 32
_NS_PER_S = 1_000_000_000
_NS_PER_DAY = 86_400 * _NS_PER_S
_CTX = Context(prec=60)
_ZERO = Decimal(0)
_SIDES = {"buy": Side.BUY, "sell": Side.SELL}


class _IdOnly(msgspec.Struct):
    """What is salvaged from an invalid message to address its reject."""

    rfq_id: object = None
    quote_id: object = None


_salvage_decoder = msgspec.json.Decoder(_IdOnly)


def _salvage(payload: bytes, field: str) -> str:
    """The ``rfq_id``/``quote_id`` of an invalid message when it has a usable one, else ``""``."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return ""
    try:
        value = getattr(_salvage_decoder.decode(payload), field)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return ""
    return _usable_id(value)


def _usable_id(value: object) -> str:
    return value if isinstance(value, str) and 0 < len(value) <= 64 else ""


def _journal_form(message: msgspec.Struct | ProtocolError, payload: bytes) -> dict[str, object]:
    """A client message as journal builtins: its fields when it decoded (``message``), else
    why not, with its raw text."""
    if isinstance(message, ProtocolError):
        head = payload[:MAX_PAYLOAD_BYTES].decode("utf-8", "replace")
        return {"invalid": message.reason, "raw": head, "size_bytes": len(payload)}
    return {k: v for k, v in msgspec.structs.asdict(message).items() if v is not None}


def _decoded(decode: Callable[[bytes], M], payload: bytes) -> M | ProtocolError:
    """The decoded message, or why it is not one (both are journaled)."""
    try:
        return decode(payload)
    except ProtocolError as exc:
        return exc


class _Quote(msgspec.Struct, kw_only=True, gc=False):
    """A quote the engine stands by until it expires, and its fill once accepted.

    Tens of thousands are remembered at a time (``quote_memory_ms``), so a quote keeps only what
    an accept needs: the hedge cost of each side (for the last look) rather than the whole
    explanation, which is in the journal. ``gc=False``: the cyclic garbage collector does not
    track quotes, so its full collections need not walk them all (a quote is freed by reference
    counting; the one cycle it can be in, with its receipt's done callback, is broken when the
    receipt completes).
    """

    quote_id: str
    client: str
    rfq_id: str
    symbol: str
    side: str
    qty: Decimal
    bid: Decimal | None
    ask: Decimal | None
    valid_until_ns: int
    #: The same deadline on the monotonic clock (``Clock.monotonic_ns``): an accept after
    #: either is expired, so a wall clock stepped back cannot stretch the quote's lifetime.
    deadline_mono_ns: int
    #: ``hedge_all_in`` of each side quoted (the last look compares against it).
    hedge_bid: Decimal | None
    hedge_ask: Decimal | None
    notional: Decimal | None
    fill: Fill | None = None
    fill_key: tuple[str, Decimal] | None = None
    lock: asyncio.Lock | None = None
    #: The journal's receipt for the quote event while it is not committed (``None`` once it
    #: is); kept when the write failed, so that the quote cannot be filled.
    journaled: Receipt | None = None
    #: A fill still being written after its accept was cancelled (the next accept waits).
    writing: _FillWrite | None = None

    def recorded(self, receipt: Receipt) -> None:
        """Done callback of :attr:`journaled`: forget a receipt that succeeded."""
        if not receipt.cancelled() and receipt.exception() is None:
            self.journaled = None


class _FillWrite(msgspec.Struct, kw_only=True, gc=False):
    """A fill handed to the journal whose accept was cancelled before the journal decided:
    the quote is filled if it commits, and what it booked is undone if it fails."""

    receipt: Receipt
    fill: Fill
    key: tuple[str, Decimal]
    changes: dict[str, Decimal]
    client: _Client
    notional: Decimal
    day: int
    settled: bool = False


class _Client:
    """Runtime state of a configured client: switch, rate-limit bucket, ids, daily notional."""

    __slots__ = ("config", "daily", "enabled", "refilled_ns", "rfq_ids", "tokens")

    def __init__(self, config: ClientConfig, tokens: int, mono_ns: int) -> None:
        self.config = config
        self.enabled = config.enabled
        #: Token bucket level in token-nanoseconds per second (one RFQ costs ``_NS_PER_S``).
        self.tokens = tokens
        #: When the bucket was last refilled, on the monotonic clock.
        self.refilled_ns = mono_ns
        #: rfq_id -> when it was first seen, on the monotonic clock (insertion order = time
        #: order).
        self.rfq_ids: dict[str, int] = {}
        #: Notional filled per UTC day (day number -> notional), the latest two days: accepts
        #: are handled concurrently, so one that arrived just before midnight may be checked
        #: and booked after one that arrived just after it, and must count on its own day.
        self.daily: dict[int, Decimal] = {}

    def used_on(self, day: int) -> Decimal:
        return self.daily.get(day, _ZERO)

    def add_notional(self, day: int, notional: Decimal) -> None:
        self.daily[day] = self.daily.get(day, _ZERO) + notional
        if len(self.daily) > 2:
            latest = max(self.daily)
            for old in [d for d in self.daily if d < latest - 1]:
                del self.daily[old]


class Restored(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`QuoteEngine.restore` rebuilt from a previous run's journal."""

    #: Fills folded into the positions and daily notionals; those of symbols no longer
    #: configured (their assets unknown) are counted in ``skipped_fills`` instead.
    fills: int = 0
    skipped_fills: int = 0
    #: The desk's position per asset (non-zero ones).
    positions: dict[str, Decimal] = {}
    #: Each client's notional filled today (UTC), where not zero.
    daily_notional: dict[str, Decimal] = {}
    halted_all: bool = False
    halted: list[str] = []
    #: Clients a control disabled (and none re-enabled since).
    disabled: list[str] = []
    #: Quotes still remembered (``quote_memory_ms`` after expiry), and how many were filled.
    quotes: int = 0
    filled_quotes: int = 0
    #: RFQ ids still within ``duplicate_window_ms``.
    rfq_ids: int = 0

    @property
    def anything(self) -> bool:
        return bool(
            self.fills
            or self.positions
            or self.halted_all
            or self.halted
            or self.disabled
            or self.quotes
            or self.rfq_ids
        )


class _ControlRecord(msgspec.Struct, frozen=True, kw_only=True, tag_field="action"):
    """A journaled ``control`` event's payload, as :meth:`QuoteEngine._control` writes it; the
    ``action`` field tells which (the client of ``client_enabled`` is the event's)."""

    operator: str = ""


class HaltRecord(_ControlRecord, frozen=True, tag="halt"):
    symbol: str | None  # None: the global kill switch
    halted: bool


class ClientRecord(_ControlRecord, frozen=True, tag="client_enabled"):
    enabled: bool


class SpreadRecord(_ControlRecord, frozen=True, tag="tier_spread"):
    tier: str
    spread_bps: Decimal


class PositionRecord(_ControlRecord, frozen=True, tag="position"):
    asset: str
    position: Decimal


ControlRecord = HaltRecord | ClientRecord | SpreadRecord | PositionRecord
_CONTROL_ACTIONS: Final = frozenset(
    cls.__struct_config__.tag for cls in (HaltRecord, ClientRecord, SpreadRecord, PositionRecord)
)


def read_control(payload: dict[str, object]) -> ControlRecord:
    """The typed payload of a journaled control event.

    Raises:
        ValueError: an action the engine does not write (a halt that would be silently
            dropped), or a decimal that is not as the engine writes it.
        msgspec.ValidationError: a payload of a known action that is not as the engine
            writes it.
    """
    action = payload.get("action")
    if action not in _CONTROL_ACTIONS:
        raise ValueError(f"action {action!r} is not a control the engine writes")
    for field in ("position", "spread_bps"):
        if field in payload:
            journaled_decimal(payload[field], field, signed=field == "position")
    record: ControlRecord = msgspec.convert(payload, ControlRecord)
    return record


def journaled_decimal(text: object, field: str, *, signed: bool = False) -> Decimal:
    """A price, size, position or spread as the engine journals it: decimal text (``str()`` of
    a ``Decimal``), finite, below 1e30 in magnitude, positive unless ``signed``.

    ``Decimal()`` alone would take ``"NaN"``, ``"1_0"`` and any script's digits.

    Raises:
        ValueError: naming ``field`` and the problem.
    """
    if not isinstance(text, str) or not text.isascii() or "_" in text or text != text.strip():
        raise ValueError(f"{field} {text!r} is not decimal text")
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise ValueError(f"{field} {text!r} is not a number") from None
    if not value.is_finite() or (value and value.adjusted() >= 30):
        raise ValueError(f"{field} {text!r} is not a finite decimal below 1e30")
    if not signed and value <= 0:
        raise ValueError(f"{field} {text!r} is not positive")
    return value


class _Trade(msgspec.Struct, frozen=True):
    """An accept that passed every check, about to be booked."""

    client: _Client
    inst: InstrumentConfig
    side: Side
    qty: Decimal
    price: Decimal
    day: int  # the UTC day (number) the accept arrived on, which its notional counts on


class _Context(msgspec.Struct, frozen=True, gc=False):
    """The instrument, book view, tier spread, inventory skew (bps) and book states that every
    side of one RFQ, or of one ladder, is priced with."""

    inst: InstrumentConfig
    view: BookView
    spread: Decimal
    skew: Decimal
    books: dict[str, BookState]


class QuoteEngine:
    """Prices RFQs into firm quotes and turns accepts into fills, exactly once.

    Args:
        config: instruments, tiers, risk, inventory, clients and quoting settings.
        market: the consolidated books quotes are priced from.
        journal: where every event is recorded, in order; ``append`` must return once the event
            is durable, ``submit`` once it is queued (see the module docstring).
        clock: decides staleness, expiry, rate limits and timestamps.
        run_id: prefix of quote and trade ids (random by default), unique per run.
    """

    def __init__(
        self,
        config: Config,
        market: Market,
        journal: Journal,
        clock: Clock,
        *,
        run_id: str | None = None,
    ) -> None:
        self.config = config
        self.market = market
        self._journal = journal
        self._clock = clock
        self._run = run_id if run_id is not None else uuid.uuid4().hex[:10]
        self._quote_ids = itertools.count(1)
        self._trade_ids = itertools.count(1)
        q = config.quoting
        self._ttl_ns = q.quote_ttl_ms * _NS_PER_MS
        self._memory_ns = q.quote_memory_ms * _NS_PER_MS
        self._duplicate_ns = q.duplicate_window_ms * _NS_PER_MS
        self._bucket_size = q.rate_limit_burst * _NS_PER_S
        self._instruments = {inst.symbol: inst for inst in config.instruments}
        self._tier_spread = {name: tier.spread_bps for name, tier in config.tiers.items()}
        mono = clock.monotonic_ns()
        self._clients = {c.id: _Client(c, self._bucket_size, mono) for c in config.clients}
        self._quotes: dict[str, _Quote] = {}
        self._halted_all = False
        self._halted: set[str] = set()
        self._positions: dict[str, Decimal] = {}
        #: The inventory skew by base asset, with the position it was computed for.
        self._skews: dict[str, tuple[Decimal, Decimal]] = {}
        risk = config.risk
        #: The volatility part of the risk premium depends on the instrument only.
        self._volatility_bps = {
            inst.symbol: volatility_premium_bps(
                risk.volatility_coefficient,
                (
                    inst.impact.daily_volatility_bps
                    if inst.impact is not None
                    else risk.default_daily_volatility_bps
                ),
                risk.hedge_latency_ms,
            )
            for inst in config.instruments
        }
        self._controls: deque[JournalEvent] = deque()
        self._control_lock = asyncio.Lock()
        self._ladder_keys: dict[str, object] = {}
        #: The latest UTC day a message arrived on (:meth:`_today`).
        self._day = clock.now_ns() // _NS_PER_DAY

    # -- read-only state ----------------------------------------------------------------------

    @property
    def positions(self) -> dict[str, Decimal]:
        """The desk's position per asset from client fills (a copy; positive: long)."""
        return dict(self._positions)

    def daily_notional(self, client: str) -> Decimal:
        """Notional the client has traded today (the UTC day, which never goes back: see
        :meth:`_today`)."""
        state = self._clients.get(client)
        return _ZERO if state is None else state.used_on(self._today(self._clock.now_ns()))

    def _today(self, now_ns: int) -> int:
        """The UTC day (number) a message arriving at ``now_ns`` counts on: the wall clock's,
        except that it never goes back. A clock stepped back across midnight would otherwise
        hand every client the day before's headroom again, on top of the new day's."""
        day = now_ns // _NS_PER_DAY
        if day > self._day:
            self._day = day
        return self._day

    def halted(self, symbol: str | None = None) -> bool:
        """Whether ``symbol`` (``None``: everything) is halted by a kill switch."""
        return self._halted_all or (symbol is not None and symbol in self._halted)

    @property
    def halted_symbols(self) -> list[str]:
        """Symbols halted by their own kill switch (the global one: ``halted()``), sorted."""
        return sorted(self._halted)

    @property
    def tier_spreads(self) -> dict[str, Decimal]:
        """Spread per tier in bps, as in force now (a copy)."""
        return dict(self._tier_spread)

    def client_enabled(self, client: str) -> bool:
        """Whether a configured client may trade (``False`` for an unknown one)."""
        state = self._clients.get(client)
        return state is not None and state.enabled

    @property
    def open_quotes(self) -> int:
        """Quotes remembered (live, filled or recently expired); bounded by :meth:`prune`."""
        return len(self._quotes)

    # -- RFQ ----------------------------------------------------------------------------------

    async def on_rfq(self, client: str, payload: bytes) -> list[Outgoing]:
        """Handle a message from ``otc/v1/{client}/rfq``: a Quote or a Reject, to that client.

        The RFQ and its outcome are submitted to the journal, in that order, and the reply is
        returned once they are queued, without waiting for their commit. A journal error known
        by then (or a control that could not be journaled) makes the reply an
        ``INTERNAL_ERROR`` reject, and the quote is forgotten (never published, it cannot be
        accepted); the engine carries on.
        """
        try:
            return await self._serve_rfq(client, payload)
        except JournalError as exc:
            log.error("rfq from %s refused, the journal failed: %s", client, exc)
            rfq_id = _salvage(payload, "rfq_id")
            reject = Reject(
                rfq_id=rfq_id,
                code=Code.INTERNAL_ERROR.value,
                reason="the journal could not record the RFQ: no quote was made",
            )
            event = self._answer_event(client, "reject", reject, rfq_id=rfq_id)
            with contextlib.suppress(JournalError):  # as far as it can (it logs a failure)
                await self._submit(event)
            return [Outgoing(QUOTES_TOPIC.format(client=client), encode(reject))]

    async def _serve_rfq(self, client: str, payload: bytes) -> list[Outgoing]:
        arrived = self._clock.now_ns()
        mono = self._clock.monotonic_ns()
        if self._controls:
            await self.flush_controls()
        self.prune(mono)
        wire = _decoded(decode_rfq, payload)
        rfq_id = _usable_id(wire.rfq_id) if isinstance(wire, Rfq) else _salvage(payload, "rfq_id")
        received = JournalEvent(
            "rfq", client, arrived, rfq_id=rfq_id, payload=_journal_form(wire, payload)
        )
        topic = QUOTES_TOPIC.format(client=client)
        try:
            quote, explanations = self._quote(client, wire, arrived, mono)
        except ProtocolError as exc:
            code, reason = exc.code, exc.reason
        except Exception:  # a bug must not take the service down: reject, log
            log.exception("rfq from %s could not be priced", client)
            code, reason = Code.INTERNAL_ERROR, "internal error"
        else:
            message = Quote(
                rfq_id=quote.rfq_id,
                quote_id=quote.quote_id,
                symbol=quote.symbol,
                side=quote.side,
                qty=decimal_text(quote.qty),
                bid=None if quote.bid is None else decimal_text(quote.bid),
                ask=None if quote.ask is None else decimal_text(quote.ask),
                valid_until_ms=quote.valid_until_ns // _NS_PER_MS,
                notional=None if quote.notional is None else decimal_text(quote.notional),
            )
            quoted = JournalEvent(
                "quote",
                client,
                arrived,
                rfq_id=quote.rfq_id,
                quote_id=quote.quote_id,
                payload={
                    "quote": msgspec.to_builtins(message),
                    "tier": self._clients[client].config.tier,
                    # The structs themselves: the journal converts them (off the quote path)
                    # and writes every Decimal as plain text.
                    "explanation": explanations,
                },
            )
            self._quotes[quote.quote_id] = quote
            try:
                receipt = await self._submit(received, quoted)
            except BaseException:
                self._quotes.pop(quote.quote_id, None)  # never published: nobody can accept it
                self._free_rfq_id(client, quote.rfq_id, mono)  # nothing was quoted
                raise
            if not receipt.done():
                quote.journaled = receipt
                receipt.add_done_callback(quote.recorded)
            # The broker's expiry (MQTT 5): the validity left, rounded up to whole seconds, so
            # that the broker never drops a quote the engine would still fill.
            expiry_s = -((arrived - quote.valid_until_ns) // _NS_PER_S)
            return [Outgoing(topic, encode(message), expiry_s=max(expiry_s, 1))]
        reject = Reject(rfq_id=rfq_id, code=code.value, reason=reason)
        rejected = JournalEvent(
            "reject", client, arrived, rfq_id=rfq_id, payload=msgspec.to_builtins(reject)
        )
        try:
            await self._submit(received, rejected)
        except BaseException:
            if code is not Code.DUPLICATE_RFQ_ID:  # the id is an earlier RFQ's: it stays used
                self._free_rfq_id(client, rfq_id, mono)  # refused INTERNAL_ERROR instead
            raise
        return [Outgoing(topic, encode(reject))]

    def _free_rfq_id(self, client: str, rfq_id: str, mono: int) -> None:
        """Forget the id an RFQ took at ``mono`` when the journal could not record its answer:
        the client is told so (``INTERNAL_ERROR``), and may ask again with the same id."""
        state = self._clients.get(client)
        if state is not None and state.rfq_ids.get(rfq_id) == mono:
            del state.rfq_ids[rfq_id]

    async def _submit(self, *events: JournalEvent) -> Receipt:
        """Submit ``events`` to the journal in order, without waiting for their commit.

        Returns the last event's receipt. Raises what the journal raises, and the first failure
        already on a receipt (a journal that records at once and failed): the caller must not
        reply as if the events were on their way to disk.
        """
        receipts = [await self._journal.submit(event) for event in events]
        for receipt in receipts:
            error = receipt.exception() if receipt.done() and not receipt.cancelled() else None
            if error is not None:
                raise error
        return receipts[-1]

    def _quote(
        self, client: str, wire: Rfq | ProtocolError, now: int, mono: int
    ) -> tuple[_Quote, dict[str, PriceExplanation]]:
        """Run every RFQ check and price it: the quote and the explanation of each side.

        Raises ProtocolError with the reject code (``wire`` itself when the RFQ did not decode).
        """
        if isinstance(wire, ProtocolError):
            raise wire
        rfq = check_rfq(wire)
        day = self._today(now)
        state = self._client(client)
        self._take_token(state, mono)
        if rfq.rfq_id in state.rfq_ids:
            raise ProtocolError(
                Code.DUPLICATE_RFQ_ID, f"rfq_id {rfq.rfq_id!r} was already used by {client}"
            )
        state.rfq_ids[rfq.rfq_id] = mono
        inst = self._instrument(rfq.symbol)
        if inst.symbol not in state.config.symbols:
            raise ProtocolError(
                Code.SYMBOL_NOT_ALLOWED, f"symbol {inst.symbol} is not allowed for {client}"
            )
        if rfq.qty is not None:
            self._check_lots(rfq.qty, inst)
        self._check_halted(inst.symbol)
        ctx = self._context(inst, self._view(inst, now), self._tier_spread[state.config.tier], now)
        sides = [Side.BUY, Side.SELL] if rfq.side == "two_way" else [_SIDES[rfq.side]]
        qty = self._size(ctx, rfq, sides)
        explanations = {
            ("ask" if side is Side.BUY else "bid"): self._price(ctx, side, qty) for side in sides
        }
        if rfq.notional is not None:  # the notional buys this many lots at the quoted prices
            price = max(e.price for e in explanations.values())
            # A smaller qty lowers an ask but raises a bid: a sell cut once may pay more than
            # the notional at its own bid, so cut until it fits (qty falls every time).
            while _CTX.multiply(qty, price) > rfq.notional:
                qty = lots_down(_CTX.divide(rfq.notional, price), inst.lot_size)
                self._check_min_qty(qty, rfq)
                explanations = {k: self._price(ctx, _side_of(k), qty) for k in explanations}
                price = max(e.price for e in explanations.values())
        bid = explanations.get("bid")
        ask = explanations.get("ask")
        if bid is not None and ask is not None and bid.price >= ask.price:
            # Only venues crossed against each other by more than fees and spreads can do this
            # (each venue's own book is checked uncrossed): most likely one of them is wrong.
            raise ProtocolError(
                Code.MARKET_UNAVAILABLE,
                f"{inst.symbol}: the venues' books cross each other beyond fees and spread "
                f"(bid {decimal_text(bid.price)} >= ask {decimal_text(ask.price)}): "
                "no two-way quote",
            )
        for key, expl in explanations.items():
            self._check_limits(state, inst, _side_of(key), qty, expl.price, day)
        valid_until = (now // _NS_PER_MS) * _NS_PER_MS + self._ttl_ns
        quote = _Quote(
            quote_id=f"{self._run}-q{next(self._quote_ids)}",
            client=client,
            rfq_id=rfq.rfq_id,
            symbol=inst.symbol,
            side=rfq.side,
            qty=qty,
            bid=None if bid is None else bid.price,
            ask=None if ask is None else ask.price,
            valid_until_ns=valid_until,
            deadline_mono_ns=mono + valid_until - now,
            hedge_bid=None if bid is None else bid.hedge_all_in,
            hedge_ask=None if ask is None else ask.hedge_all_in,
            notional=rfq.notional,
        )
        return quote, explanations

    def _client(self, client: str) -> _Client:
        state = self._clients.get(client)
        if state is None:
            raise ProtocolError(Code.UNKNOWN_CLIENT, f"client {client!r} is not configured")
        if not state.enabled:
            raise ProtocolError(Code.CLIENT_DISABLED, f"client {client} is disabled")
        return state

    def _take_token(self, state: _Client, mono: int) -> None:
        # On the monotonic clock: a wall clock stepped back does not stop the refill (an hour's
        # step, an hour without RFQs), nor does one stepped forward refill the bucket at once.
        elapsed = mono - state.refilled_ns
        if elapsed > 0:
            refill = elapsed * self.config.quoting.rate_limit_per_s
            state.tokens = min(self._bucket_size, state.tokens + refill)
        state.refilled_ns = mono
        if state.tokens < _NS_PER_S:
            q = self.config.quoting
            raise ProtocolError(
                Code.RATE_LIMITED,
                f"more than {q.rate_limit_per_s} RFQs per second (burst {q.rate_limit_burst})",
            )
        state.tokens -= _NS_PER_S

    def _instrument(self, symbol: str) -> InstrumentConfig:
        inst = self._instruments.get(symbol)
        if inst is None:
            raise ProtocolError(Code.UNKNOWN_SYMBOL, f"symbol {symbol!r} is not configured")
        return inst

    @staticmethod
    def _check_lots(qty: Decimal, inst: InstrumentConfig) -> None:
        if _CTX.remainder(qty, inst.lot_size):
            raise ProtocolError(
                Code.INVALID_QTY,
                f"qty {decimal_text(qty)} is not a multiple of the lot size "
                f"{decimal_text(inst.lot_size)}",
            )

    def _check_halted(self, symbol: str) -> None:
        if self._halted_all:
            raise ProtocolError(Code.MARKET_HALTED, "trading is halted (global kill switch)")
        if symbol in self._halted:
            raise ProtocolError(Code.MARKET_HALTED, f"trading in {symbol} is halted")

    def _view(self, inst: InstrumentConfig, now: int) -> BookView:
        view = self.market.books[inst.symbol].view(now)
        excluded = "; ".join(f"{e.venue}: {e.reason} ({e.detail})" for e in view.excluded)
        if not view.included:
            raise ProtocolError(
                Code.MARKET_UNAVAILABLE,
                f"{inst.symbol}: no venue fit to price from ({excluded or 'no venues'})",
            )
        if view.mid2 is None:
            raise ProtocolError(
                Code.MARKET_UNAVAILABLE,
                f"{inst.symbol}: a side of the consolidated book is empty"
                + (f" (excluded: {excluded})" if excluded else ""),
            )
        return view

    def _impact(self, inst: InstrumentConfig) -> bool:
        return self.config.estimator.use_impact_model and inst.impact is not None

    def _estimate(
        self, view: BookView, inst: InstrumentConfig, side: Side, qty: Decimal
    ) -> SlippageEstimate:
        """The hedge estimate for ``qty``, with the size checks (absurd, visible depth)."""
        est = estimate(view, side, qty=qty, impact=inst.impact if self._impact(inst) else None)
        if est.depth_exhausted:
            self._beyond_depth(inst, side, qty, est.qty_filled, extended=est.impact is not None)
        return est

    def _beyond_depth(
        self, inst: InstrumentConfig, side: Side, qty: Decimal, visible: Decimal, *, extended: bool
    ) -> None:
        """``qty`` exceeds the ``visible`` depth: absurd beyond ``max_qty_depth_factor`` x it,
        else no liquidity unless the impact model ``extended`` the walk."""
        if qty > _CTX.multiply(visible, self.config.quoting.max_qty_depth_factor):
            raise ProtocolError(
                Code.INVALID_QTY,
                f"qty {decimal_text(qty)} is absurd: more than "
                f"{decimal_text(self.config.quoting.max_qty_depth_factor)} x the visible "
                f"depth of {decimal_text(visible)} {inst.base}",
            )
        if not extended:
            raise ProtocolError(
                Code.NO_LIQUIDITY,
                f"qty {decimal_text(qty)} {inst.base}: visible depth on the {side.value} side "
                f"covers {decimal_text(visible)}",
            )

    def _size(self, ctx: _Context, rfq: ParsedRfq, sides: list[Side]) -> Decimal:
        """The quoted qty: as asked, or for a notional the lots it buys at each side's price."""
        if rfq.qty is not None:
            return rfq.qty
        view, inst = ctx.view, ctx.inst
        notional = rfq.notional
        assert notional is not None
        exponent = notional.as_tuple().exponent
        assert isinstance(exponent, int)  # finite: checked by the protocol
        if exponent < -view.scale.notional_decimals:
            raise ProtocolError(
                Code.INVALID_QTY,
                f"notional {decimal_text(notional)} has more than "
                f"{view.scale.notional_decimals} decimal places",
            )
        sizes = []
        for side in sides:
            walked = estimate(view, side, notional=notional)
            if not walked.depth_exhausted:
                first = lots_down(walked.qty_filled, inst.lot_size)
            elif self._impact(inst):  # beyond visible depth: size it at mid, price by the model
                assert walked.mid is not None
                first = lots_down(_CTX.divide(notional, walked.mid), inst.lot_size)
            else:
                raise ProtocolError(
                    Code.NO_LIQUIDITY,
                    f"notional {decimal_text(notional)}: visible depth on the {side.value} side "
                    f"covers {decimal_text(walked.notional_filled)}",
                )
            self._check_min_qty(first, rfq)
            price = self._price(ctx, side, first).price
            sizes.append(lots_down(_CTX.divide(notional, price), inst.lot_size))
        qty = min(sizes)
        self._check_min_qty(qty, rfq)
        return qty

    @staticmethod
    def _check_min_qty(qty: Decimal, rfq: ParsedRfq) -> None:
        if qty <= 0:
            raise ProtocolError(
                Code.INVALID_QTY,
                f"notional {decimal_text(rfq.notional or _ZERO)} is less than one lot",
            )

    def _context(
        self, inst: InstrumentConfig, view: BookView, spread: Decimal, now: int
    ) -> _Context:
        """What every side of one RFQ (or one ladder) is priced with, read once."""
        # The explanation's ages are on the wall clock, the receive stamps' and the RFQ's, which
        # the recording keeps: `otc replay-journal` reproduces them to the millisecond. (Which
        # books are fresh enough to price from was decided on the monotonic clock: view().)
        books = {
            name: BookState(state.book.sequence, max(0, now - state.book.ts_recv_ns) // _NS_PER_MS)
            for name, state in view.included.items()
        }
        return _Context(inst, view, spread, self._skew(inst), books)

    def _price(self, ctx: _Context, side: Side, qty: Decimal) -> PriceExplanation:
        """One side priced for ``qty``: straight from the integer walk of the visible book, or,
        with the impact model, from the full estimate (which the model may extend)."""
        inst, view = ctx.inst, ctx.view
        try:
            if not self._impact(inst):
                sd = view.scale.size_decimals
                lots = parse_fixed(qty, sd, what="qty")
                walked = Walk(view, side, lots=lots)
                if walked.qty < lots:
                    self._beyond_depth(inst, side, qty, to_decimal(walked.qty, sd), extended=False)
                return price_walk(
                    walked,
                    view,
                    side,
                    qty,
                    spread_bps=ctx.spread,
                    volatility_bps=self._volatility_bps[inst.symbol],
                    size_premium_bps_per_million_notional=(
                        self.config.risk.size_premium_bps_per_million_notional
                    ),
                    skew_bps=ctx.skew,
                    tick_size=inst.tick_size,
                    books=ctx.books,
                )
            est = self._estimate(view, inst, side, qty)
            assert est.mid is not None
            risk = RiskPremium(
                self._volatility_bps[inst.symbol],
                size_premium_bps(
                    self.config.risk.size_premium_bps_per_million_notional,
                    _CTX.multiply(qty, est.mid),
                ),
            )
            return price_from_estimate(
                est,
                spread_bps=ctx.spread,
                risk=risk,
                skew_bps=ctx.skew,
                tick_size=inst.tick_size,
                books=ctx.books,
            )
        except InsufficientDepth as exc:
            raise ProtocolError(Code.NO_LIQUIDITY, str(exc)) from None
        except QuoteError as exc:
            raise ProtocolError(Code.MARKET_UNAVAILABLE, str(exc)) from None

    def _skew(self, inst: InstrumentConfig) -> Decimal:
        position = self._positions.get(inst.base, _ZERO)
        cached = self._skews.get(inst.base)
        if cached is not None and cached[0] is position:  # positions are replaced, not mutated
            return cached[1]
        inventory = self.config.inventory
        skew = inventory_skew_bps(
            position, inventory.limits.get(inst.base), inventory.skew_bps_at_limit
        )
        self._skews[inst.base] = (position, skew)
        return skew

    def _check_limits(
        self,
        state: _Client,
        inst: InstrumentConfig,
        side: Side,
        qty: Decimal,
        price: Decimal,
        day: int,
    ) -> None:
        """Per-trade notional, daily notional (on UTC ``day``) and inventory for a fill of
        ``qty`` at ``price``."""
        cfg = state.config
        notional = _CTX.multiply(qty, price)
        if notional > cfg.max_trade_notional:
            raise ProtocolError(
                Code.LIMIT_EXCEEDED,
                f"notional {decimal_text(notional)} {inst.quote} exceeds the per-trade limit "
                f"{decimal_text(cfg.max_trade_notional)}",
            )
        used = state.used_on(day)
        if used + notional > cfg.max_daily_notional:
            raise ProtocolError(
                Code.LIMIT_EXCEEDED,
                f"notional {decimal_text(notional)} {inst.quote} on top of "
                f"{decimal_text(used)} traded today exceeds the daily limit "
                f"{decimal_text(cfg.max_daily_notional)}",
            )
        for asset, change in _position_changes(inst, side, qty, price).items():
            limit = self.config.inventory.limits.get(asset)
            if limit is None:
                continue
            before = self._positions.get(asset, _ZERO)
            after = _CTX.add(before, change)
            # Beyond the limit only by reducing a position already beyond it, without
            # crossing zero: a short turned into a long beyond the limit is a new position.
            reduces = abs(after) <= abs(before) and (after < 0) == (before < 0)
            if abs(after) > limit and not reduces:
                raise ProtocolError(
                    Code.LIMIT_EXCEEDED,
                    f"a client {side.value} of {decimal_text(qty)} {inst.base} would take the "
                    f"desk's {asset} position to {decimal_text(after)}, beyond its limit "
                    f"{decimal_text(limit)}",
                )

    # -- accept -------------------------------------------------------------------------------

    async def on_accept(self, client: str, payload: bytes) -> list[Outgoing]:
        """Handle ``otc/v1/{client}/accept``: a Fill or an AcceptReject, to that client.

        The fill is returned only after the journal committed it. A journal error (the
        accept, its fill or a control could not be journaled) fills nothing: the reply is an
        ``INTERNAL_ERROR`` accept reject, the accept may be repeated, and the engine carries
        on. Bad input never raises.
        """
        try:
            return await self._serve_accept(client, payload)
        except JournalError as exc:
            log.error("accept by %s refused, the journal failed: %s", client, exc)
            quote_id = _salvage(payload, "quote_id")
            reason = (
                "the journal could not record the accept or its fill: nothing was filled "
                "(the accept may be repeated)"
            )
            topic, code = FILLS_TOPIC.format(client=client), Code.INTERNAL_ERROR
            try:
                return [await self._accept_reject(client, topic, quote_id, "", code, reason)]
            except JournalError:  # not even the reject: the journal logged it, answer anyway
                reject = AcceptReject(quote_id=quote_id, code=code.value, reason=reason)
                return [Outgoing(topic, encode(reject))]

    async def _serve_accept(self, client: str, payload: bytes) -> list[Outgoing]:
        arrived = self._clock.now_ns()
        mono = self._clock.monotonic_ns()
        day = self._today(arrived)  # at arrival: accepts may be booked out of order
        await self.flush_controls()
        wire = _decoded(decode_accept, payload)
        quote_id = (
            _usable_id(wire.quote_id) if isinstance(wire, Accept) else _salvage(payload, "quote_id")
        )
        received = JournalEvent(
            "accept", client, arrived, quote_id=quote_id, payload=_journal_form(wire, payload)
        )
        named = self._quotes.get(quote_id)
        if named is not None and named.client == client and named.journaled is not None:
            # The quote is still on its way to disk: commit it (with this accept) right away
            # rather than at the journal's next group commit; its outcome decides the fill.
            await self._journal.append(received)
        else:
            await self._submit(received)  # committed before any fill: the journal keeps order
        topic = FILLS_TOPIC.format(client=client)
        try:
            if isinstance(wire, ProtocolError):
                raise wire
            accept = check_accept(wire)
            quote = self._quotes.get(accept.quote_id)
            if quote is None or quote.client != client:
                raise ProtocolError(
                    Code.UNKNOWN_QUOTE, f"no quote {accept.quote_id!r} for client {client}"
                )
        except ProtocolError as exc:
            return [await self._accept_reject(client, topic, quote_id, "", exc.code, exc.reason)]
        if quote.lock is None:
            quote.lock = asyncio.Lock()
        async with quote.lock:  # one accept of a quote at a time: exactly one fill
            if quote.writing is not None:  # a cancelled accept's fill: the journal decides it
                write = quote.writing
                await asyncio.wait((write.receipt,))
                self._fill_written(quote, write, write.receipt)
            if not await self._recorded(quote):
                reject = await self._accept_reject(
                    client,
                    topic,
                    quote.quote_id,
                    quote.rfq_id,
                    Code.INTERNAL_ERROR,
                    f"quote {quote.quote_id} was not recorded by the journal: it cannot be filled",
                )
                return [reject]
            try:
                checked = self._check_accept(quote, accept, arrived, mono, day)
            except ProtocolError as exc:
                reject = await self._accept_reject(
                    client, topic, quote.quote_id, quote.rfq_id, exc.code, exc.reason
                )
                return [reject]
            except Exception:  # a bug must not take the service down
                log.exception("accept of %s by %s failed", quote.quote_id, client)
                reject = await self._accept_reject(
                    client,
                    topic,
                    quote.quote_id,
                    quote.rfq_id,
                    Code.INTERNAL_ERROR,
                    "internal error",
                )
                return [reject]
            fill = (
                checked if isinstance(checked, Fill) else await self._book(quote, checked, arrived)
            )
        return [Outgoing(topic, encode(fill))]

    async def _accept_reject(
        self, client: str, topic: str, quote_id: str, rfq_id: str, code: Code, reason: str
    ) -> Outgoing:
        """An AcceptReject on ``topic`` (the client's fills), journaled."""
        reject = AcceptReject(quote_id=quote_id, code=code.value, reason=reason)
        event = self._answer_event(
            client, "accept_reject", reject, rfq_id=rfq_id, quote_id=quote_id
        )
        await self._submit(event)
        return Outgoing(topic, encode(reject))

    def _answer_event(
        self,
        client: str,
        kind: str,
        answer: msgspec.Struct,
        *,
        rfq_id: str = "",
        quote_id: str = "",
    ) -> JournalEvent:
        """The journal event of an answer made now."""
        return JournalEvent(
            kind,
            client,
            self._clock.now_ns(),
            rfq_id=rfq_id,
            quote_id=quote_id,
            payload=msgspec.to_builtins(answer),
        )

    @staticmethod
    async def _recorded(quote: _Quote) -> bool:
        """Whether the journal committed the quote (waiting for it if it has not yet settled).

        Settled by now, normally: an accept of a quote still on its way to disk was appended,
        which committed the quote with it. Waiting never cancels the receipt, even when the
        accept is cancelled.
        """
        receipt = quote.journaled
        if receipt is None:  # committed
            return True
        if not receipt.done():
            await asyncio.wait((receipt,))
        return not receipt.cancelled() and receipt.exception() is None

    def _check_accept(
        self, quote: _Quote, accept: ParsedAccept, now: int, mono: int, day: int
    ) -> Fill | _Trade:
        """Every accept check; the earlier fill for a repeated accept. Under the quote's lock."""
        one_side = None if quote.side == "two_way" else quote.side
        side_text = accept.side or one_side
        qty = accept.qty if accept.qty is not None else quote.qty
        if quote.fill is not None:
            if (side_text, qty) == quote.fill_key:
                return quote.fill  # the same accept again: the same fill
            raise ProtocolError(Code.ALREADY_FILLED, f"quote {quote.quote_id} is already filled")
        if now > quote.valid_until_ns:
            raise ProtocolError(
                Code.EXPIRED,
                f"quote {quote.quote_id} expired at {quote.valid_until_ns // _NS_PER_MS} ms",
            )
        if mono > quote.deadline_mono_ns:  # the wall clock stepped back since it was quoted
            raise ProtocolError(
                Code.EXPIRED,
                f"quote {quote.quote_id} expired: its {self.config.quoting.quote_ttl_ms} ms "
                "lifetime is over (the wall clock was stepped back since)",
            )
        if side_text is None:
            raise ProtocolError(Code.INVALID_SIDE, "side is required to accept a two-way quote")
        if one_side is not None and side_text != one_side:
            raise ProtocolError(
                Code.INVALID_SIDE, f"side {side_text} does not match the quote's side {one_side}"
            )
        inst = self._instruments[quote.symbol]
        if qty > quote.qty:
            raise ProtocolError(
                Code.INVALID_QTY,
                f"qty {decimal_text(qty)} exceeds the quoted {decimal_text(quote.qty)}",
            )
        self._check_lots(qty, inst)
        side = _SIDES[side_text]
        price = quote.ask if side is Side.BUY else quote.bid
        assert price is not None
        state = self._client(quote.client)
        self._check_halted(quote.symbol)
        self._check_limits(state, inst, side, qty, price, day)
        if self.config.quoting.last_look:
            self._last_look(quote, inst, side, now)
        return _Trade(state, inst, side, qty, price, day)

    async def _book(self, quote: _Quote, trade: _Trade, now: int) -> Fill:
        """Book a checked trade and journal its fill; returns once the journal committed it.

        Positions and the daily notional move before the fill is handed to the journal, so
        that concurrent accepts of other quotes see this trade in their limit checks; it is
        handed over at once (``submit``, urgent: nothing is journaled between the booking and
        it) and its commit awaited. A journal error (nothing committed) undoes the booking and
        propagates. A cancellation (the broker connection lost) leaves the fill to the
        journal: the quote is filled if the fill commits, the booking undone if it fails, and
        a repeated accept waits for that decision (:meth:`_fill_written`): it never gets a
        fill the journal did not take, nor a second one.
        """
        side_text = trade.side.value
        notional = _CTX.multiply(trade.qty, trade.price)
        changes = _position_changes(trade.inst, trade.side, trade.qty, trade.price)
        fill = Fill(
            quote_id=quote.quote_id,
            trade_id=f"{self._run}-t{next(self._trade_ids)}",
            side=side_text,
            qty=decimal_text(trade.qty),
            price=decimal_text(trade.price),
            ts_ms=now // _NS_PER_MS,
            symbol=quote.symbol,
            rfq_id=quote.rfq_id,
        )
        event = JournalEvent(
            "fill",
            quote.client,
            now,
            rfq_id=quote.rfq_id,
            quote_id=quote.quote_id,
            trade_id=fill.trade_id,
            payload=msgspec.to_builtins(fill),
        )
        self._apply(changes, 1)
        trade.client.add_notional(trade.day, notional)
        try:
            receipt = await self._journal.submit(event, urgent=True)
        except BaseException:  # refused, or cancelled before it was handed over: not written
            self._apply(changes, -1)
            trade.client.add_notional(trade.day, -notional)
            raise
        write = _FillWrite(
            receipt=receipt,
            fill=fill,
            key=(side_text, trade.qty),
            changes=changes,
            client=trade.client,
            notional=notional,
            day=trade.day,
        )
        try:
            await asyncio.shield(receipt)
        except BaseException:
            if receipt.done():  # the write failed: undone
                self._fill_written(quote, write, receipt)
            else:  # cancelled while the journal writes it: the journal decides
                quote.writing = write
                receipt.add_done_callback(functools.partial(self._fill_written, quote, write))
            raise
        self._fill_written(quote, write, receipt)
        return fill

    def _fill_written(self, quote: _Quote, write: _FillWrite, receipt: Receipt) -> None:
        """Settle a fill the journal decided: the quote filled if it committed, the booking
        undone if it did not. Once per fill (also a done callback of its receipt)."""
        if write.settled:
            return
        write.settled = True
        if quote.writing is write:
            quote.writing = None
        if not receipt.cancelled() and receipt.exception() is None:
            quote.fill, quote.fill_key = write.fill, write.key
            return
        self._apply(write.changes, -1)
        write.client.add_notional(write.day, -write.notional)

    def _apply(self, changes: dict[str, Decimal], sign: int) -> None:
        for asset, change in changes.items():
            self._positions[asset] = self._positions.get(asset, _ZERO) + sign * change

    def _last_look(self, quote: _Quote, inst: InstrumentConfig, side: Side, now: int) -> None:
        """Refuse when the hedge cost of the quoted qty moved beyond tolerance against us."""
        quoted = quote.hedge_ask if side is Side.BUY else quote.hedge_bid
        assert quoted is not None  # the side was checked against the quote's
        tolerance = self.config.quoting.last_look_tolerance_bps
        try:
            view = self._view(inst, now)
            current = hedge_all_in(self._estimate(view, inst, side, quote.qty))
        except (ProtocolError, QuoteError) as exc:
            reason = exc.reason if isinstance(exc, ProtocolError) else str(exc)
            raise ProtocolError(Code.LAST_LOOK, f"last look: cannot re-price: {reason}") from None
        move = current - quoted if side is Side.BUY else quoted - current
        move_bps = _CTX.divide(move * BPS_DENOMINATOR, quoted)
        if move_bps > tolerance:
            raise ProtocolError(
                Code.LAST_LOOK,
                f"last look: the hedge cost moved {decimal_text(round(move_bps, 2))} bps against "
                f"the quote (tolerance {decimal_text(tolerance)} bps)",
            )

    # -- ladder -------------------------------------------------------------------------------

    def ladder(self, symbol: str, *, force: bool = False) -> Outgoing | None:
        """The indicative ladder of ``symbol`` (retained on ``otc/v1/ladder/{symbol}``).

        Prices each of the instrument's ``ladder_bands`` on both sides with the ladder tier's
        spread (``[quoting].ladder_tier``, else the widest tier), the risk premium and the skew;
        a side that cannot be priced (halted, no usable market, not enough depth) is ``null``,
        and so are both sides of a band whose bid would not be below its ask (venues crossed
        against each other beyond fees and spread: a two-way RFQ is refused then too).
        Returns ``None`` when the symbol is unknown or has no bands, and, unless ``force``,
        when nothing it is priced from changed since the last ladder of the symbol.
        """
        return _drain(self.ladder_steps(symbol, force=force))

    def ladder_steps(
        self, symbol: str, *, force: bool = False
    ) -> Generator[None, None, Outgoing | None]:
        """:meth:`ladder`, one side of a band at a time: yields after each, returns the ladder.

        A band walks up to two deep books (a millisecond or more for the largest), so the
        engine resumes the generator on later turns of its loop, and RFQs are served in
        between rather than queued behind a whole ladder. Books that move in between are
        priced as they are then; the next ladder sees their new versions anyway.
        """
        inst = self._instruments.get(symbol)
        if inst is None or not inst.ladder_bands:
            return None
        now = self._clock.now_ns()
        spread = self._ladder_spread()
        halted = self.halted(symbol)
        view = self.market.books[symbol].view(now)
        key = (
            halted,
            spread,
            self._positions.get(inst.base, _ZERO),
            tuple((n, s.book.bid_version, s.book.ask_version) for n, s in view.included.items()),
        )
        if not force and self._ladder_keys.get(symbol) == key:
            return None
        self._ladder_keys[symbol] = key
        message = yield from self._build_ladder(inst, view, spread, halted, now)
        return Outgoing(LADDER_TOPIC.format(symbol=symbol), encode(message), retain=True)

    def indicative_ladder(self, symbol: str) -> Ladder | None:
        """The ladder :meth:`ladder` publishes, priced now (for the console); ``None`` when the
        symbol is unknown or has no bands. Does not affect what :meth:`ladder` publishes."""
        inst = self._instruments.get(symbol)
        if inst is None or not inst.ladder_bands:
            return None
        now = self._clock.now_ns()
        view = self.market.books[symbol].view(now)
        return _drain(
            self._build_ladder(inst, view, self._ladder_spread(), self.halted(symbol), now)
        )

    def _build_ladder(
        self, inst: InstrumentConfig, view: BookView, spread: Decimal, halted: bool, now: int
    ) -> Generator[None, None, Ladder]:
        """The ladder's bands priced one side at a time: yields after each side of each band
        (the deepest walk a few hundred microseconds, rather than twice that per band)."""
        usable = not halted and view.included and view.mid2 is not None
        ctx = self._context(inst, view, spread, now)
        bands = []
        for qty in inst.ladder_bands:
            prices: dict[Side, str | None] = {}
            for side in (Side.SELL, Side.BUY):
                if usable:
                    yield from self._deepen(ctx, side, qty)
                prices[side] = self._indicative(ctx, side, qty) if usable else None
                yield
            bid, ask = prices[Side.SELL], prices[Side.BUY]
            if bid is not None and ask is not None and Decimal(bid) >= Decimal(ask):
                bid = ask = None  # venues crossed against each other: as an RFQ, not two-way
            bands.append(LadderBand(decimal_text(qty), bid=bid, ask=ask))
        return Ladder(symbol=inst.symbol, ts_ms=now // _NS_PER_MS, indicative=True, bands=bands)

    @staticmethod
    def _deepen(ctx: _Context, side: Side, qty: Decimal) -> Generator[None, None, None]:
        """Build the consolidated levels a walk of ``qty`` needs, a bounded batch per step.

        A deep band's first walk after the books moved would otherwise merge hundreds of
        levels per venue in one go (over a millisecond for 250 ETH). A book that changes in
        between hands out a new ladder, which is built from its top again.
        """
        lots = parse_fixed(qty, ctx.view.scale.size_decimals, what="qty")
        while True:
            ladder = ctx.view.ladder(side)
            if ladder.complete or ladder.cum_qty[-1] >= lots:
                return
            ladder.extend(_LADDER_CHUNK)
            yield

    def _indicative(self, ctx: _Context, side: Side, qty: Decimal) -> str | None:
        try:
            return decimal_text(self._price(ctx, side, qty).price)
        except ProtocolError:
            return None

    def _ladder_spread(self) -> Decimal:
        tier = self.config.quoting.ladder_tier
        if tier is not None:
            return self._tier_spread[tier]
        return max(self._tier_spread.values(), default=_ZERO)

    # -- restart ------------------------------------------------------------------------------

    @property
    def clients(self) -> list[str]:
        """The configured clients' ids: :meth:`restore` needs the journal's recent RFQs and
        quotes of these only (the journal also names every unknown id that sent anything)."""
        return list(self._clients)

    @property
    def remembered_ns(self) -> int:
        """How far back RFQ ids and quotes are remembered: the longer of the duplicate window
        and a quote's lifetime plus ``quote_memory_ms``. :meth:`restore` needs the journal's
        RFQs and quotes that recent."""
        return max(self._duplicate_ns, self._ttl_ns + self._memory_ns)

    def restore(self, rows: Iterable[JournalRow], *, operator: str = "start-up") -> Restored:
        """Rebuild the state a previous run left in its journal; call once, before serving.

        ``rows`` in journal order (:func:`otc.journal.state_rows`): every fill and control, and
        the recent RFQs and quotes. Rebuilt: the desk's positions (fills, and ``position``
        controls, which set a position outright), each client's notional filled today (UTC),
        the kill switches, the clients a control disabled (a client disabled in the config
        stays disabled whatever the journal says), the quotes still remembered with their
        fills (so a repeated accept after a restart gets the same fill, a late one
        ``EXPIRED``, and a quote still valid can be filled), and the rfq ids still within the
        duplicate window (every journaled RFQ's id counts, also that of an RFQ refused before
        its id was taken, e.g. rate-limited: stricter than the live engine, never looser).
        Tier spreads come from the config: a spread changed at run time lasts until the engine
        stops.

        What it starts from is journaled as controls by ``operator``: each position, each kill
        switch on, each client disabled, and each tier spread whose last journaled value the
        config overrides, so that the new run's journal reads on its own
        (:meth:`flush_controls` writes them). Nothing is journaled for an empty journal.

        Raises:
            OtcError: a row that cannot be read as the engine writes it (named by its id).
        """
        now = self._clock.now_ns()
        mono = self._clock.monotonic_ns()
        today = now // _NS_PER_DAY
        #: Notional per day from today on, per client (days after today: the clock was stepped
        #: back since they were traded; the latest is the day the engine goes on counting).
        daily_by_day: dict[int, dict[str, Decimal]] = {}
        quote_horizon = now - self._memory_ns
        rfq_horizon = now - self._duplicate_ns
        positions: dict[str, Decimal] = {}
        halted_all = False
        halted: set[str] = set()
        switches: dict[str, bool] = {}
        spreads: dict[str, Decimal] = {}
        quotes: dict[str, _Quote] = {}
        rfq_ids: list[tuple[_Client, str, int]] = []
        trades: set[str] = set()
        filled: set[str] = set()  # quote ids of the fills read
        fills = skipped = 0
        for row in rows:
            try:
                if row.kind == "fill":
                    fill = msgspec.convert(row.payload, Fill)
                    qty, price = self._restored_fill(row, fill, quotes, trades)
                    trades.add(fill.trade_id)
                    filled.add(fill.quote_id)
                    inst = self._instruments.get(fill.symbol)
                    if inst is None:  # an instrument no longer configured
                        skipped += 1
                        continue
                    for asset, change in _position_changes(
                        inst, _SIDES[fill.side], qty, price
                    ).items():
                        positions[asset] = positions.get(asset, _ZERO) + change
                    fill_day = row.ts_ns // _NS_PER_DAY
                    if fill_day >= today and row.client in self._clients:
                        daily = daily_by_day.setdefault(fill_day, {})
                        daily[row.client] = daily.get(row.client, _ZERO) + _CTX.multiply(qty, price)
                    quote = quotes.get(fill.quote_id)
                    if quote is not None:
                        quote.fill, quote.fill_key = fill, (fill.side, qty)
                    fills += 1
                elif row.kind == "control":
                    match read_control(row.payload):
                        case PositionRecord(asset=asset, position=position):
                            positions[asset] = position
                        case HaltRecord(symbol=None, halted=on):
                            halted_all = on
                        case HaltRecord(symbol=str(symbol), halted=True):
                            halted.add(symbol)
                        case HaltRecord(symbol=str(symbol), halted=False):
                            halted.discard(symbol)
                        case ClientRecord(enabled=on):
                            switches[row.client] = on
                        case SpreadRecord(tier=tier, spread_bps=spread):
                            spreads[tier] = spread
                elif row.kind == "quote":
                    quote = self._restored_quote(row, now, mono)
                    if quote is None:
                        continue
                    if quote.quote_id in filled:
                        raise ValueError(f"quote {quote.quote_id} comes after its fill")
                    if quote.quote_id in quotes:
                        raise ValueError(f"quote id {quote.quote_id} is journaled twice")
                    if quote.valid_until_ns >= quote_horizon:
                        quotes[quote.quote_id] = quote
                elif row.kind == "rfq":
                    state = self._clients.get(row.client)
                    if state is not None and row.rfq_id and row.ts_ns >= rfq_horizon:
                        rfq_ids.append((state, row.rfq_id, row.ts_ns))
            except KeyError as exc:
                raise OtcError(
                    f"journal row {row.id} ({row.kind}) cannot be restored: "
                    f"no member {exc.args[0]!r}"
                ) from exc
            except (TypeError, ValueError, ArithmeticError, msgspec.ValidationError) as exc:
                raise OtcError(
                    f"journal row {row.id} ({row.kind}) cannot be restored: {exc}"
                ) from exc
        # Remembered in time order: prune() drops them from the oldest on.
        quotes = dict(sorted(quotes.items(), key=lambda item: item[1].valid_until_ns))
        rfq_ids.sort(key=lambda entry: entry[2])
        disabled = sorted(c for c, on in switches.items() if not on and c in self._clients)
        halted &= set(self._instruments)
        self._positions.update(positions)
        self._day = max(self._day, today, *daily_by_day)
        daily = daily_by_day.get(self._day, {})
        for client, notional in daily.items():
            self._clients[client].add_notional(self._day, notional)
        self._halted_all = halted_all
        self._halted |= halted
        for client in disabled:
            self._clients[client].enabled = False
        self._quotes.update(quotes)
        for state, rfq_id, ts_ns in rfq_ids:
            # Its age by the wall clock, from now at most (a clock stepped back since): the
            # previous run's monotonic stamps mean nothing to this one.
            state.rfq_ids.setdefault(rfq_id, mono - max(0, now - ts_ns))
        for asset, position in sorted(positions.items()):
            if position:
                self._control(
                    operator, "", {"action": "position", "asset": asset, "position": position}
                )
        if halted_all:
            self._control(operator, "", {"action": "halt", "symbol": None, "halted": True})
        for symbol in sorted(halted):
            self._control(operator, "", {"action": "halt", "symbol": symbol, "halted": True})
        for client in disabled:
            self._control(operator, client, {"action": "client_enabled", "enabled": False})
        for tier, spread in sorted(spreads.items()):
            configured = self._tier_spread.get(tier)
            if configured is not None and configured != spread:
                self._control(
                    operator, "", {"action": "tier_spread", "tier": tier, "spread_bps": configured}
                )
        return Restored(
            fills=fills,
            skipped_fills=skipped,
            positions={a: p for a, p in sorted(positions.items()) if p},
            daily_notional={c: n for c, n in sorted(daily.items()) if n},
            halted_all=halted_all,
            halted=sorted(halted),
            disabled=disabled,
            quotes=len(quotes),
            filled_quotes=sum(q.fill is not None for q in quotes.values()),
            rfq_ids=len(rfq_ids),
        )

    def _restored_fill(
        self, row: JournalRow, fill: Fill, quotes: dict[str, _Quote], trades: set[str]
    ) -> tuple[Decimal, Decimal]:
        """The qty and price of a journaled fill, checked against its row, the trades read
        before it and its quote when remembered (``ValueError`` naming the disagreement)."""
        if not fill.symbol:
            raise ValueError("the fill names no symbol")
        if fill.side not in _SIDES:
            raise ValueError(f"side {fill.side!r} is not buy or sell")
        if not fill.trade_id or fill.trade_id in trades:
            raise ValueError(f"trade id {fill.trade_id!r} is empty or journaled twice")
        if row.quote_id and row.quote_id != fill.quote_id:
            raise ValueError(f"the row is for quote {row.quote_id}, the fill {fill.quote_id}")
        qty = journaled_decimal(fill.qty, "qty")
        price = journaled_decimal(fill.price, "price")
        quote = quotes.get(fill.quote_id)
        if quote is None:
            return qty, price  # older than the quotes remembered
        quoted = quote.ask if fill.side == "buy" else quote.bid  # a client buy fills at our ask
        if quote.fill is not None:
            raise ValueError(f"quote {quote.quote_id} is filled twice")
        if (quote.client, quote.symbol) != (row.client, fill.symbol):
            raise ValueError(
                f"quote {quote.quote_id} is {quote.client}'s for {quote.symbol}, the fill "
                f"{row.client}'s for {fill.symbol}"
            )
        if quoted is None or price != quoted or qty > quote.qty:
            raise ValueError(
                f"the fill ({fill.side} {fill.qty} at {fill.price}) is not of quote "
                f"{quote.quote_id} ({quote.side} {decimal_text(quote.qty)}, bid "
                f"{quote.bid}, ask {quote.ask})"
            )
        return qty, price

    def _restored_quote(self, row: JournalRow, now: int, mono: int) -> _Quote | None:
        """The remembered form of a journaled quote; ``None`` for a client or an instrument no
        longer configured.

        Its monotonic deadline is what is left of it by the wall clock, at most its whole
        lifetime from now (``now``, ``mono``: the restart's two times): the previous run's
        monotonic clock means nothing to this one, and a wall clock stepped back since the
        quote was made must not leave it fillable for the length of the step.
        """
        if row.client not in self._clients:
            return None
        message = msgspec.convert(row.payload["quote"], Quote)
        if message.symbol not in self._instruments:
            return None
        if message.side not in ("buy", "sell", "two_way"):
            raise ValueError(f"side {message.side!r} is not buy, sell or two_way")
        journaled_decimal(message.qty, "qty")
        for name, asked in (
            ("bid", message.side != "buy"),
            ("ask", message.side != "sell"),
        ):
            price = getattr(message, name)
            if asked:
                journaled_decimal(price, name)
            elif price is not None:
                raise ValueError(f"a {message.side} quote with a {name}")
        explanation = row.payload.get("explanation")
        hedge: dict[str, Decimal] = {}
        if isinstance(explanation, dict):
            for key, expl in explanation.items():
                hedge[str(key)] = Decimal(str(expl["hedge_all_in"]))
        valid_until = message.valid_until_ms * _NS_PER_MS
        return _Quote(
            quote_id=message.quote_id,
            client=row.client,
            rfq_id=message.rfq_id,
            symbol=message.symbol,
            side=message.side,
            qty=Decimal(message.qty),
            bid=None if message.bid is None else Decimal(message.bid),
            ask=None if message.ask is None else Decimal(message.ask),
            valid_until_ns=valid_until,
            deadline_mono_ns=mono + min(self._ttl_ns, valid_until - now),
            hedge_bid=hedge.get("bid"),
            hedge_ask=hedge.get("ask"),
            notional=None if message.notional is None else Decimal(message.notional),
        )

    # -- runtime controls ---------------------------------------------------------------------

    def set_halted(self, symbol: str | None, halted: bool, *, operator: str) -> None:
        """Switch the kill switch of ``symbol`` (``None``: the global one).

        Raises:
            OtcError: ``symbol`` is not configured.
        """
        if symbol is None:
            self._halted_all = halted
        elif symbol not in self._instruments:
            raise OtcError(f"symbol {symbol!r} is not configured")
        elif halted:
            self._halted.add(symbol)
        else:
            self._halted.discard(symbol)
        self._control(operator, "", {"action": "halt", "symbol": symbol, "halted": halted})

    def set_client_enabled(self, client: str, enabled: bool, *, operator: str) -> None:
        """Enable or disable a client (a disabled client gets ``CLIENT_DISABLED``).

        Raises:
            OtcError: ``client`` is not configured.
        """
        state = self._clients.get(client)
        if state is None:
            raise OtcError(f"client {client!r} is not configured")
        state.enabled = enabled
        self._control(operator, client, {"action": "client_enabled", "enabled": enabled})

    def set_tier_spread(self, tier: str, spread_bps: Decimal, *, operator: str) -> None:
        """Change a tier's spread for the quotes that follow.

        Raises:
            OtcError: ``tier`` is not configured, or ``spread_bps`` is not a decimal >= 0 and
                below 10,000 (100 %), the range the configuration allows.
        """
        if tier not in self._tier_spread:
            raise OtcError(f"tier {tier!r} is not configured")
        if (
            not isinstance(spread_bps, Decimal)
            or not spread_bps.is_finite()
            or not 0 <= spread_bps < BPS_DENOMINATOR
        ):
            raise OtcError(
                f"spread_bps must be a decimal >= 0 and below {BPS_DENOMINATOR}, got {spread_bps}"
            )
        self._tier_spread[tier] = spread_bps
        self._control(
            operator, "", {"action": "tier_spread", "tier": tier, "spread_bps": spread_bps}
        )

    def set_position(self, asset: str, position: Decimal, *, operator: str) -> None:
        """Set the desk's position in ``asset`` (e.g. after hedges done outside the engine).

        Raises:
            OtcError: ``position`` is not a finite decimal.
        """
        if not isinstance(position, Decimal) or not position.is_finite():
            raise OtcError(f"position must be a finite decimal, got {position!r}")
        self._positions[asset] = position
        self._control(operator, "", {"action": "position", "asset": asset, "position": position})

    def _control(self, operator: str, client: str, payload: dict[str, object]) -> None:
        body = {k: decimal_text(v) if isinstance(v, Decimal) else v for k, v in payload.items()}
        body["operator"] = operator
        self._controls.append(JournalEvent("control", client, self._clock.now_ns(), payload=body))

    async def flush_controls(self) -> None:
        """Journal the control events not yet written, in order; returns once they are."""
        if not self._controls:
            return
        async with self._control_lock:
            while self._controls:
                event = self._controls[0]
                await self._journal.append(event)
                self._controls.popleft()

    # -- memory -------------------------------------------------------------------------------

    def prune(self, mono_ns: int) -> int:
        """Forget quotes expired more than ``quote_memory_ms`` ago and rfq ids older than
        ``duplicate_window_ms``, at ``mono_ns`` on the clock's monotonic time (a wall clock
        step neither forgets everything at once nor holds everything for the step's length);
        returns how many quotes were forgotten. O(what is forgotten)."""
        quotes = self._quotes
        horizon = mono_ns - self._memory_ns
        forgotten = 0
        # Quotes are inserted in deadline order (one TTL for all), so the oldest come first.
        while quotes:
            quote_id = next(iter(quotes))
            if quotes[quote_id].deadline_mono_ns >= horizon:
                break
            del quotes[quote_id]
            forgotten += 1
        oldest = mono_ns - self._duplicate_ns
        for state in self._clients.values():
            ids = state.rfq_ids
            while ids:
                rfq_id = next(iter(ids))
                if ids[rfq_id] >= oldest:
                    break
                del ids[rfq_id]
        return forgotten


def _drain(steps: Generator[None, None, T]) -> T:
    """Run a generator of steps to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result


def _side_of(key: str) -> Side:
    return Side.BUY if key == "ask" else Side.SELL


def _position_changes(
    inst: InstrumentConfig, side: Side, qty: Decimal, price: Decimal
) -> dict[str, Decimal]:
    """How a client trade moves the desk's positions: a client buy makes us short base."""
    notional = _CTX.multiply(qty, price)
    if side is Side.BUY:
        return {inst.base: -qty, inst.quote: notional}
    return {inst.base: qty, inst.quote: -notional}
