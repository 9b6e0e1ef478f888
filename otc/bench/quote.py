"""``otc bench quote``: the quote path in one process, without a broker, next to a baseline.

``otc bench rfq`` times whole round trips through a broker, where the machine's noise, the
broker and the MQTT client's own work swamp the quote path's share. This benchmark times the
quote path alone, :meth:`~otc.quoting.QuoteEngine.on_rfq` called straight from a loop, on the
demo configuration ``config/otc.toml`` (per-client rate limit lifted) and a seeded synthetic
market (each configured symbol on the venues it consolidates, as in ``otc serve --feeds sim``),
with the RFQ mix of ``otc bench rfq`` (payloads built beforehand).

What it measures, per RFQ:

1. **baseline**: what any JSON responder does with an RFQ, the protocol's floor: decode it into
   a typed struct and encode a reply of the quote's shape (msgspec both ways), no pricing.
2. **no journal**: ``on_rfq`` back to back, with a journal that records nothing (its receipts
   settled at once): parsing, checks, the walk, pricing, limits, the reply.
3. **SQLite journal**: the same with the journal ``otc serve`` writes
   (:class:`~otc.journal.SqliteJournal`: WAL, ``synchronous=FULL``, group commit by its writer
   thread), the loop yielding every 16 RFQs so that commits are settled: the loop thread's CPU
   and elapsed time (the hand-over, settling receipts, and the GIL the writer holds while it
   encodes), and the writer thread's CPU up to the commit of the run's last event (encoding,
   SQLite, fsync; a marker event appended behind them is committed with them).
4. **paced**: the no-journal case in bursts of ``burst`` RFQs every ``gap_ms`` (the loop idle in
   between while one step of the synthetic market is applied), as traffic arrives at a serving
   engine rather than in a tight loop: caches and branch predictors go cold between bursts, and
   this, not the pricing code, is most of the difference to case 2 (and why ``otc bench rfq``'s
   probe sees a slower ``on_rfq`` than case 2).

Cases 1, 2 and 3 are each the median of ``repeats`` runs (for 2 and 3 a fresh engine each,
after a warm-up of 500 RFQs), case 4 one run; the garbage collector is set up as ``otc serve``
sets it (:func:`otc.app.tune_gc`), and restored at the end. CPU is ``thread_time_ns``, elapsed
``perf_counter_ns``. Every reply must be a quote, and the SQLite journal must hold an RFQ and a
quote event for every RFQ once it is closed; the benchmark fails otherwise.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import platform
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path
from time import perf_counter_ns, thread_time_ns
from typing import Any, Final, TextIO

import msgspec

from otc.app import sim_markets, tune_gc
from otc.bench.rfq import CONFIG_PATH, RFQ_MIX, bench_config, loop_factory
from otc.bench.rfq import requests as rfq_requests
from otc.clock import FakeClock
from otc.config import Config
from otc.errors import OtcError
from otc.journal import Journal, JournalEvent, Receipt, SqliteJournal
from otc.market import Market
from otc.protocol import Quote, decode_rfq
from otc.quoting import QuoteEngine

__all__ = ["run"]

CLIENT: Final = "client-a"
WARMUP: Final = 500
#: The loop yields to its other tasks (the journal's settlements) every this many RFQs.
YIELD_EVERY: Final = 16
_T0: Final = 1_700_000_000_000_000_000
_STEP_NS: Final = 100_000_000


class _Figures(msgspec.Struct, kw_only=True):
    """One case: per RFQ, in microseconds (medians over the repeats)."""

    cpu_us: float
    elapsed_us: float
    writer_cpu_us: float | None = None
    rfqs: int


class _NullJournal:
    """A journal that records nothing: every receipt is settled as it is handed out."""

    async def append(self, event: JournalEvent) -> None:
        return None

    async def submit(self, event: JournalEvent, *, urgent: bool = False) -> Receipt:
        receipt: Receipt = asyncio.get_running_loop().create_future()
        receipt.set_result(None)
        return receipt

    async def aclose(self) -> None:
        return None


class _Desk:
    """A market of synthetic books the engine prices from, moved one step at a time."""

    def __init__(self, config: Config, clock: FakeClock) -> None:
        self.config = config
        self.clock = clock
        self.market = Market(config)
        self._sims = sim_markets(config, self.market)
        for sim in self._sims:
            for event in sim.snapshot_events(clock.now_ns()):
                self.market.apply(event)
        self._sequence = itertools.count(1)

    def step(self) -> None:
        """One step of every synthetic market, stamped with the clock moved on by a step."""
        self.clock.advance(ns=_STEP_NS)
        now = self.clock.now_ns()
        for sim in self._sims:
            for event in sim.iter_step_events(next(self._sequence), now):
                self.market.apply(event)

    def engine(self, journal: Journal) -> QuoteEngine:
        return QuoteEngine(self.config, self.market, journal, self.clock)


def requests(n: int, tag: str) -> list[bytes]:
    """``n`` RFQ payloads of the mix, ids ``{tag}-{i}``: those of ``otc bench rfq``."""
    return [payload for _, payload in rfq_requests(tag, n)]


def _check(replies: list[bytes]) -> None:
    kinds = [msgspec.json.decode(r, type=dict[str, Any])["type"] for r in replies]
    if any(kind != "quote" for kind in kinds):
        first = next(r for r, k in zip(replies, kinds, strict=True) if k != "quote")
        raise OtcError(f"bench quote: a reply is not a quote: {first.decode()}")


def _cpu(figures: _Figures) -> float:
    return figures.cpu_us


def _baseline(payloads: list[bytes]) -> _Figures:
    """Decode each RFQ and encode a quote-shaped reply: no pricing, no state."""
    encode = msgspec.json.Encoder().encode
    replies = []
    cpu, wall = thread_time_ns(), perf_counter_ns()
    for payload in payloads:
        rfq = decode_rfq(payload)
        reply = Quote(
            rfq_id=rfq.rfq_id,
            quote_id="bench-q1",
            symbol=rfq.symbol,
            side=rfq.side,
            qty=rfq.qty or "1",
            bid="64000.01",
            ask=None,
            valid_until_ms=1_700_000_003_000,
        )
        replies.append(encode(reply))
    cpu, wall = thread_time_ns() - cpu, perf_counter_ns() - wall
    n = len(payloads)
    return _Figures(cpu_us=cpu / n / 1e3, elapsed_us=wall / n / 1e3, rfqs=n)


async def _back_to_back(engine: QuoteEngine, payloads: list[bytes]) -> tuple[int, int, list[bytes]]:
    """(loop CPU ns, elapsed ns, replies) of ``on_rfq`` over ``payloads``."""
    on_rfq = engine.on_rfq
    replies = []
    cpu, wall = thread_time_ns(), perf_counter_ns()
    for i, payload in enumerate(payloads):
        (out,) = await on_rfq(CLIENT, payload)
        replies.append(out.payload)
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    return thread_time_ns() - cpu, perf_counter_ns() - wall, replies


async def _null(desk: _Desk, rfqs: int, repeats: int) -> _Figures:
    cpus, walls = [], []
    for r in range(repeats):
        engine = desk.engine(_NullJournal())
        await _back_to_back(engine, requests(WARMUP, f"m{r}-warm"))
        cpu, wall, replies = await _back_to_back(engine, requests(rfqs, f"m{r}"))
        _check(replies)
        cpus.append(cpu / rfqs / 1e3)
        walls.append(wall / rfqs / 1e3)
    return _Figures(cpu_us=statistics.median(cpus), elapsed_us=statistics.median(walls), rfqs=rfqs)


async def _sqlite(desk: _Desk, rfqs: int, repeats: int, folder: Path) -> _Figures:
    cpus, walls, writers = [], [], []
    for r in range(repeats):
        path = folder / f"journal-{r}.sqlite"
        async with SqliteJournal(path, clock_ns=desk.clock.now_ns) as journal:
            engine = desk.engine(journal)
            await _back_to_back(engine, requests(WARMUP, f"s{r}-warm"))
            await _settled(journal, desk.clock.now_ns())
            writer = journal.writer_cpu_ns()
            cpu, wall, replies = await _back_to_back(engine, requests(rfqs, f"s{r}"))
            await _settled(journal, desk.clock.now_ns())
            writer_after = journal.writer_cpu_ns()
        _check(replies)
        events = await asyncio.to_thread(_count_events, path)
        if events != 2 * (rfqs + WARMUP):
            raise OtcError(f"bench quote: {events} events journaled for {rfqs + WARMUP} RFQs")
        cpus.append(cpu / rfqs / 1e3)
        walls.append(wall / rfqs / 1e3)
        if writer is not None and writer_after is not None:
            writers.append((writer_after - writer) / rfqs / 1e3)
    return _Figures(
        cpu_us=statistics.median(cpus),
        elapsed_us=statistics.median(walls),
        writer_cpu_us=statistics.median(writers) if writers else None,
        rfqs=rfqs,
    )


async def _settled(journal: SqliteJournal, now_ns: int) -> None:
    """Return once every event handed over so far is committed: a control event appended
    behind them (``append`` returns at its commit, which follows theirs)."""
    await journal.append(
        JournalEvent("control", "bench", now_ns, payload={"action": "bench_barrier"})
    )


def _count_events(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (n,) = conn.execute("SELECT count(*) FROM events WHERE kind IN ('rfq', 'quote')").fetchone()
    return int(n)


async def _paced(desk: _Desk, rfqs: int, burst: int, gap_ms: float) -> _Figures:
    engine = desk.engine(_NullJournal())
    await _back_to_back(engine, requests(WARMUP, "p-warm"))
    on_rfq = engine.on_rfq
    payloads = requests(rfqs, "p")
    cpu = wall = 0
    replies = []
    for start in range(0, rfqs, burst):
        desk.step()
        await asyncio.sleep(gap_ms / 1e3)
        for payload in payloads[start : start + burst]:
            c, w = thread_time_ns(), perf_counter_ns()
            (out,) = await on_rfq(CLIENT, payload)
            cpu += thread_time_ns() - c
            wall += perf_counter_ns() - w
            replies.append(out.payload)
    _check(replies)
    return _Figures(cpu_us=cpu / rfqs / 1e3, elapsed_us=wall / rfqs / 1e3, rfqs=rfqs)


def run(
    *,
    rfqs: int = 10_000,
    paced_rfqs: int = 2_000,
    burst: int = 20,
    gap_ms: float = 10.0,
    repeats: int = 3,
    out: TextIO | None = None,
    config_path: Path = CONFIG_PATH,
) -> dict[str, Any]:
    """Run the benchmark, print the report to ``out`` (stdout) and return the figures.

    Raises:
        OtcError: a reply was not a quote, or the journal misses events.
    """
    for name, value in (("rfqs", rfqs), ("paced_rfqs", paced_rfqs), ("burst", burst)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    if not 0 <= gap_ms <= 1_000:
        raise ValueError(f"gap_ms must be within 0..1000, got {gap_ms}")
    write = (out if out is not None else sys.stdout).write
    with tempfile.TemporaryDirectory(prefix="otc-bench-quote-") as tmp:
        config = bench_config(Path(tmp) / "unused.sqlite", config_path)
        desk = _Desk(config, FakeClock(_T0))
        factory, loop_name = loop_factory()
        write(
            "otc bench quote: QuoteEngine.on_rfq in one process, no broker, next to a baseline\n"
            f"machine   {platform.platform()}; {platform.python_implementation()} "
            f"{platform.python_version()}\n"
            f"loop      {loop_name}\n"
            f"market    synthetic, {', '.join(desk.market.books)}, the venues each consolidates\n"
            f"method    {rfqs:,} RFQs per run after {WARMUP} of warm-up, median of {repeats} runs; "
            f"paced: {paced_rfqs:,} RFQs in bursts of {burst} every {gap_ms:g} ms;\n"
            "          cpu: the loop thread's (thread_time_ns), elapsed: perf_counter_ns, "
            "per RFQ, us\n\n"
        )
        thresholds = gc.get_threshold()
        tune_gc()  # as `otc serve` does once it is up
        try:
            runs = sorted((_baseline(requests(rfqs, f"b{r}")) for r in range(repeats)), key=_cpu)
            base = runs[len(runs) // 2]
            with asyncio.Runner(loop_factory=factory) as runner:
                null = runner.run(_null(desk, rfqs, repeats))
                sqlite = runner.run(_sqlite(desk, rfqs, repeats, Path(tmp)))
                paced = runner.run(_paced(desk, paced_rfqs, burst, gap_ms))
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
    cases = {"baseline": base, "no_journal": null, "sqlite_journal": sqlite, "paced": paced}
    labels = {
        "baseline": "baseline: decode the RFQ, encode a reply",
        "no_journal": "on_rfq, no journal",
        "sqlite_journal": "on_rfq, SQLite journal",
        "paced": "on_rfq, no journal, paced",
    }
    write(f"{'':44}{'cpu us':>9}{'elapsed us':>12}{'x baseline':>12}{'writer cpu us':>15}\n")
    for key, fig in cases.items():
        writer = "" if fig.writer_cpu_us is None else f"{fig.writer_cpu_us:,.1f}"
        write(
            f"{labels[key]:44}{fig.cpu_us:9,.1f}{fig.elapsed_us:12,.1f}"
            f"{fig.cpu_us / base.cpu_us:11,.1f}x{writer:>15}\n"
        )
    write(
        f"\n          one core prices about {1e6 / null.cpu_us:,.0f} RFQs/s back to back, "
        f"{1e6 / paced.cpu_us:,.0f} paced; the SQLite journal adds "
        f"{sqlite.cpu_us - null.cpu_us:,.1f} us of the loop's CPU per RFQ\n"
    )
    return {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "loop": loop_name,
        "params": {
            "rfqs": rfqs,
            "paced_rfqs": paced_rfqs,
            "burst": burst,
            "gap_ms": gap_ms,
            "repeats": repeats,
            "warmup": WARMUP,
            "rfq_mix": [list(item) for item in RFQ_MIX],
        },
        "cases": {key: msgspec.to_builtins(fig) for key, fig in cases.items()},
        "ratios": {key: fig.cpu_us / base.cpu_us for key, fig in cases.items()},
    }
