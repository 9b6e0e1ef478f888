"""Audit of a live run, end to end, with real processes over loopback.

`otc serve --feeds sim --record FILE --journal J` runs against a broker of the test's own; `otc
rfq` clients send RFQs (concurrently) and accepts; SIGTERM stops the engine, which flushes the
recording and the journal; then `otc replay-journal --journal J --data FILE` reproduces every
quote, reject and fill identically, and reports a difference once one recorded book event is
tampered with.
"""

from __future__ import annotations

import gzip
import json
import re
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from broker import running_broker

from feeds.record import read_events
from otc.book import L2Book, apply_event
from otc.config import load_config
from otc.model import BookDelta, BookEvent, BookSnapshot

CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"
OTC = [sys.executable, "-m", "otc.cli"]

#: (client, symbol, side, size option, size, accept side or None)
RFQS = [
    ("client-a", "BTC-USDT", "buy", "--qty", "25", "buy"),
    ("client-b", "ETH-USDT", "two_way", "--qty", "10", None),
    ("client-b", "BTC-USD", "sell", "--notional", "250000", None),
    ("client-b", "BTC-USDT", "two_way", "--qty", "3", "sell"),
    ("client-a", "DOGE-USDT", "buy", "--qty", "1", None),  # rejected: UNKNOWN_SYMBOL
]


def live_run(folder: Path) -> tuple[Path, Path, list[dict[str, Any]], str]:
    """Serve, quote, accept, SIGTERM; the journal, the recording, the client's view, stdout."""
    journal, record = folder / "journal.sqlite", folder / "books.otc.gz"
    with running_broker(folder / "broker") as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        serve = [
            *OTC,
            "serve",
            "--config",
            str(CONFIG),
            "--feeds",
            "sim",
            "--broker",
            url,
            "--journal",
            str(journal),
            "--record",
            str(record),
            "--console-port",
            "0",
        ]
        proc = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "up" in line, (line, proc.stderr.read() if proc.stderr else "")
            clients = []
            for client, symbol, side, size_option, size, accept in RFQS:
                command = [*OTC, "rfq", "--broker", url, "--client", client, "--symbol", symbol]
                command += ["--side", side, size_option, size, "--json"]
                if accept is not None:
                    command += ["--accept", "--accept-side", accept]
                clients.append(
                    subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                )
            answers = []
            for client_proc in clients:
                out, err = client_proc.communicate(timeout=60)
                assert client_proc.returncode in (0, 1), err
                answers += [json.loads(line) for line in out.splitlines()]
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=30)
            assert proc.returncode == 0, stderr
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return journal, record, answers, stdout


def replay(journal: Path, record: Path) -> tuple[int, dict[str, Any]]:
    files = ["--journal", str(journal), "--data", str(record)]
    got = subprocess.run(
        [*OTC, "replay-journal", "--config", str(CONFIG), *files, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode in (0, 1), got.stderr
    result: dict[str, Any] = json.loads(got.stdout)
    return got.returncode, result


def journaled_quotes(journal: Path) -> list[dict[str, Any]]:
    got = subprocess.run(
        [*OTC, "journal", "export", "--journal", str(journal), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [row for row in json.loads(got.stdout) if row["kind"] == "quote"]


def tamper(record: Path, quote: dict[str, Any], out: Path) -> str:
    """Copy ``record`` to ``out`` with one event changed: the last event of the venue the
    quote bought most from, at or before the book sequence the quote was priced from, gets
    1,000 more of the base at that venue's best ask (a level the quote's hedge walked)."""
    explanation = quote["payload"]["explanation"]["ask"]
    symbol = explanation["symbol"]
    route = explanation["route"]
    venue = max(route, key=lambda v: Decimal(route[v]["qty"]))
    target = int(explanation["books"][venue]["sequence"])
    header, events = read_events(record)
    events_list: list[BookEvent] = list(events)
    book = L2Book(venue, symbol, header.scale(symbol))
    index = -1
    for i, event in enumerate(events_list):
        if event.venue == venue and event.symbol == symbol and (event.sequence or 0) <= target:
            apply_event(book, event)
            index = i
    assert index >= 0
    price, size = next(book.asks())
    event = events_list[index]
    extra = size + 1_000 * 10 ** header.scale(symbol).size_decimals
    asks = [level for level in event.asks if level[0] != price] + [(price, extra)]
    changed = msgspec.structs.replace(event, asks=asks)
    events_list[index] = changed
    assert isinstance(changed, BookSnapshot | BookDelta)
    lines = [msgspec.json.encode(header)] + [msgspec.json.encode(e) for e in events_list]
    out.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return venue


def test_a_live_run_replays_to_identical_quotes_and_tampering_shows(tmp_path: Path) -> None:
    journal, record, answers, stdout = live_run(tmp_path)
    # The client's view: quotes, two fills, one reject.
    kinds = [a["type"] for a in answers]
    assert kinds.count("quote") == 4, answers
    assert kinds.count("fill") == 2, answers
    assert kinds.count("reject") == 1, answers
    # The engine said what it recorded; the file holds exactly that, with the run's id.
    recorded = re.search(r"recorded (\d+) book events to (.+)$", stdout, re.MULTILINE)
    assert recorded is not None, stdout
    assert Path(recorded.group(2)) == record
    header, events = read_events(record)
    assert sum(1 for _ in events) == int(recorded.group(1)) > 0
    quotes = journaled_quotes(journal)
    run_id = quotes[0]["quote_id"].rsplit("-q", 1)[0]
    assert f"run {run_id}" in header.source
    assert set(header.scales) == {i.symbol for i in load_config(CONFIG).instruments}

    code, result = replay(journal, record)
    assert result["mismatches"] == []
    assert code == 0
    assert result["rfqs"] == len(RFQS)
    assert result["accepts"] == 2
    # 4 quotes, 1 reject, 2 fills, each reproduced identically.
    assert result["journaled"] == result["reproduced"] == result["identical_events"] == 7

    quote = next(q for q in quotes if q["payload"]["quote"]["side"] == "buy")
    venue = tamper(record, quote, tmp_path / "tampered.otc.gz")
    code, result = replay(journal, tmp_path / "tampered.otc.gz")
    assert code == 1
    assert result["mismatches"], result
    first = result["mismatches"][0]
    assert first["quote_id"] == quote["quote_id"]
    assert any(venue in m["path"] or ".ask" in m["path"] for m in result["mismatches"])


def test_a_file_that_cannot_be_created_stops_serve_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    record = tmp_path / "plain" / "books.otc.gz"
    serve = [*OTC, "serve", "--config", str(CONFIG), "--feeds", "sim", "--console-port", "0"]
    serve += ["--broker", "mqtt://127.0.0.1:9", "--journal", str(tmp_path / "j.sqlite")]
    got = subprocess.run(
        [*serve, "--record", str(record)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 2
    problem = f"File exists: {tmp_path / 'plain'}"  # a file where a folder should be
    assert got.stderr == f"otc: error: {record}: cannot record: {problem}\n"
    assert not (tmp_path / "j.sqlite").exists()  # nothing else was started


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_write_error_is_reported_and_serve_exits_1(tmp_path: Path) -> None:
    with running_broker(tmp_path / "broker") as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        serve = [*OTC, "serve", "--config", str(CONFIG), "--feeds", "sim", "--broker", url]
        serve += ["--journal", str(tmp_path / "j.sqlite"), "--record", "/dev/full"]
        serve += ["--console-port", "0"]
        proc = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert "up" in proc.stdout.readline()
            rfq = [*OTC, "rfq", "--broker", url, "--client", "client-a", "--symbol", "BTC-USDT"]
            got = subprocess.run(
                [*rfq, "--side", "buy", "--qty", "1", "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert json.loads(got.stdout)["type"] == "quote"  # quoting goes on regardless
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 1
    # Logged when it happened, and said again on the way out, naming the file and the cause.
    assert "recording stopped: /dev/full: write failed: No space left on device" in stderr
    assert "otc: error: /dev/full: write failed: No space left on device: 0 book events" in stderr
