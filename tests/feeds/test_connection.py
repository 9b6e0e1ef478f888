"""FeedConnection behaviour that the loopback replays do not show: backoff, staleness, health."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from feeds.base import BookDelta, BookEvent, BookSnapshot
from feeds.binance import BinanceBookFeed
from feeds.bybit import BybitBookFeed
from feeds.connection import Backoff, FeedConnection
from feeds.kraken import KrakenBookFeed
from feeds.loopback import LoopbackExchange


async def run_until(conn: FeedConnection, ready: Callable[[], bool]) -> dict[str, bool]:
    """Run ``conn`` until ``ready()`` holds (10 s at most), then stop it; returns which symbols
    were in sync then (stopping disconnects, which marks them all out of sync)."""
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        task = tg.create_task(conn.run(), name="feed")
        while not ready():  # noqa: ASYNC110 - state the feed task owns
            await asyncio.sleep(0.01)
        in_sync = dict(conn.feed.in_sync)
        assert not task.done()
        task.cancel()
    return in_sync


def test_backoff_is_jittered_capped_and_resets() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0, rng=random.Random(5))
    delays = [backoff.next_delay() for _ in range(12)]
    ceilings = [min(4.0, 0.5 * 2**n) for n in range(12)]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays[6:]) <= 4.0
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() <= 0.5


def test_backoff_stays_at_its_cap_however_long_the_venue_is_away() -> None:
    """The ceiling was ``base_s * 2**attempt``: at the 1,025th attempt in a row (a venue away for
    about 4 h at the default 30 s cap) the int no longer converted to a float and next_delay
    raised OverflowError, out of FeedConnection.run and its engine's task group."""
    backoff = Backoff(base_s=0.5, cap_s=30.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(5000)]
    assert max(delays) <= 30.0
    assert min(delays[-100:]) >= 0.0
    assert max(delays[-100:]) > 15.0  # still jittered over the whole cap


async def test_an_unreachable_venue_is_redialled_past_a_thousand_attempts() -> None:
    conn = FeedConnection(
        BybitBookFeed(),
        ["BTCUSDT"],
        url="ws://127.0.0.1:9",  # discard port: nothing listens
        backoff=Backoff(base_s=0.001, cap_s=0.002, rng=random.Random(1)),
    )
    conn.backoff.attempt = 1020  # hours of a venue away, at the default cap
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        task = tg.create_task(conn.run(), name="feed")
        while conn.reconnects < 10 and not task.done():  # noqa: ASYNC110 - feed task state
            await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
    assert conn.health().state == "down"


async def test_quiet_connection_is_reported_stale_then_reopened(shared_data: Path) -> None:
    """A venue that stops talking: health turns stale and the watchdog reconnects."""
    path = shared_data / "bybit" / "bybit_v5_spot_orderbook200_2026-08-09.jsonl"
    feed = BybitBookFeed()
    # One message per 2 s: after the first snapshot the line is quiet for longer than 200 ms.
    async with LoopbackExchange("bybit", path, interval_s=2.0) as exchange:
        conn = FeedConnection(
            feed,
            ["BTCUSDT"],
            url=exchange.url,
            stale_after_ms=200,
            backoff=Backoff(base_s=0.01, cap_s=0.02, rng=random.Random(3)),
        )
        async with asyncio.timeout(20), asyncio.TaskGroup() as tg:
            task = tg.create_task(conn.run(), name="feed")
            # the reconnect is counted before the new connection reaches the exchange
            while conn.reconnects == 0 or exchange.connections < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            task.cancel()
    health = conn.health()
    assert health.reconnects >= 1
    assert "no data" in health.last_error
    assert exchange.connections >= 2
    # Disconnected: every symbol is out of sync, so the consolidated view excludes the venue.
    assert not any(feed.in_sync.values())


def test_health_of_a_live_connection_goes_stale_with_age() -> None:
    feed = BybitBookFeed()
    now = [1_000_000_000_000]
    conn = FeedConnection(feed, ["BTCUSDT"], stale_after_ms=500, monotonic_ns=lambda: now[0])
    conn.state = "live"
    conn.last_message_ns = now[0]
    assert conn.health().state == "live"
    assert conn.health().age_ms == 0
    now[0] += 501 * 1_000_000
    health = conn.health()
    assert health.state == "stale"
    assert health.age_ms == 501


async def test_unreachable_venue_counts_reconnects_and_stays_down() -> None:
    feed = BybitBookFeed()
    conn = FeedConnection(
        feed,
        ["BTCUSDT"],
        url="ws://127.0.0.1:9",  # discard port: nothing listens
        backoff=Backoff(base_s=0.001, cap_s=0.002, rng=random.Random(1)),
    )
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        task = tg.create_task(conn.run(), name="feed")
        while conn.reconnects < 3:  # noqa: ASYNC110 - polls state the feed task owns
            await asyncio.sleep(0.01)
        task.cancel()
    health = conn.health()
    assert health.state == "down"
    assert health.last_error
    assert health.age_ms is None


@pytest.mark.parametrize("venue", ["bybit", "okx", "kraken", "bitget", "binance", "coinbase"])
def test_every_adapter_declares_a_public_endpoint_and_subscribes(venue: str) -> None:
    from feeds.registry import adapter_class

    feed = adapter_class(venue)()
    assert feed.url.startswith("wss://")
    messages = feed.subscribe_messages(["BTC-USDT"])
    assert messages
    assert all(isinstance(m, bytes) and m for m in messages)


async def test_refused_request_and_malformed_message_do_not_stop_the_feed() -> None:
    """A venue's error answer to a request used to raise a bare ValueError out of on_message,
    which _receive did not catch: the connection's task group failed and run() ended."""
    snapshot = (
        b'{"topic":"orderbook.200.BTCUSDT","type":"snapshot","ts":1,'
        b'"data":{"s":"BTCUSDT","b":[["100","1"]],"a":[["101","1"]],"u":1,"seq":1},"cts":1}'
    )
    sent = [
        b'{"topic":"orderbook.200.BTCUSDT","type":"delta","data":{"s":"BTCUSDT","u":"x"}}',
        b'{"success":false,"ret_msg":"Invalid symbol :[orderbook.200.XYZ]","op":"subscribe"}',
        snapshot,
    ]

    async def venue(ws: ServerConnection) -> None:
        await ws.recv()  # the subscription
        for message in sent:
            await ws.send(message.decode())
        await ws.wait_closed()

    feed = BybitBookFeed()
    async with serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(feed, ["BTCUSDT", "XYZ"], url=f"ws://127.0.0.1:{port}")
        await run_until(conn, lambda: feed.in_sync.get("BTCUSDT", False))
    assert conn.malformed == 1
    assert conn.reconnects == 0
    assert "subscription refused: Invalid symbol" in conn.health().last_error


def bybit_snapshot(u: int, bids: str) -> str:
    """A Bybit v5 ``orderbook`` snapshot of BTCUSDT; ``bids`` a JSON array written by hand."""
    return (
        '{"topic":"orderbook.200.BTCUSDT","type":"snapshot","ts":1,'
        f'"data":{{"s":"BTCUSDT","b":{bids},"a":[["101","1"]],"u":{u},"seq":1}},"cts":1}}'
    )


#: What a Bybit connection sends to resync BTCUSDT: a new subscription brings a new snapshot.
BTC_RESUBSCRIBED = [
    {"op": "unsubscribe", "args": ["orderbook.200.BTCUSDT"]},
    {"op": "subscribe", "args": ["orderbook.200.BTCUSDT"]},
]
ETH_SNAPSHOT = (
    '{"topic":"orderbook.200.ETHUSDT","type":"snapshot","ts":1,'
    '"data":{"s":"ETHUSDT","b":[["10","1"]],"a":[["11","1"]],"u":1,"seq":1},"cts":1}'
)


async def test_malformed_snapshot_is_resynced_by_resubscribing() -> None:
    """A snapshot that did not parse was counted and skipped: the symbol stayed out of sync,
    its deltas dropped, until the next reconnect (the other symbol's messages kept the
    watchdog happy), for Bybit only resubscribes send snapshots."""
    eth = ETH_SNAPSHOT
    received: list[dict[str, object]] = []

    async def venue(ws: ServerConnection) -> None:
        received.append(json.loads(await ws.recv()))  # the subscription
        await ws.send(eth)
        await ws.send(bybit_snapshot(1, '[["NaN","1"]]'))
        # The client answers with unsubscribe + subscribe of that topic: a fresh snapshot.
        received.extend([json.loads(await ws.recv()), json.loads(await ws.recv())])
        await ws.send(bybit_snapshot(2, '[["100","1"]]'))
        await ws.wait_closed()

    feed = BybitBookFeed()
    async with serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(feed, ["BTCUSDT", "ETHUSDT"], url=f"ws://127.0.0.1:{port}")
        in_sync = await run_until(conn, lambda: conn.state == "live")
    assert received[1:] == BTC_RESUBSCRIBED
    assert in_sync == {"BTCUSDT": True, "ETHUSDT": True}
    assert feed.books["BTCUSDT"].sequence == 2
    assert (conn.malformed, conn.reconnects, feed.stats.resyncs) == (1, 0, 1)
    assert "BTCUSDT: malformed snapshot" in conn.health().last_error


def test_resyncs_in_a_row_are_paced_and_a_calm_spell_resets_them() -> None:
    now = [0]
    conn = FeedConnection(
        BybitBookFeed(),
        ["BTCUSDT"],
        monotonic_ns=lambda: now[0],
        resync_base_s=0.5,
        resync_cap_s=4.0,
        resync_calm_s=10.0,
    )
    delays = []
    for _ in range(7):
        delays.append(conn.resync_delay("BTCUSDT"))
        now[0] += 1_000_000_000  # a second later: still in a row
    assert delays[0] == 0
    for delay, ceiling in zip(delays[1:], [0.5, 1, 2, 4, 4, 4], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert conn.resync_delay("ETHUSDT") == 0  # per symbol
    now[0] += round(delays[-1] * 1e9) + 10_000_000_000  # ten quiet seconds after the last went out
    assert conn.resync_delay("BTCUSDT") == 0
    assert 0.25 <= conn.resync_delay("BTCUSDT") <= 0.5


def test_paced_resyncs_reach_the_cap_when_the_fault_comes_back_after_each() -> None:
    """The calm spell was counted from when a resync was asked for, not from when it was sent:
    a fault coming back right after a resync paced 10 s or more looked calm, and the pacing
    started over at once. With the defaults the delays never passed 16 s and kept starting
    over from 0: a resync every 4 s on average, where the cap (30 s) allows one every 22 s."""
    now = [0]
    conn = FeedConnection(BybitBookFeed(), ["BTCUSDT"], monotonic_ns=lambda: now[0])
    delays = []
    for _ in range(20):
        delay = conn.resync_delay("BTCUSDT")
        delays.append(delay)
        now[0] += round(delay * 1e9) + 200_000_000  # resynced after the delay; fails 0.2 s on
    assert delays[0] == 0
    assert all(delay > 0 for delay in delays[1:])  # never started over: no calm spell
    assert all(15 <= delay <= 30 for delay in delays[8:])  # at the cap, 30 s


async def test_a_fault_that_keeps_coming_back_is_resynced_at_a_slowing_pace() -> None:
    """A venue answering every resubscription with a bad snapshot was resubscribed at once,
    every time: a flood of subscriptions, which venues rate-limit or ban."""
    subscribed: list[float] = []

    async def venue(ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = json.loads(await ws.recv())
            if message["op"] == "subscribe":
                subscribed.append(loop.time())
                await ws.send(bybit_snapshot(1, '[["NaN","1"]]'))

    feed = BybitBookFeed()
    async with serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(
            feed, ["BTCUSDT"], url=f"ws://127.0.0.1:{port}", resync_base_s=0.1, resync_cap_s=0.4
        )
        await run_until(conn, lambda: len(subscribed) >= 5)
    gaps = [b - a for a, b in itertools.pairwise(subscribed)]
    # The first resync at once (its delay is 0: see the test above; no upper bound on a
    # loopback round trip here); then at least half of 0.1, 0.2, 0.4 s (the cap).
    for gap, least in zip(gaps[1:], [0.05, 0.1, 0.2], strict=False):
        assert gap >= least, gaps
    assert conn.reconnects == 0
    assert conn.malformed in (len(subscribed) - 1, len(subscribed))  # the last may be unread


async def test_a_symbol_left_out_of_sync_is_resynced_after_the_sync_timeout() -> None:
    """A snapshot msgspec refuses while decoding names no symbol to the connection: it was
    counted as malformed, and the symbol stayed out of sync until the next reconnect."""
    received: list[dict[str, object]] = []
    unreadable = bybit_snapshot(1, '[["100","1"]]').replace('"u":1', '"u":"x"')

    async def venue(ws: ServerConnection) -> None:
        received.append(json.loads(await ws.recv()))  # the subscription
        await ws.send(unreadable)
        while True:  # ETHUSDT keeps the connection busy, never stale
            await ws.send(ETH_SNAPSHOT)
            try:
                async with asyncio.timeout(0.05):
                    received.append(json.loads(await ws.recv()))
            except TimeoutError:
                continue
            if received[-1]["op"] == "subscribe":
                await ws.send(bybit_snapshot(2, '[["100","1"]]'))

    feed = BybitBookFeed()
    async with serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(
            feed, ["BTCUSDT", "ETHUSDT"], url=f"ws://127.0.0.1:{port}", sync_timeout_s=0.2
        )
        in_sync = await run_until(conn, lambda: conn.state == "live")
    assert received[1:] == BTC_RESUBSCRIBED
    assert in_sync == {"BTCUSDT": True, "ETHUSDT": True}
    assert (conn.malformed, conn.reconnects) == (1, 0)


async def test_a_book_that_stays_crossed_is_resynced() -> None:
    """A book whose best bid stays at or above its best ask (an update lost where nothing
    numbers them, a venue's glitch) was left out of the consolidated view as crossed, and kept
    in sync: no resync ever came, and the venue stayed out until the next reconnect."""
    received: list[dict[str, object]] = []
    crossed = bybit_snapshot(1, '[["102","1"]]')  # bid 102 >= ask 101

    async def venue(ws: ServerConnection) -> None:
        received.append(json.loads(await ws.recv()))  # the subscription
        await ws.send(crossed)
        while True:  # ETHUSDT keeps the connection busy, never stale
            await ws.send(ETH_SNAPSHOT)
            try:
                async with asyncio.timeout(0.05):
                    received.append(json.loads(await ws.recv()))
            except TimeoutError:
                continue
            if received[-1]["op"] == "subscribe":
                await ws.send(bybit_snapshot(2, '[["100","1"]]'))

    feed = BybitBookFeed()
    async with serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(
            feed, ["BTCUSDT", "ETHUSDT"], url=f"ws://127.0.0.1:{port}", crossed_timeout_s=0.2
        )
        await run_until(
            conn,
            lambda: (
                feed.books.get("BTCUSDT", None) is not None and feed.books["BTCUSDT"].sequence == 2
            ),
        )
    assert received[1:3] == BTC_RESUBSCRIBED
    assert not feed.books["BTCUSDT"].crossed
    assert (feed.stats.resyncs, conn.reconnects) == (1, 0)
    assert "crossed" in conn.last_error


async def run_binance(
    rest_body: Callable[[int, int], str | Response],
    update_ids: Iterable[int] = itertools.count(1),
    *,
    ready: Callable[[FeedConnection, int], bool] | None = None,
    **options: Any,
) -> tuple[FeedConnection, int]:
    """A Binance venue streaming BNBBTC depth events numbered ``update_ids``, one every 5 ms,
    and answering its ``n``-th REST snapshot request (from 1) with ``rest_body(n, the last
    update id sent)`` (a body, or a whole HTTP response); a connection to it (``options``)
    runs until ``ready(connection, snapshots requested)``, by default until the symbol is in
    sync. Returns the connection and how many snapshots were requested."""
    sent = [0]
    requests: list[str] = []

    def rest(connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        requests.append(request.path)
        answer = rest_body(len(requests), sent[0])
        if isinstance(answer, Response):
            return answer
        return Response(200, "OK", Headers([("Content-Type", "application/json")]), answer.encode())

    async def venue(ws: ServerConnection) -> None:
        await ws.recv()  # the subscription
        for update_id in update_ids:
            sent[0] = update_id
            event = {"e": "depthUpdate", "E": 1, "s": "BNBBTC", "U": update_id, "u": update_id}
            await ws.send(json.dumps({**event, "b": [["0.0023", str(update_id)]], "a": []}))
            await asyncio.sleep(0.005)

    feed = BinanceBookFeed()
    async with serve(venue, "127.0.0.1", 0, process_request=rest) as server:
        port = server.sockets[0].getsockname()[1]
        url, rest_url = f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}"
        conn = FeedConnection(feed, ["BNBBTC"], url=url, rest_url=rest_url, **options)
        if ready is None:
            await run_until(conn, lambda: feed.in_sync.get("BNBBTC", False))
        else:
            await run_until(conn, lambda: ready(conn, len(requests)))
    return conn, len(requests)


async def test_malformed_rest_snapshot_is_fetched_again() -> None:
    """Binance: a REST body that does not parse leaves the symbol pending; the connection
    fetches another one, which bridges the buffered events."""

    def body(n: int, last: int) -> str:
        bids = '[["NaN","1"]]' if n == 1 else '[["0.0024","1"]]'
        return f'{{"lastUpdateId":{last},"bids":{bids},"asks":[]}}'

    conn, requests = await run_binance(body, snapshot_retry_s=0.01)
    assert requests == 2
    assert conn.malformed == 1
    assert "malformed snapshot" in conn.last_error
    assert conn.reconnects == 0


async def test_events_a_rest_snapshot_bridged_before_a_gap_are_forwarded() -> None:
    """Binance: a snapshot that bridged some buffered events, then met a gap among them, raised
    with what it had applied: the snapshot and those events never reached the recorder."""

    def body(n: int, last: int) -> str:
        if n == 1:  # refused: the first events arrive meanwhile
            return '{"lastUpdateId":1,"bids":[["NaN","1"]],"asks":[]}'
        if n == 2:  # bridges event 2, then meets the gap
            return '{"lastUpdateId":1,"bids":[["0.0024","1"]],"asks":[]}'
        return f'{{"lastUpdateId":{last},"bids":[["0.0024","9"]],"asks":[]}}'

    events: list[BookEvent] = []
    conn, requests = await run_binance(
        body,
        itertools.chain((1, 2), itertools.count(4)),  # 3 is lost
        snapshot_retry_s=0.05,
        on_events=events.extend,
    )
    assert requests == 3
    assert "sequence gap" in conn.last_error
    snapshots = [e.sequence for e in events if isinstance(e, BookSnapshot)]
    assert snapshots[0] == 1
    assert [e.sequence for e in events[:2]] == [1, 2]  # the first bridge, up to the gap
    assert len(snapshots) == 2


def kraken_book(kind: str, entries: list[dict[str, object]]) -> str:
    """A Kraken v2 book message of these ``data`` entries."""
    return json.dumps({"channel": "book", "type": kind, "data": entries})


def kraken_entry(pair: str, bid: str, checksum: int | None = None) -> dict[str, object]:
    entry: dict[str, object] = {"symbol": pair, "bids": [{"price": float(bid), "qty": 1.0}]}
    entry["asks"] = []
    if checksum is not None:
        entry["checksum"] = checksum
    return entry


def kraken_resubscribed(pair: str) -> list[dict[str, object]]:
    params = {"channel": "book", "symbol": [pair], "depth": 1000}
    return [{"method": "unsubscribe", "params": params}, {"method": "subscribe", "params": params}]


async def run_kraken(
    pairs: list[str], trouble: str, resyncs: int
) -> tuple[list[dict[str, object]], list[BookEvent], dict[str, bool]]:
    """A Kraken v2 venue: snapshots of ``pairs`` in one message, then ``trouble``; it answers
    each of the ``resyncs`` resubscriptions expected with a fresh snapshot. Returns what it
    received after the subscription, the events forwarded, and which pairs were in sync."""
    received: list[dict[str, object]] = []

    async def venue(ws: ServerConnection) -> None:
        await ws.recv()  # the subscription (the precisions are known: no instrument channel)
        await ws.send(kraken_book("snapshot", [kraken_entry(pair, "100") for pair in pairs]))
        await ws.send(trouble)
        while len(received) < 2 * resyncs:
            received.append(json.loads(await ws.recv()))
            if received[-1]["method"] == "subscribe":
                pair = received[-1]["params"]["symbol"][0]  # type: ignore[index]
                await ws.send(kraken_book("snapshot", [kraken_entry(pair, "90")]))
        await ws.wait_closed()

    events: list[BookEvent] = []
    feed = KrakenBookFeed(precisions=dict.fromkeys(pairs, (1, 8)))
    async with serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(feed, pairs, url=f"ws://127.0.0.1:{port}", on_events=events.extend)
        # The first snapshots, then one fresh snapshot per resync.
        snapshots = len(pairs) + resyncs
        in_sync = await run_until(
            conn, lambda: sum(isinstance(e, BookSnapshot) for e in events) == snapshots
        )
    return received, events, in_sync


async def test_a_message_putting_several_pairs_out_of_sync_resyncs_them_all() -> None:
    """Two pairs' checksums failed in one message: only the first was resubscribed (the second
    waited for the watchdog), and the update applied to a third pair never reached the
    recorder, for the message raised."""
    pairs = ["XBT/USD", "ETH/USD", "SOL/USD"]
    update = kraken_book(
        "update",
        [
            kraken_entry("XBT/USD", "99", 1),
            kraken_entry("ETH/USD", "98"),
            kraken_entry("SOL/USD", "97", 2),
        ],
    )
    received, events, in_sync = await run_kraken(pairs, update, resyncs=2)
    assert received == kraken_resubscribed("XBT/USD") + kraken_resubscribed("SOL/USD")
    assert in_sync == dict.fromkeys(pairs, True)
    (delta,) = [e for e in events if isinstance(e, BookDelta)]
    assert delta.symbol == "ETH/USD"


async def test_a_book_message_that_does_not_decode_resyncs_every_pair() -> None:
    """Kraken checksums the top 10 levels only: a book message that msgspec refused was
    counted as malformed and skipped, the pairs staying in sync, an update deeper lost for
    good. Which pairs it was about cannot be read here: all of them are resynced."""
    pairs = ["XBT/USD", "ETH/USD"]
    trouble = kraken_book("update", [{"symbol": 7, "bids": []}])
    received, _, in_sync = await run_kraken(pairs, trouble, resyncs=2)
    assert received == kraken_resubscribed("XBT/USD") + kraken_resubscribed("ETH/USD")
    assert in_sync == dict.fromkeys(pairs, True)


# -- a hostile venue (found by fuzzing the connection) --------------------------------------------


async def test_a_broken_http_answer_to_a_rest_snapshot_does_not_end_the_feed() -> None:
    """urllib's HTTPException (a bad status line here) escaped the snapshot task and ended
    `run()`; now it is a failed snapshot like any other, fetched again."""
    answers: list[bytes] = []

    async def rest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        answers.append(b"")
        writer.write(b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def venue(ws: ServerConnection) -> None:
        await ws.recv()
        for update_id in itertools.count(1):
            event = {"e": "depthUpdate", "E": 1, "s": "BNBBTC", "U": update_id, "u": update_id}
            await ws.send(json.dumps({**event, "b": [], "a": []}))
            await asyncio.sleep(0.01)

    rest_server = await asyncio.start_server(rest, "127.0.0.1", 0)
    rest_port = rest_server.sockets[0].getsockname()[1]
    async with rest_server, serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(
            BinanceBookFeed(symbols={"BNBBTC": "BNBBTC"}),
            ["BNBBTC"],
            url=f"ws://127.0.0.1:{port}/ws",
            rest_url=f"http://127.0.0.1:{rest_port}",
            snapshot_retry_s=0.01,
        )
        await run_until(conn, lambda: len(answers) >= 2)
    assert "BadStatusLine" in conn.last_error
    assert conn.reconnects == 0


async def test_a_message_nested_too_deeply_is_malformed_not_the_end_of_the_feed() -> None:
    async def venue(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send('{"x":' + '{"a":' * 100_000 + "1" + "}" * 100_001)
        await ws.send(bybit_snapshot(1, '[["100","1"]]'))
        await ws.wait_closed()

    feed = BybitBookFeed()
    async with serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(feed, ["BTCUSDT"], url=f"ws://127.0.0.1:{port}")
        in_sync = await run_until(conn, lambda: conn.state == "live")
    assert in_sync == {"BTCUSDT": True}
    assert conn.malformed == 1


async def test_a_venue_that_never_says_a_word_is_stale() -> None:
    """Staleness counted from the last message only: a connection that never got one was
    never reopened (and the next connection was judged by the previous one's last message)."""
    opened: list[float] = []

    async def venue(ws: ServerConnection) -> None:
        opened.append(asyncio.get_running_loop().time())
        await ws.wait_closed()

    async with serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(
            BybitBookFeed(),
            ["BTCUSDT"],
            url=f"ws://127.0.0.1:{port}",
            stale_after_ms=200,
            backoff=Backoff(base_s=0.01, cap_s=0.02, rng=random.Random(3)),
        )
        await run_until(conn, lambda: len(opened) >= 3)
    assert "no data" in conn.last_error
    gaps = [b - a for a, b in itertools.pairwise(opened)]
    assert all(gap >= 0.2 for gap in gaps), gaps  # each connection given its own quiet time


async def test_a_venue_that_hangs_up_after_each_snapshot_is_redialled_ever_more_slowly() -> None:
    """One message made the connection live, which reset the back-off: such a venue was
    redialled about four times a second, forever."""

    async def venue(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(bybit_snapshot(1, '[["100","1"]]'))
        await ws.close()

    conn: FeedConnection
    async with serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(
            BybitBookFeed(),
            ["BTCUSDT"],
            url=f"ws://127.0.0.1:{port}",
            backoff=Backoff(base_s=0.01, cap_s=10, rng=random.Random(3)),
        )
        await run_until(conn, lambda: conn.reconnects >= 5)
    assert conn.backoff.attempt >= 5  # never reset: none of the connections lasted


async def test_symbols_the_venue_sends_but_we_did_not_subscribe_get_nothing() -> None:
    """Binance: events of other symbols got books, buffers and REST snapshots of their own
    (hundreds of requests a second for a venue sending junk), and counted as in sync."""
    requests: list[str] = []

    def rest(connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        requests.append(request.path)
        body = b'{"lastUpdateId":1,"bids":[["0.0024","1"]],"asks":[]}'
        return Response(200, "OK", Headers([("Content-Type", "application/json")]), body)

    async def venue(ws: ServerConnection) -> None:
        await ws.recv()
        for update_id in itertools.count(1):
            for symbol in ("BNBBTC", f"JUNK{update_id}"):
                event = {"e": "depthUpdate", "E": 1, "s": symbol, "U": update_id, "u": update_id}
                await ws.send(json.dumps({**event, "b": [], "a": []}))
            await asyncio.sleep(0.005)

    feed = BinanceBookFeed(symbols={"BNBBTC": "BNBBTC"})
    async with serve(venue, "127.0.0.1", 0, process_request=rest) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(
            feed,
            ["BNBBTC"],
            url=f"ws://127.0.0.1:{port}/ws",
            rest_url=f"http://127.0.0.1:{port}",
            snapshot_retry_s=0.01,
        )
        await run_until(conn, lambda: feed.stats.unfollowed >= 20 and conn.state == "live")
    assert all("symbol=BNBBTC" in path for path in requests)
    assert set(feed.books) == {"BNBBTC"}
    assert conn.health().symbols_in_sync <= 1


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (
            b"HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1/x\r\nContent-Length: 0\r\n\r\n",
            "non-HTTP",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, "over 1000 bytes"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", "took over 0.3 s"),  # then drips
    ],
)
async def test_a_rest_snapshot_is_bounded_in_size_time_and_scheme(
    monkeypatch: pytest.MonkeyPatch, answer: bytes, problem: str
) -> None:
    """A body dripped byte by byte held the fetching thread for hours (and asyncio.run with
    it, at exit); a body of any size was read whole; a redirect to ftp:// was followed."""
    import feeds.connection as connection

    monkeypatch.setattr(connection, "_SNAPSHOT_MAX_BYTES", 1000)
    monkeypatch.setattr(connection, "_SNAPSHOT_DEADLINE_S", 0.3)

    writers: list[asyncio.StreamWriter] = []

    async def rest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        with contextlib.suppress(ConnectionError):
            while not writer.is_closing():  # a byte every 20 ms, for the dripping case
                await writer.drain()
                await asyncio.sleep(0.02)
                writer.write(b"x")

    server = await asyncio.start_server(rest, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(OSError, match=problem):
            await asyncio.to_thread(connection._http_get, f"http://127.0.0.1:{port}/x")
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_a_rest_snapshot_older_than_the_events_says_so() -> None:
    """The symbol waited, fetching snapshot after snapshot, with no word of why."""
    conn, _ = await run_binance(
        lambda n, last: '{"lastUpdateId":1,"bids":[["0.0024","1"]],"asks":[]}',
        itertools.count(100),  # the events start long after the snapshots
        ready=lambda conn, requests: requests >= 2,
        snapshot_retry_s=0.01,
    )
    assert "older than the events buffered" in conn.last_error


async def test_a_rest_snapshot_that_keeps_failing_is_fetched_ever_more_slowly() -> None:
    """Refetched at a flat `snapshot_retry_s` (1 s by default: 60 deep snapshots a minute,
    over twice what Binance allows an IP) however long the fault lasted."""
    loop = asyncio.get_running_loop()
    times: list[float] = []

    def body(n: int, last: int) -> str:
        times.append(loop.time())
        return '{"code": -1003, "msg": "Too many requests"}'  # not a snapshot

    await run_binance(
        body,
        ready=lambda conn, requests: requests >= 6,
        snapshot_retry_s=0.01,
        resync_base_s=0.1,
        resync_cap_s=0.4,
    )
    # Each refetch after the first waits at least half its ceiling: 0.1, 0.2, 0.4, 0.4 s.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert sum(gaps[1:5]) >= 0.05 + 0.1 + 0.2 + 0.2, gaps


async def test_a_rate_limited_rest_snapshot_waits_as_long_as_the_venue_says() -> None:
    """Binance answers requests over its limits with 429 (418 once it has banned the IP) and a
    Retry-After in seconds, and bans for longer each time a client does not wait: the snapshot
    was fetched again ``snapshot_retry_s`` (or the resync pacing) later, whatever it said."""
    loop = asyncio.get_running_loop()
    times: list[float] = []

    def body(n: int, last: int) -> str | Response:
        times.append(loop.time())
        if n == 1:
            headers = Headers([("Content-Type", "application/json"), ("Retry-After", "1")])
            limited = b'{"code":-1003,"msg":"Too many requests; current limit exceeded"}'
            return Response(429, "Too Many Requests", headers, limited)
        return f'{{"lastUpdateId":{last},"bids":[["0.0024","1"]],"asks":[]}}'

    conn, requests = await run_binance(body, snapshot_retry_s=0.01)
    assert requests == 2
    assert times[1] - times[0] >= 1.0, times
    assert "429" in conn.last_error


async def test_a_binance_book_that_stays_crossed_fetches_a_new_snapshot() -> None:
    """Binance resyncs from REST: a crossed book is marked out of sync, the events buffer
    again and a new snapshot is fetched, without reconnecting."""

    def body(n: int, last: int) -> str:
        asks = '[["0.0022","1"]]' if n == 1 else '[["0.0030","1"]]'  # the stream's bid: 0.0023
        return f'{{"lastUpdateId":{last},"bids":[],"asks":{asks}}}'

    conn, requests = await run_binance(
        body,
        ready=lambda conn, requests: requests >= 2 and conn.feed.in_sync.get("BNBBTC", False),
        snapshot_retry_s=0.01,
        crossed_timeout_s=0.2,
    )
    assert requests == 2
    assert not conn.feed.books["BNBBTC"].crossed
    assert conn.reconnects == 0
    assert "crossed" in conn.last_error


async def test_a_symbol_left_out_of_sync_is_resynced_while_another_waits_for_a_snapshot() -> None:
    """Binance resyncs by reconnecting a symbol the venue ignores; that waited as long as any
    other symbol's snapshot was pending (for ever, with a REST that keeps failing)."""

    def rest(connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        return Response(503, "Unavailable", Headers([("Content-Type", "text/plain")]), b"")

    async def venue(ws: ServerConnection) -> None:
        await ws.recv()
        for update_id in itertools.count(1):  # BNBBTC only: ETHBTC never gets a word
            event = {"e": "depthUpdate", "E": 1, "s": "BNBBTC", "U": update_id, "u": update_id}
            await ws.send(json.dumps({**event, "b": [], "a": []}))
            await asyncio.sleep(0.01)

    async with serve(venue, "127.0.0.1", 0, process_request=rest) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(
            BinanceBookFeed(),
            ["BNBBTC", "ETHBTC"],
            url=f"ws://127.0.0.1:{port}/ws",
            rest_url=f"http://127.0.0.1:{port}",
            snapshot_retry_s=0.05,
            sync_timeout_s=0.3,
            backoff=Backoff(base_s=0.01, cap_s=0.02, rng=random.Random(3)),
        )
        await run_until(conn, lambda: conn.reconnects >= 1)
    assert conn.reconnects >= 1


async def test_a_wall_clock_stepped_back_does_not_keep_a_silent_connection_open(
    shared_data: Path,
) -> None:
    """Quiet time was measured on the wall clock: stepped back an hour, a venue that had just
    gone silent looked minus an hour quiet, and stayed connected (its books frozen, its health
    live) for that hour."""
    path = shared_data / "bybit" / "bybit_v5_spot_orderbook200_2026-08-09.jsonl"
    wall = [1_700_000_000_000_000_000]
    # One message per 2 s: after the first snapshot the line is quiet for longer than 200 ms.
    async with LoopbackExchange("bybit", path, interval_s=2.0) as exchange:
        conn = FeedConnection(
            BybitBookFeed(),
            ["BTCUSDT"],
            url=exchange.url,
            stale_after_ms=200,
            backoff=Backoff(base_s=0.01, cap_s=0.02, rng=random.Random(3)),
            clock_ns=lambda: wall[0],
        )
        async with asyncio.timeout(20), asyncio.TaskGroup() as tg:
            task = tg.create_task(conn.run(), name="feed")
            while conn.state != "live":  # noqa: ASYNC110 - state the feed task owns
                await asyncio.sleep(0.005)
            wall[0] -= 3600 * 10**9
            while conn.reconnects == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            task.cancel()
    assert "no data" in conn.health().last_error
