"""otc.journal's ``submit``: queued in order without waiting for the commit; failures reported.

What is checked: ``submit`` returns while the commit cannot happen (another connection holds
the write lock) and its receipt completes only after the commit; appends and submits are
committed in the order they were handed over; an append, a full queue and ``aclose`` do not
wait out ``submit_delay_ms``; a submitted event that fails is counted, logged and on its
receipt (and asyncio never complains about it); a closed journal or a malformed event raises.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from sqlite_lock import write_lock

from otc.journal import JournalClosed, JournalError, JournalEvent, MemoryJournal, SqliteJournal

T0 = 1_700_000_000_000_000_000
#: Guards against a hang (never a timing measurement): far below the delay it must not wait out.
GUARD_S = 10.0
LONG_DELAY_MS = 60_000


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal" / "otc.db"


def rows_of(path: Path) -> list[tuple[str, int]]:
    """(kind, ts_ns) of every row in commit order, through a connection of our own."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT kind, ts_ns FROM events ORDER BY id").fetchall()


def event(kind: str, i: int, client: str = "client-a") -> JournalEvent:
    return JournalEvent(kind, client, T0 + i, rfq_id=f"r{i}", quote_id=f"q{i}")


async def test_submit_returns_before_the_commit(path: Path) -> None:
    async with SqliteJournal(path, submit_delay_ms=0) as journal:
        with write_lock(path):
            receipt = await journal.submit(event("quote", 1))
            done, _ = await asyncio.wait({receipt}, timeout=0.05)
            assert not done  # queued, not committed: the writer waits for the lock
            assert journal.committed == 0
            assert journal.pending == 1
        await receipt  # completes once the commit went through
        assert journal.committed == 1
        assert rows_of(path) == [("quote", T0 + 1)]


async def test_appends_and_submits_commit_in_the_order_handed_over(path: Path) -> None:
    kinds = ["rfq", "quote", "accept", "fill"] * 25
    async with SqliteJournal(path) as journal:
        with write_lock(path):  # everything queues up behind the lock
            receipts = []
            fills = []
            for i, kind in enumerate(kinds):
                if kind == "fill":
                    fills.append(asyncio.create_task(journal.append(event(kind, i))))
                    await asyncio.sleep(0)  # the append is queued before the next submit
                else:
                    receipts.append(await journal.submit(event(kind, i)))
        await asyncio.gather(*fills, *receipts)
    assert rows_of(path) == [(kind, T0 + i) for i, kind in enumerate(kinds)]


async def test_a_returned_append_means_everything_submitted_before_it_is_settled(
    path: Path,
) -> None:
    async with SqliteJournal(path, submit_delay_ms=LONG_DELAY_MS) as journal:
        first = await journal.submit(event("rfq", 1))
        second = await journal.submit(event("quote", 2))
        async with asyncio.timeout(GUARD_S):  # the fill does not wait out the delay
            await journal.append(event("fill", 3))
        for receipt in (first, second):
            assert receipt.done()
            assert receipt.exception() is None
    assert rows_of(path) == [("rfq", T0 + 1), ("quote", T0 + 2), ("fill", T0 + 3)]


async def test_aclose_commits_submitted_events_without_waiting_out_the_delay(path: Path) -> None:
    journal = SqliteJournal(path, submit_delay_ms=LONG_DELAY_MS)
    await journal.__aenter__()
    receipts = [await journal.submit(event("quote", i)) for i in range(10)]
    async with asyncio.timeout(GUARD_S):
        await journal.aclose()
    assert all(r.done() for r in receipts)
    assert all(r.exception() is None for r in receipts)
    assert rows_of(path) == [("quote", T0 + i) for i in range(10)]


async def test_a_full_queue_holds_submit_back_in_line(path: Path) -> None:
    async with SqliteJournal(path, max_pending=2, submit_delay_ms=LONG_DELAY_MS) as journal:
        with write_lock(path):
            await journal.submit(event("rfq", 0))
            await journal.submit(event("quote", 1))
            third = asyncio.create_task(journal.submit(event("rfq", 2)))
            fourth = asyncio.create_task(journal.submit(event("quote", 3)))
            done, _ = await asyncio.wait({third, fourth}, timeout=0.05)
            assert not done  # no room until the first two are committed
            assert journal.pending == 2
        async with asyncio.timeout(GUARD_S):  # a full queue does not wait out the delay
            await asyncio.gather(third, fourth)
    assert rows_of(path) == [("rfq", T0), ("quote", T0 + 1), ("rfq", T0 + 2), ("quote", T0 + 3)]


async def test_a_failed_submit_is_counted_logged_and_on_its_receipt(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with SqliteJournal(path, submit_delay_ms=0) as journal:
        with closing(sqlite3.connect(path)) as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.kind = 'quote'"
                " BEGIN SELECT RAISE(ABORT, 'quotes refused'); END"
            )
            conn.commit()
        with caplog.at_level(logging.ERROR, logger="otc.journal"):
            rfq = await journal.submit(event("rfq", 1))
            quote = await journal.submit(event("quote", 2))
            unheeded = await journal.submit(event("quote", 3))  # nobody will look at this one
            await journal.append(event("fill", 4))  # committed after all three are settled
        await rfq
        with pytest.raises(JournalError, match="quotes refused") as failure:
            await quote
        assert isinstance(failure.value.__cause__, sqlite3.IntegrityError)
        assert journal.failed == 2
        assert journal.committed == 2
        logged = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert logged
        assert "not recorded" in logged[0].getMessage()
        assert "'q2'" in logged[0].getMessage()
        assert "quotes refused" in logged[0].getMessage()
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            del unheeded
            gc.collect()
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert rows_of(path) == [("rfq", T0 + 1), ("fill", T0 + 4)]


async def test_submit_raises_at_once_for_a_closed_journal_or_an_unknown_kind(
    path: Path,
) -> None:
    journal = SqliteJournal(path)
    with pytest.raises(JournalClosed, match="not open"):
        await journal.submit(event("rfq", 0))
    async with journal:
        with pytest.raises(ValueError, match="unknown journal event kind"):
            await journal.submit(JournalEvent("quotes", "client-a", T0))
        assert journal.pending == 0
    with pytest.raises(JournalClosed, match="closed"):
        await journal.submit(event("rfq", 1))
    assert rows_of(path) == []


async def test_a_submitted_payload_that_cannot_be_encoded_fails_alone_on_its_receipt(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Encoded by the writer thread: the bad event fails, its neighbours in the batch commit."""
    async with SqliteJournal(path) as journal:
        with caplog.at_level(logging.ERROR, logger="otc.journal"):
            before = await journal.submit(event("rfq", 0))
            bad = await journal.submit(
                JournalEvent("rfq", "client-a", T0, rfq_id="bad", payload={"x": object()})
            )
            after = await journal.submit(event("quote", 1))
            await asyncio.wait_for(asyncio.gather(before, after), GUARD_S)
            with pytest.raises(JournalError, match="write failed") as info:
                await asyncio.wait_for(bad, GUARD_S)
        assert isinstance(info.value.__cause__, TypeError)
        assert journal.failed == 1
    assert "not recorded, the first a rfq of client-a (rfq_id 'bad'" in caplog.text
    assert [row[0] for row in rows_of(path)] == ["rfq", "quote"]


def test_submit_delay_is_checked(path: Path) -> None:
    with pytest.raises(ValueError, match="submit_delay_ms"):
        SqliteJournal(path, submit_delay_ms=-1)


async def test_memory_journal_submit_records_at_once_and_reports_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = MemoryJournal()
    receipt = await journal.submit(event("rfq", 1))
    assert receipt.done()
    assert receipt.exception() is None
    assert [e.kind for e in journal.events] == ["rfq"]
    journal.error = JournalError("disk full")
    with caplog.at_level(logging.ERROR, logger="otc.journal"):
        failed = await journal.submit(event("quote", 2))
    assert failed.done()
    assert isinstance(failed.exception(), JournalError)
    assert journal.failed == 1
    assert "not recorded" in caplog.text
    assert [e.kind for e in journal.events] == ["rfq"]
    with pytest.raises(ValueError, match="unknown journal event kind"):
        await journal.submit(JournalEvent("quotes", "client-a", T0))
    journal.error = None
    unencodable = await journal.submit(JournalEvent("rfq", "client-a", T0, payload={"x": {1j}}))
    assert isinstance(unencodable.exception(), TypeError)
    assert journal.failed == 2
    await journal.aclose()
    with pytest.raises(JournalClosed):
        await journal.submit(event("rfq", 3))


async def test_an_urgent_submit_does_not_wait_out_the_delay(path: Path) -> None:
    """A fill is submitted urgent: committed at once, as an append is, not after
    ``submit_delay_ms`` (a minute here)."""
    async with SqliteJournal(path, submit_delay_ms=60_000) as journal:
        receipt = await journal.submit(
            JournalEvent("fill", "client-a", T0, trade_id="t1"), urgent=True
        )
        async with asyncio.timeout(10):  # guards a hang, measures nothing
            await receipt
        assert journal.committed == 1
