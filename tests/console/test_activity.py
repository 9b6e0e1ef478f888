"""The console's activity feed: waiting for the next journal event."""

from __future__ import annotations

import asyncio

from otc.console import Activity
from otc.journal import JournalEvent


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
