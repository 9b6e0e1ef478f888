"""The quoting service end to end: real broker, `otc serve` and `otc rfq` as real processes.

Also drives the service with the real `mosquitto_pub` / `mosquitto_sub` clients when installed,
checks that malformed input gets a specific reject on the sender's own topic, that a
SIGTERM publishes the retained status "down" with the fills on disk, and that a restarted
service on the same journal gives a repeated accept the same fill and keeps the position.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import AMQTT_NO_MQTT5, ask_engine, read_mqtt_packet, retained_status, running_broker

from otc.bus import MQTT_VERSIONS

CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"


def otc(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def otc_rfq(
    url: str, client: str, symbol: str, side: str, qty: str, *flags: str
) -> subprocess.CompletedProcess[str]:
    """`otc rfq` against the broker at ``url`` (``flags``: ``--accept``, ``--json``...)."""
    return otc(
        "rfq",
        "--broker",
        url,
        "--client",
        client,
        "--symbol",
        symbol,
        "--side",
        side,
        "--qty",
        qty,
        *flags,
    )


@contextlib.contextmanager
def serving(url: str, journal: Path, config: Path = CONFIG) -> Iterator[subprocess.Popen[str]]:
    """`otc serve` on the broker at ``url``, up (its first line says so) until the block ends."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otc.cli",
            "serve",
            "--config",
            str(config),
            "--feeds",
            "sim",
            "--broker",
            url,
            "--journal",
            str(journal),
            "--console-port",
            "0",  # a free port: a console already on the default one must not matter
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "up" in line, (line, proc.stderr.read() if proc.stderr else "")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def mqtt_version() -> str:
    """The MQTT version of the engine (``[broker] mqtt_version``) and of `otc rfq` and `otc
    control` in a test: 3.1.1, unless the test is parametrized over ``MQTT_VERSIONS``."""
    return "3.1.1"


@pytest.fixture
def service(tmp_path: Path, mqtt_version: str) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    journal = tmp_path / "journal.sqlite"
    config = CONFIG
    if mqtt_version != "3.1.1":
        text = CONFIG.read_text()
        config = tmp_path / "otc.toml"
        config.write_text(
            re.sub(r"(?m)^(keepalive_s = .*)$", rf'\1\nmqtt_version = "{mqtt_version}"', text)
        )
    with running_broker(tmp_path / "broker") as broker:
        if mqtt_version == "5" and broker.kind == "amqtt":
            pytest.skip(AMQTT_NO_MQTT5)
        url = f"mqtt://{broker.host}:{broker.port}"
        with serving(url, journal, config) as proc:
            # mosquitto logs each client's protocol: "as otc-engine (p5, c1, k5..." (p2: 3.1.1)
            level = {"3.1.1": "p2", "5": "p5"}[mqtt_version]
            if broker.kind == "mosquitto":
                assert f"as otc-engine ({level}," in broker.log_file.read_text()
            yield url, journal, proc
        if broker.kind == "mosquitto" and mqtt_version != "3.1.1":  # `otc rfq`, `otc control`
            clients = re.findall(rf" as (\S+) \({level},", broker.log_file.read_text())
            assert set(clients) - {"otc-engine"}, clients


@pytest.mark.parametrize("mqtt_version", MQTT_VERSIONS)
def test_rfq_quote_accept_fill_and_the_journal(
    service: tuple[str, Path, subprocess.Popen[str]], mqtt_version: str
) -> None:
    url, journal, proc = service
    version = ("--mqtt-version", mqtt_version)
    got = otc_rfq(url, "client-a", "BTC-USDT", "buy", "25", "--accept", "--json", *version)
    assert got.returncode == 0, got.stderr
    quote, fill = (json.loads(line) for line in got.stdout.splitlines())
    assert quote["type"] == "quote"
    assert quote["ask"] is not None
    assert quote["bid"] is None
    assert fill["type"] == "fill"
    assert fill["price"] == quote["ask"]
    assert fill["qty"] == "25"
    # A two-way quote prices both sides, bid below ask.
    two_way = otc_rfq(url, "client-b", "ETH-USDT", "two_way", "10", "--json", *version)
    assert two_way.returncode == 0, two_way.stderr
    q2 = json.loads(two_way.stdout)
    assert float(q2["bid"]) < float(q2["ask"])
    # Unknown symbol: a reject naming the problem, exit status 1.
    bad = otc_rfq(url, "client-a", "DOGE-USDT", "buy", "1", "--json", *version)
    assert bad.returncode == 1
    reject = json.loads(bad.stdout)
    assert reject["code"] == "UNKNOWN_SYMBOL"
    assert "DOGE-USDT" in reject["reason"]
    up = status_of(url)
    assert up["state"] == "up"
    assert "BTC-USDT" in up["symbols"]  # type: ignore[operator]
    # Shut down: status down (retained), and the fill is in the journal.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    blotter = otc("blotter", "--journal", journal, "--kind", "fill")
    assert fill["trade_id"] in blotter.stdout
    assert status_of(url)["state"] == "down"


def test_a_restart_on_the_same_journal_keeps_the_fill_and_the_position(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    with running_broker(tmp_path / "broker") as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        with serving(url, journal) as proc:
            got = otc_rfq(url, "client-a", "BTC-USDT", "buy", "2", "--accept", "--json")
            assert got.returncode == 0, got.stderr
            quote, fill = (json.loads(line) for line in got.stdout.splitlines())
            assert fill["type"] == "fill"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        with serving(url, journal) as restarted:
            # The client never saw its fill (say): it accepts again, and gets the same one.
            again = accept(url, "client-a", {"quote_id": quote["quote_id"]})
            other = accept(url, "client-a", {"quote_id": quote["quote_id"], "qty": "1"})
            restarted.send_signal(signal.SIGTERM)
            assert restarted.wait(timeout=20) == 0
            assert restarted.stderr is not None
            log = restarted.stderr.read()
    assert again == fill
    assert other["code"] == "ALREADY_FILLED"
    # The log says what was restored (an info line used to go nowhere: nothing shows info).
    assert f"restored from {journal}: 1 fills" in log, log
    assert "positions {'BTC': '-2'" in log, log
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        started = [
            json.loads(payload)
            for (payload,) in conn.execute(
                "SELECT payload FROM events WHERE kind = 'control' ORDER BY id"
            )
        ]
    # The second run starts short the 2 BTC the client bought, and says so in its journal.
    assert {"action": "position", "asset": "BTC", "position": "-2", "operator": "start-up"} in (
        started
    )


def accept(url: str, client: str, body: dict[str, str]) -> dict[str, Any]:
    """Publish an accept as ``client`` and return the reply on its fills topic."""
    host, port = url.removeprefix("mqtt://").split(":")
    return asyncio.run(ask_engine(host, int(port), client, "accept", body))


def test_a_second_engine_on_the_same_journal_is_refused(
    service: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    url, journal, proc = service
    second = otc(
        "serve",
        "--config",
        CONFIG,
        "--feeds",
        "sim",
        "--broker",
        url,
        "--journal",
        journal,
        "--console-port",
        "0",
        "--duration",
        "5",
    )
    assert second.returncode == 2
    assert f"journal {journal} is in use by another writer (pid {proc.pid}" in second.stderr
    assert proc.poll() is None  # the first one serves on


def status_of(url: str) -> dict[str, Any]:
    host, port = url.removeprefix("mqtt://").split(":")
    return asyncio.run(retained_status(host, int(port)))


needs_mosquitto_clients = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None,
    reason="mosquitto_pub/mosquitto_sub are not installed (apt-get install mosquitto-clients)",
)


@needs_mosquitto_clients
@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ('{"rfq_id": "x1", "symbol": "BTC-USDT", "side": "buy", "qty": "25"}', "quote"),
        ("not json", "INVALID_MESSAGE"),
        ('{"rfq_id": "x2", "symbol": "BTC-USDT", "side": "buy", "qty": 25}', "INVALID_MESSAGE"),
        ('{"rfq_id": "x3", "symbol": "BTC-USDT", "side": "buy", "qty": "NaN"}', "INVALID_QTY"),
        ('{"rfq_id": "x4", "symbol": "BTC-USDT", "side": "buy", "qty": "-1"}', "INVALID_QTY"),
        ('{"rfq_id": "x5", "symbol": "BTC-USDT", "side": "buy"}', "INVALID_QTY"),
        ('{"rfq_id": "x6", "symbol": "BTC-USDT", "side": "up", "qty": "1"}', "INVALID_SIDE"),
        ('{"rfq_id": "x7", "symbol": "BTC-USDT", "side": "buy", "qty": "1e40"}', "INVALID_QTY"),
    ],
)
def test_mosquitto_clients_get_quotes_and_specific_rejects(
    service: tuple[str, Path, subprocess.Popen[str]], payload: str, code: str
) -> None:
    url, _, proc = service
    host, port = url.removeprefix("mqtt://").split(":")
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            host,
            "-p",
            port,
            "-t",
            "otc/v1/client-a/quotes",
            "-C",
            "1",
            "-W",
            "15",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # Publish until the subscriber is attached (it receives exactly one message); each
        # attempt is a new RFQ: one answered before the subscriber attached must not turn the
        # next into a DUPLICATE_RFQ_ID.
        for attempt in range(50):
            subprocess.run(
                [
                    "mosquitto_pub",
                    "-h",
                    host,
                    "-p",
                    port,
                    "-q",
                    "1",
                    "-t",
                    "otc/v1/client-a/rfq",
                    "-m",
                    re.sub(r'"rfq_id": "(\w+)"', rf'"rfq_id": "\1-{attempt}"', payload),
                ],
                check=True,
                timeout=10,
            )
            try:
                out, _ = sub.communicate(timeout=0.3)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            pytest.fail("no answer on otc/v1/client-a/quotes")
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
        if sub.stdout is not None:
            sub.stdout.close()
    answer = json.loads(out)
    if code == "quote":
        assert answer["type"] == "quote"
    else:
        assert answer["type"] == "reject"
        assert answer["code"] == code
        assert answer["reason"]
    assert proc.poll() is None  # the service keeps running


@pytest.mark.parametrize("mqtt_version", MQTT_VERSIONS)
def test_operator_kill_switch_and_client_disable_take_effect_at_once(
    service: tuple[str, Path, subprocess.Popen[str]], mqtt_version: str
) -> None:
    url, journal, _ = service

    def rfq(client: str = "client-a", symbol: str = "BTC-USDT") -> dict[str, str]:
        got = otc_rfq(url, client, symbol, "sell", "1", "--json", "--mqtt-version", mqtt_version)
        doc: dict[str, str] = json.loads(got.stdout)
        return doc

    def control(operator: str, *command: str) -> subprocess.CompletedProcess[str]:
        return otc(
            "control",
            *("--broker", url, "--operator", operator, "--mqtt-version", mqtt_version),
            *command,
        )

    assert rfq()["type"] == "quote"
    halted = control("ops-1", "halt", "--symbol", "BTC-USDT")
    assert halted.returncode == 0, halted.stderr
    assert "BTC-USDT halted" in halted.stdout
    answer = rfq()
    assert (answer["type"], answer["code"]) == ("reject", "MARKET_HALTED")
    assert rfq(symbol="ETH-USDT")["type"] == "quote"  # only that symbol
    assert control("ops-1", "resume").returncode == 0
    assert rfq()["type"] == "quote"
    assert control("ops-1", "client", "client-b", "disable").returncode == 0
    assert rfq(client="client-b")["code"] == "CLIENT_DISABLED"
    refused = control("ops-1", "client", "nobody", "enable")
    assert refused.returncode == 1
    assert "nobody" in refused.stdout
    intruder = control("client-a", "halt")
    assert intruder.returncode == 1
    assert "client-a is not an operator" in intruder.stdout
    assert rfq()["type"] == "quote"  # nothing was halted
    controls = otc("blotter", "--journal", journal, "--kind", "control")
    assert "ops-1" in controls.stdout


def test_a_topic_whose_client_level_is_not_a_client_id_is_ignored(
    service: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    """`otc/v1//rfq` was answered on `otc/v1//quotes` (and a NUL in the level echoed in a topic
    MQTT forbids): no client can hold such an id, so nothing is answered. Nor can a client be
    named `ladder` or `status`: `otc/v1/ladder/rfq` was answered on `otc/v1/ladder/quotes`, a
    ladder topic every client reads (of a symbol "quotes"), and an accept on
    `otc/v1/ladder/fills`."""
    from broker import Publication

    from otc.bus import Bus

    url, _, _ = service
    host, port = url.removeprefix("mqtt://").split(":")
    rfq = {"rfq_id": "r-1", "symbol": "BTC-USDT", "side": "buy", "qty": "1"}

    async def replies() -> list[str]:
        async with Bus(host=host, port=int(port)) as bus:
            await bus.subscribe("otc/v1/+/quotes", "otc/v1/+/fills")
            for reserved in ("ladder", "status"):
                accept = json.dumps({"quote_id": "q-1"}).encode()
                await bus.publish(Publication(f"otc/v1/{reserved}/accept", accept))
            for client in ("", "ladder", "status", "client-a"):  # the valid one last: its
                body = json.dumps(rfq).encode()  # answer ends the wait
                await bus.publish(Publication(f"otc/v1/{client}/rfq", body))
            topics = []
            async with asyncio.timeout(10):
                async for topic, _ in bus.messages():
                    topics.append(topic)
                    if topic == "otc/v1/client-a/quotes":
                        return topics
        return topics

    assert asyncio.run(replies()) == ["otc/v1/client-a/quotes"]


def test_a_frozen_engine_is_marked_down_within_its_keepalive_and_comes_back(
    tmp_path: Path,
) -> None:
    """An engine that stops answering without closing its connection (a frozen process, a lost
    network): the broker publishes its last will once 1.5 x ``keepalive_s`` passed in silence,
    not after the 90 s of MQTT clients' usual 60 s keepalive; thawed, it reconnects."""
    text = CONFIG.read_text()
    assert "keepalive_s = 5" in text
    config = tmp_path / "otc.toml"
    config.write_text(text.replace("keepalive_s = 5", "keepalive_s = 1"))

    def wait_for(url: str, state: str, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while status_of(url)["state"] != state:
            assert time.monotonic() < deadline, f"status not {state!r} within {within_s} s"
            time.sleep(0.2)

    with running_broker(tmp_path / "broker") as broker:
        if broker.kind == "amqtt":
            pytest.skip(
                "mosquitto only: amqtt 0.12.1 never drops a client that went silent (its read "
                "timeout handler does nothing), so it never publishes that client's will"
            )
        url = f"mqtt://{broker.host}:{broker.port}"
        with serving(url, tmp_path / "journal.sqlite", config) as proc:
            assert status_of(url)["state"] == "up"
            proc.send_signal(signal.SIGSTOP)
            try:
                wait_for(url, "down", 10)
            finally:
                proc.send_signal(signal.SIGCONT)
            wait_for(url, "up", 20)
            assert otc_rfq(url, "client-a", "BTC-USDT", "buy", "1").returncode == 0


def test_sigterm_does_not_wait_out_a_broker_that_never_acknowledges(tmp_path: Path) -> None:
    """The shutdown waited aiomqtt's 10 s for the PUBACK of status "down" from a broker that
    sends none; it waits 1 s now (the last will says "down" all the same)."""
    published = asyncio.Event()

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                kind, body = await read_mqtt_packet(reader)
                if kind >> 4 == 1:  # CONNECT: accepted
                    writer.write(b"\x20\x02\x00\x00")
                elif kind >> 4 == 8:  # SUBSCRIBE: every topic granted QoS 1
                    topics, at = 0, 2
                    while at < len(body):
                        at += 2 + int.from_bytes(body[at : at + 2]) + 1
                        topics += 1
                    writer.write(bytes([0x90, 2 + topics]) + body[:2] + b"\x01" * topics)
                elif kind >> 4 == 3:  # PUBLISH: never acknowledged
                    published.set()
                elif kind >> 4 == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                await writer.drain()
        writer.close()

    async def run() -> float:
        server = await asyncio.start_server(broker, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", "otc.cli", "serve", "--config", str(CONFIG), "--feeds", "sim"),
                *("--broker", f"mqtt://127.0.0.1:{port}", "--journal", str(tmp_path / "j.db")),
                "--no-console",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            async with asyncio.timeout(30):
                await published.wait()  # status "up", unacknowledged
            await asyncio.sleep(0.5)
            started = asyncio.get_running_loop().time()
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await proc.wait()
            took = asyncio.get_running_loop().time() - started
            await asyncio.sleep(0.1)  # the broker's side of the connection closes too
            return took

    assert asyncio.run(run()) < 5
