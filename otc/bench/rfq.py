"""``otc bench rfq``: RFQ -> quote round trips through a real broker, next to a bare echo.

Everything runs in one process, on one event loop (uvloop when installed, else asyncio's
default loop), against a broker the benchmark starts itself with :func:`~otc.broker.start_broker`
in a temporary folder: ``mosquitto`` when installed (its generated configuration has
``set_tcp_nodelay true`` and ``max_queued_messages`` sized), else amqtt (``.venv-amqtt``). Every
MQTT connection is an :class:`~otc.bus.Bus` (aiomqtt, ``TCP_NODELAY`` on its socket).

What it measures:

1. **The floor: a bare echo.** A responder with its own connection, subscribed to a request
   topic, republishes each payload to a reply topic at the same QoS, one task per message (as
   the engine dispatches). A requester on a third connection sends RFQ payloads and times each
   round trip, from just before its publish to the reply's arrival in its inbox:
   *sequential* (one request outstanding: the latency a lone client sees, p50/p90/p99/max
   over ``rfqs``) and *sustained* (``in_flight`` requests outstanding, ``rfqs`` of them:
   round trips per second, and the latencies under that load). At QoS 1 (the engine's) and 0.
2. **The engine.** The same requester, the same kind of payloads (a fixed mix of one-sided and
   two-way RFQs on BTC-USDT and ETH-USDT), against a real :class:`~otc.app.Engine`: the demo
   configuration ``config/otc.toml`` with the per-client rate limit lifted (the benchmark is one
   client sending thousands of RFQs a second), a fresh :class:`~otc.journal.SqliteJournal`
   (``synchronous=FULL``) in the temporary folder, and the synthetic feeds moving the books
   (every 100 ms) and the ladders publishing while it is measured. Every reply must be a quote.
   Then the ratios engine / echo at QoS 1: p50 and p99 of the sequential round trip and the
   sustained throughput, next to the goals (p50 <= 1.25x, p99 <= 1.5x, throughput >= 0.8x);
   and where the engine's CPU goes per RFQ (``QuoteEngine.on_rfq`` on the loop's thread, the
   journal's writer thread: :class:`_EngineProbe`) against what the throughput goal leaves it.
3. **Nagle's algorithm.** The sequential QoS 1 echo with ``TCP_NODELAY`` off on the clients'
   sockets; and, with mosquitto, on a second mosquitto started with ``set_tcp_nodelay false``,
   with the clients' option on and off. Fewer round trips: each can take tens of milliseconds.
4. **The journal,** read back once the engine stopped: every RFQ and every quote is on disk,
   and how many events each commit (one fsync) carried.

With ``rounds`` > 1, the QoS 1 echo and then the engine (a fresh one, on a fresh journal) are
measured that many times, one right after the other, and the ratios reported are the medians
of the rounds' (each round's too): on a shared machine the floor itself drifts between runs.

Each series starts with a warm-up (not counted). The process's garbage collector is set up as
``otc serve`` sets it (:func:`otc.app.tune_gc`) before the first series, for the echo as for the
engine, and restored when the benchmark returns. The requester, the responder (or the engine)
share the loop, so every figure includes the requester's own cost, on both sides of a ratio;
the broker is another process. Replies are matched to requests by ``rfq_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import metadata
from pathlib import Path
from time import perf_counter_ns, process_time_ns, thread_time_ns
from typing import Any, Final, TextIO, TypeVar

import msgspec

from otc.app import Engine, tune_gc
from otc.bench.book import machine as book_machine
from otc.broker import (
    MAX_QUEUED_MESSAGES,
    BrokerProcess,
    amqtt_version,
    find_mosquitto,
    mosquitto_config,
    start_broker,
)
from otc.bus import Bus
from otc.config import Config, load_config
from otc.protocol import QUOTES_TOPIC, RFQ_TOPIC
from otc.quoting import Outgoing

__all__ = [
    "GOALS",
    "RFQ_MIX",
    "LatencySeries",
    "bench_config",
    "loop_factory",
    "machine",
    "ratios",
    "requests",
    "run",
]

T = TypeVar("T")

#: The demo configuration the engine runs with (the rate limit lifted, the journal moved).
CONFIG_PATH: Final = Path(__file__).resolve().parents[2] / "config" / "otc.toml"
CLIENT: Final = "client-a"
#: The RFQ mix, cycled: (symbol, side, qty).
RFQ_MIX: Final = (
    ("BTC-USDT", "buy", "1"),
    ("BTC-USDT", "sell", "2.5"),
    ("ETH-USDT", "buy", "20"),
    ("BTC-USDT", "two_way", "0.5"),
    ("ETH-USDT", "sell", "5"),
    ("BTC-USDT", "buy", "0.1"),
)
#: Goals of the project, engine / echo at QoS 1.
GOALS: Final = {"p50_max": 1.25, "p99_max": 1.5, "throughput_min": 0.8}
#: Engine messages handled concurrently, and the echo's equivalent.
MAX_IN_FLIGHT: Final = 256
#: A series that has not finished after this long (plus 100 ms per request) is cut short.
SERIES_TIMEOUT_S: Final = 60.0
_ENGINE_READY_TIMEOUT_S: Final = 30.0
#: The synthetic market's step interval (the engine's default).
ENGINE_SIM_INTERVAL_S: Final = 0.1


class _Reply(msgspec.Struct):
    """What the requester reads of a reply: an echoed RFQ has no ``type``."""

    rfq_id: str = ""
    type: str = "echo"


_reply_decoder: Final = msgspec.json.Decoder(_Reply)


class LatencySeries(msgspec.Struct, kw_only=True):
    """One series of round trips: what was sent, what came back, and how fast."""

    label: str
    qos: int
    in_flight: int
    sent: int
    answered: int
    elapsed_ns: int
    latencies_ns: list[int]
    replies: dict[str, int]
    unexpected: int = 0
    #: CPU time of this process (every thread) and of the broker during the series.
    cpu_ns: int = 0
    broker_cpu_ns: int | None = None
    #: The engine's parts during the series (see :class:`_EngineProbe`), totals in ns.
    parts: dict[str, int] | None = None

    @property
    def missing(self) -> int:
        return self.sent - self.answered

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile ``q`` (0..100) of the round trips, in ms."""
        data = sorted(self.latencies_ns)
        if not data:
            return float("nan")
        rank = max(1, -(-len(data) * q // 100))  # ceil(n q / 100), at least 1
        return data[min(len(data), int(rank)) - 1] / 1e6

    @property
    def rate_per_s(self) -> float:
        return self.answered / (self.elapsed_ns / 1e9) if self.elapsed_ns else 0.0

    def figures(self) -> dict[str, Any]:
        data = self.latencies_ns
        return {
            "qos": self.qos,
            "in_flight": self.in_flight,
            "sent": self.sent,
            "answered": self.answered,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "replies": dict(self.replies),
            "elapsed_s": round(self.elapsed_ns / 1e9, 3),
            "round_trips_per_s": round(self.rate_per_s, 1),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p90_ms": round(self.percentile_ms(90), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "max_ms": round(max(data) / 1e6, 3) if data else None,
            "mean_ms": round(sum(data) / len(data) / 1e6, 3) if data else None,
            "cpu_us_per_round_trip": self.cpu_us(self.cpu_ns),
            "broker_cpu_us_per_round_trip": (
                None if self.broker_cpu_ns is None else self.cpu_us(self.broker_cpu_ns)
            ),
            "engine_parts_us_per_round_trip": (
                None
                if self.parts is None
                else {name: self.cpu_us(ns) for name, ns in self.parts.items()}
            ),
        }

    def cpu_us(self, ns: int) -> float | None:
        return round(ns / self.answered / 1e3, 1) if self.answered else None


# -- requests and replies ------------------------------------------------------------------------


def requests(tag: str, n: int) -> list[tuple[str, bytes]]:
    """``n`` RFQs of the mix, ids ``{tag}-{i}``: (rfq_id, payload)."""
    out = []
    for i, (symbol, side, qty) in zip(range(n), itertools.cycle(RFQ_MIX), strict=False):
        rfq_id = f"{tag}-{i}"
        payload = msgspec.json.encode(
            {"rfq_id": rfq_id, "symbol": symbol, "side": side, "qty": qty}
        )
        out.append((rfq_id, payload))
    return out


async def _series(
    bus: Bus,
    inbox: AsyncIterator[tuple[str, bytes]],
    topic: str,
    requests: list[tuple[str, bytes]],
    *,
    label: str,
    qos: int,
    in_flight: int,
    broker_pid: int | None,
    probe: _EngineProbe | None = None,
) -> LatencySeries:
    """Send ``requests`` with at most ``in_flight`` outstanding; time each round trip.

    Each publish runs in its own task (at QoS 1 it waits for the broker's PUBACK, which must
    not hold back the next request). A series that takes longer than its timeout is cut short:
    the requests still unanswered are reported ``missing``.
    """
    sent_at: dict[str, int] = {}
    latencies: list[int] = []
    replies: Counter[str] = Counter()
    unexpected = 0
    slots = asyncio.Semaphore(in_flight)
    finished = asyncio.get_running_loop().create_future()
    expected = len(requests)
    publishing: set[asyncio.Task[None]] = set()

    async def read() -> None:
        nonlocal unexpected
        async for _, payload in inbox:
            now = perf_counter_ns()
            try:
                reply = _reply_decoder.decode(payload)
            except msgspec.DecodeError:
                unexpected += 1
                continue
            started = sent_at.pop(reply.rfq_id, None)
            if started is None:
                unexpected += 1
                continue
            latencies.append(now - started)
            replies[reply.type] += 1
            slots.release()
            if len(latencies) == expected and not finished.done():
                finished.set_result(None)

    sent = 0
    parts = probe.totals() if probe is not None else None
    cpu = process_time_ns()
    broker_cpu = _cpu_of(broker_pid)
    start = perf_counter_ns()
    async with asyncio.TaskGroup() as tg:
        reader = tg.create_task(read(), name=f"bench-{label}-replies")
        try:
            async with asyncio.timeout(SERIES_TIMEOUT_S + 0.1 * expected):
                for rfq_id, payload in requests:
                    await slots.acquire()
                    sent_at[rfq_id] = perf_counter_ns()
                    task = tg.create_task(bus.publish(Outgoing(topic, payload)))
                    publishing.add(task)
                    task.add_done_callback(publishing.discard)
                    sent += 1
                if expected:
                    await finished
        except TimeoutError:
            for task in publishing:
                task.cancel()
        elapsed = perf_counter_ns() - start
        cpu = process_time_ns() - cpu
        broker_after = _cpu_of(broker_pid)
        if probe is not None and parts is not None:
            parts = {name: ns - parts[name] for name, ns in probe.totals().items()}
        reader.cancel()
    return LatencySeries(
        label=label,
        qos=qos,
        in_flight=in_flight,
        sent=sent,
        answered=len(latencies),
        elapsed_ns=elapsed,
        latencies_ns=latencies,
        replies=dict(replies),
        unexpected=unexpected,
        cpu_ns=cpu,
        broker_cpu_ns=(
            None if broker_cpu is None or broker_after is None else broker_after - broker_cpu
        ),
        parts=parts,
    )


_CLOCK_TICK_NS: Final = 1_000_000_000 // (
    os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
)


def _cpu_of(pid: int | None) -> int | None:
    """CPU time (user + system, ns) of process ``pid`` from ``/proc``; None where unreadable."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) * _CLOCK_TICK_NS  # utime, stime


class _Plan:
    """How much work each part does: the defaults, or ``quick`` for tests."""

    __slots__ = ("nagle_samples", "rfqs", "rounds", "warmup")

    def __init__(self, *, rfqs: int, quick: bool, rounds: int = 1) -> None:
        self.rfqs = rfqs
        self.rounds = rounds
        self.warmup = min(500, max(20, rfqs // 20))
        self.nagle_samples = 5 if quick else 40


async def _measure(
    bus: Bus,
    topic: str,
    *,
    tag: str,
    qos: int,
    plan: _Plan,
    in_flight: int,
    broker_pid: int | None,
    sequential: bool = True,
    probe: _EngineProbe | None = None,
) -> dict[str, LatencySeries]:
    """A warm-up, then the sequential and the sustained series on one requester connection."""
    inbox = bus.messages()
    await _series(
        bus,
        inbox,
        topic,
        requests(f"{tag}-warm", plan.warmup),
        label=f"{tag}-warm",
        qos=qos,
        in_flight=in_flight,
        broker_pid=broker_pid,
    )
    out: dict[str, LatencySeries] = {}
    if sequential:
        out["sequential"] = await _series(
            bus,
            inbox,
            topic,
            requests(f"{tag}-seq", plan.rfqs),
            label=f"{tag}-sequential",
            qos=qos,
            in_flight=1,
            broker_pid=broker_pid,
            probe=probe,
        )
    out["sustained"] = await _series(
        bus,
        inbox,
        topic,
        requests(f"{tag}-load", plan.rfqs),
        label=f"{tag}-sustained",
        qos=qos,
        in_flight=in_flight,
        broker_pid=broker_pid,
        probe=probe,
    )
    return out


# -- the echo floor ------------------------------------------------------------------------------


async def _echo(bus: Bus, reply_topic: str) -> None:
    """Republish every received payload to ``reply_topic``, a task per message (bounded)."""
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def reply(payload: bytes) -> None:
        try:
            await bus.publish(Outgoing(reply_topic, payload))
        finally:
            slots.release()

    async with asyncio.TaskGroup() as tg:
        async for _, payload in bus.messages():
            await slots.acquire()
            tg.create_task(reply(payload))


@contextlib.asynccontextmanager
async def _echo_pair(
    broker: BrokerProcess, *, qos: int, tag: str, tcp_nodelay: bool = True
) -> AsyncIterator[tuple[Bus, str]]:
    """A running echo responder and a connected requester: yields (requester, request topic)."""
    request_topic = f"bench/{tag}/rfq"
    reply_topic = f"bench/{tag}/quotes"
    responder = Bus(host=broker.host, port=broker.port, qos=qos, tcp_nodelay=tcp_nodelay)
    requester = Bus(host=broker.host, port=broker.port, qos=qos, tcp_nodelay=tcp_nodelay)
    async with responder, requester:
        await responder.subscribe(request_topic)
        await requester.subscribe(reply_topic)
        echo = asyncio.create_task(_echo(responder, reply_topic), name=f"bench-echo-{tag}")
        try:
            yield requester, request_topic
        finally:
            echo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await echo


async def _floor(
    broker: BrokerProcess, plan: _Plan, in_flight: int, *, qos: int, tag: str
) -> dict[str, LatencySeries]:
    """The echo's series at ``qos`` (a warm-up, sequential, sustained)."""
    async with _echo_pair(broker, qos=qos, tag=tag) as (requester, topic):
        return await _measure(
            requester,
            topic,
            tag=tag,
            qos=qos,
            plan=plan,
            in_flight=in_flight,
            broker_pid=broker.pid,
        )


# -- the engine ----------------------------------------------------------------------------------


def bench_config(journal: Path, path: Path = CONFIG_PATH) -> Config:
    """The demo configuration with the rate limit lifted and the journal at ``journal``."""
    config = load_config(path)
    quoting = msgspec.structs.replace(
        config.quoting, rate_limit_per_s=1_000_000, rate_limit_burst=1_000_000
    )
    return msgspec.structs.replace(
        config,
        quoting=quoting,
        journal=msgspec.structs.replace(config.journal, path=str(journal)),
    )


async def _engine(
    broker: BrokerProcess, config: Config, plan: _Plan, in_flight: int
) -> tuple[dict[str, LatencySeries], dict[str, Any]]:
    """The engine's series, and its journal's figures once it stopped (and closed it)."""
    ready = asyncio.Event()
    engine = Engine(
        config,
        feeds="sim",
        host=broker.host,
        port=broker.port,
        sim_interval_s=ENGINE_SIM_INTERVAL_S,
        on_ready=ready.set,
        console_port=0,  # served, as by `otc serve`, on a free port
        freeze_heap=True,  # as `otc serve`
    )
    task = asyncio.create_task(engine.run(), name="bench-engine")
    try:
        async with asyncio.timeout(_ENGINE_READY_TIMEOUT_S):
            await _first(ready.wait(), task)
        probe = _EngineProbe(engine)
        async with Bus(host=broker.host, port=broker.port) as requester:
            await requester.subscribe(QUOTES_TOPIC.format(client=CLIENT))
            series = await _measure(
                requester,
                RFQ_TOPIC.format(client=CLIENT),
                tag="engine",
                qos=1,
                plan=plan,
                in_flight=in_flight,
                broker_pid=broker.pid,
                probe=probe,
            )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    journal = engine.journal
    assert journal is not None
    return series, {
        "commits": journal.commits,
        "committed": journal.committed,
        "failed": journal.failed,
    }


class _EngineProbe:
    """Where a running engine's CPU goes: ``QuoteEngine.on_rfq`` timed on the loop's thread,
    and the journal's writer thread.

    ``on_rfq`` is wrapped on the engine's instance (the benchmark's own instrument, two clock
    reads per call): ``on_rfq_cpu`` is the loop thread's CPU time inside it (parse, checks,
    pricing, the journal hand-over; it suspends only under journal back-pressure), and
    ``on_rfq_wall`` its elapsed time, which also counts waits for the GIL while the writer
    thread holds it. ``journal_writer_cpu`` is that thread's CPU time (encoding rows, SQLite,
    the fsync's system time).
    """

    def __init__(self, engine: Engine) -> None:
        quotes = engine.quotes
        assert quotes is not None
        assert engine.journal is not None
        self._journal = engine.journal
        self._cpu = 0
        self._wall = 0
        on_rfq = quotes.on_rfq

        async def timed(client: str, payload: bytes) -> list[Outgoing]:
            wall, cpu = perf_counter_ns(), thread_time_ns()
            try:
                return await on_rfq(client, payload)
            finally:
                self._cpu += thread_time_ns() - cpu
                self._wall += perf_counter_ns() - wall

        quotes.on_rfq = timed  # type: ignore[method-assign]

    def totals(self) -> dict[str, int]:
        """Totals so far, ns (``journal_writer_cpu`` 0 where threads have no CPU clock)."""
        return {
            "on_rfq_cpu": self._cpu,
            "on_rfq_wall": self._wall,
            "journal_writer_cpu": self._journal.writer_cpu_ns() or 0,
        }


async def _first(awaitable: Awaitable[T], engine: asyncio.Task[None]) -> T:
    """Await ``awaitable``; if the engine task ends first, raise what ended it."""
    waiter = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({waiter, engine}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            engine.result()  # raises the engine's error
            raise RuntimeError("the engine stopped before it was ready")
        return waiter.result()
    finally:
        waiter.cancel()


def _journal_counts(path: Path) -> dict[str, int]:
    """Events per kind in the journal at ``path`` (read after the engine closed it)."""
    uri = path.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        rows = conn.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall()
    return {str(kind): int(count) for kind, count in rows}


# -- Nagle ---------------------------------------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _nagle_config(folder: Path) -> tuple[Path, int]:
    """Write our mosquitto configuration with ``set_tcp_nodelay false``: (file, port)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port("127.0.0.1")
    text = mosquitto_config(port=port, log_file=folder / "mosquitto.log")
    if "set_tcp_nodelay true" not in text:
        raise RuntimeError("the generated mosquitto configuration no longer sets TCP_NODELAY")
    config = folder / "nagle.conf"
    config.write_text(text.replace("set_tcp_nodelay true", "set_tcp_nodelay false"))
    return config, port


@contextlib.asynccontextmanager
async def _nagle_broker(folder: Path) -> AsyncIterator[BrokerProcess]:
    """A second mosquitto, configured as ours but with ``set_tcp_nodelay false``."""
    config, port = await asyncio.to_thread(_nagle_config, folder)
    async with start_broker(
        config_dir=folder, kind="mosquitto", config_file=config, port=port
    ) as broker:
        yield broker


async def _nagle_case(broker: BrokerProcess, *, tcp_nodelay: bool, tag: str, samples: int) -> Any:
    plan = _Plan(rfqs=samples, quick=True)
    plan.warmup = 3
    async with _echo_pair(broker, qos=1, tag=tag, tcp_nodelay=tcp_nodelay) as (bus, topic):
        got = await _measure(
            bus,
            topic,
            tag=tag,
            qos=1,
            plan=plan,
            in_flight=1,
            broker_pid=broker.pid,
            sequential=False,
        )
    return got["sustained"]  # in_flight=1: the sequential round trip


async def _nagle(broker: BrokerProcess, folder: Path, plan: _Plan) -> dict[str, LatencySeries]:
    """The QoS 1 echo round trip with TCP_NODELAY off on the clients and/or the broker."""
    samples = plan.nagle_samples
    out = {
        "clients_off_broker_on": await _nagle_case(
            broker, tcp_nodelay=False, tag="nagle-c", samples=samples
        )
    }
    if broker.kind == "mosquitto":
        async with _nagle_broker(folder) as nagle:
            out["clients_on_broker_off"] = await _nagle_case(
                nagle, tcp_nodelay=True, tag="nagle-b", samples=samples
            )
            out["clients_off_broker_off"] = await _nagle_case(
                nagle, tcp_nodelay=False, tag="nagle-bc", samples=samples
            )
    return out


# -- the report ----------------------------------------------------------------------------------


def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows, or not installed
        return None, "asyncio's default loop (uvloop is not installed)"
    return uvloop.new_event_loop, f"uvloop {_dist_version('uvloop')}"


def _mosquitto_version() -> str | None:
    path = find_mosquitto()
    if path is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603 (the installed broker, a fixed argument)
            [str(path), "-h"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (done.stdout + done.stderr).splitlines():
        if "version" in line:
            return line.rsplit("version", 1)[1].strip()
    return None


def machine() -> dict[str, Any]:
    """Platform, CPU, Python, and the versions of what is measured (the brokers' too)."""
    info = book_machine()
    versions: dict[str, str | None] = {
        dist: _dist_version(dist) for dist in ("otc", "aiomqtt", "paho-mqtt", "msgspec", "uvloop")
    }
    versions["mosquitto"] = _mosquitto_version()
    versions["amqtt"] = amqtt_version()
    info["versions"] = versions
    return info


def ratios(echo: dict[str, LatencySeries], engine: dict[str, LatencySeries]) -> dict[str, float]:
    """Engine over echo at the same QoS: p50 and p99 sequential, sustained throughput."""
    seq_e, seq_f = engine["sequential"], echo["sequential"]
    load_e, load_f = engine["sustained"], echo["sustained"]
    return {
        "p50": round(seq_e.percentile_ms(50) / seq_f.percentile_ms(50), 3),
        "p99": round(seq_e.percentile_ms(99) / seq_f.percentile_ms(99), 3),
        "throughput": round(load_e.rate_per_s / load_f.rate_per_s, 3),
        "sustained_p50": round(load_e.percentile_ms(50) / load_f.percentile_ms(50), 3),
        "sustained_p99": round(load_e.percentile_ms(99) / load_f.percentile_ms(99), 3),
    }


def goals_met(ratio: dict[str, float]) -> dict[str, bool]:
    return {
        "p50": ratio["p50"] <= GOALS["p50_max"],
        "p99": ratio["p99"] <= GOALS["p99_max"],
        "throughput": ratio["throughput"] >= GOALS["throughput_min"],
    }


_HEADER: Final = (
    f"{'':36}{'qos':>4}{'in flight':>10}{'n':>8}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}"
    f"{'max ms':>8}{'rt/s':>8}{'cpu us/rt':>10}{'broker':>7}\n"
)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _row(section: str, label: str, s: LatencySeries) -> str:
    data = s.latencies_ns
    top = f"{max(data) / 1e6:>8.3f}" if data else f"{'-':>8}"
    broker = None if s.broker_cpu_ns is None else s.cpu_us(s.broker_cpu_ns)
    line = (
        f"{section:10}{label:26}{s.qos:>4}{s.in_flight:>10}{s.answered:>8,}"
        f"{s.percentile_ms(50):>8.3f}{s.percentile_ms(90):>8.3f}{s.percentile_ms(99):>8.3f}"
        f"{top}{s.rate_per_s:>8,.0f}{_num(s.cpu_us(s.cpu_ns)):>10}{_num(broker):>7}\n"
    )
    if s.missing or s.unexpected:
        line += f"{'':10}! {s.missing:,} unanswered, {s.unexpected:,} unexpected replies\n"
    return line


def _parts_text(echo: dict[str, LatencySeries], engine: dict[str, LatencySeries]) -> str:
    """Where the engine's CPU goes per RFQ, and what the throughput goal leaves it."""
    modes = ("sequential", "sustained")

    def both(value: Callable[[LatencySeries], float | None]) -> str:
        return " / ".join(_num(value(engine[mode])) for mode in modes)

    def part(name: str) -> Callable[[LatencySeries], float | None]:
        return lambda s: None if s.parts is None else s.cpu_us(s.parts[name])

    echo_cpu = echo["sustained"].cpu_us(echo["sustained"].cpu_ns)
    engine_cpu = engine["sustained"].cpu_us(engine["sustained"].cpu_ns)
    text = (
        f"{'':10}engine's CPU per RFQ, us (sequential / sustained): on_rfq on the loop "
        f"{both(part('on_rfq_cpu'))} (elapsed {both(part('on_rfq_wall'))}), journal writer "
        f"thread {both(part('journal_writer_cpu'))};\n"
        f"{'':10}this process in all {both(lambda s: s.cpu_us(s.cpu_ns))}, the echo's "
        + " / ".join(_num(echo[mode].cpu_us(echo[mode].cpu_ns)) for mode in modes)
        + "\n"
    )
    if echo_cpu is not None and engine_cpu is not None:
        allowed = echo_cpu / GOALS["throughput_min"] - echo_cpu
        text += (
            f"{'':10}throughput >= {GOALS['throughput_min']:g}x leaves the engine about "
            f"{allowed:,.0f} us of this process's CPU per RFQ over the echo's {echo_cpu:,.0f} "
            f"(the process is the bottleneck); it uses {engine_cpu - echo_cpu:,.0f}\n"
        )
    return text


class _Round(msgspec.Struct, frozen=True):
    """One round: the QoS 1 echo, then the engine, and the ratios of the two."""

    echo: dict[str, LatencySeries]
    engine: dict[str, LatencySeries]
    journal: dict[str, Any]
    ratios: dict[str, float]


def _median_ratios(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each ratio's median over the rounds (one round: its ratios)."""
    return {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]}


def _engine_text(config: Config, engine: dict[str, LatencySeries], journal: dict[str, Any]) -> str:
    counts = journal["events"]
    replies: Counter[str] = Counter()
    for series in engine.values():
        replies.update(series.replies)
    events = sum(counts.values())
    return (
        f"{'':10}demo config (rate limit lifted), synthetic feeds stepping every "
        f"{ENGINE_SIM_INTERVAL_S * 1e3:.0f} ms, ladders every "
        f"{config.quoting.ladder_interval_ms} ms, SQLite journal (synchronous=FULL)\n"
        f"{'':10}replies: "
        + ", ".join(f"{n:,} {kind}s" for kind, n in sorted(replies.items()))
        + f"; RFQ mix: {', '.join(f'{sym} {side} {qty}' for sym, side, qty in RFQ_MIX)}\n"
        f"{'':10}journal: {counts.get('rfq', 0):,} RFQs and {counts.get('quote', 0):,} quotes "
        f"on disk for {journal['rfqs_sent']:,} RFQs sent (warm-up included); {events:,} events "
        f"in {journal['commits']:,} commits ({events / max(1, journal['commits']):.1f} per "
        f"commit); {journal['failed']} failed\n"
    )


def _ratios_text(ratio: dict[str, float], rounds: list[dict[str, float]]) -> str:
    def spread(key: str) -> str:
        if len(rounds) == 1:
            return ""
        values = [r[key] for r in rounds]
        return f"  (rounds: {min(values):.2f}-{max(values):.2f}x)"

    title = "engine / echo at QoS 1"
    if len(rounds) > 1:
        title += f", median of {len(rounds)} rounds (each: the echo, then the engine)"
    return (
        f"\nratios    {title}\n"
        f"{'':10}p50 sequential  {_verdict(ratio['p50'], GOALS['p50_max'], at_most=True)}"
        f"{spread('p50')}\n"
        f"{'':10}p99 sequential  {_verdict(ratio['p99'], GOALS['p99_max'], at_most=True)}"
        f"{spread('p99')}\n"
        f"{'':10}throughput      "
        f"{_verdict(ratio['throughput'], GOALS['throughput_min'], at_most=False)}"
        f"{spread('throughput')}\n"
        f"{'':10}under load: p50 {ratio['sustained_p50']:.2f}x, "
        f"p99 {ratio['sustained_p99']:.2f}x\n"
    )


def _verdict(ratio: float, goal: float, *, at_most: bool) -> str:
    met = ratio <= goal if at_most else ratio >= goal
    sign = "<=" if at_most else ">="
    return f"{ratio:.2f}x (goal {sign} {goal:g}x: {'met' if met else 'NOT met'})"


def run(
    *,
    rfqs: int = 10_000,
    in_flight: int = 64,
    out: TextIO | None = None,
    quick: bool = False,
    rounds: int = 1,
) -> dict[str, Any]:
    """Run the benchmark, print the report to ``out`` (stdout) and return the figures.

    Args:
        rfqs: round trips per series (sequential and sustained; echo and engine).
        in_flight: requests outstanding in the sustained series.
        rounds: how many times the QoS 1 echo and then the engine are measured, one right
            after the other (a fresh engine and journal each time); the ratios are the
            medians over the rounds, each round's are reported too. The QoS 0 echo and the
            Nagle cases run once.
        out: where the report goes; ``None`` is ``sys.stdout`` at call time.
        quick: a fast run for tests: 5 instead of 40 round trips per Nagle case (``rfqs`` is
            taken as given).

    Raises:
        otc.broker.BrokerError: no broker could be started.
    """
    if rfqs < 1:
        raise ValueError(f"rfqs must be positive, got {rfqs}")
    if in_flight < 1:
        raise ValueError(f"in_flight must be positive, got {in_flight}")
    if rounds < 1:
        raise ValueError(f"rounds must be positive, got {rounds}")
    write = (out if out is not None else sys.stdout).write
    factory, loop_name = loop_factory()
    info = machine()
    plan = _Plan(rfqs=rfqs, quick=quick, rounds=rounds)
    thresholds = gc.get_threshold()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="otc-bench-rfq-") as tmp,
            asyncio.Runner(loop_factory=factory) as runner,
        ):
            return runner.run(
                _main(write, plan, Path(tmp), info=info, in_flight=in_flight, loop_name=loop_name)
            )
    finally:  # the collector as it was for the caller (tune_gc changed it)
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def _main(
    write: Callable[[str], object],
    plan: _Plan,
    folder: Path,
    *,
    info: dict[str, Any],
    in_flight: int,
    loop_name: str,
) -> dict[str, Any]:
    versions = info["versions"]
    async with start_broker(config_dir=folder / "broker") as broker:
        if broker.kind == "mosquitto":
            broker_text = (
                f"mosquitto {versions['mosquitto'] or ''}".rstrip()
                + f" on {broker.host}:{broker.port}, its own process; generated config: "
                f"set_tcp_nodelay true, max_queued_messages {MAX_QUEUED_MESSAGES:,}"
            )
        else:
            broker_text = (
                f"amqtt {versions['amqtt'] or ''}".rstrip()
                + f" on {broker.host}:{broker.port}, its own process: {broker.notice}"
            )
        write(
            "otc bench rfq: RFQ -> quote round trips through a broker, next to a bare echo "
            "responder\n"
            f"machine   {info['platform']}; {info['cpu']}; {info['cpus']} CPUs; {info['python']}\n"
            "versions  "
            + ", ".join(f"{name} {v or 'not installed'}" for name, v in versions.items())
            + "\n"
            f"broker    {broker_text}\n"
            f"loop      {loop_name}; one process: the requester, the echo responder or the "
            "engine (feeds included)\n"
            f"method    {plan.rfqs:,} round trips per series after {plan.warmup:,} of warm-up; "
            f"sequential: 1 in flight, sustained: {in_flight} in flight;\n"
            "          round trip: the requester's publish -> the reply in its inbox "
            "(perf_counter_ns); TCP_NODELAY on every client socket;\n"
            "          cpu us/rt: this process's CPU time (all threads) per round trip; broker: "
            "the broker's;\n"
            "          garbage collector: set up as `otc serve` sets it (otc.app.tune_gc) for "
            "every series, the echo's too\n\n" + _HEADER
        )
        tune_gc()  # the process's, shared by the requester: the same for the floor
        floor0 = await _floor(broker, plan, in_flight, qos=0, tag="echo0")
        rounds: list[_Round] = []
        for n in range(1, plan.rounds + 1):
            tag = "" if plan.rounds == 1 else f"r{n} "
            floor1 = await _floor(broker, plan, in_flight, qos=1, tag=f"echo1-r{n}")
            for mode in ("sequential", "sustained"):
                section = "floor" if (n, mode) == (1, "sequential") else ""
                write(_row(section, f"{tag}echo {mode}", floor1[mode]))
            if n == 1:
                for mode in ("sequential", "sustained"):
                    write(_row("", f"{tag}echo {mode}", floor0[mode]))
            journal_path = folder / f"journal-{n}.sqlite"  # a fresh journal: nothing to restore
            config = bench_config(journal_path)
            engine, journal = await _engine(broker, config, plan, in_flight)
            for mode in ("sequential", "sustained"):
                section = "engine" if (n, mode) == (1, "sequential") else ""
                write(_row(section, f"{tag}RFQ -> quote {mode}", engine[mode]))
            write(_parts_text(floor1, engine))
            journal["events"] = await asyncio.to_thread(_journal_counts, journal_path)
            journal["rfqs_sent"] = sum(s.sent for s in engine.values()) + plan.warmup
            write(_engine_text(config, engine, journal))
            rounds.append(_Round(floor1, engine, journal, ratios(floor1, engine)))
        ratio = _median_ratios([r.ratios for r in rounds])
        write(_ratios_text(ratio, [r.ratios for r in rounds]))
        nagle = await _nagle(broker, folder / "nagle", plan)
    write(
        f"\nnagle     QoS 1 echo round trip, sequential, {plan.nagle_samples} round trips per "
        "case (the first row from above)\n"
    )
    first = rounds[0]
    write(_row("", "clients on,  broker on", first.echo["sequential"]))
    labels = {
        "clients_off_broker_on": "clients off, broker on",
        "clients_on_broker_off": "clients on,  broker off",
        "clients_off_broker_off": "clients off, broker off",
    }
    for key, series in nagle.items():
        write(_row("", labels[key], series))
    if broker.kind != "mosquitto":
        write(f"{'':10}(a broker without TCP_NODELAY needs mosquitto, which is not used)\n")
    return {
        "machine": info,
        "loop": loop_name,
        "broker": {"kind": broker.kind, "version": versions[broker.kind]},
        "params": {
            "rfqs": plan.rfqs,
            "in_flight": in_flight,
            "warmup": plan.warmup,
            "nagle_samples": plan.nagle_samples,
            "rounds": plan.rounds,
            "rfq_mix": [list(item) for item in RFQ_MIX],
            "sim_interval_s": ENGINE_SIM_INTERVAL_S,
        },
        "echo": {
            "qos1": {mode: s.figures() for mode, s in first.echo.items()},
            "qos0": {mode: s.figures() for mode, s in floor0.items()},
        },
        "engine": {mode: s.figures() for mode, s in first.engine.items()},
        "journal": first.journal,
        "ratios": ratio,
        "goals": dict(GOALS),
        "goals_met": goals_met(ratio),
        "rounds": [
            {
                "echo_qos1": {mode: s.figures() for mode, s in r.echo.items()},
                "engine": {mode: s.figures() for mode, s in r.engine.items()},
                "journal": r.journal,
                "ratios": r.ratios,
            }
            for r in rounds
        ],
        "nagle": {
            "clients_on_broker_on": first.echo["sequential"].figures(),
            **{key: s.figures() for key, s in nagle.items()},
        },
    }
