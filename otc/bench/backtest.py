"""``otc bench backtest``: backtest replay throughput next to the raw book update rate.

What it measures, in one process, on book events read into memory beforehand (file decoding
is not timed; it is the replay source's cost, measured by ``otc bench feeds``):

1. **raw book** (the baseline): level updates/s of :class:`~otc.book.L2Book` on the
   ``otc bench book`` stream (1,000 levels a side, ``update_bid``/``update_ask`` in a bare
   loop): the book's own rate, nothing around it;
2. **Market.apply**: the recorded events applied by :meth:`otc.market.Market.apply` in a bare
   loop (the books the engine uses, routing by venue and symbol, snapshot sync);
3. **replay loop**: the same events through :meth:`otc.backtest.runner.Backtest.run` with no
   RFQs and no chart samples (clock, routing, scheduling checks, counters, batches from an
   async iterator);
4. **backtest**: the same with the default scenario: 100 RFQs (quotes, accepts, hedges,
   markouts) and the report's chart samples at 1 Hz (each one walks both sides' ladders, which
   are rebuilt after book changes: this, not the loop, is most of the difference);
5. **Market.apply + record**: loop 2 with what ``otc serve --record`` adds on the event loop
   per event applied, :meth:`feeds.record.Recorder.record` (encoding into memory); the
   compression and disk write of those events, which the engine does in a worker thread, are
   timed apart (one flush of everything recorded, to a temporary file).

Rates are given in book deltas/s (events) and level updates/s (the levels the deltas carry),
each the best of ``repeats`` runs, gc off. The events are the given recordings, or by default
a seeded synthetic BTC-USDT market on six venues (``feeds.sim``).
"""

from __future__ import annotations

import asyncio
import gc
import platform
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from time import perf_counter_ns
from typing import Any, TextIO

import msgspec

from otc.backtest.runner import Backtest, backtest_config, recorded_scales
from otc.backtest.scenario import Flow, Scenario
from otc.bench import book as bench_book
from otc.config import Config, load_config
from otc.market import Market
from otc.model import BookDelta, BookEvent

__all__ = ["run"]

CONFIG = Path(__file__).resolve().parents[2] / "config" / "otc.toml"


def synthetic_events(config: Config, deltas: int, seed: int = 7) -> list[BookEvent]:
    """A seeded BTC-USDT market: a snapshot per venue, then steps 100 ms apart."""
    from feeds.sim import SyntheticMarket

    inst = config.instrument("BTC-USDT")
    market = SyntheticMarket(inst.symbol, inst.scale, seed=seed)
    t = 1_700_000_000_000_000_000
    events: list[BookEvent] = list(market.snapshot_events(t))
    step = 0
    while len(events) < deltas:
        step += 1
        events.extend(market.step_events(step, t + step * 100_000_000))
    return events


def _batches(events: list[BookEvent], size: int = 4096) -> Callable[[], AsyncIterator[Any]]:
    async def gen() -> AsyncIterator[list[BookEvent]]:
        for i in range(0, len(events), size):
            yield events[i : i + size]

    return gen


def _best(fn: Callable[[], int], repeats: int) -> int:
    best = None
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            elapsed = fn()
        finally:
            gc.enable()
        best = elapsed if best is None else min(best, elapsed)
    assert best is not None
    return best


def run(
    *,
    data: list[Path] | None = None,
    deltas: int = 200_000,
    repeats: int = 3,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Run the benchmark, print the report to ``out`` (stdout) and return the figures."""
    write = (out if out is not None else sys.stdout).write
    base = load_config(CONFIG)
    empty = Scenario(flow=Flow(rfqs=0), chart_sample_ms=0)
    config = backtest_config(base, empty)
    if data:
        from feeds.replay import ReplayFeed

        events = list(ReplayFeed(data, scales=recorded_scales(config)).iter_events())
        source = ", ".join(p.name for p in data)
    else:
        events = synthetic_events(config, deltas)
        source = f"synthetic BTC-USDT, 6 venues, {len(events):,} events"
    n_deltas = sum(type(e) is BookDelta for e in events)
    levels = sum(len(e.bids) + len(e.asks) for e in events if type(e) is BookDelta)
    write(
        "otc bench backtest: replay throughput next to the raw book update rate\n"
        f"machine   {platform.platform()}; {platform.python_implementation()} "
        f"{platform.python_version()}\n"
        f"events    {source}: {n_deltas:,} deltas carrying {levels:,} level updates\n"
        f"method    best of {repeats}, events in memory, gc off, perf_counter_ns\n\n"
    )

    stream = bench_book.make_stream(deltas=min(deltas, 200_000), levels=1000, seed=7)

    def raw() -> int:
        book = bench_book._ours_build(stream.bids, stream.asks)
        return bench_book._ours_apply(book, stream.is_bid, stream.prices, stream.sizes)

    raw_ns = _best(raw, repeats)
    raw_rate = len(stream) / raw_ns * 1e9

    routes: dict[tuple[str, str], str | None] = {}
    for cfg in config.venues:
        for ours, theirs in cfg.symbols.items():
            routes[(cfg.name, theirs)] = ours
            routes[(cfg.name, ours)] = ours

    def apply_only() -> int:
        market = Market(config)
        apply = market.apply
        start = perf_counter_ns()
        for event in events:
            symbol = routes.get((event.venue, event.symbol))
            if symbol is not None:
                apply(event, symbol)
        return perf_counter_ns() - start

    def replay(scenario: Scenario) -> Callable[[], int]:
        cfg = backtest_config(base, scenario)

        def once() -> int:
            bt = Backtest(cfg, scenario)
            start = perf_counter_ns()
            asyncio.run(bt.run(_batches(events)()))
            return perf_counter_ns() - start

        return once

    from feeds.record import Recorder

    scales = {inst.symbol: inst.scale for inst in config.instruments}
    flush_ns: list[int] = []

    def apply_and_record() -> int:
        market = Market(config)
        apply = market.apply
        with tempfile.TemporaryDirectory(prefix="otc-bench-") as tmp:
            # Everything stays pending until the end (the flush is timed apart): no cap.
            recorder = Recorder(
                f"{tmp}/books.otc.gz", scales=scales, source="bench", max_pending_bytes=1 << 62
            )
            recorder.open()
            record = recorder.record
            start = perf_counter_ns()
            for event in events:
                symbol = routes.get((event.venue, event.symbol))
                if symbol is not None:
                    apply(event, symbol)
                    record([event])
            elapsed = perf_counter_ns() - start
            start = perf_counter_ns()
            recorder.writer.close()  # the worker thread's part: gzip + write
            flush_ns.append(perf_counter_ns() - start)
            assert recorder.error is None, recorder.error
        return elapsed

    apply_ns = _best(apply_only, repeats)
    record_ns = _best(apply_and_record, repeats)
    loop_ns = _best(replay(empty), repeats)
    flow_ns = _best(replay(Scenario()), repeats)

    def rates(ns: int) -> dict[str, float]:
        return {"deltas_per_s": n_deltas / ns * 1e9, "levels_per_s": levels / ns * 1e9}

    figures: dict[str, Any] = {
        "source": source,
        "deltas": n_deltas,
        "level_updates": levels,
        "raw_book_levels_per_s": raw_rate,
        "market_apply": rates(apply_ns),
        "replay_loop": rates(loop_ns),
        "backtest_100_rfqs": rates(flow_ns),
        "market_apply_record": rates(record_ns),
        "record_ns_per_event_on_loop": (record_ns - apply_ns) / len(events),
        "record_ns_per_event_in_thread": min(flush_ns) / len(events),
        "replay_loop_vs_market_apply": apply_ns / loop_ns,
        "replay_loop_vs_raw_book": levels / loop_ns * 1e9 / raw_rate,
    }
    write(f"{'':<28}{'deltas/s':>14}{'level updates/s':>18}{'vs raw book':>14}\n")
    write(f"{'raw L2Book (bench book)':<28}{'':>14}{raw_rate:>18,.0f}{'1.00x':>14}\n")
    for label, key in (
        ("Market.apply loop", "market_apply"),
        ("backtest replay loop", "replay_loop"),
        ("backtest, 100 RFQs", "backtest_100_rfqs"),
        ("Market.apply + record", "market_apply_record"),
    ):
        r = figures[key]
        write(
            f"{label:<28}{r['deltas_per_s']:>14,.0f}{r['levels_per_s']:>18,.0f}"
            f"{r['levels_per_s'] / raw_rate:>13.2f}x\n"
        )
    write(
        f"\nthe replay loop runs at {figures['replay_loop_vs_market_apply']:.2f}x the bare "
        "Market.apply loop on the same events\n"
        f"recording (otc serve --record) costs {figures['record_ns_per_event_on_loop'] / 1e3:.2f}"
        f" us per event on the event loop ({apply_ns / record_ns:.2f}x the bare loop's rate), "
        f"and {figures['record_ns_per_event_in_thread'] / 1e3:.2f} us per event of gzip + write "
        "in the worker thread\n"
    )
    return msgspec.to_builtins(figures, builtin_types=(Decimal,))  # type: ignore[no-any-return]
