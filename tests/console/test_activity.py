"""The console's activity feed: waiting for the next journal event."""

from __future__ import annotations

import asyncio

from otc.console import Activity, ObservedJournal
from otc.journal import JournalError, JournalEvent, MemoryJournal, Receipt


def _event(n: int) -> JournalEvent:
    return JournalEvent("rfq", "client-a", n, rfq_id=f"r{n}")


async def test_every_waiter_wakes_on_the_next_event_and_a_timeout_returns_false() -> None:
    activity = Activity()
    assert await activity.wait(0, 0.01) is False  # nothing recorded: times out
    waiters = [asyncio.create_task(activity.wait(0, 10)) for _ in range(3)]
    quitter = asyncio.create_task(activity.wait(0, 10))
    await asyncio.sleep(0)
    quitter.cancel()  # a waiter that gives up must not spoil the others' wait
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    activity.record(_event(1))
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert activity.last_seq == 1
    assert await activity.wait(0, 0.01) is True  # already past seq 0: at once
    assert await activity.wait(1, 0.01) is False  # the next one has not come
    late = asyncio.create_task(activity.wait(1, 10))
    await asyncio.sleep(0)
    activity.record(_event(2))
    assert await late is True
    assert [seq for seq, _ in activity.since(0)] == [1, 2]


async def test_a_fill_is_observed_once_committed_and_never_when_its_write_failed() -> None:
    """The console books trades (P&L, markouts) from the fills it observes: a fill is handed
    to the journal before its commit, and one whose write failed is no trade."""

    class Deciding(MemoryJournal):
        async def submit(self, event: JournalEvent, *, urgent: bool = False) -> Receipt:
            receipt: Receipt = asyncio.get_running_loop().create_future()
            self.pending.append((event, receipt))
            return receipt

        def __init__(self) -> None:
            super().__init__()
            self.pending: list[tuple[JournalEvent, Receipt]] = []

    seen: list[str] = []
    journal = Deciding()
    observed = ObservedJournal(journal, lambda e: seen.append(e.trade_id or e.rfq_id))
    await observed.submit(_event(1))  # a quote or an RFQ: shown at once
    assert seen == ["r1"]
    ok = await observed.submit(JournalEvent("fill", "client-a", 2, trade_id="t1"), urgent=True)
    lost = await observed.submit(JournalEvent("fill", "client-a", 3, trade_id="t2"), urgent=True)
    assert seen == ["r1"]  # not on disk yet
    ok.set_result(None)
    lost.set_exception(JournalError("disk full"))
    lost.exception()
    await asyncio.sleep(0)
    assert seen == ["r1", "t1"]
