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

from otc.journal import JournalError, JournalEvent, Receipt


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
