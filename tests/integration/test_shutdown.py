"""How `otc serve` and `otc demo` stop: real processes, real signals, a real broker.

Every test sends a real signal to a real ``python -m otc.cli`` process and then looks at what is
left: the exit status, stderr, the retained status, the journal and its lock, the demo's own
broker process and its port. Waits are guards against hangs, never timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import termios
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import msgspec
import pytest
from broker import ask_engine, receive
from sqlite_lock import write_lock

from otc.app import Engine
from otc.broker import BrokerProcess, find_mosquitto
from otc.bus import Bus
from otc.config import load_config
from otc.journal import SqliteJournal, state_rows

CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"

#: A guard against hangs, not a timing.
GUARD_S = 60

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto is not installed or OTC_NO_MOSQUITTO is set"
)

#: What a clean stop never prints.
NEVER_ON_STDERR = (
    "Traceback",
    "Task was destroyed but it is pending",
    "Event loop is closed",
    "was never retrieved",
    "Exception ignored",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        return False
    return True


def alive(pid: int) -> bool:
    """Whether ``pid`` is still a process (a zombie nobody reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def lock_is_free(journal: Path) -> bool:
    with open(journal.with_name(journal.name + ".lock"), "a") as file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
        return True


def clean(stderr: str) -> bool:
    return not any(text in stderr for text in NEVER_ON_STDERR)


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def otc(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "otc.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def read_until(proc: subprocess.Popen[str], text: str) -> str:
    assert proc.stdout is not None
    printed = ""
    while text not in printed:
        line = proc.stdout.readline()
        assert line, (printed, proc.stderr.read() if proc.stderr else "")
        printed += line
    return printed


@needs_mosquitto
def test_a_demo_stopped_while_its_broker_starts_leaves_no_broker_behind(tmp_path: Path) -> None:
    """SIGTERM while the demo's mosquitto was starting (in a worker thread): the thread went on
    and started it, no `__aexit__` followed the cancelled `__aenter__`, and the broker (in a
    session of its own) kept running and holding its port after the demo exited 0.

    A `mosquitto` first on PATH stands in for the real one until the test lets it go, so that
    the signal lands while the demo waits for its broker; then it is the real mosquitto."""
    real = find_mosquitto()
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    started, go = tmp_path / "started", tmp_path / "go"
    wrapper = bin_dir / "mosquitto"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"echo $$ > {started}.tmp && mv {started}.tmp {started}\n"
        # its own copy of the config: the demo's folder is gone once the demo exited
        f'grep -v "^log_dest" "$2" > {tmp_path}/mosquitto.conf\n'
        f"while [ ! -e {go} ]; do sleep 0.01; done\n"
        f"exec {real} -c {tmp_path}/mosquitto.conf\n"
    )
    wrapper.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    port = free_port()
    journal = tmp_path / "journal.sqlite"
    demo = otc(
        *("demo", "--mqtt-port", str(port), "--journal", journal, "--console-port", "0"), env=env
    )
    pid = None
    try:
        with reaped(demo):
            for _ in range(GUARD_S * 100):
                if started.exists() or demo.poll() is not None:
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    demo.wait(timeout=0.01)
            assert started.exists(), demo.stderr.read() if demo.stderr else ""
            pid = int(started.read_text())
            demo.send_signal(signal.SIGTERM)
            go.touch()  # the broker may start now: the demo must stop it all the same
            assert demo.wait(timeout=GUARD_S) == 0
            stderr = demo.stderr.read() if demo.stderr else ""
        assert clean(stderr), stderr
        assert not alive(pid), "the demo's broker outlived it"
        assert not accepts(port)
    finally:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)


def demo_ready(tmp_path: Path) -> tuple[subprocess.Popen[str], int, Path]:
    """A running ``otc demo`` with its own broker: the process, the broker's port, the journal."""
    port = free_port()
    journal = tmp_path / "journal.sqlite"
    demo = otc("demo", "--mqtt-port", str(port), "--journal", journal, "--console-port", "0")
    read_until(demo, "Ctrl-C stops the engine")
    return demo, port, journal


async def status_after(port: int, send: Callable[[], None]) -> str:
    """The retained status, ``send()``, then the next status: what the engine said last."""
    async with Bus(host="127.0.0.1", port=port) as watcher:
        await watcher.subscribe("otc/v1/status")
        messages = watcher.messages()
        await receive(messages)  # retained: up
        send()
        while True:
            _, payload = await receive(messages)
            state: str = msgspec.json.decode(payload)["state"]
            if state != "up":
                return state


@needs_mosquitto
def test_a_closed_terminal_stops_the_demo_cleanly_with_its_broker(tmp_path: Path) -> None:
    """SIGHUP (the terminal closed) killed the demo on the spot: no status ``down`` of its own,
    the journal's queue lost, and its broker (in a session of its own, so the hangup did not
    reach it) left running with its port. It stops as on Ctrl-C now."""
    demo, port, journal = demo_ready(tmp_path)
    with reaped(demo):
        state = asyncio.run(status_after(port, lambda: demo.send_signal(signal.SIGHUP)))
        assert demo.wait(timeout=GUARD_S) == 0
        stderr = demo.stderr.read() if demo.stderr else ""
    assert state == "down"
    assert clean(stderr), stderr
    assert not accepts(port), "the demo's broker outlived it"
    assert lock_is_free(journal)


def test_an_ignored_sighup_is_kept_ignored(broker: BrokerProcess, tmp_path: Path) -> None:
    """`nohup otc serve`: the operator wants the engine to outlive the terminal."""
    journal = tmp_path / "journal.sqlite"
    serve = subprocess.Popen(
        [
            *(sys.executable, "-m", "otc.cli", "serve", "--config", str(CONFIG), "--feeds", "sim"),
            *("--broker", broker.url, "--journal", str(journal), "--no-console"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # as nohup does
    )
    with reaped(serve):
        read_until(serve, "up")
        serve.send_signal(signal.SIGHUP)
        quote = asyncio.run(
            ask_engine(
                broker.host,
                broker.port,
                "client-a",
                "rfq",
                {"rfq_id": "r1", "symbol": "BTC-USDT", "side": "buy", "qty": "1"},
            )
        )
        assert quote["type"] == "quote"
        assert serve.poll() is None
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=GUARD_S) == 0
        stderr = serve.stderr.read() if serve.stderr else ""
    assert clean(stderr), stderr


def test_a_second_signal_while_the_journal_is_blocked_says_what_was_not_committed(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """Ctrl-C twice while another process holds the journal's write lock: the second one cut
    the journal's closing short, and the engine exited 0 without a word about the RFQ and
    quote it had not committed. Now it exits promptly all the same, says how many events were
    not committed, exits 1, and the journal is consistent with its lock free."""
    journal = tmp_path / "journal.sqlite"
    serve = otc(
        *("serve", "--config", CONFIG, "--feeds", "sim", "--broker", broker.url),
        *("--journal", journal, "--no-console"),
    )
    with reaped(serve):
        read_until(serve, "up")
        with write_lock(journal):
            quote = asyncio.run(
                ask_engine(
                    broker.host,
                    broker.port,
                    "client-a",
                    "rfq",
                    {"rfq_id": "r1", "symbol": "BTC-USDT", "side": "buy", "qty": "1"},
                )
            )
            assert quote["type"] == "quote"  # published; its journal events wait for the disk
            serve.send_signal(signal.SIGTERM)
            # The impatient operator: Ctrl-C until it is gone (the engine may still be
            # publishing its status when the first lands; the journal waits for the disk).
            for _ in range(GUARD_S * 10):
                serve.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    serve.wait(timeout=0.1)
                    break
            status = serve.wait(timeout=GUARD_S)
            stderr = serve.stderr.read() if serve.stderr else ""
            assert lock_is_free(journal)
    assert status == 1, stderr
    assert "2 event(s) not yet committed" in stderr, stderr
    assert clean(stderr), stderr
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)


def test_a_second_signal_spent_on_the_status_wait_still_cuts_the_journal_short(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """Ctrl-C twice while the broker does not acknowledge status ``down`` (frozen) and another
    process holds the journal's write lock: the second signal ended the 1 s status wait, and
    the journal's closing then waited for the disk all the same (a third signal was needed).
    Two signals now get the operator out, saying what was not committed."""
    assert broker.pid is not None
    journal = tmp_path / "journal.sqlite"
    serve = otc(
        *("serve", "--config", CONFIG, "--feeds", "sim", "--broker", broker.url),
        *("--journal", journal, "--no-console"),
    )
    with reaped(serve):
        read_until(serve, "up")
        with write_lock(journal):
            body = {"rfq_id": "r1", "symbol": "BTC-USDT", "side": "buy", "qty": "1"}
            quote = asyncio.run(ask_engine(broker.host, broker.port, "client-a", "rfq", body))
            assert quote["type"] == "quote"  # published; its journal events wait for the disk
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                serve.send_signal(signal.SIGTERM)
                assert serve.stderr is not None
                logged = ""
                while "engine stopping" not in logged:  # then in the status wait (up to 1 s)
                    line = serve.stderr.readline()
                    assert line, logged
                    logged += line
                serve.send_signal(signal.SIGINT)
                status = serve.wait(timeout=GUARD_S)
                stderr = logged + serve.stderr.read()
            finally:
                os.kill(broker.pid, signal.SIGCONT)
    assert status == 1, stderr
    assert "stopped before the journal committed 2 event(s)" in stderr, stderr
    assert clean(stderr), stderr


def test_a_run_whose_journal_could_not_record_events_exits_1_and_says_so(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """Events the journal could not record during the run (each logged when it happened) made
    no difference to how the engine stopped: status 0, as if the journal held everything. A
    trigger of the database refuses one RFQ's rows, as a constraint or a failing disk would."""
    journal = tmp_path / "journal.sqlite"
    serve = otc(
        *("serve", "--config", CONFIG, "--feeds", "sim", "--broker", broker.url),
        *("--journal", journal, "--no-console"),
    )
    with reaped(serve):
        read_until(serve, "up")
        with contextlib.closing(sqlite3.connect(journal)) as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.rfq_id = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
            conn.commit()
        for rfq_id in ("poison", "fine"):
            body = {"rfq_id": rfq_id, "symbol": "BTC-USDT", "side": "buy", "qty": "1"}
            answer = asyncio.run(ask_engine(broker.host, broker.port, "client-a", "rfq", body))
            assert answer["rfq_id"] == rfq_id
        serve.send_signal(signal.SIGTERM)
        status = serve.wait(timeout=GUARD_S)
        stderr = serve.stderr.read() if serve.stderr else ""
    assert status == 1, stderr
    assert f"the journal {journal} could not record 2 event(s) during this run" in stderr, stderr
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        kept = {rfq_id for (rfq_id,) in conn.execute("SELECT rfq_id FROM events")}
    assert kept == {"fine"}


def test_signals_end_a_stop_that_waits_for_a_write_that_never_returns(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """A recording whose write never returns (a hung disk; here a pipe nobody reads): a
    second signal cuts the recorder's wait short, but then the runner waited for the worker
    thread at exit and ignored every further signal; only SIGKILL ended the process. Now a
    signal once the engine is over ends the process at once, status 1, saying why."""
    fifo = tmp_path / "books.otc.gz"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # held open, never read
    try:
        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)  # full after a few flushes
        serve = otc(
            *("serve", "--config", CONFIG, "--feeds", "sim", "--broker", broker.url),
            *("--journal", tmp_path / "journal.sqlite", "--no-console", "--record", fifo),
        )
        with reaped(serve):
            read_until(serve, "up")
            for _ in range(GUARD_S * 10):  # until the pipe is full: the next write hangs
                queued = bytearray(4)
                fcntl.ioctl(reader, termios.FIONREAD, queued)
                if int.from_bytes(queued, sys.byteorder) >= 4096:
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    serve.wait(timeout=0.1)
            serve.send_signal(signal.SIGTERM)
            for _ in range(GUARD_S * 10):  # the impatient operator
                serve.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    serve.wait(timeout=0.1)
                    break
            status = serve.wait(timeout=GUARD_S)
            stderr = serve.stderr.read() if serve.stderr else ""
    finally:
        os.close(reader)
    assert status == 1, stderr
    assert "stopped without waiting for worker threads" in stderr, stderr
    assert clean(stderr), stderr


def reading_state(frames: dict[int, FrameType]) -> bool:
    """Whether a thread is in :func:`otc.journal.state_rows` (reading a journal to restore)."""
    for frame in frames.values():
        at: FrameType | None = frame
        while at is not None:
            if at.f_code is state_rows.__code__:
                return True
            at = at.f_back
    return False


async def test_stopped_while_restoring_a_large_journal_the_read_stops_too(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """SIGTERM while the engine read a large journal to restore from (5 s for a million fills):
    the engine unwound, but the read went on in its worker thread, and the process waited for
    it at exit. The read gives up now, before the engine's task returns."""
    path = tmp_path / "journal.sqlite"
    async with SqliteJournal(path):  # the schema
        pass
    fill = msgspec.json.encode(
        {"type": "fill", "quote_id": "Q", "trade_id": "T", "side": "buy", "qty": "0.001"}
        | {"price": "64000", "ts_ms": 1, "symbol": "BTC-USDT", "rfq_id": "R"}
    ).decode()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(  # fills of long ago, as many as a busy desk's years
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000) "
            "INSERT INTO events (ts_ns, recorded_ns, kind, client, symbol, rfq_id, quote_id, "
            "trade_id, payload) SELECT 1000000 + i, 1000000 + i, 'fill', 'client-a', "
            "'BTC-USDT', 'r' || i, 'q' || i, 't' || i, "
            "replace(replace(replace(?, '\"Q\"', '\"q' || i || '\"'), '\"T\"', '\"t' || i || "
            "'\"'), '\"R\"', '\"r' || i || '\"') FROM n",
            (fill,),
        )
    config = load_config(CONFIG)
    config = msgspec.structs.replace(
        config, journal=msgspec.structs.replace(config.journal, path=str(path))
    )
    engine = Engine(config, feeds="sim", host=broker.host, port=broker.port, console=False)
    task = asyncio.create_task(engine.run())
    async with asyncio.timeout(GUARD_S):
        while not reading_state(sys._current_frames()):  # noqa: ASYNC110 - another thread
            await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.restored is None  # stopped during the read, not after
    assert not reading_state(sys._current_frames())


def test_a_console_request_cut_short_at_shutdown_is_one_line_not_a_traceback(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    """A console client still sending a command's body when the engine stops: uvicorn waits
    3 s for it, cancels it, and logged "Exception in ASGI application" with the traceback of
    the cancellation. Now one line says a request was cancelled."""
    serve = otc(
        *("serve", "--config", CONFIG, "--feeds", "sim", "--broker", broker.url),
        *("--journal", tmp_path / "journal.sqlite", "--console-port", "0"),
        env=dict(os.environ, OTC_CONSOLE_TOKEN="t" * 32),
    )
    with reaped(serve):
        printed = read_until(serve, "console: http://")
        found = re.search(r"console: http://([\d.]+):(\d+)/", printed)
        assert found is not None, printed
        with socket.create_connection((found.group(1), int(found.group(2)))) as client:
            client.sendall(
                b"POST /api/control HTTP/1.1\r\nHost: otc\r\nAuthorization: Bearer "
                + b"t" * 32
                + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            client.sendall(b'"operator": ')  # and nothing more: the rest never comes
            # A whole request after it, answered: the engine has read the one above by then.
            with socket.create_connection((found.group(1), int(found.group(2)))) as other:
                other.sendall(
                    b"GET /api/overview HTTP/1.1\r\nHost: otc\r\nConnection: close\r\n"
                    b"Authorization: Bearer " + b"t" * 32 + b"\r\n\r\n"
                )
                assert other.recv(12) == b"HTTP/1.1 200"
            serve.send_signal(signal.SIGTERM)
            status = serve.wait(timeout=GUARD_S)
        stderr = serve.stderr.read() if serve.stderr else ""
    assert status == 0, stderr
    assert "console: a request was cancelled" in stderr, stderr
    assert clean(stderr), stderr
