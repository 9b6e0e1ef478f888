"""The engine under wall clock steps (NTP, a virtual machine resumed, an operator setting the date).

Wall time stamps what clients and compliance read (``valid_until_ms``, journal rows, the UTC day
of the daily limit); durations are measured on the monotonic clock. A :class:`FakeClock` whose
wall part ``step``s while its monotonic part does not stands for the machine.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from test_quoting import Desk, repo_config, sim_refresh
from test_restore import Run

from otc.clock import FakeClock
from otc.market import Market
from otc.quoting import QuoteEngine

D = Decimal
replace = msgspec.structs.replace
HOUR_S = 3600


@pytest.fixture
def desk() -> Desk:
    return Desk(repo_config(), sim_refresh())


def test_the_fake_clock_steps_its_wall_time_only() -> None:
    clock = FakeClock(1_000)
    clock.step(ns=-500)
    assert (clock.now_ns(), clock.monotonic_ns()) == (500, 1_000)
    clock.advance(ns=100)  # time passing moves both
    assert (clock.now_ns(), clock.monotonic_ns()) == (600, 1_100)
    clock.set(0)  # the wall time set back: no time passed
    assert (clock.now_ns(), clock.monotonic_ns()) == (0, 1_100)


async def test_a_quote_is_not_fillable_beyond_its_lifetime_when_the_clock_steps_back(
    desk: Desk,
) -> None:
    """A 3 s quote checked against the wall clock alone stayed fillable for the whole step: an
    hour after the clock stepped back an hour, and the price an hour old."""
    ttl_ms = desk.config.quoting.quote_ttl_ms
    quote = await desk.quote(qty="0.01")
    desk.clock.step(s=-HOUR_S)
    desk.clock.advance(ms=ttl_ms + 1)
    desk.refresh()  # fresh books: only the quote's age can refuse it
    reply = await desk.accept(quote["quote_id"])
    assert reply["code"] == "EXPIRED"
    assert f"its {ttl_ms} ms lifetime is over" in reply["reason"]


async def test_a_quote_is_fillable_within_its_lifetime_across_a_step_back(desk: Desk) -> None:
    quote = await desk.quote(qty="0.01")
    desk.clock.step(s=-HOUR_S)
    desk.clock.advance(ms=desk.config.quoting.quote_ttl_ms - 1)
    desk.refresh()
    assert (await desk.accept(quote["quote_id"]))["type"] == "fill"


async def test_a_clock_stepped_forward_expires_a_quote_early(desk: Desk) -> None:
    """The safe side: the client reads valid_until_ms on its own (wall) clock."""
    quote = await desk.quote(qty="0.01")
    desk.clock.step(s=HOUR_S)
    desk.refresh()
    assert (await desk.accept(quote["quote_id"]))["code"] == "EXPIRED"


async def test_the_rate_limit_refills_with_time_passing_not_with_clock_steps() -> None:
    """Stepped forward an hour, the wall-clock bucket refilled at once (a second burst)."""
    desk = Desk(repo_config(quoting={"rate_limit_per_s": 2, "rate_limit_burst": 3}), sim_refresh())
    for _ in range(3):
        assert (await desk.rfq(qty="0.01"))["type"] == "quote"
    desk.clock.step(s=HOUR_S)
    desk.refresh()
    assert (await desk.rfq(qty="0.01"))["code"] == "RATE_LIMITED"
    desk.clock.advance(ms=500)  # one token at 2/s
    assert (await desk.rfq(qty="0.01"))["type"] == "quote"


async def test_what_the_engine_remembers_follows_time_passing_not_clock_steps(
    desk: Desk,
) -> None:
    """Stepped forward, every quote was forgotten at the next RFQ (a repeated accept of a fill
    then UNKNOWN_QUOTE, an rfq_id usable again at once); stepped back, nothing was forgotten
    for the length of the step."""
    quote = await desk.quote(qty="0.01", rfq_id="once")
    fill = await desk.accept(quote["quote_id"])
    assert fill["type"] == "fill"
    desk.clock.step(s=HOUR_S)
    desk.refresh()
    assert (await desk.rfq(qty="0.01", rfq_id="once"))["code"] == "DUPLICATE_RFQ_ID"
    assert await desk.accept(quote["quote_id"]) == fill  # the same fill again
    q = desk.config.quoting
    desk.clock.step(s=-2 * HOUR_S)
    desk.clock.advance(ms=max(q.quote_ttl_ms + q.quote_memory_ms, q.duplicate_window_ms) + 1)
    desk.refresh()
    assert (await desk.rfq(qty="0.01", rfq_id="once"))["type"] == "quote"
    assert (await desk.accept(quote["quote_id"]))["code"] == "UNKNOWN_QUOTE"  # forgotten


async def test_a_restart_after_the_clock_stepped_back_caps_a_quote_at_its_lifetime(
    tmp_path: Path,
) -> None:
    """A remembered quote has no monotonic stamp from the run that made it: it lives what is
    left of it by the wall clock, at most one lifetime from the restart."""
    config = repo_config()
    ttl_ms = config.quoting.quote_ttl_ms
    path = tmp_path / "journal.sqlite"
    clock = FakeClock()
    async with Run(config, path, clock) as one:
        quote = await one.rfq("r1", qty="0.01")
        assert quote["type"] == "quote"
    clock.step(s=-HOUR_S)  # while the engine was down
    async with Run(config, path, clock) as two:
        assert (await two.restore()).quotes == 1
        clock.advance(ms=ttl_ms + 1)
        sim_refresh()(two.market, clock.now_ns())
        reply = await two.accept(quote["quote_id"])
        assert reply["code"] == "EXPIRED"
    async with Run(config, path, clock) as three:  # within the lifetime: still good
        assert (await three.restore()).quotes == 1
        clock.advance(ms=ttl_ms - 1)
        sim_refresh()(three.market, clock.now_ns())
        assert (await three.accept(quote["quote_id"]))["type"] == "fill"


def clocked_market(clock: FakeClock) -> Market:
    """The engine's market: books stamped and aged on ``clock``'s monotonic time."""
    market = Market(repo_config(), clock=clock)
    sim_refresh()(market, clock.now_ns())
    return market


def test_a_stale_book_does_not_look_fresh_when_the_clock_steps_back() -> None:
    """A book's age was now - ts_recv_ns on the wall clock: stepped back an hour, a book that
    stopped updating was negative seconds old, i.e. fresh, for the next hour."""
    clock = FakeClock()
    market = clocked_market(clock)
    book = market.books["BTC-USDT"]
    assert book.max_book_age_ms is not None
    clock.advance(ms=book.max_book_age_ms + 1)
    clock.step(s=-HOUR_S)
    view = book.view(clock.now_ns())
    assert not view.included
    assert {e.reason for e in view.excluded} == {"stale"}
    for name in book.venues:
        why = book.exclusion(name, clock.now_ns())
        assert why is not None
        assert why.reason == "stale"


def test_a_clock_stepped_forward_leaves_fresh_books_fresh() -> None:
    clock = FakeClock()
    market = clocked_market(clock)
    book = market.books["BTC-USDT"]
    clock.step(s=HOUR_S)
    assert set(book.view(clock.now_ns()).included) == set(book.venues)
    assert all(book.exclusion(name, clock.now_ns()) is None for name in book.venues)


async def test_an_rfq_is_not_priced_from_frozen_books_after_the_clock_stepped_back() -> None:
    desk = Desk(repo_config(), sim_refresh())
    desk.market = clocked_market(desk.clock)
    desk.engine = QuoteEngine(desk.config, desk.market, desk.journal, desk.clock)
    quote = await desk.quote(qty="0.01")
    assert all(b["age_ms"] == 0 for b in desk.explanations()[0]["ask"]["books"].values())
    assert desk.market.books["BTC-USDT"].max_book_age_ms is not None
    desk.clock.advance(ms=desk.market.books["BTC-USDT"].max_book_age_ms + 1)
    desk.clock.step(s=-HOUR_S)
    reply = await desk.rfq(qty="0.01")
    assert reply["code"] == "MARKET_UNAVAILABLE"
    assert "stale" in reply["reason"]
    assert quote["type"] == "quote"


async def test_a_clock_stepped_back_across_midnight_does_not_give_the_day_before_back() -> None:
    """The day was the wall clock's: stepped back from 00:00:30 to 23:00:30, a client who had
    used the new day's limit got the day before's headroom again (twice the limit in an hour)."""
    day = 86_400_000_000_000
    config = repo_config()
    clients = [replace(c, max_daily_notional=D(100_000)) for c in config.clients]
    desk = Desk(replace(config, clients=clients), sim_refresh())
    desk.clock.set((desk.clock.now_ns() // day + 1) * day + 30 * 10**9)
    desk.refresh()
    first = await desk.accept((await desk.quote(qty="1"))["quote_id"])  # ~64,000
    assert first["type"] == "fill"
    desk.clock.step(s=-HOUR_S)
    desk.refresh()
    reply = await desk.rfq(qty="1")
    assert reply["code"] == "LIMIT_EXCEEDED"
    assert f"on top of {first['price']} traded today" in reply["reason"]
    assert desk.engine.daily_notional("client-a") == D(first["price"])


async def test_a_restart_after_the_clock_stepped_back_across_midnight_keeps_the_day(
    tmp_path: Path,
) -> None:
    day = 86_400_000_000_000
    config = repo_config()
    path = tmp_path / "journal.sqlite"
    clock = FakeClock()
    clock.set((clock.now_ns() // day + 1) * day + 30 * 10**9)
    async with Run(config, path, clock) as one:
        quote = await one.rfq("r1", qty="1")
        fill = await one.accept(quote["quote_id"])
        assert fill["type"] == "fill"
    clock.step(s=-HOUR_S)  # back to the day before, while the engine was down
    async with Run(config, path, clock) as two:
        restored = await two.restore()
        assert restored.daily_notional == {"client-a": D(fill["price"])}
        assert two.engine.daily_notional("client-a") == D(fill["price"])
