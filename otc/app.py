"""The engine: wires feeds -> books -> estimator -> pricing -> bus in one TaskGroup.

The only module that imports every layer. Before it serves, the engine rebuilds the state a
previous run left in the journal (positions, daily notionals, kill switches, disabled clients,
the quotes and rfq ids still remembered: :meth:`~otc.quoting.QuoteEngine.restore`), so that a
restart neither forgets a trade nor lifts a limit. :class:`Engine` runs until cancelled
(SIGINT/SIGTERM cancel it from :func:`otc.cli.run_async`), and on the way out publishes the
retained status ``down`` and closes the journal, which commits every event still queued. (A
fill is on disk before it is published; RFQs, quotes and rejects are published without waiting
for their commit, see :mod:`otc.quoting`.)

Tasks (all named, all owned by one :class:`asyncio.TaskGroup`):

* ``feeds``: the synthetic market (``feeds="sim"``) or one websocket connection per configured
  venue (``feeds="live"``), writing into the :class:`~otc.market.Market`'s books;
* ``bus``: the broker connection (the first must succeed; a lost one is reconnected, backing
  off, for as long as the engine runs), and per connection:

  * ``messages``: reads ``otc/v1/+/rfq``, ``otc/v1/+/accept`` and operator commands on
    ``otc/v1/control/+``; each message is handled in its own task, at most ``max_in_flight``
    at a time (back-pressure on the broker connection);
  * ``ladders``: the indicative ladder of each symbol, every ``ladder_interval_ms``;
  * ``status``: the retained ``otc/v1/status`` (``up`` once every symbol has a usable book);
* ``console``: the operator console's HTTP server (:mod:`otc.console`), when enabled; its
  commands go through :meth:`Engine.apply_control`, like those from the bus.
* ``recorder`` (with ``[journal] record_path``, ``otc serve --record FILE``): flushes the
  recording of every book event the market applies, in the order applied and with the receive
  timestamps the books carry (:class:`feeds.record.Recorder`, our ``otc-book-events`` format).
  Its header's ``source`` names the run id that prefixes the journal's quote ids. With the
  journal, it lets ``otc replay-journal`` reproduce every quote of the run. The feed only
  encodes each event into memory; compression and disk writes run in a worker thread every
  second; on the way out the rest is flushed and the file closed. A write error stops the
  recording, not the engine (logged, and :attr:`Engine.recorder` ``.error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Final, Literal

import msgspec

from otc.bus import Bus, BusError, PublicationRefused
from otc.clock import Clock, SystemClock
from otc.config import CLIENT_ID, RESERVED_IDS, Config
from otc.errors import OtcError
from otc.journal import JournalError, SqliteJournal, state_rows
from otc.market import Market, venue_state
from otc.model import decimal_text
from otc.protocol import (
    CONTROL_RESULT_TOPIC,
    STATUS_TOPIC,
    Code,
    Control,
    ControlResult,
    ProtocolError,
    Status,
    check_control,
    decode_control,
    wire_decimal,
)
from otc.quoting import Outgoing, QuoteEngine, Restored

if TYPE_CHECKING:
    from feeds.record import Recorder
    from feeds.sim import SyntheticMarket
    from otc.console import ConsoleServer

__all__ = ["GC_MIDDLE_THRESHOLD", "SIM_MIDS", "Engine", "FeedMode", "sim_markets", "tune_gc"]

log = logging.getLogger(__name__)

FeedMode = Literal["sim", "live"]

#: Starting mids of the synthetic market, by base asset (quote currency per unit).
SIM_MIDS = {"BTC": Decimal(64000), "ETH": Decimal(3200), "SOL": Decimal(150)}

#: Reconnection to a lost broker: the first attempt after this long, doubling up to the max.
_RECONNECT_FIRST_S = 0.1
_RECONNECT_MAX_S = 5.0
#: A connection that lasted this long resets the back-off.
_RECONNECT_STABLE_S = 10.0
#: Messages received and not yet handled, at most: beyond, a flood's RFQs are dropped (the bus
#: counts them, logging at the 1st, 2nd, 4th... drop) rather than held in memory without end
#: (about 500 bytes each).
_MAX_QUEUED_MESSAGES = 20_000
#: Topics whose refused publications :attr:`Engine.refused` counts at most (then starts over).
_REFUSED_TOPICS = 1024
#: How long the shutdown waits for the broker to acknowledge status "down".
_STATUS_DOWN_WAIT_S = 1.0

RFQ_SUBSCRIPTION = "otc/v1/+/rfq"
ACCEPT_SUBSCRIPTION = "otc/v1/+/accept"
CONTROL_SUBSCRIPTION = "otc/v1/control/+"


#: Young collections between two of the middle generation (CPython's default is 10).
GC_MIDDLE_THRESHOLD: Final = 100


def tune_gc() -> None:
    """Set the cyclic garbage collector up for serving, once the engine is up.

    Everything that exists then (modules, configuration, connections, the first books) is
    moved out of its reach (:func:`gc.freeze`), so that full collections walk only what was
    allocated since. Then the middle generation is collected every
    :data:`GC_MIDDLE_THRESHOLD` young collections instead of every 10: most of what survives
    one young collection is an RFQ or accept in flight (tasks, futures, coroutines), gone by
    the next; measured over 20,500 RFQs through `otc bench rfq`'s harness, middle collections
    67 -> 6-7 and full ones 7 -> 1, their time 93-130 -> 21-24 ms in all. The young
    generation's threshold is kept: raised tenfold, each young collection took 2-2.5 ms
    instead of 0.16-0.27 ms, for little less in all.
    """
    gc.collect()
    gc.freeze()
    young, _, old = gc.get_threshold()
    gc.set_threshold(young, GC_MIDDLE_THRESHOLD, old)


def sim_markets(config: Config, market: Market) -> list[SyntheticMarket]:
    """The synthetic market of each configured symbol (seeded by its position in the config),
    on the venues its consolidated book in ``market`` takes, from :data:`SIM_MIDS`."""
    from feeds.sim import SyntheticMarket, default_venues

    markets = []
    for seed, inst in enumerate(config.instruments, start=1):
        consolidated = market.books[inst.symbol]
        venues = [v for v in default_venues() if v.name in consolidated.venues]
        if not venues:  # the book would drop every delta of any other venue
            continue
        mid = SIM_MIDS.get(inst.base, Decimal(100))
        markets.append(SyntheticMarket(inst.symbol, inst.scale, mid=mid, venues=venues, seed=seed))
    return markets


class Engine:
    """One running quoting service.

    Its journal (``config.journal.path``) holds every client message and answer; with
    ``config.journal.record_path`` set it also records every book event its market applies
    (``otc serve --record FILE``), which is what ``otc replay-journal`` needs to reproduce every
    quote of the run exactly.

    Args:
        config: the whole configuration.
        feeds: ``"sim"`` for the synthetic market, ``"live"`` for the venues' websockets.
        host, port, username, password, tls: broker address (default: ``config.broker``).
        clock: wall and monotonic time (a fake one in tests): stamps on the first, every
            duration (quote lifetimes, book ages, the rate limit) on the second.
        sim_interval_s: pause between synthetic market steps.
        max_in_flight: client messages handled concurrently.
        on_ready: called once the status ``up`` has been published.
        console: serve the operator console (default: ``[console] enabled``).
        console_port: its port (default: ``[console] port``; 0: a free one).
        console_token: its operator token (default: :func:`otc.console.resolve_token`).
        freeze_heap: once up, set the process's cyclic garbage collector up for serving
            (:func:`tune_gc`: the start-up heap frozen, the middle generation collected less
            often): ``otc serve`` and ``otc demo`` do, as the process's owner.
    """

    def __init__(
        self,
        config: Config,
        *,
        feeds: FeedMode = "sim",
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool | None = None,
        clock: Clock | None = None,
        sim_interval_s: float = 0.1,
        max_in_flight: int = 256,
        on_ready: Callable[[], None] | None = None,
        console: bool | None = None,
        console_port: int | None = None,
        console_token: str | None = None,
        freeze_heap: bool = False,
    ) -> None:
        self.config = config
        self.freeze_heap = freeze_heap
        self.feed_mode = feeds
        broker = config.broker
        self.host = host or broker.host
        self.port = port or broker.port
        self.username = username if username is not None else broker.username
        self.password = password if password is not None else broker.password
        self.tls = broker.tls if tls is None else tls
        self.clock = clock or SystemClock()
        self.sim_interval_s = sim_interval_s
        self.max_in_flight = max_in_flight
        self.on_ready = on_ready
        self.market = Market(config, clock=self.clock)
        self.connections: list[object] = []
        self.quotes: QuoteEngine | None = None
        #: The journal while running (and after: its ``commits``, ``committed``, ``failed``).
        self.journal: SqliteJournal | None = None
        self.console = config.console.enabled if console is None else console
        self.console_port = config.console.port if console_port is None else console_port
        self.console_token = console_token
        #: The console's address (``http://host:port/``) once it listens.
        self.console_url: str | None = None
        #: Prefix of this run's quote and trade ids (also in the recording's header).
        self.run_id = uuid.uuid4().hex[:10]
        #: The book event recording (``[journal] record_path``), or None; kept after the run
        #: for its counts (``recorded``, ``flushed``, ``dropped``) and ``error``.
        self.recorder: Recorder | None = None
        #: What was rebuilt from the journal at start-up (None until then).
        self.restored: Restored | None = None
        #: Times the engine connected to the broker again after losing it.
        self.reconnects = 0
        #: Publications the broker refused (MQTT 5), by topic (at most ``_REFUSED_TOPICS``).
        self.refused: dict[str, int] = {}
        self._announced = False

    def _status(self, state: Literal["up", "down"]) -> Outgoing:
        venues: dict[str, str] = {}
        now_ns = self.clock.now_ns()
        books = self.market.books.values()
        for conn in self.connections:
            health = conn.health()  # type: ignore[attr-defined]
            venues[health.venue] = venue_state(books, health.venue, health.state, now_ns)
        status = Status(
            state=state,
            ts_ms=now_ns // 1_000_000,
            symbols=sorted(self.market.books),
            venues=venues,
        )
        return Outgoing(STATUS_TOPIC, msgspec.json.encode(status), retain=True)

    async def run(self) -> None:
        """Serve until cancelled."""
        sock = None
        if self.console:  # bound first: a busy port fails at start-up, before anything runs
            from otc.console import listen, resolve_token, url_of

            if self.console_token is None:
                self.console_token, _ = resolve_token(self.config)
            sock = listen(self.config.console.host, self.console_port)
            self.console_url = url_of(sock)
        try:
            await self._run(sock)
        finally:
            if sock is not None:
                sock.close()

    async def _run(self, console_sock: socket.socket | None) -> None:
        config = self.config
        async with (
            self._recording() as recorder,
            SqliteJournal(config.journal.path) as journal,
            self._connect() as first,  # the first connection must succeed: a clear error if not
        ):
            self.journal = journal
            link = _Link(first)
            server: ConsoleServer | None = None
            if console_sock is None:
                self.quotes = QuoteEngine(
                    config, self.market, journal, self.clock, run_id=self.run_id
                )
            else:
                server = self._console(journal, link, console_sock)
            await self._restore(journal)
            try:
                async with asyncio.TaskGroup() as tg:
                    if recorder is not None:
                        tg.create_task(recorder.run(), name="recorder")
                    tg.create_task(self._feeds(tg), name="feeds")
                    tg.create_task(self._broker(link), name="bus")
                    if server is not None:
                        tg.create_task(server.serve(), name="console")
            finally:
                log.info("engine stopping: status down, then the journal")
                if link.bus is not None:
                    # Briefly: a broker that does not acknowledge must not hold the shutdown for
                    # aiomqtt's 10 s (the last will says "down" all the same).
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(_STATUS_DOWN_WAIT_S):
                            await asyncio.shield(link.bus.publish(self._status("down")))
                if link.bus is not None and link.bus is not first:
                    await _close(link.bus)

    def _connect(self) -> Bus:
        """A broker connection (enter it) with the last will ``down``."""
        return Bus(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            tls=self.tls,
            client_id=self.config.broker.client_id,
            will=self._status("down"),
            max_queued=_MAX_QUEUED_MESSAGES,
            keepalive=self.config.broker.keepalive_s,
            protocol=self.config.broker.mqtt_version,
        )

    async def _broker(self, link: _Link) -> None:
        """Serve the protocol over the broker connection; when it breaks, reconnect and serve
        again, for as long as the engine runs.

        While the broker is away nothing can reach the engine, which keeps its books, journal
        and console; the broker publishes the last will (status ``down``) for it. Reconnection
        attempts back off from 0.1 s to 5 s, each logged; once connected again the engine
        subscribes again and publishes status ``up``. A message handled when the connection
        broke may have lost its reply: a quote is then never seen (harmless), and a fill is
        committed before it is published, so the client's repeated accept gets it.

        The back-off starts again from 0.1 s only after a connection lasted
        ``_RECONNECT_STABLE_S``: a connection the broker keeps dropping (another client
        connecting with the engine's ``[broker] client_id`` takes the session over) is retried
        ever more slowly, not ten times a second, and the log says what to check.
        """
        delay = _RECONNECT_FIRST_S
        loop = asyncio.get_running_loop()
        while True:
            bus = link.bus
            if bus is None:
                try:
                    bus = await self._connect().__aenter__()
                except BusError as exc:
                    log.warning("broker unreachable (%s); next attempt in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, _RECONNECT_MAX_S)
                    continue
                link.bus = bus
                self.reconnects += 1
                log.warning("reconnected to the broker at %s", bus.where)
            connected = loop.time()
            try:
                await bus.subscribe(RFQ_SUBSCRIPTION, ACCEPT_SUBSCRIPTION, CONTROL_SUBSCRIPTION)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._serve(bus, tg), name="messages")
                    tg.create_task(self._ladders(bus), name="ladders")
                    tg.create_task(self._announce(bus), name="status")
            except* BusError as lost:
                log.warning("broker connection lost: %s", lost.exceptions[0])
            link.bus = None
            await _close(bus)
            if loop.time() - connected >= _RECONNECT_STABLE_S:
                delay = _RECONNECT_FIRST_S
            else:
                # Who else could hold the session: a client with our id or, on a broker taking
                # the user name as client id (the shipped production one), with our user name.
                user = "" if self.username is None else f" or as user {self.username!r}"
                log.warning(
                    "the connection lasted %.1f s; next attempt in %.1f s (is another client "
                    "connected with client id %r%s?)",
                    loop.time() - connected,
                    delay,
                    self.config.broker.client_id,
                    user,
                )
                await asyncio.sleep(delay)
                delay = min(2 * delay, _RECONNECT_MAX_S)

    async def _restore(self, journal: SqliteJournal) -> None:
        """Rebuild the previous runs' state from the journal before the first message."""
        assert self.quotes is not None
        since = self.clock.now_ns() - self.quotes.remembered_ns
        stop = threading.Event()
        reading = asyncio.ensure_future(
            asyncio.to_thread(
                state_rows, journal.path, since_ns=since, clients=self.quotes.clients, stop=stop
            )
        )
        try:
            rows = await asyncio.shield(reading)
        except asyncio.CancelledError:
            # Stopped while reading (seconds for a million fills): the read gives up too,
            # rather than go on in its thread and hold the process's exit until it is done.
            stop.set()
            await asyncio.wait({reading})
            if not reading.cancelled():
                reading.exception()  # "interrupted": nobody needs the rows now
            raise
        try:
            restored = self.quotes.restore(rows)
        except JournalError:
            raise
        except OtcError as exc:  # a row not as the engine writes it: start from nothing else
            raise JournalError(f"cannot restart from journal {journal.path}: {exc}") from exc
        await self.quotes.flush_controls()
        self.restored = restored
        if restored.anything:
            log.info(
                "restored from %s: %d fills (%d of unconfigured symbols skipped), positions %s, "
                "halted %s, disabled clients %s, %d remembered quotes (%d filled), %d rfq ids",
                journal.path,
                restored.fills,
                restored.skipped_fills,
                {a: str(p) for a, p in restored.positions.items()},
                ["all"] * restored.halted_all + restored.halted,
                restored.disabled,
                restored.quotes,
                restored.filled_quotes,
                restored.rfq_ids,
            )

    def _console(self, journal: SqliteJournal, link: _Link, sock: socket.socket) -> ConsoleServer:
        """The quote engine, observed by the console, and the console's server."""
        from otc.console import Activity, Console, ConsoleServer, ObservedJournal
        from otc.console.views import BrokerLink

        activity = Activity(
            self.config.console.blotter_size,
            clients=[c.id for c in self.config.clients],
            clock=self.clock,
        )
        self.quotes = QuoteEngine(
            self.config,
            self.market,
            ObservedJournal(journal, activity.record),
            self.clock,
            run_id=self.run_id,
        )

        async def control(operator: str, command: Control) -> ControlResult:
            result = await self.apply_control(operator, command)
            topic = CONTROL_RESULT_TOPIC.format(operator=operator)
            bus = link.bus
            if bus is None:
                log.warning("control result not published (no broker connection): %s", result)
            else:
                try:
                    await bus.publish(Outgoing(topic, msgspec.json.encode(result)))
                except BusError as exc:  # applied and journaled all the same
                    log.warning("control result not published: %s", exc)
            return result

        assert self.console_token is not None
        console = Console(
            self.config,
            token=self.console_token,
            market=self.market,
            quotes=self.quotes,
            activity=activity,
            clock=self.clock,
            control=control,
            feeds=lambda: [c.health() for c in self.connections],  # type: ignore[attr-defined]
            broker=lambda: BrokerLink(
                connected=link.bus is not None,
                address=f"{self.host}:{self.port}",
                reconnects=self.reconnects,
            ),
        )
        return ConsoleServer(console, sock)

    @contextlib.asynccontextmanager
    async def _recording(self) -> AsyncIterator[Recorder | None]:
        """The recorder of ``[journal] record_path`` (None when unset); the file is created
        first, so a bad path stops the engine before it connects (``RecordError``)."""
        path = self.config.journal.record_path
        if path is None:
            yield None
            return
        from feeds.record import Recorder

        recorder = Recorder(
            path,
            scales={symbol: book.scale for symbol, book in self.market.books.items()},
            source=f"otc engine run {self.run_id} ({self.feed_mode} feeds)",
            created_ns=self.clock.now_ns(),
        )
        async with recorder:
            self.recorder = recorder
            yield recorder

    # -- tasks ---------------------------------------------------------------------------------

    async def _announce(self, bus: Bus) -> None:
        """Publish ``up`` once every symbol has a usable book, then refresh it every second."""
        while not all(  # noqa: ASYNC110 - books are written by the feed tasks, polled here
            book.view(self.clock.now_ns()).mid2 is not None
            for book in self.market.books.values()
            if book.venues
        ):
            await asyncio.sleep(0.05)
        await self._publish(bus, self._status("up"))
        if not self._announced:  # not again after a reconnection
            self._announced = True
            log.info("engine up")
            if self.freeze_heap:
                tune_gc()
            if self.on_ready is not None:
                self.on_ready()
        while True:
            await asyncio.sleep(1.0)
            await self._publish(bus, self._status("up"))

    async def _feeds(self, tg: asyncio.TaskGroup) -> None:
        if self.feed_mode == "sim":
            await self._sim_feed()
        else:
            self._live_feeds(tg)

    async def _sim_feed(self) -> None:
        """The synthetic market: the venues each symbol's book consolidates, nothing else.

        Each venue's event of a step is computed (about 55 us for one venue) and applied on its
        own turn of the loop, so that RFQs are served in between rather than queued behind a
        whole step.
        """
        from feeds.sim import SimFeed

        feed = SimFeed(
            sim_markets(self.config, self.market),
            interval_s=self.sim_interval_s,
            clock_ns=self.clock.now_ns,
        )
        apply = self.market.apply
        record = self.recorder.record if self.recorder is not None else None
        async for event in feed.events():
            apply(event)
            if record is not None:
                record([event])
            await asyncio.sleep(0)

    def _live_feeds(self, tg: asyncio.TaskGroup) -> None:
        from feeds.connection import FeedConnection
        from feeds.registry import VENUES, adapter_class

        for venue in self.config.venues:
            if not venue.enabled or venue.name not in VENUES:
                continue
            names = self.market.venue_symbols(venue.name)
            if not names:
                continue
            scales = {ours: self.market.books[ours].scale for ours in names.values()}
            adapter = adapter_class(venue.name)(symbols=names, scales=scales)
            self.market.bind(adapter)  # type: ignore[arg-type]
            record = self.recorder.record if self.recorder is not None else None
            conn = FeedConnection(adapter, sorted(names), on_events=record)
            self.connections.append(conn)
            tg.create_task(conn.run(), name=f"feed-{venue.name}")

    async def _serve(self, bus: Bus, tg: asyncio.TaskGroup) -> None:
        slots = asyncio.Semaphore(self.max_in_flight)
        # A retained RFQ, accept or command is a replay of one handled when it was sent.
        async for topic, payload in bus.messages(retained=False):
            parts = topic.split("/")
            if len(parts) != 4 or parts[0] != "otc" or parts[1] != "v1":
                continue
            if parts[2] == "control":  # otc/v1/control/{operator}
                client, kind = parts[3], "control"
            else:
                client, kind = parts[2], parts[3]
                if kind not in ("rfq", "accept"):
                    continue
            if not CLIENT_ID.fullmatch(client) or client in RESERVED_IDS:
                # "otc/v1//rfq", a NUL: no topic to answer on that a client could read;
                # "otc/v1/ladder/rfq" would be answered on a ladder topic every client reads.
                continue
            await slots.acquire()
            tg.create_task(self._handle(bus, slots, client, kind, payload), name=f"{kind}-{client}")
        raise BusError(bus.where, "the broker ended the session")  # reconnect, as for a break

    async def _handle(
        self, bus: Bus, slots: asyncio.Semaphore, client: str, kind: str, payload: bytes
    ) -> None:
        assert self.quotes is not None
        try:
            if kind == "rfq":
                out = await self.quotes.on_rfq(client, payload)
            elif kind == "accept":
                out = await self.quotes.on_accept(client, payload)
            else:
                out = [await self.control(client, payload)]
            for message in out:
                await self._publish(bus, message)
        finally:
            slots.release()

    async def _publish(self, bus: Bus, message: Outgoing) -> None:
        """Publish one of the engine's messages; one the broker refuses is :meth:`_log_refusal`."""
        try:
            await bus.publish(message)
        except PublicationRefused as exc:
            self._log_refusal(exc)

    def _log_refusal(self, exc: PublicationRefused) -> None:
        """A publication the broker refused (MQTT 5: a reason code from 0x80 in its
        acknowledgement, as when the ACL denies the engine's user the topic) is lost: logged as
        an error naming the topic, at the 1st, 2nd, 4th... refusal of the topic, and the engine
        serves on (the connection is sound, and connecting again would not change the broker's
        answer). Counted in :attr:`refused`."""
        refused = self.refused
        if exc.topic not in refused and len(refused) >= _REFUSED_TOPICS:
            refused.clear()  # bounded: the counts only space the log lines out
        count = refused[exc.topic] = refused.get(exc.topic, 0) + 1
        if count & (count - 1) == 0:
            user = "" if self.username is None else f" {self.username!r}"
            log.error(
                "%s: the message is lost (%d so far on this topic); does the broker's ACL let "
                "the engine's user%s write it?",
                exc,
                count,
                user,
            )

    async def control(self, operator: str, payload: bytes) -> Outgoing:
        """Apply an operator command; the result goes to ``otc/v1/control/{operator}/result``.

        Commands take effect for the next message handled, and are journaled (kind
        ``control``, with the operator) before the result is published.
        """
        topic = CONTROL_RESULT_TOPIC.format(operator=operator)
        try:
            control: Control | None = decode_control(payload)
        except ProtocolError as exc:
            control, problem = None, exc.reason
        if operator not in self.config.broker.operators:
            result = ControlResult(
                ok=False,
                command="?",
                detail=f"{operator} is not an operator (config [broker] operators): "
                "nothing was changed",
                request_id=None if control is None else control.request_id,
            )
            log.warning("control refused: %s", result.detail)
        elif control is None:
            result = ControlResult(ok=False, command="?", detail=problem)
            log.info("control by %s: %s", operator, result)
        else:
            result = await self.apply_control(operator, control)
        return Outgoing(topic, msgspec.json.encode(result))

    async def apply_control(self, operator: str, control: Control) -> ControlResult:
        """Apply a decoded operator command (from the bus or the console), journaled with the
        operator before it returns; a refused command is a result with ``ok`` false. A command
        applied that the journal could not record is ``ok``, its detail saying so."""
        assert self.quotes is not None
        command = control.command
        request_id = control.request_id
        try:
            check_control(control)
            if control.command in ("halt", "resume"):
                halted = control.command == "halt"
                self.quotes.set_halted(control.symbol, halted, operator=operator)
                if control.symbol is None and not halted:  # resume everything: per-symbol too
                    for symbol in self.market.books:
                        if self.quotes.halted(symbol):
                            self.quotes.set_halted(symbol, False, operator=operator)
                detail = f"{control.symbol or 'all symbols'} {'halted' if halted else 'resumed'}"
                if control.symbol is not None and not halted and self.quotes.halted(control.symbol):
                    detail += ", but the global halt still stops it (resume with no symbol)"
            elif control.command == "client":
                if control.client is None or control.enabled is None:
                    raise OtcError("client needs 'client' and 'enabled'")
                self.quotes.set_client_enabled(control.client, control.enabled, operator=operator)
                detail = f"{control.client} {'enabled' if control.enabled else 'disabled'}"
            else:
                if control.tier is None or control.spread_bps is None:
                    raise OtcError("spread needs 'tier' and 'spread_bps'")
                spread = wire_decimal(
                    control.spread_bps, "spread_bps", Code.INVALID_MESSAGE, zero=True
                )
                self.quotes.set_tier_spread(control.tier, spread, operator=operator)
                detail = f"tier {control.tier} spread {decimal_text(spread)} bps"
            try:
                await self.quotes.flush_controls()
            except JournalError as exc:
                # In effect all the same (a halt must not wait for a disk); the event stays
                # queued and is journaled before anything else once the journal takes writes.
                log.error("control by %s applied but not journaled: %s", operator, exc)
                detail += (
                    f"; in effect, but not yet journaled ({exc}): it is written when the journal "
                    "recovers, and lost if the engine stops before"
                )
            result = ControlResult(ok=True, command=command, detail=detail, request_id=request_id)
        except ProtocolError as exc:
            result = ControlResult(
                ok=False, command=command, detail=exc.reason, request_id=request_id
            )
        except OtcError as exc:
            result = ControlResult(
                ok=False, command=command, detail=str(exc), request_id=request_id
            )
        log.info("control by %s: %s", operator, result)
        return result

    async def _ladders(self, bus: Bus) -> None:
        """Publish each symbol's ladder every ``ladder_interval_ms`` when anything it is priced
        from changed; the first round of a connection publishes every ladder (a broker that
        restarted lost the retained ones, and a ladder cut off by the lost connection was
        never published)."""
        assert self.quotes is not None
        interval = self.config.quoting.ladder_interval_ms / 1e3
        force = True
        while True:
            await asyncio.sleep(interval)
            for symbol in self.market.books:
                steps = self.quotes.ladder_steps(symbol, force=force)
                while True:
                    try:
                        next(steps)
                    except StopIteration as done:
                        ladder = done.value
                        break
                    await asyncio.sleep(0)  # serve what arrived while the band was priced
                if ladder is not None:
                    await self._publish(bus, ladder)
            force = False


class _Link:
    """The engine's current broker connection: ``None`` while it reconnects."""

    __slots__ = ("bus",)

    def __init__(self, bus: Bus) -> None:
        self.bus: Bus | None = bus


async def _close(bus: Bus) -> None:
    """Leave a connection that broke or that the engine is done with, quietly."""
    with contextlib.suppress(BusError):
        await bus.__aexit__(None, None, None)
