"""otc replay-journal: a run's journal + the book events it applied reproduce every quote."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from feeds.record import RecordWriter, read_events
from feeds.sim import SyntheticMarket, default_venues
from otc.backtest.audit import replay_journal
from otc.clock import FakeClock
from otc.config import load_config
from otc.errors import ConfigError
from otc.journal import JournalError, SqliteJournal, export, recent
from otc.market import Market
from otc.model import BookDelta, BookSnapshot
from otc.quoting import QuoteEngine

CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"
T0 = 1_795_000_000_000_000_000


async def live_run(folder: Path, seed: int) -> tuple[Path, Path, int]:
    """The engine's code as `otc serve` runs it: a synthetic feed applied event by event, RFQs
    and accepts handled between events (also in the middle of a market step, within the same
    millisecond), a SQLite journal; every applied event recorded."""
    config = load_config(CONFIG)
    inst = config.instrument("BTC-USDT")
    market = Market(config)
    clock = FakeClock(T0)
    venues = [v for v in default_venues() if v.name in market.books["BTC-USDT"].venues]
    sim = SyntheticMarket(inst.symbol, inst.scale, venues=venues, seed=seed)
    journal_path, data = folder / "journal.sqlite", folder / "feed.jsonl.gz"
    quotes = 0
    async with SqliteJournal(journal_path, synchronous="NORMAL") as journal:
        engine = QuoteEngine(config, market, journal, clock)
        with RecordWriter(data, scales={inst.symbol: inst.scale}, source="test") as writer:
            for event in sim.snapshot_events(clock.now_ns()):
                market.apply(event)
                writer.write([event])
            for step in range(1, 80):
                clock.advance(ms=37)
                # Operator controls that change what follows: the replay must apply them too.
                if step == 20:
                    engine.set_tier_spread("gold", Decimal(30), operator="ops")
                elif step == 30:
                    engine.set_position("BTC", Decimal(-20), operator="ops")
                elif step == 44:
                    engine.set_halted("BTC-USDT", True, operator="ops")
                elif step == 50:
                    engine.set_halted("BTC-USDT", False, operator="ops")
                    engine.set_client_enabled("client-a", False, operator="ops")
                elif step == 54:
                    engine.set_client_enabled("client-a", True, operator="ops")
                await engine.flush_controls()
                for i, event in enumerate(sim.step_events(step, clock.now_ns())):
                    market.apply(event)
                    writer.write([event])
                    if step % 4 == 0 and i == 1:
                        side = ["buy", "sell", "two_way"][step % 3]
                        rfq = {"rfq_id": f"r{step}", "symbol": "BTC-USDT", "side": side}
                        rfq["qty" if step % 8 else "notional"] = "3" if step % 8 else "250000"
                        out = await engine.on_rfq("client-a", msgspec.json.encode(rfq))
                        reply = msgspec.json.decode(out[0].payload)
                        if reply["type"] == "quote":
                            quotes += 1
                            if step % 12 == 0:
                                clock.advance(ms=5)
                                accept = {"quote_id": reply["quote_id"], "side": "buy"}
                                await engine.on_accept("client-a", msgspec.json.encode(accept))
            await engine.on_rfq("client-a", b'{"rfq_id": "bad", "qty": "-1"}')
    return journal_path, data, quotes


def test_replay_reproduces_every_quote_exactly(tmp_path: Path) -> None:
    journal, data, quotes = asyncio.run(live_run(tmp_path, seed=5))
    assert quotes > 10
    result = replay_journal(load_config(CONFIG), journal, [data])
    assert result.mismatches == []
    assert result.identical
    assert result.journaled == result.reproduced >= quotes
    assert result.controls == 6
    codes = {
        row.payload.get("code") for row in recent(journal, limit=100_000) if row.kind == "reject"
    }
    assert {"MARKET_HALTED", "CLIENT_DISABLED"} <= codes  # the controls took effect live


def test_replay_over_another_feed_is_reported_different(tmp_path: Path) -> None:
    journal, _, _ = asyncio.run(live_run(tmp_path, seed=5))
    (tmp_path / "other").mkdir()
    _, other, _ = asyncio.run(live_run(tmp_path / "other", seed=6))
    result = replay_journal(load_config(CONFIG), journal, [other])
    assert not result.identical
    assert any(
        ".explanation." in m.path or m.path.startswith("$.payload") for m in result.mismatches
    )


def test_cli_prints_identical_and_exits_0(tmp_path: Path) -> None:
    journal, data, _ = asyncio.run(live_run(tmp_path, seed=5))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "otc.cli",
            "replay-journal",
            "--journal",
            str(journal),
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.strip().endswith("IDENTICAL")


async def concurrent_run(folder: Path) -> tuple[Path, Path]:
    """An RFQ priced while an accept waits for its journal commit, as the live engine does when
    messages arrive together: the fill lands in the journal after that RFQ's quote, and the
    quote was priced before the fill moved the desk's position (the skew)."""
    config = load_config(CONFIG)
    inst = config.instrument("BTC-USDT")
    market = Market(config)
    clock = FakeClock(T0)
    venues = [v for v in default_venues() if v.name in market.books["BTC-USDT"].venues]
    sim = SyntheticMarket(inst.symbol, inst.scale, venues=venues, seed=3)
    journal_path, data = folder / "journal.sqlite", folder / "feed.jsonl.gz"
    async with SqliteJournal(journal_path, synchronous="NORMAL") as journal:
        engine = QuoteEngine(config, market, journal, clock)
        with RecordWriter(data, scales={inst.symbol: inst.scale}, source="test") as writer:
            events = list(sim.snapshot_events(clock.now_ns()))
            for step in range(1, 5):
                events += sim.step_events(step, clock.now_ns())
            for event in events:
                market.apply(event)
            writer.write(events)
            rfq = {"rfq_id": "r1", "symbol": "BTC-USDT", "side": "buy", "qty": "25"}
            out = await engine.on_rfq("client-a", msgspec.json.encode(rfq))
            quote_id = msgspec.json.decode(out[0].payload)["quote_id"]
            clock.advance(ms=3)
            accept = asyncio.create_task(
                engine.on_accept("client-a", msgspec.json.encode({"quote_id": quote_id}))
            )
            for _ in range(3):
                await asyncio.sleep(0)
            assert not accept.done()  # waiting for the journal
            clock.advance(ms=1)
            rfq = {"rfq_id": "r2", "symbol": "BTC-USDT", "side": "two_way", "qty": "3"}
            await engine.on_rfq("client-b", msgspec.json.encode(rfq))
            fill = msgspec.json.decode((await accept)[0].payload)
            assert fill["type"] == "fill"
            clock.advance(ms=1)
            rfq = {"rfq_id": "r3", "symbol": "BTC-USDT", "side": "two_way", "qty": "3"}
            await engine.on_rfq("client-b", msgspec.json.encode(rfq))
    return journal_path, data


def test_an_rfq_priced_while_an_accept_waits_replays_identically(tmp_path: Path) -> None:
    journal, data = asyncio.run(concurrent_run(tmp_path))
    buffer = io.StringIO()
    export(journal, "json", buffer)
    rows = json.loads(buffer.getvalue())
    # The journal's order: r2 was quoted between the accept and its fill.
    kinds = ["rfq", "quote", "accept", "rfq", "quote", "fill", "rfq", "quote"]
    assert [r["kind"] for r in rows] == kinds
    quotes = [r["payload"]["quote"] for r in rows if r["kind"] == "quote"]
    assert quotes[1]["bid"] != quotes[2]["bid"]  # the fill moved the skew between r2 and r3
    result = replay_journal(load_config(CONFIG), journal, [data])
    assert result.mismatches == []
    assert result.identical
    assert result.journaled == result.reproduced == 4


async def late_event_run(folder: Path) -> tuple[Path, Path]:
    """An ETH-USDT event stamped before a BTC-USDT RFQ, applied only after an ETH-USDT RFQ, as
    the engine's feed does when it holds events while RFQs are served."""
    config = load_config(CONFIG)
    market = Market(config)
    clock = FakeClock(T0)
    sims = {}
    for seed, symbol in enumerate(("BTC-USDT", "ETH-USDT"), start=1):
        inst = config.instrument(symbol)
        venues = [v for v in default_venues() if v.name in market.books[symbol].venues]
        sims[symbol] = SyntheticMarket(symbol, inst.scale, venues=venues, seed=seed)
    journal_path, data = folder / "journal.sqlite", folder / "feed.jsonl.gz"
    scales = {s: config.instrument(s).scale for s in sims}
    async with SqliteJournal(journal_path, synchronous="NORMAL") as journal:
        engine = QuoteEngine(config, market, journal, clock)
        with RecordWriter(data, scales=scales, source="test") as writer:
            for sim in sims.values():
                for event in sim.snapshot_events(clock.now_ns()):
                    market.apply(event)
                    writer.write([event])
            clock.advance(ms=50)
            held = sims["ETH-USDT"].step_events(1, clock.now_ns())  # stamped now, applied later
            clock.advance(ms=1)
            for rfq_id, symbol in (("r1", "BTC-USDT"), ("r2", "ETH-USDT")):
                rfq = {"rfq_id": rfq_id, "symbol": symbol, "side": "buy", "qty": "2"}
                out = await engine.on_rfq("client-a", msgspec.json.encode(rfq))
                assert msgspec.json.decode(out[0].payload)["type"] == "quote"
            for event in held:
                market.apply(event)
                writer.write([event])
            clock.advance(ms=1)
            rfq = {"rfq_id": "r3", "symbol": "ETH-USDT", "side": "buy", "qty": "2"}
            await engine.on_rfq("client-a", msgspec.json.encode(rfq))
    return journal_path, data


def test_an_event_applied_after_rfqs_of_another_symbol_replays_identically(
    tmp_path: Path,
) -> None:
    journal, data = asyncio.run(late_event_run(tmp_path))
    result = replay_journal(load_config(CONFIG), journal, [data])
    assert result.mismatches == []
    assert result.identical
    assert result.journaled == result.reproduced == 3


def test_a_row_not_as_the_engine_writes_it_is_named(tmp_path: Path) -> None:
    """Found by fuzzing journals: such rows stopped `otc replay-journal` with a traceback
    (KeyError, AttributeError), or an error naming neither the journal nor the event."""
    journal, data, _ = asyncio.run(live_run(tmp_path, seed=5))
    config = load_config(CONFIG)
    cases = [
        (
            "UPDATE events SET payload = '{\"invalid\": \"x\"}' WHERE kind = 'rfq'",
            "no member 'raw'",
        ),
        (
            "UPDATE events SET payload = json_set(payload, '$.explanation', json('[1]'))"
            " WHERE kind = 'quote'",
            "event",
        ),
        (
            "UPDATE events SET payload = json_set(payload, '$.action', 'Halt')"
            " WHERE kind = 'control'",
            "'Halt' is not a control",
        ),
    ]
    for sql, problem in cases:
        copy = tmp_path / "copy.sqlite"
        copy.write_bytes(journal.read_bytes())
        with sqlite3.connect(copy) as conn:
            first = conn.execute(
                sql.replace("WHERE", "WHERE id = (SELECT MIN(id) FROM events WHERE", 1) + ")"
            )
            assert first.rowcount == 1
        conn.close()
        with pytest.raises(JournalError, match=rf"cannot replay journal {copy}: event \d+") as info:
            replay_journal(config, copy, [data])
        assert problem in str(info.value)


def test_a_recorded_event_the_book_refuses_is_named_with_the_recording(tmp_path: Path) -> None:
    """A delta with a negative size was stored as a level, and the replay priced through it
    (reported as DIFFERENT, as if the engine had quoted otherwise); now the recording is named
    with the event."""
    journal, data, _ = asyncio.run(live_run(tmp_path, seed=5))
    header, events = read_events(data)
    events = list(events)
    i = next(i for i, e in enumerate(events) if isinstance(e, BookDelta) and e.asks)
    bad = events[i]
    price = bad.asks[0][0]
    events[i] = msgspec.structs.replace(bad, asks=[(price, -1)])
    corrupt = tmp_path / "corrupt.jsonl.gz"
    with RecordWriter(corrupt, scales=header.symbol_scales, source="test") as writer:
        writer.write(events)
    with pytest.raises(ConfigError) as info:
        replay_journal(load_config(CONFIG), journal, [corrupt])
    message = str(info.value)
    assert message.startswith(f"{corrupt}: delta of {bad.venue} {bad.symbol} received at ")
    assert message.endswith(f"negative ask size -1 at price {price}")


async def reset_run(folder: Path) -> tuple[Path, Path]:
    """Venues whose sequence ids start over mid-run, as Coinbase's (per connection) after a
    reconnection and OKX's after maintenance do: a fresh snapshot numbered 0 at step 12, then
    updates numbered 1, 2, ... again; RFQs before and after."""
    config = load_config(CONFIG)
    inst = config.instrument("BTC-USDT")
    market = Market(config)
    clock = FakeClock(T0)
    venues = [v for v in default_venues() if v.name in market.books["BTC-USDT"].venues]
    sim = SyntheticMarket(inst.symbol, inst.scale, venues=venues, seed=3)
    journal_path, data = folder / "journal.sqlite", folder / "feed.jsonl.gz"
    async with SqliteJournal(journal_path, synchronous="NORMAL") as journal:
        engine = QuoteEngine(config, market, journal, clock)
        with RecordWriter(data, scales={inst.symbol: inst.scale}, source="test") as writer:

            def feed(events: list[BookSnapshot] | list[BookDelta]) -> None:
                for event in events:
                    market.apply(event)
                    writer.write([event])

            feed(sim.snapshot_events(clock.now_ns()))
            for step in range(1, 25):
                clock.advance(ms=40)
                if step == 12:  # every venue reconnected: a snapshot, numbering from 0
                    feed(sim.snapshot_events(clock.now_ns()))
                    continue
                feed(sim.step_events(step if step < 12 else step - 12, clock.now_ns()))
                clock.advance(ms=1)
                rfq = {"rfq_id": f"r{step}", "symbol": "BTC-USDT", "side": "two_way", "qty": "3"}
                out = await engine.on_rfq("client-a", msgspec.json.encode(rfq))
                assert msgspec.json.decode(out[0].payload)["type"] == "quote"
    return journal_path, data


def test_sequence_ids_that_start_over_replay_identically(tmp_path: Path) -> None:
    """The books were brought to the first event numbered as the quote's book, before the
    restart: every RFQ after it was priced from the old books (DIFFERENT)."""
    journal, data = asyncio.run(reset_run(tmp_path))
    result = replay_journal(load_config(CONFIG), journal, [data])
    assert result.mismatches == []
    assert result.identical
    assert result.journaled == result.reproduced == 23


def test_the_books_are_brought_to_the_event_the_quote_names() -> None:
    from otc.backtest.audit import _Books

    config = load_config(CONFIG)
    scale = config.instrument("BTC-USDT").scale

    def event(sequence: int | None, ts: int, price: int) -> BookDelta:
        return BookDelta("binance", "BTCUSDT", [(price * 10**8, 10**8)], [], sequence, 0, ts)

    def applied(events: list[BookDelta], ts: int, target: int | None) -> list[int]:
        market = Market(config)
        books = _Books(market, events, "data")
        books.until(ts, {} if target is None else {("binance", "BTC-USDT"): target})
        book = market.l2("binance", "BTC-USDT")
        return sorted(p // 10**8 for p, _ in book.bids())

    assert scale.price_decimals == 8
    restart = [event(7, 10, 1), event(8, 20, 2), event(1, 30, 3), event(2, 40, 4)]
    assert applied(restart, 25, 8) == [1, 2]  # not the restarted 1 and 2, received later
    assert applied(restart, 45, 2) == [1, 2, 3, 4]  # the 2 after the restart
    assert applied(restart, 25, None) == [1, 2]  # no target: what was received by then
    # Received after the RFQ's time (during a wait before its pricing), yet priced from.
    late = [event(7, 10, 1), event(None, 30, 2), event(8, 30, 3), event(9, 40, 4)]
    assert applied(late, 25, 8) == [1, 2, 3]
    assert applied(late, 35, 7) == [1, 2]  # unnumbered, received by then
    assert applied(late, 35, 8) == [1, 2, 3]
