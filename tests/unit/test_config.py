"""otc.config: good files load; every broken one fails naming the file and the key's path."""

from __future__ import annotations

import re
import typing
from decimal import Decimal
from pathlib import Path

import pytest

from otc.bus import MQTT_VERSIONS
from otc.config import BrokerConfig, Config, load_config
from otc.errors import ConfigError, OtcError
from otc.model import Scale

REPO_CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"

GOOD = """\
[estimator]
max_book_age_ms = 1500

[[instruments]]
symbol = "BTC-USDT"
base = "BTC"
quote = "USDT"
tick_size = "0.01"
lot_size = "0.00001"
price_decimals = 8
size_decimals = 8

[instruments.impact]
coefficient = "0.7"
daily_volatility_bps = "250"
daily_volume = "25000"

[[instruments]]
symbol = "ETH-USDT"
base = "ETH"
quote = "USDT"
tick_size = "0.01"
lot_size = "0.0001"

[[venues]]
name = "binance"
taker_fee_bps = "10"
symbols = { "BTC-USDT" = "BTCUSDT", "ETH-USDT" = "ETHUSDT" }

[[venues]]
name = "kraken"
taker_fee_bps = "2.6"
symbols = { "BTC-USDT" = "XBT/USDT" }
enabled = false
"""


def write(tmp_path: Path, text: str, name: str = "otc.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def broken(tmp_path: Path, old: str, new: str) -> Path:
    assert old in GOOD, old  # the edit must apply, or the test proves nothing
    return write(tmp_path, GOOD.replace(old, new, 1))


def test_a_good_file_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert isinstance(config, Config)
    assert config.estimator.max_book_age_ms == 1_500
    assert config.estimator.use_impact_model is False  # the default
    btc = config.instrument("BTC-USDT")
    assert btc.tick_size == Decimal("0.01")
    assert btc.scale == Scale(8, 8)
    assert btc.impact is not None
    assert btc.impact.daily_volume == Decimal(25_000)
    assert btc.impact.coefficient == Decimal("0.7")
    eth = config.instrument("ETH-USDT")
    assert eth.impact is None
    assert eth.scale == Scale(8, 8)  # default resolution
    binance, kraken = config.venues
    assert binance.fee == 100_000
    assert kraken.fee == 26_000
    assert kraken.enabled is False
    assert binance.symbols == {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT"}
    with pytest.raises(KeyError):
        config.instrument("DOGE-USDT")


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    with pytest.raises(AttributeError):
        config.estimator.max_book_age_ms = 5  # type: ignore[misc]


def test_the_repository_config_loads() -> None:
    config = load_config(REPO_CONFIG)
    assert config.instruments
    assert config.venues
    symbols = {inst.symbol for inst in config.instruments}
    for venue in config.venues:
        assert set(venue.symbols) <= symbols


def test_toml_numbers_are_accepted_for_decimals(tmp_path: Path) -> None:
    path = broken(tmp_path, 'taker_fee_bps = "2.6"', "taker_fee_bps = 2.6")
    assert load_config(path).venues[1].fee == 26_000


@pytest.mark.parametrize(
    ("old", "new", "path", "problem"),
    [
        (
            "max_book_age_ms = 1500",
            "max_book_agee_ms = 1500",
            "$.estimator.max_book_agee_ms",
            "unknown field",
        ),
        ('base = "ETH"', 'base = "ETH"\nbsae = "ETH"', "$.instruments[1].bsae", "unknown field"),
        ("enabled = false", "enabeld = false", "$.venues[1].enabeld", "unknown field"),
        (
            "max_book_age_ms = 1500",
            'max_book_age_ms = "1500"',
            "$.estimator.max_book_age_ms",
            "Expected `int`, got `str`",
        ),
        ("enabled = false", 'enabled = "no"', "$.venues[1].enabled", "Expected `bool`"),
        (
            "max_book_age_ms = 1500",
            "max_book_age_ms = 0",
            "$.estimator.max_book_age_ms",
            "Expected `int` >= 1",
        ),
        (
            "price_decimals = 8",
            "price_decimals = 19",
            "$.instruments[0].price_decimals",
            "Expected `int` <= 18",
        ),
        (
            'tick_size = "0.01"',
            'tick_size = "-0.01"',
            "$.instruments[0].tick_size",
            "must be a positive number, got -0.01",
        ),
        (
            'lot_size = "0.0001"',
            'lot_size = "0"',
            "$.instruments[1].lot_size",
            "must be a positive number, got 0",
        ),
        (
            'tick_size = "0.01"',
            'tick_size = "0.000000001"',
            "$.instruments[0].tick_size",
            "finer than price_decimals = 8",
        ),
        (
            'daily_volume = "25000"',
            'daily_volume = "-1"',
            "$.instruments[0].impact.daily_volume",
            "must be a positive number",
        ),
        (  # absurd impact parameters overflowed the impact model on every RFQ beyond depth
            'coefficient = "0.7"',
            'coefficient = "1e50"',
            "$.instruments[0].impact.coefficient",
            "must be below 100",
        ),
        (
            'daily_volatility_bps = "250"',
            'daily_volatility_bps = "1e60"',
            "$.instruments[0].impact.daily_volatility_bps",
            "must be below 10000",
        ),
        (
            'daily_volume = "25000"',
            'daily_volume = "1e-999999"',
            "$.instruments[0].impact.daily_volume",
            "must be at least lot_size = 0.00001",
        ),
        (
            'taker_fee_bps = "10"',
            'taker_fee_bps = "10000"',
            "$.venues[0].taker_fee_bps",
            r"fee must be in [0, 10000) bps",
        ),
        (
            'taker_fee_bps = "10"',
            'taker_fee_bps = "-0.5"',
            "$.venues[0].taker_fee_bps",
            r"fee must be in [0, 10000) bps",
        ),
        (
            'taker_fee_bps = "2.6"',
            'taker_fee_bps = "2.60001"',
            "$.venues[1].taker_fee_bps",
            "more than 4 decimal places",
        ),
        (
            'name = "kraken"',
            'name = "Kraken"',
            "$.venues[1].name",
            "is not a lower-case name",
        ),
        (
            'base = "ETH"\n',
            "",
            "$.instruments[1]",
            "Object missing required field `base`",
        ),
    ],
)
def test_a_broken_value_names_the_file_and_the_path(
    tmp_path: Path, old: str, new: str, path: str, problem: str
) -> None:
    file = broken(tmp_path, old, new)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    error = info.value
    assert error.source == str(file)
    assert error.path == path
    assert problem in error.problem
    assert str(error).startswith(f"{file}: {path}: ")


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        # Decimal() takes Python's literal syntax, spaces and any script's digits; msgspec read
        # these as 0.0001, 2.6 and 25000 where a misplaced character is more likely a typo.
        ('lot_size = "0.0001"', 'lot_size = "0.000_1"', "$.instruments[1].lot_size"),
        ('taker_fee_bps = "2.6"', 'taker_fee_bps = " 2.6"', "$.venues[1].taker_fee_bps"),
        (
            'daily_volume = "25000"',
            'daily_volume = "\u0662\u0665000"',
            "$.instruments[0].impact.daily_volume",
        ),
    ],
)
def test_a_decimal_string_must_be_written_as_a_number(
    tmp_path: Path, old: str, new: str, path: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(broken(tmp_path, old, new))
    assert info.value.path == path
    assert "expected a decimal number like '0.01'" in info.value.problem


def test_decimal_strings_in_lists_and_tables_are_checked_too(tmp_path: Path) -> None:
    bands = 'lot_size = "0.0001"\nladder_bands = ["1", "1_0"]\n'
    text = GOOD.replace('lot_size = "0.0001"\n', bands)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.path == "$.instruments[1].ladder_bands[1]"
    text = GOOD + '\n[inventory.limits]\nBTC = "2_5"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.path == "$.inventory.limits.BTC"


@pytest.mark.parametrize("text", ["0.01", "+0.01", "1e-2", "1E-2", ".01", "0.010", "0.01e0"])
def test_plain_and_exponent_decimal_strings_load(tmp_path: Path, text: str) -> None:
    config = load_config(broken(tmp_path, 'tick_size = "0.01"', f'tick_size = "{text}"'))
    assert config.instrument("BTC-USDT").tick_size == Decimal("0.01")


def test_unknown_key_message_reads_as_documented(tmp_path: Path) -> None:
    file = broken(tmp_path, "max_book_age_ms = 1500", "max_book_agee_ms = 1500")
    with pytest.raises(ConfigError, match=r"otc\.toml") as info:
        load_config(file)
    assert str(info.value) == f"{file}: $.estimator.max_book_agee_ms: unknown field"


def test_duplicate_symbol(tmp_path: Path) -> None:
    file = broken(tmp_path, 'symbol = "ETH-USDT"', 'symbol = "BTC-USDT"')
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.path == "$.instruments[1].symbol"
    assert info.value.problem == "BTC-USDT given twice"


def test_duplicate_venue(tmp_path: Path) -> None:
    file = broken(tmp_path, 'name = "kraken"', 'name = "binance"')
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.path == "$.venues[1].name"
    assert info.value.problem == "binance given twice"


def test_venue_symbol_must_be_a_configured_instrument(tmp_path: Path) -> None:
    file = broken(tmp_path, '"BTC-USDT" = "XBT/USDT"', '"SOL-USDT" = "SOL/USDT"')
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.path == "$.venues[1].symbols.SOL-USDT"
    assert info.value.problem == "not a configured instrument"


def test_bad_toml_syntax(tmp_path: Path) -> None:
    file = broken(tmp_path, "[estimator]", "[estimator")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.source == str(file)
    assert info.value.path == "$"
    assert info.value.problem.startswith("not valid TOML")
    assert "line 1" in info.value.problem


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: $: cannot read: No such file or directory"
    with pytest.raises(OtcError):  # one error tree
        load_config(missing)


def test_missing_section(tmp_path: Path) -> None:
    file = write(tmp_path, '[estimator]\nmax_book_age_ms = 100\n\n[[instruments]]\nsymbol = "X"\n')
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.path == "$.instruments[0]"
    assert "missing required field" in info.value.problem


def test_toml_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    # tomllib's RecursionError escaped as a traceback.
    path = tmp_path / "deep.toml"
    path.write_text("symbols = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)


@pytest.mark.parametrize(
    ("value", "problem"), [('"4"', "Invalid enum value '4'"), ("5", "Expected `str`, got `int`")]
)
def test_an_mqtt_version_the_bus_does_not_speak_names_the_file_and_key(
    tmp_path: Path, value: str, problem: str
) -> None:
    """... and says which versions it takes (msgspec's message alone does not)."""
    file = write(tmp_path, f"{GOOD}\n[broker]\nmqtt_version = {value}\n")
    expected = f"{file}: $.broker.mqtt_version: {problem} (expected one of '3.1.1', '5')"
    with pytest.raises(ConfigError, match=re.escape(expected) + "$"):
        load_config(file)


def test_the_mqtt_version_is_3_1_1_unless_set_to_5(tmp_path: Path) -> None:
    assert load_config(REPO_CONFIG).broker.mqtt_version == "3.1.1"
    five = write(tmp_path, f'{GOOD}\n[broker]\nmqtt_version = "5"\n')
    assert load_config(five).broker.mqtt_version == "5"
    choices = typing.get_args(typing.get_type_hints(BrokerConfig)["mqtt_version"])
    assert choices == MQTT_VERSIONS  # what the bus speaks


@pytest.mark.parametrize("symbol", ["ETH#USDT", "ETH+USDT", "ETH/USDT", "ETH USDT", ""])
def test_a_symbol_must_be_one_topic_level(tmp_path: Path, symbol: str) -> None:
    """The ladder is published on otc/v1/ladder/{symbol}: a '#' or '+' there is no topic (the
    engine lost its broker connection at every ladder, every 0.3 s, for ever), a '/' makes it
    two levels (missed by a client reading otc/v1/ladder/+)."""
    file = write(tmp_path, GOOD.replace('"ETH-USDT"', f'"{symbol}"'))
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.path == "$.instruments[1].symbol"
    assert "letters, digits" in info.value.problem


@pytest.mark.parametrize("key", ["base", "quote"])
def test_an_asset_must_be_named(tmp_path: Path, key: str) -> None:
    file = broken(tmp_path, f'{key} = "USDT"' if key == "quote" else 'base = "ETH"', f'{key} = ""')
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.path == f"$.instruments[{0 if key == 'quote' else 1}].{key}"
    assert "letters, digits" in info.value.problem


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        # The adapter maps a venue symbol back to one of ours: binance's BTCUSDT book was fed
        # into ETH-USDT's, and BTC-USDT's binance book never synced; nothing said so.
        ('{ "BTC-USDT" = "BTCUSDT", "ETH-USDT" = "BTCUSDT" }', "'BTCUSDT' is BTC-USDT's name too"),
        ('{ "BTC-USDT" = "BTCUSDT", "ETH-USDT" = "" }', "must not be empty"),
        ('{ "BTC-USDT" = "BTCUSDT", "ETH-USDT" = "ETH USDT" }', "no spaces"),
    ],
)
def test_a_venue_names_each_instrument_its_own_way(
    tmp_path: Path, names: str, problem: str
) -> None:
    file = broken(tmp_path, '{ "BTC-USDT" = "BTCUSDT", "ETH-USDT" = "ETHUSDT" }', names)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.path == "$.venues[0].symbols.ETH-USDT"
    assert problem in info.value.problem, info.value.problem
