"""The ``otc`` command.

Subcommands::

    otc estimate --book PATH --side buy|sell (--qty Q | --notional N | --max-bps B) [--json]
                 [--config PATH]
    otc demo [--config PATH] [--broker URL] [--mqtt-port N] [--duration S] [--journal PATH]
             [--record FILE] [--console-port N | --no-console] [--log-level LEVEL]
             [--once [--seed S] [--symbol S] [--dump-book PATH]]
    otc serve [--config PATH] [--feeds sim|live] [--broker URL] [--journal PATH] [--record FILE]
              [--duration S] [--console-port N | --no-console] [--log-level LEVEL]
    otc rfq --broker URL --client C --symbol S --side buy|sell|two_way (--qty Q | --notional N)
            [--accept [--accept-side buy|sell]] [--json] [--timeout S] [--mqtt-version 3.1.1|5]
    otc control --broker URL --operator OP [--timeout S] [--mqtt-version 3.1.1|5]
                (halt|resume [--symbol S] | client C enable|disable | spread TIER BPS)
    otc broker auth --out DIR [--config PATH] [--rotate USER]... [--rotate-all]
    otc blotter [--journal PATH] [--config PATH] [--limit N] [--client C] [--symbol S]
                [--kind K]...
    otc journal export [--journal PATH] [--config PATH] [--format csv|json] [--out FILE]
                       [--client C] [--symbol S] [--kind K]... [--since-ns NS] [--until-ns NS]
    otc feeds verify --venue V FILE... [--json]
    otc feeds serve-replay --venue V FILE [--port N] [--interval-ms MS] [--fault INDEX:KIND]...
    otc record --source sim|VENUE --out FILE [--symbols A,B] [--url URL] [--rest-url URL]
               [--duration S] [--from FILE...] [--steps N] [--seed S] [--config PATH]
    otc bench book [--deltas N] [--levels N] [--seed S] [--json]
    otc bench feeds [--venue V]... [--repeats N] [--json]
    otc bench rfq [--rfqs N] [--in-flight N] [--rounds N] [--json]
    otc bench quote [--rfqs N] [--paced-rfqs N] [--repeats N] [--json]
    otc bench backtest [--data FILE...] [--deltas N] [--repeats N] [--json]
    otc backtest --data FILE... --out DIR [--scenario PATH] [--config PATH] [--rfqs N]
                 [--seed S] [--model-check-levels N] [--no-report] [--[no-]progress]
    otc replay-journal --journal PATH --data FILE... [--config PATH] [--json]

Errors in input (a malformed book or config file, a bad number) print one line
``otc: error: ...`` on stderr and exit with status 2; nothing is half-printed. ``blotter`` and
``journal export`` filter alike: ``--client``/``--symbol`` match exactly (an empty value is
refused), ``--kind`` is one of the journal's kinds and repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn

import msgspec

from otc.config import Config, load_config
from otc.errors import ConfigError, OtcError
from otc.journal import KINDS
from otc.model import Scale, Side, decimal_text, plain, printable
from otc.report import estimate_json, format_estimate, format_max_qty
from otc.slippage import ImpactModel, estimate, max_qty_within

if TYPE_CHECKING:
    from feeds.loopback import Fault

__all__ = ["main"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "otc.toml"


class UsageError(OtcError):
    """A command-line argument is invalid."""


def _timeout(text: str) -> float:
    """Seconds to wait for an answer: finite, positive, at most an hour."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds <= 3600:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 3600 s, got {text!r}")
    return seconds


def _amount(text: str) -> Decimal:
    """A positive decimal in plain notation, checked as the wire checks a size."""
    from otc.protocol import ProtocolError, wire_decimal

    try:
        return wire_decimal(text, "the value")
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(exc.reason.removeprefix("the value ")) from None


def _bps(text: str) -> Decimal:
    """Basis points in (0, 10000]: beyond 100 % a sell's limit price is below zero."""
    value = _amount(text)
    if value > 10_000:
        raise argparse.ArgumentTypeError(f"must be at most 10000 bps, got {text!r}")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argument type: an integer in ``[low, high]`` (SQLite and the clock take int64)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {text!r}")
        return value

    return parse


def _duration(text: str) -> float:
    """A duration or pause: finite, not negative."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be finite and not negative, got {text!r}")
    return value


def _path(text: str) -> Path:
    """A file or folder argument: never empty (``Path("")`` is the working folder, which no
    one means; an unset variable, ``--journal "$JOURNAL"``, gives it)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return Path(text)


#: A count of things to do or show: at least 1, at most a billion.
_positive_int = _int_in(1, 10**9)
#: A TCP port, 0 for any free one.
_port = _int_in(0, 65_535)
#: Nanoseconds since the epoch, as the journal stores them (int64).
_epoch_ns = _int_in(0, 2**63 - 1)


_RECORD_HELP = (
    "record every book event the engine applies to FILE, for otc replay-journal "
    "(default: the config's [journal] record_path)"
)


class _Parser(argparse.ArgumentParser):
    """argparse, its errors as every other: one line ``otc: error: ...``, status 2 (``--help``
    still prints the usage)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("otc").strip()
        self.exit(2, f"otc: error: {command + ': ' if command else ''}{message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="otc", description="OTC quote and slippage engine")
    sub = parser.add_subparsers(dest="cmd", required=True)

    est = sub.add_parser(
        "estimate",
        help="price a block against a book file",
        description="Walk a consolidated book file and print what a block would cost.",
    )
    est.add_argument("--book", required=True, type=_path, help="book file (JSON)")
    est.add_argument("--side", required=True, choices=["buy", "sell"], help="taker side")
    size = est.add_mutually_exclusive_group(required=True)
    size.add_argument("--qty", type=_amount, help="base quantity")
    size.add_argument("--notional", type=_amount, help="quote notional (price x qty, pre-fee)")
    size.add_argument(
        "--max-bps", type=_bps, help="largest qty whose all-in average is within B bps of mid"
    )
    est.add_argument("--json", action="store_true", help="print one JSON object")
    est.add_argument(
        "--config",
        type=_path,
        help="engine config: enables the instrument's impact model beyond visible depth "
        "when its estimator.use_impact_model is true",
    )

    demo = sub.add_parser(
        "demo",
        help="run the engine on a synthetic market with its own broker",
        description="Start a broker (mosquitto when installed, else amqtt from .venv-amqtt) unless "
        "--broker points at one, the synthetic market, and the quoting service; print how to "
        "send an RFQ. --once prices a few blocks on the synthetic book and exits instead.",
    )
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--symbol", default="BTC-USDT")
    demo.add_argument("--config", type=_path, default=DEFAULT_CONFIG)
    demo.add_argument("--dump-book", type=_path, help="also write the book file used (--once)")
    demo.add_argument("--once", action="store_true", help="print estimates and exit")
    demo.add_argument("--broker", help="use this broker (mqtt://host:port) instead of our own")
    demo.add_argument("--mqtt-port", type=_port, default=0, help="port of our broker (0: free)")
    demo.add_argument("--duration", type=_duration, help="stop after this many seconds")
    demo.add_argument("--journal", type=_path, help="journal file (default: the config's)")
    demo.add_argument("--record", type=_path, metavar="FILE", help=_RECORD_HELP)
    _console_options(demo)
    _log_options(demo)

    serve = sub.add_parser("serve", help="run the quoting service")
    serve.add_argument("--config", type=_path, default=DEFAULT_CONFIG)
    serve.add_argument("--feeds", choices=["sim", "live"], default="live")
    serve.add_argument("--broker", help="mqtt://host:port (default: the config's [broker])")
    serve.add_argument("--journal", type=_path, help="journal file (default: the config's)")
    serve.add_argument("--record", type=_path, metavar="FILE", help=_RECORD_HELP)
    serve.add_argument("--duration", type=_duration, help="stop after this many seconds")
    _console_options(serve)
    _log_options(serve)

    rfq = sub.add_parser("rfq", help="send an RFQ as a client, print the quote, maybe accept")
    rfq.add_argument("--broker", required=True, help="mqtt://[user:password@]host:port")
    rfq.add_argument("--client", required=True)
    rfq.add_argument("--symbol", required=True)
    rfq.add_argument("--side", required=True, choices=["buy", "sell", "two_way"])
    rfq_size = rfq.add_mutually_exclusive_group(required=True)
    rfq_size.add_argument("--qty", help="base quantity")
    rfq_size.add_argument("--notional", help="quote-currency notional")
    rfq.add_argument("--accept", action="store_true", help="accept the quote at once")
    rfq.add_argument("--accept-side", choices=["buy", "sell"], help="side to accept (two_way)")
    rfq.add_argument(
        "--timeout", type=_timeout, default=5.0, help="seconds each answer may take (default 5)"
    )
    rfq.add_argument("--json", action="store_true", help="print the raw messages only")
    _mqtt_version_option(rfq)

    feeds = sub.add_parser("feeds", help="venue feeds: verify recordings")
    feeds_sub = feeds.add_subparsers(dest="feeds", required=True)
    ver = feeds_sub.add_parser(
        "verify",
        help="replay a recording through a venue adapter and report integrity",
        description="Replay derived-JSONL recordings through the venue's adapter: messages "
        "applied, checksums checked and failed, gaps, resyncs, final top of book per symbol.",
    )
    ver.add_argument("--venue", required=True, help="binance, bitget, bybit, coinbase, kraken, okx")
    ver.add_argument("files", nargs="+", type=_path, metavar="FILE")
    ver.add_argument("--json", action="store_true", help="print one JSON object")

    srv = feeds_sub.add_parser(
        "serve-replay",
        help="serve a recording as a loopback exchange (websocket + REST) with fault injection",
    )
    srv.add_argument("--venue", required=True)
    srv.add_argument("file", type=_path, metavar="FILE")
    srv.add_argument("--port", type=_port, default=0, help="TCP port on 127.0.0.1 (0: any free)")
    srv.add_argument("--interval-ms", type=_duration, default=0.0, help="pause between messages")
    srv.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="INDEX:KIND",
        help="inject a fault at a websocket message index: drop, duplicate, swap, corrupt, "
        "disconnect (repeatable)",
    )

    rec = sub.add_parser(
        "record",
        help="record normalized book events (snapshots + deltas) to a file",
        description="Record book events from the synthetic market, a live venue (or a loopback "
        "exchange via --url), or convert a venue recording (--from), into our gzip JSON-lines "
        "format (see feeds/record.py).",
    )
    rec.add_argument("--source", required=True, help="sim, or a venue name")
    rec.add_argument("--out", required=True, type=_path, help="output file")
    rec.add_argument("--symbols", default="", help="venue symbols, comma-separated (live venue)")
    rec.add_argument("--url", help="websocket endpoint (default: the venue's public one)")
    rec.add_argument("--rest-url", help="REST base for snapshot-synced venues")
    rec.add_argument("--duration", type=_duration, default=10.0, help="seconds to record live")
    rec.add_argument(
        "--from",
        dest="from_files",
        nargs="+",
        type=_path,
        metavar="FILE",
        help="convert these derived-JSONL venue recordings instead of connecting",
    )
    rec.add_argument(
        "--steps", type=_positive_int, default=1_000, help="synthetic market steps (sim)"
    )
    rec.add_argument("--seed", type=int, default=7, help="synthetic market seed (sim)")
    rec.add_argument("--config", type=_path, default=DEFAULT_CONFIG)

    ctl = sub.add_parser(
        "control",
        help="operator commands to a running engine: kill switch, clients, spreads",
        description="Send an operator command over the bus (otc/v1/control/OPERATOR) and print "
        "the engine's answer. The broker's ACL decides who may.",
    )
    ctl.add_argument("--broker", required=True, help="mqtt://[user:password@]host:port")
    ctl.add_argument("--operator", required=True, help="operator name (broker username)")
    ctl.add_argument(
        "--timeout", type=_timeout, default=5.0, help="seconds the answer may take (default 5)"
    )
    _mqtt_version_option(ctl)
    ctl_sub = ctl.add_subparsers(dest="command", required=True)
    halt = ctl_sub.add_parser("halt", help="kill switch on (all symbols, or --symbol)")
    halt.add_argument("--symbol")
    resume = ctl_sub.add_parser("resume", help="kill switch off (all symbols, or --symbol)")
    resume.add_argument("--symbol")
    ctl_client = ctl_sub.add_parser("client", help="enable or disable a client")
    ctl_client.add_argument("client")
    ctl_client.add_argument("state", choices=["enable", "disable"])
    ctl_spread = ctl_sub.add_parser("spread", help="set a tier's spread in bps")
    ctl_spread.add_argument("tier")
    ctl_spread.add_argument("spread_bps")

    brk = sub.add_parser("broker", help="production broker files")
    brk_sub = brk.add_subparsers(dest="broker_cmd", required=True)
    auth = brk_sub.add_parser(
        "auth",
        help="write mosquitto's password file and ACL for the configured clients",
        description="Write OUT/passwd and OUT/acl for every client of the config, the "
        "engine's user (config [broker] username) and the operators, for "
        "config/mosquitto/otc.conf. Users already in OUT/passwd keep their password; new users "
        "get a random one, and users no longer configured are removed. Prints the new "
        "passwords once (only their hashes are stored): hand each to its user privately.",
    )
    auth.add_argument("--config", type=_path, default=DEFAULT_CONFIG)
    auth.add_argument("--out", type=_path, required=True)
    auth.add_argument(
        "--rotate",
        action="append",
        default=[],
        metavar="USER",
        help="give USER a new password (repeatable)",
    )
    auth.add_argument("--rotate-all", action="store_true", help="give every user a new password")

    blot = sub.add_parser("blotter", help="recent RFQs, quotes, rejects, accepts and fills")
    blot.add_argument("--journal", type=_path, help="journal file (default: the config's)")
    blot.add_argument("--config", type=_path, default=DEFAULT_CONFIG)
    blot.add_argument("--limit", type=_positive_int, default=50)
    _journal_filters(blot)

    journal = sub.add_parser("journal", help="the durable event journal")
    journal_sub = journal.add_subparsers(dest="journal", required=True)
    exp = journal_sub.add_parser("export", help="write journal events as CSV or JSON")
    exp.add_argument("--journal", type=_path, help="journal file (default: the config's)")
    exp.add_argument("--config", type=_path, default=DEFAULT_CONFIG)
    exp.add_argument("--format", choices=["csv", "json"], default="csv")
    exp.add_argument("--out", type=_path, help="output file (default: stdout)")
    _journal_filters(exp)
    exp.add_argument(
        "--since-ns", type=_epoch_ns, metavar="NS", help="only events with ts_ns >= NS"
    )
    exp.add_argument("--until-ns", type=_epoch_ns, metavar="NS", help="only events with ts_ns < NS")

    bench = sub.add_parser("bench", help="benchmarks: ours next to a baseline, ratios printed")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    book = bench_sub.add_parser("book", help="book updates, walks, inverse query, memory")
    book.add_argument("--deltas", type=_positive_int, default=1_000_000)
    book.add_argument(
        "--levels", type=_int_in(10, 10**9), default=1_000, help="book depth (at least 10)"
    )
    book.add_argument("--seed", type=int, default=7)
    book.add_argument("--json", action="store_true", help="also print the figures as JSON")
    feeds_bench = bench_sub.add_parser(
        "feeds", help="decode + apply of recorded venue traffic vs json and cryptofeed"
    )
    feeds_bench.add_argument("--venue", action="append", dest="venues", help="only these venues")
    feeds_bench.add_argument("--repeats", type=_positive_int, default=3)
    feeds_bench.add_argument("--json", action="store_true", help="also print the figures as JSON")
    rfq_bench = bench_sub.add_parser(
        "rfq", help="RFQ -> quote round trips through a broker vs a bare echo responder"
    )
    rfq_bench.add_argument("--rfqs", type=_positive_int, default=10_000, help="per series")
    rfq_bench.add_argument("--in-flight", type=_positive_int, default=64, help="when sustained")
    rfq_bench.add_argument(
        "--rounds",
        type=_positive_int,
        default=1,
        help="echo then engine, this many times; the ratios are the medians",
    )
    rfq_bench.add_argument("--json", action="store_true", help="also print the figures as JSON")
    quote_bench = bench_sub.add_parser(
        "quote", help="QuoteEngine.on_rfq in one process, no broker, vs decode + encode"
    )
    quote_bench.add_argument("--rfqs", type=_positive_int, default=10_000, help="per run")
    quote_bench.add_argument("--paced-rfqs", type=_positive_int, default=2_000)
    quote_bench.add_argument("--repeats", type=_positive_int, default=3)
    quote_bench.add_argument("--json", action="store_true", help="also print the figures as JSON")
    bt_bench = bench_sub.add_parser(
        "backtest", help="backtest replay throughput next to the raw book update rate"
    )
    bt_bench.add_argument("--data", nargs="+", type=_path, help="recordings (default: synthetic)")
    bt_bench.add_argument("--deltas", type=_positive_int, default=200_000, help="synthetic deltas")
    bt_bench.add_argument("--repeats", type=_positive_int, default=3)
    bt_bench.add_argument("--json", action="store_true", help="also print the figures as JSON")

    backtest = sub.add_parser(
        "backtest",
        help="replay recorded books and an RFQ flow through the engine; score every quote",
        description="Replay recordings (ours or tardis CSV) through the live pricing path, "
        "with a virtual clock, and write DIR/summary.json, DIR/rfqs.csv and DIR/report.html.",
    )
    backtest.add_argument("--data", nargs="+", required=True, type=_path, metavar="FILE")
    backtest.add_argument("--scenario", type=_path, help="scenario TOML (default: built-in flow)")
    backtest.add_argument("--config", type=_path, default=DEFAULT_CONFIG)
    backtest.add_argument("--rfqs", type=int, help="generated RFQs (overrides [flow] rfqs)")
    backtest.add_argument("--seed", type=int, help="flow seed (overrides [flow] seed)")
    backtest.add_argument(
        "--model-check-levels", type=int, help="beyond-depth model check on books cut to N levels"
    )
    backtest.add_argument("--out", required=True, type=_path, metavar="DIR")
    backtest.add_argument("--no-report", action="store_true", help="skip report.html")
    backtest.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress line on stderr (default: when stderr is a terminal)",
    )

    replay_journal = sub.add_parser(
        "replay-journal",
        help="reproduce a run's quotes from its journal and the book events it recorded",
    )
    replay_journal.add_argument("--journal", required=True, type=_path)
    replay_journal.add_argument("--data", nargs="+", required=True, type=_path, metavar="FILE")
    replay_journal.add_argument("--config", type=_path, default=DEFAULT_CONFIG)
    replay_journal.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _impact_for(config_path: Path | None, symbol: str) -> ImpactModel | None:
    if config_path is None:
        return None
    config = load_config(config_path)
    if not config.estimator.use_impact_model:
        return None
    try:
        return config.instrument(symbol).impact
    except KeyError:
        raise UsageError(f"{config_path}: instrument {symbol} is not configured") from None


def _cmd_estimate(args: argparse.Namespace) -> int:
    from otc.snapshot import MAX_DECIMALS, load_book

    book = load_book(args.book)
    # The book's scale is the finest its file needs: a finer query needs a finer one.
    query = args.qty if args.qty is not None else args.notional
    if query is not None:
        places = max(0, -int(query.as_tuple().exponent))
        finer = places - book.scale.size_decimals
        if args.notional is not None:
            finer -= book.scale.price_decimals
        if finer > 0:
            sizes = book.scale.size_decimals + finer
            if sizes > MAX_DECIMALS:
                what = "--qty" if args.qty is not None else "--notional"
                raise UsageError(f"{what} {decimal_text(query)} has too many decimal places")
            book = load_book(args.book, size_decimals=sizes)
    impact = _impact_for(args.config, book.symbol)
    view = book.view()
    side = Side(args.side)
    out = sys.stdout
    if args.max_bps is not None:
        result = max_qty_within(view, side, args.max_bps)
        est = estimate(view, side, qty=result.qty) if result.qty > 0 else None
        if args.json:
            doc = plain(result)
            assert isinstance(doc, dict)
            doc["estimate"] = None if est is None else estimate_json(est)
            out.write(msgspec.json.encode(doc).decode() + "\n")
        else:
            out.write(format_max_qty(result, est) + "\n")
        return 0
    if args.qty is not None:
        est = estimate(view, side, qty=args.qty, impact=impact)
    else:
        est = estimate(view, side, notional=args.notional, impact=impact)
    if args.json:
        out.write(msgspec.json.encode(estimate_json(est)).decode() + "\n")
    else:
        out.write(format_estimate(est) + "\n")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if not args.once:
        if args.dump_book is not None:  # ignored, it would have left no file and no word
            raise UsageError("--dump-book writes the book of --once: give --once too")
        return _demo_engine(args)
    from feeds.sim import SyntheticMarket
    from otc.snapshot import dump_book

    config: Config = load_config(args.config)
    try:
        inst = config.instrument(args.symbol)
    except KeyError:
        raise UsageError(f"{args.config}: instrument {args.symbol} is not configured") from None
    scale = Scale(inst.price_decimals, inst.size_decimals)
    market = SyntheticMarket(inst.symbol, scale, seed=args.seed)
    for _ in range(200):  # let the market move away from its initial shape
        market.step()
    book = market.consolidated()
    view = book.view()
    out = sys.stdout
    venues = ", ".join(
        f"{s.book.venue} ({s.book.depth(Side.SELL)}x{s.book.depth(Side.BUY)} levels, "
        f"fee {s.fee / 10_000:g} bps)"
        for s in book.venues.values()
    )
    out.write(
        f"otc demo: synthetic market for {inst.symbol}, seed {args.seed}\n"
        f"venues: {venues}\n"
        "(--once: blocks priced on the consolidated synthetic book; without it, the "
        "quoting service runs)\n\n"
    )
    impact = inst.impact
    for side in (Side.BUY, Side.SELL):
        for qty in ("1", "25", "250"):
            est = estimate(view, side, qty=Decimal(qty), impact=impact)
            out.write(format_estimate(est, base=inst.base, quote=inst.quote) + "\n\n")
    for bps in ("10", "25"):
        result = max_qty_within(view, Side.BUY, Decimal(bps))
        qty_text = decimal_text(result.qty)
        out.write(f"largest buy within {bps} bps of mid (all-in): {qty_text} {inst.base}\n")
    if args.dump_book is not None:
        args.dump_book.write_bytes(dump_book(book))
        out.write(f"\nbook written to {args.dump_book}\n")
    return 0


def run_async(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is installed (the default loop elsewhere).

    SIGINT and SIGTERM cancel ``main`` so that its ``finally`` blocks and task groups unwind.
    So does SIGHUP (the terminal was closed): left to its default it killed the process on the
    spot, with no status ``down`` of our own, the journal's queue lost and the demo's broker
    left running; unless SIGHUP is ignored (``nohup otc serve``), which is kept.

    Once ``main`` is over, the runner still waits for the worker threads of ``asyncio.to_thread``
    (a recording's write to a hung disk, a name lookup): a signal then ends the process at
    once, with status 1 (:func:`_abandon_threads`); it was ignored, and nothing but SIGKILL
    ended a process whose thread never returned.
    """
    import asyncio
    import signal

    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - Windows
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        loop = runner.get_loop()
        task = loop.create_task(main, name="main")
        signals = [signal.SIGINT, signal.SIGTERM]
        hangup = getattr(signal, "SIGHUP", None)  # not on Windows
        if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
            signals.append(hangup)

        def stop() -> None:
            if task.done():
                _abandon_threads()
            task.cancel()

        for sig in signals:
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop)
        with contextlib.suppress(asyncio.CancelledError):
            runner.run(_await(task))


def _abandon_threads() -> NoReturn:
    """Exit now, without waiting for worker threads that have not returned (status 1).

    Whatever they were doing is cut short: a read loses nothing, a recording's write leaves the
    file valid up to its last complete flush; the journal was closed before (or its closing
    cut short, and said so).
    """
    sys.stdout.flush()
    sys.stderr.write(
        "otc: error: stopped without waiting for worker threads that had not returned (a disk "
        "write or read that hangs?)\n"
    )
    sys.stderr.flush()
    os._exit(1)


async def _await(task: Awaitable[None]) -> None:
    await task


def _parse_faults(specs: list[str]) -> dict[int, Fault]:
    from feeds.loopback import Fault

    faults: dict[int, Fault] = {}
    for spec in specs:
        text, _, kind = spec.partition(":")
        try:
            index, fault = int(text), Fault(kind)
        except ValueError:
            kinds = ", ".join(f.value for f in Fault)
            raise UsageError(
                f"--fault {spec!r}: expected INDEX:KIND with KIND in {kinds}"
            ) from None
        # Each of these would be served without a word, the fault never injected.
        if index < 0:
            raise UsageError(f"--fault {spec!r}: the index must be 0 or more")
        if index in faults:
            raise UsageError(f"--fault {spec!r}: message {index} has a fault already")
        faults[index] = fault
    return faults


def _cmd_serve_replay(args: argparse.Namespace) -> int:
    import asyncio

    from feeds.loopback import LoopbackExchange

    faults = _parse_faults(args.fault)
    exchange = LoopbackExchange(
        args.venue,
        args.file,
        faults=faults,
        interval_s=args.interval_ms / 1e3,
        port=args.port,
    )
    count = len(exchange.messages)
    for index, fault in faults.items():
        if index >= count:
            raise UsageError(
                f"--fault '{index}:{fault.value}': the recording has {count} websocket "
                f"messages (indices 0 to {count - 1})"
            )

    async def serve() -> None:
        async with exchange:
            sys.stdout.write(
                f"serving {len(exchange.messages)} {args.venue} messages on {exchange.url} "
                f"(REST {exchange.rest_url}); Ctrl-C to stop\n"
            )
            sys.stdout.flush()
            await asyncio.Future()

    run_async(serve())
    return 0


def _broker_address(url: str) -> tuple[str, int, str | None, str | None, bool]:
    from otc.bus import parse_broker_url

    parsed = parse_broker_url(url)
    return parsed.host, parsed.port, parsed.username, parsed.password, parsed.tls


def _with_journal(config: Config, journal: Path | None) -> Config:
    if journal is None:
        return config
    return msgspec.structs.replace(
        config, journal=msgspec.structs.replace(config.journal, path=str(journal))
    )


def _with_record(config: Config, record: Path | None) -> Config:
    if record is None:
        return config
    return msgspec.structs.replace(
        config, journal=msgspec.structs.replace(config.journal, record_path=str(record))
    )


def _stop_outcome(command: str, engine: Any) -> int:
    """The exit status of a stopped engine: 1 when the journal could not record events during
    the run (a full or failing disk: each was logged, and answered ``INTERNAL_ERROR`` when it
    was an RFQ or an accept), when a second signal cut the journal's closing short with events
    not yet committed (the journal logged how many), or when a write error stopped the
    recording (:func:`_recording_outcome`)."""
    journal = engine.journal
    status = _recording_outcome(command, engine)
    if journal is not None and journal.failed:
        sys.stderr.write(
            f"otc: error: the journal {journal.path} could not record {journal.failed} "
            "event(s) during this run (the log says which and why)\n"
        )
        status = 1
    if journal is not None and journal.abandoned:
        sys.stderr.write(
            f"otc: error: stopped before the journal committed {journal.abandoned} event(s) "
            f"(a second signal cut its closing short): `otc blotter --journal {journal.path}` "
            "shows what it holds\n"
        )
        status = 1
    return status


def _recording_outcome(command: str, engine: Any) -> int:
    """Say what the engine recorded; status 1 when a write error stopped the recording."""
    recorder = engine.recorder
    if recorder is None:
        return 0
    if recorder.error is not None:
        sys.stderr.write(
            f"otc: error: {recorder.error}: {recorder.flushed} book events recorded, "
            f"{recorder.dropped} lost\n"
        )
        return 1
    sys.stdout.write(f"{command}: recorded {recorder.flushed} book events to {recorder.path}\n")
    sys.stdout.flush()
    return 0


async def _run_for(main: Coroutine[Any, Any, None], duration: float | None) -> None:
    import asyncio

    if duration is None:
        await main
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration):
            await main


_LOG_LEVELS: Final = ("debug", "info", "warning", "error")


def _log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default="info",
        help="what the engine logs to stderr (default info: start-up, restores, reconnects, "
        "operator commands)",
    )


def _setup_logging(level: str) -> None:
    """The engine's log on stderr, one line per record with its time and level: ours
    (``otc``, ``feeds``) from ``level`` up, the libraries' from warnings up."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in ("otc", "feeds"):
        logging.getLogger(name).setLevel(level.upper())


def _filter_value(text: str) -> str:
    """A ``--client`` or ``--symbol`` filter: matched exactly, never empty.

    An empty value is refused rather than read as "no filter" (or as "match the empty name"):
    on a command line it comes from an unset variable (``--client "$CLIENT"``), and an export
    meant for one client must not quietly hold every client's trades, nor quietly nothing.
    """
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (omit the option for no filter)")
    return text


def _journal_filters(parser: argparse.ArgumentParser) -> None:
    """The filters ``otc blotter`` and ``otc journal export`` share (:func:`otc.journal.recent`)."""
    parser.add_argument("--client", type=_filter_value, help="only this client's events")
    parser.add_argument(
        "--symbol",
        type=_filter_value,
        help="only this symbol's events (an accept, fill or reject through its quote or RFQ)",
    )
    parser.add_argument(
        "--kind",
        action="append",
        dest="kinds",
        choices=sorted(KINDS),
        help="only events of this kind (repeatable)",
    )


def _mqtt_version_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mqtt-version",
        choices=["3.1.1", "5"],
        default="3.1.1",
        help="the MQTT version to speak to the broker (default 3.1.1; 5 needs mosquitto)",
    )


def _console_options(parser: argparse.ArgumentParser) -> None:
    console = parser.add_mutually_exclusive_group()  # a port for a console not served: a typo
    console.add_argument(
        "--console-port",
        type=_port,
        help="operator console port (default: [console] port; 0: free)",
    )
    console.add_argument("--no-console", action="store_true", help="do not serve the console")


def _console_settings(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    """Engine options for the console, and ``args.console_note``: what to print once it is up
    (its address; the token too when it was generated, as no one else knows it)."""
    args.console_note = None
    if args.no_console or not config.console.enabled:
        return {"console": False}
    if args.console_port is not None and not 0 <= args.console_port <= 65_535:
        raise UsageError(f"--console-port must be 0 to 65535, got {args.console_port}")
    from otc.console import resolve_token

    token, source = resolve_token(config)

    def note(url: str | None) -> str:
        if source == "generated":
            return f"console: {url}#token={token} (operator token {token})\n"
        where = "OTC_CONSOLE_TOKEN" if source == "environment" else "[console] token"
        return f"console: {url} (operator token from {where})\n"

    args.console_note = note
    return {"console": True, "console_port": args.console_port, "console_token": token}


#: The engine's broker password, kept out of the config file and the command line (``ps``).
BROKER_PASSWORD_ENV: Final = "OTC_BROKER_PASSWORD"  # noqa: S105 - a variable name, not a secret


def broker_password_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``OTC_BROKER_PASSWORD``, which overrides ``[broker] password`` for ``otc serve`` (a
    password in ``--broker``'s URL overrides both); ``None`` when it is not set.

    Raises:
        ValueError: it is set but empty (most likely a variable that was meant to be filled).
    """
    value = (os.environ if environ is None else environ).get(BROKER_PASSWORD_ENV)
    if value == "":
        raise ValueError(f"{BROKER_PASSWORD_ENV} is set but empty (unset it, or give the password)")
    return value


def _check_live_venues(source: Path, config: Config) -> None:
    """Raise :class:`ConfigError` for an enabled venue with no live feed: the engine would run
    without it, the desk pricing as if it were not configured (a misspelt name)."""
    from feeds.registry import VENUES

    for i, venue in enumerate(config.venues):
        if venue.enabled and venue.name not in VENUES:
            raise ConfigError(
                str(source),
                f"$.venues[{i}].name",
                f"{venue.name!r} has no live feed (known: {', '.join(sorted(VENUES))}); "
                "enabled = false keeps it for backtests",
            )


def _cmd_serve(args: argparse.Namespace) -> int:
    from otc.app import Engine

    _setup_logging(args.log_level)

    config = _with_record(_with_journal(load_config(args.config), args.journal), args.record)
    if args.feeds == "live":
        _check_live_venues(args.config, config)
    options: dict[str, Any] = {}
    if args.broker:
        host, port, user, password, tls = _broker_address(args.broker)
        options = {"host": host, "port": port, "username": user, "password": password, "tls": tls}
    if options.get("password") is None:
        password = broker_password_from_env()
        if password is not None:
            options["password"] = password

    options.update(_console_settings(args, config))

    def ready() -> None:
        sys.stdout.write(f"otc serve: up ({args.feeds} feeds)\n")
        if args.console_note is not None:
            sys.stdout.write(args.console_note(engine.console_url))
        sys.stdout.flush()

    engine = Engine(config, feeds=args.feeds, on_ready=ready, freeze_heap=True, **options)
    run_async(_run_for(engine.run(), args.duration))
    return _stop_outcome("otc serve", engine)


def _demo_engine(args: argparse.Namespace) -> int:
    import tempfile

    from otc.app import Engine
    from otc.broker import find_mosquitto, start_broker

    _setup_logging(args.log_level)
    config = _with_record(_with_journal(load_config(args.config), args.journal), args.record)
    out = sys.stdout
    console = _console_settings(args, config)
    engines: list[Engine] = []

    def instructions(host: str, port: int) -> None:
        url = f"mqtt://{host}:{port}"
        sub = "mosquitto_sub" if find_mosquitto() else "mosquitto_sub (if installed)"
        out.write(
            f"\notc demo: engine up, broker {url}, synthetic market for "
            f"{', '.join(i.symbol for i in config.instruments)}; clients: "
            f"{', '.join(c.id for c in config.clients)}\n"
            f"journal: {config.journal.path} (otc blotter --journal {config.journal.path})\n\n"
            "Send an RFQ and accept it:\n"
            f"  otc rfq --broker {url} --client client-a --symbol BTC-USDT --side buy "
            "--qty 25 --accept\n"
            "or with the mosquitto clients:\n"
            f"  {sub} -h {host} -p {port} -t 'otc/v1/client-a/#' -v &\n"
            f"  mosquitto_pub -h {host} -p {port} -q 1 -t otc/v1/client-a/rfq "
            '-m \'{"rfq_id": "r1", "symbol": "BTC-USDT", "side": "two_way", '
            '"qty": "10"}\'\n'
            f"  mosquitto_pub -h {host} -p {port} -q 1 -t otc/v1/client-a/accept "
            '-m \'{"quote_id": "<quote_id>", "side": "buy"}\'\n'
            "Operator commands (kill switch, clients, spreads) from a shell:\n"
            f"  otc control --broker {url} --operator "
            f"{config.broker.operators[0] if config.broker.operators else 'OPERATOR'} "
            "halt --symbol BTC-USDT\n"
            "Ctrl-C stops the engine (status goes down, the journal is flushed).\n"
        )
        if args.console_note is not None and engines:
            out.write("\nOperator console (books, quotes, fills, kill switch):\n  ")
            out.write(args.console_note(engines[0].console_url))
        out.flush()

    if args.broker:
        host, port, user, password, tls = _broker_address(args.broker)
        engine = Engine(
            config,
            feeds="sim",
            host=host,
            port=port,
            username=user,
            password=password,
            tls=tls,
            on_ready=lambda: instructions(host, port),
            freeze_heap=True,
            **console,
        )
        engines.append(engine)
        run_async(_run_for(engine.run(), args.duration))
        return _stop_outcome("otc demo", engine)

    async def with_broker() -> None:
        with tempfile.TemporaryDirectory(prefix="otc-demo-broker-") as tmp:
            async with start_broker(config_dir=Path(tmp), port=args.mqtt_port) as broker:
                if broker.notice:
                    out.write(f"otc demo: {broker.notice}\n")
                engine = Engine(
                    config,
                    feeds="sim",
                    host=broker.host,
                    port=broker.port,
                    username=None,
                    password=None,
                    tls=False,
                    on_ready=lambda: instructions(broker.host, broker.port),
                    freeze_heap=True,
                    **console,
                )
                engines.append(engine)
                await _run_for(engine.run(), args.duration)

    run_async(with_broker())
    return _stop_outcome("otc demo", engines[0]) if engines else 0


def _client_name(name: str, option: str) -> str:
    """A client or operator name as the config takes it: also a broker user and a topic level."""
    from otc.config import CLIENT_ID, RESERVED_IDS

    if not CLIENT_ID.fullmatch(name):
        raise UsageError(
            f"{option} {name!r} must be 1-64 letters, digits, '_', '.' or '-' (no '/', '+', '#')"
        )
    if name in RESERVED_IDS:
        raise UsageError(f"{option} {name!r} is reserved (otc/v1/{name} is not a client's topic)")
    return name


def _cmd_rfq(args: argparse.Namespace) -> int:
    import asyncio

    from otc.bus import Bus, BusError, PublicationRefused
    from otc.client import ReplyError, accept_quote, new_rfq, request_quote
    from otc.protocol import AcceptReject, Fill, ProtocolError, Quote, Reject, encode

    host, port, user, password, tls = _broker_address(args.broker)
    client = _client_name(args.client, "--client")
    accept_side = args.accept_side
    if accept_side is not None and not args.accept:
        raise UsageError("--accept-side goes with --accept")
    if args.accept and args.side == "two_way" and accept_side is None:
        raise UsageError("--accept-side buy|sell is needed to accept a two-way quote")
    if args.accept and args.side != "two_way" and accept_side not in (None, args.side):
        raise UsageError(f"--accept-side {accept_side}: a {args.side} quote is accepted as such")
    try:
        rfq, _ = new_rfq(args.symbol, args.side, qty=args.qty, notional=args.notional)
    except ProtocolError as exc:
        raise UsageError(exc.reason) from None
    out = sys.stdout

    def show(label: str, message: msgspec.Struct) -> None:
        if args.json:
            out.write(encode(message).decode() + "\n")
        elif isinstance(message, Quote):
            prices = ", ".join(
                f"{side} {price}"
                for side, price in (("bid", message.bid), ("ask", message.ask))
                if price is not None
            )
            out.write(
                f"{label}: {printable(message.symbol)} {message.side} {message.qty}: {prices} "
                f"(quote {printable(message.quote_id)}, valid until {message.valid_until_ms} ms)\n"
            )
        elif isinstance(message, Fill):
            out.write(
                f"{label}: {message.side} {message.qty} at {message.price} "
                f"(trade {printable(message.trade_id)})\n"
            )
        elif isinstance(message, Reject | AcceptReject):
            out.write(f"{label}: {printable(message.code)}: {printable(message.reason)}\n")

    async def run() -> int:
        async with Bus(
            host=host,
            port=port,
            username=user or client,
            password=password,
            tls=tls,
            timeout=args.timeout,
            protocol=args.mqtt_version,
        ) as bus:
            try:
                async with asyncio.timeout(args.timeout):
                    answer = await request_quote(bus, client, rfq)
            except TimeoutError:
                raise UsageError(f"no answer to the RFQ within {args.timeout:g} s") from None
            if isinstance(answer, Reject):
                show("reject", answer)
                return 1
            show("quote", answer)
            if not args.accept:
                return 0
            side: Literal["buy", "sell"] = accept_side or args.side  # checked against the quote
            # Accepts are exactly-once: sending the same accept again returns the same fill.
            again = f"quote {answer.quote_id} may be filled: accepting it again returns its fill"
            try:
                async with asyncio.timeout(args.timeout):
                    fill = await accept_quote(bus, client, answer, side)
            except TimeoutError:
                raise UsageError(
                    f"no answer to the accept within {args.timeout:g} s; {again}"
                ) from None
            except PublicationRefused as exc:  # dropped by the broker: the engine never saw it
                raise UsageError(f"{exc}; the accept did not reach the engine") from None
            except BusError as exc:
                raise UsageError(f"{exc}; {again}") from None
            if isinstance(fill, AcceptReject):
                show("accept rejected", fill)
                return 1
            show("fill", fill)
            return 0

    try:
        return asyncio.run(run())
    except (BusError, ReplyError) as exc:
        raise UsageError(str(exc)) from None


def _cmd_control(args: argparse.Namespace) -> int:
    import asyncio
    import uuid

    from otc.bus import Bus, BusError
    from otc.client import ReplyError, send_control
    from otc.protocol import Code, Control, ProtocolError, wire_decimal

    host, port, user, password, tls = _broker_address(args.broker)
    operator = _client_name(args.operator, "--operator")
    if args.command in ("halt", "resume"):
        if args.symbol is not None and not args.symbol.strip():
            raise UsageError(f"--symbol is empty: to {args.command} every symbol, omit it")
        control = Control(command=args.command, symbol=args.symbol)
    elif args.command == "client":
        control = Control(
            command="client",
            client=_client_name(args.client, "client"),
            enabled=args.state == "enable",
        )
    else:
        try:
            spread = wire_decimal(args.spread_bps, "spread_bps", Code.INVALID_MESSAGE, zero=True)
        except ProtocolError as exc:
            raise UsageError(exc.reason) from None
        if spread >= 10_000:
            raise UsageError(f"spread_bps must be below 10000, got {args.spread_bps!r}")
        control = Control(command="spread", tier=args.tier, spread_bps=args.spread_bps)

    async def run() -> int:
        async with Bus(
            host=host,
            port=port,
            username=user or operator,
            password=password,
            tls=tls,
            client_id=f"{operator}-{uuid.uuid4().hex[:8]}",
            timeout=args.timeout,
            protocol=args.mqtt_version,
        ) as bus:
            try:
                async with asyncio.timeout(args.timeout):
                    result = await send_control(bus, operator, control)
            except TimeoutError:
                raise UsageError(f"no answer from the engine within {args.timeout:g} s") from None
        sys.stdout.write(f"{'ok' if result.ok else 'refused'}: {printable(result.detail)}\n")
        return 0 if result.ok else 1

    try:
        return asyncio.run(run())
    except (BusError, ReplyError) as exc:
        raise UsageError(str(exc)) from None


def _cmd_broker(args: argparse.Namespace) -> int:
    from otc.broker import generate_auth

    config = load_config(args.config)
    engine_user = config.broker.username or "otc-engine"
    files = generate_auth(
        [c.id for c in config.clients],
        engine_user,
        args.out,
        operators=config.broker.operators,
        rotate=args.rotate,
        rotate_all=args.rotate_all,
        source=str(args.config),
    )
    lines = [f"wrote {files.password_file} and {files.acl_file}"]
    if files.passwords:
        lines.append("new passwords (shown this once; hand each to its user privately):")
        lines += [f"  {user}: {password}" for user, password in sorted(files.passwords.items())]
    if files.kept:
        lines.append(f"kept their password: {', '.join(files.kept)}")
    if files.removed:
        lines.append(f"removed (no longer configured): {', '.join(files.removed)}")
    try:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    except OSError as exc:  # a reader gone (`| head`), a full disk: the passwords are lost
        if not files.passwords:
            raise
        # Only their hashes are kept, and the next run keeps those: say how to start over.
        rotate = " ".join(f"--rotate {user}" for user in sorted(files.passwords))
        sys.stderr.write(
            f"otc: error: the new passwords could not be printed ({exc.strerror or exc}): "
            f"{files.password_file} holds only their hashes; give those users new ones: "
            f"otc broker auth --out {args.out} {rotate}\n"
        )
        with contextlib.suppress(OSError):  # nothing more goes to the broken stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _cmd_feeds(args: argparse.Namespace) -> int:
    from feeds.verify import verify

    if args.feeds == "serve-replay":
        try:
            return _cmd_serve_replay(args)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None

    try:
        report = verify(args.venue, args.files)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    out = sys.stdout
    if args.json:
        doc = {
            "applied": report.applied,
            "checksums_ok": report.checksums_ok,
            "checksums_failed": report.checksums_failed,
            "gaps": report.gaps,
            "resyncs": report.resyncs,
            "malformed": report.malformed,
            "messages": report.messages,
            "books": {s: {"bid": t.bid, "ask": t.ask} for s, t in report.books.items()},
        }
        out.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        out.write(
            f"{report.venue}: {report.messages} messages, {report.applied} applied, "
            f"{report.malformed} malformed\n"
            f"checksums: {report.checksums_ok} ok, {report.checksums_failed} failed\n"
            f"gaps: {report.gaps}, resyncs: {report.resyncs}\n"
        )
        for line in report.errors:
            out.write(f"  {line}\n")
        width = max((len(s) for s in report.books), default=0)
        for symbol, top in report.books.items():
            out.write(f"  {symbol:<{width}}  bid {top.bid or '-'}  ask {top.ask or '-'}\n")
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from feeds.record import RecordWriter, record_from_venue

    out = sys.stdout
    if args.source == "sim":
        from feeds.sim import SimFeed, SyntheticMarket

        for option, given in (
            ("--from", args.from_files),
            ("--url", args.url),
            ("--rest-url", args.rest_url),
            ("--symbols", args.symbols),
        ):
            if given:  # it would be left aside, the synthetic market recorded all the same
                raise UsageError(f"{option} is for a venue, not --source sim")
        config = load_config(args.config)
        try:
            inst = config.instrument("BTC-USDT")
        except KeyError:
            raise UsageError(f"{args.config}: instrument BTC-USDT is not configured") from None
        sim = SyntheticMarket(inst.symbol, inst.scale, seed=args.seed)
        feed = SimFeed([sim], interval_s=0.0, steps=args.steps)

        async def record_sim() -> int:
            count = 0
            async with RecordWriter(
                args.out,
                scales={inst.symbol: inst.scale},
                source=f"sim seed={args.seed}",
                flush_bytes=None,
            ) as writer:
                async for event in feed.events():
                    writer.write([event])
                    count += 1
                    if writer.pending_bytes > 1 << 20:
                        await writer.flush_async()
            return count

        import asyncio

        count = asyncio.run(record_sim())
        out.write(f"recorded {count} events from the synthetic market to {args.out}\n")
        return 0
    if args.from_files:
        try:
            report = record_from_venue(args.source, args.from_files, args.out)
        except KeyError as exc:  # an unknown venue; the message lists the known ones
            raise UsageError(f"--source: {exc.args[0]}") from None
        out.write(
            f"converted {report.messages} {report.venue} messages into {report.events} events "
            f"({report.snapshots} snapshots, {report.deltas} deltas; {report.gaps} gaps, "
            f"{report.checksums_failed} checksum failures, {report.malformed} malformed) "
            f"-> {args.out}\n"
        )
        return 0
    symbols = [s for s in args.symbols.split(",") if s]
    if not symbols:
        raise UsageError("--symbols is required to record a live venue")
    counts = _record_live(args, symbols)
    out.write(
        f"recorded {counts[0]} events ({counts[1]} snapshots) from {args.source} to {args.out}\n"
    )
    return 0


def _record_live(args: argparse.Namespace, symbols: list[str]) -> tuple[int, int]:
    """Connect to a venue, write every applied event until --duration elapses or a signal."""
    import asyncio

    from feeds.base import DEFAULT_SCALE
    from feeds.connection import FeedConnection
    from feeds.record import RecordWriter
    from feeds.registry import adapter_class
    from otc.model import BookEvent, BookSnapshot

    try:
        # The symbols asked for are the ones followed: the venue's messages of others (or a
        # loopback exchange's, replaying a wider session) are skipped unread, never recorded.
        feed = adapter_class(args.source)(symbols={s: s for s in symbols})
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    counts = [0, 0]

    async def record() -> None:
        writer = RecordWriter(
            args.out,
            scales={s: feed.scales.get(s, DEFAULT_SCALE) for s in symbols},
            source=f"{args.source} {args.url or feed.url}",
            flush_bytes=None,
        )
        async with writer:

            def on_events(events: list[BookEvent]) -> None:
                writer.write(events)
                counts[0] += len(events)
                counts[1] += sum(isinstance(e, BookSnapshot) for e in events)

            conn = FeedConnection(
                feed, symbols, url=args.url, rest_url=args.rest_url, on_events=on_events
            )
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(conn.run(), name=f"record-{args.source}")
                try:
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + args.duration
                    while loop.time() < deadline:
                        await asyncio.sleep(min(1.0, max(0.0, deadline - loop.time())))
                        await writer.flush_async()
                finally:
                    task.cancel()

    run_async(record())
    return counts[0], counts[1]


def _journal_path(args: argparse.Namespace) -> Path:
    if args.journal is not None:
        return Path(args.journal)
    return Path(load_config(args.config).journal.path)


def _cmd_blotter(args: argparse.Namespace) -> int:
    from otc.journal import format_blotter, recent

    rows = recent(
        _journal_path(args),
        limit=args.limit,
        client=args.client,
        symbol=args.symbol,
        kinds=args.kinds,
    )
    sys.stdout.write(format_blotter(rows))
    return 0


def _cmd_journal(args: argparse.Namespace) -> int:
    from otc.journal import export, export_file

    if args.since_ns is not None and args.until_ns is not None and args.since_ns >= args.until_ns:
        raise UsageError(
            f"--until-ns ({args.until_ns}) must be after --since-ns ({args.since_ns}): the range"
            " is since <= ts_ns < until"
        )
    path = _journal_path(args)
    options = {
        "client": args.client,
        "symbol": args.symbol,
        "kinds": args.kinds,
        "since_ns": args.since_ns,
        "until_ns": args.until_ns,
    }
    if args.out is None:
        export(path, args.format, sys.stdout, **options)
    else:
        count = export_file(path, args.format, args.out, **options)
        sys.stderr.write(f"exported {count} events to {args.out}\n")
    return 0


def _cmd_backtest(args: argparse.Namespace) -> int:
    from otc.backtest.report import format_table, write_outputs
    from otc.backtest.runner import backtest_config, run_backtest
    from otc.backtest.scenario import Scenario, load_scenario

    scenario = load_scenario(args.scenario) if args.scenario else Scenario()
    flow = scenario.flow
    if args.rfqs is not None or args.seed is not None:
        if args.rfqs is not None and args.rfqs < 0:
            raise UsageError(f"--rfqs must be >= 0, got {args.rfqs}")
        flow = msgspec.structs.replace(
            flow,
            rfqs=flow.rfqs if args.rfqs is None else args.rfqs,
            seed=flow.seed if args.seed is None else args.seed,
        )
        scenario = msgspec.structs.replace(scenario, flow=flow)
    if args.model_check_levels is not None:
        if args.model_check_levels < 0:
            raise UsageError(f"--model-check-levels must be >= 0, got {args.model_check_levels}")
        scenario = msgspec.structs.replace(scenario, model_check_levels=args.model_check_levels)
    for path in args.data:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    config = backtest_config(
        load_config(args.config), scenario, source=str(args.scenario or "scenario")
    )
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bt = run_backtest(config, scenario, args.data, progress=sys.stderr if show else None)
    figures = write_outputs(bt, args.out, [p.name for p in args.data], report=not args.no_report)
    out = sys.stdout
    out.write(format_table(figures))
    rate = bt.deltas / bt.wall_s if bt.wall_s else 0.0
    out.write(
        f"\nreplayed {bt.deltas:,} deltas ({figures['replay_seconds']} recorded s) in "
        f"{bt.wall_s:.2f} s ({rate:,.0f} deltas/s); wrote {args.out}/summary.json, rfqs.csv"
        + ("" if args.no_report else ", report.html")
        + "\n"
    )
    return 0


def _cmd_replay_journal(args: argparse.Namespace) -> int:
    from otc.backtest.audit import format_audit, replay_journal

    result = replay_journal(load_config(args.config), args.journal, args.data)
    if args.json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        sys.stdout.write(format_audit(result))
    return 0 if result.identical else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    figures: Any
    if args.bench == "backtest":
        from otc.bench.backtest import run as bench_backtest

        figures = bench_backtest(data=args.data, deltas=args.deltas, repeats=args.repeats)
    elif args.bench == "feeds":
        from otc.bench import feeds as bench_feeds

        figures = bench_feeds.run(venues=args.venues, repeats=args.repeats)
    elif args.bench == "quote":
        from otc.bench import quote as bench_quote

        figures = bench_quote.run(rfqs=args.rfqs, paced_rfqs=args.paced_rfqs, repeats=args.repeats)
    elif args.bench == "rfq":
        from otc.bench import rfq as bench_rfq

        figures = bench_rfq.run(rfqs=args.rfqs, in_flight=args.in_flight, rounds=args.rounds)
    else:
        from otc.bench import book as bench_book

        figures = bench_book.run(deltas=args.deltas, levels=args.levels, seed=args.seed)
    if args.json:
        sys.stdout.write(msgspec.json.encode(figures).decode() + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "estimate": _cmd_estimate,
        "demo": _cmd_demo,
        "serve": _cmd_serve,
        "rfq": _cmd_rfq,
        "control": _cmd_control,
        "broker": _cmd_broker,
        "feeds": _cmd_feeds,
        "record": _cmd_record,
        "blotter": _cmd_blotter,
        "journal": _cmd_journal,
        "bench": _cmd_bench,
        "backtest": _cmd_backtest,
        "replay-journal": _cmd_replay_journal,
    }
    try:
        return handlers[args.cmd](args)
    except (OtcError, ValueError) as exc:
        sys.stderr.write(f"otc: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `otc demo | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # an output file or folder that cannot be written (--out...)
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"otc: error: {where}{exc.strerror or exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
