"""What the quote path waits for, with the real SQLite journal: a quote is not a trade.

A quote is returned once its events are queued, before they are committed; a fill is returned
only once committed; the journal holds every event in the order it was handed over (the RFQ
before its quote, the quote before its accept and fill); a quote whose write failed cannot be
filled. The write lock held by a connection of our own stands in for a slow disk. Time is a
:class:`FakeClock` for the engine; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlite_lock import write_lock

from feeds.sim import SyntheticMarket
from otc.clock import FakeClock
from otc.config import load_config
from otc.journal import JournalEvent, Receipt, SqliteJournal
from otc.market import Market
from otc.quoting import QuoteEngine

REPO_CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"
#: Guards against a hang (never a timing measurement).
GUARD_S = 10.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite"


def engine_over(journal: SqliteJournal | Any) -> QuoteEngine:
    config = load_config(REPO_CONFIG)
    clock = FakeClock()
    market = Market(config)
    for symbol, mid in (("BTC-USDT", "64000"), ("ETH-USDT", "3200")):
        sim = SyntheticMarket(symbol, config.instrument(symbol).scale, mid=Decimal(mid), seed=7)
        for snapshot in sim.snapshot_events(clock.now_ns()):
            market.apply(snapshot)
    return QuoteEngine(config, market, journal, clock)


def rfq(rfq_id: str, side: str = "buy", qty: str = "1") -> bytes:
    return msgspec.json.encode({"rfq_id": rfq_id, "symbol": "BTC-USDT", "side": side, "qty": qty})


def decoded(out: list[Any]) -> dict[str, Any]:
    assert len(out) == 1
    message: dict[str, Any] = msgspec.json.decode(out[0].payload)
    return message


def rows_of(path: Path) -> list[tuple[str, str, str]]:
    """(kind, rfq_id, quote_id) of every row in commit order."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT kind, rfq_id, quote_id FROM events ORDER BY id").fetchall()


async def test_a_quote_is_returned_before_its_commit(path: Path) -> None:
    async with SqliteJournal(path, submit_delay_ms=0) as journal:
        engine = engine_over(journal)
        with write_lock(path):
            quote = decoded(await engine.on_rfq("client-a", rfq("r1")))
            assert quote["type"] == "quote"
            assert journal.committed == 0  # nothing could be committed: the quote went anyway
            assert journal.pending == 2  # the RFQ and the quote, queued in that order
            reject = decoded(await engine.on_rfq("client-a", rfq("r2", qty="-1")))
            assert reject["code"] == "INVALID_QTY"
            assert journal.committed == 0
        async with asyncio.timeout(GUARD_S):
            fill = decoded(await engine.on_accept("client-a", accept(quote["quote_id"])))
        assert fill["type"] == "fill"
    assert rows_of(path) == [
        ("rfq", "r1", ""),
        ("quote", "r1", quote["quote_id"]),
        ("rfq", "r2", ""),
        ("reject", "r2", ""),
        ("accept", "", quote["quote_id"]),
        ("fill", "r1", quote["quote_id"]),
    ]


def accept(quote_id: str) -> bytes:
    return msgspec.json.encode({"quote_id": quote_id})


async def test_a_fill_is_never_returned_before_its_commit(path: Path) -> None:
    async with SqliteJournal(path) as journal:
        engine = engine_over(journal)
        quote = decoded(await engine.on_rfq("client-a", rfq("r1")))
        with write_lock(path):
            accepting = asyncio.create_task(engine.on_accept("client-a", accept(quote["quote_id"])))
            done, _ = await asyncio.wait({accepting}, timeout=0.05)
            assert not done  # the fill waits for its commit
            assert [kind for kind, _, _ in rows_of(path)].count("fill") == 0
        async with asyncio.timeout(GUARD_S):
            fill = decoded(await accepting)
        assert fill["type"] == "fill"
        assert rows_of(path)[-1] == ("fill", "r1", quote["quote_id"])  # on disk when returned


async def test_an_accept_does_not_wait_for_the_next_group_commit(path: Path) -> None:
    """A quote still queued (the writer gathering submitted events) is committed with its
    accept at once: the accept is appended, not submitted, and the fill follows."""
    async with SqliteJournal(path, submit_delay_ms=60_000) as journal:
        engine = engine_over(journal)
        quote = decoded(await engine.on_rfq("client-a", rfq("r1")))
        assert journal.committed == 0
        async with asyncio.timeout(GUARD_S):
            fill = decoded(await engine.on_accept("client-a", accept(quote["quote_id"])))
        assert fill["type"] == "fill"
        assert journal.committed == 4


async def test_the_journal_keeps_the_order_events_were_handed_over(path: Path) -> None:
    handed: list[tuple[str, str, str]] = []

    class Recording(SqliteJournal):
        async def append(self, event: JournalEvent) -> None:
            handed.append((event.kind, event.rfq_id, event.quote_id))
            await super().append(event)

        async def submit(self, event: JournalEvent, *, urgent: bool = False) -> Receipt:
            handed.append((event.kind, event.rfq_id, event.quote_id))
            return await super().submit(event, urgent=urgent)

    async with Recording(path) as journal:
        engine = engine_over(journal)
        sides = ("buy", "sell", "two_way")
        quotes = await asyncio.gather(
            *(engine.on_rfq("client-a", rfq(f"r{i}", sides[i % 3], "0.1")) for i in range(30))
        )
        ids = [decoded(out)["quote_id"] for out in quotes]
        side = {"buy": "buy", "sell": "sell", "two_way": "sell"}
        payloads = [
            msgspec.json.encode({"quote_id": quote_id, "side": side[sides[i % 3]]})
            for i, quote_id in enumerate(ids)
        ]
        fills = await asyncio.gather(*(engine.on_accept("client-a", p) for p in payloads * 2))
        assert {decoded(out)["type"] for out in fills} == {"fill"}  # the repeats: the same fill
    rows = rows_of(path)
    assert rows == handed
    for quote_id in ids:
        kinds = [kind for kind, _, q in rows if q == quote_id]
        assert kinds[:2] == ["quote", "accept"]  # the quote is on disk before its accept...
        assert sorted(kinds[2:]) == ["accept", "fill"]  # ...and its one fill after an accept
    for i in range(30):
        first = next(n for n, (kind, r, _) in enumerate(rows) if r == f"r{i}")
        assert rows[first][0] == "rfq"


async def test_a_quote_whose_write_failed_cannot_be_filled(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with SqliteJournal(path, submit_delay_ms=0) as journal:
        with closing(sqlite3.connect(path)) as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.kind = 'quote'"
                " BEGIN SELECT RAISE(ABORT, 'quotes refused'); END"
            )
            conn.commit()
        engine = engine_over(journal)
        with caplog.at_level(logging.ERROR, logger="otc.journal"):
            quote = decoded(await engine.on_rfq("client-a", rfq("r1")))
            assert quote["type"] == "quote"  # published before its write could fail
            reply = decoded(await engine.on_accept("client-a", accept(quote["quote_id"])))
        assert reply["type"] == "accept_reject"
        assert reply["code"] == "INTERNAL_ERROR"
        assert "not recorded" in reply["reason"]
        assert journal.failed == 1
        assert "quotes refused" in caplog.text
        assert engine.positions == {}
    assert [kind for kind, _, _ in rows_of(path)] == ["rfq", "accept", "accept_reject"]


@pytest.mark.parametrize("fails", [False, True])
async def test_an_accept_cancelled_while_its_fill_is_queued_is_settled_by_the_journal(
    path: Path, fails: bool
) -> None:
    """The broker connection lost while a fill waits for its commit cancels the accept, not
    the fill: the quote was marked filled at once, and a repeated accept got a fill that a
    failing commit then lost. Now the repeated accept waits for the journal's decision."""
    async with SqliteJournal(path) as journal:
        engine = engine_over(journal)
        quote = decoded(await engine.on_rfq("client-a", rfq("r1")))
        payload = accept(quote["quote_id"])
        # The quote on disk (an append commits everything before it): the accept is then only
        # submitted, and the first accept is cut off while its fill waits for the commit.
        await journal.append(JournalEvent("control", "ops", 0, payload={"action": "barrier"}))
        if fails:
            with closing(sqlite3.connect(path, isolation_level=None)) as conn:
                conn.execute(
                    "CREATE TRIGGER no_fills BEFORE INSERT ON events WHEN NEW.kind = 'fill' "
                    "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
                )
        with write_lock(path):
            first = asyncio.create_task(engine.on_accept("client-a", payload))
            done, _ = await asyncio.wait({first}, timeout=0.05)
            assert not done  # the fill is queued behind the lock
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            repeated = asyncio.create_task(engine.on_accept("client-a", payload))
            done, _ = await asyncio.wait({repeated}, timeout=0.05)
            assert not done  # it waits for the journal to decide the first fill
        async with asyncio.timeout(GUARD_S):
            reply = decoded(await repeated)
        with closing(sqlite3.connect(path)) as conn:
            on_disk = conn.execute("SELECT trade_id FROM events WHERE kind = 'fill'").fetchall()
        if fails:
            assert (reply["type"], reply["code"]) == ("accept_reject", "INTERNAL_ERROR")
            assert on_disk == []
            assert engine.positions["BTC"] == 0
            assert engine.daily_notional("client-a") == 0
        else:
            assert reply["type"] == "fill"
            assert on_disk == [(reply["trade_id"],)]  # the first accept's fill, not a second
            assert engine.positions["BTC"] == -1
