"""The console's JSON API over real HTTP on loopback: auth, controls through the engine's one
control path, bad input, the views, the push stream and a clean shutdown.

The console runs in-process on uvicorn with a real QuoteEngine (memory journal, fake clock) and
books fed snapshots; requests go through httpx over a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from feeds.bybit import BybitBookFeed
from feeds.connection import FeedConnection
from otc.app import Engine
from otc.clock import FakeClock
from otc.config import Config, load_config
from otc.console import Activity, Console, ConsoleServer, ObservedJournal, listen
from otc.console.views import venue_health
from otc.errors import ConfigError
from otc.journal import MemoryJournal
from otc.model import BookSnapshot
from otc.quoting import QuoteEngine

CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Running:
    client: httpx.AsyncClient
    engine: Engine
    quotes: QuoteEngine
    journal: MemoryJournal
    clock: FakeClock
    url: str
    console: Console


def feed_books(
    engine: Engine, clock: FakeClock, venues: tuple[str, ...] = ("binance", "okx")
) -> None:
    """Two venues for BTC-USDT: binance 64000/64010 and okx 63995/64005 (scale 8/8)."""
    e8 = 10**8
    for venue, bid, ask in (("binance", 64000, 64010), ("okx", 63995, 64005)):
        if venue not in venues:
            continue
        engine.market.apply(
            BookSnapshot(
                venue=venue,
                symbol="BTC-USDT",
                bids=[(bid * e8, 2 * e8), ((bid - 10) * e8, 5 * e8)],
                asks=[(ask * e8, 1 * e8), ((ask + 10) * e8, 4 * e8)],
                sequence=7,
                ts_event_ns=clock.now_ns(),
                ts_recv_ns=clock.now_ns(),
            )
        )


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    config = load_config(CONFIG)
    clock = FakeClock()
    engine = Engine(config, clock=clock, console=False)
    feed_books(engine, clock)
    journal = MemoryJournal()
    # As the engine makes it (otc.app.Engine._console).
    activity = Activity(
        config.console.blotter_size, clients=[c.id for c in config.clients], clock=clock
    )
    quotes = QuoteEngine(config, engine.market, ObservedJournal(journal, activity.record), clock)
    engine.quotes = quotes
    console = Console(
        config,
        token=TOKEN,
        market=engine.market,
        quotes=quotes,
        activity=activity,
        clock=clock,
        control=engine.apply_control,
    )
    server = ConsoleServer(console, listen("127.0.0.1", 0))
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for _ in range(100):  # until uvicorn accepts
                try:
                    await client.get("/")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            yield Running(client, engine, quotes, journal, clock, server.url, console)
    finally:
        task.cancel()
        await asyncio.wait({task})


ROUTES = [
    ("GET", "/api/overview"),
    ("GET", "/api/depth/BTC-USDT"),
    ("GET", "/api/ladder/BTC-USDT"),
    ("GET", "/api/blotter"),
    ("GET", "/api/quotes/x-q1"),
    ("GET", "/api/stream"),
    # No route takes these: refused for the token all the same (they were 404 and 405, which
    # told a caller without the token which paths and methods the API has).
    ("GET", "/api/nope"),
    ("GET", "/api/control"),
    ("DELETE", "/api/overview"),
]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}],
    ids=["none", "wrong", "no-scheme"],
)
async def test_every_route_refuses_without_the_token(
    running: Running, headers: dict[str, str]
) -> None:
    for method, path in ROUTES:
        got = await running.client.request(method, path, headers=headers)
        assert got.status_code == 401, path
        assert got.headers["www-authenticate"].startswith("Bearer")
        assert "token" in got.json()["error"]
    halt = {"operator": "ops-1", "command": "halt"}
    got = await running.client.post("/api/control", json=halt, headers=headers)
    assert got.status_code == 401
    # ... and changed nothing: not halted, nothing journaled.
    assert not running.quotes.halted("BTC-USDT")
    await running.quotes.flush_controls()
    assert running.journal.events == []


async def test_the_query_token_is_taken_by_the_stream_only(running: Running) -> None:
    got = await running.client.get("/api/overview", params={"access_token": TOKEN})
    assert got.status_code == 401
    async with running.client.stream(
        "GET", "/api/stream", params={"access_token": TOKEN}
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")


async def test_head_of_the_stream_answers_and_ends(running: Running) -> None:
    # Starlette serves HEAD for every GET route: the stream's HEAD ran the endless push loop
    # (its body discarded), so `curl -I` never returned and the connection was stuck for good.
    host, port = running.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"HEAD /api/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    try:
        answer = await asyncio.wait_for(reader.read(), 10)  # a hang guard, not a timing
    finally:
        writer.close()
    head = answer.decode().lower()
    assert head.startswith("http/1.1 200")
    assert "content-type: text/event-stream" in head
    assert head.endswith("\r\n\r\n")  # headers only
    # Still refused without the token, and an unknown symbol is still named.
    got = await running.client.head("/api/stream")
    assert got.status_code == 401
    got = await running.client.head("/api/stream", params={"symbol": "NOPE"}, headers=AUTH)
    assert got.status_code == 404


async def rfq(running: Running, client: str, rfq_id: str, qty: str = "1") -> dict[str, object]:
    payload = json.dumps({"rfq_id": rfq_id, "symbol": "BTC-USDT", "side": "buy", "qty": qty})
    (out,) = await running.quotes.on_rfq(client, payload.encode())
    doc: dict[str, object] = json.loads(out.payload)
    return doc


async def test_halt_resume_through_the_api_is_journaled_and_rejects_the_next_rfq(
    running: Running,
) -> None:
    got = await running.client.post(
        "/api/control",
        json={"operator": "ops-7", "command": "halt", "symbol": "BTC-USDT"},
        headers=AUTH,
    )
    assert got.status_code == 200
    assert got.json() == {"ok": True, "command": "halt", "detail": "BTC-USDT halted"}
    assert running.quotes.halted("BTC-USDT")
    control = [e for e in running.journal.events if e.kind == "control"]
    assert control[-1].payload == {
        "action": "halt",
        "symbol": "BTC-USDT",
        "halted": True,
        "operator": "ops-7",
    }
    reject = await rfq(running, "client-a", "r-halted")
    assert reject["code"] == "MARKET_HALTED"
    overview = (await running.client.get("/api/overview", headers=AUTH)).json()
    assert overview["controls"]["halted_symbols"] == ["BTC-USDT"]
    rows = (await running.client.get("/api/blotter", headers=AUTH)).json()
    assert [r["kind"] for r in rows] == ["control", "rfq", "reject"]
    assert rows[0]["operator"] == "ops-7"
    assert rows[2]["code"] == "MARKET_HALTED"
    assert rows[2]["symbol"] == "BTC-USDT"  # from its RFQ: a reject names no symbol
    # Global halt and resume (which lifts every halt).
    await running.client.post(
        "/api/control", json={"operator": "ops-7", "command": "halt"}, headers=AUTH
    )
    assert running.quotes.halted()
    # Resuming one symbol under the global halt says that the symbol is still stopped.
    got = await running.client.post(
        "/api/control",
        json={"operator": "ops-7", "command": "resume", "symbol": "BTC-USDT"},
        headers=AUTH,
    )
    assert got.json()["detail"] == (
        "BTC-USDT resumed, but the global halt still stops it (resume with no symbol)"
    )
    assert running.quotes.halted("BTC-USDT")
    got = await running.client.post(
        "/api/control", json={"operator": "ops-7", "command": "resume"}, headers=AUTH
    )
    assert got.json()["ok"]
    assert not running.quotes.halted("BTC-USDT")
    assert (await rfq(running, "client-a", "r-resumed"))["type"] == "quote"


async def test_client_switch_and_tier_spread(running: Running) -> None:
    got = await running.client.post(
        "/api/control",
        json={"operator": "ops-1", "command": "client", "client": "client-b", "enabled": False},
        headers=AUTH,
    )
    assert got.json()["detail"] == "client-b disabled"
    assert (await rfq(running, "client-b", "r1"))["code"] == "CLIENT_DISABLED"
    before = await rfq(running, "client-a", "r2")
    got = await running.client.post(
        "/api/control",
        json={"operator": "ops-1", "command": "spread", "tier": "gold", "spread_bps": "50"},
        headers=AUTH,
    )
    assert got.json()["ok"]
    after = await rfq(running, "client-a", "r3")
    assert Decimal(str(after["ask"])) > Decimal(str(before["ask"]))
    overview = (await running.client.get("/api/overview", headers=AUTH)).json()
    assert overview["controls"]["tier_spreads_bps"]["gold"] == "50"
    clients = {c["client"]: c for c in overview["clients"]}
    assert clients["client-b"]["enabled"] is False
    assert clients["client-a"]["spread_bps"] == "50"


@pytest.mark.parametrize("text", ["0", "-0", "0.00"])
async def test_a_tier_spread_can_be_set_to_zero(running: Running, text: str) -> None:
    # The config and QuoteEngine.set_tier_spread take a spread >= 0; the command refused "0"
    # ("spread_bps must be positive"), so that a tier configured at 0 could not be set back.
    got = await running.client.post(
        "/api/control",
        json={"operator": "ops-1", "command": "spread", "tier": "gold", "spread_bps": text},
        headers=AUTH,
    )
    assert (got.status_code, got.json()["ok"]) == (200, True)
    assert got.json()["detail"] == "tier gold spread 0 bps"  # as the blotter shows it
    assert running.quotes.tier_spreads["gold"] == 0
    overview = (await running.client.get("/api/overview", headers=AUTH)).json()
    assert overview["controls"]["tier_spreads_bps"]["gold"] == "0"
    quote = await rfq(running, "client-a", "r-zero")
    assert quote["type"] == "quote"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "not valid JSON: JSON is malformed: invalid character"),
        # Each said "not a JSON object", whatever was wrong: a byte order mark (which some
        # tools write), text after the object, a truncated body, a lone UTF-16 surrogate.
        (
            b'\xef\xbb\xbf{"operator": "ops-1", "command": "halt"}',
            400,
            "not valid JSON: JSON is malformed: invalid character (byte 0)",
        ),
        (
            b'{"operator": "ops-1", "command": "halt"} x',
            400,
            "not valid JSON: JSON is malformed: trailing characters (byte 42)",
        ),
        (b'{"operator": "ops-1", ', 400, "not valid JSON: Input data was truncated"),
        (b"", 400, "not valid JSON: Input data was truncated"),
        (
            b'{"operator": "\\ud800", "command": "halt"}',
            400,
            "not valid JSON: JSON is malformed: unexpected end of escaped utf-16 surrogate pair",
        ),
        (b'{"command": "halt"}', 400, "operator"),
        (b'{"operator": "ops-1", "command": "explode"}', 400, "command"),
        (b'{"operator": "ops-1", "command": "halt", "sybmol": "X"}', 400, "sybmol"),
        (b'{"operator": "a b", "command": "halt"}', 400, "operator must be"),
        (b'{"operator": "ops-1", "command": "halt", "symbol": "DOGE-USDT"}', 400, "DOGE-USDT"),
        (b'{"operator": "ops-1", "command": "client", "client": "zz", "enabled": true}', 400, "zz"),
        (
            b'{"operator": "ops-1", "command": "spread", "tier": "gold", "spread_bps": "-1"}',
            400,
            "spread_bps must not be negative, got '-1'",
        ),
        (
            b'{"operator": "ops-1", "command": "spread", "tier": "gold", "spread_bps": "NaN"}',
            400,
            "",
        ),
        # The config's range: a spread of 100 % or more would price a bid at or below zero.
        (
            b'{"operator": "ops-1", "command": "spread", "tier": "gold", "spread_bps": "10000"}',
            400,
            "spread_bps must be a decimal >= 0 and below 10000, got 10000",
        ),
        (b'{"operator": "ops-1", "command": "client", "client": "client-a"}', 400, "enabled"),
        (
            b'{"operator": "ops-1", "command": "resume", "command": "halt"}',
            400,
            "member 'command' is given twice",
        ),
        (
            b'{"operator": "ops-1", "command": "spread", "tier": "gold", "spread_bps": "1e1"}',
            400,
            "plain notation",
        ),
        (b"{" + b" " * 5000 + b"}", 413, "4096"),
        # Members of another command: each was ignored, so that the first halted everything.
        (
            b'{"operator": "ops-1", "command": "halt", "client": "client-a", "enabled": false}',
            400,
            "halt takes 'symbol', not 'client'",
        ),
        (
            b'{"operator": "ops-1", "command": "spread", "tier": "gold", "spread_bps": "9",'
            b' "client": "client-a"}',
            400,
            "spread takes 'tier' and 'spread_bps', not 'client'",
        ),
        (
            b'{"operator": "ops-1", "command": "client", "client": "client-a", "enabled": false,'
            b' "symbol": "BTC-USDT"}',
            400,
            "client takes 'client' and 'enabled', not 'symbol'",
        ),
    ],
)
async def test_bad_commands_are_refused_and_change_nothing(
    running: Running, body: bytes, status: int, message: str
) -> None:
    spreads = running.quotes.tier_spreads
    got = await running.client.post("/api/control", content=body, headers=AUTH)
    assert got.status_code == status
    doc = got.json()
    assert message in (doc.get("error") or doc.get("detail"))
    assert not running.quotes.halted("BTC-USDT")
    assert running.quotes.tier_spreads == spreads
    assert running.quotes.client_enabled("client-a")


async def test_a_command_whose_sender_goes_away_mid_body_is_dropped_quietly(
    running: Running,
) -> None:
    # The body's reader raised ClientDisconnect out of the handler: uvicorn logged "Exception
    # in ASGI application" with a traceback at ERROR for a page closed while it sent a command.
    messages: list[dict[str, object]] = [
        {"type": "http.request", "body": b'{"operator": "ops-1", ', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/control",
        "raw_path": b"/api/control",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-length", b"60")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    await running.console.app(scope, receive, send)  # type: ignore[arg-type]
    assert messages == []
    await running.quotes.flush_controls()
    assert running.journal.events == []


async def test_a_command_declared_over_the_limit_is_refused_before_it_is_sent(
    running: Running,
) -> None:
    # A client that asks first (Expect: 100-continue, as curl does for bodies over 1 KiB) was
    # told to send its body whatever the size it declared, and refused 4 KiB into it.
    host, port = running.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /api/control HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    try:
        status = await asyncio.wait_for(reader.readline(), 10)  # a hang guard, not a timing
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert status.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in answer.lower()  # and closed: the body will not be read
    assert b"body over 4096 bytes" in answer


async def test_a_bus_command_with_members_of_another_is_refused(running: Running) -> None:
    out = await running.engine.control("ops-1", b'{"command": "resume", "tier": "gold"}')
    assert out.topic == "otc/v1/control/ops-1/result"
    assert json.loads(out.payload) == {
        "ok": False,
        "command": "resume",
        "detail": "resume takes 'symbol', not 'tier'",
    }
    out = await running.engine.control("ops-1", b'{"command": "halt", "client": null}')
    assert json.loads(out.payload)["ok"]  # null is omitted, as in every message
    assert running.quotes.halted("BTC-USDT")


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/api/depth/DOGE-USDT", 404, "DOGE-USDT"),
        ("/api/depth/BTC-USDT?levels=0", 400, "levels"),
        ("/api/depth/BTC-USDT?levels=x", 400, "levels"),
        ("/api/ladder/NOPE", 404, "NOPE"),
        ("/api/ladder/BTC-USD", 404, "no ladder bands"),
        ("/api/blotter?kind=trade", 400, "trade"),
        ("/api/blotter?limit=-1", 400, "limit"),
        # Digits to str.isdigit that int() refuses (superscript two), or takes (Arabic-Indic
        # one), and more digits than int() converts: a 400 naming the parameter, not a 500.
        ("/api/depth/BTC-USDT?levels=%C2%B2", 400, "levels"),
        ("/api/depth/BTC-USDT?levels=%D9%A1", 400, "levels"),
        ("/api/depth/BTC-USDT?levels=" + "9" * 5000, 400, "levels"),
        ("/api/blotter?after=%C2%B2", 400, "after"),
        ("/api/blotter?limit=%D9%A1", 400, "limit"),
        ("/api/blotter?after=" + "9" * 5000, 400, "after"),
        ("/api/blotter?limit=" + "9" * 19, 400, "at most 18 digits"),
        ("/api/quotes/unknown-q1", 404, "unknown-q1"),
        ("/api/stream?symbol=NOPE", 404, "NOPE"),
        # Paths no route takes got a text/plain "Not Found": a JSON error naming the path now.
        ("/api/nope", 404, "no API route GET /api/nope"),
        ("/api/depth/BTC%2FUSDT", 404, "no API route GET /api/depth/BTC/USDT"),
        ("/api/quotes/a/b", 404, "no API route GET /api/quotes/a/b"),
    ],
)
async def test_bad_view_requests_name_the_problem(
    running: Running, path: str, status: int, message: str
) -> None:
    got = await running.client.get(path, headers=AUTH)
    assert got.status_code == status
    assert message in got.json()["error"]


async def test_a_method_a_route_does_not_take_gets_a_json_error(running: Running) -> None:
    got = await running.client.get("/api/control", headers=AUTH)
    assert got.status_code == 405
    assert got.headers["allow"] == "POST"
    assert got.json() == {"error": "GET is not allowed on /api/control: POST only"}
    got = await running.client.delete("/api/overview", headers=AUTH)
    assert got.status_code == 405
    assert got.json()["error"].startswith("DELETE is not allowed on /api/overview: GET")
    # The page's own paths keep their plain answers.
    got = await running.client.get("/static/nope.js")
    assert (got.status_code, got.text) == (404, "Not Found")


async def test_the_page_s_files_are_revalidated_on_every_load(running: Running) -> None:
    # Served without Cache-Control (the page itself is no-store), the script was cached by
    # heuristic (a tenth of its file's age: days for an installed package), so that after an
    # upgrade a browser ran the previous engine's script against the new API.
    for path in ("/static/app.js", "/static/console.css", "/static/vendor/uPlot.iife.min.js"):
        got = await running.client.get(path)
        assert got.status_code == 200
        assert got.headers["cache-control"] == "no-cache"
        again = await running.client.get(path, headers={"If-None-Match": got.headers["etag"]})
        assert again.status_code == 304  # revalidation costs no transfer
        assert again.headers["cache-control"] == "no-cache"
    assert (await running.client.get("/")).headers["cache-control"] == "no-store"


async def test_depth_is_exact_and_consolidated_over_the_usable_venues(running: Running) -> None:
    depth = (await running.client.get("/api/depth/BTC-USDT", headers=AUTH)).json()
    assert depth["best_bid"] == "64000"
    assert depth["best_ask"] == "64005"
    assert depth["mid"] == "64002.5"
    series = {s["venue"]: s for s in depth["series"]}
    assert series["binance"]["asks"] == [["64010", "1"], ["64020", "5"]]
    assert series["okx"]["bids"] == [["63995", "2"], ["63985", "7"]]
    consolidated = series["consolidated"]
    assert consolidated["bids"] == [["64000", "2"], ["63995", "4"], ["63990", "9"], ["63985", "14"]]
    assert consolidated["asks"][:2] == [["64005", "1"], ["64010", "2"]]
    # A stale venue leaves the consolidated series (and says why), not its own.
    running.clock.advance(s=3)  # beyond max_book_age_ms; then binance alone updates
    feed_books(running.engine, running.clock, venues=("binance",))
    depth = (await running.client.get("/api/depth/BTC-USDT", headers=AUTH)).json()
    series = {s["venue"]: s for s in depth["series"]}
    assert series["okx"]["included"] is False
    assert series["consolidated"]["bids"] == [["64000", "2"], ["63990", "7"]]
    excluded = {x["venue"]: x["reason"] for x in depth["excluded"]}
    assert excluded["okx"] == "stale"
    assert "binance" not in excluded
    assert excluded["kraken"] == "out_of_sync"  # never had a snapshot
    overview = (await running.client.get("/api/overview", headers=AUTH)).json()
    venues = {v["venue"]: v for v in overview["venues"]}
    okx = next(b for b in venues["okx"]["books"] if b["symbol"] == "BTC-USDT")
    assert okx["reason"] == "stale"


async def test_quotes_fills_explanations_limits_inventory_and_markouts(running: Running) -> None:
    quote = await rfq(running, "client-a", "r-9", qty="6")  # 5 on okx, then binance
    assert quote["type"] == "quote"
    accept = json.dumps({"quote_id": quote["quote_id"]}).encode()
    (fill_out,) = await running.quotes.on_accept("client-a", accept)
    fill = json.loads(fill_out.payload)
    assert fill["type"] == "fill"
    rows = (
        await running.client.get(
            "/api/blotter", params={"client": "client-a", "symbol": "BTC-USDT"}, headers=AUTH
        )
    ).json()
    assert [r["kind"] for r in rows] == ["rfq", "quote", "accept", "fill"]
    assert rows[1]["ask"] == quote["ask"]
    assert rows[2]["symbol"] == "BTC-USDT"  # an accept names only the quote
    assert rows[3]["price"] == fill["price"]
    other = await running.client.get("/api/blotter", params={"client": "client-b"}, headers=AUTH)
    assert other.json() == []
    only = await running.client.get("/api/blotter", params={"kind": "fill"}, headers=AUTH)
    assert [r["trade_id"] for r in only.json()] == [fill["trade_id"]]
    # An empty filter is no filter, kind= as client= (kind= was a 400 'unknown kind'), and
    # limit=0 is every row kept.
    every = await running.client.get(
        "/api/blotter", params={"kind": "", "client": "", "limit": "0"}, headers=AUTH
    )
    assert [r["kind"] for r in every.json()] == ["rfq", "quote", "accept", "fill"]
    explained = (await running.client.get(f"/api/quotes/{quote['quote_id']}", headers=AUTH)).json()
    assert explained["tier"] == "gold"
    ask = explained["explanation"]["ask"]
    assert ask["price"] == quote["ask"]
    assert set(ask["route"]) == {"binance", "okx"}
    assert ask["spread_bps"] == "2"
    assert {"hedge_vwap", "hedge_all_in", "risk_bps", "skew_bps", "books"} <= set(ask)
    assert ask["books"]["okx"]["sequence"] == 7
    overview = (await running.client.get("/api/overview", headers=AUTH)).json()
    clients = {c["client"]: c for c in overview["clients"]}
    notional = Decimal(fill["price"]) * 6
    assert Decimal(clients["client-a"]["daily_notional"]) == notional
    inventory = {a["asset"]: a for a in overview["inventory"]}
    assert inventory["BTC"]["position"] == "-6"
    assert inventory["BTC"]["used_pct"] == "12"
    assert Decimal(inventory["USDT"]["position"]) == notional
    pnl = {p["symbol"]: p for p in overview["pnl"]}["BTC-USDT"]
    assert pnl["position"] == "-6"
    # cash + position x mid, mid 64002.5
    assert Decimal(pnl["pnl"]) == (notional - 6 * Decimal("64002.5")).quantize(Decimal("0.01"))
    (markout,) = overview["markouts"]
    assert markout["trade_id"] == fill["trade_id"]
    assert markout["markouts_bps"] == {"1s": None, "5s": None, "30s": None, "60s": None}
    # One second later the sampler records the mid: a client buy above mid is a desk gain.
    running.clock.advance(s=1.5)
    feed_books(running.engine, running.clock)
    await asyncio.sleep(0.3)
    overview = (await running.client.get("/api/overview", headers=AUTH)).json()
    (markout,) = overview["markouts"]
    expected = (Decimal(fill["price"]) - Decimal("64002.5")) * 10_000 / Decimal("64002.5")
    assert markout["markouts_bps"]["1s"] == str(expected.quantize(Decimal("0.01")))
    assert markout["markouts_bps"]["5s"] is None


async def read_events(lines: AsyncIterator[str], count: int) -> list[tuple[str, object]]:
    events: list[tuple[str, object]] = []
    name = ""
    async for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
            if len(events) == count:
                break
    return events


async def test_the_stream_pushes_state_and_activity_as_it_happens(running: Running) -> None:
    await rfq(running, "client-a", "before")
    async with running.client.stream(
        "GET", "/api/stream", params={"symbol": "BTC-USDT"}, headers=AUTH
    ) as stream:
        lines = stream.aiter_lines()
        (hello, backlog, state) = await asyncio.wait_for(read_events(lines, 3), 10)
        assert hello[0] == "hello"
        assert hello[1]["symbol"] == "BTC-USDT"  # type: ignore[index]
        assert backlog[0] == "activity"
        assert [r["kind"] for r in backlog[1]] == ["rfq", "quote"]  # type: ignore[union-attr,index]
        assert state[0] == "state"
        assert state[1]["depth"]["best_bid"] == "64000"  # type: ignore[index]
        assert state[1]["ladder"]["symbol"] == "BTC-USDT"  # type: ignore[index]
        await rfq(running, "client-b", "during")
        while True:  # states may come first; the new RFQ arrives without a page reload
            (event,) = await asyncio.wait_for(read_events(lines, 1), 10)
            if event[0] == "activity":
                break
        assert [(r["kind"], r["client"]) for r in event[1]] == [  # type: ignore[union-attr,index]
            ("rfq", "client-b"),
            ("quote", "client-b"),
        ]


async def test_streams_of_one_symbol_share_each_push_s_state(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every open stream computed the overview, depth and ladder on its own, on the engine's
    loop: N console tabs cost N times the CPU. Streams now push on common ticks, and the
    state of a tick is computed once."""
    console = running.console
    monkeypatch.setattr(console, "push_interval_s", 1e9)  # one tick for the whole test
    computed = 0
    overview = console.overview

    def counted() -> Any:
        nonlocal computed
        computed += 1
        return overview()

    monkeypatch.setattr(console, "overview", counted)

    async def first_state() -> dict[str, Any]:
        async with running.client.stream(
            "GET", "/api/stream", params={"symbol": "BTC-USDT"}, headers=AUTH
        ) as stream:
            lines = stream.aiter_lines()
            while True:
                (event,) = await asyncio.wait_for(read_events(lines, 1), 10)
                if event[0] == "state":
                    return event[1]  # type: ignore[return-value]

    states = await asyncio.gather(*(first_state() for _ in range(5)))
    assert computed == 1
    assert all(state == states[0] for state in states)
    assert states[0]["depth"]["best_bid"] == "64000"


async def test_shutdown_ends_open_streams() -> None:
    config = load_config(CONFIG)
    clock = FakeClock()
    engine = Engine(config, clock=clock, console=False)
    activity = Activity()
    quotes = QuoteEngine(config, engine.market, MemoryJournal(), clock)
    console = Console(
        config,
        token=TOKEN,
        market=engine.market,
        quotes=quotes,
        activity=activity,
        clock=clock,
        control=engine.apply_control,
    )
    server = ConsoleServer(console, listen("127.0.0.1", 0))
    task = asyncio.create_task(server.serve())
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for _ in range(100):
            try:
                await client.get("/")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        async with client.stream("GET", "/api/stream", headers=AUTH) as stream:
            lines = stream.aiter_lines()
            await read_events(lines, 1)
            task.cancel()
            await asyncio.wait_for(asyncio.wait({task}), 20)  # a hang guard, not a timing
            assert task.cancelled()
            rest = [line async for line in lines]  # the stream ended: the server closed it
            assert all(not line.startswith("event: hello") for line in rest)
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=server.url) as client:
            await client.get("/")


def test_a_busy_port_fails_at_start_up_naming_it() -> None:
    first = listen("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(Exception, match=f"console: cannot listen on 127.0.0.1:{port}"):
            listen("127.0.0.1", port)
    finally:
        first.close()


def test_token_from_the_environment_then_config_else_generated() -> None:
    from otc.console import resolve_token

    config = load_config(CONFIG)
    assert resolve_token(config, {"OTC_CONSOLE_TOKEN": TOKEN}) == (TOKEN, "environment")
    with pytest.raises(ConfigError, match=r"OTC_CONSOLE_TOKEN: .*16 to 256"):
        resolve_token(config, {"OTC_CONSOLE_TOKEN": "short"})
    configured = msgspec.structs.replace(
        config, console=msgspec.structs.replace(config.console, token="a-configured-token-123")
    )
    assert resolve_token(configured, {}) == ("a-configured-token-123", "config")
    one, source = resolve_token(config, {})
    two, _ = resolve_token(config, {})
    assert source == "generated"
    assert one != two
    assert len(one) >= 16


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        ('[console]\ntoken = "short"\n', "$.console.token: must be 16 to 256"),
        ("[console]\nport = 70000\n", "$.console.port"),
        ("[console]\nprot = 1\n", "$.console.prot: unknown field"),
        ("[console]\npush_interval_ms = 1\n", "$.console.push_interval_ms"),
    ],
)
def test_console_config_errors_name_the_file_and_key(tmp_path: Path, toml: str, where: str) -> None:
    path = tmp_path / "otc.toml"
    without_console = CONFIG.read_text().split("\n[console]\n")[0]
    path.write_text(without_console + "\n" + toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert where in str(caught.value)


def test_config_default_console() -> None:
    config: Config = load_config(CONFIG)
    assert config.console.host == "127.0.0.1"
    assert config.console.enabled


def test_live_feed_health_comes_from_the_connections_report() -> None:
    """With live feeds, a venue's state and counters are its FeedConnection's own report."""
    from feeds.connection import FeedHealth
    from otc.console import views

    config = load_config(CONFIG)
    clock = FakeClock()
    engine = Engine(config, clock=clock, console=False)
    feed_books(engine, clock)
    report = FeedHealth(
        venue="binance",
        state="stale",
        age_ms=3_100,
        symbols_in_sync=1,
        symbols=2,
        gaps=3,
        checksum_failures=1,
        resyncs=4,
        reconnects=2,
        malformed=5,
        last_error="no data for 3.0 s",
    )
    health = {h.venue: h for h in views.venue_health(engine.market.books, [report], clock.now_ns())}
    binance = health["binance"]
    assert binance.source == "feed"
    assert (binance.state, binance.age_ms, binance.last_error) == (
        "stale",
        3_100,
        "no data for 3.0 s",
    )
    assert (binance.gaps, binance.checksum_failures, binance.resyncs) == (3, 1, 4)
    assert (binance.reconnects, binance.malformed) == (2, 5)
    assert health["okx"].source == "sim"  # no connection: judged from its books
    assert health["okx"].state == "out_of_sync"  # its ETH-USDT book never had a snapshot
    assert health["okx"].gaps == 0


async def test_pnl_is_rounded_to_the_instrument_s_tick_not_always_to_cents(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """P&L is in the quote currency: cents suit USDT, not a BTC-quoted instrument (0.01 BTC
    is hundreds of dollars). It is rounded to the decimals of the instrument's tick."""
    quote = await rfq(running, "client-a", "r-pnl", qty="0.12345")
    accept = json.dumps({"quote_id": quote["quote_id"]}).encode()
    (out,) = await running.quotes.on_accept("client-a", accept)
    price = Decimal(json.loads(out.payload)["price"])
    exact = Decimal("0.12345") * (price - Decimal("64002.5"))  # cash - 0.12345 x the mid
    assert exact != exact.quantize(Decimal("0.01"))  # finer than cents, or this proves nothing

    def pnl_of(tick: str) -> str:
        config = running.console.config
        instruments = [
            msgspec.structs.replace(i, tick_size=Decimal(tick)) if i.symbol == "BTC-USDT" else i
            for i in config.instruments
        ]
        monkeypatch.setattr(
            running.console, "config", msgspec.structs.replace(config, instruments=instruments)
        )
        rows = {p.symbol: p for p in running.console.overview().pnl}
        pnl = rows["BTC-USDT"].pnl
        assert pnl is not None
        return pnl

    assert Decimal(pnl_of("0.01")) == exact.quantize(Decimal("0.01"))
    assert Decimal(pnl_of("0.00001")) == exact.quantize(Decimal("0.00001"))
    assert Decimal(pnl_of("0.5")) == exact.quantize(Decimal("0.01"))  # never coarser than cents


def _bybit_feed(engine: Engine) -> tuple[BybitBookFeed, dict[str, str]]:
    """A Bybit adapter bound to ``engine``'s market: (it, venue symbol -> ours)."""
    names = engine.market.venue_symbols("bybit")
    scales = {ours: engine.market.books[ours].scale for ours in names.values()}
    feed = BybitBookFeed(symbols=names, scales=scales)
    engine.market.bind(feed)
    return feed, names


def _bybit_states(engine: Engine, conn: FeedConnection) -> tuple[str, str, str]:
    """Bybit's state as its connection, ``otc/v1/status`` and the console say it."""
    health = conn.health()
    now = engine.clock.now_ns()
    status = msgspec.json.decode(engine._status("up").payload)
    console = {h.venue: h for h in venue_health(engine.market.books, [health], now)}
    return health.state, status["venues"]["bybit"], console["bybit"].state


async def test_a_live_venue_whose_books_froze_is_reported_stale() -> None:
    """A venue repeating one update keeps its connection live (messages keep coming) while its
    books stop changing: the consolidated view drops them as stale once older than
    ``max_book_age_ms``, but the console and ``otc/v1/status`` said ``live``. A real
    FeedConnection on a Bybit-shaped venue over loopback; the venue resumes, and so does
    ``live``."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    moving = asyncio.Event()

    def message(kind: str, symbol: str, u: int) -> str:
        data = {"s": symbol, "b": [["100", "1"]], "a": [["101", str(u)]], "u": u, "seq": u}
        topic = f"orderbook.200.{symbol}"
        return json.dumps({"topic": topic, "type": kind, "ts": 1, "data": data, "cts": 1})

    async def venue(ws: ServerConnection) -> None:
        await ws.recv()
        for symbol in ("BTCUSDT", "ETHUSDT"):
            await ws.send(message("snapshot", symbol, 1))
        u = 1
        with contextlib.suppress(ConnectionClosed):  # the client goes at the end
            while True:
                if moving.is_set():
                    u += 1
                    for symbol in ("BTCUSDT", "ETHUSDT"):
                        await ws.send(message("delta", symbol, u))
                else:
                    await ws.send(message("delta", "BTCUSDT", 1))  # the same update, again
                await asyncio.sleep(0.005)

    config = load_config(CONFIG)
    estimator = msgspec.structs.replace(config.estimator, max_book_age_ms=200)
    engine = Engine(msgspec.structs.replace(config, estimator=estimator), console=False)
    feed, names = _bybit_feed(engine)

    def states() -> tuple[str, str, str]:
        return _bybit_states(engine, conn)

    def bybit_stale() -> bool:
        now = engine.clock.now_ns()
        return all(
            (why := engine.market.books[ours].exclusion("bybit", now)) is not None
            and why.reason == "stale"
            for ours in names.values()
        )

    async with serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(feed, sorted(names), url=f"ws://127.0.0.1:{port}")
        engine.connections.append(conn)
        async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
            task = tg.create_task(conn.run(), name="feed-bybit")
            while conn.state != "live" or not bybit_stale():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            frozen = states()
            ignored = feed.stats.ignored
            moving.set()  # the venue moves again: so does the status (or the timeout)
            while states() != ("live", "live", "live"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            task.cancel()
    assert ignored > 0  # the repeats reached the adapter, which had no use for them
    assert frozen == ("live", "stale", "stale")  # the connection itself is live


async def test_a_live_venue_whose_book_crossed_is_reported_crossed() -> None:
    """A venue's own book with its best bid at or above its best ask is left out of pricing;
    its connection still says ``live`` (messages keep coming, in sequence), so the status and
    the console said ``live`` too. They say ``crossed`` until the book uncrosses. A real
    FeedConnection on a Bybit-shaped venue over loopback."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    uncross = asyncio.Event()

    def message(kind: str, symbol: str, u: int, bid: str) -> str:
        data = {"s": symbol, "b": [[bid, "1"]], "a": [["101", "1"]], "u": u, "seq": u}
        topic = f"orderbook.200.{symbol}"
        return json.dumps({"topic": topic, "type": kind, "ts": 1, "data": data, "cts": 1})

    async def venue(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(message("snapshot", "BTCUSDT", 1, "102"))  # bid 102 >= ask 101
        await ws.send(message("snapshot", "ETHUSDT", 1, "100"))
        u = 1
        with contextlib.suppress(ConnectionClosed):  # the client goes at the end
            while True:
                u += 1
                if uncross.is_set():  # the crossing bid goes, a sane one comes
                    deltas = [["102", "0"], ["100", "1"]]
                    data = {"s": "BTCUSDT", "b": deltas, "a": [], "u": u, "seq": u}
                    topic = "orderbook.200.BTCUSDT"
                    body = {"topic": topic, "type": "delta", "ts": 1, "data": data, "cts": 1}
                    await ws.send(json.dumps(body))
                    uncross.clear()
                else:  # in sequence, so the connection stays live; nothing else changes
                    data = {"s": "BTCUSDT", "b": [], "a": [["101", "1"]], "u": u, "seq": u}
                    topic = "orderbook.200.BTCUSDT"
                    body = {"topic": topic, "type": "delta", "ts": 1, "data": data, "cts": 1}
                    await ws.send(json.dumps(body))
                await ws.send(message("delta", "ETHUSDT", u, "100"))
                await asyncio.sleep(0.005)

    config = load_config(CONFIG)
    engine = Engine(config, console=False)
    feed, names = _bybit_feed(engine)

    def states() -> tuple[str, str, str]:
        return _bybit_states(engine, conn)

    async with serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = FeedConnection(feed, sorted(names), url=f"ws://127.0.0.1:{port}")
        engine.connections.append(conn)
        async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
            task = tg.create_task(conn.run(), name="feed-bybit")
            btc = engine.market.books["BTC-USDT"].venues["bybit"]
            while conn.state != "live" or not btc.book.crossed:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            crossed = states()
            uncross.set()
            while states() != ("live", "live", "live"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            task.cancel()
    assert crossed == ("live", "crossed", "crossed")


async def test_a_flood_from_unknown_clients_cannot_push_the_desk_s_events_out(
    running: Running,
) -> None:
    """On a broker without the shipped ACL anyone may publish as any client id: the engine
    rejects an unknown one (``UNKNOWN_CLIENT``) and journals its RFQ and the reject. The
    console kept them in its one ring of recent events, so that a few thousand such RFQs
    pushed every quote, fill and control of the desk out of the blotter, the stream's
    backlog and the page. Strangers' events are kept apart now, a few of them, and those
    dropped are counted (the journal has them all)."""
    await running.client.post(
        "/api/control",
        json={"operator": "ops-1", "command": "halt", "symbol": "ETH-USDT"},
        headers=AUTH,
    )
    quote = await rfq(running, "client-a", "r-desk")
    accept = json.dumps({"quote_id": quote["quote_id"]}).encode()
    (fill_out,) = await running.quotes.on_accept("client-a", accept)
    fill = json.loads(fill_out.payload)
    assert fill["type"] == "fill"
    desk = ["control", "rfq", "quote", "accept", "fill"]
    flood = 1_500  # an RFQ and its reject each: more events than the blotter keeps
    for n in range(flood):
        reject = await rfq(running, f"intruder-{n % 7}", f"x{n}")
        assert reject["code"] == "UNKNOWN_CLIENT"
    await running.quotes.on_accept("intruder-0", b'{"quote_id": "nope"}')
    every = (await running.client.get("/api/blotter?limit=0", headers=AUTH)).json()
    assert [r["kind"] for r in every if r["client"] in ("", "client-a")] == desk
    strangers = [r for r in every if r["client"].startswith("intruder-")]
    assert all(r["unknown_client"] for r in strangers)
    assert 0 < len(strangers) <= 200
    assert strangers[-1]["kind"] == "accept_reject"  # the newest are the ones kept
    assert [r["seq"] for r in every] == sorted(r["seq"] for r in every)
    overview = (await running.client.get("/api/overview", headers=AUTH)).json()
    unknown = overview["unknown_clients"]
    assert unknown["kept"] == len(strangers)
    assert unknown["kept"] + unknown["dropped"] == 2 * flood + 2
    # The push stream's backlog has the desk's events as well.
    async with running.client.stream("GET", "/api/stream", headers=AUTH) as stream:
        lines = stream.aiter_lines()
        (_, (name, backlog)) = await asyncio.wait_for(read_events(lines, 2), 10)
    assert name == "activity"
    assert isinstance(backlog, list)
    assert [r["kind"] for r in backlog if not r["unknown_client"]] == desk
    assert fill["trade_id"] in [r["trade_id"] for r in backlog]
    # Memory stays bounded: the ring of strangers' events is small, the desk's as configured.
    activity = running.console.activity
    assert len(activity.events()) <= 200 + running.console.config.console.blotter_size


async def test_markout_horizons_are_time_passed_not_wall_clock_steps(running: Running) -> None:
    """A fill's 1 s markout is the mid 1 s of time after it. The horizons were read on the
    wall clock: stepped forward (NTP, a resumed virtual machine), every horizon of every
    recent fill came at once and took the mid of that instant; stepped back, none came for as
    long as the step. They are measured on the monotonic clock now; ``ts_ms`` stays wall."""
    quote = await rfq(running, "client-a", "r-mo", qty="1")
    accept = json.dumps({"quote_id": quote["quote_id"]}).encode()
    (fill_out,) = await running.quotes.on_accept("client-a", accept)
    fill = json.loads(fill_out.payload)
    filled_ms = running.clock.now_ns() // 1_000_000

    async def markout() -> dict[str, Any]:
        await asyncio.sleep(0.3)  # the console samples every 100 ms
        overview = (await running.client.get("/api/overview", headers=AUTH)).json()
        (item,) = overview["markouts"]
        assert item["trade_id"] == fill["trade_id"]
        assert item["ts_ms"] == filled_ms  # the fill's wall time, for display
        got: dict[str, Any] = item["markouts_bps"]
        return got

    running.clock.step(s=120)  # the wall clock jumps 2 minutes: no time passed
    feed_books(running.engine, running.clock)
    assert await markout() == {"1s": None, "5s": None, "30s": None, "60s": None}
    running.clock.advance(s=1.5)
    feed_books(running.engine, running.clock)
    got = await markout()
    expected = (Decimal(fill["price"]) - Decimal("64002.5")) * 10_000 / Decimal("64002.5")
    assert got["1s"] == str(expected.quantize(Decimal("0.01")))
    assert got["5s"] is None
    running.clock.step(s=-3_600)  # an hour back: time still passes
    running.clock.advance(s=4)
    feed_books(running.engine, running.clock)
    got = await markout()
    assert got["5s"] == got["1s"]
    assert got["30s"] is None
