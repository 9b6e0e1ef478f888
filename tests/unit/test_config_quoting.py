"""otc.config, quoting sections: defaults, the shipped file, and errors naming file and path."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from otc.config import (
    BrokerConfig,
    InventoryConfig,
    JournalConfig,
    QuotingConfig,
    RiskConfig,
    load_config,
)
from otc.errors import ConfigError

REPO_CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"

BOOKS_ONLY = """\
[[instruments]]
symbol = "BTC-USDT"
base = "BTC"
quote = "USDT"
tick_size = "0.01"
lot_size = "0.00001"

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
"""

GOOD = (
    BOOKS_ONLY.replace(
        'lot_size = "0.00001"\n', 'lot_size = "0.00001"\nladder_bands = ["0.5", "1", "10"]\n', 1
    )
    + """
[quoting]
quote_ttl_ms = 5000
last_look = true
last_look_tolerance_bps = "1.5"
rate_limit_per_s = 5
rate_limit_burst = 10
ladder_interval_ms = 200
ladder_tier = "silver"
max_qty_depth_factor = "4"

[tiers]
gold = { spread_bps = "1.5" }
silver = { spread_bps = "3" }

[risk]
volatility_coefficient = "0.8"
hedge_latency_ms = 300
default_daily_volatility_bps = "280"
size_premium_bps_per_million_notional = "0.2"

[inventory]
skew_bps_at_limit = "4"

[inventory.limits]
BTC = "25"
USDT = "2000000"

[[clients]]
id = "client-a"
tier = "gold"
symbols = ["BTC-USDT", "ETH-USDT"]
max_trade_notional = "5000000"
max_daily_notional = "50000000"

[[clients]]
id = "client-b"
tier = "silver"
enabled = false
symbols = ["ETH-USDT"]
max_trade_notional = "100000"
max_daily_notional = "1000000"

[broker]
host = "mqtt.example"
port = 8883
username = "engine"
password = "secret"
tls = true
client_id = "otc-1"
operators = ["ops-1", "ops-2"]

[journal]
path = "/var/lib/otc/journal.sqlite"
"""
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "otc.toml"
    path.write_text(text)
    return path


def test_a_books_only_config_gets_every_quoting_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BOOKS_ONLY))
    assert config.quoting == QuotingConfig()
    assert config.quoting.quote_ttl_ms == 3_000
    assert config.quoting.last_look is False
    assert config.quoting.last_look_tolerance_bps == Decimal(2)
    assert config.quoting.ladder_interval_ms == 250
    assert config.tiers == {}
    assert config.risk == RiskConfig()
    assert config.inventory == InventoryConfig()
    assert config.clients == []
    assert config.broker == BrokerConfig()
    assert config.broker.keepalive_s == 5  # the will within 7.5 s, not MQTT's usual 90 s
    assert config.broker.password is None
    assert config.journal == JournalConfig()
    assert config.instrument("BTC-USDT").ladder_bands == []


def test_every_quoting_section_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    q = config.quoting
    assert (q.quote_ttl_ms, q.last_look, q.last_look_tolerance_bps) == (5000, True, Decimal("1.5"))
    assert (q.rate_limit_per_s, q.rate_limit_burst, q.ladder_interval_ms) == (5, 10, 200)
    assert (q.ladder_tier, q.max_qty_depth_factor) == ("silver", Decimal(4))
    assert {name: t.spread_bps for name, t in config.tiers.items()} == {
        "gold": Decimal("1.5"),
        "silver": Decimal(3),
    }
    assert config.risk.volatility_coefficient == Decimal("0.8")
    assert config.risk.hedge_latency_ms == 300
    assert config.risk.size_premium_bps_per_million_notional == Decimal("0.2")
    assert config.inventory.limits == {"BTC": Decimal(25), "USDT": Decimal(2_000_000)}
    assert config.inventory.skew_bps_at_limit == Decimal(4)
    a, b = config.clients
    assert (a.id, a.tier, a.enabled, a.symbols) == (
        "client-a",
        "gold",
        True,
        ["BTC-USDT", "ETH-USDT"],
    )
    assert (b.enabled, b.max_trade_notional) == (False, Decimal(100_000))
    assert config.client("client-b") is b
    with pytest.raises(KeyError):
        config.client("nobody")
    assert config.broker == BrokerConfig(
        host="mqtt.example", port=8883, username="engine", tls=True, client_id="otc-1",
        password="secret",  # noqa: S106  # a test value
        operators=["ops-1", "ops-2"],
    )  # fmt: skip
    assert config.journal.path == "/var/lib/otc/journal.sqlite"
    assert config.instrument("BTC-USDT").ladder_bands == [Decimal("0.5"), Decimal(1), Decimal(10)]


def test_the_shipped_config_has_the_demo_clients_and_sections() -> None:
    config = load_config(REPO_CONFIG)
    assert {c.id for c in config.clients} >= {"client-a", "client-b"}
    assert {"gold", "silver", "bronze"} <= set(config.tiers)
    assert config.quoting.last_look is False  # firm means firm
    for symbol in ("BTC-USDT", "ETH-USDT"):
        assert config.instrument(symbol).ladder_bands


@pytest.mark.parametrize(
    ("old", "new", "path", "problem"),
    [
        ("quote_ttl_ms = 5000", "quote_tll_ms = 5000", "$.quoting.quote_tll_ms", "unknown field"),
        ("quote_ttl_ms = 5000", "quote_ttl_ms = 0", "$.quoting.quote_ttl_ms", ">= 1"),
        # How far back a restart reads the journal: beyond int64 ns, the engine's start-up
        # was an OverflowError traceback out of SQLite (status 1).
        ("quote_ttl_ms = 5000", "quote_ttl_ms = 5000\nduplicate_window_ms = 9223372036854775807",
         "$.quoting.duplicate_window_ms", "<= 31536000000"),
        ("quote_ttl_ms = 5000", "quote_ttl_ms = 5000\nquote_memory_ms = 31536000001",
         "$.quoting.quote_memory_ms", "<= 31536000000"),
        ("rate_limit_per_s = 5", "rate_limit_per_s = 0", "$.quoting.rate_limit_per_s", ">= 1"),
        ('last_look_tolerance_bps = "1.5"', 'last_look_tolerance_bps = "-1"',
         "$.quoting.last_look_tolerance_bps", "non-negative"),
        ('max_qty_depth_factor = "4"', 'max_qty_depth_factor = "0.5"',
         "$.quoting.max_qty_depth_factor", ">= 1"),
        ('ladder_tier = "silver"', 'ladder_tier = "platinum"', "$.quoting.ladder_tier", "platinum"),
        ('silver = { spread_bps = "3" }', 'silver = { spread_bps = "-3" }',
         "$.tiers.silver.spread_bps", "non-negative"),
        ('silver = { spread_bps = "3" }', 'silver = { spread = "3" }', "$.tiers[...].spread",
         "unknown field"),
        ('silver = { spread_bps = "3" }', 'silver = { spread_bps = "NaN" }',
         "$.tiers.silver.spread_bps", "expected a decimal number"),
        ("hedge_latency_ms = 300", "hedge_latency_ms = -1", "$.risk.hedge_latency_ms", ">= 0"),
        ('volatility_coefficient = "0.8"', 'volatility_coefficient = "-0.8"',
         "$.risk.volatility_coefficient", "non-negative"),
        ('BTC = "25"', 'BTC = "-25"', "$.inventory.limits.BTC", "positive"),
        ('BTC = "25"', 'DOGE = "25"', "$.inventory.limits.DOGE", "not the base or quote"),
        ('skew_bps_at_limit = "4"', 'skew_bps_at_limt = "4"', "$.inventory.skew_bps_at_limt",
         "unknown field"),
        ('tier = "gold"', 'tier = "platinum"', "$.clients[0].tier", "no such tier"),
        ('symbols = ["ETH-USDT"]', 'symbols = ["ETH-USDT", "DOGE-USDT"]', "$.clients[1].symbols[1]",
         "not a configured instrument"),
        ('id = "client-b"', 'id = "client-a"', "$.clients[1].id", "given twice"),
        ('id = "client-b"', 'id = "client/b"', "$.clients[1].id", "no '/'"),
        ('id = "client-b"', 'id = "client+b"', "$.clients[1].id", "no '/'"),
        # Characters special to MQTT topics, mosquitto's passwd file (':') and ACL (a newline
        # would add a line to it), or not ASCII: refused before any file is written.
        ('id = "client-b"', 'id = "client#b"', "$.clients[1].id", "no '/'"),
        ('id = "client-b"', 'id = "client:b"', "$.clients[1].id", "no '/'"),
        ('id = "client-b"', 'id = "client-b\\nuser otc-engine"', "$.clients[1].id", "no '/'"),
        ('id = "client-b"', 'id = "client-b\\u0000"', "$.clients[1].id", "no '/'"),
        ('id = "client-b"', 'id = "client-\u00e9"', "$.clients[1].id", "no '/'"),
        ('id = "client-b"', 'id = "%u"', "$.clients[1].id", "no '/'"),
        ('id = "client-b"', 'id = ""', "$.clients[1].id", "no '/'"),
        ('id = "client-b"', f'id = "{"b" * 65}"', "$.clients[1].id", "1-64"),
        # Second topic levels of otc/v1 that are not a client's: a client "control" wrote
        # otc/v1/control/rfq, which the engine reads as a command of operator "rfq".
        ('id = "client-b"', 'id = "control"', "$.clients[1].id", "reserved"),
        ('id = "client-b"', 'id = "ladder"', "$.clients[1].id", "reserved"),
        ('id = "client-b"', 'id = "status"', "$.clients[1].id", "reserved"),
        ('operators = ["ops-1", "ops-2"]', 'operators = ["ops-1", "control"]',
         "$.broker.operators[1]", "reserved"),
        ('max_trade_notional = "100000"', 'max_trade_notional = "0"',
         "$.clients[1].max_trade_notional", "positive"),
        ('max_daily_notional = "1000000"', "", "$.clients[1]", "max_daily_notional"),
        ("port = 8883", "port = 70000", "$.broker.port", "<= 65535"),
        # 0 turns MQTT pings off: a frozen engine would be "up" for as long as its socket lives
        ("port = 8883", "port = 8883\nkeepalive_s = 0", "$.broker.keepalive_s", ">= 1"),
        ("tls = true", 'tls = "yes"', "$.broker.tls", "Expected `bool`"),
        # Empty strings: "otc: error: Invalid host." (no file, no key) for the host; a client
        # id the broker makes up (a second engine no longer takes the first one's session
        # over); a user "" that `otc broker auth` wrote no password for (it took otc-engine);
        # a password "" as OTC_BROKER_PASSWORD="" is refused.
        ('host = "mqtt.example"', 'host = ""', "$.broker.host", "must not be empty"),
        ('client_id = "otc-1"', 'client_id = ""', "$.broker.client_id", "must not be empty"),
        ('username = "engine"', 'username = ""', "$.broker.username", "must not be empty"),
        ('password = "secret"', 'password = ""', "$.broker.password", "must not be empty"),
        ('path = "/var/lib/otc/journal.sqlite"',
         'path = "/var/lib/otc/journal.sqlite"\n[console]\nhost = ""', "$.console.host",
         "must not be empty"),
        ('operators = ["ops-1", "ops-2"]', 'operators = ["ops-1", "ops-1"]',
         "$.broker.operators[1]", "given twice"),
        ('operators = ["ops-1", "ops-2"]', 'operators = ["ops-1", "client-a"]',
         "$.broker.operators[1]", "also a client"),
        # Operators are broker users and topic levels (otc/v1/control/{operator}), as client
        # ids: these loaded, could never send a command, and failed `otc broker auth` later.
        ('operators = ["ops-1", "ops-2"]', 'operators = ["ops-1", "ops 2"]',
         "$.broker.operators[1]", "no '/'"),
        ('operators = ["ops-1", "ops-2"]', 'operators = ["#"]', "$.broker.operators[0]", "no '/'"),
        ('operators = ["ops-1", "ops-2"]', 'operators = ["ops/2"]', "$.broker.operators[0]",
         "no '/'"),
        ('operators = ["ops-1", "ops-2"]', 'operators = [""]', "$.broker.operators[0]", "no '/'"),
        ('path = "/var/lib/otc/journal.sqlite"', 'file = "j.sqlite"', "$.journal.file",
         "unknown field"),
        # Path("") is the working folder: the engine's journal thread died on it and the
        # engine waited for it for ever (SIGTERM included); a recording went to "."
        ('path = "/var/lib/otc/journal.sqlite"', 'path = ""', "$.journal.path", "empty"),
        ('path = "/var/lib/otc/journal.sqlite"',
         'path = "/var/lib/otc/journal.sqlite"\nrecord_path = ""', "$.journal.record_path",
         "empty"),
        ('ladder_bands = ["0.5", "1", "10"]', 'ladder_bands = ["0.5", "1.000001", "10"]',
         "$.instruments[0].ladder_bands[1]", "not a multiple of lot_size"),
        ('ladder_bands = ["0.5", "1", "10"]', 'ladder_bands = ["0.5", "10", "1"]',
         "$.instruments[0].ladder_bands[2]", "not larger"),
        ('ladder_bands = ["0.5", "1", "10"]', 'ladder_bands = ["0", "1"]',
         "$.instruments[0].ladder_bands[0]", "positive"),
        ('ladder_bands = ["0.5", "1", "10"]', 'ladder_bands = ["1", "1e300"]',
         "$.instruments[0].ladder_bands[1]", "below 1e30"),
        # Absurd magnitudes the pricing arithmetic overflows on (decimal.Overflow or
        # InvalidOperation on every RFQ): refused at start-up instead.
        ('silver = { spread_bps = "3" }', 'silver = { spread_bps = "1e999999" }',
         "$.tiers.silver.spread_bps", "below 10000"),
        ('silver = { spread_bps = "3" }', 'silver = { spread_bps = "10000" }',
         "$.tiers.silver.spread_bps", "below 10000"),
        ('skew_bps_at_limit = "4"', 'skew_bps_at_limit = "1e100"',
         "$.inventory.skew_bps_at_limit", "below 10000"),
        ('volatility_coefficient = "0.8"', 'volatility_coefficient = "1e60"',
         "$.risk.volatility_coefficient", "below 100"),
        ('default_daily_volatility_bps = "280"', 'default_daily_volatility_bps = "1e999999999"',
         "$.risk.default_daily_volatility_bps", "below 10000"),
        ('size_premium_bps_per_million_notional = "0.2"',
         'size_premium_bps_per_million_notional = "1e60"',
         "$.risk.size_premium_bps_per_million_notional", "below 10000"),
        ('max_qty_depth_factor = "4"', 'max_qty_depth_factor = "1e999999"',
         "$.quoting.max_qty_depth_factor", "below 1e30"),
        ('tick_size = "0.01"', 'tick_size = "1e999999"', "$.instruments[0].tick_size",
         "below 1e30"),
        ('lot_size = "0.0001"', 'lot_size = "1e30"', "$.instruments[1].lot_size", "below 1e30"),
    ],
)  # fmt: skip
def test_errors_name_the_file_and_the_path(
    tmp_path: Path, old: str, new: str, path: str, problem: str
) -> None:
    assert old in GOOD, old  # the edit must apply, or the test proves nothing
    source = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(source)
    err = info.value
    assert err.source == str(source)
    assert err.path == path, str(err)
    assert problem in err.problem, str(err)
    assert str(err).startswith(f"{source}: {path}: ")


#: Every bounded decimal just inside its bound: the engine built from it still prices.
AT_THE_BOUNDS = {
    '[tiers]\ngold = { spread_bps = "2" }': '[tiers]\ngold = { spread_bps = "9999.99" }',
    'skew_bps_at_limit = "5"': 'skew_bps_at_limit = "9999.99"',
    'volatility_coefficient = "1"': 'volatility_coefficient = "99.99"',
    'default_daily_volatility_bps = "300"': 'default_daily_volatility_bps = "9999.99"',
    'size_premium_bps_per_million_notional = "0.1"': (
        'size_premium_bps_per_million_notional = "9999.99"'
    ),
    'max_qty_depth_factor = "10"': 'max_qty_depth_factor = "9e29"',
    'coefficient = "0.7"': 'coefficient = "99.99"',
    'daily_volatility_bps = "250"': 'daily_volatility_bps = "9999.99"',
    'daily_volume = "25000"': 'daily_volume = "0.00001"',
    'tick_size = "0.01"': 'tick_size = "9e29"',
    "use_impact_model = false": "use_impact_model = true",
}


async def test_values_inside_the_bounds_leave_an_engine_that_prices(tmp_path: Path) -> None:
    from otc.app import sim_markets
    from otc.clock import FakeClock
    from otc.market import Market
    from otc.quoting import QuoteEngine

    text = REPO_CONFIG.read_text()
    for old, new in AT_THE_BOUNDS.items():
        assert old in text, old  # the edit must apply, or the test proves nothing
        text = text.replace(old, new, 1)
    config = load_config(write(tmp_path, text))
    clock = FakeClock(1_700_000_000_000_000_000)
    market = Market(config)
    for sim in sim_markets(config, market):
        for event in sim.snapshot_events(clock.now_ns()):
            market.apply(event)

    class Journal:
        async def submit(self, event: object) -> asyncio.Future[None]:
            receipt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            receipt.set_result(None)
            return receipt

    engine = QuoteEngine(config, market, Journal(), clock)  # type: ignore[arg-type]
    assert engine.indicative_ladder("BTC-USDT") is not None
    for i, (side, size) in enumerate(
        [("buy", {"qty": "1"}), ("two_way", {"qty": "0.5"}), ("buy", {"qty": "3000"}),
         ("sell", {"notional": "50000000"}), ("sell", {"qty": "40"})]
    ):  # fmt: skip
        rfq = {"rfq_id": f"r{i}", "symbol": "BTC-USDT", "side": side, **size}
        (out,) = await engine.on_rfq("client-a", msgspec.json.encode(rfq))
        reply = msgspec.json.decode(out.payload)
        assert reply.get("code") != "INTERNAL_ERROR", reply


def test_otc_broker_auth_names_the_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broker user name the loader allows but mosquitto's files do not (the engine's, which
    may be any name on a broker of someone else's): the error names the file, not "clients"."""
    from otc.cli import main

    source = write(tmp_path, GOOD.replace('username = "engine"', 'username = "otc engine"', 1))
    assert load_config(source).broker.username == "otc engine"
    assert main(["broker", "auth", "--config", str(source), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"otc: error: {source}: $.broker.username: 'otc engine' is not"), err


async def test_the_longest_memory_lets_a_restart_read_its_journal(tmp_path: Path) -> None:
    """A year (the bound) of duplicate window and quote memory: the engine's start-up reads
    the journal that far back without leaving SQLite's integers."""
    from otc.clock import SystemClock
    from otc.journal import SqliteJournal, state_rows
    from otc.market import Market
    from otc.quoting import QuoteEngine

    year = "31536000000"
    text = GOOD.replace("quote_ttl_ms = 5000", f"quote_ttl_ms = 3600000\nduplicate_window_ms = "
                        f"{year}\nquote_memory_ms = {year}")  # fmt: skip
    config = load_config(write(tmp_path, text))
    path = tmp_path / "j.sqlite"
    async with SqliteJournal(path) as journal:
        clock = SystemClock()
        engine = QuoteEngine(config, Market(config), journal, clock)
        since = clock.now_ns() - engine.remembered_ns  # as Engine._restore reads
        assert state_rows(path, since_ns=since, clients=engine.clients) == []
