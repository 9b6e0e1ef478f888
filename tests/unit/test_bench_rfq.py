"""``otc bench rfq``: a quick run against a real broker (mosquitto, else amqtt).

No timing thresholds: the figures depend on the machine. What is checked is the shape of the
result, that every request got its answer (the echo's and the engine's: quotes, not rejects),
that the engine's journal holds every RFQ and quote, and the report's lines.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from otc.bench.rfq import GOALS, RFQ_MIX, run
from otc.broker import BrokerError

RFQS = 200
SERIES_KEYS = {
    "qos",
    "in_flight",
    "sent",
    "answered",
    "missing",
    "unexpected",
    "replies",
    "elapsed_s",
    "round_trips_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "mean_ms",
    "cpu_us_per_round_trip",
    "broker_cpu_us_per_round_trip",
    "engine_parts_us_per_round_trip",
}


@pytest.fixture(scope="module")
def quick_run() -> tuple[dict[str, Any], str]:
    out = io.StringIO()
    try:
        result = run(quick=True, rfqs=RFQS, in_flight=16, out=out)
    except BrokerError as exc:
        pytest.skip(f"no broker could be started: {exc}")
    return result, out.getvalue()


def answered_all(figures: dict[str, Any], n: int, reply: str) -> None:
    assert set(figures) == SERIES_KEYS
    assert figures["sent"] == figures["answered"] == n
    assert figures["missing"] == figures["unexpected"] == 0
    assert figures["replies"] == {reply: n}
    assert 0 < figures["p50_ms"] <= figures["p90_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert figures["round_trips_per_s"] > 0


def test_every_request_is_answered(quick_run: tuple[dict[str, Any], str]) -> None:
    result, _ = quick_run
    json.dumps(result)  # JSON-ready as returned
    assert result["params"]["rfqs"] == RFQS
    assert result["params"]["in_flight"] == 16
    for qos in ("qos1", "qos0"):
        sequential, sustained = result["echo"][qos]["sequential"], result["echo"][qos]["sustained"]
        answered_all(sequential, RFQS, "echo")
        answered_all(sustained, RFQS, "echo")
        assert (sequential["in_flight"], sustained["in_flight"]) == (1, 16)
        assert sequential["qos"] == sustained["qos"] == int(qos[-1])
    answered_all(result["engine"]["sequential"], RFQS, "quote")
    answered_all(result["engine"]["sustained"], RFQS, "quote")


def test_the_engine_parts_are_measured(quick_run: tuple[dict[str, Any], str]) -> None:
    result, report = quick_run
    for qos in ("qos1", "qos0"):
        for mode in ("sequential", "sustained"):
            assert result["echo"][qos][mode]["engine_parts_us_per_round_trip"] is None
    for mode in ("sequential", "sustained"):
        figures = result["engine"][mode]
        parts = figures["engine_parts_us_per_round_trip"]
        assert set(parts) == {"on_rfq_cpu", "on_rfq_wall", "journal_writer_cpu"}
        # every RFQ went through on_rfq and the writer (Linux has per-thread CPU clocks)
        assert 0 < parts["on_rfq_cpu"] <= figures["cpu_us_per_round_trip"]
        assert parts["on_rfq_wall"] > 0
        assert 0 < parts["journal_writer_cpu"] <= figures["cpu_us_per_round_trip"]
    assert "engine's CPU per RFQ, us (sequential / sustained): on_rfq on the loop" in report
    assert "leaves the engine about" in report


def test_the_journal_holds_every_rfq_and_quote(quick_run: tuple[dict[str, Any], str]) -> None:
    result, _ = quick_run
    journal = result["journal"]
    sent = journal["rfqs_sent"]
    assert sent == 2 * RFQS + result["params"]["warmup"]
    assert journal["events"] == {"rfq": sent, "quote": sent}
    assert journal["committed"] == 2 * sent
    assert journal["failed"] == 0
    assert 0 < journal["commits"] <= journal["committed"]


def test_ratios_goals_and_nagle(quick_run: tuple[dict[str, Any], str]) -> None:
    result, report = quick_run
    assert set(result["ratios"]) == {"p50", "p99", "throughput", "sustained_p50", "sustained_p99"}
    assert all(value > 0 for value in result["ratios"].values())
    assert result["goals"] == GOALS
    met = result["goals_met"]
    assert met["p50"] == (result["ratios"]["p50"] <= GOALS["p50_max"])
    assert met["throughput"] == (result["ratios"]["throughput"] >= GOALS["throughput_min"])
    nagle = result["nagle"]
    expected = {"clients_on_broker_on", "clients_off_broker_on"}
    if result["broker"]["kind"] == "mosquitto":
        expected |= {"clients_on_broker_off", "clients_off_broker_off"}
    assert set(nagle) == expected
    for key in expected - {"clients_on_broker_on"}:
        assert nagle[key]["answered"] == result["params"]["nagle_samples"] == 5
    assert set(result["machine"]["versions"]) >= {"otc", "aiomqtt", "paho-mqtt", "mosquitto"}
    assert result["params"]["rfq_mix"] == [list(item) for item in RFQ_MIX]

    assert report.startswith("otc bench rfq:")
    for line in ("floor     echo sequential", "engine    RFQ -> quote sequential", "ratios "):
        assert line in report
    assert "p50 sequential" in report
    assert "throughput" in report
    assert "clients off, broker on" in report
    assert f"{2 * RFQS:,} quotes" in report


def test_one_round_reports_its_own_ratios(quick_run: tuple[dict[str, Any], str]) -> None:
    result, report = quick_run
    assert result["params"]["rounds"] == 1
    (only,) = result["rounds"]
    assert only["ratios"] == result["ratios"]
    assert only["engine"] == result["engine"]
    assert "median of" not in report


def test_rounds_pair_the_echo_with_the_engine_and_take_medians() -> None:
    out = io.StringIO()
    try:
        result = run(quick=True, rfqs=40, in_flight=8, out=out, rounds=3)
    except BrokerError as exc:
        pytest.skip(f"no broker could be started: {exc}")
    report = out.getvalue()
    rounds = result["rounds"]
    assert len(rounds) == 3
    for r in rounds:
        answered_all(r["echo_qos1"]["sequential"], 40, "echo")
        answered_all(r["engine"]["sustained"], 40, "quote")
        sent = r["journal"]["rfqs_sent"]
        # each round's engine on a fresh journal: its own RFQs only, nothing restored
        assert r["journal"]["events"] == {"rfq": sent, "quote": sent}
    for key, value in result["ratios"].items():
        assert value == round(sorted(r["ratios"][key] for r in rounds)[1], 3)  # the median
    assert "median of 3 rounds" in report
    assert "r3 RFQ -> quote sequential" in report
    with pytest.raises(ValueError, match="rounds must be positive"):
        run(rfqs=1, rounds=0, out=io.StringIO())
