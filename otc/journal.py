"""Durable event log: every RFQ, quote, reject, accept and fill, one row per event.

The engine records through the :class:`Journal` protocol, in one of two ways:

* ``await journal.append(event)`` returns once the event is **committed** (with
  :class:`SqliteJournal`'s default ``synchronous=FULL``: on disk, through a power cut).
* ``await journal.submit(event)`` returns once the event is **queued**, before it is committed:
  it waits only while the queue is full (back-pressure). The event is committed with the next
  group commit, normally within a few milliseconds (:class:`SqliteJournal`'s
  ``submit_delay_ms`` plus one commit); a crash of the process or the machine before that loses
  it. The engine submits RFQs, quotes, rejects, accepts and accept rejects, and publishes a
  quote without waiting for its commit: a quote is not a trade. The returned :data:`Receipt`
  completes when the event is committed, or fails with :class:`JournalError`; a submitted
  event that could not be recorded is also logged (``ERROR``) and counted in ``failed``,
  whether or not anyone awaits its receipt: never silently lost. A fill is submitted
  ``urgent`` (committed at once, like an append) and published only once its receipt
  completed: handed over before the engine's next step, and still decided by the journal
  when the accept waiting for it is cancelled.

Appended and submitted events share one queue to one writer, so they are committed in the order
they were handed over: once a fill's receipt completed, every event queued before the fill (its
quote, the accept) has been committed or has failed (and was reported). :class:`SqliteJournal`
is the production implementation (SQLite in WAL mode), :class:`MemoryJournal` the one tests use.
The CLI reads a journal file with :func:`recent`, :func:`export` and :func:`export_file` and
prints activity with :func:`format_blotter`; a restarting engine rebuilds its state from
:func:`state_rows`.

Schema (one table, ``events``; ``PRAGMA user_version`` = 1)::

    id           INTEGER PRIMARY KEY   commit order
    ts_ns        INTEGER               when the event happened (the engine's clock)
    recorded_ns  INTEGER               when the journal accepted it (``clock_ns`` at append/submit)
    kind         TEXT                  one of KINDS: rfq, quote, reject, accept, fill, ...
    client       TEXT
    symbol       TEXT                  from the payload ("" when it names none, e.g. an accept)
    rfq_id, quote_id, trade_id  TEXT   "" when not applicable
    payload      TEXT                  JSON; every Decimal as plain decimal text, never a float

Indexes: ``(client, ts_ns)``, ``(quote_id)``, ``(client, rfq_id)``, and a partial one on the
fills and controls (``events_state``), which a restarting engine reads in full.

``symbol`` is not in the shared interface: it is derived from the payload at append time so the
blotter can filter by symbol without parsing JSON. Readers resolve the symbol of rows that name
none (accepts, rejects) through the quote or RFQ they refer to.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import errno
import fcntl
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Protocol, Self, TextIO

import msgspec

from otc.errors import OtcError
from otc.files import replaced
from otc.model import decimal_text, plain, printable

__all__ = [
    "KINDS",
    "Journal",
    "JournalClosed",
    "JournalError",
    "JournalEvent",
    "JournalRow",
    "MemoryJournal",
    "Receipt",
    "SqliteJournal",
    "export",
    "export_file",
    "format_blotter",
    "recent",
    "state_rows",
]

log = logging.getLogger(__name__)

#: Completes when a submitted event is committed, or fails with a :class:`JournalError`.
Receipt = asyncio.Future[None]

#: Every kind of event the journal records.
KINDS: Final = frozenset({"rfq", "quote", "reject", "accept", "fill", "accept_reject", "control"})


class JournalEvent(msgspec.Struct, frozen=True, gc=False):  # gc=False: see PriceExplanation
    kind: str  # "rfq" | "quote" | "reject" | "accept" | "fill" | "accept_reject" | "control"
    client: str
    ts_ns: int
    rfq_id: str = ""
    quote_id: str = ""
    trade_id: str = ""
    # the wire message (as plain JSON builtins) or, for quotes, the quote + its explanation
    # (PriceExplanation structs, converted when the event is encoded); Decimals anywhere are
    # written as plain text
    payload: dict[str, object] = {}


class Journal(Protocol):
    """Where the engine records its events; see the module docstring for what is durable when."""

    async def append(self, event: JournalEvent) -> None:  # returns once durably committed
        ...

    async def submit(self, event: JournalEvent, *, urgent: bool = False) -> Receipt:
        """Queue ``event`` behind everything handed over before it; returns once queued.

        Waits only while the journal's queue is full. The receipt completes at commit (or
        fails with :class:`JournalError`); failures are logged and counted by the journal.
        Raises at once (and queues nothing) for a closed journal or an unknown kind; a payload
        that cannot be encoded fails the receipt. ``urgent``: commit without waiting to gather
        more events, as for an append (a fill whose caller awaits the receipt).
        """
        ...

    async def aclose(self) -> None: ...


class JournalError(OtcError):
    """An event could not be recorded or a journal file could not be read.

    Raised to every caller whose event was in a failed transaction (the cause is chained: the
    ``sqlite3.Error``), when a journal file cannot be opened, and for a journal that is closed.
    """


class JournalClosed(JournalError):
    """``append`` on a journal that is closed (or closing): the event was not recorded."""


def _check_kind(event: JournalEvent) -> None:
    if event.kind not in KINDS:
        raise ValueError(
            f"unknown journal event kind {event.kind!r}; expected one of {sorted(KINDS)}"
        )


def _encode_payload(event: JournalEvent) -> bytes:
    """Payload JSON with every Decimal as plain text; raises if the event is malformed."""
    _check_kind(event)
    return _payload_encoder.encode(_json_ready(event.payload))


_payload_encoder: Final = msgspec.json.Encoder()
_JSON_SCALARS: Final = (str, int, float, bool, type(None))
#: Exact types passed through as they are (subclasses take the general path).
_PASS: Final = frozenset(_JSON_SCALARS)


def _decimal_text(value: Decimal) -> str:
    """:func:`otc.model.decimal_text`, faster: ``str()`` unless it would print an exponent.

    ``str(value)`` is positional (the digits of ``format(value, "f")``) unless the exponent is
    positive or the value is below 1e-6; only those go through ``decimal_text``.
    """
    text = str(value)
    if "E" in text:
        return decimal_text(value)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _json_ready(value: object) -> object:
    """``value`` with every Decimal as plain text (:func:`otc.model.plain`, but fast).

    Payloads are JSON builtins and Decimals (a quote's explanation holds a few dozen), walked
    here directly, exact types first and scalars inline; anything else (a subclass, a Struct,
    an enum) goes through :func:`_json_ready_general`.
    """
    kind = type(value)
    if kind is dict:
        out: dict[object, object] = {}
        for key, item in value.items():  # type: ignore[attr-defined]
            item_kind = type(item)
            if item_kind in _PASS:
                out[key] = item
            elif item_kind is Decimal:
                out[key] = _decimal_text(item)
            else:
                out[key] = _json_ready(item)
        return out
    if kind in _PASS:
        return value
    if kind is Decimal:
        return _decimal_text(value)  # type: ignore[arg-type]
    if kind is list or kind is tuple:
        return [_json_ready(item) for item in value]  # type: ignore[attr-defined]
    return _json_ready_general(value)


def _json_ready_general(value: object) -> object:
    """:func:`_json_ready` for structs (a quote's explanation is journaled as the
    :class:`~otc.pricing.PriceExplanation` structs themselves, and converted here, by the
    writer thread) and subclasses of the builtins; :func:`plain` for everything else, which
    also rejects what JSON cannot hold."""
    if isinstance(value, msgspec.Struct):
        return _json_ready(msgspec.to_builtins(value, builtin_types=(Decimal,)))
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    return plain(value)


def _lookup(payload: dict[str, object], kind: str, name: str) -> object:
    """``payload[name]``, or ``payload[kind][name]`` for nested payloads (``{"quote": {...}}``)."""
    if name in payload:
        return payload[name]
    nested = payload.get(kind)
    if isinstance(nested, dict):
        return nested.get(name)
    return None


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


class MemoryJournal:
    """In-memory :class:`Journal` for tests: ``events`` in append order.

    It rejects what :class:`SqliteJournal` would reject (unknown kinds, payloads that cannot be
    encoded, appends after ``aclose``), when it would. Set ``error`` to make every ``append``
    raise it without recording, as a failing disk would. ``submit`` records at once through
    ``append`` (which subclasses may override), so its receipt is settled when it returns: a
    failure is then counted in ``failed``, logged, and set on the receipt, as
    :class:`SqliteJournal` does.
    """

    def __init__(self) -> None:
        self.events: list[JournalEvent] = []
        self.error: Exception | None = None
        self.closed = False
        #: Submitted events that could not be recorded.
        self.failed = 0

    async def append(self, event: JournalEvent) -> None:
        if self.closed:
            raise JournalClosed("journal is closed")
        _encode_payload(event)
        if self.error is not None:
            raise self.error
        self.events.append(event)

    async def submit(self, event: JournalEvent, *, urgent: bool = False) -> Receipt:
        if self.closed:
            raise JournalClosed("journal is closed")
        _check_kind(event)  # raises here, as with SqliteJournal; a bad payload fails the receipt
        receipt: Receipt = asyncio.get_running_loop().create_future()
        try:
            await self.append(event)
        except Exception as exc:  # noqa: BLE001  # recording failed: reported on the receipt
            self.failed += 1
            log.error(
                "memory journal: %s event of %s not recorded: %s", event.kind, event.client, exc
            )
            receipt.set_exception(exc)
            receipt.exception()  # reported above: asyncio must not report it again
        else:
            receipt.set_result(None)
        return receipt

    async def aclose(self) -> None:
        self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- SQLite ---------------------------------------------------------------------------------------

_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    ts_ns       INTEGER NOT NULL,
    recorded_ns INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    client      TEXT NOT NULL,
    symbol      TEXT NOT NULL DEFAULT '',
    rfq_id      TEXT NOT NULL DEFAULT '',
    quote_id    TEXT NOT NULL DEFAULT '',
    trade_id    TEXT NOT NULL DEFAULT '',
    payload     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_client_ts ON events (client, ts_ns);
CREATE INDEX IF NOT EXISTS events_quote_id ON events (quote_id);
CREATE INDEX IF NOT EXISTS events_client_rfq_id ON events (client, rfq_id);
CREATE INDEX IF NOT EXISTS events_state ON events (id) WHERE kind IN ('fill', 'control');
"""
_INSERT: Final = (
    "INSERT INTO events (ts_ns, recorded_ns, kind, client, symbol, rfq_id, quote_id, trade_id,"
    " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: The whole batch in one statement, its rows one JSON array (SQLite's JSON functions, 3.38+):
#: one call into SQLite per commit instead of one per row, each of which hands the GIL back to
#: the event loop and must win it again while the loop is busy.
_INSERT_BATCH: Final = (
    "INSERT INTO events (ts_ns, recorded_ns, kind, client, symbol, rfq_id, quote_id, trade_id,"
    " payload) SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5,"
    " value->>6, value->>7, value->>8 FROM json_each(?)"
)
_BUSY_TIMEOUT_MS: Final = 5_000
#: SQLite virtual-machine steps between two looks at the ``stop`` of a read that may be given
#: up (:func:`state_rows`).
_STOP_CHECK_STEPS: Final = 10_000

Synchronous = Literal["NORMAL", "FULL", "EXTRA"]
_Row = tuple[int, int, str, str, str, str, str, str, str]


class _Pending(msgspec.Struct, frozen=True):
    """An event on its way to the writer thread and the future completed at its commit.

    ``submitted``: handed over by ``submit`` (nobody may await the future: a failure is logged).
    ``row``: the encoded row, for an appended event (encoded by ``append``, on the loop); a
    submitted event is encoded by the writer thread, from ``event`` and ``recorded_ns``.
    """

    done: asyncio.Future[None]
    submitted: bool
    row: _Row | None = None
    event: JournalEvent | None = None
    recorded_ns: int = 0

    def encoded(self) -> _Row:
        """The row to insert; raises ``ValueError``/``TypeError`` for an unencodable payload."""
        if self.row is not None:
            return self.row
        assert self.event is not None
        return _row(self.event, self.recorded_ns, _encode_payload(self.event))

    def describe(self) -> tuple[str, str, str, str, str]:
        """(kind, client, rfq_id, quote_id, trade_id), for the log."""
        if self.event is not None:
            e = self.event
            return e.kind, e.client, e.rfq_id, e.quote_id, e.trade_id
        assert self.row is not None
        _, _, kind, client, _, rfq_id, quote_id, trade_id, _ = self.row
        return kind, client, rfq_id, quote_id, trade_id


def _row(event: JournalEvent, recorded_ns: int, payload: bytes) -> _Row:
    return (
        event.ts_ns,
        recorded_ns,
        event.kind,
        event.client,
        _text(_lookup(event.payload, event.kind, "symbol")),
        event.rfq_id,
        event.quote_id,
        event.trade_id,
        payload.decode(),
    )


_STOP: Final = object()  # queued by aclose(): the writer commits what precedes it, then exits


class SqliteJournal:
    """A :class:`Journal` in one SQLite file in WAL mode, written by one dedicated thread.

    ``append`` and ``submit`` encode the event on the caller's loop (so a malformed payload
    raises right there) and hand it to the writer thread with a future that the thread
    completes after ``COMMIT``: ``append`` awaits that future, ``submit`` returns it (the
    :data:`Receipt`). The thread commits in groups: it takes every event queued while the
    previous transaction was committing, inserts them in one transaction, in queue order, and
    then completes all their futures, so one fsync covers many events and throughput grows
    with load. A batch that starts with a submitted event may wait up to ``submit_delay_ms``
    (2 ms by default) for more events to share its commit, which keeps the cost of a commit
    (a transaction, an fsync, two thread wake-ups) off every single quote at moderate load;
    an append, a full queue or ``aclose`` ends that wait at once, so a fill never waits for
    it. At most ``max_pending`` events are queued and not yet committed, appended and
    submitted alike; further appends and submits wait, first come first served (back-pressure:
    a submit returns quickly only while the writer keeps up).

    Durability: ``synchronous=FULL`` by default. In WAL mode, ``NORMAL`` syncs the log only at
    checkpoints, so a power cut or OS crash can lose the last transactions *after* their
    ``append`` returned; the engine publishes a fill once ``append`` returns, and a fill the
    client holds but the journal lost is a trade nobody can account for. ``FULL`` syncs the log
    on every commit; group commit shares that one fsync among all the events of a batch, which is
    what keeps it affordable under load. (``NORMAL`` is still safe against a crash of the
    process itself.)

    What is durable when: an appended event once ``append`` returned; a submitted one once its
    receipt completed, and not before: normally within ``submit_delay_ms`` plus one commit
    of being submitted (see the module docstring).

    A failed transaction fails every event of its batch with a :class:`JournalError` (the
    ``sqlite3.Error`` chained as its cause); the journal carries on with later events. Every
    event that could not be recorded is counted in ``failed``; submitted ones are also logged
    (``ERROR``, one line per batch), since their caller may never look at the receipt.
    Cancelling an ``append`` does not withdraw an event already handed to the writer.
    ``aclose`` commits everything appended or submitted before it, then stops the thread;
    appends and submits after it (or still waiting for room) raise :class:`JournalClosed`.

    One writer per file: while open, the journal holds ``{path}.lock`` exclusively
    (:func:`_lock`); opening a second one on the same file raises :class:`JournalError`.
    Readers (:func:`recent`, :func:`export`, :func:`state_rows`) take no lock.

    Usage::

        async with SqliteJournal("var/journal.db") as journal:
            await journal.append(JournalEvent("rfq", "client-a", clock.now_ns(), rfq_id="r1"))

    Args:
        path: The database file; created (with its parent folder) when missing.
        clock_ns: Stamps ``recorded_ns``, in ns since the epoch.
        synchronous: SQLite's ``synchronous`` setting; see above.
        max_pending: Events accepted but not yet committed, at most (back-pressure).
        submit_delay_ms: How long the writer may hold a batch of submitted events to gather
            more into the same commit; see above. ``0`` commits as soon as the previous
            commit is done.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        synchronous: Synchronous = "FULL",
        max_pending: int = 10_000,
        submit_delay_ms: float = 2.0,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, got {synchronous!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        if not 0 <= submit_delay_ms <= 60_000:
            raise ValueError(f"submit_delay_ms must be within 0..60000, got {submit_delay_ms}")
        self.path = Path(path)
        self._clock_ns = clock_ns
        self._synchronous = synchronous
        self._max_pending = max_pending
        self._submit_delay_s = submit_delay_ms / 1e3
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        #: Set when something queued must not wait: an append, back-pressure, the stop marker.
        self._urgent = threading.Event()
        self._in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closed = False
        #: Transactions committed so far (group commit: usually far fewer than events).
        self.commits = 0
        #: Events committed so far.
        self.committed = 0
        #: Events that could not be recorded (their append raised, their receipt failed).
        self.failed = 0
        #: Events not yet committed when :meth:`aclose` was cancelled (see there).
        self.abandoned = 0
        #: The open lock file while the writer runs (see :func:`_lock`).
        self._lock_file: TextIO | None = None

    @property
    def pending(self) -> int:
        """Appends holding a slot: handed to the writer and not yet settled."""
        return self._in_flight

    def writer_cpu_ns(self) -> int | None:
        """CPU time the writer thread has used so far (ns), for benchmarks; ``None`` when it
        is not running or the platform has no per-thread CPU clock."""
        thread = self._thread
        stopped = self._stopped is not None and self._stopped.done()
        if thread is None or thread.ident is None or stopped or not thread.is_alive():
            return None
        try:
            return time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))
        except (AttributeError, OSError):  # not POSIX, or the thread just ended
            return None

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._loop is not None or self._closed:
            raise RuntimeError("a SqliteJournal is opened once")
        loop = asyncio.get_running_loop()
        self._loop = loop
        started: asyncio.Future[None] = loop.create_future()
        self._stopped = loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name=f"otc-journal {self.path.name}", daemon=True
        )
        self._thread.start()
        try:
            await started
        except BaseException:  # failed to open, or cancelled while opening
            self._closed = True
            self._queue.put(_STOP)
            await asyncio.shield(self._stopped)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Commit everything appended so far, then stop the writer thread. Idempotent.

        Cancelled while the writer still commits (a second Ctrl-C while the disk is slow or
        blocked), it returns at once (raising ``CancelledError``) and says how many events
        were not yet committed (``ERROR``, and :attr:`abandoned`): each is committed or not as
        the writer gets to it before the process exits; SQLite commits a transaction whole or
        not at all, so the file stays consistent either way.
        """
        first = not self._closed
        self._closed = True
        if self._stopped is None:  # never opened
            return
        if first:
            self._queue.put(_STOP)
            self._urgent.set()
        task = asyncio.current_task()
        try:
            if task is not None and task.cancelling() > 1 and not self._stopped.done():
                # Asked to stop twice already (Ctrl-C twice), the second request spent on an
                # earlier wait of the shutdown (a broker not acknowledging status down): the
                # caller wants out now, not after the disk.
                raise asyncio.CancelledError
            await asyncio.shield(self._stopped)
        except asyncio.CancelledError:
            if not self._stopped.done() and self._in_flight:
                self.abandoned = self._in_flight
                log.error(
                    "journal %s: closing was cut short with %d event(s) not yet committed: "
                    "lost unless the writer commits them before the process exits",
                    self.path,
                    self.abandoned,
                )
            raise

    # -- appending --------------------------------------------------------------------------

    async def append(self, event: JournalEvent) -> None:
        """Record ``event``; returns once it is committed. Raises :class:`JournalError`."""
        await self._enqueue(event, submitted=False)

    async def submit(self, event: JournalEvent, *, urgent: bool = False) -> Receipt:
        """Queue ``event`` for the writer; returns its :data:`Receipt` once it is queued.

        Waits only while ``max_pending`` events are queued. The event is committed after every
        event queued before it. Raises :class:`JournalClosed` (closed journal) or ``ValueError``
        (unknown kind) at once, queueing nothing. The payload is encoded by the writer thread,
        off the caller's loop: one that cannot be encoded, like a write that fails, fails the
        receipt, is counted in ``failed`` and logged. ``urgent``: the writer commits it
        without waiting ``submit_delay_ms`` for more, as it does an append.
        """
        return await self._enqueue(event, submitted=True, urgent=urgent)

    async def _enqueue(
        self, event: JournalEvent, *, submitted: bool, urgent: bool = False
    ) -> Receipt:
        """Hand ``event`` to the writer; for ``append``, also wait for its commit.

        An appended event is encoded here, so that a malformed one raises at once; a submitted
        one only has its kind checked here, and is encoded by the writer thread: the quote
        path does not pay for encoding a quote's explanation before it replies.
        """
        if self._closed or self._loop is None:
            raise JournalClosed(
                f"journal {self.path} is {'closed' if self._closed else 'not open'}"
            )
        _check_kind(event)
        payload = None if submitted else _encode_payload(event)
        await self._reserve()
        if self._closed:  # closed while this event waited for room
            self._release()
            raise JournalClosed(f"journal {self.path} closed before the event was recorded")
        done: Receipt = self._loop.create_future()
        if payload is None:
            pending = _Pending(done, True, event=event, recorded_ns=self._clock_ns())
        else:
            pending = _Pending(done, False, row=_row(event, self._clock_ns(), payload))
        self._queue.put(pending)
        if urgent or not submitted:
            self._urgent.set()
        if not submitted:
            await done
        return done

    async def _reserve(self) -> None:
        """Take one of ``max_pending`` slots, waiting in line when none is free."""
        if self._in_flight < self._max_pending and not self._waiters:
            self._in_flight += 1
            return
        assert self._loop is not None
        self._urgent.set()  # the queue is full: the writer must not hold its batch back
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # _release() hands its slot over: _in_flight already counts it
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed to us as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_flight -= 1

    def _settle(self, batch: list[_Pending], errors: list[BaseException | None]) -> None:
        """On the loop: complete the futures of a batch (``errors[i]`` is event i's failure)."""
        committed = sum(error is None for error in errors)
        self.committed += committed
        self.commits += committed > 0
        self.failed += len(batch) - committed
        lost: list[tuple[_Pending, BaseException]] = []
        for pending, error in zip(batch, errors, strict=True):
            self._release()
            if error is not None and pending.submitted:
                lost.append((pending, error))
            if pending.done.done():  # an append whose caller was cancelled
                continue
            if error is None:
                pending.done.set_result(None)
            else:
                failure = JournalError(f"journal {self.path}: write failed: {error}")
                failure.__cause__ = error
                pending.done.set_exception(failure)
                if pending.submitted:
                    pending.done.exception()  # reported below: asyncio must not report it again
        if lost:
            first, error = lost[0]
            kind, client, rfq_id, quote_id, trade_id = first.describe()
            log.error(
                "journal %s: %d submitted event(s) not recorded, the first a %s of %s "
                "(rfq_id %r, quote_id %r, trade_id %r): %s",
                self.path,
                len(lost),
                kind,
                client,
                rfq_id,
                quote_id,
                trade_id,
                error,
            )

    # -- the writer thread ------------------------------------------------------------------

    def _call(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback(*args)`` on the loop; a no-op once the loop is gone."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(callback, *args)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock(self.path)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
        except BaseException:
            self._unlock()
            raise
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise JournalError(f"journal {self.path}: WAL mode unavailable (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version not in (0, _SCHEMA_VERSION):
                raise JournalError(
                    f"journal {self.path}: schema version {version}, expected {_SCHEMA_VERSION}"
                )
            conn.executescript(  # all of the schema or none of it
                f"BEGIN IMMEDIATE; {_SCHEMA}; PRAGMA user_version = {_SCHEMA_VERSION}; COMMIT;"
            )
        except BaseException:
            conn.close()
            self._unlock()
            raise
        return conn

    def _unlock(self) -> None:
        lock, self._lock_file = self._lock_file, None
        if lock is not None:
            lock.close()  # closing the file releases the lock

    def _run(self, started: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except JournalError as exc:
            self._call(_resolve, started, exc)
            self._call(_resolve, self._stopped, None)
            return
        except Exception as exc:  # noqa: BLE001 - whatever it is, the opener must hear of it
            # OSError, sqlite3.Error; ValueError for a path with no file name (Path("") is
            # "."): escaping, it ended the thread and left the opener waiting for ever.
            error = JournalError(f"cannot open journal {self.path}: {exc}")
            error.__cause__ = exc
            self._call(_resolve, started, error)
            self._call(_resolve, self._stopped, None)
            return
        self._call(_resolve, started, None)
        close_error: JournalError | None = None
        try:
            self._serve(conn)
        finally:
            try:
                conn.close()  # the last connection to close checkpoints the WAL into the file
            except sqlite3.Error as exc:
                close_error = JournalError(f"journal {self.path}: close failed: {exc}")
            self._unlock()
            self._call(_resolve, self._stopped, close_error)

    def _serve(self, conn: sqlite3.Connection) -> None:
        """Commit batches until the stop marker; every dequeued event's future is completed."""
        batched = _batch_insert(conn)
        while True:
            item = self._queue.get()
            if item is not _STOP and self._submit_delay_s and not self._urgent.is_set():
                # Submitted events may wait a little to share the commit (and its fsync) with
                # those that follow; an append, a full queue or aclose() ends the wait at once.
                assert isinstance(item, _Pending)
                if item.submitted:
                    self._urgent.wait(self._submit_delay_s)
            self._urgent.clear()
            batch: list[_Pending] = []
            stop = False
            while True:  # group commit: everything queued by now
                if item is _STOP:
                    stop = True
                    break
                assert isinstance(item, _Pending)
                batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._call(self._settle, batch, _write_batch(conn, batch, batched=batched))
            if stop:
                return


#: Errors one event can cause on its own (a trigger, a constraint, an unencodable value).
_EVENT_ERRORS: Final = (sqlite3.Error, ValueError, OverflowError)
#: Errors encoding a submitted event can raise (a payload JSON cannot hold).
_ENCODE_ERRORS: Final = (ValueError, TypeError, OverflowError, msgspec.EncodeError)


def _write_batch(
    conn: sqlite3.Connection, batch: list[_Pending], *, batched: bool = False
) -> list[BaseException | None]:
    """Encode what was submitted and insert the batch; per event, what kept it out (or None)."""
    errors: list[BaseException | None] = [None] * len(batch)
    rows: list[_Row] = []
    at: list[int] = []
    for i, pending in enumerate(batch):
        try:
            rows.append(pending.encoded())
        except _ENCODE_ERRORS as exc:
            errors[i] = exc
        else:
            at.append(i)
    if rows:
        try:
            written = _write(conn, rows, batched=batched)
        except Exception as exc:  # noqa: BLE001  # whatever failed, every caller hears it
            written = [exc] * len(rows)
        for i, error in zip(at, written, strict=True):
            errors[i] = error
    return errors


def _write(
    conn: sqlite3.Connection, rows: list[_Row], *, batched: bool = False
) -> list[BaseException | None]:
    """Insert ``rows`` in one transaction; per row, the error that kept it out (None: committed).

    The fast path inserts the whole batch at once (in one statement when ``batched``). If that
    fails, the batch is retried with a savepoint per row, so one bad event fails alone instead
    of taking its batch with it; if the transaction itself cannot commit, every row gets that
    error. An error no single row causes (the database locked by another process, a full or
    failing disk) is not retried row by row: every row gets it at once (a lock held elsewhere
    made the batch wait the busy timeout twice).
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        if batched:
            conn.execute(_INSERT_BATCH, (_rows_encoder.encode(rows),))
        else:
            conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
    except _EVENT_ERRORS as exc:
        _rollback(conn)
        if _whole_transaction(exc):
            return [exc] * len(rows)
    else:
        return [None] * len(rows)
    errors: list[BaseException | None] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for row in rows:
            conn.execute("SAVEPOINT event")
            try:
                conn.execute(_INSERT, row)
            except _EVENT_ERRORS as exc:
                conn.execute("ROLLBACK TO event")
                errors.append(exc)
            else:
                errors.append(None)
            conn.execute("RELEASE event")
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        return [exc] * len(rows)
    return errors


#: SQLite's primary result codes that fail a transaction whatever its rows hold.
_TRANSACTION_ERRORS: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
    }
)


def _whole_transaction(exc: BaseException) -> bool:
    """Whether ``exc`` failed the transaction itself, not one of its rows."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _TRANSACTION_ERRORS


_rows_encoder: Final = msgspec.json.Encoder()


def _batch_insert(conn: sqlite3.Connection) -> bool:
    """Whether ``conn``'s SQLite can insert a batch in one statement (:data:`_INSERT_BATCH`)."""
    try:
        return bool(conn.execute("SELECT '[1]' ->> 0").fetchone()[0] == 1)
    except sqlite3.OperationalError:  # before 3.38: one statement per row
        return False


def _lock(path: Path) -> TextIO:
    """Hold ``{path}.lock`` exclusively (``flock``) for as long as the returned file is open.

    One writer per journal: two engines on one file would each rebuild the desk's state from
    it at start-up and then each book their own trades into it, and neither would see the
    other's. The lock file names the holder's process id.

    Raises:
        JournalError: another process (or another open journal in this one) holds it.
    """
    lock_path = path.with_name(path.name + ".lock")
    file = open(lock_path, "a+", encoding="ascii")  # noqa: SIM115 - held open: it is the lock
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip()
        file.close()
        raise JournalError(
            f"journal {path} is in use by another writer ({holder or 'unknown'}, "
            f"lock {lock_path}): one engine per journal"
        ) from None
    except BaseException:
        file.close()
        raise
    file.seek(0)
    file.truncate()
    file.write(f"pid {os.getpid()}\n")
    file.flush()
    return file


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        # the original error is what callers need; SQLite rolls back on its own if this fails
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _resolve(future: asyncio.Future[None] | None, error: BaseException | None) -> None:
    if future is None or future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


# -- reading --------------------------------------------------------------------------------------


class JournalRow(msgspec.Struct, frozen=True):
    """One recorded event as read back; ``symbol`` resolved through its quote or RFQ if needed."""

    id: int
    ts_ns: int
    recorded_ns: int
    kind: str
    client: str
    symbol: str
    rfq_id: str
    quote_id: str
    trade_id: str
    payload: dict[str, object]

    @property
    def time_utc(self) -> str:
        """``ts_ns`` as ISO 8601 UTC with all nine fraction digits (exact)."""
        seconds, nanos = divmod(self.ts_ns, 1_000_000_000)
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


#: Every column, with a row's own symbol or else that of the quote or RFQ it refers to.
_SELECT: Final = """
SELECT e.id, e.ts_ns, e.recorded_ns, e.kind, e.client,
       COALESCE(
           NULLIF(e.symbol, ''),
           (SELECT q.symbol FROM events q
             WHERE e.quote_id != '' AND q.quote_id = e.quote_id AND q.symbol != '' LIMIT 1),
           (SELECT r.symbol FROM events r
             WHERE e.rfq_id != '' AND r.client = e.client AND r.rfq_id = e.rfq_id
               AND r.symbol != '' LIMIT 1),
           '') AS sym,
       e.rfq_id, e.quote_id, e.trade_id, e.payload
  FROM events e"""
_payload_decoder: Final = msgspec.json.Decoder(dict[str, object])


def _open_read_only(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the journal at ``path``, its schema checked.

    It takes no lock of the writer's and never blocks it (WAL: readers read a snapshot). A
    journal in a directory this process cannot write (an archived copy, a read-only mount)
    and with no ``-wal`` file is read as a file nobody writes (``immutable``): SQLite cannot
    create there the ``-shm`` file a reader of a WAL database otherwise needs.

    Raises:
        JournalError: no such file, not an SQLite file or not a journal, a journal of
            another schema version, or SQLite cannot read it.
    """
    file = Path(path)
    if not file.is_file():
        raise JournalError(f"no journal at {file}")
    uri = file.resolve().as_uri() + "?mode=ro"
    wal = Path(f"{file}-wal")
    conn: sqlite3.Connection | None = None
    try:
        conn = _connect_read_only(uri)
        try:
            version = _schema_version(conn)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_CANTOPEN or os.access(file.parent, os.W_OK):
                raise
            if wal.exists() and wal.stat().st_size:
                raise JournalError(
                    f"cannot read journal {file}: {exc} (its folder is read-only and its "
                    f"{wal.name} holds commits: read a copy of both in a writable folder)"
                ) from exc
            conn.close()
            conn = _connect_read_only(uri + "&immutable=1")
            version = _schema_version(conn)
        _check_schema(conn, file, version)
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error):
            raise JournalError(f"cannot read journal {file}: {exc}") from exc
        raise
    return conn


def _connect_read_only(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only = 1")
    return conn


def _schema_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


#: The columns of ``events`` the readers select.
_COLUMNS: Final = (
    "id", "ts_ns", "recorded_ns", "kind", "client", "symbol", "rfq_id", "quote_id", "trade_id",
    "payload",
)  # fmt: skip


def _check_schema(conn: sqlite3.Connection, file: Path, version: int) -> None:
    """Refuse, before anything is read or written, a file that is not a journal this version
    reads (``user_version`` 0 is a journal whose schema was created without it)."""
    if version not in (0, _SCHEMA_VERSION):
        raise JournalError(
            f"journal {file}: schema version {version}, this otc reads version "
            f"{_SCHEMA_VERSION} (was it written by another version of otc?)"
        )
    columns = {name for (name,) in conn.execute("SELECT name FROM pragma_table_info('events')")}
    if not columns:
        raise JournalError(f"{file} is not an otc journal (it has no events table)")
    if missing := [name for name in _COLUMNS if name not in columns]:
        raise JournalError(
            f"{file} is not an otc journal (its events table has no {', '.join(missing)})"
        )


def _rows(
    conn: sqlite3.Connection, path: str | Path, where: list[str], params: list[object], tail: str
) -> Iterator[JournalRow]:
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + tail
    try:
        for row in conn.execute(sql, params):
            id_, ts_ns, recorded_ns, kind, client, symbol, rfq_id, quote_id, trade_id, payload = row
            if problem := _row_problem(row):
                raise JournalError(f"cannot read journal {path}: event {id_!r}: {problem}")
            try:
                decoded = _payload_decoder.decode(payload)
            except msgspec.DecodeError as exc:
                raise JournalError(
                    f"cannot read journal {path}: event {id_}: payload: {exc}"
                ) from None
            except RecursionError:
                raise JournalError(
                    f"cannot read journal {path}: event {id_}: payload nested too deeply"
                ) from None
            yield JournalRow(
                id_, ts_ns, recorded_ns, kind, client, symbol, rfq_id, quote_id, trade_id, decoded
            )
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read journal {path}: {exc}") from exc


#: ``ts_ns`` a UTC time can be written for (years 1970 to 9999).
_MAX_TS_NS: Final = 253_402_300_800 * 1_000_000_000


def _row_problem(row: tuple[object, ...]) -> str | None:
    """What is wrong with the column types of a row of :data:`_SELECT`, if anything.

    SQLite keeps whatever a column was given (a hand-edited or foreign file may hold text in
    ``ts_ns``), and a row must not fail later in a formatter with a bare ``TypeError``.
    """
    for name, value in zip(("ts_ns", "recorded_ns"), row[1:3], strict=True):
        if type(value) is not int or not 0 <= value < _MAX_TS_NS:
            return f"{name}: not a time in ns since 1970, got {value!r}"
    for name, value in zip(_TEXT_COLUMNS, row[3:9], strict=True):
        if type(value) is not str:
            return f"{name}: not text, got {value!r}"
    if row[3] not in KINDS:
        return f"kind: {row[3]!r} is not a kind the engine writes"
    if not isinstance(row[9], str | bytes):
        return f"payload: not JSON text, got {row[9]!r}"
    return None


_TEXT_COLUMNS: Final = ("kind", "client", "symbol", "rfq_id", "quote_id", "trade_id")


def recent(
    path: str | Path,
    *,
    limit: int = 50,
    client: str | None = None,
    symbol: str | None = None,
    kinds: Iterable[str] | None = None,
) -> list[JournalRow]:
    """The last ``limit`` events matching the filters, oldest first (like ``tail``).

    ``None`` is no filter, a value matches exactly; a ``symbol`` also matches the accepts,
    fills and rejects of its quotes and RFQs. :func:`export` filters alike.
    Opens its own read-only connection; safe while a :class:`SqliteJournal` writes the file.
    Raises :class:`ValueError` for a kind not in :data:`KINDS`.
    """
    where, params = _filter_where(client=client, symbol=symbol, kinds=kinds)
    with contextlib.closing(_open_read_only(path)) as conn:
        rows = list(_rows(conn, path, where, [*params, limit], " ORDER BY e.id DESC LIMIT ?"))
    rows.reverse()
    return rows


def _filter_where(
    *, client: str | None, symbol: str | None, kinds: Iterable[str] | None
) -> tuple[list[str], list[object]]:
    """The WHERE terms (and their parameters) of the blotter's and the export's filters.

    ``client``: the events of that client. ``symbol``: the events naming it, and the accepts,
    fills and rejects naming none through the quote or RFQ they refer to (``sym`` of
    :data:`_SELECT`). ``kinds``: the events of these kinds (none for an empty list).
    """
    where: list[str] = []
    params: list[object] = []
    if client is not None:
        where.append("e.client = ?")
        params.append(client)
    if symbol is not None:
        where.append("sym = ?")
        params.append(symbol)
    if kinds is not None:
        wanted = sorted(set(kinds))
        if unknown := [kind for kind in wanted if kind not in KINDS]:
            raise ValueError(f"unknown kind {unknown[0]!r}; expected one of {sorted(KINDS)}")
        where.append(f"e.kind IN ({', '.join('?' * len(wanted))})" if wanted else "0")
        params.extend(wanted)
    return where, params


#: Rows a restarting engine folds over (:func:`state_rows`): the partial index ``events_state``
#: serves this query (its WHERE must be the index's, literally).
_STATE_WHERE: Final = " WHERE e.kind IN ('fill', 'control') ORDER BY e.id"
#: The recent RFQs and quotes of one client: the index ``events_client_ts`` serves it.
_RECENT_WHERE: Final = " WHERE e.client = ? AND e.ts_ns >= ? AND e.kind IN ('rfq', 'quote')"


def state_rows(
    path: str | Path,
    *,
    since_ns: int,
    clients: Iterable[str] | None = None,
    stop: threading.Event | None = None,
) -> list[JournalRow]:
    """What a restarting engine rebuilds its state from, in journal order: every fill and
    control ever recorded, and the RFQs and quotes stamped at or after ``since_ns`` of
    ``clients`` (``None``: of every client the journal names).

    The recent RFQs and quotes are found client by client through the ``(client, ts_ns)``
    index, so the cost grows with the fills and controls of the whole journal, not with its
    RFQs, and a row stamped out of order (a clock stepped back) hides none of them. The engine
    passes its configured clients: the journal also names every unknown client id that ever
    sent an RFQ (each refused, and journaled), which would otherwise cost a query and their
    rows at every restart. Opens its own read-only connection. Raises :class:`JournalError`
    when the journal cannot be read, or when ``stop`` is set (from another thread: the read
    gives up within :data:`_STOP_CHECK_STEPS` SQLite steps; a large journal takes seconds to
    read).
    """
    with contextlib.closing(_open_read_only(path)) as conn:
        if stop is not None:
            conn.set_progress_handler(stop.is_set, _STOP_CHECK_STEPS)
        rows = list(_rows(conn, path, [], [], _STATE_WHERE))
        if clients is None:
            try:
                clients = [c for (c,) in conn.execute("SELECT DISTINCT client FROM events")]
            except sqlite3.Error as exc:
                raise JournalError(f"cannot read journal {path}: {exc}") from exc
        for client in clients:
            rows.extend(_rows(conn, path, [], [client, since_ns], _RECENT_WHERE))
    rows.sort(key=lambda row: row.id)
    return rows


_CSV_COLUMNS: Final = (
    "id",
    "ts_ns",
    "time_utc",
    "recorded_ns",
    "kind",
    "client",
    "symbol",
    "rfq_id",
    "quote_id",
    "trade_id",
    "payload",
)


def export(
    path: str | Path,
    fmt: Literal["csv", "json"],
    out: TextIO,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
    client: str | None = None,
    symbol: str | None = None,
    kinds: Iterable[str] | None = None,
) -> int:
    """Write the events with ``since_ns <= ts_ns < until_ns`` to ``out``; returns how many.

    ``client``, ``symbol`` and ``kinds`` filter as :func:`recent`'s do, in SQL.
    ``csv`` (RFC 4180, CRLF line ends): a header, then one line per event with ``payload`` as
    JSON text; a text cell that a spreadsheet would run as a formula is escaped with a leading
    ``'`` (:func:`_csv_text`).
    ``json``: one array of objects with ``payload`` as a nested object, every value exact.
    Both in commit order, streamed (the journal is never loaded whole), with ``time_utc`` next
    to the exact ``ts_ns``. Nothing is written when the journal cannot be opened
    (:class:`JournalError`) or a kind is not in :data:`KINDS` (:class:`ValueError`).
    """
    _check_format(fmt)
    with contextlib.closing(_open_read_only(path)) as conn:
        rows = _export_rows(
            conn, path, since_ns, until_ns, client=client, symbol=symbol, kinds=kinds
        )
        return _write_export(rows, fmt, out)


def export_file(
    path: str | Path,
    fmt: Literal["csv", "json"],
    out: str | Path,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
    client: str | None = None,
    symbol: str | None = None,
    kinds: Iterable[str] | None = None,
) -> int:
    """:func:`export` into the file ``out``, all or nothing; returns how many events.

    The export is written to a new file next to ``out`` and renamed over it once complete
    (and synced): a journal that cannot be read, a bad row half-way or a full disk leaves
    ``out`` as it was (an earlier export is not truncated) and no partial file behind. ``out``
    that is not a regular file (``/dev/stdout``, a pipe) is written in place. ``out`` naming
    the journal itself, or one of its ``-wal``/``-shm``/``-journal``/``.lock`` files, is
    refused: it would destroy the journal.

    Raises:
        JournalError: the journal cannot be read, or ``out`` is the journal.
        OSError: ``out`` cannot be written (``filename`` is ``out``).
    """
    _check_format(fmt)
    journal, target = Path(path), Path(out)
    _refuse_journal_as_output(journal, target)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    with contextlib.closing(_open_read_only(journal)) as conn:
        rows = _export_rows(
            conn, journal, since_ns, until_ns, client=client, symbol=symbol, kinds=kinds
        )
        if mode is not None and stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
        if mode is not None and not stat.S_ISREG(mode):
            with target.open("w", newline="", encoding="utf-8") as fh:
                return _write_export(rows, fmt, fh)
        final = Path(os.path.realpath(target))  # through a symlink: replace what it points to
        as_before = None if mode is None else stat.S_IMODE(mode)  # as the file it replaces
        try:
            with replaced(final, mode=as_before, newline="") as fh:
                return _write_export(rows, fmt, fh)
        except OSError as exc:
            if exc.filename == str(final):  # the temporary file: name what was asked for
                raise OSError(exc.errno, exc.strerror, str(target)) from None
            raise


def _check_format(fmt: str) -> None:
    if fmt not in ("csv", "json"):
        raise ValueError(f"export format must be csv or json, got {fmt!r}")


#: The files SQLite and :class:`SqliteJournal` keep next to a journal.
_SIDECARS: Final = ("", "-wal", "-shm", "-journal", ".lock")


def _refuse_journal_as_output(journal: Path, out: Path) -> None:
    where = os.path.realpath(out)
    for suffix in _SIDECARS:
        part = Path(f"{journal}{suffix}")
        same = os.path.realpath(part) == where
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(part, out)  # a hard link, another path
        if same:
            raise JournalError(
                f"--out {out} is the journal {journal}"
                + (f" (its {suffix} file)" if suffix else "")
                + ": refusing to overwrite it"
            )


def _export_rows(
    conn: sqlite3.Connection,
    path: str | Path,
    since_ns: int | None,
    until_ns: int | None,
    *,
    client: str | None,
    symbol: str | None,
    kinds: Iterable[str] | None,
) -> Iterator[JournalRow]:
    """The rows of an export, filtered in SQL and read one at a time (in commit order)."""
    where, params = _filter_where(client=client, symbol=symbol, kinds=kinds)
    if since_ns is not None:
        where.append("e.ts_ns >= ?")
        params.append(since_ns)
    if until_ns is not None:
        where.append("e.ts_ns < ?")
        params.append(until_ns)
    return _rows(conn, path, where, params, " ORDER BY e.id")


#: A spreadsheet (Excel, LibreOffice, Google Sheets) opening a CSV file reads a cell that starts
#: with one of these as a formula, which may run a command or send the sheet away (OWASP "CSV
#: Injection"; the full-width forms count in some locales). A text cell starting with one, or
#: with the ``'`` escape itself (so that it reads back), gets a ``'`` in front.
_FORMULA_START: Final = frozenset("=+-@\t\r\n\0'\uff1d\uff0b\uff0d\uff20")


def _csv_text(text: str) -> str:
    """``text`` (an id or a name a client or operator chose) as a CSV cell no spreadsheet runs:
    ``'`` in front when it starts like a formula; remove one leading ``'`` to get it back."""
    return "'" + text if text and text[0] in _FORMULA_START else text


def _write_export(rows: Iterator[JournalRow], fmt: str, out: TextIO) -> int:
    count = 0
    if fmt == "csv":
        # RFC 4180's CRLF: the csv module quotes a cell holding a character of the line end, and
        # a bare CR (in an id a client sent) unquoted ends the row for every CSV reader.
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(_CSV_COLUMNS)
        # On a terminal (not into a file or a pipe), a control character in an id is shown
        # escaped, as the blotter shows it, not acted on (an ANSI escape, a line of its own).
        shown: Callable[[str], str] = printable if out.isatty() else str
        for row in rows:
            writer.writerow(
                (
                    row.id,
                    row.ts_ns,
                    row.time_utc,
                    row.recorded_ns,
                    row.kind,
                    shown(_csv_text(row.client)),
                    shown(_csv_text(row.symbol)),
                    shown(_csv_text(row.rfq_id)),
                    shown(_csv_text(row.quote_id)),
                    shown(_csv_text(row.trade_id)),
                    _json_text(row.payload),  # "{...}": never a formula
                )
            )
            count += 1
        return count
    out.write("[")
    for row in rows:
        document = {name: getattr(row, name) for name in _CSV_COLUMNS}
        out.write(("\n" if count == 0 else ",\n") + _json_text(document))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def _json_text(value: object) -> str:
    """``value`` as JSON with every character that is not printable written ``\\uXXXX``: the
    same JSON value, which no terminal acts on (msgspec escapes only the C0 controls; a C1
    control such as CSI, a bidi override or a zero-width space would reach the screen)."""
    text = msgspec.json.encode(value).decode()
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in text)


def _json_escape(ch: str) -> str:
    units = ch.encode("utf-16-be")
    return "".join(
        f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2)
    )


# -- the blotter ----------------------------------------------------------------------------------

_BLOTTER_COLUMNS: Final = (
    "time (UTC)",
    "kind",
    "client",
    "symbol",
    "side",
    "qty",
    "price",
    "rfq_id",
    "quote_id",
    "trade_id",
    "detail",
)


def _blotter_time(ts_ns: int) -> str:
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{nanos // 1_000_000:03d}"


def _blotter_line(row: JournalRow) -> tuple[str, ...]:
    def field(name: str) -> str:
        value = _lookup(row.payload, row.kind, name)
        return "" if value is None or isinstance(value, dict | list) else str(value)

    qty = field("qty")
    price = field("price")
    detail = ""
    if row.kind == "quote":
        bid, ask = field("bid"), field("ask")
        price = " / ".join(part for part in (bid and f"bid {bid}", ask and f"ask {ask}") if part)
    if row.kind in ("reject", "accept_reject"):
        detail = f"{field('code')}: {field('reason')}"
    elif row.kind == "rfq" and not qty and field("notional"):
        detail = f"notional {field('notional')}"
    elif row.kind == "control":
        detail = " ".join(
            f"{key}={value}"
            for key, value in sorted(row.payload.items())
            if not isinstance(value, dict | list)
        )
    return (
        _blotter_time(row.ts_ns),
        row.kind,
        row.client,
        row.symbol,
        field("side"),
        qty,
        price,
        row.rfq_id,
        row.quote_id,
        row.trade_id,
        detail,
    )


def format_blotter(rows: Iterable[JournalRow]) -> str:
    """A table of ``rows``, one line each, columns aligned; ``"no events\\n"`` for none."""
    lines = [_BLOTTER_COLUMNS, *(tuple(map(printable, _blotter_line(row))) for row in rows)]
    if len(lines) == 1:
        return "no events\n"
    widths = [max(len(line[i]) for line in lines) for i in range(len(_BLOTTER_COLUMNS))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    return "\n".join(text) + "\n"
