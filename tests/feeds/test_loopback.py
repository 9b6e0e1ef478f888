"""The real websocket client against the loopback exchange replaying a Bybit session, with faults.

After every kind of fault the client recovers, and its books end equal to the books built
offline from the clean recording.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from feeds.bybit import BybitBookFeed
from feeds.connection import Backoff, FeedConnection
from feeds.loopback import Fault, LoopbackExchange
from feeds.recorded import read_recording

RECORDING = ("bybit", "bybit_v5_spot_orderbook200_2026-08-09.jsonl")


def clean_books(path: Path) -> dict[str, object]:
    feed = BybitBookFeed()
    for record in read_recording(path):
        feed.on_message(record.data, record.ts_recv_ns)
    return dict(feed.books)


async def run_against(
    exchange: LoopbackExchange, feed: BybitBookFeed, symbols: list[str]
) -> FeedConnection:
    conn = FeedConnection(
        feed,
        symbols,
        url=exchange.url,
        backoff=Backoff(base_s=0.01, cap_s=0.05, rng=random.Random(1)),
        stale_after_ms=5_000,
    )
    async with asyncio.timeout(30):
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(conn.run(), name="feed")
            await exchange.done.wait()
            # The stream is over once the client has caught up with the reference.
            while any(  # noqa: ASYNC110 - polls state the feed task owns
                feed.books.get(s) != b or not feed.in_sync.get(s)
                for s, b in exchange.reference.books.items()
            ):
                await asyncio.sleep(0.01)
            task.cancel()
    return conn


@pytest.mark.parametrize(
    "faults",
    [
        {},
        {50: Fault.DROP},
        {60: Fault.DUPLICATE},
        {70: Fault.SWAP},
        {80: Fault.DISCONNECT},
        {40: Fault.DROP, 120: Fault.SWAP, 200: Fault.DISCONNECT, 300: Fault.DUPLICATE},
    ],
    ids=["clean", "drop", "duplicate", "swap", "disconnect", "all"],
)
async def test_client_recovers_and_matches_clean_books(
    shared_data: Path, faults: dict[int, Fault]
) -> None:
    path = shared_data.joinpath(*RECORDING)
    expected = clean_books(path)
    feed = BybitBookFeed()
    async with LoopbackExchange("bybit", path, faults=faults) as exchange:
        conn = await run_against(exchange, feed, ["BTCUSDT", "ETHUSDT"])
    assert feed.books == expected
    for book in feed.books.values():
        book._check()
    health = conn.health()
    drops = sum(f is Fault.DROP for f in faults.values())
    swaps = sum(f is Fault.SWAP for f in faults.values())
    # A dropped update always shows as a gap; a swap only when both messages are one symbol's.
    assert drops <= health.gaps <= drops + swaps
    assert health.reconnects == sum(f is Fault.DISCONNECT for f in faults.values())
    if not faults:
        assert feed.stats.dropped == 0
        assert health.gaps == 0
