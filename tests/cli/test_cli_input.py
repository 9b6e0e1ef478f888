"""Bad input to the commands that read files and arguments: one line `otc: error: ...`, status 2,
naming the file (and the place in it), never a traceback, never a hang.

Each case was found by fuzzing the commands (harnesses kept out of the repo); the commands run
in process here, through `otc.cli.main`, for speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import sqlite3
from pathlib import Path

import pytest

from feeds.record import RecordWriter, read_events
from feeds.sim import SyntheticMarket
from otc.backtest.runner import backtest_config, run_backtest
from otc.backtest.scenario import Scenario
from otc.cli import main
from otc.config import load_config
from otc.journal import _SCHEMA, JournalEvent, SqliteJournal
from otc.model import BookDelta, BookSnapshot, Scale

DATA = Path(__file__).parents[1] / "data"
BOOK = DATA / "book_small.json"
CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"


def run(*argv: str | Path) -> tuple[int, str, str]:
    """``otc argv`` in process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            status = exc.code if isinstance(exc.code, int) else 2
    return status, out.getvalue(), err.getvalue()


def refused(*argv: str | Path) -> str:
    """The one error line of a command that must fail with status 2."""
    status, _, err = run(*argv)
    assert status == 2, err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("otc: error: ")
    return line


def book_file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "book.json"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


VENUE = '{"taker_fee_bps": 10, "bids": [["99", "1"]], "asks": [["100", "2"]]}'


# -- otc estimate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        # RecursionError out of msgspec: a traceback.
        ('{"symbol": "X", "venues": {"a": ' + "[" * 5000 + "]" * 5000 + "}}", "$"),
        # The second decoding stage caught only ValidationError: no file, no path.
        (b'{"symbol": "X", "venues": {"a": {"taker_fee_bps": "\xff"}}}', "$.venues.a"),
        # Read as the last one given, the first venue's levels silently dropped.
        ('{"symbol": "X", "venues": {"a": ' + VENUE + ', "a": ' + VENUE + "}}", "$.venues.a"),
        ('{"symbol": "X", "venues": {"a": ' + VENUE[:-1] + ', "bids": []}}}', "$.venues.a.bids"),
        # Decimal() takes Python's "1_000" and any script's digits: read as 1000 and 12 bps.
        (
            '{"symbol": "X", "venues": {"a": ' + VENUE.replace('bps": 10', 'bps": "1_000"') + "}}",
            "$.venues.a.taker_fee_bps",
        ),
        (
            '{"symbol": "X", "venues": {"a": ' + VENUE.replace('bps": 10', 'bps": "١٢"') + "}}",
            "$.venues.a.taker_fee_bps",
        ),
    ],
)
def test_a_malformed_book_file_is_one_line_naming_file_and_path(
    tmp_path: Path, text: str | bytes, where: str
) -> None:
    path = book_file(tmp_path, text)
    line = refused("estimate", "--book", path, "--side", "buy", "--qty", "1")
    assert line.startswith(f"otc: error: {path}: {where}: ")


def test_a_price_padded_with_thousands_of_zeros_is_read_as_its_value(tmp_path: Path) -> None:
    # int() refuses texts of over 4300 digits: the error named neither file nor path.
    padded = "0" * 4300 + "100"
    path = book_file(
        tmp_path,
        VENUE.replace('"100"', f'"{padded}"').join(('{"symbol": "X", "venues": {"a": ', "}}")),
    )
    status, out, err = run("estimate", "--book", path, "--side", "buy", "--qty", "1", "--json")
    assert status == 0, err
    assert json.loads(out)["vwap"] == "100"


def test_a_query_finer_than_the_book_file_is_priced_exactly(tmp_path: Path) -> None:
    # The book's resolution is the finest its file needs: a whole-number book refused
    # `--qty 0.5` ("qty Decimal('0.5') has more than 0 decimal places").
    path = book_file(tmp_path, '{"symbol": "X", "venues": {"a": ' + VENUE + "}}")
    status, out, err = run("estimate", "--book", path, "--side", "buy", "--qty", "0.5", "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert (doc["qty_filled"], doc["notional_filled"]) == ("0.5", "50")
    status, out, err = run(
        "estimate", "--book", path, "--side", "buy", "--notional", "0.001", "--json"
    )
    assert status == 0, err
    assert json.loads(out)["qty_filled"] == "0.00001"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--max-bps", "1e9999999"], "plain notation"),  # hung building a 10**9999999 int
        (["--max-bps", "20000"], "at most 10000 bps"),  # a sell's limit price below zero
        (["--qty", "1_000"], "decimal string"),
        (["--qty", "١٢"], "decimal string"),
        (["--notional", "0"], "must be positive"),
        (["--qty", "0." + "0" * 30 + "1"], "too many decimal places"),
    ],
)
def test_estimate_arguments_are_checked_as_the_wire_checks_sizes(
    args: list[str], problem: str
) -> None:
    assert problem in refused("estimate", "--book", BOOK, "--side", "sell", *args)


def test_a_huge_notional_prints_its_table(tmp_path: Path) -> None:
    # The table's 28-digit context refused to round 10**27 to cents (InvalidOperation).
    status, out, err = run(
        "estimate", "--book", BOOK, "--side", "buy", "--notional", "1" + "0" * 27
    )
    assert status == 0, err
    assert "1,000,000,000,000,000,000,000,000,000.00" in out


def test_no_mid_names_the_venues_left_out(tmp_path: Path) -> None:
    crossed = '{"taker_fee_bps": 0, "bids": [["101", "1"]], "asks": [["100", "1"]]}'
    path = book_file(tmp_path, '{"symbol": "X", "venues": {"a": ' + crossed + "}}")
    line = refused("estimate", "--book", path, "--side", "buy", "--max-bps", "10")
    assert line.endswith("no mid: no bid and ask in the included book; excluded: a (crossed)")


def test_a_sell_the_impact_model_prices_below_zero_is_refused(tmp_path: Path) -> None:
    # The impact model went on past 10,000 bps: an average sell price of -160,000.
    config = tmp_path / "otc.toml"
    text = CONFIG.read_text()
    assert "use_impact_model = false" in text
    config.write_text(text.replace("use_impact_model = false", "use_impact_model = true"))
    line = refused(
        "estimate", "--book", BOOK, "--side", "sell", "--qty", "1000000000", "--config", config
    )
    assert "no positive price" in line
    status, out, err = run(
        "estimate", "--book", BOOK, "--side", "sell", "--qty", "100", "--config", config, "--json"
    )
    assert status == 0, err
    assert json.loads(out)["impact"] is not None


# -- recordings, journals, outputs ----------------------------------------------------------------


def test_recordings_that_cannot_be_read_are_one_line_naming_the_file(tmp_path: Path) -> None:
    good = b'{"recv_ts": 1.0, "msg": {"op": "pong"}}\n'
    whole = gzip.compress(good * 500)
    cases = {
        tmp_path / "absent.jsonl": None,
        tmp_path / "folder.jsonl": "folder",
        tmp_path / "not-gzip.jsonl.gz": good,
        tmp_path / "cut.jsonl.gz": whole[: len(whole) // 2],
        tmp_path / "deep.jsonl": b'{"recv_ts": 1, "msg": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
    }
    for path, content in cases.items():
        if content == "folder":
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        for argv in (
            ["feeds", "verify", "--venue", "okx", path],
            ["record", "--source", "okx", "--from", path, "--out", tmp_path / "out.otc.gz"],
        ):
            line = refused(*argv)
            assert line.startswith(f"otc: error: {path}: "), line


def test_unknown_venue_and_unwritable_outputs_are_one_line(tmp_path: Path) -> None:
    source = tmp_path / "okx.jsonl"
    source.write_text('{"recv_ts": 1.0, "msg": {"op": "pong"}}\n')
    line = refused("record", "--source", "nope", "--from", source, "--out", tmp_path / "x.gz")
    assert "unknown venue 'nope'" in line
    missing = tmp_path / "missing" / "x.otc.gz"
    line = refused("record", "--source", "okx", "--from", source, "--out", missing)
    assert line == f"otc: error: {missing}: No such file or directory"
    journal = tmp_path / "absent.db"
    assert "no journal" in refused("journal", "export", "--journal", journal)
    assert "--limit: must be in [1," in refused("blotter", "--limit", str(2**63))
    assert "--since-ns: must be in [0," in refused(
        "journal", "export", "--journal", journal, "--since-ns", str(2**63)
    )
    assert "--steps: must be in [1," in refused(
        "record", "--source", "sim", "--out", tmp_path / "s.gz", "--steps", "-5"
    )


def test_an_export_onto_its_own_journal_is_refused(tmp_path: Path) -> None:
    # It opened --out first: the journal was truncated, then "not a database".
    journal = tmp_path / "otc.db"
    with contextlib.closing(sqlite3.connect(journal)) as conn, conn:
        conn.executescript(_SCHEMA)
        conn.execute("INSERT INTO events (ts_ns, recorded_ns, kind, client, payload)"
                     " VALUES (1, 1, 'fill', 'client-a', '{}')")  # fmt: skip
    line = refused("journal", "export", "--journal", journal, "--out", journal)
    assert line == f"otc: error: --out {journal} is the journal {journal}: refusing to overwrite it"
    status, out, _ = run("journal", "export", "--journal", journal)
    assert status == 0
    assert len(out.splitlines()) == 2


def test_journal_filters_that_match_nothing_by_mistake_are_refused(tmp_path: Path) -> None:
    # `--kind fills` printed "no events", and swapped --since-ns/--until-ns exported nothing.
    journal = tmp_path / "otc.db"
    assert "argument --kind: invalid choice: 'fills'" in refused(
        "blotter", "--journal", journal, "--kind", "fills"
    )
    assert refused(
        "journal", "export", "--journal", journal, "--since-ns", "5", "--until-ns", "5"
    ) == (
        "otc: error: --until-ns (5) must be after --since-ns (5): the range is since <= ts_ns"
        " < until"
    )


def test_export_and_blotter_take_the_same_filters(tmp_path: Path) -> None:
    # `otc journal export` had no --symbol or --kind; an empty --client matched nothing in
    # both commands (the console reads an empty filter as none): a `--client "$CLIENT"` with
    # CLIENT unset exported an empty file that looked like "no trades".
    journal = tmp_path / "otc.db"

    events = []
    for n, (client, symbol) in enumerate(
        [("client-a", "BTC-USDT"), ("client-a", "ETH-USDT"), ("client-b", "BTC-USDT")]
    ):
        ids = {"rfq_id": f"r{n}", "quote_id": f"q{n}"}
        quote = {"quote_id": f"q{n}", "symbol": symbol, "side": "buy", "qty": "1"}
        events += [
            JournalEvent("rfq", client, n, rfq_id=f"r{n}", payload={"symbol": symbol}),
            JournalEvent("quote", client, n, **ids, payload={"quote": quote}),
            JournalEvent("accept", client, n, quote_id=f"q{n}", payload={"quote_id": f"q{n}"}),
            JournalEvent("fill", client, n, **ids, trade_id=f"t{n}", payload={"price": "1.5"}),
        ]

    async def write() -> None:
        async with SqliteJournal(journal) as writer:
            for event in events:
                await writer.append(event)

    asyncio.run(write())
    filters = ["--client", "client-a", "--symbol", "BTC-USDT", "--kind", "fill", "--kind", "accept"]
    status, out, err = run("journal", "export", "--journal", journal, "--format", "json", *filters)
    assert status == 0, err
    exported = [(d["kind"], d["client"], d["symbol"], d["quote_id"]) for d in json.loads(out)]
    assert exported == [
        ("accept", "client-a", "BTC-USDT", "q0"),
        ("fill", "client-a", "BTC-USDT", "q0"),
    ]
    status, out, err = run("blotter", "--journal", journal, *filters)
    assert status == 0, err
    shown = [line.split()[2:5] for line in out.splitlines()[1:]]
    assert shown == [["accept", "client-a", "BTC-USDT"], ["fill", "client-a", "BTC-USDT"]]

    out_file = tmp_path / "fills.csv"
    status, _, err = run(
        "journal", "export", "--journal", journal, "--out", out_file, "--kind", "fill"
    )
    assert (status, err) == (0, f"exported 3 events to {out_file}\n")
    assert "argument --kind: invalid choice: 'fills'" in refused(
        "journal", "export", "--journal", journal, "--kind", "fills"
    )
    for command in (["blotter"], ["journal", "export"]):
        for option in ("--client", "--symbol"):
            assert refused(*command, "--journal", journal, option, "").endswith(
                f"argument {option}: must not be empty (omit the option for no filter)"
            )


def test_argparse_errors_are_one_line_too() -> None:
    assert refused("estimate", "--book", BOOK, "--side", "up", "--qty", "1").startswith(
        "otc: error: estimate: argument --side: invalid choice: 'up'"
    )


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_a_console_port_for_no_console_is_refused(command: str) -> None:
    # --no-console won silently: the operator who also gave a port expected a console there.
    assert "not allowed with argument" in refused(command, "--no-console", "--console-port", "0")


def test_dump_book_without_once_is_refused() -> None:
    # It was ignored: the demo started its engine and the book file never appeared.
    assert refused("demo", "--dump-book", "book.json") == (
        "otc: error: --dump-book writes the book of --once: give --once too"
    )


# -- otc backtest ---------------------------------------------------------------------------------


def test_a_recording_with_a_clock_jump_replays_without_sampling_the_gap(tmp_path: Path) -> None:
    """One event stamped in 2096 made the run take a chart sample every 250 ms of the 70
    years in between: it never finished."""
    data = tmp_path / "jump.otc.jsonl.gz"
    scale = Scale(8, 8)
    sim = SyntheticMarket("BTC-USDT", scale, seed=3)
    t0 = 1_795_000_000_000_000_000
    with RecordWriter(data, scales={"BTC-USDT": scale}, source="test") as writer:
        writer.write(sim.snapshot_events(t0))
        for step in range(1, 60):
            writer.write(sim.step_events(step, t0 + step * 100_000_000))
        writer.write(sim.step_events(60, 4_000_000_000_000_000_000))
        back = sim.step_events(61, t0 + 61 * 100_000_000)  # and the clock back again
        writer.write(back)
    _, events = read_events(data)
    assert any(isinstance(e, BookSnapshot) for e in events)
    assert any(isinstance(e, BookDelta) for e in events)
    scenario = Scenario()
    bt = run_backtest(backtest_config(load_config(CONFIG), scenario), scenario, [data])
    assert bt.deltas > 0
    times = sorted({sample.ts_ns for sample in bt.samples})
    assert times[0] < t0 + 60 * 100_000_000
    assert len(times) < 10_100  # the samples of the first 6 s, at most 10,000 in the gap, the last
    assert bt.out_of_order == len(back) > 0  # counted (summary.json: events_out_of_order)


def test_an_unknown_log_level_is_refused() -> None:
    assert "argument --log-level: invalid choice: 'loud'" in refused("serve", "--log-level", "loud")
