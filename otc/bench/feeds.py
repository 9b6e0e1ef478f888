"""``otc bench feeds``: our venue adapters' decode + apply on real recordings, next to baselines.

What it measures, per venue of :data:`feeds.registry.VENUES`, on every derived-JSONL recording
of ``../shared/data/<venue>/`` (``*.jsonl`` and ``*.jsonl.gz``, not the ``.raw`` captures; see
that folder's README; a variant such as ``coinbase_legacy`` reads its base venue's folder, and
a recording of which the adapter applies no message, being the other variant's, is listed but
not timed):

1. **Ours.** Each message, as the bytes the venue sent, through a fresh adapter of
   :mod:`feeds.registry` (``on_message``; ``on_rest`` for a recorded REST snapshot): msgspec
   decode, fixed-point parse, :class:`~otc.book.L2Book` apply and the venue's integrity rules
   (sequence, CRC32 checksums), as live.
2. **json** (baseline): ``json.loads`` of each message, then its levels applied to two plain
   dicts per symbol with ``Decimal`` keys and values (a snapshot replaces them, size 0 deletes):
   the naive approach. No sorting, no sequence or checksum checks; so it is a floor, not a peer.
3. **cryptofeed** (baseline, when installed: ``pip install 'otc[bench]'``): the venue's
   cryptofeed feed object, built with an ``L2_BOOK`` callback and never connected, whose
   ``message_handler`` is awaited on each message's text, in one event loop; the books are
   bmoscon's C ``order_book``. Its symbol table, which it would fetch over REST, is seeded
   from the recording (normalized name = the venue symbol our adapter keys books by, so the
   books compare by name); a Binance depth snapshot it requests is answered with the
   recording's REST body. Venues whose cryptofeed handler validates checksums are run twice,
   as shipped (``checksum_validation=False``) and with it on, which is what ours always does.
   Where cryptofeed has no handler for the format (Coinbase's legacy feed), or raises, the
   report says so and has no figure.

Units: messages/s and us/message over all the messages of a venue's recordings (acks and
heartbeats included, as they arrive); level updates/s counts the price levels the book
messages carry (snapshot levels included), the same count for every contender. Ratios are
ours' throughput over the baseline's, so > 1 means ours is faster.

Method: all messages are read into memory first (not timed); each figure is the best of
``repeats`` runs per recording, each on a fresh adapter / fresh books, garbage collector off,
``perf_counter_ns``. Not timed either, after the runs: our adapter's counters (messages
applied, ignored, dropped; gaps and checksums), and every final book, ours against cryptofeed's
and against the json dicts: the top :data:`TOP_LEVELS` levels of each side, exactly, then the
number of levels a side holds. Differences are listed; those with the json dicts are only
informational (no sequence rules, e.g. Binance's snapshot bridging, and no truncation).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import metadata
from itertools import islice
from pathlib import Path
from time import perf_counter_ns
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

import msgspec

from feeds.base import DEFAULT_SCALE, VenueBookFeed
from feeds.recorded import read_recording
from feeds.registry import VENUES, adapter_class
from otc.bench.book import machine
from otc.book import L2Book
from otc.errors import OtcError
from otc.model import Scale, Side, decimal_text

__all__ = ["TOP_LEVELS", "BookTop", "compare", "run"]

#: Levels per side compared between final books.
TOP_LEVELS = 10
#: Where ``../shared/data`` is from this file (otc/bench/feeds.py -> project -> its parent).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"
#: Mismatch lines kept per venue and baseline.
MAX_MISMATCHES = 5

Levels = list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class BookTop:
    """A final book as compared: the best levels of each side (ticks, lots at our scale) and
    how many levels each side holds."""

    bids: Levels
    asks: Levels
    bid_depth: int
    ask_depth: int


# -- recordings ------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """One recorded message: its bytes, receive time, and the REST URL when it is a REST body."""

    data: bytes
    ts_recv_ns: int
    rest_url: str = ""


@dataclass(slots=True)
class Recording:
    path: Path
    messages: list[Message]
    #: The websocket endpoint the recording names ("" when it names none).
    conn: str = ""

    @property
    def name(self) -> str:
        return self.path.name


def recordings_of(venue_dir: Path) -> list[Path]:
    """The derived-JSONL recordings in a venue folder, by name (raw captures excluded)."""
    paths = [*venue_dir.glob("*.jsonl"), *venue_dir.glob("*.jsonl.gz")]
    return sorted(p for p in paths if ".raw" not in p.name)


def load_recording(path: Path) -> Recording:
    messages: list[Message] = []
    conn = ""
    for record in read_recording(path):
        if record.conn.startswith("REST"):
            messages.append(Message(record.data, record.ts_recv_ns, record.conn))
        else:
            messages.append(Message(record.data, record.ts_recv_ns))
            if record.conn.startswith("wss://") and not conn:
                conn = record.conn
    return Recording(path, messages, conn)


def _rest_symbol(rest_url: str) -> str:
    """``symbol`` of a recorded ``REST https://...?symbol=BTCUSDT`` line (Binance depth)."""
    query = parse_qs(urlsplit(rest_url.split()[-1]).query)
    return query.get("symbol", [""])[0]


# -- timing ----------------------------------------------------------------------------------


def rate(ns: int, messages: int, level_updates: int) -> dict[str, float]:
    return {
        "msgs_per_s": round(messages * 1e9 / ns) if ns else 0.0,
        "us_per_msg": round(ns / messages / 1e3, 2) if messages else 0.0,
        "level_updates_per_s": round(level_updates * 1e9 / ns) if ns else 0.0,
        "elapsed_ms": round(ns / 1e6, 2),
    }


# -- ours ------------------------------------------------------------------------------------

#: What a recorded message may legitimately raise in an adapter (counted, replay continues).
_FEED_ERRORS = (OtcError, msgspec.MsgspecError, ValueError)


def _ours_once(
    cls: type[VenueBookFeed], messages: list[Message]
) -> tuple[int, VenueBookFeed, list[str]]:
    feed = cls()
    on_message, on_rest = feed.on_message, feed.on_rest
    errors: list[str] = []
    gc.collect()
    gc.disable()
    try:
        start = perf_counter_ns()
        for message in messages:
            try:
                if message.rest_url:
                    on_rest(message.rest_url, message.data, message.ts_recv_ns)
                else:
                    on_message(message.data, message.ts_recv_ns)
            except _FEED_ERRORS as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        elapsed = perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed, feed, errors


def _top_ours(book: L2Book, depth: int) -> BookTop:
    return BookTop(
        list(islice(book.bids(), depth)),
        list(islice(book.asks(), depth)),
        book.depth(Side.SELL),  # a seller takes the bids
        book.depth(Side.BUY),
    )


# -- json baseline ---------------------------------------------------------------------------

NaiveSides = tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]
NaiveBooks = dict[str, NaiveSides]
#: Applies one decoded message (and its REST URL, "" for websocket) to the books; returns
#: the number of price levels it carried.
NaiveApply = Callable[[NaiveBooks, Any, str], int]


def _naive_book(books: NaiveBooks, symbol: str, reset: bool) -> NaiveSides:
    book = books.get(symbol)
    if book is None or reset:
        book = books[symbol] = ({}, {})
    return book


def _naive_side(side: dict[Decimal, Decimal], levels: list[list[str]]) -> int:
    for level in levels:
        price = Decimal(level[0])
        size = Decimal(level[1])
        if size:
            side[price] = size
        else:
            side.pop(price, None)
    return len(levels)


def _naive_bybit(books: NaiveBooks, msg: Any, rest_url: str) -> int:
    data = msg.get("data")
    if not isinstance(data, dict) or "b" not in data:
        return 0
    bids, asks = _naive_book(books, data["s"], msg.get("type") == "snapshot")
    return _naive_side(bids, data["b"]) + _naive_side(asks, data["a"])


def _naive_okx(books: NaiveBooks, msg: Any, rest_url: str) -> int:
    """OKX and Bitget ``books``: ``arg.instId``, ``action``, ``data[].bids/asks``."""
    arg = msg.get("arg")
    data = msg.get("data")
    if not arg or not data:
        return 0
    count = 0
    for item in data:
        bids, asks = _naive_book(books, arg["instId"], msg.get("action") == "snapshot")
        count += _naive_side(bids, item.get("bids", [])) + _naive_side(asks, item.get("asks", []))
    return count


def _naive_kraken(books: NaiveBooks, msg: Any, rest_url: str) -> int:
    """Kraken v1 ``[channelID, {...}, ({...},) channelName, pair]``."""
    if not isinstance(msg, list):
        return 0
    symbol = msg[-1]
    count = 0
    for body in msg[1:-2]:
        if "as" in body or "bs" in body:
            bids, asks = _naive_book(books, symbol, True)
            count += _naive_side(bids, body.get("bs", [])) + _naive_side(asks, body.get("as", []))
        else:
            bids, asks = _naive_book(books, symbol, False)
            count += _naive_side(bids, body.get("b", [])) + _naive_side(asks, body.get("a", []))
    return count


def _naive_binance(books: NaiveBooks, msg: Any, rest_url: str) -> int:
    if rest_url:  # a REST depth snapshot replaces the book
        bids, asks = _naive_book(books, _rest_symbol(rest_url), True)
        return _naive_side(bids, msg["bids"]) + _naive_side(asks, msg["asks"])
    data = msg.get("data", msg)
    if data.get("e") != "depthUpdate":
        return 0
    bids, asks = _naive_book(books, data["s"], False)
    return _naive_side(bids, data["b"]) + _naive_side(asks, data["a"])


def _naive_coinbase(books: NaiveBooks, msg: Any, rest_url: str) -> int:
    """Advanced Trade ``l2_data`` events, and the legacy Exchange ``snapshot``/``l2update``."""
    if msg.get("channel") == "l2_data":
        count = 0
        for event in msg["events"]:
            bids, asks = _naive_book(books, event["product_id"], event["type"] == "snapshot")
            updates = event["updates"]
            for update in updates:
                side = bids if update["side"] == "bid" else asks
                price = Decimal(update["price_level"])
                size = Decimal(update["new_quantity"])
                if size:
                    side[price] = size
                else:
                    side.pop(price, None)
            count += len(updates)
        return count
    kind = msg.get("type")
    if kind == "snapshot":
        bids, asks = _naive_book(books, msg["product_id"], True)
        return _naive_side(bids, msg["bids"]) + _naive_side(asks, msg["asks"])
    if kind == "l2update":
        bids, asks = _naive_book(books, msg["product_id"], False)
        changes = msg["changes"]
        for side_name, price_text, size_text in changes:
            side = bids if side_name == "buy" else asks
            price = Decimal(price_text)
            size = Decimal(size_text)
            if size:
                side[price] = size
            else:
                side.pop(price, None)
        return len(changes)
    return 0


#: Venue -> how the naive baseline finds the levels in its messages.
NAIVE: dict[str, NaiveApply] = {
    "binance": _naive_binance,
    "bitget": _naive_okx,
    "bybit": _naive_bybit,
    "coinbase": _naive_coinbase,
    "coinbase_legacy": _naive_coinbase,
    "kraken": _naive_kraken,
    "okx": _naive_okx,
}


def _naive_once(apply: NaiveApply, messages: list[Message]) -> tuple[int, NaiveBooks, int]:
    books: NaiveBooks = {}
    loads = json.loads
    levels = 0
    gc.collect()
    gc.disable()
    try:
        start = perf_counter_ns()
        for message in messages:
            levels += apply(books, loads(message.data), message.rest_url)
        elapsed = perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed, books, levels


def _top_decimal(
    bids: Iterable[tuple[Decimal, Decimal]],
    asks: Iterable[tuple[Decimal, Decimal]],
    depths: tuple[int, int],
    scale: Scale,
) -> BookTop:
    return BookTop(
        [(scale.price(p), scale.size(s)) for p, s in bids],
        [(scale.price(p), scale.size(s)) for p, s in asks],
        *depths,
    )


def _top_naive(sides: NaiveSides, scale: Scale, depth: int) -> BookTop:
    bids, asks = sides
    best_bids = sorted(bids.items(), reverse=True)[:depth]
    best_asks = sorted(asks.items())[:depth]
    return _top_decimal(best_bids, best_asks, (len(bids), len(asks)), scale)


# -- cryptofeed baseline ---------------------------------------------------------------------


def _bybit_symbols(objs: list[Any], recording: Recording) -> dict[str, str]:
    """Linear: the topic's symbol; spot: cryptofeed's ``BTC/USDT`` from ``data.s``."""
    spot = _bybit_address(recording).endswith("/spot")
    table = {}
    for obj in objs:
        data = obj.get("data") if isinstance(obj, dict) else None
        if isinstance(data, dict) and "s" in data:
            symbol = data["s"]
            table[symbol] = _bybit_spot_name(symbol) if spot else obj["topic"].split(".")[-1]
    return table


def _bybit_spot_name(symbol: str) -> str:
    module = importlib.import_module("cryptofeed.exchanges.bybit")
    name = module.Bybit.convert_to_spot_name(None, symbol)
    return str(name) if name else symbol


def _bybit_address(recording: Recording) -> str:
    """The endpoint cryptofeed reads the market (spot / linear) from; Bybit's historical dumps
    name no endpoint and are linear unless their file name says spot."""
    if recording.conn:
        return recording.conn
    market = "spot" if "spot" in recording.name else "linear"
    return f"wss://stream.bybit.com/v5/public/{market}"


def _okx_symbols(objs: list[Any], recording: Recording) -> dict[str, str]:
    return {
        obj["arg"]["instId"]: obj["arg"]["instId"]
        for obj in objs
        if isinstance(obj, dict) and obj.get("data") and obj.get("arg")
    }


def _bitget_symbols(objs: list[Any], recording: Recording) -> dict[str, str]:
    """cryptofeed's Bitget looks v1 futures (``mc``) up as ``<instId>_UMCBL``/``_DMCBL``."""
    table = {}
    for obj in objs:
        arg = obj.get("arg") if isinstance(obj, dict) else None
        if not arg or "event" in obj:
            continue
        symbol, kind = arg["instId"], arg.get("instType")
        if kind == "mc":
            table[symbol] = symbol + ("_UMCBL" if symbol.endswith("T") else "_DMCBL")
        elif kind in {"sp", "dmcbl", "umcbl"}:
            table[symbol] = symbol
        else:
            table[symbol] = symbol.split("_")[0]
    return table


def _kraken_symbols(objs: list[Any], recording: Recording) -> dict[str, str]:
    return {obj[-1]: obj[-1] for obj in objs if isinstance(obj, list)}


def _binance_symbols(objs: list[Any], recording: Recording) -> dict[str, str]:
    table = {}
    for obj in objs:
        if isinstance(obj, dict) and "stream" in obj:
            symbol = obj["stream"].split("@")[0].upper()
            table[symbol] = symbol
    for message in recording.messages:
        if message.rest_url:
            symbol = _rest_symbol(message.rest_url)
            table[symbol] = symbol
    return table


def _coinbase_symbols(objs: list[Any], recording: Recording) -> dict[str, str]:
    return {
        event["product_id"]: event["product_id"]
        for obj in objs
        if isinstance(obj, dict) and obj.get("channel") == "l2_data"
        for event in obj["events"]
    }


@dataclass(frozen=True, slots=True)
class CryptofeedVenue:
    """How to drive one venue's cryptofeed feed offline."""

    #: ``module:Class`` of the feed.
    target: str
    #: Symbols (normalized = our venue symbol -> cryptofeed's exchange name) of a recording.
    symbols: Callable[[list[Any], Recording], dict[str, str]]
    #: The handler supports ``checksum_validation``.
    checksums: bool = False
    #: The endpoint the connection object names (some handlers read the market from it).
    address: Callable[[Recording], str] = lambda recording: recording.conn or "wss://bench"
    #: Notes printed with the venue's figures.
    notes: tuple[str, ...] = ()


CRYPTOFEED: dict[str, CryptofeedVenue] = {
    "binance": CryptofeedVenue(
        "cryptofeed.exchanges.binance:Binance",
        _binance_symbols,
        notes=(
            "cryptofeed fetches the REST depth snapshot on a symbol's first depth event; it "
            "gets the recording's REST body then (recorded a few events later) and parses it "
            "inside the timed loop, as ours does in on_rest",
        ),
    ),
    "bitget": CryptofeedVenue("cryptofeed.exchanges.bitget:Bitget", _bitget_symbols, True),
    "bybit": CryptofeedVenue(
        "cryptofeed.exchanges.bybit:Bybit", _bybit_symbols, address=_bybit_address
    ),
    "coinbase": CryptofeedVenue(
        "cryptofeed.exchanges.coinbase:Coinbase",
        _coinbase_symbols,
        notes=(
            "cryptofeed 2.4.1's Coinbase builds a snapshot's asks from updates with side "
            "'ask', but Advanced Trade sends 'offer': its asks start empty and hold only the "
            "levels updated since, hence the differences in its asks",
        ),
    ),
    "kraken": CryptofeedVenue("cryptofeed.exchanges.kraken:Kraken", _kraken_symbols, True),
    "okx": CryptofeedVenue("cryptofeed.exchanges.okx:OKX", _okx_symbols, True),
}


#: Venues cryptofeed cannot be driven on, and why.
CRYPTOFEED_MISSING = {
    "coinbase_legacy": (
        "no cryptofeed baseline: cryptofeed 2.4.1's Coinbase reads only Advanced Trade "
        "l2_data; it has no handler for the legacy Exchange level2 feed"
    ),
}


class _Connection:
    """The two attributes cryptofeed's handlers read from their websocket connection."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.uuid = "otc-bench"


class _RecordedRest:
    """Stands in for cryptofeed's HTTP connection: a depth snapshot request gets the
    recording's REST body for that symbol; nothing goes over the network."""

    def __init__(self, bodies: dict[str, str]) -> None:
        self.bodies = bodies

    async def read(self, address: str, **kwargs: Any) -> str:
        symbol = _rest_symbol(address)
        try:
            return self.bodies[symbol]
        except KeyError:
            raise RuntimeError(f"no recorded REST snapshot for {symbol} ({address})") from None

    async def close(self) -> None:
        return None


def _load_cryptofeed() -> tuple[Any, Any] | None:
    """cryptofeed's ``Symbols`` table and ``L2_BOOK`` name, or None when it is not installed."""
    try:
        symbols = importlib.import_module("cryptofeed.symbols")
        defines = importlib.import_module("cryptofeed.defines")
    except ImportError:  # optional baseline: pip install 'otc[bench]'
        return None
    return symbols.Symbols, defines.L2_BOOK


class CryptofeedRun:
    """One recording through one cryptofeed configuration: timing, books, callbacks."""

    def __init__(
        self, spec: CryptofeedVenue, recording: Recording, *, checksums: bool, cf: tuple[Any, Any]
    ) -> None:
        module_name, _, class_name = spec.target.partition(":")
        self.cls = getattr(importlib.import_module(module_name), class_name)
        self.symbols_table, self.l2_book = cf
        self.checksums = checksums
        objs = [json.loads(m.data) for m in recording.messages if not m.rest_url]
        self.symbols = spec.symbols(objs, recording)
        self.address = spec.address(recording)
        self.texts = [
            (m.data.decode(), m.ts_recv_ns / 1e9) for m in recording.messages if not m.rest_url
        ]
        self.rest = {
            _rest_symbol(m.rest_url): m.data.decode() for m in recording.messages if m.rest_url
        }
        self.callbacks = 0
        self.feed: Any = None

    def _new_feed(self) -> Any:
        """A fresh feed, its symbol table seeded (cryptofeed keeps one per process)."""
        table = self.symbols_table
        exchange = self.cls.id
        saved = table.data.get(exchange)
        table.set(exchange, dict(self.symbols), {})
        try:
            kwargs: dict[str, Any] = {"callbacks": {self.l2_book: self._on_book}}
            if self.checksums:
                kwargs["checksum_validation"] = True
            feed = self.cls(**kwargs)
        finally:
            if saved is None:
                table.data.pop(exchange, None)
            else:
                table.data[exchange] = saved
        if self.rest:
            feed.http_conn = _RecordedRest(self.rest)
        return feed

    async def _on_book(self, book: Any, receipt_timestamp: float) -> None:
        self.callbacks += 1

    async def _drive(self, feed: Any) -> int:
        handler = feed.message_handler
        conn = _Connection(self.address)
        gc.collect()
        gc.disable()
        try:
            start = perf_counter_ns()
            for text, ts in self.texts:
                await handler(text, conn, ts)
            return perf_counter_ns() - start
        finally:
            gc.enable()

    def once(self, runner: asyncio.Runner) -> int:
        """One timed run (ns) on a fresh feed, which stays in ``self.feed``.

        Raises:
            CryptofeedFailed: the handler raised; says after how many book callbacks.
        """
        self.feed = self._new_feed()
        self.callbacks = 0
        try:
            return runner.run(self._drive(self.feed))
        except Exception as exc:  # a third-party handler: report whatever it raises
            raise CryptofeedFailed(
                f"cryptofeed raised {type(exc).__name__}: {exc} "
                f"(after {self.callbacks} book callbacks)"
            ) from exc

    def tops(self, scales: dict[str, Scale], depth: int) -> dict[str, BookTop]:
        """The final books (``order_book`` sides, best first through ``index``)."""
        out = {}
        for symbol, book in self.feed._l2_book.items():
            bids, asks = book.book.bids, book.book.asks
            out[symbol] = _top_decimal(
                (bids.index(i) for i in range(min(depth, len(bids)))),
                (asks.index(i) for i in range(min(depth, len(asks)))),
                (len(bids), len(asks)),
                scales.get(symbol, DEFAULT_SCALE),
            )
        return out


class CryptofeedFailed(RuntimeError):
    """cryptofeed's handler raised on a recording; the baseline has no figure for it."""


# -- comparison ------------------------------------------------------------------------------


def _level_text(level: tuple[int, int] | None, scale: Scale) -> str:
    if level is None:
        return "none"
    price, size = level
    return f"{decimal_text(scale.price_text(price))} x {decimal_text(scale.size_text(size))}"


def compare(
    recording: str,
    ours: dict[str, BookTop],
    theirs: dict[str, BookTop],
    scales: dict[str, Scale],
) -> tuple[int, list[str]]:
    """Books compared and the differences found (one line per differing book side): the top
    levels first; when they agree, the number of levels."""
    mismatches = []
    for symbol in sorted(set(ours) | set(theirs)):
        if symbol not in theirs:
            mismatches.append(f"{recording}: {symbol}: no book in the baseline")
            continue
        if symbol not in ours:
            mismatches.append(f"{recording}: {symbol}: no book in ours")
            continue
        scale = scales.get(symbol, DEFAULT_SCALE)
        mine, other = ours[symbol], theirs[symbol]
        for name, my_top, other_top, my_depth, other_depth in (
            ("bids", mine.bids, other.bids, mine.bid_depth, other.bid_depth),
            ("asks", mine.asks, other.asks, mine.ask_depth, other.ask_depth),
        ):
            if my_top != other_top:
                at = next(
                    (i for i, (a, b) in enumerate(zip(my_top, other_top, strict=False)) if a != b),
                    min(len(my_top), len(other_top)),
                )
                mismatches.append(
                    f"{recording}: {symbol} {name} differ at level {at + 1}: ours "
                    f"{_level_text(my_top[at] if at < len(my_top) else None, scale)}, baseline "
                    f"{_level_text(other_top[at] if at < len(other_top) else None, scale)}"
                )
            elif my_depth != other_depth:
                mismatches.append(
                    f"{recording}: {symbol} {name}: top {len(my_top)} agree, but ours holds "
                    f"{my_depth:,} levels, the baseline {other_depth:,}"
                )
    return len(set(ours) & set(theirs)), mismatches


# -- one venue -------------------------------------------------------------------------------


@dataclass(slots=True)
class Contender:
    """A contender's totals over a venue's recordings, and what it could not run."""

    label: str
    ns: int = 0
    messages: int = 0
    level_updates: int = 0
    recordings: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, recording: str, ns: int, messages: int, level_updates: int) -> None:
        self.ns += ns
        self.messages += messages
        self.level_updates += level_updates
        self.recordings.append(recording)

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "recordings": list(self.recordings)}
        if self.ns:
            out.update(rate(self.ns, self.messages, self.level_updates))
            out["messages"] = self.messages
            out["level_updates"] = self.level_updates
        if self.skipped:
            out["skipped"] = dict(self.skipped)
        return out


@dataclass(slots=True)
class VenueRun:
    """Everything measured on one venue."""

    venue: str
    adapter: str
    recordings: list[dict[str, Any]] = field(default_factory=list)
    contenders: dict[str, Contender] = field(default_factory=dict)
    #: Per recording: ours' ns, for ratios on the subset a baseline ran.
    ours_ns: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Recordings in the venue's folder that are not this adapter's (name -> why).
    excluded: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _add_stats(total: dict[str, int], feed: VenueBookFeed) -> None:
    for name, value in msgspec.structs.asdict(feed.stats).items():
        total[name] = total.get(name, 0) + value


def _check(run: VenueRun, baseline: str, books: int, mismatches: list[str]) -> None:
    check = run.checks.setdefault(baseline, {"books": 0, "mismatches": [], "mismatch_count": 0})
    check["books"] += books
    check["mismatch_count"] += len(mismatches)
    room = MAX_MISMATCHES - len(check["mismatches"])
    check["mismatches"].extend(mismatches[: max(0, room)])


def data_folder(data_dir: Path, venue: str) -> Path:
    """A venue's recordings folder; a venue variant (``coinbase_legacy``) shares its base's."""
    return data_dir / venue.partition("_")[0]


def bench_venue(
    venue: str, paths: list[Path], repeats: int, cf: tuple[Any, Any] | None
) -> VenueRun:
    """Time and check every contender on ``paths``, one recording at a time."""
    cls = adapter_class(venue)
    run = VenueRun(venue, VENUES[venue])
    run.contenders["ours"] = Contender(f"otc {cls.__name__}")
    run.contenders["json"] = Contender("json.loads + Decimal dicts")
    spec = CRYPTOFEED.get(venue) if cf is not None else None
    if spec is not None:
        feed_name = spec.target.partition(":")[2]
        run.contenders["cryptofeed"] = Contender(f"cryptofeed {feed_name}")
        if spec.checksums:
            run.contenders["cryptofeed_checksums"] = Contender(
                f"cryptofeed {feed_name} + checksums"
            )
        run.notes.extend(spec.notes)
    elif cf is None:
        run.notes.append("cryptofeed not installed: pip install 'otc[bench]' for that baseline")
    else:
        run.notes.append(CRYPTOFEED_MISSING.get(venue, f"no cryptofeed driver for {venue}"))
    with asyncio.Runner() as runner:
        for path in paths:
            _bench_recording(run, cls, load_recording(path), repeats, spec, cf, runner)
    return run


def _bench_recording(
    run: VenueRun,
    cls: type[VenueBookFeed],
    recording: Recording,
    repeats: int,
    spec: CryptofeedVenue | None,
    cf: tuple[Any, Any] | None,
    runner: asyncio.Runner,
) -> None:
    """Time every contender on one recording, the repeats interleaved (ours, json, cryptofeed,
    ours, ...) so that a load spike on the machine hits all alike; then check the books."""
    name = recording.name
    messages = recording.messages
    elapsed, feed, errors = _ours_once(cls, messages)
    if not feed.stats.applied:  # another variant's recording in a shared folder
        run.excluded[name] = (
            f"{run.venue}'s adapter applied none of its {len(messages):,} messages"
            + (f" (first error: {errors[0]})" if errors else " (another format)")
        )
        return
    apply = NAIVE.get(run.venue)
    if apply is None:
        run.contenders["json"].skipped[name] = "no naive replay written for this venue"
    cf_runs: dict[str, CryptofeedRun] = {}
    if spec is not None and cf is not None:
        for key in ("cryptofeed", "cryptofeed_checksums")[: 2 if spec.checksums else 1]:
            cf_runs[key] = CryptofeedRun(spec, recording, checksums=key != "cryptofeed", cf=cf)
    times: dict[str, list[int]] = {"ours": [elapsed], "json": []}
    books: NaiveBooks = {}
    level_updates = 0
    for repeat in range(repeats):
        if repeat:
            elapsed, feed, errors = _ours_once(cls, messages)
            times["ours"].append(elapsed)
        if apply is not None:
            elapsed, books, level_updates = _naive_once(apply, messages)
            times["json"].append(elapsed)
        for key, cf_run in list(cf_runs.items()):
            try:
                times.setdefault(key, []).append(cf_run.once(runner))
            except CryptofeedFailed as exc:
                run.contenders[key].skipped[name] = str(exc)
                del cf_runs[key]

    count = len(messages)
    row: dict[str, Any] = {
        "name": name,
        "messages": count,
        "rest_messages": sum(1 for m in messages if m.rest_url),
        "level_updates": level_updates,
    }
    run.recordings.append(row)
    run.ours_ns[name] = min(times["ours"])
    _add_stats(run.stats, feed)
    run.errors.extend(f"{name}: {e}" for e in errors[:MAX_MISMATCHES])
    for key in ("ours", "json", *cf_runs):
        if times[key]:
            best = min(times[key])
            run.contenders[key].add(name, best, count, level_updates)
            row[key] = rate(best, count, level_updates)

    scales = {symbol: book.scale for symbol, book in feed.books.items()}
    ours_top = {symbol: _top_ours(book, TOP_LEVELS) for symbol, book in feed.books.items()}
    if apply is not None:
        naive_top = {
            symbol: _top_naive(sides, scales.get(symbol, DEFAULT_SCALE), TOP_LEVELS)
            for symbol, sides in books.items()
        }
        _check(run, "json", *compare(name, ours_top, naive_top, scales))
    for key, cf_run in cf_runs.items():
        row[key]["book_callbacks"] = cf_run.callbacks
        _check(run, key, *compare(name, ours_top, cf_run.tops(scales, TOP_LEVELS), scales))


# -- report ----------------------------------------------------------------------------------


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("otc", "msgspec", "sortedcontainers", "cryptofeed", "order-book", "yapic.json"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _ratio(run: VenueRun, key: str) -> float | None:
    """Ours' throughput over ``key``'s, on the recordings ``key`` ran."""
    contender = run.contenders.get(key)
    if contender is None or not contender.ns:
        return None
    ours_ns = sum(run.ours_ns[name] for name in contender.recordings)
    return round(contender.ns / ours_ns, 2)


def _row(label: str, figures: dict[str, Any]) -> str:
    return (
        f"          {label:38}{figures['msgs_per_s']:>12,.0f}{figures['us_per_msg']:>10.1f}"
        f"{figures['level_updates_per_s']:>14,.0f}"
    )


def _wrap(text: str, indent: str, width: int = 98) -> Iterator[str]:
    """``text`` in lines of at most ``width`` characters, each starting with ``indent``."""
    room = width - len(indent)
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > room:
            yield indent + line
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        yield indent + line


#: Short names of the contenders in per-recording lines and ratios.
SHORT = {
    "ours": "ours",
    "json": "json",
    "cryptofeed": "cryptofeed",
    "cryptofeed_checksums": "cryptofeed + checksums",
}


def _lines(write: Callable[[str], object], text: str, indent: str = "          ") -> None:
    for line in _wrap(text, indent):
        write(line + "\n")


def _report_venue(write: Callable[[str], object], run: VenueRun) -> dict[str, Any]:
    ours = run.contenders["ours"]
    n_recordings = len(run.recordings)
    write(
        f"{run.venue}: {n_recordings} recording(s), {ours.messages:,} messages, "
        f"{ours.level_updates:,} level updates\n          adapter {run.adapter}\n"
    )
    for row in run.recordings:
        timed = ", ".join(
            f"{SHORT[key]} {row[key]['us_per_msg']:.1f}" for key in SHORT if key in row
        )
        write(f"          {row['name']}\n")
        _lines(
            write,
            f"{row['messages']:,} msgs, {row['level_updates']:,} levels; us/msg: {timed}",
            indent="              ",
        )
    for name, reason in run.excluded.items():
        _lines(write, f"not run: {name}: {reason}")
    write(f"          {'all recordings':38}{'msgs/s':>12}{'us/msg':>10}{'levels/s':>14}\n")
    for contender in run.contenders.values():
        figures = contender.figures()
        if "msgs_per_s" in figures:
            label = contender.label
            if contender is not ours and len(contender.recordings) < n_recordings:
                label += f" ({len(contender.recordings)} of {n_recordings})"
            write(_row(label, figures) + "\n")
        for recording, reason in contender.skipped.items():
            _lines(write, f"{contender.label} skipped {recording}: {reason}")
    ratios = {
        f"ours_over_{key}": ratio
        for key in run.contenders
        if key != "ours" and (ratio := _ratio(run, key)) is not None
    }
    if ratios:
        parts = [
            f"ours / {SHORT[k.removeprefix('ours_over_')]} {v:.2f}x" for k, v in ratios.items()
        ]
        write("          " + "; ".join(parts) + "\n")
    stats = run.stats
    _lines(
        write,
        f"ours applied {stats.get('applied', 0):,} of {ours.messages:,} messages and ignored "
        f"{stats.get('ignored', 0):,}; snapshots {stats.get('snapshots', 0)}, "
        f"dropped {stats.get('dropped', 0)}, gaps {stats.get('gaps', 0)}, checksums ok "
        f"{stats.get('checksums_ok', 0):,}, failed {stats.get('checksums_failed', 0)}",
    )
    for error in run.errors:
        _lines(write, f"ours raised: {error}")
    for key, check in run.checks.items():
        verdict = (
            "all agree"
            if not check["mismatch_count"]
            else f"{check['mismatch_count']} difference(s)"
        )
        aside = " (informational: no sequence rules, no truncation)" if key == "json" else ""
        _lines(
            write,
            f"final books vs {SHORT[key]}{aside}: {check['books']} compared, top {TOP_LEVELS} "
            f"levels a side then depth: {verdict}",
        )
        for mismatch in check["mismatches"]:
            _lines(write, mismatch, indent="              ")
    for note in run.notes:
        _lines(write, f"note: {note}")
    write("\n")
    return {
        "adapter": run.adapter,
        "recordings": run.recordings,
        "excluded": dict(run.excluded),
        "messages": ours.messages,
        "level_updates": ours.level_updates,
        "contenders": {key: c.figures() for key, c in run.contenders.items()},
        "ratios": ratios,
        "ours_stats": dict(stats),
        "ours_errors": list(run.errors),
        "checks": run.checks,
        "notes": list(run.notes),
    }


def run(
    *,
    venues: list[str] | None = None,
    repeats: int = 3,
    out: TextIO | None = None,
    quick: bool = False,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the benchmark, print the report to ``out`` (stdout) and return the figures.

    Args:
        venues: venues to run (default: every venue of :data:`feeds.registry.VENUES`).
        repeats: runs per contender and recording; the best counts.
        out: where the report goes; ``None`` is ``sys.stdout`` at call time.
        quick: a fast run for tests: one repeat.
        data_dir: the recordings (default ``../shared/data`` next to the project).

    Returns:
        JSON-ready figures, ``venues`` keyed by venue (``{"skipped": reason}`` for a venue that
        could not run); ``{"skipped": reason}`` when there is no data folder at all.
    """
    write = (out if out is not None else sys.stdout).write
    data_dir = DEFAULT_DATA_DIR if data_dir is None else data_dir
    if not data_dir.is_dir():
        reason = f"recorded venue data not found at {data_dir} (see ../shared/data/README.md)"
        write(f"otc bench feeds: skipped: {reason}\n")
        return {"skipped": reason}
    repeats = 1 if quick else max(1, repeats)
    selected = sorted(VENUES) if venues is None else list(venues)
    cf = _load_cryptofeed()
    info = machine()
    info["versions"] = _versions()
    write(
        "otc bench feeds: venue adapters' decode + apply on recorded traffic, next to baselines\n"
        f"machine   {info['platform']}; {info['cpu']}; {info['cpus']} CPUs; {info['python']}\n"
        "versions  "
        + ", ".join(f"{name} {v or 'not installed'}" for name, v in info["versions"].items())
        + "\n"
        f"method    best of {repeats} run(s) per recording, fresh adapter / books each run, "
        "gc off, perf_counter_ns;\n          messages pre-read as bytes (not timed); ratios: "
        "ours' throughput over the\n          baseline's on the same recordings (> 1: ours "
        "faster)\n"
        f"data      {data_dir}\n\n"
    )
    results = {venue: _one_venue(write, venue, data_dir, repeats, cf) for venue in selected}
    summary = _summary(write, results)
    return {
        "machine": info,
        "params": {
            "venues": selected,
            "repeats": repeats,
            "quick": quick,
            "data_dir": str(data_dir),
            "top_levels": TOP_LEVELS,
        },
        "venues": results,
        "summary": summary,
    }


def _one_venue(
    write: Callable[[str], object],
    venue: str,
    data_dir: Path,
    repeats: int,
    cf: tuple[Any, Any] | None,
) -> dict[str, Any]:
    folder = data_folder(data_dir, venue)
    if venue not in VENUES:
        reason = f"unknown venue; known: {', '.join(sorted(VENUES))}"
    else:
        try:
            adapter_class(venue)
        except ImportError as exc:
            reason = f"adapter {VENUES[venue]} not available ({exc})"
        else:
            paths = recordings_of(folder) if folder.is_dir() else []
            if not paths:
                reason = f"no derived-JSONL recordings in {folder}"
            else:
                run = bench_venue(venue, paths, repeats, cf)
                if run.recordings:
                    return _report_venue(write, run)
                reason = f"the adapter applied no message of any recording in {folder}"
    write(f"{venue}: skipped: {reason}\n\n")
    return {"skipped": reason}


def _summary(write: Callable[[str], object], results: dict[str, Any]) -> dict[str, Any]:
    done = {venue: r for venue, r in results.items() if "skipped" not in r}
    if not done:
        return {}
    write(
        f"summary   {'venue':16}{'ours msgs/s':>12}{'us/msg':>8}{'/ json':>8}{'/ cryptofeed':>14}"
        f"{'/ cf+checksums':>16}  books agree\n"
    )
    summary = {}
    for venue, result in done.items():
        ours = result["contenders"]["ours"]
        ratios = result["ratios"]
        checks = [c for key, c in result["checks"].items() if key.startswith("cryptofeed")]
        agree = all(not c["mismatch_count"] for c in checks) if checks else None

        def cell(key: str, width: int, ratios: dict[str, float] = ratios) -> str:
            value = ratios.get(key)
            return f"{'-' if value is None else f'{value:.2f}x':>{width}}"

        write(
            f"          {venue:16}{ours['msgs_per_s']:>12,.0f}{ours['us_per_msg']:>8.1f}"
            f"{cell('ours_over_json', 8)}{cell('ours_over_cryptofeed', 14)}"
            f"{cell('ours_over_cryptofeed_checksums', 16)}  "
            f"{'-' if agree is None else 'yes' if agree else 'NO'}\n"
        )
        summary[venue] = {
            "msgs_per_s": ours["msgs_per_s"],
            "us_per_msg": ours["us_per_msg"],
            **ratios,
            "books_agree_with_cryptofeed": agree,
        }
    write(
        f"          books agree: ours' final books equal cryptofeed's (top {TOP_LEVELS} levels a "
        "side, depth)\n"
    )
    return summary
