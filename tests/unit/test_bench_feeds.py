"""``otc bench feeds``: a quick run on the Bybit recordings, and the cases without data.

No timing thresholds: the figures depend on the machine. What is checked is the shape of the
result, that our adapter applied every recorded message, and that the books agree.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

from otc.bench.feeds import BookTop, compare, run
from otc.model import Scale

HAS_CRYPTOFEED = importlib.util.find_spec("cryptofeed") is not None
RATE_KEYS = {"msgs_per_s", "us_per_msg", "level_updates_per_s", "elapsed_ms"}


def test_quick_run_on_bybit(shared_data: Path) -> None:
    out = io.StringIO()
    result = run(quick=True, venues=["bybit"], out=out, data_dir=shared_data)

    json.dumps(result)  # JSON-ready as returned
    assert result["params"]["repeats"] == 1
    assert result["params"]["venues"] == ["bybit"]
    assert set(result["machine"]["versions"]) >= {"otc", "msgspec", "cryptofeed"}
    bybit = result["venues"]["bybit"]
    recordings = bybit["recordings"]
    assert recordings
    assert bybit["messages"] == sum(r["messages"] for r in recordings)
    assert bybit["level_updates"] == sum(r["level_updates"] for r in recordings) > 0

    # Every Bybit message is a book snapshot or delta: all applied, none lost to a gap.
    stats = bybit["ours_stats"]
    assert stats["applied"] == bybit["messages"]
    assert stats["gaps"] == stats["dropped"] == stats["ignored"] == 0
    assert stats["snapshots"] >= len(recordings)
    assert bybit["ours_errors"] == []

    contenders = bybit["contenders"]
    expected = {"ours", "json"} | ({"cryptofeed"} if HAS_CRYPTOFEED else set())
    assert set(contenders) == expected
    for figures in contenders.values():
        assert set(figures) >= RATE_KEYS
        assert figures["messages"] == bybit["messages"]
        assert figures["recordings"] == [r["name"] for r in recordings]
    assert set(bybit["ratios"]) == {f"ours_over_{key}" for key in expected - {"ours"}}
    for key in expected - {"ours"}:
        check = bybit["checks"][key]
        assert check["books"] > 0
        assert check["mismatch_count"] == 0, check["mismatches"]

    report = out.getvalue()
    assert report.startswith("otc bench feeds:")
    assert "bybit: " in report
    assert "ours / json" in report
    assert result["summary"]["bybit"]["msgs_per_s"] == contenders["ours"]["msgs_per_s"]


def test_missing_data_folder_is_a_clear_skip(tmp_path: Path) -> None:
    out = io.StringIO()
    result = run(quick=True, out=out, data_dir=tmp_path / "absent")
    assert set(result) == {"skipped"}
    assert "not found" in result["skipped"]
    assert "skipped" in out.getvalue()


def test_recordings_the_adapter_does_not_read_are_not_timed(tmp_path: Path) -> None:
    folder = tmp_path / "bybit"
    folder.mkdir()
    ack = {"recv_ts": 1.0, "msg": {"event": "subscribe", "arg": {"instId": "BTC-USDT"}}}
    (folder / "okx_acks.jsonl").write_text(json.dumps(ack) + "\n")
    result = run(quick=True, venues=["bybit", "nowhere"], out=io.StringIO(), data_dir=tmp_path)
    assert "applied no message" in result["venues"]["bybit"]["skipped"]
    assert "unknown venue" in result["venues"]["nowhere"]["skipped"]
    assert result["summary"] == {}


def test_compare_names_the_first_differing_level() -> None:
    scale = Scale(price_decimals=2, size_decimals=2)
    ours = {"X": BookTop([(10_000, 100), (9_900, 100)], [(10_100, 100)], 2, 1)}
    same, moved = dict(ours), {"X": BookTop([(10_000, 100), (9_900, 50)], [(10_100, 100)], 2, 1)}
    deeper = {"X": BookTop([(10_000, 100), (9_900, 100)], [(10_100, 100)], 2, 7)}
    assert compare("r", ours, same, {"X": scale}) == (1, [])
    books, diffs = compare("r", ours, moved, {"X": scale})
    assert books == 1
    assert diffs == ["r: X bids differ at level 2: ours 99 x 1, baseline 99 x 0.5"]
    _, diffs = compare("r", ours, deeper, {"X": scale})
    assert diffs == ["r: X asks: top 1 agree, but ours holds 1 levels, the baseline 7"]
    _, diffs = compare("r", ours, {}, {"X": scale})
    assert diffs == ["r: X: no book in the baseline"]
