"""``otc bench quote``: a quick run of the in-process quote path benchmark.

No timing thresholds: what is checked is the shape of the figures, that every case priced
quotes (not rejects) and journaled them, the report's lines, and that the checks it relies on
catch what they are for.
"""

from __future__ import annotations

import gc
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from otc.bench import quote as bench_quote
from otc.bench.rfq import CONFIG_PATH, RFQ_MIX
from otc.errors import OtcError

CASES = ("baseline", "no_journal", "sqlite_journal", "paced")


@pytest.fixture(scope="module")
def quick_run() -> tuple[dict[str, Any], str]:
    out = io.StringIO()
    result = bench_quote.run(rfqs=120, paced_rfqs=30, burst=10, gap_ms=1, repeats=2, out=out)
    return result, out.getvalue()


def test_the_garbage_collector_is_left_as_it_was() -> None:
    """The benchmark sets the collector up as `otc serve` does, and puts it back."""
    gc.unfreeze()
    before = gc.get_threshold()
    bench_quote.run(rfqs=20, paced_rfqs=5, burst=5, gap_ms=0, repeats=1, out=io.StringIO())
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_figures_per_case(quick_run: tuple[dict[str, Any], str]) -> None:
    result, _ = quick_run
    assert set(result["cases"]) == set(CASES) == set(result["ratios"])
    for name in CASES:
        case = result["cases"][name]
        assert case["rfqs"] == (30 if name == "paced" else 120)
        assert case["cpu_us"] > 0
        assert case["elapsed_us"] > 0
        assert result["ratios"][name] == pytest.approx(
            case["cpu_us"] / result["cases"]["baseline"]["cpu_us"]
        )
    # Only the SQLite case has a writer thread to measure.
    assert result["cases"]["sqlite_journal"]["writer_cpu_us"] > 0
    assert result["cases"]["no_journal"]["writer_cpu_us"] is None
    assert result["params"]["rfq_mix"] == [list(item) for item in RFQ_MIX]
    assert result["params"]["repeats"] == 2


def test_report_lines(quick_run: tuple[dict[str, Any], str]) -> None:
    _, text = quick_run
    assert text.startswith("otc bench quote:")
    for label in (
        "baseline: decode the RFQ, encode a reply",
        "on_rfq, no journal",
        "on_rfq, SQLite journal",
        "on_rfq, no journal, paced",
        "one core prices about",
    ):
        assert label in text
    assert "BTC-USDT, ETH-USDT" in text


def test_requests_are_the_mix() -> None:
    payloads = bench_quote.requests(len(RFQ_MIX) + 1, "t")
    decoded = [msgspec.json.decode(p) for p in payloads]
    assert [d["rfq_id"] for d in decoded] == [f"t-{i}" for i in range(len(RFQ_MIX) + 1)]
    assert [(d["symbol"], d["side"], d["qty"]) for d in decoded[:-1]] == list(RFQ_MIX)
    assert (decoded[-1]["symbol"], decoded[-1]["side"]) == RFQ_MIX[0][:2]


def test_a_reject_fails_the_benchmark() -> None:
    reject = b'{"type":"reject","rfq_id":"x","code":"NO_LIQUIDITY","reason":"thin"}'
    quote = b'{"type":"quote","rfq_id":"y"}'
    bench_quote._check([quote, quote])  # quotes only: fine
    with pytest.raises(OtcError, match="NO_LIQUIDITY"):
        bench_quote._check([quote, reject])


def test_an_engine_that_cannot_quote_fails_the_benchmark(tmp_path: Path) -> None:
    """A configuration whose client may not trade the mix's symbols: every RFQ is rejected,
    and the benchmark says so instead of timing rejects as quotes."""
    text = CONFIG_PATH.read_text()
    assert 'symbols = ["BTC-USDT", "ETH-USDT"' in text  # client-a's allowed symbols
    config = tmp_path / "otc.toml"
    config.write_text(text.replace('symbols = ["BTC-USDT", "ETH-USDT"', 'symbols = ["BTC-USD"', 1))
    with pytest.raises(OtcError, match="SYMBOL_NOT_ALLOWED"):
        bench_quote.run(rfqs=10, paced_rfqs=5, repeats=1, out=io.StringIO(), config_path=config)


@pytest.mark.parametrize(
    ("field", "value"), [("rfqs", 0), ("paced_rfqs", -1), ("burst", 0), ("repeats", 0)]
)
def test_bad_parameters_are_refused(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        bench_quote.run(**{field: value}, out=io.StringIO())  # type: ignore[arg-type]


def test_cli_runs_it_as_a_process() -> None:
    args = ["bench", "quote", "--rfqs", "60", "--paced-rfqs", "20", "--repeats", "1", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "otc.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report, figures = proc.stdout.rstrip("\n").rsplit("\n", 1)
    assert report.startswith("otc bench quote:")
    doc = json.loads(figures)
    assert doc["params"]["rfqs"] == 60
    assert doc["params"]["paced_rfqs"] == 20
    assert set(doc["cases"]) == set(CASES)
