"""`otc estimate`, `otc demo` and `otc bench` run as real processes, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

DATA = Path(__file__).parents[1] / "data"
BOOK = DATA / "book_small.json"
REQUIRED = {
    "side",
    "qty_requested",
    "notional_requested",
    "qty_filled",
    "notional_filled",
    "vwap",
    "avg_price_all_in",
    "worst_price",
    "mid",
    "touch",
    "slippage_bps_mid",
    "slippage_bps_touch",
    "levels",
    "shortfall_qty",
    "allocation",
}


def otc(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def estimate_json(*args: str | Path) -> dict[str, object]:
    proc = otc("estimate", "--book", BOOK, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc


def test_buy_qty_json_has_every_field_with_hand_checked_values() -> None:
    doc = estimate_json("--side", "buy", "--qty", "2")
    assert doc.keys() >= REQUIRED
    # Fee-adjusted asks: okx 64000.5 x 1.0008 = 64051.7004, okx 64002 x 1.0008 = 64053.2016,
    # binance 64000.2 x 1.001 = 64064.2002. So 2 BTC: 1 @ 64000.5 + 1 @ 64002, all on okx.
    assert doc["qty_filled"] == "2"
    assert doc["notional_filled"] == "128002.5"
    assert doc["vwap"] == "64001.25"
    assert Decimal(doc["avg_price_all_in"]) == Decimal("64052.451")  # type: ignore[arg-type]
    assert doc["worst_price"] == "64002"
    assert doc["touch"] == "64000.2"  # binance has the best raw ask, but it was not the cheapest
    assert doc["mid"] == "64000.15"
    assert doc["levels"] == 2
    assert doc["shortfall_qty"] == "0"
    assert doc["allocation"] == {"okx": {"qty": "2", "notional": "128002.5"}}
    expected_bps = (Fraction("64052.451") / Fraction("64000.15") - 1) * 10_000
    assert abs(Fraction(doc["slippage_bps_mid"]) - expected_bps) < Fraction(1, 10**6)  # type: ignore[arg-type]


def test_sell_beyond_depth_reports_shortfall_field() -> None:
    doc = estimate_json("--side", "sell", "--qty", "10")
    # bids: binance 64000.1 x1.25, 63999 x2 (fee 10), okx 64000 x1 (fee 8): 4.25 visible.
    assert doc["qty_filled"] == "4.25"
    assert doc["shortfall_qty"] == "5.75"
    assert doc["depth_exhausted"] is True
    assert doc["worst_price"] == "63999"


def test_notional_mode() -> None:
    doc = estimate_json("--side", "buy", "--notional", "64000.5")
    assert doc["qty_filled"] == "1"
    assert doc["notional_filled"] == "64000.5"
    assert doc["qty_requested"] is None
    assert doc["notional_requested"] == "64000.5"


def test_max_bps_gives_qty_and_estimate() -> None:
    proc = otc("estimate", "--book", BOOK, "--side", "sell", "--max-bps", "9.5", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    qty = Decimal(doc["qty"])
    assert 0 < qty < Decimal("4.25")
    assert doc["estimate"]["qty_filled"] == doc["qty"]
    assert Decimal(doc["estimate"]["slippage_bps_mid"]) <= Decimal("9.5")


def test_human_output_has_route_table() -> None:
    proc = otc("estimate", "--book", BOOK, "--side", "sell", "--qty", "3")
    assert proc.returncode == 0, proc.stderr
    assert "route:" in proc.stdout
    assert "binance" in proc.stdout
    assert "okx" in proc.stdout
    assert "slippage vs mid" in proc.stdout


def test_no_float_artefacts_anywhere_in_json() -> None:
    for args in (("--side", "buy", "--qty", "0.3"), ("--side", "sell", "--notional", "0.1")):
        out = otc("estimate", "--book", BOOK, *args, "--json").stdout
        assert "E+" not in out
        assert "E-" not in out
        assert "0000000000001" not in out
        assert "9999999999" not in out


def test_the_table_prints_fees_that_round_up_to_one_more_digit(tmp_path: Path) -> None:
    # 1 @ 99960 with a 1 bps fee: fees 9.996, shown to the cent as 10.00.
    path = tmp_path / "book.json"
    path.write_text(
        '{"symbol": "X", "venues": {"a": {"taker_fee_bps": "1", "bids": [["99950", "1"]], '
        '"asks": [["99960", "1"]]}}}'
    )
    proc = otc("estimate", "--book", path, "--side", "buy", "--qty", "1")
    assert proc.returncode == 0, proc.stderr
    assert "fees                10.00" in proc.stdout


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('{"symbol": "X", "venues": {"a": {"taker_fee_bps": 1, "bids": []}}}', "asks"),
        (
            '{"symbol": "X", "venues": {"a": {"taker_fee_bps": 1, "bids": [["abc", "1"]], '
            '"asks": []}}}',
            "$.venues.a.bids[0][0]",
        ),
        (
            '{"symbol": "X", "venues": {"a": {"taker_fee_bps": 1, "bids": [["1", "-2"]], '
            '"asks": []}}}',
            "negative",
        ),
        (
            '{"symbol": "X", "venues": {"a": {"taker_fee_bps": 1, "bids": [["NaN", "1"]], '
            '"asks": []}}}',
            "$.venues.a.bids[0][0]",
        ),
        (
            '{"symbol": "X", "venues": {"a": {"taker_fee_bps": 1, "bids": [[1.5, "1"]], '
            '"asks": []}}}',
            "$.venues.a.bids[0][0]",
        ),
    ],
)
def test_malformed_book_is_one_line_error(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "book.json"
    path.write_text(content)
    proc = otc("estimate", "--book", path, "--side", "buy", "--qty", "1")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0]
    assert needle in lines[0]


@pytest.mark.parametrize("qty", ["0", "-1", "NaN", "inf", "abc"])
def test_bad_qty_is_rejected(qty: str) -> None:
    proc = otc("estimate", "--book", BOOK, "--side", "buy", "--qty", qty)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "qty" in proc.stderr or "argument" in proc.stderr


def test_missing_book_file(tmp_path: Path) -> None:
    proc = otc("estimate", "--book", tmp_path / "nope.json", "--side", "buy", "--qty", "1")
    assert proc.returncode == 2
    assert "nope.json" in proc.stderr


def test_demo_prints_estimates_and_dumps_a_book_that_estimate_reads(tmp_path: Path) -> None:
    dump = tmp_path / "demo_book.json"
    proc = otc("demo", "--once", "--seed", "3", "--dump-book", dump)
    assert proc.returncode == 0, proc.stderr
    assert "buy 250 BTC" in proc.stdout
    assert "route:" in proc.stdout
    again = otc("estimate", "--book", dump, "--side", "buy", "--qty", "250", "--json")
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["qty_filled"] == "250"
    # The demo's own table shows the same all-in average for the same book.
    assert doc["avg_price_all_in"] in proc.stdout


def test_demo_is_deterministic() -> None:
    assert (
        otc("demo", "--once", "--seed", "5").stdout == otc("demo", "--once", "--seed", "5").stdout
    )


def test_bench_book_refuses_a_book_too_shallow_before_printing() -> None:
    # The benchmark needs 10 levels: --levels 5 printed its table's header on stdout, then the
    # error (nothing is to be half-printed).
    proc = otc("bench", "book", "--levels", "5", "--deltas", "10")
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("otc: error: bench book: argument --levels: must be in [10, "), line
