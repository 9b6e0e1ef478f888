"""ReplayFeed: tardis.dev CSV (incremental and snapshots, real samples and inline cases), our
recordings, merging, scales, pacing with a fake clock, and malformed files."""

from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path

import pytest

from feeds.base import DEFAULT_SCALE, Feed
from feeds.record import RecordWriter
from feeds.recorded import read_recording
from feeds.replay import ReplayFeed, SourceFormat, detect_format, read_tardis
from otc.book import L2Book, apply_event
from otc.errors import ConfigError
from otc.model import BookDelta, BookEvent, BookSnapshot, Scale, Side

S = DEFAULT_SCALE
INCREMENTAL = "nautilus_deribit_incremental_book_L2_BTC-PERPETUAL.csv"
SNAPSHOT_5 = "nautilus_binance-futures_book_snapshot_5_BTCUSDT.csv"
SNAPSHOT_25 = "nautilus_binance-futures_book_snapshot_25_BTCUSDT.csv"
HEAD = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n"


def lv(*pairs: tuple[str, str], scale: Scale = S) -> list[tuple[int, int]]:
    return [(scale.price(p), scale.size(s)) for p, s in pairs]


def books(events: list[BookEvent]) -> dict[tuple[str, str], L2Book]:
    out: dict[tuple[str, str], L2Book] = {}
    for event in events:
        key = (event.venue, event.symbol)
        book = out.setdefault(key, L2Book(event.venue, event.symbol, S))
        apply_event(book, event)
        book._check()
    return out


async def collect(feed: ReplayFeed) -> list[BookEvent]:
    return [event async for event in feed.events()]


# -- tardis incremental_book_L2 ----------------------------------------------------------------


async def test_real_incremental_snapshot_rows_form_one_snapshot(shared_data: Path) -> None:
    path = shared_data / "tardis" / INCREMENTAL
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 15
    feed = ReplayFeed(path)
    assert isinstance(feed, Feed)
    events = await collect(feed)
    assert events == list(feed.iter_events())
    assert events == [
        BookSnapshot(
            "deribit",
            "BTC-PERPETUAL",
            [],
            lv(*((r["price"], r["amount"]) for r in rows)),
            None,
            1585699200245000 * 1000,
            1585699200355684 * 1000,
        )
    ]
    book = books(events)["deribit", "BTC-PERPETUAL"]
    assert book.depth(Side.BUY) == 15
    assert book.best_ask == S.price("6421.5")
    assert book.ask_size(S.price("6428.5")) == S.size("39950")
    assert book.best_bid is None
    assert feed.scales == {"BTC-PERPETUAL": DEFAULT_SCALE}


INLINE = HEAD + (
    "deribit,BTC-PERPETUAL,1000,1100,true,bid,100.5,10\n"
    "deribit,BTC-PERPETUAL,1000,1100,true,bid,100,20\n"
    "deribit,BTC-PERPETUAL,1000,1100,true,ask,101,5\n"
    "deribit,BTC-PERPETUAL,1000,1100,true,ask,101.5,7\n"
    "deribit,BTC-PERPETUAL,2000,2100,false,bid,100.5,0\n"
    "deribit,BTC-PERPETUAL,2001,2100,false,ask,101,6\n"
    "deribit,BTC-PERPETUAL,3000,3100,false,bid,99,1\n"
    "deribit,BTC-PERPETUAL,4000,4100,true,bid,98,3\n"
    "deribit,BTC-PERPETUAL,4000,4100,true,ask,102,4\n"
    "deribit,BTC-PERPETUAL,5000,5100,false,ask,102.5,1\n"
)
INLINE_EVENTS: list[BookEvent] = [
    BookSnapshot(
        "deribit",
        "BTC-PERPETUAL",
        lv(("100.5", "10"), ("100", "20")),
        lv(("101", "5"), ("101.5", "7")),
        None,
        1_000_000,
        1_100_000,
    ),
    BookDelta(
        "deribit", "BTC-PERPETUAL", lv(("100.5", "0")), lv(("101", "6")), None, 2_001_000, 2_100_000
    ),
    BookDelta("deribit", "BTC-PERPETUAL", lv(("99", "1")), [], None, 3_000_000, 3_100_000),
    BookSnapshot(
        "deribit", "BTC-PERPETUAL", lv(("98", "3")), lv(("102", "4")), None, 4_000_000, 4_100_000
    ),
    BookDelta("deribit", "BTC-PERPETUAL", [], lv(("102.5", "1")), None, 5_000_000, 5_100_000),
]


def test_incremental_groups_updates_and_a_second_snapshot_resets(tmp_path: Path) -> None:
    path = tmp_path / "inc.csv"
    path.write_text(INLINE)
    events = list(ReplayFeed(path).iter_events())
    assert events == INLINE_EVENTS
    middle = books(events[:3])["deribit", "BTC-PERPETUAL"]
    assert list(middle.bids()) == lv(("100", "20"), ("99", "1"))
    assert list(middle.asks()) == lv(("101", "6"), ("101.5", "7"))
    final = books(events)["deribit", "BTC-PERPETUAL"]
    assert list(final.bids()) == lv(("98", "3"))
    assert list(final.asks()) == lv(("102", "4"), ("102.5", "1"))


def test_incremental_groups_only_consecutive_rows_of_one_symbol(tmp_path: Path) -> None:
    path = tmp_path / "multi.csv"
    path.write_text(
        HEAD + "binance,BTCUSDT,1,10,false,bid,1,1\n"
        "binance,ETHUSDT,1,10,false,bid,2,1\n"
        "binance,BTCUSDT,2,10,false,ask,3,1\n"
        "binance,BTCUSDT,3,10,false,ask,4,2\n"
        "binance,BTCUSDT,3,10,false,ask,4,5\n"
    )
    events = list(read_tardis(path, scales={"ETHUSDT": Scale(1, 1)}))
    assert [(type(e), e.symbol) for e in events] == [
        (BookDelta, "BTCUSDT"),
        (BookDelta, "ETHUSDT"),
        (BookDelta, "BTCUSDT"),
    ]
    assert events[1].bids == [(20, 10)]  # at the scale asked for
    assert events[2].asks == lv(("3", "1"), ("4", "5"))  # the last size of a price wins
    assert events[2].ts_event_ns == 3_000


# -- tardis book_snapshot_N --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "levels"), [(SNAPSHOT_5, 5), (SNAPSHOT_25, 25)])
def test_book_snapshot_rows_are_snapshots_with_the_right_touch(
    shared_data: Path, name: str, levels: int
) -> None:
    path = shared_data / "tardis" / name
    assert detect_format(path) is SourceFormat.TARDIS_SNAPSHOT
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    events = list(ReplayFeed(path).iter_events())
    assert len(events) == len(rows) == 10
    for event, row in zip(events, rows, strict=True):
        assert isinstance(event, BookSnapshot)
        assert (event.venue, event.symbol) == ("binance-futures", "BTCUSDT")
        assert event.ts_event_ns == int(row["timestamp"]) * 1000
        assert event.ts_recv_ns == int(row["local_timestamp"]) * 1000
        assert len(event.bids) == len(event.asks) == levels
        assert event.bids[0] == lv((row["bids[0].price"], row["bids[0].amount"]))[0]
        assert event.asks[0] == lv((row["asks[0].price"], row["asks[0].amount"]))[0]
        last = levels - 1
        assert event.bids[last] == lv((row[f"bids[{last}].price"], row[f"bids[{last}].amount"]))[0]
    book = books(events)["binance-futures", "BTCUSDT"]
    assert book.best_ask == S.price(rows[-1]["asks[0].price"])
    assert book.best_bid == S.price(rows[-1]["bids[0].price"])
    assert book.bid_size(book.best_bid) == S.size(rows[-1]["bids[0].amount"])
    assert events[0].asks[0] == lv(("11657.08", "1.714"))[0]
    assert events[0].bids[0] == lv(("11657.07", "10.896"))[0]


def snapshot_header(levels: int) -> str:
    cells = ["exchange", "symbol", "timestamp", "local_timestamp"]
    for i in range(levels):
        cells += [f"asks[{i}].price", f"asks[{i}].amount", f"bids[{i}].price", f"bids[{i}].amount"]
    return ",".join(cells) + "\n"


def test_book_snapshot_empty_cells_are_missing_levels(tmp_path: Path) -> None:
    path = tmp_path / "snap.csv"
    path.write_text(
        snapshot_header(3) + "okex,BTC-USDT,5,6,101,1,100,2,102,3,,,,,,\n"
        "okex,BTC-USDT,7,8,,,,,,,,,,,,\n"
    )
    events = list(read_tardis(path))
    assert events == [
        BookSnapshot(
            "okex", "BTC-USDT", lv(("100", "2")), lv(("101", "1"), ("102", "3")), None, 5000, 6000
        ),
        BookSnapshot("okex", "BTC-USDT", [], [], None, 7000, 8000),
    ]


# -- files: gzip, detection, merging, scales ---------------------------------------------------


@pytest.mark.parametrize("name", [INCREMENTAL, SNAPSHOT_5, SNAPSHOT_25])
def test_gzip_files_give_the_same_events(shared_data: Path, tmp_path: Path, name: str) -> None:
    plain = shared_data / "tardis" / name
    packed = tmp_path / f"{name}.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    unnamed = tmp_path / "no-suffix"  # told apart by content, not name
    unnamed.write_bytes(packed.read_bytes())
    expected = list(ReplayFeed(plain).iter_events())
    assert expected
    assert list(ReplayFeed(packed).iter_events()) == expected
    assert list(ReplayFeed(unnamed).iter_events()) == expected


def test_gzip_inline_csv(tmp_path: Path) -> None:
    path = tmp_path / "inc.csv.gz"
    path.write_bytes(gzip.compress(INLINE.encode()))
    assert detect_format(path) is SourceFormat.TARDIS_INCREMENTAL
    assert list(ReplayFeed(path).iter_events()) == INLINE_EVENTS


def recording(path: Path, events: list[BookEvent], scales: dict[str, Scale] | None = None) -> Path:
    with RecordWriter(path, scales=scales or {"BTC-USDT": Scale(2, 4)}, source="t") as writer:
        writer.write(events)
    return path


def delta(venue: str, ts: int, price: int = 6400015, symbol: str = "BTC-USDT") -> BookDelta:
    return BookDelta(venue, symbol, [(price, 10000)], [], None, ts, ts)


def test_files_merge_by_receive_time(tmp_path: Path) -> None:
    a = recording(tmp_path / "a.otc.gz", [delta("a", t) for t in (1, 3, 5)])
    b = recording(tmp_path / "b.otc.gz", [delta("b", t) for t in (2, 3, 4)])
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(HEAD + "c,BTC-USDT,0,0,false,bid,1,1\n")  # ts 0 ns, first
    merged = list(ReplayFeed([a, b, csv_path]).iter_events())
    assert [(e.venue, e.ts_recv_ns) for e in merged] == [
        ("c", 0),
        ("a", 1),
        ("b", 2),
        ("a", 3),
        ("b", 3),
        ("b", 4),
        ("a", 5),
    ]


def test_recordings_are_delivered_at_the_requested_scale_exactly(tmp_path: Path) -> None:
    path = recording(tmp_path / "r.otc.gz", [delta("okx", 1), delta("okx", 2, price=6400010)])
    finer = ReplayFeed(path, scales={"BTC-USDT": Scale(4, 6)})
    assert [e.bids for e in finer.iter_events()] == [
        [(640001500, 1000000)],
        [(640001000, 1000000)],
    ]
    assert finer.scales == {"BTC-USDT": Scale(4, 6)}
    coarser = ReplayFeed(path, scales={"BTC-USDT": Scale(1, 4)})
    events = coarser.iter_events()
    with pytest.raises(ConfigError, match="price 6400015 needs more decimals") as info:
        next(events)
    assert info.value.source == str(path)
    assert info.value.path == "line 2"
    coarse = ReplayFeed(path, scales={"BTC-USDT": Scale(1, 4)}).iter_events()
    with pytest.raises(ConfigError, match="line 2"):
        list(coarse)


def test_a_symbol_keeps_the_scale_of_the_first_file_that_brings_it(tmp_path: Path) -> None:
    a = recording(tmp_path / "a.otc.gz", [delta("a", 1)])
    b = recording(
        tmp_path / "b.otc.gz",
        [delta("b", 2, price=64000150)],
        scales={"BTC-USDT": Scale(3, 4)},
    )
    feed = ReplayFeed([a, b])
    assert [e.bids for e in feed.iter_events()] == [[(6400015, 10000)], [(6400015, 10000)]]
    assert feed.scales == {"BTC-USDT": Scale(2, 4)}


# -- pacing --------------------------------------------------------------------------------------


class FakeTime:
    """A monotonic clock that only moves when slept on (or when a test moves it)."""

    def __init__(self) -> None:
        self.now_ns = 5_000_000_000
        self.delays: list[float] = []

    def clock_ns(self) -> int:
        return self.now_ns

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now_ns += round(seconds * 1e9)


def paced_recording(tmp_path: Path) -> Path:
    stamps = [0, 1_000_000_000, 2_000_000_000, 2_000_000_000, 2_500_000_000, 0, 4_000_000_000]
    return recording(tmp_path / "paced.otc.gz", [delta("okx", ts) for ts in stamps])


async def test_pacing_sleeps_the_receive_time_gaps_divided_by_speed(tmp_path: Path) -> None:
    fake = FakeTime()
    feed = ReplayFeed(
        paced_recording(tmp_path), speed=2.0, clock_ns=fake.clock_ns, sleep=fake.sleep
    )
    events = await collect(feed)
    assert len(events) == 7
    # Gaps of 1 s, 0, 0.5 s and 1.5 s at twice the speed; ts 0 events (unknown) are not paced.
    assert fake.delays == pytest.approx([0.5, 0.25, 0.75])


async def test_pacing_does_not_drift_behind_a_slow_consumer(tmp_path: Path) -> None:
    fake = FakeTime()
    feed = ReplayFeed(
        paced_recording(tmp_path), speed=1.0, clock_ns=fake.clock_ns, sleep=fake.sleep
    )
    async for _ in feed.events():
        fake.now_ns += 300_000_000  # the consumer takes 0.3 s per event
    # Due at +1 s (0.3 s already spent), +1, +1.5 (both already late: no sleep), +3 s (2.2 s
    # spent): the schedule holds, where sleeping each gap would have taken 1, 0.5 and 1.5 s.
    assert fake.delays == pytest.approx([0.7, 0.8])
    assert fake.now_ns == 5_000_000_000 + 3_600_000_000


async def test_no_speed_means_no_sleeping(tmp_path: Path) -> None:
    fake = FakeTime()
    feed = ReplayFeed(paced_recording(tmp_path), clock_ns=fake.clock_ns, sleep=fake.sleep)
    assert len(await collect(feed)) == 7
    assert fake.delays == []


@pytest.mark.parametrize("speed", [0.0, -1.0, math.nan, math.inf])
def test_speed_must_be_positive_and_finite(speed: float) -> None:
    with pytest.raises(ValueError, match="speed"):
        ReplayFeed("x.csv", speed=speed)


async def test_stopping_early_and_replaying_again(tmp_path: Path) -> None:
    path = tmp_path / "inc.csv"
    path.write_text(INLINE)
    feed = ReplayFeed(path, batch_size=1)
    events = feed.events()
    assert await anext(events) == INLINE_EVENTS[0]
    await events.aclose()
    assert await collect(feed) == INLINE_EVENTS


# -- malformed files -----------------------------------------------------------------------------

ROW = "deribit,BTC-PERPETUAL,1000,1100,false,bid,100.5,10"


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("deribit,BTC-PERPETUAL,1000,1100,false,bid,100.5", "expected 8 columns, got 7"),
        (ROW + ",1", "expected 8 columns, got 9"),
        (ROW.replace("100.5", "abc"), "price: price is not a number: 'abc'"),
        (ROW.replace("100.5", "0"), "price must be positive"),
        (ROW.removesuffix(",10") + ",-1", "amount: size must not be negative"),
        (ROW.removesuffix(",10") + ",1.0000000000001", "amount: .* more than 12 decimal places"),
        (ROW.replace("bid", "buy"), "side must be bid or ask, got 'buy'"),
        (ROW.replace("false", "yes"), "is_snapshot must be true or false"),
        (ROW.replace("1000", "1e3"), "timestamp is not an integer"),
        (ROW.replace("1100", "-1100"), "local_timestamp is not an integer"),
        # int() of 5000 digits raised a bare ValueError (Python's integer string limit)
        (ROW.replace("1000", "9" * 5000), r"timestamp .* '9{40}\.\.\. \(5000 characters\)'"),
        (ROW.replace("deribit", ""), "exchange and symbol must not be empty"),
        ('deribit,"BTC"X,1000,1100,false,bid,1,1', "bad CSV"),
    ],
)
async def test_malformed_incremental_rows_name_file_and_line(
    tmp_path: Path, bad: str, problem: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(HEAD + ROW + "\n" + bad + "\n" + ROW + "\n")
    feed = ReplayFeed(path)
    with pytest.raises(ConfigError, match=problem) as info:
        await collect(feed)
    assert info.value.source == str(path)
    assert info.value.path == "line 3"


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("okex,BTC-USDT,5,6,101,1,100,2", "expected 12 columns, got 8"),
        ("okex,BTC-USDT,5,6,101,1,100,2,x,3,99,1", r"asks\[1\].price: price is not a number"),
        ("okex,BTC-USDT,5,6,101,1,100,2,102,3,99,", r"bids\[1\].price and bids\[1\].amount"),
        ("okex,BTC-USDT,5,6,101,1,100,2,,3,99,1", r"asks\[1\].price and asks\[1\].amount"),
        ("okex,BTC-USDT,5,6,101,1,100,2,101,3,99,1", r"asks\[1\].price: price given twice"),
        ("okex,BTC-USDT,5.5,6,101,1,100,2,102,3,99,1", "timestamp is not an integer"),
        ("okex,BTC-USDT,5," + "6" * 20 + ",101,1,100,2,102,3,99,1", "local_timestamp is not an"),
    ],
)
def test_malformed_snapshot_rows_name_file_and_line(tmp_path: Path, bad: str, problem: str) -> None:
    path = tmp_path / "bad.csv.gz"
    good = "okex,BTC-USDT,5,6,101,1,100,2,102,3,99,1"
    path.write_bytes(gzip.compress((snapshot_header(2) + f"{good}\n{good}\n{bad}\n").encode()))
    events = ReplayFeed(path).iter_events()
    assert next(events).asks == lv(("101", "1"), ("102", "3"))
    next(events)
    with pytest.raises(ConfigError, match=problem) as info:
        next(events)
    assert info.value.source == str(path)
    assert info.value.path == "line 4"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"exchange,symbol,timestamp,local_timestamp,side,price,amount\n",
        b"exchange,symbol,timestamp,local_timestamp,asks[0].price,asks[0].amount\n",
        b"hello\n",
    ],
)
def test_unknown_files_are_refused_at_line_1(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "unknown.csv"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not an otc-book-events recording") as info:
        list(ReplayFeed(path).iter_events())
    assert info.value.source == str(path)
    assert info.value.path == "line 1"


def test_a_truncated_gzip_csv_is_an_error_naming_the_file(tmp_path: Path) -> None:
    rows = "".join(
        f"deribit,BTC-PERPETUAL,{t},{t},false,bid,{100 + t % 7},1\n" for t in range(5000)
    )
    packed = gzip.compress((HEAD + rows).encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ConfigError, match="corrupt or truncated") as info:
        list(ReplayFeed(path).iter_events())
    assert info.value.source == str(path)
    assert info.value.path.startswith("line ")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"recv_ts":1e300,"msg":{}}', r"recv_ts"),  # round(inf) raised OverflowError
        ('{"recv_ts":-1.5,"msg":{}}', r"recv_ts"),
        ('{"ts":-1,"topic":"x"}', r"\$\.ts"),
        ('{"ts":9223372036854775807,"topic":"x"}', r"\$\.ts"),  # ms beyond an int64 of ns
    ],
)
def test_derived_jsonl_times_out_of_range_name_file_and_line(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = tmp_path / "venue.jsonl"
    path.write_text('{"recv_ts":1.5,"msg":{}}\n' + line + "\n")
    with pytest.raises(ConfigError, match=problem) as info:
        list(read_recording(path))
    assert (info.value.source, info.value.path) == (str(path), "line 2")
