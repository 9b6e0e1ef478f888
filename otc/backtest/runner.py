"""The backtest: recorded books and an RFQ flow through the live engine's own code.

:class:`Backtest` replays book events into a real :class:`~otc.market.Market` (the books, the
consolidated view and the estimator the live engine uses) and hands RFQs and accepts to a real
:class:`~otc.quoting.QuoteEngine` (checks, limits, pricing, skew), driven by a
:class:`~otc.clock.FakeClock` set from the recording: there is no second copy of the pricing.
The quote's explanation (the estimated hedge cost among it) is read back from the engine's
journal, as an auditor would.

Time. Every event moves the clock to its ``ts_recv_ns`` (never backwards). Scheduled actions
(an RFQ, the client's answer, a hedge, a markout probe, a chart sample) run at their due time,
after every event received at or before it and before any later one.

The flow of one RFQ:

1. at its time the RFQ goes to ``QuoteEngine.on_rfq``; a quote or a reject comes back;
2. ``accept.delay_ms`` later the client decides with the scenario's accept model, and an
   accept goes to ``QuoteEngine.on_accept`` (a fill, or e.g. ``EXPIRED``);
3. ``hedge.latency_ms`` after the fill, the desk hedges the filled qty on the recorded books of
   the venues usable then, walking them in fee-adjusted order with the estimator. With
   ``hedge.consume`` the levels a hedge takes are reduced by what it took, for later hedges
   only, until the venue's feed updates that level (its new size is the venue's word) or sends
   a snapshot. The recorded books the engine prices from are never changed by our hedges.
4. markouts: the consolidated mid 1 s, 10 s and 60 s after the quote.

Scores are computed by :mod:`otc.backtest.scores` from the :class:`RfqRecord` s.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Context, Decimal
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import msgspec

from otc.backtest.scenario import (
    AcceptAlways,
    AcceptBenchmark,
    AcceptRandom,
    Scenario,
)
from otc.book import ConsolidatedBook, L2Book
from otc.clock import FakeClock
from otc.config import Config, InstrumentConfig
from otc.errors import ConfigError, InsufficientDepth
from otc.journal import MemoryJournal
from otc.market import Market
from otc.model import BPS_DENOMINATOR, BookDelta, BookEvent, BookSnapshot, Scale, Side
from otc.model import decimal_text as text
from otc.pricing import PriceExplanation, lots_down
from otc.quoting import QuoteEngine
from otc.slippage import estimate, max_qty_within, walk

__all__ = [
    "HORIZONS_MS",
    "Backtest",
    "DataGap",
    "HedgeResult",
    "ModelCheck",
    "RfqRecord",
    "Sample",
    "backtest_config",
    "event_batches",
]

_CTX = Context(prec=60)
_NS_PER_MS = 1_000_000
#: Chart samples a gap in the data may take before the rest of it is skipped (see _run_due).
_MAX_FLAT_SAMPLES = 10_000
#: Markout horizons: label -> ms after the quote.
HORIZONS_MS = {"1s": 1_000, "10s": 10_000, "60s": 60_000}
#: Depth on the charts: the qty whose all-in average (taker fees included) stays within this
#: many bps of mid. Wider than the usual taker fee (10 bps on some venues), so that the chart
#: shows depth rather than the fee: at 10 bps a 10-bps-fee venue contributes nothing.
DEPTH_BPS = Decimal(25)
_SIDES = {"buy": Side.BUY, "sell": Side.SELL}
_BUCKET = 512


def backtest_config(config: Config, scenario: Scenario, *, source: str = "scenario") -> Config:
    """The engine config of a backtest: the scenario's venues and quote lifetime applied.

    Raises:
        ConfigError: a venue of the scenario (file ``source``) is given twice, or names a
            symbol that is not an instrument of ``config``; a symbol or client the scenario
            names (``symbols``, ``flow.clients``, ``rfqs[]``) is not in ``config`` (a typo
            there would only show as a backtest of rejects).
    """
    venues = {v.name: v for v in config.venues}
    symbols = {inst.symbol for inst in config.instruments}
    clients = {c.id for c in config.clients}
    named = [(f"$.symbols[{i}]", s, "instrument") for i, s in enumerate(scenario.symbols)]
    named += [(f"$.flow.clients.{c}", c, "client") for c in scenario.flow.clients]
    for i, spec in enumerate(scenario.rfqs):
        named += [(f"$.rfqs[{i}].symbol", spec.symbol, "instrument")]
        named += [(f"$.rfqs[{i}].client", spec.client, "client")]
    for path, name, what in named:
        if name not in (clients if what == "client" else symbols):
            raise ConfigError(source, path, f"{name!r} is not a configured {what}")
    for i, venue in enumerate(scenario.venues):
        if any(other.name == venue.name for other in scenario.venues[:i]):
            raise ConfigError(source, f"$.venues[{i}].name", f"{venue.name} given twice")
        for symbol in venue.symbols:
            if symbol not in symbols:
                raise ConfigError(
                    source, f"$.venues[{i}].symbols.{symbol}", "not a configured instrument"
                )
        venues[venue.name] = venue
    quoting = config.quoting
    if scenario.quote_ttl_ms is not None:
        quoting = msgspec.structs.replace(quoting, quote_ttl_ms=scenario.quote_ttl_ms)
    return msgspec.structs.replace(config, venues=list(venues.values()), quoting=quoting)


def refused_event(source: str, event: BookEvent, exc: ValueError) -> ConfigError:
    """The error of a recorded ``event`` (of the data ``source``) that its book refused."""
    kind = "snapshot" if isinstance(event, BookSnapshot) else "delta"
    where = (
        f"{kind} of {event.venue} {event.symbol} received at {event.ts_recv_ns} ns "
        f"(sequence {event.sequence})"
    )
    return ConfigError(source, where, str(exc))


def recorded_scales(config: Config) -> dict[str, Scale]:
    """Recorded symbol -> the scale our books keep: ours and every venue's own names."""
    scales: dict[str, Scale] = {}
    for inst in config.instruments:
        scales[inst.symbol] = inst.scale
    for venue in config.venues:
        for ours, theirs in venue.symbols.items():
            scales.setdefault(theirs, config.instrument(ours).scale)
    return scales


async def event_batches(
    paths: Iterable[str | Path], scales: dict[str, Scale], *, batch_size: int = 4096
) -> AsyncIterator[list[BookEvent]]:
    """The events of recordings / tardis CSVs (:class:`feeds.replay.ReplayFeed`) in batches,
    read and parsed in a worker thread so the loop never blocks on gzip or parsing."""
    from feeds.replay import ReplayFeed

    iterator = ReplayFeed(list(paths), scales=scales).iter_events()
    loop = asyncio.get_running_loop()
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="otc-backtest")
    try:
        while batch := await loop.run_in_executor(reader, _take, iterator, batch_size):
            yield batch
    finally:
        reader.submit(iterator.close)
        reader.shutdown(wait=False)


def _take(iterator: Iterator[BookEvent], count: int) -> list[BookEvent]:
    return list(islice(iterator, count))


class HedgeResult(msgspec.Struct, frozen=True, kw_only=True):
    """The hedge of one fill, walked on the recorded books at ``ts_ns``."""

    ts_ns: int
    qty: Decimal
    qty_filled: Decimal
    shortfall_qty: Decimal
    notional: Decimal
    fees: Decimal
    avg_price_all_in: Decimal | None
    mid: Decimal | None
    levels: int
    route: dict[str, Decimal]


class ModelCheck(msgspec.Struct, frozen=True, kw_only=True):
    """Impact-model extrapolation on books cut to ``levels`` vs the walk on the full book."""

    side: str
    qty: Decimal
    truncated_depth: Decimal
    model_all_in: Decimal
    full_all_in: Decimal
    error_bps: Decimal


class Sample(msgspec.Struct, frozen=True):
    """A chart point: consolidated mid and depth within :data:`DEPTH_BPS` of a symbol."""

    ts_ns: int
    symbol: str
    mid: Decimal
    bid_depth: Decimal
    ask_depth: Decimal


class DataGap(msgspec.Struct, frozen=True):
    """A venue book of a symbol silent for longer than the engine's ``max_book_age_ms``.

    The recording holds no event for it from ``start_ns`` to ``end_ns``: the engine priced
    without that venue (stale) in between, as it would have live.
    """

    venue: str
    symbol: str
    start_ns: int
    end_ns: int


class RfqRecord:
    """Everything about one RFQ of the flow, filled in as the replay goes."""

    __slots__ = (
        "accept_outcome",
        "at_ns",
        "client",
        "direction",
        "estimated_all_in",
        "fill_price",
        "fill_qty",
        "fill_ts_ns",
        "hedge",
        "markouts",
        "mid_at_quote",
        "model_checks",
        "notional",
        "outcome",
        "pick",
        "qty",
        "quote",
        "quote_id",
        "reason",
        "rfq_id",
        "side",
        "size",
        "symbol",
        "tier",
    )

    def __init__(
        self,
        *,
        rfq_id: str,
        at_ns: int,
        client: str,
        side: str,
        direction: str,
        symbol: str | None = None,
        qty: Decimal | None = None,
        notional: Decimal | None = None,
        size: Decimal | None = None,
        pick: float = 0.0,
    ) -> None:
        self.rfq_id = rfq_id
        self.at_ns = at_ns
        self.client = client
        self.side = side
        #: The side the client takes if it accepts (its real interest, for a two-way RFQ).
        self.direction = direction
        self.symbol = symbol
        self.qty = qty
        self.notional = notional
        #: Generated size, not yet in lots / whole quote units (symbol drawn at RFQ time).
        self.size = size
        self.pick = pick
        self.tier = ""
        self.outcome = "not_reached"  # "quote" or the reject code
        self.reason = ""
        self.quote_id = ""
        self.quote: dict[str, Any] = {}
        self.mid_at_quote: Decimal | None = None
        #: Quote side key ("bid"/"ask") -> the engine's estimated hedge all-in price.
        self.estimated_all_in: dict[str, Decimal] = {}
        self.accept_outcome = ""  # "", "declined", "filled", "incomplete" or the reject code
        self.fill_price: Decimal | None = None
        self.fill_qty: Decimal | None = None
        self.fill_ts_ns = 0
        self.hedge: HedgeResult | None = None
        self.markouts: dict[str, Decimal | None] = {}
        self.model_checks: list[ModelCheck] = []

    @property
    def quoted_price(self) -> Decimal | None:
        """Our price on the client's side: the ask for a buy, the bid for a sell."""
        value = self.quote.get("ask" if self.direction == "buy" else "bid")
        return Decimal(value) if isinstance(value, str) else None


def _generated_flow(config: Config, scenario: Scenario, start_ns: int) -> list[RfqRecord]:
    """The seeded flow: Poisson arrivals, log-uniform sizes, weighted sides and clients."""
    flow = scenario.flow
    rng = random.Random(f"otc-backtest-flow-{flow.seed}")
    clients = flow.clients or {c.id: 1 for c in config.clients}
    client_ids = sorted(c for c, w in clients.items() if w > 0)
    client_weights = [clients[c] for c in client_ids]
    sides = sorted(s for s, w in flow.sides.items() if w > 0)
    side_weights = [flow.sides[s] for s in sides]
    rate = float(flow.rate_per_s)
    low, high = math.log(flow.size_min), math.log(flow.size_max)
    t = start_ns + scenario.warmup_ms * _NS_PER_MS
    records = []
    for i in range(flow.rfqs if client_ids else 0):
        t += round(rng.expovariate(rate) * 1e9)
        side = rng.choices(sides, side_weights)[0]
        direction = side if side != "two_way" else rng.choice(["buy", "sell"])
        size = Decimal(repr(math.exp(rng.uniform(low, high))))
        records.append(
            RfqRecord(
                rfq_id=f"bt-{i + 1}",
                at_ns=t,
                client=rng.choices(client_ids, client_weights)[0],
                side=side,
                direction=direction,
                size=size,
                pick=rng.random(),
            )
        )
    return records


def _listed_flow(scenario: Scenario, start_ns: int) -> list[RfqRecord]:
    records = []
    for i, spec in enumerate(scenario.rfqs):
        direction = spec.side if spec.side != "two_way" else (spec.accept_side or "buy")
        records.append(
            RfqRecord(
                rfq_id=spec.rfq_id or f"bt-{i + 1}",
                at_ns=start_ns + spec.at_ms * _NS_PER_MS,
                client=spec.client,
                side=spec.side,
                direction=direction,
                symbol=spec.symbol,
                qty=spec.qty,
                notional=spec.notional,
            )
        )
    return records


class Backtest:
    """One backtest run: a scenario over recorded books, through the engine's own code.

    Args:
        config: the engine configuration (instruments, venues, tiers, clients, risk...);
            apply :func:`backtest_config` first for the scenario's venues and quote lifetime.
        scenario: the flow, accept model, hedging and options.
        progress: where a one-line progress report goes while replaying (``None``: nowhere).
        run_id: prefix of quote and trade ids.
        source: the data replayed, as an error about one of its events names it (the files).
    """

    def __init__(
        self,
        config: Config,
        scenario: Scenario,
        *,
        progress: TextIO | None = None,
        run_id: str = "bt",
        source: str = "recorded data",
    ) -> None:
        self.config = config
        self.scenario = scenario
        self.progress = progress
        self.source = source
        self.clock = FakeClock(0)
        self.market = Market(config)
        self.journal = MemoryJournal()
        self.engine = QuoteEngine(config, self.market, self.journal, self.clock, run_id=run_id)
        self.instruments = {inst.symbol: inst for inst in config.instruments}
        self.fees = {v.name: v.fee for v in config.venues}
        latency = scenario.hedge.latency_ms
        self.hedge_latency_ns = (
            latency if latency is not None else config.risk.hedge_latency_ms
        ) * _NS_PER_MS
        self.accept_rng = random.Random(f"otc-backtest-accept-{scenario.flow.seed}")
        self.records: list[RfqRecord] = []
        self.samples: list[Sample] = []
        #: Counters: book events applied, and skipped (venue or symbol not configured).
        self.deltas = 0
        self.snapshots = 0
        self.ignored = 0
        #: Deltas for a venue book that had no snapshot yet (the data starts mid-stream): the
        #: book is out of sync, excluded from every view, until its first snapshot.
        self.unsynced = 0
        #: Events stamped before one replayed earlier (a recording's clock stepped back, or
        #: files that overlap out of order): applied at the time the replay had reached.
        self.out_of_order = 0
        #: Model checks left out: sells the impact model gives no positive price for.
        self.model_unpriced = 0
        #: Silences longer than ``max_book_age_ms`` in a venue's book (see :class:`DataGap`).
        self.gaps: list[DataGap] = []
        self._gap_ns = config.estimator.max_book_age_ms * _NS_PER_MS
        self.first_ns: int | None = None
        self.last_ns = 0
        self.wall_s = 0.0
        self._routes: dict[tuple[str, str], str | None] = {}
        self._heap: list[tuple[int, int, str, RfqRecord | None, str]] = []
        self._seq = 0
        #: (symbol, venue) -> {(is_bid, price): lots taken by our hedges}.
        self._taken: dict[tuple[str, str], dict[tuple[bool, int], int]] = {}
        self._symbols_seen: set[str] = set()

    # -- the replay loop ------------------------------------------------------------------------

    async def run(self, batches: AsyncIterator[list[BookEvent]]) -> list[RfqRecord]:
        """Replay every event, running the flow's actions on time; returns the records."""
        started = time.perf_counter()
        routes = self._routes
        apply = self.market.apply
        clock = self.clock
        heap = self._heap
        taken = self._taken
        synced: set[tuple[str, str]] = set()
        seen: dict[tuple[str, str], int] = {}  # (venue, recorded symbol) -> last event time
        gap_ns = self._gap_ns
        next_due = math.inf
        now = 0
        shown = started
        async for batch in batches:
            for event in batch:
                key = (event.venue, event.symbol)
                symbol = routes[key] if key in routes else self._route(key)
                if symbol is None:
                    self.ignored += 1
                    continue
                t = event.ts_recv_ns
                last = seen.get(key)
                if last is not None and t - last > gap_ns:
                    self.gaps.append(DataGap(event.venue, symbol, last, t))
                seen[key] = t
                if t < now:
                    self.out_of_order += 1  # applied at the time already reached
                elif t > now:
                    if self.first_ns is None:
                        self._first(t)
                        next_due = heap[0][0] if heap else math.inf
                    if t > next_due:
                        await self._run_due(t)
                        next_due = heap[0][0] if heap else math.inf
                    now = t
                    clock.set(t)
                try:
                    apply(event, symbol)
                except ValueError as exc:  # a level no book holds (a negative size...)
                    raise refused_event(self.source, event, exc) from None
                if type(event) is BookDelta:
                    self.deltas += 1
                    if (symbol, event.venue) not in synced:
                        self.unsynced += 1  # no snapshot yet: the book stays excluded
                else:
                    self.snapshots += 1
                    synced.add((symbol, event.venue))
                if taken:
                    self._release(symbol, event)
            if self.progress is not None and time.perf_counter() - shown > 0.5:
                shown = time.perf_counter()
                self._show_progress(now)
        self.last_ns = now
        if self.first_ns is not None:
            await self._run_due(now + 1)  # what is due at the last event's time still runs
        self._finish()
        self.wall_s = time.perf_counter() - started
        if self.progress is not None:
            self._show_progress(now)
            self.progress.write("\n")
        return self.records

    def _show_progress(self, now: int) -> None:
        assert self.progress is not None
        span = (now - self.first_ns) / 1e9 if self.first_ns is not None else 0.0
        done = sum(r.outcome != "not_reached" for r in self.records)
        total = len(self.records)
        width = 24
        filled = width * done // total if total else width
        self.progress.write(
            f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {done}/{total} RFQs, "
            f"{self.deltas:,} deltas, {span:,.1f} s recorded"
        )
        self.progress.flush()

    def _route(self, key: tuple[str, str]) -> str | None:
        """Our symbol for a (venue, recorded symbol), ``None`` when not configured."""
        venue, recorded = key
        found: str | None = None
        for cfg in self.config.venues:
            if cfg.name != venue or not cfg.enabled:
                continue
            if recorded in cfg.symbols:
                found = recorded
            else:
                found = next((o for o, t in cfg.symbols.items() if t == recorded), None)
        self._routes[key] = found
        if found is not None:
            self._symbols_seen.add(found)
        return found

    def _first(self, t: int) -> int:
        """The first event: the flow is laid out from its time."""
        self.first_ns = t
        scenario = self.scenario
        if scenario.rfqs:
            records = _listed_flow(scenario, t)
        else:
            records = _generated_flow(self.config, scenario, t)
        self.records = records
        for record in records:
            self._schedule(record.at_ns, "rfq", record)
        if scenario.chart_sample_ms:
            self._schedule(t + scenario.chart_sample_ms * _NS_PER_MS, "sample", None)
        return t

    def _schedule(self, due: int, kind: str, record: RfqRecord | None, arg: str = "") -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, kind, record, arg))

    async def _run_due(self, t: int) -> None:
        """Run every action due before ``t``, in time order, each at its due time."""
        heap = self._heap
        while heap and heap[0][0] < t:
            due, _, kind, record, arg = heapq.heappop(heap)
            if due > self.clock.now_ns():
                self.clock.set(due)
            if kind == "sample":
                self._sample(due)
                step = self.scenario.chart_sample_ms * _NS_PER_MS
                following = due + step
                if t - following > _MAX_FLAT_SAMPLES * step:
                    # A long gap in the data (a recording of two days, a clock that jumped):
                    # nothing moves the books in it, so sample once more just before it ends
                    # rather than millions of times.
                    following = t - step
                self._schedule(following, "sample", None)
                continue
            assert record is not None
            if kind == "rfq":
                await self._rfq(record, due)
            elif kind == "accept":
                await self._accept(record, due)
            elif kind == "hedge":
                self._hedge(record, due)
            else:
                record.markouts[arg] = self._mid(record.symbol or "", due)

    def _finish(self) -> None:
        """The data ended: what was still to happen cannot be scored."""
        for _, _, kind, record, _ in self._heap:
            if record is None:
                continue
            if kind in ("accept", "hedge"):
                record.accept_outcome = "incomplete"
        self._heap.clear()

    # -- books --------------------------------------------------------------------------------

    def _mid(self, symbol: str, now: int) -> Decimal | None:
        book = self.market.books.get(symbol)
        if book is None:
            return None
        mid2 = book.view(now).mid2
        return None if mid2 is None else _CTX.divide(book.scale.price_text(mid2), 2)

    def _release(self, symbol: str, event: BookEvent) -> None:
        """The venue updated levels our hedges took from: its new sizes stand."""
        key = (symbol, event.venue)
        taken = self._taken.get(key)
        if taken is None:
            return
        if isinstance(event, BookSnapshot):
            del self._taken[key]
            return
        for price, _ in event.bids:
            taken.pop((True, price), None)
        for price, _ in event.asks:
            taken.pop((False, price), None)
        if not taken:
            del self._taken[key]

    def _sample(self, now: int) -> None:
        for symbol in sorted(self._symbols_seen):
            view = self.market.books[symbol].view(now)
            if view.mid2 is None:
                continue
            mid = _CTX.divide(view.scale.price_text(view.mid2), 2)
            bid = max_qty_within(view, Side.SELL, DEPTH_BPS).qty
            ask = max_qty_within(view, Side.BUY, DEPTH_BPS).qty
            self.samples.append(Sample(now, symbol, mid, bid, ask))

    # -- the flow -----------------------------------------------------------------------------

    def _resolve(self, record: RfqRecord, now: int) -> InstrumentConfig | None:
        """Draw the symbol of a generated RFQ and put its size in lots or whole units."""
        if record.symbol is None:
            candidates = self.scenario.symbols or sorted(self._symbols_seen)
            if not candidates:
                return None
            usable = [s for s in candidates if self._mid(s, now) is not None] or candidates
            record.symbol = usable[min(len(usable) - 1, int(record.pick * len(usable)))]
        inst = self.instruments.get(record.symbol)
        if record.size is not None and record.qty is None and record.notional is None:
            if self.scenario.flow.size_unit == "base":
                lot = inst.lot_size if inst is not None else Decimal(1)
                record.qty = lots_down(record.size, lot)
                if record.qty <= 0:
                    record.qty = lot
            else:
                record.notional = max(Decimal(1), record.size.quantize(Decimal(1)))
        return inst

    async def _rfq(self, record: RfqRecord, now: int) -> None:
        inst = self._resolve(record, now)
        state = next((c for c in self.config.clients if c.id == record.client), None)
        record.tier = state.tier if state is not None else ""
        body: dict[str, str] = {
            "rfq_id": record.rfq_id,
            "symbol": record.symbol or "",
            "side": record.side,
        }
        if record.qty is not None:
            body["qty"] = text(record.qty)
        elif record.notional is not None:
            body["notional"] = text(record.notional)
        out = await self.engine.on_rfq(record.client, msgspec.json.encode(body))
        reply = msgspec.json.decode(out[0].payload)
        if reply["type"] != "quote":
            record.outcome, record.reason = reply["code"], reply["reason"]
            record.mid_at_quote = self._mid(record.symbol or "", now)
            return
        record.outcome = "quote"
        record.quote = reply
        record.quote_id = reply["quote_id"]
        event = self.journal.events[-1]  # the quote, with its explanation
        assert event.kind == "quote"
        assert event.quote_id == record.quote_id
        explanation: dict[str, PriceExplanation] = event.payload["explanation"]  # type: ignore[assignment]
        for key, expl in explanation.items():
            record.estimated_all_in[key] = expl.hedge_all_in
            record.mid_at_quote = expl.mid
        for label, ms in HORIZONS_MS.items():
            self._schedule(now + ms * _NS_PER_MS, "markout", record, label)
        delay = self.scenario.accept.delay_ms
        self._schedule(now + delay * _NS_PER_MS, "accept", record)
        if self.scenario.model_check_levels and inst is not None:
            self._model_check(record, inst, now)

    def _decide(self, record: RfqRecord, now: int) -> bool:
        model = self.scenario.accept
        if isinstance(model, AcceptAlways):
            return True
        price = record.quoted_price
        mid = self._mid(record.symbol or "", now)
        draw = Decimal(self.accept_rng.random()) if isinstance(model, AcceptRandom) else None
        if price is None or mid is None:
            return False
        buy = record.direction == "buy"
        markup = _CTX.divide((price - mid) if buy else (mid - price), mid) * BPS_DENOMINATOR
        if isinstance(model, AcceptBenchmark):
            return markup <= model.benchmark_bps
        assert draw is not None
        probability = model.probability_at_mid - model.probability_per_bps * markup
        return draw < min(Decimal(1), max(Decimal(0), probability))

    async def _accept(self, record: RfqRecord, now: int) -> None:
        if not self._decide(record, now):
            record.accept_outcome = "declined"
            return
        body = {"quote_id": record.quote_id, "side": record.direction}
        out = await self.engine.on_accept(record.client, msgspec.json.encode(body))
        reply = msgspec.json.decode(out[0].payload)
        if reply["type"] != "fill":
            record.accept_outcome, record.reason = reply["code"], reply["reason"]
            return
        record.accept_outcome = "filled"
        record.fill_price = Decimal(reply["price"])
        record.fill_qty = Decimal(reply["qty"])
        record.fill_ts_ns = now
        self._schedule(now + self.hedge_latency_ns, "hedge", record)

    def _hedge(self, record: RfqRecord, now: int) -> None:
        """Walk the recorded books (less what earlier hedges took) for the filled qty."""
        symbol = record.symbol or ""
        consolidated = self.market.books[symbol]
        side = _SIDES[record.direction]  # a client buy is hedged by buying
        qty = record.fill_qty
        assert qty is not None
        scale = consolidated.scale
        lots = scale.size(qty)
        view = consolidated.view(now)
        is_bid = side is Side.SELL
        hedge_book = ConsolidatedBook(symbol, scale)
        for name, state in view.included.items():
            taken = self._taken.get((symbol, name), {}) if self.scenario.hedge.consume else {}
            levels = []
            cum = 0
            for price, size in state.book.levels(side):
                size -= taken.get((is_bid, price), 0)
                if size <= 0:
                    continue
                levels.append((price, size))
                cum += size
                if cum >= lots:
                    break
            copy = L2Book(name, symbol, scale)
            if is_bid:
                copy.apply_snapshot(levels, ())
            else:
                copy.apply_snapshot((), levels)
            hedge_book.add_venue(copy, state.fee)
        hedge_view = hedge_book.view(None)
        est = estimate(hedge_view, side, qty=qty)
        if self.scenario.hedge.consume and est.qty_filled > 0:
            done = walk(hedge_view, side, lots=lots)
            ladder = done.ladder
            for i in range(done.full + (1 if done.partial else 0)):
                amount = ladder.sizes[i] if i < done.full else done.partial
                book_taken = self._taken.setdefault((symbol, ladder.venues[i]), {})
                key = (is_bid, ladder.prices[i])
                book_taken[key] = book_taken.get(key, 0) + amount
        record.hedge = HedgeResult(
            ts_ns=now,
            qty=qty,
            qty_filled=est.qty_filled,
            shortfall_qty=est.shortfall_qty or Decimal(0),
            notional=est.notional_filled,
            fees=est.fees,
            avg_price_all_in=est.avg_price_all_in,
            mid=self._mid(symbol, now),
            levels=est.levels,
            route={name: fill.qty for name, fill in sorted(est.allocation.items())},
        )

    # -- beyond-depth model check ---------------------------------------------------------------

    def _model_check(self, record: RfqRecord, inst: InstrumentConfig, now: int) -> None:
        """Cut the books to their top N levels, extrapolate with the impact model, compare."""
        if inst.impact is None:
            return
        depth = self.scenario.model_check_levels
        consolidated = self.market.books[inst.symbol]
        view = consolidated.view(now)
        cut = ConsolidatedBook(inst.symbol, consolidated.scale)
        for name, state in view.included.items():
            copy = L2Book(name, inst.symbol, consolidated.scale)
            copy.apply_snapshot(islice(state.book.bids(), depth), islice(state.book.asks(), depth))
            cut.add_venue(copy, state.fee)
        cut_view = cut.view(None)
        qty = Decimal(record.quote["qty"])
        for key in sorted(record.estimated_all_in):
            side = Side.BUY if key == "ask" else Side.SELL
            try:
                model = estimate(cut_view, side, qty=qty, impact=inst.impact)
            except InsufficientDepth:  # a sell the model gives no positive price
                self.model_unpriced += 1
                continue
            full = estimate(view, side, qty=qty)
            if model.impact is None or full.depth_exhausted or full.avg_price_all_in is None:
                continue  # within the cut depth (the same walk), or beyond the whole book
            model_price = model.impact.total_avg_price_all_in
            full_price = full.avg_price_all_in
            diff = model_price - full_price if side is Side.BUY else full_price - model_price
            record.model_checks.append(
                ModelCheck(
                    side=side.value,
                    qty=qty,
                    truncated_depth=model.qty_filled,
                    model_all_in=model_price,
                    full_all_in=full_price,
                    error_bps=_CTX.divide(diff * BPS_DENOMINATOR, full_price),
                )
            )


def run_backtest(
    config: Config,
    scenario: Scenario,
    paths: list[Path],
    *,
    progress: TextIO | None = None,
) -> Backtest:
    """Run a whole backtest over recorded files (in its own event loop); returns it, done."""
    bt = Backtest(config, scenario, progress=progress, source=", ".join(map(str, paths)))

    async def main() -> None:
        await bt.run(event_batches(paths, recorded_scales(config)))

    asyncio.run(main())
    return bt


def _default_progress() -> TextIO | None:
    return sys.stderr if sys.stderr.isatty() else None


#: For callers that want "a progress line when a person is watching".
default_progress: Callable[[], TextIO | None] = _default_progress
