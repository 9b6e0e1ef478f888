"""Recordings (``otc-book-events``): round trips, the documented layout, the header, corrupt
files, and venue recordings converted through their adapter."""

from __future__ import annotations

import array
import asyncio
import fcntl
import gzip
import itertools
import json
import logging
import os
import stat
import subprocess
import sys
import termios
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Self

import msgspec
import pytest

from feeds.bybit import BybitBookFeed
from feeds.record import (
    ConversionReport,
    Recorder,
    RecordError,
    RecordHeader,
    RecordWriter,
    read_events,
    read_header,
    record_from_venue,
)
from feeds.recorded import read_recording
from feeds.sim import SyntheticMarket, default_venues
from otc.book import L2Book, apply_event
from otc.errors import ConfigError
from otc.model import BookDelta, BookEvent, BookSnapshot, Scale

SCALE = Scale(price_decimals=2, size_decimals=4)
SPOT = "bybit_v5_spot_orderbook200_2026-08-09.jsonl"


def sim_events(steps: int = 40) -> list[BookEvent]:
    venues = [msgspec.structs.replace(v, levels=25) for v in default_venues()[:3]]
    market = SyntheticMarket("BTC-USDT", SCALE, venues=venues, seed=7)
    events: list[BookEvent] = list(market.snapshot_events(ts_ns=1_000))
    for step in range(1, steps + 1):
        events += market.step_events(step, 1_000 + step)
    return events


def write(
    path: Path,
    events: list[BookEvent],
    *,
    created_ns: int | None = None,
    flush_bytes: int | None = 1 << 20,
) -> Path:
    with RecordWriter(
        path,
        scales={"BTC-USDT": SCALE},
        source="test",
        created_ns=created_ns,
        flush_bytes=flush_bytes,
    ) as writer:
        writer.write(events)
    return path


def gzip_members(data: bytes) -> int:
    members = 0
    while data:
        inflater = zlib.decompressobj(wbits=31)
        inflater.decompress(data)
        assert inflater.eof
        data = inflater.unused_data
        members += 1
    return members


def test_synthetic_market_events_round_trip(tmp_path: Path) -> None:
    events = sim_events()
    assert any(isinstance(e, BookSnapshot) for e in events)
    assert any(isinstance(e, BookDelta) and any(s == 0 for _, s in e.bids + e.asks) for e in events)
    path = write(tmp_path / "sim.otc.gz", events, created_ns=123)
    header, read = read_events(path)
    assert list(read) == events
    assert header == RecordHeader(
        format="otc-book-events",
        version=1,
        scales={"BTC-USDT": (2, 4)},
        created_ns=123,
        source="test",
    )
    assert header.scale("BTC-USDT") == SCALE
    assert read_header(path) == header


def test_file_is_gzip_json_lines_as_documented(tmp_path: Path) -> None:
    snap = BookSnapshot("okx", "BTC-USDT", [(6400015, 10000)], [(6400100, 5000)], 7, 1, 2)
    delta = BookDelta("okx", "BTC-USDT", [], [(6400100, 0)], None, 3, 4)
    path = write(tmp_path / "doc.otc.gz", [snap, delta], created_ns=5)
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    assert lines == [
        b'{"format":"otc-book-events","version":1,"scales":{"BTC-USDT":[2,4]},'
        b'"created_ns":5,"source":"test"}',
        b'["snapshot","okx","BTC-USDT",[[6400015,10000]],[[6400100,5000]],7,1,2]',
        b'["delta","okx","BTC-USDT",[],[[6400100,0]],null,3,4]',
        b"",
    ]
    decoder = msgspec.json.Decoder(BookSnapshot | BookDelta)
    assert [decoder.decode(line) for line in lines[1:3]] == [snap, delta]


def test_plain_lines_with_blank_lines_are_read_too(tmp_path: Path) -> None:
    events = sim_events(5)
    packed = write(tmp_path / "a.otc.gz", events)
    plain = tmp_path / "a.otc.jsonl"
    plain.write_bytes(gzip.decompress(packed.read_bytes()).replace(b"\n", b"\n\n", 3))
    assert list(read_events(plain)[1]) == events


def test_each_flush_appends_a_gzip_member_and_a_flushed_prefix_is_readable(
    tmp_path: Path,
) -> None:
    events = sim_events()
    path = tmp_path / "flush.otc.gz"
    with RecordWriter(path, scales={"BTC-USDT": SCALE}, source="test", flush_bytes=None) as writer:
        writer.write(events[:10])
        assert path.read_bytes() == b""
        writer.flush()
        # What a crash here would leave: a valid recording of what was flushed.
        assert list(read_events(path)[1]) == events[:10]
        writer.write(events[10:])
    assert writer.events_written == len(events)
    assert gzip_members(path.read_bytes()) == 2
    assert list(read_events(path)[1]) == events

    auto = tmp_path / "auto.otc.gz"
    with RecordWriter(auto, scales={"BTC-USDT": SCALE}, source="test", flush_bytes=4096) as writer:
        for event in events:
            writer.write([event])
            assert writer.pending_bytes < 4096
    assert gzip_members(auto.read_bytes()) > 2
    assert list(read_events(auto)[1]) == events


async def test_async_writer_flushes_in_a_thread_in_order(tmp_path: Path) -> None:
    events = sim_events()
    path = tmp_path / "async.otc.gz"
    async with RecordWriter(
        path, scales={"BTC-USDT": SCALE}, source="test", flush_bytes=None
    ) as writer:
        writer.write(events[:5])
        flushing = asyncio.create_task(writer.flush_async())
        await asyncio.sleep(0)  # the task has taken the lines and waits for its thread
        writer.write(events[5:20])
        with pytest.raises(RuntimeError, match="flush_async"):
            writer.flush()
        second = asyncio.create_task(writer.flush_async())
        await asyncio.gather(flushing, second)
        writer.write(events[20:])
    assert gzip_members(path.read_bytes()) == 3
    assert list(read_events(path)[1]) == events


# -- the engine's recorder ----------------------------------------------------------------------


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for work done in a worker thread (a flush), polling."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - a worker thread moves it, nothing to await
            await asyncio.sleep(0.005)


async def test_recorder_flushes_in_the_background_and_on_close(tmp_path: Path) -> None:
    events = sim_events()
    path = tmp_path / "deep" / "engine.otc.gz"  # folders are made
    other = BookDelta("okx", "DOGE-USDT", [(1, 1)], [], 1, 0, 0)
    async with (
        Recorder(
            path, scales={"BTC-USDT": SCALE}, source="engine", interval_s=3600, flush_bytes=8192
        ) as recorder,
        asyncio.TaskGroup() as tg,
    ):
        task = tg.create_task(recorder.run(), name="recorder")
        recorder.record(events[:3])
        await asyncio.sleep(0.01)
        assert recorder.flushed == 0  # under flush_bytes, within the interval: still in memory
        for event in events[3:]:
            recorder.record([event, other])  # the unknown symbol is left out, the rest kept
        await until(lambda: recorder.flushed > 3)  # flush_bytes reached: flushed at once
        assert list(read_events(path)[1]) == events[: recorder.flushed]
        recorder.record([events[0]])
        task.cancel()
    assert recorder.error is None
    assert recorder.skipped == len(events) - 3
    assert recorder.flushed == recorder.recorded == len(events) + 1
    assert list(read_events(path)[1]) == [*events, events[0]]
    assert gzip_members(path.read_bytes()) >= 2
    assert read_header(path).source == "engine"


async def test_recorder_flushes_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "periodic.otc.gz"
    events = sim_events(steps=2)
    async with (
        Recorder(path, scales={"BTC-USDT": SCALE}, source="t", interval_s=0.02) as recorder,
        asyncio.TaskGroup() as tg,
    ):
        task = tg.create_task(recorder.run(), name="recorder")
        recorder.record(events)
        await until(lambda: recorder.flushed == len(events))
        assert list(read_events(path)[1]) == events
        task.cancel()


async def test_a_file_that_cannot_be_created_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    path = tmp_path / "plain" / "books.otc.gz"
    with pytest.raises(RecordError, match=r"plain/books\.otc\.gz: cannot record: "):
        async with Recorder(path, scales={"BTC-USDT": SCALE}, source="t"):
            pass


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
async def test_a_write_error_stops_the_recording_not_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = sim_events(steps=5)
    caplog.set_level(logging.ERROR, logger="feeds.record")
    async with Recorder("/dev/full", scales={"BTC-USDT": SCALE}, source="t") as recorder:
        recorder.record(events[:4])
        await recorder.flush()  # ENOSPC: logged and kept, not raised
        assert recorder.error is not None
        assert recorder.error.startswith("/dev/full: write failed: No space left on device")
        recorder.record(events[4:])  # dropped, not buffered
        assert recorder.writer.pending_bytes == 0
        await recorder.run()  # returns at once: nothing more is written
    assert recorder.flushed == 0
    assert recorder.dropped == len(events)
    assert [r.getMessage() for r in caplog.records if "recording stopped" in r.getMessage()]
    assert "/dev/full: write failed" in caplog.text


# A disk that hangs, for real: a FIFO whose reader reads nothing until the test says so. Its pipe
# is cut to one page, so a flush's write blocks in the kernel once the page is full, as a write
# to a hung disk or a stalled mount does; reading the pipe lets it go on.


class HungDisk:
    """A FIFO at ``path`` with a reader that does not read (until :meth:`drain`).

    Leaving its ``async with`` (entered after the recorder's) lets the disk come back, so the
    recorder's close cannot hang a failing test; :meth:`eof` then waits until it has closed.
    """

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        fcntl.fcntl(self.reader, fcntl.F_SETPIPE_SZ, 4096)
        self.received = bytearray()
        self._back: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._back = asyncio.create_task(self.drain_to_eof(), name="disk back")

    async def eof(self) -> None:
        if self._back is None:
            self._back = asyncio.create_task(self.drain_to_eof(), name="disk back")
        await self._back

    def waiting(self) -> int:
        """Bytes written and not read: the writer got into ``write`` once they are > 0."""
        got = array.array("i", [0])
        fcntl.ioctl(self.reader, termios.FIONREAD, got)
        return got[0]

    def drain(self) -> bool:
        """Read what is there; True at end of file (every writer has closed the FIFO)."""
        while True:
            try:
                chunk = os.read(self.reader, 1 << 16)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            self.received += chunk

    async def drain_to_eof(self) -> None:
        try:
            async with asyncio.timeout(10):
                while not self.drain():  # noqa: ASYNC110 - a pipe, read as it fills
                    await asyncio.sleep(0.005)
        finally:
            os.close(self.reader)


@pytest.mark.skipif(sys.platform != "linux", reason="F_SETPIPE_SZ as on Linux")
async def test_a_hung_disk_stops_the_recording_before_its_buffer_outgrows_the_cap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="feeds.record")
    path = tmp_path / "hung.otc.gz"
    disk = HungDisk(path)
    events = sim_events(steps=200)
    cap = 64 << 10
    largest = max(len(msgspec.json.encode(e)) + 1 for e in events)
    highest = 0
    given = 0
    async with (
        Recorder(
            path,
            scales={"BTC-USDT": SCALE},
            source="t",
            interval_s=3600,
            flush_bytes=8192,
            max_pending_bytes=cap,
        ) as recorder,
        disk,
        asyncio.TaskGroup() as tg,
    ):
        run = tg.create_task(recorder.run(), name="recorder")
        # The engine goes on applying events while a flush hangs; without a cap the buffer
        # grows with them (the loop stops at four times the cap, the test then fails).
        for event in itertools.cycle(events):
            recorder.record([event])
            given += 1
            highest = max(highest, recorder.writer.pending_bytes)
            if recorder.error is not None or highest > 4 * cap:
                break
            await asyncio.sleep(0)
        assert highest < cap + largest
        assert recorder.writer.pending_bytes == 0  # freed
        assert recorder.error is not None
        assert recorder.error.startswith(f"{path}: write stalled: over {cap} bytes pending")
        assert f"recording stopped: {recorder.error}" in caplog.text
        assert recorder.flushed + recorder.dropped == given
        recorder.record(events[:10])  # the quoting goes on; the recording does not
        assert recorder.writer.pending_bytes == 0
        assert recorder.dropped + recorder.flushed == given + 10
        flushed_at_stall = recorder.flushed
        # The disk comes back: the stalled write completes, and its events are in the file.
        async with asyncio.timeout(10):
            while not run.done():
                disk.drain()
                await asyncio.sleep(0.005)
        assert recorder.flushed > flushed_at_stall
        assert recorder.flushed + recorder.dropped == given + 10
    await disk.eof()
    assert recorder.error is not None  # still reported as incomplete (otc serve: status 1)
    copy = tmp_path / "copy.otc.gz"
    copy.write_bytes(disk.received)
    recorded = list(itertools.islice(itertools.cycle(events), recorder.flushed))
    assert list(read_events(copy)[1]) == recorded  # a valid recording of everything before


@pytest.mark.skipif(sys.platform != "linux", reason="F_SETPIPE_SZ as on Linux")
async def test_closing_during_a_hung_write_leaves_the_descriptor_to_that_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hung.otc.gz"
    disk = HungDisk(path)
    events = sim_events(steps=60)
    async with (
        Recorder(
            path, scales={"BTC-USDT": SCALE}, source="t", interval_s=3600, flush_bytes=8192
        ) as recorder,
        disk,
        asyncio.TaskGroup() as tg,
    ):
        fd = recorder.writer._file.fileno() if recorder.writer._file is not None else -1
        run = tg.create_task(recorder.run(), name="recorder")
        recorder.record(events)  # one flush, bigger than the pipe: its write blocks
        await until(lambda: disk.waiting() > 0)
        run.cancel()  # shutdown while the disk hangs: the write goes on in its thread
        await asyncio.wait([run])
        await recorder.aclose()
        # Closed under that write, the descriptor's number could be reused by the next file
        # opened (a journal), and the rest of the write (or the cut-back after an error) would
        # land there.
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
    await disk.eof()  # the write completes, then its thread closes the file
    copy = tmp_path / "copy.otc.gz"
    copy.write_bytes(disk.received)
    assert list(read_events(copy)[1]) == events


@pytest.mark.skipif(sys.platform != "linux", reason="F_SETPIPE_SZ as on Linux")
async def test_a_flush_after_a_cancelled_one_waits_for_its_write(tmp_path: Path) -> None:
    """A slow write cancelled at shutdown goes on in its thread; the last flush of ``aclose``
    must wait for it: written at the same time, both took the file's size from before either,
    so the size the writer counted (what a failed write is cut back to) missed one member."""
    path = tmp_path / "slow.otc.gz"
    disk = HungDisk(path)
    events = sim_events(steps=120)
    first, then = events[:60], events[60:]
    async with (
        Recorder(
            path, scales={"BTC-USDT": SCALE}, source="t", interval_s=3600, flush_bytes=8192
        ) as recorder,
        disk,
        asyncio.TaskGroup() as tg,
    ):
        run = tg.create_task(recorder.run(), name="recorder")
        recorder.record(first)  # one flush, bigger than the pipe: its write blocks
        await until(lambda: disk.waiting() > 0)
        run.cancel()  # shutdown while the write is slow: it goes on in its thread
        await asyncio.wait([run])
        recorder.record(then)  # for the last flush
        closing = tg.create_task(recorder.aclose(), name="close")
        await asyncio.sleep(0.05)  # (the last flush's thread, if any, gets into its write)
        async with asyncio.timeout(10):  # a guard against a hang, not a timing
            while not closing.done():  # the disk comes back: both writes complete
                disk.drain()
                await asyncio.sleep(0.005)
    await disk.eof()
    assert recorder.writer._size == len(disk.received)
    copy = tmp_path / "copy.otc.gz"
    copy.write_bytes(disk.received)
    assert list(read_events(copy)[1]) == events


_FILE_SIZE_LIMIT = """
import asyncio, json, resource, sys
from feeds.record import Recorder
sys.path.insert(0, sys.argv[2])
from test_record import SCALE, sim_events

async def main():
    events = sim_events(steps=400)
    async with Recorder(sys.argv[1], scales={"BTC-USDT": SCALE}, source="t") as recorder:
        # Writes beyond 12 kB fail with EFBIG (Python ignores SIGXFSZ): a real failing disk.
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, resource.RLIM_INFINITY))
        for start in range(0, len(events), 20):
            recorder.record(events[start : start + 20])
            await recorder.flush()
    print(json.dumps({"flushed": recorder.flushed, "dropped": recorder.dropped,
                      "error": recorder.error, "events": len(events)}))

asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE as on Linux")
def test_a_flush_that_fails_half_way_is_cut_off_the_file(tmp_path: Path) -> None:
    path = tmp_path / "limited.otc.gz"
    got = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT, str(path), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    report = json.loads(got.stdout)
    assert report["error"] == f"{path}: write failed: File too large"
    assert 0 < report["flushed"] < report["events"]
    assert report["flushed"] + report["dropped"] == report["events"]
    # The file ends with its last complete member: every flushed event, readable, no error.
    assert path.stat().st_size <= 12_000
    assert list(read_events(path)[1]) == sim_events(steps=400)[: report["flushed"]]


def test_a_batch_with_an_unknown_symbol_is_refused_whole(tmp_path: Path) -> None:
    good = BookDelta("okx", "BTC-USDT", [(1, 1)], [], 1, 0, 0)
    bad = BookDelta("okx", "ETH-USDT", [(1, 1)], [], 2, 0, 0)
    path = tmp_path / "x.otc.gz"
    with RecordWriter(path, scales={"BTC-USDT": SCALE}, source="test") as writer:
        with pytest.raises(ValueError, match="'ETH-USDT' has no scale"):
            writer.write([good, bad])
        writer.write([good])
        assert writer.events_written == 1
    assert list(read_events(path)[1]) == [good]


def test_writer_is_single_use(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / "x.otc.gz", scales={}, source="test")
    with writer, pytest.raises(RuntimeError, match="single use"):
        writer.open()
    with pytest.raises(ValueError, match="closed"):
        writer.write([])
    with pytest.raises(RuntimeError, match="single use"), writer:
        pass


def raw_file(path: Path, *lines: bytes) -> Path:
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines)))
    return path


HEADER = (
    b'{"format":"otc-book-events","version":1,"scales":{"BTC-USDT":[2,4]},'
    b'"created_ns":1,"source":"t"}'
)


@pytest.mark.parametrize(
    ("first", "problem"),
    [
        (HEADER.replace(b"otc-book-events", b"otc-book"), "format is 'otc-book'"),
        (HEADER.replace(b'"version":1', b'"version":2'), "version 2 is not supported"),
        (HEADER.replace(b'"scales":{"BTC-USDT":[2,4]},', b""), "bad header"),
        (HEADER.replace(b'"source"', b'"sauce"'), "bad header"),
        (HEADER.replace(b"[2,4]", b"[-2,4]"), "bad header"),
        (HEADER.replace(b"[2,4]", b"[2]"), "bad header"),
        (b'["snapshot","okx","BTC-USDT",[],[],null,0,0]', "not an otc-book-events header"),
        (b"exchange,symbol,timestamp", "not an otc-book-events header"),
    ],
)
def test_bad_headers_are_refused_naming_file_and_line_1(
    tmp_path: Path, first: bytes, problem: str
) -> None:
    path = raw_file(tmp_path / "bad.otc.gz", first)
    with pytest.raises(ConfigError, match=problem) as info:
        read_events(path)
    assert info.value.source == str(path)
    assert info.value.path == "line 1"


def test_an_empty_file_has_no_header(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "empty.otc.gz")
    with pytest.raises(ConfigError, match="empty file") as info:
        read_header(path)
    assert info.value.path == "line 1"


GOOD = b'["delta","okx","BTC-USDT",[[6400015,10000]],[],1,0,0]'


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'["delta","okx","BTC-USDT",[[6400015,10000]],[],1,0', "not a book event"),
        (b"garbage", "not a book event"),
        (b'["trade","okx","BTC-USDT",[],[],1,0,0]', "not a book event"),
        (b'["delta","okx","BTC-USDT",[[6400015.5,10000]],[],1,0,0]', "not a book event"),
        (b'["delta","okx","BTC-USDT",[[6400015,10000,1]],[],1,0,0]', "not a book event"),
        (b'{"format":"otc-book-events"}', "not a book event"),
        (b'["delta","okx","ETH-USDT",[],[],1,0,0]', "'ETH-USDT' has no scale in the header"),
    ],
)
def test_a_corrupt_line_is_named_by_file_and_line(
    tmp_path: Path, line: bytes, problem: str
) -> None:
    path = raw_file(tmp_path / "corrupt.otc.gz", HEADER, GOOD, line, GOOD)
    _, events = read_events(path)  # the header is fine: lines are checked as they are read
    assert next(events) == msgspec.json.decode(GOOD, type=BookDelta)
    with pytest.raises(ConfigError, match=problem) as info:
        next(events)
    assert info.value.source == str(path)
    assert info.value.path == "line 3"


def test_a_truncated_file_is_an_error_after_its_last_good_line(tmp_path: Path) -> None:
    events = sim_events()
    path = write(tmp_path / "cut.otc.gz", events)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _, read = read_events(path)
    got: list[BookEvent] = []
    with pytest.raises(ConfigError, match="corrupt or truncated") as info:
        got.extend(read)
    assert info.value.source == str(path)
    assert got == events[: len(got)]
    assert info.value.path == f"line {len(got) + 2}"


# -- venue recordings through their adapter ---------------------------------------------------


def live_events(path: Path) -> tuple[BybitBookFeed, list[BookEvent]]:
    feed = BybitBookFeed()
    events: list[BookEvent] = []
    for record in read_recording(path):
        events += feed.on_message(record.data, record.ts_recv_ns)
    return feed, events


def test_bybit_recording_converts_and_replays_to_the_live_books(
    shared_data: Path, tmp_path: Path
) -> None:
    source = shared_data / "bybit" / SPOT
    live, emitted = live_events(source)
    out = tmp_path / "spot.otc.gz"
    report = record_from_venue("bybit", [source], out, created_ns=9)
    assert report == ConversionReport(
        venue="bybit",
        messages=report.messages,
        events=550,
        snapshots=2,
        deltas=548,
        gaps=0,
        checksums_failed=0,
        malformed=0,
        scales={"BTCUSDT": (12, 12), "ETHUSDT": (12, 12)},
        errors=[],
    )
    header, read = read_events(out)
    assert header.source == f"bybit: {SPOT}"
    assert header.created_ns == 9
    events = list(read)
    assert events == emitted
    books: dict[str, L2Book] = {}
    for event in events:
        book = books.setdefault(
            event.symbol, L2Book(event.venue, event.symbol, header.scale(event.symbol))
        )
        apply_event(book, event)
    assert books == live.books
    for symbol, book in books.items():
        book._check()
        assert len(book) > 100
        assert (book.best_bid, book.best_ask, book.sequence) == (
            live.books[symbol].best_bid,
            live.books[symbol].best_ask,
            live.books[symbol].sequence,
        )


def test_conversion_maps_symbols_and_scales(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "bybit" / "bybit_histdata_linear_XRPUSDT_ob500_2024-12-01.data.jsonl"
    out = tmp_path / "xrp.otc.gz"
    report = record_from_venue(
        "bybit", [source], out, symbols={"XRPUSDT": "XRP-USDT"}, scales={"XRP-USDT": Scale(4, 0)}
    )
    assert (report.snapshots, report.deltas, report.malformed) == (1, 49, 0)
    header, read = read_events(out)
    assert header.scales == {"XRP-USDT": (4, 0)}
    first = next(read)
    assert first.symbol == "XRP-USDT"
    assert first.bids[0] == (19531, 6203)  # "1.9531", "6203"


def test_conversion_counts_gaps_and_malformed_messages_as_verify_does(
    shared_data: Path, tmp_path: Path
) -> None:
    lines = (shared_data / "bybit" / SPOT).read_bytes().splitlines(keepends=True)
    # Drop the 10th message (a delta: a gap follows), and break the 20th.
    lines[19] = b'{"recv_ts": 1.0, "msg": {"topic": "orderbook.200.BTCUSDT", "data": 5}}\n'
    del lines[9]
    source = tmp_path / "holes.jsonl"
    source.write_bytes(b"".join(lines))
    report = record_from_venue("bybit", [source], tmp_path / "holes.otc.gz")
    assert report.gaps == 1
    assert report.malformed == 1
    assert report.messages == len(lines)
    assert len(report.errors) == 2
    assert report.errors[0].startswith(f"{source}:10: ")
    assert "sequence gap" in report.errors[0]
    assert report.errors[1].startswith(f"{source}:19: malformed message")
    # The gap's symbol waits for a snapshot that never comes: fewer events, none after the gap.
    assert report.events == len(list(read_events(tmp_path / "holes.otc.gz")[1]))
    assert report.events < 550 - 2


def test_conversion_keeps_the_events_of_a_message_that_failed_for_another_pair(
    tmp_path: Path,
) -> None:
    # A Kraken v2 message whose first entry failed its checksum still applied the second; the
    # conversion wrote none of its events, so the recording lacked that update for good.
    def entry(pair: str, bid: float, checksum: int | None = None) -> dict[str, object]:
        levels = {"symbol": pair, "bids": [{"price": bid, "qty": 1.0}], "asks": []}
        return levels if checksum is None else {**levels, "checksum": checksum}

    messages = [
        {
            "channel": "book",
            "type": "snapshot",
            "data": [entry("XBT/USD", 100), entry("ETH/USD", 10)],
        },
        {
            "channel": "book",
            "type": "update",
            "data": [entry("XBT/USD", 99, 1), entry("ETH/USD", 9)],
        },
    ]
    source = tmp_path / "kraken.jsonl"
    source.write_text("".join(json.dumps({"recv_ts": 1.0, "msg": m}) + "\n" for m in messages))
    out = tmp_path / "kraken.otc.jsonl"
    report = record_from_venue("kraken", [source], out)
    assert (report.checksums_failed, report.snapshots, report.deltas) == (1, 2, 1)
    (delta,) = [e for e in read_events(out)[1] if isinstance(e, BookDelta)]
    assert delta.symbol == "ETH/USD"
