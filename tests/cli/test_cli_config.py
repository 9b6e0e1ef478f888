"""A config or argument a command cannot run with: `otc serve`, `otc demo`, `otc record` and
`otc feeds serve-replay`, run as real processes, stop at once with one line `otc: error: ...`
naming the file and the key (or the option), status 2; never a traceback, never a hang, never
an argument silently left aside."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"
#: Nothing listens there: a command that got as far as the broker fails "cannot connect".
NO_BROKER = "mqtt://127.0.0.1:1"


def otc(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def refused(*args: str | Path, timeout: float = 60) -> str:
    """The one error line of a command that must fail with status 2, having printed nothing."""
    proc = otc(*args, timeout=timeout)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("otc: error: ")
    return line


def edited(tmp_path: Path, old: str, new: str, config: Path = CONFIG) -> Path:
    """``config`` (the shipped one) with ``old`` replaced by ``new``, as tmp_path/otc.toml."""
    text = config.read_text()
    assert old in text, old  # the edit must apply, or the test proves nothing
    path = tmp_path / "otc.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def engine(command: str, *args: str | Path) -> tuple[str | Path, ...]:
    """``otc serve`` or ``otc demo`` against no broker, briefly, without its console."""
    feeds = ("--feeds", "sim") if command == "serve" else ()
    return (command, *feeds, "--broker", NO_BROKER, "--no-console", "--duration", "1", *args)


@pytest.mark.parametrize("command", ["serve", "demo"])
@pytest.mark.parametrize("option", ["--journal", "--record"])
def test_an_empty_journal_or_recording_path_is_refused(
    tmp_path: Path, command: str, option: str
) -> None:
    # --journal "": the journal's writer thread died on Path("") (".") and the engine waited
    # for it for ever, SIGTERM included; --record "" tried to record to the folder ".".
    journal = () if option == "--journal" else ("--journal", tmp_path / "j.sqlite")
    line = refused(*engine(command, *journal, option, ""))
    assert f"argument {option}: must not be empty" in line


@pytest.mark.parametrize("key", ["path", "record_path"])
def test_an_empty_journal_path_in_the_config_names_the_file_and_key(
    tmp_path: Path, key: str
) -> None:
    config = edited(tmp_path, 'path = "var/journal.sqlite"', f'{key} = ""')
    journal = () if key == "path" else ("--journal", tmp_path / "j.sqlite")
    line = refused(*engine("serve", "--config", config, *journal))
    assert line.startswith(f"otc: error: {config}: $.journal.{key}: "), line


@pytest.mark.parametrize(
    ("edits", "key"),
    [
        ({'host = "127.0.0.1"\nport = 1883': 'host = ""\nport = 1'}, "broker.host"),
        ({"port = 1883": "port = 1", 'host = "127.0.0.1"         #': 'host = ""  #'},
         "console.host"),
    ],
)  # fmt: skip
def test_an_empty_host_names_the_file_and_key(
    tmp_path: Path, edits: dict[str, str], key: str
) -> None:
    # They were "otc: error: Invalid host." and "console: cannot listen on :8321: ...".
    config = CONFIG
    for old, new in edits.items():
        config = edited(tmp_path, old, new, config)
    args = ["serve", "--feeds", "sim", "--duration", "1", "--config", config]
    line = refused(*args, "--journal", tmp_path / "j.sqlite")
    assert line.startswith(f"otc: error: {config}: $.{key}: must not be empty"), line


def test_a_live_engine_refuses_a_venue_it_has_no_feed_for(tmp_path: Path) -> None:
    # A misspelt venue was skipped without a word: the desk priced without it for good.
    config = edited(tmp_path, 'name = "kraken"', 'name = "krakken"')
    line = refused(
        "serve", "--feeds", "live", "--broker", NO_BROKER, "--no-console", "--duration", "1",
        "--config", config, "--journal", tmp_path / "j.sqlite",
    )  # fmt: skip
    assert line.startswith(f"otc: error: {config}: $.venues[2].name: 'krakken' has no live feed")
    assert "enabled = false" in line  # how to keep it for backtests
    # The synthetic market has every venue: nothing to refuse there.
    proc = otc(*engine("serve", "--config", config, "--journal", tmp_path / "j.sqlite"))
    assert "cannot connect" in proc.stderr, proc.stderr


def test_record_sim_names_the_config_without_its_instrument(tmp_path: Path) -> None:
    # It records BTC-USDT: a config without it was a KeyError traceback, status 1.
    config = tmp_path / "otc.toml"
    config.write_text(CONFIG.read_text().replace('"BTC-USDT"', '"XBT-USDT"'))
    line = refused("record", "--source", "sim", "--out", tmp_path / "r.gz", "--config", config)
    assert line == f"otc: error: {config}: instrument BTC-USDT is not configured", line
    assert not (tmp_path / "r.gz").exists()


@pytest.mark.parametrize(
    "option", [("--from", "venue.jsonl"), ("--url", "ws://127.0.0.1:1"), ("--symbols", "ETHUSDT")]
)
def test_record_sim_refuses_what_only_a_venue_takes(
    tmp_path: Path, option: tuple[str, str]
) -> None:
    # `otc record --source sim --from binance.jsonl` recorded the synthetic market, status 0,
    # the recording given silently left aside.
    out = tmp_path / "r.gz"
    line = refused("record", "--source", "sim", "--out", out, "--steps", "5", *option)
    assert f"{option[0]} is for a venue" in line, line
    assert not out.exists()


@pytest.mark.parametrize(
    ("faults", "problem"),
    [
        (["--fault=-1:drop"], "--fault '-1:drop': the index must be 0 or more"),
        (["--fault=550:drop"], "--fault '550:drop': the recording has 550 websocket messages"),
        (["--fault", "5:drop", "--fault", "5:swap"], "--fault '5:swap': message 5 has a fault"),
    ],
)
def test_serve_replay_refuses_a_fault_it_would_never_inject(
    shared_data: Path, faults: list[str], problem: str
) -> None:
    # Each served the recording without that fault, silently (the last of two at one index
    # replaced the first): a test of the client's recovery that tested nothing.
    recording = shared_data / "bybit" / "bybit_v5_spot_orderbook200_2026-08-09.jsonl"
    line = refused(
        "feeds", "serve-replay", "--venue", "bybit", recording, *faults, timeout=20
    )  # fmt: skip
    assert line.startswith(f"otc: error: {problem}"), line
