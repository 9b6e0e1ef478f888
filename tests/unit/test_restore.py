"""A restart: the engine rebuilds what a previous run left in its SQLite journal.

Run one trades, switches and quotes through a real :class:`SqliteJournal`; run two opens the
same file with a fresh :class:`QuoteEngine` (new run id), restores from
:func:`otc.journal.state_rows` and must behave as if it had never stopped: the same positions,
daily notionals, kill switches and disabled clients, the same fill for a repeated accept, and
the rfq ids still taken. Time is a :class:`FakeClock` shared by both runs.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_quoting import repo_config, sim_refresh

from otc.clock import FakeClock
from otc.config import Config
from otc.errors import OtcError
from otc.journal import JournalEvent, SqliteJournal, state_rows
from otc.market import Market
from otc.quoting import QuoteEngine, Restored

D = Decimal
NS_PER_MS = 1_000_000
NS_PER_DAY = 86_400 * 10**9


class Run:
    """One run of the engine over a journal file (open it with ``async with``)."""

    def __init__(self, config: Config, path: Path, clock: FakeClock) -> None:
        self.config = config
        self.clock = clock
        self.journal = SqliteJournal(path, clock_ns=clock.now_ns)
        self.market = Market(config)
        sim_refresh()(self.market, clock.now_ns())
        self.engine = QuoteEngine(config, self.market, self.journal, clock)
        self.path = path

    async def __aenter__(self) -> Run:
        await self.journal.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.journal.aclose()

    async def restore(self) -> Restored:
        since = self.clock.now_ns() - self.engine.remembered_ns
        rows = state_rows(self.path, since_ns=since, clients=self.engine.clients)  # as otc.app
        restored = self.engine.restore(rows)
        await self.engine.flush_controls()
        return restored

    async def rfq(self, rfq_id: str, client: str = "client-a", **fields: str) -> dict[str, Any]:
        body = {"rfq_id": rfq_id, "symbol": "BTC-USDT", "side": "buy", "qty": "1", **fields}
        (out,) = await self.engine.on_rfq(client, msgspec.json.encode(body))
        message: dict[str, Any] = msgspec.json.decode(out.payload)
        return message

    async def accept(self, quote_id: str, client: str = "client-a", **fields: str) -> Any:
        body = {"quote_id": quote_id, **fields}
        (out,) = await self.engine.on_accept(client, msgspec.json.encode(body))
        return msgspec.json.decode(out.payload)


def controls(path: Path, after_id: int = 0) -> list[tuple[str, dict[str, Any]]]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT client, payload FROM events WHERE kind = 'control' AND id > ? ORDER BY id",
            (after_id,),
        ).fetchall()
    return [(client, msgspec.json.decode(payload)) for client, payload in rows]


def last_id(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])


@pytest.fixture
def config() -> Config:
    return repo_config()


async def test_a_restart_keeps_positions_limits_switches_and_fills(
    tmp_path: Path, config: Config
) -> None:
    path = tmp_path / "journal.sqlite"
    clock = FakeClock()
    async with Run(config, path, clock) as one:
        q1 = await one.rfq("r1")
        fill1 = await one.accept(q1["quote_id"])
        assert fill1["type"] == "fill"
        q2 = await one.rfq("r2", side="two_way", qty="2")
        fill2 = await one.accept(q2["quote_id"], side="sell", qty="1.5")
        assert fill2["type"] == "fill"
        q3 = await one.rfq("r3", qty="3")  # quoted, not accepted
        one.engine.set_halted("ETH-USDT", True, operator="ops")
        one.engine.set_client_enabled("client-b", False, operator="ops")
        one.engine.set_tier_spread("gold", D(40), operator="ops")
        await one.engine.flush_controls()
        positions = one.engine.positions
        used = one.engine.daily_notional("client-a")
    assert positions["BTC"] == D("0.5")  # sold 1, bought 1.5: the desk is long 0.5
    assert used > 0

    clock.advance(ms=100)  # restarted within the quotes' lifetime
    before = last_id(path)
    async with Run(config, path, clock) as two:
        restored = await two.restore()
        assert restored.anything
        assert restored.fills == 2
        assert restored.quotes == 3
        assert restored.filled_quotes == 2
        assert restored.rfq_ids == 3
        assert restored.positions == {k: v for k, v in positions.items() if v}
        assert two.engine.positions == positions
        assert two.engine.daily_notional("client-a") == used
        assert restored.daily_notional == {"client-a": used}
        assert two.engine.halted("ETH-USDT")
        assert not two.engine.halted("BTC-USDT")
        assert not two.engine.client_enabled("client-b")
        assert two.engine.tier_spreads["gold"] == config.tiers["gold"].spread_bps
        # The same accept gets the same fill; another accept of a filled quote does not.
        again = await two.accept(q1["quote_id"])
        assert again == fill1
        other = await two.accept(q2["quote_id"], side="buy")
        assert other["code"] == "ALREADY_FILLED"
        # A quote still valid can be filled, once, with this run's trade id.
        fill3 = await two.accept(q3["quote_id"])
        assert fill3["type"] == "fill"
        assert fill3["price"] == q3["ask"]
        assert not fill3["trade_id"].startswith(fill1["trade_id"].split("-t")[0])
        # The rfq ids of the last run are still taken; the kill switch still holds.
        assert (await two.rfq("r1"))["code"] == "DUPLICATE_RFQ_ID"
        assert (await two.rfq("e1", symbol="ETH-USDT"))["code"] == "MARKET_HALTED"
        assert (await two.rfq("b1", client="client-b"))["code"] == "CLIENT_DISABLED"
    # The new run's journal opens with what it started from, by "start-up".
    started = controls(path, before)[:5]
    assert [(c, p["action"], p["operator"]) for c, p in started] == [
        ("", "position", "start-up"),
        ("", "position", "start-up"),
        ("", "halt", "start-up"),
        ("client-b", "client_enabled", "start-up"),
        ("", "tier_spread", "start-up"),
    ]
    assert {p["asset"]: D(p["position"]) for _, p in started[:2]} == {
        k: v for k, v in positions.items() if v
    }
    assert D(started[4][1]["spread_bps"]) == config.tiers["gold"].spread_bps

    # A third run counts every fill once: the start-up positions are set, not added.
    clock.advance(ms=100)
    async with Run(config, path, clock) as three:
        await three.restore()
        position = three.engine.positions["BTC"]
    assert position == D("0.5") - 3  # and the 3 BTC the second run sold


async def test_quotes_and_rfq_ids_are_forgotten_on_schedule_and_days_roll(
    tmp_path: Path, config: Config
) -> None:
    path = tmp_path / "journal.sqlite"
    day = 1_700_000_000 * 10**9 // NS_PER_DAY + 1
    clock = FakeClock(day * NS_PER_DAY - 60 * 10**9)  # a minute before midnight UTC
    async with Run(config, path, clock) as one:
        q1 = await one.rfq("r1")
        fill = await one.accept(q1["quote_id"])
        assert fill["type"] == "fill"
    q = config.quoting
    clock.advance(ms=q.quote_ttl_ms + q.quote_memory_ms + 1)  # past midnight, quote forgotten
    async with Run(config, path, clock) as two:
        restored = await two.restore()
        assert restored.fills == 1
        assert restored.quotes == 0
        assert restored.daily_notional == {}  # yesterday's fill: a new day's limit
        assert two.engine.daily_notional("client-a") == 0
        assert two.engine.positions["BTC"] == D(-1)  # but the position stays
        assert (await two.accept(q1["quote_id"]))["code"] == "UNKNOWN_QUOTE"
        assert (await two.rfq("r1"))["code"] == "DUPLICATE_RFQ_ID"  # within 10 minutes
    clock.advance(ms=q.duplicate_window_ms + 1)  # since the last RFQ with that id
    async with Run(config, path, clock) as three:
        restored = await three.restore()
        assert restored.rfq_ids == 0
        assert (await three.rfq("r1"))["type"] == "quote"


async def test_a_restart_reads_nothing_of_unknown_client_ids(
    tmp_path: Path, config: Config
) -> None:
    """Every RFQ is journaled, those of unknown client ids too (refused ``UNKNOWN_CLIENT``):
    a restart queried the journal once for every client id it ever named and loaded their
    recent rows, so thousands of bogus ids (an open broker, a flood) slowed every restart
    down (182,104 ids: 1.6 s and as many rows) although restore() drops them all."""
    path = tmp_path / "journal.sqlite"
    clock = FakeClock()
    async with Run(config, path, clock) as one:
        for i in range(300):
            assert (await one.rfq("r", client=f"bogus-{i}"))["code"] == "UNKNOWN_CLIENT"
        await one.rfq("r1")
    clock.advance(ms=100)
    async with Run(config, path, clock) as two:
        since = clock.now_ns() - two.engine.remembered_ns
        rows = state_rows(path, since_ns=since, clients=two.engine.clients)
        assert {(row.client, row.kind) for row in rows} == {
            ("client-a", "rfq"),
            ("client-a", "quote"),
        }
        restored = await two.restore()
        assert (restored.quotes, restored.rfq_ids) == (1, 1)


async def test_an_empty_journal_restores_and_journals_nothing(
    tmp_path: Path, config: Config
) -> None:
    path = tmp_path / "journal.sqlite"
    async with Run(config, path, FakeClock()) as run:
        restored = await run.restore()
        assert restored == Restored()
        assert not restored.anything
        assert run.engine.positions == {}
    assert last_id(path) == 0


async def test_a_client_disabled_in_the_config_stays_disabled(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    clock = FakeClock()
    async with Run(repo_config(), path, clock) as one:
        one.engine.set_client_enabled("client-b", False, operator="ops")
        one.engine.set_client_enabled("client-b", True, operator="ops")  # re-enabled
        await one.engine.flush_controls()
    async with Run(repo_config(), path, clock) as two:
        assert (await two.restore()).disabled == []
        assert two.engine.client_enabled("client-b")
    config = repo_config()
    clients = [msgspec.structs.replace(c, enabled=c.id != "client-b") for c in config.clients]
    async with Run(msgspec.structs.replace(config, clients=clients), path, clock) as three:
        await three.restore()
        assert not three.engine.client_enabled("client-b")


async def test_a_row_that_cannot_be_read_names_itself(tmp_path: Path, config: Config) -> None:
    path = tmp_path / "journal.sqlite"
    clock = FakeClock()
    async with SqliteJournal(path) as journal:
        await journal.append(
            JournalEvent("fill", "client-a", clock.now_ns(), payload={"type": "fill", "qty": "1"})
        )
    async with Run(config, path, clock) as run:
        with pytest.raises(
            OtcError, match=r"journal row 1 \(fill\) cannot be restored: Object missing"
        ):
            await run.restore()


# -- rows that are well formed but not as the engine writes them ----------------------------------

FILL = "kind = 'fill'"
Q1 = "kind = 'quote' AND rfq_id = 'r1'"  # the quote the fill is of
Q3 = "kind = 'quote' AND rfq_id = 'r3'"  # a quote still open
COPY_FILL = (
    "INSERT INTO events (ts_ns, recorded_ns, kind, client, symbol, rfq_id, quote_id, trade_id,"
    " payload) SELECT ts_ns, recorded_ns, kind, client, symbol, rfq_id, quote_id, trade_id, {}"
    " FROM events WHERE kind = 'fill'"
)


async def journal_of_one_run(path: Path, clock: FakeClock, config: Config) -> None:
    """A fill of quote r1, an open quote r3, a halt and a position control."""
    async with Run(config, path, clock) as one:
        q1 = await one.rfq("r1")
        assert (await one.accept(q1["quote_id"]))["type"] == "fill"
        await one.rfq("r3", qty="3")
        one.engine.set_halted("ETH-USDT", True, operator="ops")
        one.engine.set_position("ETH", D("2"), operator="ops")
        await one.engine.flush_controls()


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        # Decimal() took them all: NaN positions (every later RFQ an INTERNAL_ERROR, the ladder
        # task dead), "1_0" as 10, a negative qty lifting the client's daily limit.
        (
            f"UPDATE events SET payload = json_set(payload, '$.qty', 'NaN') WHERE {FILL}",
            "qty 'NaN'",
        ),
        (
            f"UPDATE events SET payload = json_set(payload, '$.qty', '1_0') WHERE {FILL}",
            "qty '1_0'",
        ),
        (f"UPDATE events SET payload = json_set(payload, '$.qty', '-9') WHERE {FILL}", "qty '-9'"),
        (
            "UPDATE events SET payload = json_set(payload, '$.position', 'NaN')"
            " WHERE kind = 'control' AND payload LIKE '%position%'",
            "position 'NaN'",
        ),
        # Skipped as of an unconfigured symbol: its quote could be filled again.
        (f"UPDATE events SET payload = json_remove(payload, '$.symbol') WHERE {FILL}", "no symbol"),
        (
            f"UPDATE events SET payload = json_set(payload, '$.side', 'BUY') WHERE {FILL}",
            "side 'BUY' is not buy or sell",
        ),
        # Counted twice, or a second trade of one quote, or a fill of another quote than its
        # row's: exactly-once broken after the restart.
        (COPY_FILL.format("payload"), "journaled twice"),
        (COPY_FILL.format("json_set(payload, '$.trade_id', 'other')"), "filled twice"),
        (f"UPDATE events SET quote_id = 'another' WHERE {FILL}", "the row is for quote another"),
        (f"UPDATE events SET payload = json_set(payload, '$.price', '1') WHERE {FILL}", "not of"),
        (f"UPDATE events SET id = 1000 WHERE {Q1}", "comes after its fill"),
        # A quote restored as it was: filled at -5, or an INTERNAL_ERROR at its accept.
        (f"UPDATE events SET payload = json_set(payload, '$.quote.ask', '-5') WHERE {Q3}", "'-5'"),
        (
            f"UPDATE events SET payload = json_set(payload, '$.quote.side', 'short') WHERE {Q3}",
            "'short'",
        ),
        (
            f"UPDATE events SET payload = json_set(payload, '$.quote.bid', '1') WHERE {Q3}",
            "with a bid",
        ),
        # A halt of another spelling was dropped: the kill switch lifted by the restart.
        (
            "UPDATE events SET payload = json_set(payload, '$.action', 'Halt')"
            " WHERE kind = 'control' AND payload LIKE '%halt%'",
            "'Halt' is not a control",
        ),
    ],
)
async def test_a_row_the_engine_would_not_write_stops_the_restart_naming_it(
    tmp_path: Path, config: Config, sql: str, problem: str
) -> None:
    """Found by fuzzing journals (rows of the right column types, odd content): each was
    restored into wrong positions, limits, kill switches or quotes, without a word."""
    path = tmp_path / "journal.sqlite"
    clock = FakeClock()
    await journal_of_one_run(path, clock, config)
    with closing(sqlite3.connect(path)) as conn, conn:
        assert conn.execute(sql).rowcount == 1
    async with Run(config, path, clock) as two:
        with pytest.raises(
            OtcError, match=r"(journal row \d+ \(\w+\) cannot be restored|event \d+)"
        ):
            await two.restore()
    with pytest.raises(OtcError) as info:
        two.engine.restore(state_rows(path, since_ns=0))
    assert problem in str(info.value)


async def test_what_the_config_no_longer_has_and_out_of_order_stamps_restore(
    tmp_path: Path, config: Config
) -> None:
    path = tmp_path / "journal.sqlite"
    clock = FakeClock()
    await journal_of_one_run(path, clock, config)
    with closing(sqlite3.connect(path)) as conn, conn:
        # An RFQ stamped in 1970 after the others (a clock stepped back) stopped the scan for
        # recent rows: every remembered quote and rfq id was forgotten.
        conn.execute(
            "INSERT INTO events (ts_ns, recorded_ns, kind, client, symbol, rfq_id, quote_id,"
            " trade_id, payload) VALUES (1, 1, 'rfq', 'client-a', 'BTC-USDT', 'r9', '', '', '{}')"
        )
    async with Run(config, path, clock) as two:
        restored = await two.restore()
    assert (restored.quotes, restored.filled_quotes, restored.rfq_ids) == (2, 1, 2)
    with closing(sqlite3.connect(path)) as conn, conn:  # an instrument since removed
        symbol = "json_set(payload, '$.quote.symbol', 'DOGE-USDT')"
        conn.execute(f"UPDATE events SET payload = {symbol} WHERE {Q3}")
    async with Run(config, path, clock) as three:
        restored = await three.restore()
    assert restored.quotes == 1


async def test_restored_quotes_are_pruned_oldest_first(tmp_path: Path, config: Config) -> None:
    """prune() forgets from the front, expecting quotes in expiry order; restored in journal
    order, one quote valid for a day held every later one in memory for good. (A restored
    quote lives for one lifetime from the restart at most, so the day is cut to that.)"""
    path = tmp_path / "journal.sqlite"
    clock = FakeClock()
    await journal_of_one_run(path, clock, config)
    day_ms = 86_400_000
    with closing(sqlite3.connect(path)) as conn, conn:
        later = (
            f"json_set(payload, '$.quote.valid_until_ms', {clock.now_ns() // NS_PER_MS + day_ms})"
        )
        assert conn.execute(f"UPDATE events SET payload = {later} WHERE {Q1}").rowcount == 1
    clock.advance(s=1)  # r3 has a second less to live than a whole lifetime
    async with Run(config, path, clock) as two:
        assert (await two.restore()).quotes == 2
        q = config.quoting
        clock.advance(ms=q.quote_ttl_ms + q.quote_memory_ms)
        assert two.engine.prune(clock.monotonic_ns()) == 1  # r3's, though r1's came first
        clock.advance(ns=1)
        assert two.engine.prune(clock.monotonic_ns()) == 1  # r1's: a lifetime from the restart
