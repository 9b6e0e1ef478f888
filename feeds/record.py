"""Our recording format for normalized book events: ``otc-book-events``, version 1.

Format (the reference)
----------------------
A recording is a gzip file (RFC 1952) holding UTF-8 JSON Lines: one JSON value per line, each
line ending in ``\\n``. The gzip stream may consist of several members, one per flush of the
writer; concatenated members are a valid gzip file (``zcat`` and Python's ``gzip`` read them as
one stream), and a recording cut short by a crash is intact up to its last complete member.
Readers also accept the same lines uncompressed (told apart by the gzip magic bytes). Blank
lines are ignored.

Line 1 is the header, a JSON object with exactly these fields::

    {"format": "otc-book-events", "version": 1,
     "scales": {"BTCUSDT": [2, 6], "ETHUSDT": [2, 5]},
     "created_ns": 1786310816816000000, "source": "bybit: spot BTCUSDT ETHUSDT"}

* ``format``: always ``"otc-book-events"``; ``version``: always ``1`` for this layout;
* ``scales``: for every symbol whose events the file holds, ``[price_decimals, size_decimals]``
  (non-negative ints): prices in the file are ticks of ``10**-price_decimals`` quote units, sizes
  lots of ``10**-size_decimals`` base units (see :mod:`otc.model`). A symbol has one scale for the
  whole file: the scale cannot change mid-file, and an event whose symbol the header does not
  list is an error;
* ``created_ns``: when the file was created, ns since the epoch;
* ``source``: free text saying where the events came from (venue, endpoint, converted files).

Every further line is one event, a JSON array: :class:`~otc.model.BookSnapshot` or
:class:`~otc.model.BookDelta` in msgspec's tagged ``array_like`` form (decode a line with
``msgspec.json.Decoder(BookSnapshot | BookDelta)``)::

    ["snapshot", venue, symbol, bids, asks, sequence, ts_event_ns, ts_recv_ns]
    ["delta",    venue, symbol, bids, asks, sequence, ts_event_ns, ts_recv_ns]

    ["delta","bybit","BTCUSDT",[[6514050,472215]],[[6523900,0]],62505426,1786310816779000000,
     1786310816816123456]

* ``bids`` / ``asks``: ``[[price, size], ...]`` as ints at the symbol's scale: exact, lossless.
  A snapshot replaces the venue's whole book of the symbol; a delta sets each level's absolute
  size, size ``0`` deleting the level;
* ``sequence``: the venue's update id, or ``null`` when it has none;
* ``ts_event_ns``: the venue's timestamp (0 when it gives none); ``ts_recv_ns``: when the message
  was received locally. Both ns since the epoch.

Events are in the order they were applied (receive order), so replaying them in file order onto
empty books rebuilds the books the recorder had.

Writing from a coroutine
------------------------
:meth:`RecordWriter.write` only encodes into memory (msgspec, microseconds per event); disk work
happens in flushes. A synchronous caller lets ``write`` flush on its own every ``flush_bytes``.
A coroutine passes ``flush_bytes=None`` and calls ``await writer.flush_async()`` now and then
(say every second): the pending lines are taken on the event loop and compressed and written by
``asyncio.to_thread``, so the loop is never blocked by gzip or the disk; it ends with
``await writer.aclose()`` (or uses ``async with``). The writer is not thread-safe: call ``write``
from one thread (the loop's).

A running engine
----------------
:class:`Recorder` is what ``otc serve --record FILE`` uses: a writer plus a flush task (every
``interval_s``, or sooner once ``flush_bytes`` are pending), so the feed's hot path only encodes.
A write error (disk full, I/O error, file size limit) stops the recording, not the engine: it is
logged once naming the file, kept in :attr:`Recorder.error`, later events are counted in
:attr:`Recorder.dropped`, and the file is cut back to its last complete gzip member, so it stays
a valid recording of everything before the failing flush.

A write that does not return (a hung disk, a stalled network mount) stops the recording the same
way once ``max_pending_bytes`` have piled up behind it: the events keep coming, and memory must
not grow without bound in the engine. The buffer is freed, the error logged and kept; if the
stalled write completes later its events count as flushed (and the file ends with them), and if
it fails the file is cut back as for any write error. While it never returns the file's tail is
whatever part of that flush the disk took.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import logging
import os
import threading
import time
import zlib
from collections.abc import Generator, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Annotated, Final, Self

import msgspec

from feeds.base import ChecksumMismatch, RequestRefused, Resync, SequenceGap, VenueBookFeed
from feeds.recorded import read_recording
from feeds.registry import adapter_class
from otc.errors import ConfigError, OtcError, ValueParseError
from otc.model import BookDelta, BookEvent, BookSnapshot, Levels, Scale

__all__ = [
    "FORMAT",
    "MAX_PENDING_BYTES",
    "VERSION",
    "ConversionReport",
    "RecordError",
    "RecordHeader",
    "RecordWriter",
    "Recorder",
    "open_decompressed",
    "read_events",
    "read_header",
    "record_from_venue",
]

log = logging.getLogger(__name__)

FORMAT: Final = "otc-book-events"
VERSION: Final = 1

_Decimals = Annotated[int, msgspec.Meta(ge=0)]


class RecordHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Line 1 of a recording (see the module docstring). Frozen and strict: a field added or
    misspelt is a different format, and must come with a new ``version``."""

    format: str
    version: int
    #: symbol -> (price_decimals, size_decimals) of the events of that symbol.
    scales: dict[str, tuple[_Decimals, _Decimals]]
    created_ns: int
    source: str

    def scale(self, symbol: str) -> Scale:
        """The scale of ``symbol``'s events (``KeyError`` if the file has none)."""
        price_decimals, size_decimals = self.scales[symbol]
        return Scale(price_decimals, size_decimals)

    @property
    def symbol_scales(self) -> dict[str, Scale]:
        return {symbol: self.scale(symbol) for symbol in self.scales}


class _Probe(msgspec.Struct):
    """The two fields that say what a header is, read before the strict decode."""

    format: str = ""
    version: int | None = None


_encoder = msgspec.json.Encoder()
_decode_probe = msgspec.json.Decoder(_Probe).decode
_decode_header = msgspec.json.Decoder(RecordHeader).decode
_decode_event = msgspec.json.Decoder(BookSnapshot | BookDelta).decode

_GZIP_MAGIC = b"\x1f\x8b"

#: :class:`Recorder`'s default ``max_pending_bytes``.
MAX_PENDING_BYTES: Final = 128 << 20


class RecordWriter:
    """Writes one recording; a context manager (sync or async), single use.

    The header is buffered on entry; :meth:`write` appends encoded events to an in-memory buffer;
    each flush compresses the buffer into one gzip member and appends it to the file (see the
    module docstring for coroutine use).

    Args:
        path: the file to create (an existing file is truncated).
        scales: symbol -> scale of every symbol whose events will be written.
        source: free text for the header: where the events come from.
        created_ns: the header's creation time (ns since the epoch); now when omitted.
        flush_bytes: buffered bytes at which :meth:`write` flushes by itself; ``None``: only
            explicit flushes (coroutines, which use :meth:`flush_async`).
        compresslevel: gzip level, 1 (fast) to 9 (small).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        scales: Mapping[str, Scale],
        source: str,
        created_ns: int | None = None,
        flush_bytes: int | None = 1 << 20,
        compresslevel: int = 6,
    ) -> None:
        self.path = Path(path)
        self.header = RecordHeader(
            format=FORMAT,
            version=VERSION,
            scales={s: (sc.price_decimals, sc.size_decimals) for s, sc in scales.items()},
            created_ns=time.time_ns() if created_ns is None else created_ns,
            source=source,
        )
        self.flush_bytes = flush_bytes
        self.compresslevel = compresslevel
        #: Events written so far (buffered or on disk).
        self.events_written = 0
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None
        self._state = "new"  # -> "open" -> "closed"
        self._writing = False  # a flush_async is compressing/writing in a worker thread
        self._size = 0  # bytes of complete members in the file
        self._lock = asyncio.Lock()
        # A worker thread's write may outlive the flush_async awaiting it (cancelled while the
        # disk hangs): close() then leaves the file to that thread, for closing the descriptor
        # under its write could let the rest land in whatever file reuses the number.
        self._thread_lock = threading.Lock()
        self._member_lock = threading.Lock()  # held across the write of a member
        self._thread_writes = 0
        self._close_after_write = False

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Create the file and buffer the header (what entering the context does)."""
        if self._state != "new":
            raise RuntimeError(f"{self.path}: a RecordWriter is single use (state {self._state})")
        # Unbuffered: a member is written whole by _write_member, which knows the file's last
        # good size and cuts a member that failed half-way back off.
        self._file = self.path.open("wb", buffering=0)
        self._state = "open"
        _encoder.encode_into(self.header, self._buffer, -1)
        self._buffer += b"\n"

    def close(self) -> None:
        """Flush what is buffered and close the file (idempotent)."""
        if self._state != "open":
            self._state = "closed"
            return
        try:
            self.flush()
        finally:
            assert self._file is not None
            self._state = "closed"
            with self._thread_lock:
                if self._thread_writes:
                    self._close_after_write = True
                else:
                    self._file.close()

    async def aclose(self) -> None:
        """:meth:`close`, with the last flush done off the event loop."""
        if self._state == "open":
            await self.flush_async()
        self.close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- writing -------------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Encoded bytes buffered and not yet flushed."""
        return len(self._buffer)

    def write(self, events: Iterable[BookEvent]) -> None:
        """Append ``events`` (all or none of them).

        Raises:
            ValueError: an event's symbol has no scale in the header (nothing of the batch is
                written), or the writer is not open.
        """
        if self._state != "open":
            raise ValueError(f"{self.path}: writer is {self._state}, not open")
        buffer = self._buffer
        start = len(buffer)
        scales = self.header.scales
        count = 0
        encode_into = _encoder.encode_into
        for event in events:
            if event.symbol not in scales:
                del buffer[start:]
                raise ValueError(
                    f"{self.path}: {event.symbol!r} has no scale in the header "
                    f"(known: {', '.join(sorted(scales)) or 'none'})"
                )
            encode_into(event, buffer, -1)
            buffer += b"\n"
            count += 1
        self.events_written += count
        if self.flush_bytes is not None and len(buffer) >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        """Compress the buffered lines into one gzip member and append it to the file."""
        if self._writing:
            raise RuntimeError(f"{self.path}: flush() during flush_async(); use one or the other")
        data = self._take()
        if data:
            self._write_member(data)

    async def flush_async(self) -> None:
        """:meth:`flush` with compression and disk I/O in a worker thread.

        Concurrent calls are serialized, so members reach the file in the order their lines
        were written.
        """
        async with self._lock:
            data = self._take()
            if not data:
                return
            self._writing = True
            try:
                await asyncio.to_thread(self._write_member_in_thread, data)
            finally:
                self._writing = False

    def _take(self) -> bytes:
        if self._state != "open":
            return b""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def _write_member_in_thread(self, data: bytes) -> None:
        assert self._file is not None
        with self._thread_lock:
            self._thread_writes += 1
        try:
            self._write_member(data)
        finally:
            with self._thread_lock:
                self._thread_writes -= 1
                if self._close_after_write and not self._thread_writes:
                    self._file.close()

    def _write_member(self, data: bytes) -> None:
        """Append ``data`` as one gzip member; on an error, cut the file back to its size before
        (best effort), so that it ends with a complete member, and raise the error."""
        assert self._file is not None
        fd = self._file.fileno()
        member = memoryview(gzip.compress(data, compresslevel=self.compresslevel, mtime=0))
        size = len(member)
        # One member at a time: a write cancelled at shutdown goes on in its thread while the
        # last flush writes, and both would take the file's size before either (a failing one
        # then cut the other's member off, and the size counted missed one of them).
        with self._member_lock:
            good = self._size
            try:
                while member:
                    written = os.write(fd, member)
                    member = member[written:]
            except OSError:
                with contextlib.suppress(OSError):  # e.g. a device, which cannot be truncated
                    os.ftruncate(fd, good)
                    os.lseek(fd, good, os.SEEK_SET)
                raise
            self._size = good + size  # counted, not asked: a pipe or a device has no position


class RecordError(OtcError):
    """A recording could not be created (``path``, ``problem``); raised at start-up."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: cannot record: {problem}")


class Recorder:
    """Records every book event a running engine applies, off its event loop (see the module
    docstring): :meth:`record` encodes, the :meth:`run` task flushes in a worker thread.

    Use as ``async with Recorder(...) as recorder``, with ``recorder.run()`` in the caller's
    task group; leaving the block flushes what is pending and closes the file.

    Args:
        path: the file to create (an existing one is truncated; missing folders are made).
        scales: symbol -> scale of every symbol whose events may be recorded; events of other
            symbols are not recorded (the engine's market does not apply them either).
        source: the header's ``source``: what produced the events.
        created_ns: the header's creation time (ns since the epoch); now when omitted.
        interval_s: flush period.
        flush_bytes: pending encoded bytes that trigger a flush before the period is over.
        compresslevel: gzip level (1 fast, 9 small). 1 by default: on synthetic book deltas
            (17 levels each) it costs 2.6 us per event against 9.2 us at level 6, for files a
            third bigger (ratio 3.8 instead of 5.1): disk is cheaper than the cores the engine uses.
        max_pending_bytes: encoded bytes that may wait behind a flush that has not returned (a
            hung disk) before the recording is stopped and they are freed; at least
            ``flush_bytes``. 128 MiB by default: some 10 s of a busy engine (30,000 events/s of
            450 bytes), memory the engine can spare, where an unbounded buffer ends in the OOM
            killer stopping the quoting.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        scales: Mapping[str, Scale],
        source: str,
        created_ns: int | None = None,
        interval_s: float = 1.0,
        flush_bytes: int = 1 << 20,
        compresslevel: int = 1,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s!r}")
        if not max_pending_bytes >= flush_bytes:
            raise ValueError(
                f"max_pending_bytes ({max_pending_bytes}) must be at least flush_bytes "
                f"({flush_bytes})"
            )
        self.path = Path(path)
        self.interval_s = interval_s
        self.flush_bytes = flush_bytes
        self.max_pending_bytes = max_pending_bytes
        self.writer = RecordWriter(
            self.path,
            scales=scales,
            source=source,
            created_ns=created_ns,
            flush_bytes=None,
            compresslevel=compresslevel,
        )
        #: Events written to the file (flushed).
        self.flushed = 0
        #: Events lost to a write error (those of the failing flush and every one after it).
        self.dropped = 0
        #: Events not recorded because their symbol has no scale (the market ignores them).
        self.skipped = 0
        #: The write error that stopped the recording, as one line naming the file; or None.
        self.error: str | None = None
        self._wake = asyncio.Event()

    @property
    def recorded(self) -> int:
        """Events accepted by :meth:`record` (flushed or pending)."""
        return self.writer.events_written

    async def __aenter__(self) -> Self:
        self.open()
        return self

    def open(self) -> None:
        """Create the file and folders (what entering the context does).

        Raises:
            RecordError: the file cannot be created (names the file and the OS error).
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer.open()
        except OSError as exc:
            problem = exc.strerror or str(exc)
            if exc.filename is not None and Path(exc.filename) != self.path:
                problem = f"{problem}: {exc.filename}"  # a folder on the way
            raise RecordError(self.path, problem) from None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def record(self, events: list[BookEvent]) -> None:
        """Record ``events``, just applied, in order (the hot path: encodes into memory)."""
        if self.error is not None:
            self.dropped += len(events)
            return
        writer = self.writer
        try:
            writer.write(events)
        except ValueError:  # a symbol without a scale: record the others
            known = [e for e in events if e.symbol in writer.header.scales]
            self.skipped += len(events) - len(known)
            writer.write(known)
        if writer.pending_bytes >= self.flush_bytes:
            self._wake.set()
            if writer.pending_bytes >= self.max_pending_bytes:
                self._stalled()

    async def run(self) -> None:
        """Flush every ``interval_s`` (or when ``flush_bytes`` are pending) until cancelled."""
        while self.error is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write what is pending (compression and I/O in a worker thread); a write error stops
        the recording (logged, kept in :attr:`error`), it is not raised."""
        if self.error is not None:
            return
        pending = self.writer.events_written
        try:
            await self.writer.flush_async()
        except OSError as exc:
            # After a stall the events of this write are already counted as lost.
            if self.error is None:
                self._fail(f"write failed: {exc.strerror or exc}")
        else:
            if self.error is not None:  # a stalled write that returned in the end
                self.dropped -= pending - self.flushed
            self.flushed = pending

    def _stalled(self) -> None:
        """Too much is pending behind a flush that has not returned: stop, free the buffer."""
        self._fail(
            f"write stalled: over {self.max_pending_bytes} bytes pending behind a flush "
            f"that has not returned (a hung disk?)"
        )

    def _fail(self, problem: str) -> None:
        self.writer._take()  # nothing more is written: free the buffer
        self.dropped += self.writer.events_written - self.flushed
        self.error = f"{self.path}: {problem}"
        log.error(
            "recording stopped: %s; %d events recorded, the %d after them are not "
            "(the engine goes on; quotes from then on cannot be replayed)",
            self.error,
            self.flushed,
            self.dropped,
        )

    async def aclose(self) -> None:
        """Flush what is pending and close the file (idempotent)."""
        await self.flush()
        if self.error is not None:
            self.writer._take()
        try:
            self.writer.close()
        except OSError as exc:  # pragma: no cover - closing an unbuffered file flushes nothing
            self._fail(f"write failed: {exc.strerror or exc}")
        if self.error is None:
            log.info("recorded %d book events to %s", self.flushed, self.path)


# -- reading ---------------------------------------------------------------------------------


def open_decompressed(path: Path) -> gzip.GzipFile | io.BufferedReader:
    """``path`` opened for reading bytes, decompressed when it starts with the gzip magic."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")
    return path.open("rb")


def _lines(path: Path) -> Generator[tuple[int, bytes], None, None]:
    """(line number, line) of ``path``; read errors become :class:`ConfigError` at the line."""
    number = 0
    with open_decompressed(path) as fh:
        try:
            for number, line in enumerate(fh, start=1):
                yield number, line
        except (OSError, EOFError, zlib.error) as exc:
            # The line that could not be read is the one after the last good one.
            raise ConfigError(
                str(path), f"line {number + 1}", f"unreadable (corrupt or truncated): {exc}"
            ) from None


def _parse_header(path: Path, line: bytes) -> RecordHeader:
    where = str(path)
    try:
        probe = _decode_probe(line)
    except msgspec.DecodeError as exc:
        raise ConfigError(where, "line 1", f"not an {FORMAT} header: {exc}") from None
    if probe.format != FORMAT:
        raise ConfigError(where, "line 1", f"format is {probe.format!r}, expected {FORMAT!r}")
    if probe.version != VERSION:
        raise ConfigError(
            where, "line 1", f"version {probe.version} is not supported (this reader: {VERSION})"
        )
    try:
        return _decode_header(line)
    except msgspec.DecodeError as exc:
        raise ConfigError(where, "line 1", f"bad header: {exc}") from None


def read_header(path: str | Path) -> RecordHeader:
    """The header of the recording at ``path``.

    Raises:
        ConfigError: not a readable ``otc-book-events`` version 1 header (names file and line 1).
    """
    path = Path(path)
    for _, line in _lines(path):
        return _parse_header(path, line)
    raise ConfigError(str(path), "line 1", "empty file: no header")


def read_events(
    path: str | Path, *, scales: Mapping[str, Scale] | None = None
) -> tuple[RecordHeader, Generator[BookEvent, None, None]]:
    """The header of the recording at ``path`` and an iterator over its events.

    The header is read and checked now; the events lazily, each line checked as it is read (the
    iterator opens the file when first advanced and closes it when exhausted or closed).

    Args:
        path: a recording (gzip or plain).
        scales: symbol -> the scale to deliver that symbol's events at, when it differs from the
            file's; the conversion is exact (an error if a value needs more decimals).

    Raises:
        ConfigError: bad header (now), or while iterating: a line that is not an event, an
            event whose symbol the header does not list, a corrupt or truncated file, a value
            not representable at the requested scale; the error names the file and the line.
    """
    path = Path(path)
    header = read_header(path)
    return header, _events(path, header, scales or {})


def _events(
    path: Path, header: RecordHeader, wanted: Mapping[str, Scale]
) -> Generator[BookEvent, None, None]:
    where = str(path)
    # symbol -> (price shift, size shift) in decimal places, only where they differ.
    shifts: dict[str, tuple[int, int]] = {}
    for symbol, (price_decimals, size_decimals) in header.scales.items():
        target = wanted.get(symbol)
        if target is not None and (
            target.price_decimals != price_decimals or target.size_decimals != size_decimals
        ):
            shifts[symbol] = (
                target.price_decimals - price_decimals,
                target.size_decimals - size_decimals,
            )
    scales = header.scales
    with contextlib.closing(_lines(path)) as lines:
        next(lines, None)  # the header, checked already
        for number, line in lines:
            if not line.strip():
                continue
            try:
                event = _decode_event(line)
            except msgspec.DecodeError as exc:
                raise ConfigError(where, f"line {number}", f"not a book event: {exc}") from None
            if event.symbol not in scales:
                raise ConfigError(
                    where, f"line {number}", f"symbol {event.symbol!r} has no scale in the header"
                )
            shift = shifts.get(event.symbol)
            if shift is not None:
                try:
                    event = _rescaled(event, *shift)
                except ValueParseError as exc:
                    raise ConfigError(where, f"line {number}", str(exc)) from None
            yield event


def _shifted(value: int, places: int, what: str) -> int:
    if places >= 0:
        factor: int = 10**places
        return value * factor
    divisor: int = 10**-places
    quotient, remainder = divmod(value, divisor)
    if remainder:
        raise ValueParseError(
            f"{what} {value} needs more decimals than the requested scale keeps "
            f"({-places} fewer than the file's)"
        )
    return quotient


def _rescaled_levels(levels: Levels, price_places: int, size_places: int) -> Levels:
    return [
        (_shifted(price, price_places, "price"), _shifted(size, size_places, "size"))
        for price, size in levels
    ]


def _rescaled(event: BookEvent, price_places: int, size_places: int) -> BookEvent:
    return msgspec.structs.replace(
        event,
        bids=_rescaled_levels(event.bids, price_places, size_places),
        asks=_rescaled_levels(event.asks, price_places, size_places),
    )


# -- converting venue recordings -------------------------------------------------------------


class ConversionReport(msgspec.Struct):
    """What :func:`record_from_venue` did: counts over all input files."""

    venue: str
    #: Venue messages read (websocket and REST).
    messages: int
    #: Events written, and how many of them were snapshots and deltas.
    events: int
    snapshots: int
    deltas: int
    #: Integrity failures (each symbol then waits for its next snapshot, as live).
    gaps: int
    checksums_failed: int
    #: Messages that could not be decoded.
    malformed: int
    #: Symbol -> [price_decimals, size_decimals], as in the header written.
    scales: dict[str, tuple[int, int]]
    #: The first ``max_errors`` problems, ``file:line: problem``.
    errors: list[str]


def _replay_venue(
    feed: VenueBookFeed, paths: list[Path], report: ConversionReport, max_errors: int
) -> Iterator[list[BookEvent]]:
    """Each message of ``paths`` through ``feed``; yields the events of each (counts to
    ``report``), swallowing integrity failures and malformed messages as ``otc feeds verify``
    does."""
    for path in paths:
        for record in read_recording(path):
            report.messages += 1
            try:
                if record.conn.startswith("REST"):
                    events = feed.on_rest(record.conn, record.data, record.ts_recv_ns)
                else:
                    events = feed.on_message(record.data, record.ts_recv_ns)
            except (SequenceGap, ChecksumMismatch, RequestRefused) as exc:
                if len(report.errors) < max_errors:
                    report.errors.append(f"{path}:{record.line}: {exc}")
                events = list(exc.applied) if isinstance(exc, Resync) else []
            except (msgspec.DecodeError, ValueParseError) as exc:
                report.malformed += 1
                if len(report.errors) < max_errors:
                    report.errors.append(f"{path}:{record.line}: malformed message: {exc}")
                events = list(exc.applied) if isinstance(exc, Resync) else []
            if events:
                yield events


def record_from_venue(
    venue: str,
    jsonl_paths: Iterable[str | Path],
    out_path: str | Path,
    *,
    symbols: Mapping[str, str] | None = None,
    scales: Mapping[str, Scale] | None = None,
    created_ns: int | None = None,
    max_errors: int = 20,
) -> ConversionReport:
    """Convert derived-JSONL venue recordings (``../shared/data`` format) into a recording.

    The messages of ``jsonl_paths`` (in order) go through a fresh ``venue`` adapter exactly as
    live traffic would, and the events it emits are written to ``out_path``: what a live
    ``otc record`` would have written. Integrity failures and malformed messages are counted,
    not raised. Runs the adapter twice: once to learn the symbols (the header, which lists their
    scales, comes first), once to write.

    Args:
        venue: adapter name (see :data:`feeds.registry.VENUES`).
        jsonl_paths: derived-JSONL recordings of that venue, plain or ``.gz``.
        out_path: the recording to create.
        symbols: venue symbol -> our symbol, as for the adapter: when given, the symbols
            converted (the messages of others are skipped); every symbol when omitted.
        scales: our symbol -> book scale (missing ones get :data:`feeds.base.DEFAULT_SCALE`).
        created_ns: the header's creation time; now when omitted.
        max_errors: how many problems to keep in the report's ``errors``.

    Raises:
        KeyError: unknown venue.
        ConfigError: an input line is not JSON.
    """
    cls = adapter_class(venue)
    paths = [Path(p) for p in jsonl_paths]
    names = ", ".join(p.name for p in paths)

    def new_report() -> ConversionReport:
        return ConversionReport(venue, 0, 0, 0, 0, 0, 0, 0, {}, [])

    discovery = cls(symbols=symbols, scales=scales)
    for _ in _replay_venue(discovery, paths, new_report(), 0):
        pass
    header_scales = {symbol: book.scale for symbol, book in sorted(discovery.books.items())}

    feed = cls(symbols=symbols, scales=scales)
    report = new_report()
    writer = RecordWriter(
        out_path, scales=header_scales, source=f"{venue}: {names}", created_ns=created_ns
    )
    with writer:
        for events in _replay_venue(feed, paths, report, max_errors):
            writer.write(events)
            for event in events:
                if isinstance(event, BookSnapshot):
                    report.snapshots += 1
                else:
                    report.deltas += 1
    report.events = writer.events_written
    report.gaps = feed.stats.gaps
    report.checksums_failed = feed.stats.checksums_failed
    report.scales = dict(writer.header.scales)
    return report
