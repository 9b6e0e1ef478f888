"""`otc backtest` as a user runs it: outputs, determinism, a clear error on a bad file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from feeds.record import RecordWriter
from feeds.sim import SyntheticMarket
from otc.model import Scale


def otc(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_backtest_on_a_sim_recording_is_byte_identical_twice(tmp_path: Path) -> None:
    data = tmp_path / "sim.jsonl.gz"
    scale = Scale(8, 8)
    sim = SyntheticMarket("BTC-USDT", scale, seed=3)
    t0 = 1_795_000_000_000_000_000
    with RecordWriter(data, scales={"BTC-USDT": scale}, source="test") as writer:
        writer.write(sim.snapshot_events(t0))
        for step in range(1, 600):  # 60 recorded seconds
            writer.write(sim.step_events(step, t0 + step * 100_000_000))
    outs = []
    for n in range(2):
        out = tmp_path / f"out{n}"
        proc = otc("backtest", "--data", data, "--rfqs", "15", "--seed", "9", "--out", out)
        assert proc.returncode == 0, proc.stderr
        assert "group" in proc.stdout
        assert "deltas/s" in proc.stdout
        outs.append((out / "summary.json").read_bytes())
    assert outs[0] == outs[1]
    figures = json.loads(outs[0])
    assert figures["rfqs"] == 15
    assert figures["fills"] > 0
    assert figures["deltas_replayed"] > 0
    html = (tmp_path / "out0" / "report.html").read_text()
    assert "<svg" in html
    assert "http" not in html.split("<svg", 1)[0]  # no external resources before the charts
    rows = (tmp_path / "out0" / "rfqs.csv").read_text().splitlines()
    assert len(rows) == 16


def test_wrong_column_count_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n"
        "binance,BTCUSDT,1,1,true,bid,99,1\n"
        "binance,BTCUSDT,2,2,false,bid,99\n"
    )
    proc = otc("backtest", "--data", bad, "--rfqs", "1", "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert "bad.csv: line 3: expected 8 columns, got 7" in proc.stderr


def test_binance_session_backtest(shared_data: Path, tmp_path: Path) -> None:
    src = (
        shared_data
        / "binance"
        / ("binance_spot_btcusdt_depth100ms_with_rest_snapshot_2024-08-08.jsonl")
    )
    data = tmp_path / "binance.jsonl.gz"
    assert otc("record", "--source", "binance", "--from", src, "--out", data).returncode == 0
    out = tmp_path / "out"
    proc = otc(
        "backtest",
        "--data",
        data,
        "--rfqs",
        "40",
        "--model-check-levels",
        "20",
        "--no-report",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads((out / "summary.json").read_text())
    assert figures["deltas_replayed"] == 3449
    assert figures["fills"] > 0
    assert figures["estimate_error_bps"]["n"] == figures["fills"]
    assert figures["model_check"]["error_bps"]["n"] > 0


@pytest.mark.parametrize("flag", ["--rfqs", "--model-check-levels"])
def test_negative_counts_are_usage_errors(tmp_path: Path, flag: str) -> None:
    data = tmp_path / "x.csv"
    data.write_text("exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n")
    proc = otc("backtest", "--data", data, flag, "-1", "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert flag in proc.stderr


def test_tardis_snapshot_csv_backtest_with_a_scenario_venue(
    shared_data: Path, tmp_path: Path
) -> None:
    """A tardis exchange name (with a '-') is a venue of the scenario; its snapshots price."""
    data = shared_data / "tardis" / "nautilus_binance-futures_book_snapshot_25_BTCUSDT.csv"
    scenario = tmp_path / "futures.toml"
    scenario.write_text(
        'symbols = ["BTC-USDT"]\n'
        "warmup_ms = 0\n"
        "[flow]\n"
        'rfqs = 10\nrate_per_s = "100"\nsize_unit = "base"\nsize_min = "0.1"\nsize_max = "2"\n'
        '[accept]\nmodel = "always"\ndelay_ms = 10\n'
        "[hedge]\nlatency_ms = 10\n"
        "[[venues]]\n"
        'name = "binance-futures"\ntaker_fee_bps = "5"\nsymbols = { "BTC-USDT" = "BTCUSDT" }\n'
    )
    out = tmp_path / "out"
    proc = otc("backtest", "--data", data, "--scenario", scenario, "--no-report", "--out", out)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads((out / "summary.json").read_text())
    assert figures["quotes"] > 0
    assert figures["deltas_replayed"] == 0  # snapshots only
    rows = (out / "rfqs.csv").read_text().splitlines()
    assert len(rows) == figures["rfqs"] + 1
