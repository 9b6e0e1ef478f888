"""One smoke test on uvloop (the entry point's loop): the engine serves an RFQ in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from otc.app import Engine
from otc.broker import BrokerProcess
from otc.bus import Bus
from otc.config import load_config

uvloop = pytest.importorskip("uvloop")

CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"


class _Message(msgspec.Struct, frozen=True):
    topic: str
    payload: bytes
    retain: bool = False
    expiry_s: int | None = None


def test_engine_quotes_on_uvloop(broker: BrokerProcess, tmp_path: Path) -> None:
    config = load_config(CONFIG)
    config = msgspec.structs.replace(
        config, journal=msgspec.structs.replace(config.journal, path=str(tmp_path / "j.sqlite"))
    )

    async def scenario() -> dict[str, object]:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        ready = asyncio.Event()
        engine = Engine(
            config,
            feeds="sim",
            host=broker.host,
            port=broker.port,
            username=None,
            password=None,
            tls=False,
            sim_interval_s=0.02,
            on_ready=ready.set,
            console_port=0,
        )
        async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
            task = tg.create_task(engine.run(), name="engine")
            await ready.wait()
            async with Bus(host=broker.host, port=broker.port, username="client-a") as bus:
                await bus.subscribe("otc/v1/client-a/quotes")
                rfq = {"rfq_id": "uv-1", "symbol": "BTC-USDT", "side": "sell", "qty": "3"}
                await bus.publish(_Message("otc/v1/client-a/rfq", msgspec.json.encode(rfq)))
                async for _, payload in bus.messages():
                    answer = msgspec.json.decode(payload)
                    break
            task.cancel()
        assert isinstance(answer, dict)
        return answer

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        answer = runner.run(scenario())
    assert answer["type"] == "quote"
    assert answer["rfq_id"] == "uv-1"
    assert answer["bid"] is not None
