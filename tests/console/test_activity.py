"""The console's activity feed: waiting for the next journal event, reading the new ones."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import ItemsView, Iterator, ValuesView
from decimal import Decimal
from pathlib import Path

from otc.clock import FakeClock
from otc.config import load_config
from otc.console import Activity, ObservedJournal
from otc.console.activity import Markouts, TradeFill
from otc.console.views import Blotter, BlotterRow, overview
from otc.journal import JournalError, JournalEvent, MemoryJournal, Receipt
from otc.market import Market
from otc.quoting import QuoteEngine

CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"
_S = 1_000_000_000


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


class _NoWalk(deque[tuple[int, JournalEvent]]):
    """The events kept, refusing a walk from the oldest."""

    def __iter__(self) -> Iterator[tuple[int, JournalEvent]]:
        raise AssertionError("walked every event kept")


class _NoScan(dict[int, BlotterRow]):
    """The blotter's rows, refusing a scan of them all."""

    def items(self) -> ItemsView[int, BlotterRow]:  # type: ignore[override]
        raise AssertionError("scanned every row")

    def values(self) -> ValuesView[BlotterRow]:  # type: ignore[override]
        raise AssertionError("scanned every row")


def test_what_a_push_stream_asks_for_costs_what_is_new_not_what_is_kept() -> None:
    # Each wake of each push stream asked for the events after its last: Activity.since and
    # Blotter.rows walked every event and row kept (blotter_size, up to 100,000: milliseconds
    # per event per stream, on the engine's loop), for the one or two new ones.
    activity = Activity(size=50)
    blotter = Blotter(activity, size=50)
    for n in range(1, 81):  # more than kept
        activity.record(_event(n))
    assert [seq for seq, _ in activity.since(0)] == list(range(31, 81))
    assert [seq for seq, _ in activity.since(40)] == list(range(41, 81))
    assert [row.seq for row in blotter.rows()] == list(range(31, 81))
    activity._events = _NoWalk(activity._events, maxlen=50)
    blotter._rows = _NoScan(blotter._rows)
    assert [seq for seq, _ in activity.since(78)] == [79, 80]
    assert activity.since(80) == []
    activity.record(_event(81))
    assert [seq for seq, _ in activity.since(79)] == [80, 81]
    assert [row.seq for row in blotter.rows(after=79)] == [80, 81]
    assert [row.rfq_id for row in blotter.rows(after=80)] == ["r81"]
    assert blotter.rows(after=81) == []


def test_a_markout_horizon_without_a_mid_stays_unknown_rather_than_take_a_later_mid() -> None:
    """A fill's 1 s markout is the mid 1 s after it: with no usable mid then (every venue stale,
    say), it stays unknown; it used to be taken from whatever mid came back later (here 60 s
    on), shown as the 1 s and 5 s markouts."""
    fill = TradeFill("t1", "client-a", "BTC-USDT", "buy", Decimal(1), Decimal(64010), 0)
    markouts = Markouts()
    markouts.add(fill, 0)
    mids: dict[str, Decimal | None] = {"BTC-USDT": None}
    markouts.sample(5 * _S, mids.get)  # 1 s and 5 s came: no mid
    mids["BTC-USDT"] = Decimal(64000)
    markouts.sample(60 * _S, mids.get)  # 30 s and 60 s: the mid is back
    (item,) = markouts
    assert item.mids == {"1s": None, "5s": None, "30s": Decimal(64000), "60s": Decimal(64000)}
    activity = Activity()
    activity.markouts = markouts
    config = load_config(CONFIG)
    quotes = QuoteEngine(config, Market(config), MemoryJournal(), FakeClock())
    view = overview(config, quotes, activity, [], mids.get, 60 * _S)
    (shown,) = view.markouts
    # (64010 - 64000) / 64000 x 1e4 = 1.5625 -> 1.56 (half-even)
    assert shown.markouts_bps == {"1s": None, "5s": None, "30s": "1.56", "60s": "1.56"}


def test_unknown_clients_events_are_kept_apart_in_order_and_counted_when_dropped() -> None:
    activity = Activity(size=20, clients=["client-a"], unknown_size=3)
    blotter = Blotter(activity, size=20)
    for n in range(1, 11):
        client = "client-a" if n % 2 else "stranger"
        activity.record(JournalEvent("rfq", client, n, rfq_id=f"r{n}"))
    activity.record(JournalEvent("control", "", 11, payload={"action": "halt"}))
    assert [seq for seq, _ in activity.events()] == [1, 3, 5, 6, 7, 8, 9, 10, 11]
    assert (activity.unknown_kept, activity.unknown_dropped) == (3, 2)
    assert [row.seq for row in blotter.rows()] == [1, 3, 5, 6, 7, 8, 9, 10, 11]
    assert [row.unknown_client for row in blotter.rows(after=7)] == [True, False, True, False]
    # What a push stream asks for still costs what is new, in both rings.
    activity._events = _NoWalk(activity._events, maxlen=20)
    activity._unknown = _NoWalk(activity._unknown, maxlen=3)
    assert [seq for seq, _ in activity.since(8)] == [9, 10, 11]
    activity.record(JournalEvent("rfq", "stranger", 12, rfq_id="r12"))
    assert [row.rfq_id for row in blotter.rows(after=10)] == ["", "r12"]
