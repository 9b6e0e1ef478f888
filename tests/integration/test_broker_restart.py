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
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from broker import RECEIVE_TIMEOUT_S, Publication, receive, running_broker

from otc.app import Engine
from otc.bus import Bus, BusError
from otc.config import load_config

CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"
TOKEN = "test-token-0123456789"  # noqa: S105 - a test token
#: A guard against hangs, not a timing: the engine retries every 5 s at the most.
RECONNECT_TIMEOUT_S = 30.0


async def ask(port: int, client: str, topic: str, body: dict[str, str]) -> dict[str, Any]:
    """Publish ``body`` on ``otc/v1/{client}/{topic}`` and return the engine's reply."""
    replies = f"otc/v1/{client}/{'quotes' if topic == 'rfq' else 'fills'}"
    async with Bus(host="127.0.0.1", port=port) as bus:
        await bus.subscribe(replies)
        await bus.publish(Publication(f"otc/v1/{client}/{topic}", msgspec.json.encode(body)))
        messages = bus.messages()
        while True:  # amqtt may hand a new client an earlier client's subscriptions too
            got, payload = await receive(messages)
            if got == replies:
                break
    answer: dict[str, Any] = msgspec.json.decode(payload)
    return answer


async def broker_link(engine: Engine) -> dict[str, Any]:
    """The console's view of the engine's broker connection, over HTTP."""
    assert engine.console_url is not None
    async with httpx.AsyncClient(base_url=engine.console_url) as http:
        got = await http.get("/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
    assert got.status_code == 200, got.text
    link: dict[str, Any] = got.json()["broker"]
    return link


async def retained_status(port: int) -> dict[str, Any]:
    async with Bus(host="127.0.0.1", port=port) as bus:
        await bus.subscribe("otc/v1/status")
        _, payload = await receive(bus.messages())
    status: dict[str, Any] = msgspec.json.decode(payload)
    return status


async def test_the_engine_reconnects_when_the_broker_comes_back(tmp_path: Path) -> None:
    config = load_config(CONFIG)
    config = msgspec.structs.replace(
        config, journal=msgspec.structs.replace(config.journal, path=str(tmp_path / "j.sqlite"))
    )
    ready = asyncio.Event()
    with running_broker(tmp_path / "first") as first:
        port = first.port
        engine = Engine(
            config,
            feeds="sim",
            host=first.host,
            port=port,
            sim_interval_s=0.02,
            on_ready=ready.set,
            console_port=0,
            console_token=TOKEN,
        )
        task = asyncio.create_task(engine.run(), name="engine")
        async with asyncio.timeout(RECEIVE_TIMEOUT_S):
            await ready.wait()
        assert await broker_link(engine) == {
            "connected": True,
            "address": f"{first.host}:{port}",
            "reconnects": 0,
        }
        quote = await ask(
            port,
            "client-a",
            "rfq",
            {"rfq_id": "a1", "symbol": "BTC-USDT", "side": "buy", "qty": "1"},
        )
        fill = await ask(port, "client-a", "accept", {"quote_id": quote["quote_id"]})
        assert fill["type"] == "fill"
    # The broker is gone: the engine runs on, trying to reconnect.
    await asyncio.sleep(0.3)
    assert not task.done()
    assert engine.reconnects == 0
    assert (await broker_link(engine))["connected"] is False  # the console says so
    with running_broker(tmp_path / "second", port=port):
        async with asyncio.timeout(RECONNECT_TIMEOUT_S):
            while engine.reconnects == 0:  # noqa: ASYNC110 - the engine's counter, polled
                await asyncio.sleep(0.05)
        status = await retained_status(port)
        assert status["state"] == "up"
        assert await broker_link(engine) == {
            "connected": True,
            "address": f"{first.host}:{port}",
            "reconnects": 1,
        }
        again = await ask(
            port,
            "client-a",
            "rfq",
            {"rfq_id": "a2", "symbol": "BTC-USDT", "side": "sell", "qty": "1"},
        )
        assert again["type"] == "quote", again
        repeated = await ask(port, "client-a", "accept", {"quote_id": quote["quote_id"]})
        assert repeated == fill
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert engine.reconnects == 1


async def test_a_client_with_the_engines_id_takes_over_and_the_engine_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(CONFIG)
    config = msgspec.structs.replace(
        config, journal=msgspec.structs.replace(config.journal, path=str(tmp_path / "j.sqlite"))
    )
    ready = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="otc.app")
    with running_broker(tmp_path / "broker") as broker:
        if broker.kind != "mosquitto":
            pytest.skip("amqtt 0.12.1 does not close a connection whose session is taken over")
        engine = Engine(
            config,
            feeds="sim",
            host=broker.host,
            port=broker.port,
            sim_interval_s=0.02,
            on_ready=ready.set,
            console=False,
        )
        task = asyncio.create_task(engine.run(), name="engine")
        async with asyncio.timeout(RECEIVE_TIMEOUT_S):
            await ready.wait()
        impostor = Bus(host=broker.host, port=broker.port, client_id=config.broker.client_id)
        with contextlib.suppress(BusError):  # the engine takes the session back
            async with impostor:
                async with asyncio.timeout(RECONNECT_TIMEOUT_S):
                    while engine.reconnects == 0:  # noqa: ASYNC110 - polled counter
                        await asyncio.sleep(0.05)
        assert "is another client connected with client id 'otc-engine'?" in caplog.text
        quote = await ask(
            broker.port,
            "client-a",
            "rfq",
            {"rfq_id": "t1", "symbol": "BTC-USDT", "side": "buy", "qty": "1"},
        )
        assert quote["type"] == "quote", quote
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
