"""A journal write that fails under a running engine: the client gets an answer, the engine
carries on.

A real broker and the demo configuration's engine in this process; its journal is made to
fail fill writes (as a full disk would), then to work again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from broker import ask_engine, running_broker
from test_broker_restart import rfq, start_engine

from otc.journal import JournalError, JournalEvent, Receipt, recent
from otc.protocol import Control


async def test_a_fill_the_journal_cannot_write_is_refused_and_the_engine_serves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_broker(tmp_path / "broker") as broker:
        engine, task = await start_engine(broker.host, broker.port, tmp_path / "j.sqlite")
        try:
            quote = await ask_engine(broker.host, broker.port, "client-a", "rfq", rfq("a1", "buy"))
            assert engine.journal is not None
            submit = engine.journal.submit

            async def no_fills(event: JournalEvent, *, urgent: bool = False) -> Receipt:
                if event.kind != "fill":
                    return await submit(event, urgent=urgent)
                receipt: Receipt = asyncio.get_running_loop().create_future()
                receipt.set_exception(JournalError("disk full"))  # as the writer reports it
                return receipt

            monkeypatch.setattr(engine.journal, "submit", no_fills)
            accept = {"quote_id": quote["quote_id"]}
            reject = await ask_engine(broker.host, broker.port, "client-a", "accept", accept)
            assert (reject["type"], reject["code"]) == ("accept_reject", "INTERNAL_ERROR")
            assert "nothing was filled" in reject["reason"]
            assert not task.done()
            monkeypatch.undo()
            fill = await ask_engine(broker.host, broker.port, "client-a", "accept", accept)
            assert fill["type"] == "fill", fill
            assert fill["price"] == quote["ask"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_control_the_journal_cannot_write_is_in_effect_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A halt during a disk incident is applied (it must not wait for the disk); the operator
    used to be told ``ok: false`` for a halt that was in force."""
    with running_broker(tmp_path / "broker") as broker:
        engine, task = await start_engine(broker.host, broker.port, tmp_path / "j.sqlite")
        try:
            assert engine.journal is not None
            assert engine.quotes is not None
            append = engine.journal.append

            async def no_controls(event: JournalEvent) -> None:
                if event.kind == "control":
                    raise JournalError("disk full")
                await append(event)

            monkeypatch.setattr(engine.journal, "append", no_controls)
            result = await engine.apply_control("ops-1", Control(command="halt", symbol="BTC-USDT"))
            assert result.ok
            assert "in effect, but not yet journaled" in result.detail
            assert engine.quotes.halted("BTC-USDT")
            monkeypatch.undo()
            await engine.quotes.flush_controls()  # the journal recovered: written now
            rows = recent(engine.journal.path, kinds=["control"])
            assert [row.payload["action"] for row in rows] == ["halt"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
