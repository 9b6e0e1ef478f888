"""The broker goes away and comes back: the engine reconnects and serves again.

Also: another client connecting with the engine's client id takes its session over; the engine
reconnects, says what to check, and serves on.

A real broker (mosquitto when installed, else amqtt) is stopped under a running engine and a
new one started on the same port. Meanwhile the engine keeps its books, journal and state; once
the broker is back it subscribes again, republishes status ``up`` and answers RFQs; a fill made
before the outage is still the answer to a repeated accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from broker import (
    RECEIVE_TIMEOUT_S,
    Publication,
    ask_engine,
    broker_kinds_and_versions,
    receive,
    retained_status,
    running_broker,
)

from otc.app import Engine
from otc.broker import BrokerKind
from otc.bus import Bus, BusError, MqttVersion
from otc.config import load_config

CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"
TOKEN = "test-token-0123456789"  # noqa: S105 - a test token
#: A guard against hangs, not a timing: the engine retries every 5 s at the most.
RECONNECT_TIMEOUT_S = 30.0


async def broker_link(engine: Engine) -> dict[str, Any]:
    """The console's view of the engine's broker connection, over HTTP."""
    assert engine.console_url is not None
    async with httpx.AsyncClient(base_url=engine.console_url) as http:
        got = await http.get("/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
    assert got.status_code == 200, got.text
    link: dict[str, Any] = got.json()["broker"]
    return link


async def start_engine(
    host: str,
    port: int,
    journal: Path,
    mqtt_version: MqttVersion = "3.1.1",
    *,
    quote_ttl_ms: int | None = None,
    username: str | None = None,
    password: str | None = None,
) -> tuple[Engine, asyncio.Task[None]]:
    """The demo configuration's engine on the broker at ``host:port``, up (ready to quote),
    speaking ``mqtt_version`` to it (as ``username`` when given); its quotes firm for
    ``quote_ttl_ms`` when given."""
    config = load_config(CONFIG)
    quoting = config.quoting
    if quote_ttl_ms is not None:
        quoting = msgspec.structs.replace(quoting, quote_ttl_ms=quote_ttl_ms)
    config = msgspec.structs.replace(
        config,
        journal=msgspec.structs.replace(config.journal, path=str(journal)),
        broker=msgspec.structs.replace(config.broker, mqtt_version=mqtt_version),
        quoting=quoting,
    )
    ready = asyncio.Event()
    engine = Engine(
        config,
        feeds="sim",
        host=host,
        port=port,
        username=username,
        password=password,
        sim_interval_s=0.02,
        on_ready=ready.set,
        console_port=0,
        console_token=TOKEN,
    )
    task = asyncio.create_task(engine.run(), name="engine")
    async with asyncio.timeout(RECEIVE_TIMEOUT_S):
        await ready.wait()
    return engine, task


def rfq(rfq_id: str, side: str) -> dict[str, str]:
    return {"rfq_id": rfq_id, "symbol": "BTC-USDT", "side": side, "qty": "1"}


@pytest.mark.parametrize("kind_and_version", broker_kinds_and_versions())
async def test_the_engine_reconnects_when_the_broker_comes_back(
    tmp_path: Path, kind_and_version: tuple[BrokerKind, MqttVersion]
) -> None:
    kind, mqtt_version = kind_and_version
    with running_broker(tmp_path / "first", kind=kind) as first:
        port = first.port
        engine, task = await start_engine(first.host, port, tmp_path / "j.sqlite", mqtt_version)
        assert await broker_link(engine) == {
            "connected": True,
            "address": f"{first.host}:{port}",
            "reconnects": 0,
        }
        quote = await ask_engine(
            "127.0.0.1",
            port,
            "client-a",
            "rfq",
            rfq("a1", "buy"),
        )
        fill = await ask_engine(
            "127.0.0.1", port, "client-a", "accept", {"quote_id": quote["quote_id"]}
        )
        assert fill["type"] == "fill"
    # The broker is gone: the engine runs on, trying to reconnect.
    await asyncio.sleep(0.3)
    assert not task.done()
    assert engine.reconnects == 0
    assert (await broker_link(engine))["connected"] is False  # the console says so
    with running_broker(tmp_path / "second", kind=kind, port=port):
        async with asyncio.timeout(RECONNECT_TIMEOUT_S):
            while engine.reconnects == 0:  # noqa: ASYNC110 - the engine's counter, polled
                await asyncio.sleep(0.05)
        status = await retained_status("127.0.0.1", port)
        assert status["state"] == "up"
        assert await broker_link(engine) == {
            "connected": True,
            "address": f"{first.host}:{port}",
            "reconnects": 1,
        }
        again = await ask_engine(
            "127.0.0.1",
            port,
            "client-a",
            "rfq",
            rfq("a2", "sell"),
        )
        assert again["type"] == "quote", again
        repeated = await ask_engine(
            "127.0.0.1", port, "client-a", "accept", {"quote_id": quote["quote_id"]}
        )
        assert repeated == fill
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert engine.reconnects == 1


async def test_a_client_with_the_engines_id_takes_over_and_the_engine_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="otc.app")
    with running_broker(tmp_path / "broker") as broker:
        if broker.kind != "mosquitto":
            pytest.skip("amqtt 0.12.1 does not close a connection whose session is taken over")
        engine, task = await start_engine(broker.host, broker.port, tmp_path / "j.sqlite")
        client_id = engine.config.broker.client_id
        impostor = Bus(host=broker.host, port=broker.port, client_id=client_id)
        with contextlib.suppress(BusError):  # the engine takes the session back
            async with impostor:
                async with asyncio.timeout(RECONNECT_TIMEOUT_S):
                    while engine.reconnects == 0:  # noqa: ASYNC110 - polled counter
                        await asyncio.sleep(0.05)
        assert "is another client connected with client id 'otc-engine'" in caplog.text
        quote = await ask_engine(
            broker.host,
            broker.port,
            "client-a",
            "rfq",
            rfq("t1", "buy"),
        )
        assert quote["type"] == "quote", quote
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_retained_rfq_is_not_served_again_when_the_engine_subscribes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client may publish its RFQ with the retain flag (the ACL cannot forbid it): the broker
    then hands it to the engine again on every subscription, that is after every reconnection
    or restart. The engine serves a request when it is sent, never a retained replay of it."""
    caplog.set_level(logging.WARNING, logger="otc.bus")
    journal = tmp_path / "j.sqlite"
    with running_broker(tmp_path / "broker") as broker:
        async with Bus(host=broker.host, port=broker.port) as client:
            await client.publish(
                Publication(
                    "otc/v1/client-a/rfq",
                    msgspec.json.encode(rfq("r-retained", "buy")),
                    retain=True,
                )
            )
            _, task = await start_engine(broker.host, broker.port, journal)
            try:
                answer = await ask_engine(
                    broker.host, broker.port, "client-a", "rfq", rfq("r-live", "buy")
                )
                assert answer["rfq_id"] == "r-live"
                # Published with the flag while the engine is subscribed: a new request.
                await client.subscribe("otc/v1/client-a/quotes")
                body = msgspec.json.encode(rfq("r-sent-retained", "buy"))
                await client.publish(Publication("otc/v1/client-a/rfq", body, retain=True))
                messages = client.messages()
                while True:  # (amqtt may hand the client earlier answers too)
                    _, payload = await receive(messages)
                    if msgspec.json.decode(payload)["rfq_id"] == "r-sent-retained":
                        break
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    with contextlib.closing(sqlite3.connect(journal)) as db:
        served = {
            rfq_id for (rfq_id,) in db.execute("SELECT rfq_id FROM events WHERE kind = 'rfq'")
        }
    assert served == {"r-live", "r-sent-retained"}
    assert "skipped a retained message on otc/v1/client-a/rfq" in caplog.text


async def test_the_ladders_are_published_again_to_a_broker_that_lost_them(tmp_path: Path) -> None:
    """The ladders are retained, and a broker restarted without persistence (as ours run) has
    none: the engine publishes each again on its new connection, also when no book moved since
    the last one (a quiet market, stale venues: the ladder of nulls), and not only once one
    does."""
    from otc.app import sim_markets
    from otc.clock import FakeClock
    from otc.journal import MemoryJournal
    from otc.quoting import QuoteEngine

    config = load_config(CONFIG)
    clock = FakeClock()  # time stands still: the books neither move nor age
    engine = Engine(config, clock=clock)
    engine.quotes = QuoteEngine(config, engine.market, MemoryJournal(), clock)
    for sim in sim_markets(config, engine.market):
        for event in sim.snapshot_events(clock.now_ns()):
            engine.market.apply(event)
    laddered = {f"otc/v1/ladder/{i.symbol}" for i in config.instruments if i.ladder_bands}
    assert len(laddered) == 2

    async def retained_ladders(host: str, port: int) -> set[str]:
        async with Bus(host=host, port=port) as bus:
            await bus.subscribe("otc/v1/ladder/+")
            topics: set[str] = set()
            messages = bus.messages()
            while topics != laddered:
                topic, _ = await receive(messages)
                topics.add(topic)
        return topics

    with running_broker(tmp_path / "first") as first:
        port = first.port
        async with Bus(host=first.host, port=port) as bus:
            ladders = asyncio.create_task(engine._ladders(bus))
            assert await retained_ladders(first.host, port) == laddered
            ladders.cancel()
            await asyncio.gather(ladders, return_exceptions=True)
    with running_broker(tmp_path / "second", port=port) as second:
        async with Bus(host=second.host, port=port) as bus:
            ladders = asyncio.create_task(engine._ladders(bus))
            try:
                assert await retained_ladders(second.host, port) == laddered
            finally:
                ladders.cancel()
                await asyncio.gather(ladders, return_exceptions=True)
