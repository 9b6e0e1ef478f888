"""Backtest: a tiny recorded session whose every score is worked out by hand below."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import pytest

from feeds.record import RecordWriter
from otc.backtest.report import write_outputs
from otc.backtest.runner import Backtest, backtest_config, event_batches, recorded_scales
from otc.backtest.scenario import load_scenario
from otc.backtest.scores import bucket_label, error_stats
from otc.config import load_config
from otc.errors import ConfigError
from otc.model import BookDelta, BookEvent, BookSnapshot, Scale

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000
SCALE = Scale(2, 3)

CONFIG = """
[estimator]
max_book_age_ms = 100000
[[instruments]]
symbol = "BTC-USDT"
base = "BTC"
quote = "USDT"
tick_size = "0.01"
lot_size = "0.001"
price_decimals = 2
size_decimals = 3
[[venues]]
name = "alpha"
taker_fee_bps = "10"
symbols = { "BTC-USDT" = "BTCUSDT" }
[tiers]
gold = { spread_bps = "2" }
[risk]
volatility_coefficient = "0"
[[clients]]
id = "client-a"
tier = "gold"
symbols = ["BTC-USDT"]
max_trade_notional = "1000000"
max_daily_notional = "10000000"
"""

SCENARIO = """
warmup_ms = 0
[accept]
model = "always"
delay_ms = 100
[hedge]
latency_ms = 100
[[rfqs]]
at_ms = 1000
client = "client-a"
symbol = "BTC-USDT"
side = "buy"
qty = "1"
[[rfqs]]
at_ms = 1050
client = "client-a"
symbol = "BTC-USDT"
side = "buy"
qty = "2"
[[rfqs]]
at_ms = 1400
client = "client-a"
symbol = "BTC-USDT"
side = "two_way"
qty = "3"
accept_side = "sell"
"""


def p(text: str) -> int:
    return SCALE.price(text)


def q(text: str) -> int:
    return SCALE.size(text)


def events() -> list[BookSnapshot | BookDelta]:
    """alpha's BTCUSDT book (the venue's own symbol name): mid 100, then moves."""
    return [
        BookSnapshot(
            "alpha",
            "BTCUSDT",
            [(p("99"), q("5")), (p("98"), q("5"))],
            [(p("101"), q("2")), (p("102"), q("5"))],
            1,
            T0,
            T0,
        ),
        # the venue refreshes its 101 level after both buy hedges: our consumption is forgotten
        BookDelta("alpha", "BTCUSDT", [], [(p("101"), q("2"))], 2, 0, T0 + 1_300_000_000),
        BookDelta("alpha", "BTCUSDT", [(p("99.5"), q("5"))], [], 3, 0, T0 + 2 * S),  # mid 100.25
        BookDelta("alpha", "BTCUSDT", [], [(p("100.5"), q("1"))], 4, 0, T0 + 15 * S),  # mid 100
        BookDelta("alpha", "BTCUSDT", [(p("90"), q("1"))], [], 5, 0, T0 + 70 * S),
    ]


@pytest.fixture
def session(tmp_path: Path) -> tuple[Path, Path, Path]:
    config = tmp_path / "otc.toml"
    config.write_text(CONFIG)
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    data = tmp_path / "alpha.jsonl.gz"
    with RecordWriter(data, scales={"BTCUSDT": SCALE}, source="test", created_ns=T0) as w:
        w.write(events())
    return config, scenario, data


def run(config_path: Path, scenario_path: Path, data: Path) -> Backtest:
    scenario = load_scenario(scenario_path)
    config = backtest_config(load_config(config_path), scenario)
    bt = Backtest(config, scenario)
    asyncio.run(bt.run(event_batches([data], recorded_scales(config))))
    return bt


def test_scores_worked_out_by_hand(session: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bt = run(*session)
    figures = write_outputs(bt, tmp_path / "out", ["alpha.jsonl.gz"], report=False)
    r1, r2, r3 = bt.records
    # rfq 1, buy 1 at 1.0 s: hedge estimate 1 @ 101 all-in 101.101; ask 101.101 x 1.0002
    # = 101.1212202, rounded up to the tick: 101.13. Filled at 1.1 s, hedged at 1.2 s: the same.
    assert r1.quote["ask"] == "101.13"
    assert r1.estimated_all_in["ask"] == Decimal("101.101")
    assert r1.hedge is not None
    assert r1.hedge.avg_price_all_in == Decimal("101.101")
    # rfq 2, buy 2 at 1.05 s: priced on the untouched book (1 hedge not done yet): 2 @ 101,
    # ask 101.13. Hedged at 1.25 s, after hedge 1 took 1 of the 2 at 101: 1 @ 101 + 1 @ 102,
    # all-in (203 x 1.001) / 2 = 101.6015.
    assert r2.quote["ask"] == "101.13"
    assert r2.hedge is not None
    assert r2.hedge.avg_price_all_in == Decimal("101.6015")
    assert r2.hedge.route == {"alpha": Decimal(2)}
    # rfq 3, two-way 3 at 1.4 s, the client sells: bid 99 x 0.999 = 98.901, x 0.9998 =
    # 98.8812198, rounded down: 98.88; hedge sells 3 @ 99 (the 101 refresh at 1.3 s is asks).
    assert r3.quote["bid"] == "98.88"
    assert r3.fill_price == Decimal("98.88")
    assert r3.hedge is not None
    assert r3.hedge.avg_price_all_in == Decimal("98.901")

    # per-RFQ bps are rounded to 4 decimals; means are of those
    error2 = round((Decimal("101.6015") - Decimal("101.101")) / Decimal("101.101") * 10_000, 4)
    err = figures["estimate_error_bps"]
    assert err["n"] == 3
    assert Decimal(err["max_abs"]) == round(error2, 4)
    assert Decimal(err["p95"]) == round(error2, 4)
    assert Decimal(err["p50"]) == 0
    assert Decimal(err["mean"]) == round(error2 / 3, 4)

    # markouts, mid 100 -> 100.25 at 2 s -> 100 at 15 s: client buys at 101.13 (x2), a sell at
    # 98.88; 1 s and 10 s after every quote the mid is 100.25, 60 s after it is 100.
    buy_1 = round((Decimal("101.13") - Decimal("100.25")) / Decimal("100.25") * 10_000, 4)
    sell_1 = round((Decimal("100.25") - Decimal("98.88")) / Decimal("100.25") * 10_000, 4)
    buy_60 = round((Decimal("101.13") - 100) / 100 * 10_000, 4)
    sell_60 = round((100 - Decimal("98.88")) / 100 * 10_000, 4)
    assert Decimal(figures["markout_bps"]["1s"]) == round((2 * buy_1 + sell_1) / 3, 4)
    assert Decimal(figures["markout_bps"]["10s"]) == round((2 * buy_1 + sell_1) / 3, 4)
    assert Decimal(figures["markout_bps"]["60s"]) == round((2 * buy_60 + sell_60) / 3, 4)

    # P&L: spread captured - slippage - fees, against mid 100 at each quote.
    # 1: 1.13 - (101 - 100) - 0.101 = 0.029; 2: 2.26 - (203 - 200) - 0.203 = -0.943;
    # 3: 3.36 - (300 - 297) - 0.297 = 0.063; total -0.851.
    assert figures["pnl"] == {"USDT": "-0.851"}
    assert figures["pnl_breakdown"]["USDT"] == {
        "spread_captured": "6.75",
        "slippage": "7",
        "fees": "0.601",
    }
    assert (figures["rfqs"], figures["quotes"], figures["fills"]) == (3, 3, 3)
    assert figures["fill_ratio"] == "1"
    assert figures["deltas_replayed"] == 4
    assert figures["replay_seconds"] == "70"
    assert figures["by_size_bucket"]["<100000"]["fills"] == 3
    rows = (tmp_path / "out" / "rfqs.csv").read_text().splitlines()
    assert len(rows) == 4
    assert rows[2].split(",")[-2] == "-0.943"


def test_without_consumption_two_hedges_take_the_same_levels(
    session: tuple[Path, Path, Path],
) -> None:
    config, scenario, data = session
    scenario.write_text(SCENARIO.replace("latency_ms = 100", "latency_ms = 100\nconsume = false"))
    bt = run(config, scenario, data)
    assert bt.records[1].hedge is not None
    assert bt.records[1].hedge.avg_price_all_in == Decimal("101.101")


def test_benchmark_accept_model_declines_quotes_beyond_mid_plus_n_bps(
    session: tuple[Path, Path, Path],
) -> None:
    config, scenario, data = session
    # at decision time the mid is 100: 101.13 is 113 bps above it, 98.88 is 112 below
    scenario.write_text(
        SCENARIO.replace('model = "always"', 'model = "benchmark"\nbenchmark_bps = "112"')
    )
    bt = run(config, scenario, data)
    assert [r.accept_outcome for r in bt.records] == ["declined", "declined", "filled"]


def test_expired_quote_is_refused_by_the_engine(session: tuple[Path, Path, Path]) -> None:
    config, scenario, data = session
    scenario.write_text("quote_ttl_ms = 50\n" + SCENARIO)
    bt = run(config, scenario, data)
    assert {r.accept_outcome for r in bt.records} == {"EXPIRED"}


def test_generated_flow_is_deterministic(session: tuple[Path, Path, Path], tmp_path: Path) -> None:
    config, scenario, data = session
    scenario.write_text(
        'warmup_ms = 0\n[flow]\nrfqs = 30\nseed = 4\nrate_per_s = "2"\nsize_unit = "base"\n'
        'size_min = "0.01"\nsize_max = "4"\nsides = { buy = 1, sell = 1, two_way = 1 }\n'
        '[accept]\nmodel = "random"\nprobability_per_bps = "0.005"\n'
    )
    outs = []
    for n in range(2):
        bt = run(config, scenario, data)
        write_outputs(bt, tmp_path / f"out{n}", ["alpha.jsonl.gz"], report=False)
        outs.append((tmp_path / f"out{n}" / "summary.json").read_bytes())
    assert outs[0] == outs[1]
    figures = json.loads(outs[0])
    assert figures["rfqs"] == 30
    assert 0 < figures["fills"] < figures["quotes"]  # the random model declined some


def test_a_delta_before_any_snapshot_is_counted_and_the_book_stays_excluded(
    session: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    config, scenario, _ = session
    data = tmp_path / "late.jsonl.gz"
    with RecordWriter(data, scales={"BTCUSDT": SCALE}, source="test", created_ns=T0) as w:
        w.write([BookDelta("alpha", "BTCUSDT", [(p("99"), q("1"))], [], 0, 0, T0 - 1)])
        w.write(events())
    bt = run(config, scenario, data)
    assert bt.unsynced == 1
    assert [r.outcome for r in bt.records] == ["quote"] * 3


def test_malformed_tardis_row_names_file_and_line(session: tuple[Path, Path, Path]) -> None:
    config, scenario, _ = session
    csv = scenario.parent / "bad.csv"
    csv.write_text(
        "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n"
        "alpha,BTCUSDT,1,1,true,bid,99,1\n"
        "alpha,BTCUSDT,2,2,false,bid,abc,1\n"
    )
    with pytest.raises(ConfigError, match=r"bad\.csv: line 3: price"):
        run(config, scenario, csv)


def test_scenario_typo_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[accept]\nmodel = "benchmark"\nbenchmark_bp = "3"\n')
    with pytest.raises(ConfigError, match=r"s\.toml: \$\.accept\.benchmark_bp: unknown field"):
        load_scenario(path)


_RFQ = '[[rfqs]]\nat_ms = 2500\nclient = "client-a"\nsymbol = "BTC-USDT"\nside = "buy"\n'


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("accept_side", '"up"', "Invalid enum value 'up' (expected one of 'buy', 'sell')"),
        ("accept_side", "1", "Expected `str | null`, got `int` (expected one of 'buy', 'sell')"),
        ("side", '"up"', "Invalid enum value 'up' (expected one of 'buy', 'sell', 'two_way')"),
    ],
)
def test_a_scenario_key_of_a_few_values_names_them_when_optional_too(
    tmp_path: Path, key: str, value: str, problem: str
) -> None:
    """``accept_side`` (``Literal[...] | None``) names its values as ``side`` does."""
    rfq = dict(line.split(" = ") for line in _RFQ.splitlines()[1:])
    rfq |= {"side": '"two_way"', "qty": '"1"', key: value}
    file = tmp_path / "s.toml"
    file.write_text("[[rfqs]]\n" + "".join(f"{k} = {v}\n" for k, v in rfq.items()))
    with pytest.raises(ConfigError) as info:
        load_scenario(file)
    assert (info.value.path, info.value.problem) == (f"$.rfqs[0].{key}", problem)


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        # Found by fuzzing the scenario: each loaded, then the backtest failed with a
        # traceback (ZeroDivisionError, "math domain error", decimal.InvalidOperation/Overflow).
        ('[flow]\nrate_per_s = "1e-999999"', "$.flow.rate_per_s", "at least 0.000001"),
        ('[flow]\nsize_min = "1e-999999"', "$.flow.size_min", "at least 1e-18"),
        ('[flow]\nsize_max = "1e999999"', "$.flow.size_max", "at most 1e30"),
        (_RFQ + 'qty = "NaN"', "$.rfqs[0].qty", "finite number > 0"),
        (_RFQ + 'notional = "-5"', "$.rfqs[0].notional", "finite number > 0"),
        ('[accept]\nmodel = "random"\nprobability_per_bps = "1e999999"',
         "$.accept.probability_per_bps", "at most 1"),
        ('[accept]\nmodel = "random"\nprobability_at_mid = "2"',
         "$.accept.probability_at_mid", "at most 1"),
    ],
)  # fmt: skip
def test_scenario_values_the_flow_cannot_use_name_file_and_key(
    tmp_path: Path, text: str, path: str, problem: str
) -> None:
    file = tmp_path / "s.toml"
    file.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_scenario(file)
    assert (info.value.source, info.value.path) == (str(file), path), str(info.value)
    assert problem in info.value.problem, str(info.value)


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        # Was a bare KeyError from the recorded scales when the backtest started.
        ('[[venues]]\nname = "zz"\ntaker_fee_bps = "1"\nsymbols = { "DOGE-USDT" = "DOGEUSDT" }',
         "$.venues[0].symbols.DOGE-USDT", "not a configured instrument"),
        ('[[venues]]\nname = "zz"\ntaker_fee_bps = "1"\n\n[[venues]]\nname = "zz"\n'
         'taker_fee_bps = "2"', "$.venues[1].name", "zz given twice"),
        # A typo in these loaded and ran: a backtest of UNKNOWN_SYMBOL or UNKNOWN_CLIENT rejects.
        ('symbols = ["BTC-USDC"]', "$.symbols[0]", "'BTC-USDC' is not a configured instrument"),
        ("[flow.clients]\nclient-z = 1", "$.flow.clients.client-z",
         "'client-z' is not a configured client"),
        ('[[rfqs]]\nat_ms = 0\nclient = "client-a"\nsymbol = "BTCUSDT"\nside = "buy"\nqty = "1"',
         "$.rfqs[0].symbol", "'BTCUSDT' is not a configured instrument"),
        ('[[rfqs]]\nat_ms = 0\nclient = "clinet-a"\nsymbol = "BTC-USDT"\nside = "buy"\nqty = "1"',
         "$.rfqs[0].client", "'clinet-a' is not a configured client"),
    ],
)  # fmt: skip
def test_scenario_venues_symbols_and_clients_are_checked_against_the_config(
    tmp_path: Path, text: str, path: str, problem: str
) -> None:
    config = tmp_path / "otc.toml"
    config.write_text(CONFIG)
    file = tmp_path / "s.toml"
    file.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        backtest_config(load_config(config), load_scenario(file), source=str(file))
    assert (info.value.source, info.value.path, info.value.problem) == (str(file), path, problem)


def test_bucket_labels_and_error_stats() -> None:
    edges = [Decimal(100), Decimal(1000)]
    assert bucket_label(Decimal(5), edges) == "<100"
    assert bucket_label(Decimal(100), edges) == "100-1000"
    assert bucket_label(Decimal(1000), edges) == ">=1000"
    stats = error_stats([Decimal(-4), Decimal(1), Decimal(2), Decimal(3)])
    assert stats == {"n": 4, "mean": "0.5", "p50": "2", "p95": "4", "max_abs": "4"}


def test_a_silence_longer_than_the_book_age_limit_is_reported_as_a_data_gap(
    session: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """With max_book_age_ms = 2000, the 13 s between the deltas at 2 s and 15 s is a gap (and
    so is the 55 s to the last); RFQs inside one find the venue stale: no quote."""
    config, scenario, data = session
    strict = tmp_path / "strict.toml"
    strict.write_text(
        config.read_text().replace("max_book_age_ms = 100000", "max_book_age_ms = 2000")
    )
    late = tmp_path / "late.toml"
    late.write_text(scenario.read_text().replace("at_ms = 1400", "at_ms = 9000"))
    bt = run(strict, late, data)
    assert [(g.venue, g.symbol, g.start_ns - T0, g.end_ns - T0) for g in bt.gaps] == [
        ("alpha", "BTC-USDT", 2 * S, 15 * S),
        ("alpha", "BTC-USDT", 15 * S, 70 * S),
    ]
    assert [r.outcome for r in bt.records] == ["quote", "quote", "MARKET_UNAVAILABLE"]
    out = tmp_path / "out"
    write_outputs(bt, out, files=[str(data)], report=False)
    gaps = json.loads((out / "summary.json").read_text())["data_gaps"]
    assert gaps["count"] == 2
    assert gaps["seconds"] == "68"
    assert gaps["longest"][0] == {
        "venue": "alpha",
        "symbol": "BTC-USDT",
        "from_s": "15",
        "seconds": "55",
    }


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (
            BookDelta("alpha", "BTCUSDT", [], [(p("101"), -q("1.5"))], 2, 0, T0 + S // 2),
            "negative ask size -1500 at price 10100",
        ),
        (
            BookSnapshot("alpha", "BTCUSDT", [(0, q("1"))], [], 2, 0, T0 + S // 2),
            "non-positive bid price 0",
        ),
    ],
)
def test_a_recorded_event_the_book_refuses_stops_the_backtest_naming_it(
    session: tuple[Path, Path, Path], tmp_path: Path, event: BookEvent, problem: str
) -> None:
    """A negative size in a recorded delta was stored as a level: the walk took -1.5 BTC at
    101 and the backtest scored quotes priced through it (a markout of 363 bps) without a
    word; a refused snapshot stopped it naming neither the data nor the event."""
    config, scenario, _ = session
    data = tmp_path / "bad.jsonl.gz"
    with RecordWriter(data, scales={"BTCUSDT": SCALE}, source="test", created_ns=T0) as w:
        w.write([events()[0], event])
    with pytest.raises(ConfigError) as info:
        run(config, scenario, data)
    message = str(info.value)
    assert f"{event.venue} {event.symbol}" in message
    assert f"received at {event.ts_recv_ns}" in message
    assert "sequence 2" in message
    assert message.endswith(problem)


def test_a_sell_the_impact_model_cannot_price_is_left_out_of_the_model_check(
    session: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Cut to 1 level (5 BTC of bids), a 7 BTC sell is extrapolated by a model that puts it
    7,350 bps below mid, and the 2 BTC beyond visible depth at a marginal price below zero
    (7 x 0.265 < 5 x (1 - 0.6212) of mid): no positive price. The InsufficientDepth it raised
    ended the whole backtest (`otc: error: ...`, no output); now the sample is counted as
    unpriced. 6 BTC (6,805 bps) keeps a positive marginal (6 x 0.3195 > 1.894) and is priced."""
    config, _, data = session
    impact = tmp_path / "impact.toml"
    impact.write_text(
        config.read_text().replace(
            "size_decimals = 3\n",
            "size_decimals = 3\nimpact = { coefficient = '7.35', daily_volatility_bps = '1000', "
            "daily_volume = '7' }\n",
        )
    )
    sells = tmp_path / "sells.toml"
    sells.write_text(
        "warmup_ms = 0\nmodel_check_levels = 1\n[accept]\nmodel = 'always'\n"
        "[[rfqs]]\nat_ms = 1000\nclient = 'client-a'\nsymbol = 'BTC-USDT'\nside = 'sell'\n"
        "qty = '7'\n"
        "[[rfqs]]\nat_ms = 1200\nclient = 'client-a'\nsymbol = 'BTC-USDT'\nside = 'sell'\n"
        "qty = '6'\n"
    )
    bt = run(impact, sells, data)
    assert [r.outcome for r in bt.records] == ["quote", "quote"]
    assert bt.records[0].model_checks == []  # a marginal price below zero: nothing to compare
    assert len(bt.records[1].model_checks) == 1  # 6 BTC: priced
    out = tmp_path / "out"
    write_outputs(bt, out, files=[str(data)], report=False)
    check = json.loads((out / "summary.json").read_text())["model_check"]
    assert check["unpriced_by_model"] == 1
    assert check["error_bps"]["n"] == 1
