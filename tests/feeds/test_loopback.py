"""The real websocket client against the loopback exchange replaying each venue's session.

After every kind of fault (a dropped, duplicated, swapped or corrupted message, a disconnect)
the client recovers through the venue's own resync path, and its books end equal to the books
built offline from the clean recording.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from feeds.base import VenueBookFeed
from feeds.connection import Backoff, FeedConnection
from feeds.loopback import Fault, LoopbackExchange
from feeds.recorded import read_recording
from feeds.registry import adapter_class

# venue -> (recording, venue symbols to subscribe, whether corruption is detectable)
SESSIONS = {
    "bybit": ("bybit/bybit_v5_spot_orderbook200_2026-08-09.jsonl", ["BTCUSDT", "ETHUSDT"], False),
    "okx": ("okx/okx_v5_books400_3inst_2022-05-13.jsonl", ["BTC-USDT", "UNI-USD-SWAP"], True),
    "bitget": ("bitget/bitget_v1_mix_books_2022-04-07.jsonl", ["DASHUSDT", "UNIUSDT"], True),
    "kraken": ("kraken/kraken_v1_book1000_10pairs_2021-04-17.jsonl", ["XBT/CHF"], True),
    "binance": (
        "binance/binance_spot_depth_4sym_with_rest_snapshots_2021-10-12.jsonl",
        ["NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"],
        False,
    ),
    # The loopback numbers Coinbase's messages per connection, as the venue does, so the
    # client checks the whole connection's sequence_num.
    "coinbase": ("coinbase/coinbase_advtrade_level2_ETH-USD_2026-08-09.jsonl", ["ETH-USD"], False),
}
CLIENT_OPTIONS: dict[str, dict[str, object]] = {"coinbase": {"check_sequence": True}}


def clean_books(venue: str, path: Path) -> dict[str, object]:
    feed = adapter_class(venue)()
    for record in read_recording(path):
        if record.conn.startswith("REST"):
            feed.on_rest(record.conn.removeprefix("REST "), record.data, record.ts_recv_ns)
        else:
            feed.on_message(record.data, record.ts_recv_ns)
    return dict(feed.books)


async def run_against(
    exchange: LoopbackExchange, feed: VenueBookFeed, symbols: list[str]
) -> FeedConnection:
    conn = FeedConnection(
        feed,
        symbols,
        url=exchange.url,
        rest_url=exchange.rest_url,
        snapshot_retry_s=0.01,
        backoff=Backoff(base_s=0.01, cap_s=0.05, rng=random.Random(1)),
        stale_after_ms=5_000,
    )
    async with asyncio.timeout(60):
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


FAULTS = {
    "clean": {},
    "drop": {50: Fault.DROP},
    "duplicate": {60: Fault.DUPLICATE},
    "swap": {70: Fault.SWAP},
    "corrupt": {90: Fault.CORRUPT},
    "disconnect": {80: Fault.DISCONNECT},
    "all": {40: Fault.DROP, 80: Fault.SWAP, 120: Fault.DISCONNECT, 150: Fault.DUPLICATE},
}


@pytest.mark.parametrize("venue", sorted(SESSIONS))
@pytest.mark.parametrize("case", sorted(FAULTS))
async def test_client_recovers_and_matches_clean_books(
    shared_data: Path, venue: str, case: str
) -> None:
    recording, symbols, detects_corruption = SESSIONS[venue]
    faults = FAULTS[case]
    if Fault.CORRUPT in faults.values() and not detects_corruption:
        pytest.skip(f"{venue} sends no checksum: there is no checksum to corrupt")
    path = shared_data / recording
    expected = clean_books(venue, path)
    feed = adapter_class(venue)(**CLIENT_OPTIONS.get(venue, {}))  # type: ignore[arg-type]
    async with LoopbackExchange(venue, path, faults=faults) as exchange:
        conn = await run_against(exchange, feed, symbols)
    assert feed.books == expected
    for book in feed.books.values():
        book._check()
    health = conn.health()
    assert health.reconnects == sum(f is Fault.DISCONNECT for f in faults.values())
    if not faults and venue != "binance":  # Binance drops buffered events its snapshot covers
        assert feed.stats.dropped == 0
    if not faults:
        assert health.gaps == 0
        assert health.checksum_failures == 0
    if case == "corrupt":
        assert health.checksum_failures == 1
    if case == "drop":
        # A lost update shows as a gap where the venue numbers its messages, else as a
        # checksum failure.
        assert health.gaps + health.checksum_failures >= 1
