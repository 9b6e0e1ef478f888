"""Recorded book events behind the :class:`~feeds.base.Feed` protocol: :class:`ReplayFeed`.

Sources, told apart by their first line (each plain or gzip, told apart by the gzip magic):

* our recordings, ``otc-book-events`` (:mod:`feeds.record`): the events as recorded;
* tardis.dev ``incremental_book_L2`` CSV, columns
  ``exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount``:
  consecutive ``is_snapshot=true`` rows of one exchange, symbol and ``timestamp`` form one
  :class:`~otc.model.BookSnapshot` (so a snapshot block after updates resets the book);
  consecutive update rows of one exchange, symbol and ``local_timestamp`` form one
  :class:`~otc.model.BookDelta`; ``amount`` is the level's new absolute size, 0 deleting it;
  ``side`` is ``bid`` or ``ask``;
* tardis.dev ``book_snapshot_N`` CSV (``book_snapshot_25``, ``book_snapshot_5``, any N), columns
  ``exchange,symbol,timestamp,local_timestamp`` then ``asks[i].price,asks[i].amount,
  bids[i].price,bids[i].amount`` for ``i`` in ``0..N-1``: each row one BookSnapshot of up to N
  levels a side (empty cells for missing levels).

For tardis, ``venue`` is the ``exchange`` column, ``symbol`` the ``symbol`` column,
``ts_event_ns = timestamp x 1000`` and ``ts_recv_ns = local_timestamp x 1000`` (the CSV has µs;
a delta takes those of its last row); ``sequence`` is ``None``. Prices and sizes are parsed
exactly to the symbol's scale.

Scales: :attr:`ReplayFeed.scales` maps each symbol to the scale of its events. It starts as the
``scales`` argument; a symbol not in it takes the scale of the first source that brings it: a
recording's header scale, or :data:`~feeds.base.DEFAULT_SCALE` for tardis. A recording whose
header scale differs from the symbol's is converted exactly (an error if a value would need
more decimals), so one symbol never arrives at two scales.

Several files are merged into one stream by ``ts_recv_ns`` (each file keeps its own order; ties
go to the earlier path), so recordings of several venues replay as one market.

Errors: a malformed file raises :class:`~otc.errors.ConfigError` naming the file and the line
(wrong number of columns, a non-numeric or negative value, a bad side or ``is_snapshot``, a
corrupt gzip stream, an unknown header), when the iteration reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import enum
import heapq
import io
import math
import time
import zlib
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from operator import attrgetter
from pathlib import Path

from feeds.base import DEFAULT_SCALE
from feeds.record import FORMAT, open_decompressed, read_events, read_header
from otc.errors import ConfigError, ValueParseError
from otc.model import BookDelta, BookEvent, BookSnapshot, Levels, Scale

__all__ = ["ReplayFeed", "SourceFormat", "detect_format", "read_tardis"]


class SourceFormat(enum.Enum):
    """The kinds of file :class:`ReplayFeed` reads."""

    RECORDING = FORMAT
    TARDIS_INCREMENTAL = "tardis incremental_book_L2"
    TARDIS_SNAPSHOT = "tardis book_snapshot_N"


_PREFIX = ["exchange", "symbol", "timestamp", "local_timestamp"]
_INCREMENTAL = [*_PREFIX, "is_snapshot", "side", "price", "amount"]


def _snapshot_columns(levels: int) -> list[str]:
    columns = list(_PREFIX)
    for i in range(levels):
        columns += [
            f"asks[{i}].price",
            f"asks[{i}].amount",
            f"bids[{i}].price",
            f"bids[{i}].amount",
        ]
    return columns


def _snapshot_levels(columns: list[str]) -> int | None:
    """N of a ``book_snapshot_N`` header, ``None`` when ``columns`` is not one."""
    levels, extra = divmod(len(columns) - len(_PREFIX), 4)
    if levels < 1 or extra or columns != _snapshot_columns(levels):
        return None
    return levels


def _first_line(path: Path) -> bytes:
    try:
        with open_decompressed(path) as fh:
            return fh.readline()
    except FileNotFoundError:
        raise
    except (EOFError, zlib.error, OSError) as exc:
        raise ConfigError(str(path), "line 1", f"unreadable: {exc}") from None


def detect_format(path: str | Path) -> SourceFormat:
    """What kind of file ``path`` is, from its first line.

    Raises:
        ConfigError: none of the kinds :class:`ReplayFeed` reads (names the file and line 1).
        FileNotFoundError: no such file.
    """
    path = Path(path)
    line = _first_line(path)
    if line.lstrip().startswith(b"{"):
        return SourceFormat.RECORDING
    columns = line.decode("utf-8", "replace").strip().split(",")
    if columns == _INCREMENTAL:
        return SourceFormat.TARDIS_INCREMENTAL
    if _snapshot_levels(columns) is not None:
        return SourceFormat.TARDIS_SNAPSHOT
    raise ConfigError(
        str(path),
        "line 1",
        f"not an {FORMAT} recording nor a tardis incremental_book_L2 or book_snapshot_N CSV "
        f"(starts {line[:60]!r})",
    )


# -- tardis CSV ------------------------------------------------------------------------------


def _rows(path: Path) -> Generator[tuple[int, list[str]], None, None]:
    """(line number, cells) of each non-blank row of a CSV, header included."""
    with io.TextIOWrapper(open_decompressed(path), encoding="utf-8", newline="") as text:
        reader = csv.reader(text, strict=True)
        try:
            for row in reader:
                if row:
                    yield reader.line_num, row
        except csv.Error as exc:
            raise ConfigError(str(path), f"line {reader.line_num}", f"bad CSV: {exc}") from None
        except (UnicodeDecodeError, EOFError, zlib.error, OSError) as exc:
            raise ConfigError(
                str(path),
                f"line {reader.line_num + 1}",
                f"unreadable (corrupt or truncated): {exc}",
            ) from None


def _micros(where: str, number: int, column: str, text: str) -> int:
    # At most 19 digits (µs since the epoch have 16): int() of thousands would raise ValueError.
    if not (text.isdigit() and text.isascii() and len(text) <= 19):
        what = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
        raise ConfigError(where, f"line {number}", f"{column} is not an integer of µs: {what!r}")
    return int(text)


def _value(where: str, number: int, column: str, parse: Callable[[str], int], text: str) -> int:
    try:
        return parse(text)
    except ValueParseError as exc:
        raise ConfigError(where, f"line {number}", f"{column}: {exc}") from None


def _incremental(
    where: str, rows: Iterator[tuple[int, list[str]]], scale_of: Callable[[str], Scale]
) -> Iterator[BookEvent]:
    key: tuple[bool, str, str, int] | None = None
    snapshot = False
    exchange = symbol = ""
    ts = local = 0
    bids: dict[int, int] = {}
    asks: dict[int, int] = {}
    for number, row in rows:
        if len(row) != len(_INCREMENTAL):
            raise ConfigError(
                where, f"line {number}", f"expected {len(_INCREMENTAL)} columns, got {len(row)}"
            )
        row_exchange, row_symbol, ts_text, local_text, snap_text, side, price_text, size_text = row
        if not row_exchange or not row_symbol:
            raise ConfigError(where, f"line {number}", "exchange and symbol must not be empty")
        row_ts = _micros(where, number, "timestamp", ts_text)
        row_local = _micros(where, number, "local_timestamp", local_text)
        if snap_text == "true":
            row_snapshot = True
        elif snap_text == "false":
            row_snapshot = False
        else:
            raise ConfigError(
                where, f"line {number}", f"is_snapshot must be true or false, got {snap_text!r}"
            )
        if side == "bid":
            is_bid = True
        elif side == "ask":
            is_bid = False
        else:
            raise ConfigError(where, f"line {number}", f"side must be bid or ask, got {side!r}")
        scale = scale_of(row_symbol)
        price = _value(where, number, "price", scale.price, price_text)
        size = _value(where, number, "amount", scale.size, size_text)
        row_key = (row_snapshot, row_exchange, row_symbol, row_ts if row_snapshot else row_local)
        if row_key != key:
            if key is not None:
                yield _event(snapshot, exchange, symbol, bids, asks, ts, local)
            key = row_key
            snapshot, exchange, symbol = row_snapshot, row_exchange, row_symbol
            bids, asks = {}, {}
        ts, local = row_ts, row_local
        (bids if is_bid else asks)[price] = size
    if key is not None:
        yield _event(snapshot, exchange, symbol, bids, asks, ts, local)


def _event(
    snapshot: bool,
    exchange: str,
    symbol: str,
    bids: dict[int, int],
    asks: dict[int, int],
    ts_us: int,
    local_us: int,
) -> BookEvent:
    cls = BookSnapshot if snapshot else BookDelta
    return cls(
        exchange,
        symbol,
        list(bids.items()),
        list(asks.items()),
        None,
        ts_us * 1000,
        local_us * 1000,
    )


def _snapshot_side(
    where: str, number: int, columns: list[str], row: list[str], first: int, scale: Scale
) -> Levels:
    """One side of a book_snapshot row: the (price, amount) pairs at ``first``, ``first+4``..."""
    side: dict[int, int] = {}
    for col in range(first, len(row), 4):
        price_text, size_text = row[col], row[col + 1]
        if not price_text and not size_text:
            continue
        if not price_text or not size_text:
            raise ConfigError(
                where, f"line {number}", f"{columns[col]} and {columns[col + 1]}: one is empty"
            )
        price = _value(where, number, columns[col], scale.price, price_text)
        if price in side:
            raise ConfigError(where, f"line {number}", f"{columns[col]}: price given twice")
        side[price] = _value(where, number, columns[col + 1], scale.size, size_text)
    return list(side.items())


def _snapshots(
    where: str,
    columns: list[str],
    rows: Iterator[tuple[int, list[str]]],
    scale_of: Callable[[str], Scale],
) -> Iterator[BookEvent]:
    for number, row in rows:
        if len(row) != len(columns):
            raise ConfigError(
                where, f"line {number}", f"expected {len(columns)} columns, got {len(row)}"
            )
        exchange, symbol, ts_text, local_text = row[:4]
        if not exchange or not symbol:
            raise ConfigError(where, f"line {number}", "exchange and symbol must not be empty")
        ts = _micros(where, number, "timestamp", ts_text)
        local = _micros(where, number, "local_timestamp", local_text)
        scale = scale_of(symbol)
        asks = _snapshot_side(where, number, columns, row, 4, scale)
        bids = _snapshot_side(where, number, columns, row, 6, scale)
        yield BookSnapshot(exchange, symbol, bids, asks, None, ts * 1000, local * 1000)


def _tardis(path: Path, scale_of: Callable[[str], Scale]) -> Generator[BookEvent, None, None]:
    where = str(path)
    with contextlib.closing(_rows(path)) as rows:
        first = next(rows, None)
        if first is None:
            raise ConfigError(where, "line 1", "empty file: no CSV header")
        _, columns = first
        if columns == _INCREMENTAL:
            yield from _incremental(where, rows, scale_of)
        elif _snapshot_levels(columns) is not None:
            yield from _snapshots(where, columns, rows, scale_of)
        else:
            raise ConfigError(
                where,
                "line 1",
                "not a tardis incremental_book_L2 or book_snapshot_N header "
                f"({','.join(columns[:6])}...)",
            )


def read_tardis(
    path: str | Path, *, scales: Mapping[str, Scale] | None = None
) -> Generator[BookEvent, None, None]:
    """The events of a tardis ``incremental_book_L2`` or ``book_snapshot_N`` CSV, in file order.

    Args:
        path: the CSV, plain or gzip.
        scales: symbol -> scale; symbols missing get :data:`~feeds.base.DEFAULT_SCALE`.

    Raises:
        ConfigError: while iterating, a malformed row (names the file and the line).
    """
    known = scales or {}
    return _tardis(Path(path), lambda symbol: known.get(symbol, DEFAULT_SCALE))


# -- the feed --------------------------------------------------------------------------------


class ReplayFeed:
    """Recordings and tardis CSV files replayed as one :class:`~feeds.base.Feed`.

    Reusable: each :meth:`events` (or :meth:`iter_events`) call replays the files from the
    start. Files are opened when the iteration starts, and read in batches in a worker thread
    so the event loop is not blocked by decompression and parsing.

    Args:
        paths: files to replay (see the module docstring); several are merged by
            ``ts_recv_ns``.
        speed: ``None`` replays as fast as the consumer takes events; otherwise events are paced
            by their ``ts_recv_ns``: one recorded second takes ``1 / speed`` seconds (``2.0``
            replays twice as fast). Pacing is against ``clock_ns`` from the first event, so it
            does not drift; events with ``ts_recv_ns == 0`` (unknown) are not paced.
        scales: symbol -> scale to deliver that symbol's events at (see the module docstring).
        clock_ns: monotonic clock in ns used for pacing.
        sleep: coroutine function sleeping a number of seconds (tests pass a fake).
        batch_size: events read per trip to the worker thread.
    """

    def __init__(
        self,
        paths: str | Path | Iterable[str | Path],
        *,
        speed: float | None = None,
        scales: Mapping[str, Scale] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        batch_size: int = 512,
    ) -> None:
        if isinstance(paths, str | Path):
            paths = [paths]
        self.paths = tuple(Path(p) for p in paths)
        if speed is not None and not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f"speed must be a positive finite number or None, got {speed!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.speed = speed
        self._requested = dict(scales or {})
        #: Symbol -> the scale of its events; grows as sources bring new symbols.
        self.scales: dict[str, Scale] = dict(self._requested)
        self.clock_ns = clock_ns
        self.sleep = sleep
        self.batch_size = batch_size

    def _scale_of(self, symbol: str) -> Scale:
        return self.scales.setdefault(symbol, DEFAULT_SCALE)

    def _source(self, path: Path) -> Generator[BookEvent, None, None]:
        if detect_format(path) is SourceFormat.RECORDING:
            header = read_header(path)
            for symbol, scale in header.symbol_scales.items():
                self.scales.setdefault(symbol, scale)
            _, events = read_events(path, scales={s: self.scales[s] for s in header.scales})
            with contextlib.closing(events):
                yield from events
        else:
            yield from _tardis(path, self._scale_of)

    def iter_events(self) -> Generator[BookEvent, None, None]:
        """Every event, merged by ``ts_recv_ns``, unpaced, in the calling thread (synchronous
        backtests use this; the engine uses :meth:`events`).

        Raises:
            ConfigError: a malformed file, when the iteration reaches the bad line.
        """
        self.scales = dict(self._requested)
        sources = [self._source(path) for path in self.paths]
        try:
            if len(sources) == 1:
                yield from sources[0]
            else:
                yield from heapq.merge(*sources, key=attrgetter("ts_recv_ns"))
        finally:
            for source in sources:
                source.close()

    async def events(self) -> AsyncGenerator[BookEvent, None]:
        """Every event, merged by ``ts_recv_ns``, paced when ``speed`` is set."""
        loop = asyncio.get_running_loop()
        iterator = self.iter_events()
        # One worker: reads run one after another, and the final close queues behind a read
        # still running when the consumer stops early (a generator cannot be closed mid-run).
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="otc-replay")
        speed = self.speed
        start: tuple[int, int] | None = None  # (first paced ts_recv_ns, clock_ns then)
        try:
            while batch := await loop.run_in_executor(reader, _take, iterator, self.batch_size):
                for event in batch:
                    if speed is not None and event.ts_recv_ns:
                        if start is None:
                            start = (event.ts_recv_ns, self.clock_ns())
                        else:
                            due_ns = start[1] + (event.ts_recv_ns - start[0]) / speed
                            wait_ns = due_ns - self.clock_ns()
                            if wait_ns > 0:
                                await self.sleep(wait_ns / 1e9)
                    yield event
        finally:
            reader.submit(iterator.close)
            reader.shutdown(wait=False)


def _take(iterator: Iterator[BookEvent], count: int) -> list[BookEvent]:
    return list(islice(iterator, count))
