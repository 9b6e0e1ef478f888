"""`otc feeds serve-replay` as a real process; our websocket client syncs from it over loopback."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from feeds.bybit import BybitBookFeed
from feeds.connection import Backoff, FeedConnection
from feeds.record import read_events
from feeds.recorded import read_recording
from otc.book import L2Book, apply_event

NAME = "bybit_v5_spot_orderbook200_2026-08-09.jsonl"


@pytest.fixture
def recording(shared_data: Path) -> Path:
    return shared_data / "bybit" / NAME


@pytest.fixture
def server(recording: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otc.cli",
            "feeds",
            "serve-replay",
            "--venue",
            "bybit",
            str(recording),
            "--fault",
            "100:drop",
            "--fault",
            "300:disconnect",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving 550 bybit messages on ws://127.0.0.1:" in line, line
        yield line.split(" on ")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_client_syncs_from_a_served_recording_despite_faults(
    server: str, recording: Path
) -> None:
    clean = BybitBookFeed()
    for record in read_recording(recording):
        clean.on_message(record.data, record.ts_recv_ns)
    feed = BybitBookFeed()
    conn = FeedConnection(
        feed,
        ["BTCUSDT", "ETHUSDT"],
        url=server,
        backoff=Backoff(base_s=0.01, cap_s=0.05, rng=random.Random(2)),
    )
    async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
        task = tg.create_task(conn.run(), name="feed")
        while feed.books != clean.books or not all(feed.in_sync.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        task.cancel()
    health = conn.health()
    assert health.gaps >= 1
    assert health.reconnects == 1
    for book in feed.books.values():
        book._check()


def record_bybit(server: str, symbols: str, out: Path, recording: Path) -> BybitBookFeed:
    """Run `otc record --source bybit --url server --symbols symbols` for 3 s into ``out``
    (a real process); the feed holding the clean books of ``recording``, to compare with."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "otc.cli",
            "record",
            "--source",
            "bybit",
            "--url",
            server,
            "--symbols",
            symbols,
            "--duration",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "recorded" in proc.stdout
    clean = BybitBookFeed()
    for record in read_recording(recording):
        clean.on_message(record.data, record.ts_recv_ns)
    return clean


def test_record_a_live_session_then_replay_it_losslessly(
    server: str, recording: Path, tmp_path: Path
) -> None:
    """`otc record` connects to the served session (a second real process), writes our format,
    and the books rebuilt from the file equal the books of the clean recording."""
    out = tmp_path / "session.rec.gz"
    clean = record_bybit(server, "BTCUSDT,ETHUSDT", out, recording)
    header, events = read_events(out)
    assert set(header.scales) == {"BTCUSDT", "ETHUSDT"}
    books: dict[str, L2Book] = {}
    for event in events:
        book = books.setdefault(
            event.symbol, L2Book("bybit", event.symbol, header.scale(event.symbol))
        )
        apply_event(book, event)
    assert books == clean.books


def test_record_only_the_symbols_asked_for(server: str, recording: Path, tmp_path: Path) -> None:
    """The served session has BTCUSDT and ETHUSDT; `--symbols BTCUSDT` records BTCUSDT alone.
    The venue's messages of the other symbol ended the recording with a traceback (`... has no
    scale in the header`), status 1."""
    out = tmp_path / "btc.rec.gz"
    clean = record_bybit(server, "BTCUSDT", out, recording)
    header, events = read_events(out)
    assert set(header.scales) == {"BTCUSDT"}
    book = L2Book("bybit", "BTCUSDT", header.scale("BTCUSDT"))
    for event in events:
        assert event.symbol == "BTCUSDT"
        apply_event(book, event)
    assert book == clean.books["BTCUSDT"]
