"""A backtest scenario: the RFQ flow, the client's accept model and the hedging, as TOML.

Decoded straight into frozen msgspec Structs (as :mod:`otc.config`): an unknown key, a wrong
type or an invalid value fails naming the file and the key, e.g.
``scenario.toml: $.accept.benchmark_bps: unknown field``. Every key has a default, so an empty
file is a valid scenario (the default flow, below), except ``model`` in an ``[accept]`` section,
which names the model the section's keys belong to (no section: "always"). Units are in the
names.

Example (every key shown; the values are the defaults unless noted)::

    symbols = ["BTC-USDT"]         # RFQ symbols; default: every configured symbol whose book is
                                   # usable at the RFQ's time
    warmup_ms = 2000               # no RFQ before this much recorded time (books are built)
    quote_ttl_ms = 3000            # default: the config's [quoting] quote_ttl_ms
    size_buckets = ["100000", "1000000", "5000000"]  # notional edges (quote currency) of the
                                                     # size buckets scores are grouped by
    model_check_levels = 0         # > 0: the beyond-depth model check on books cut to N levels
    chart_sample_ms = 1000         # mid and depth sampled for report.html this often; 0: off

    [flow]                         # the seeded generator, used when no [[rfqs]] are listed
    rfqs = 100
    seed = 1
    rate_per_s = "1"               # Poisson arrivals, mean RFQs per recorded second
    size_unit = "notional"         # "notional" (quote currency) or "base"
    size_min = "10000"
    size_max = "2000000"           # log-uniform between min and max
    sides = { buy = 1, sell = 1, two_way = 0 }  # weights
    clients = {}                   # client id -> weight; default: every configured client, 1 each

    [[rfqs]]                       # an explicit flow instead (not in the defaults)
    at_ms = 1500                   # recorded ms after the first book event
    client = "client-a"
    symbol = "BTC-USDT"
    side = "two_way"
    qty = "2"                      # or notional = "100000"
    accept_side = "buy"            # which side the client takes if it accepts (two_way)

    [accept]                       # the client's accept model (no section: "always");
    model = "benchmark"            # required here: "always", "benchmark" or "random"
    delay_ms = 200                 # the client answers this long after the quote
    benchmark_bps = "5"            # benchmark: accept when our price is within mid +/- N bps
    # random: p = clamp(probability_at_mid - probability_per_bps x markup_bps, 0, 1), where
    # markup_bps is how far our price is from mid against the client; seeded with flow.seed
    # probability_at_mid = "1"
    # probability_per_bps = "0.05"

    [hedge]
    latency_ms = 240               # default: the config's [risk] hedge_latency_ms
    consume = true                 # hedges take liquidity out of the levels they hit

    [[venues]]                     # extra venues (same keys as the config's [[venues]]), e.g.
    name = "binance-futures"       # a tardis exchange; replaces a configured venue of that name
    taker_fee_bps = "5"
    symbols = { "BTC-USDT" = "BTCUSDT" }
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from otc.config import VenueConfig, load_toml

__all__ = [
    "AcceptAlways",
    "AcceptBenchmark",
    "AcceptModel",
    "AcceptRandom",
    "Flow",
    "Hedge",
    "RfqSpec",
    "Scenario",
    "load_scenario",
]

_NonNegative = Annotated[int, msgspec.Meta(ge=0)]
_Positive = Annotated[int, msgspec.Meta(gt=0)]


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Scenario sections: frozen, and a typo is an error rather than a silent default."""


def _finite(
    value: Decimal,
    key: str,
    *,
    positive: bool = False,
    least: Decimal | None = None,
    most: Decimal | None = None,
) -> None:
    if not value.is_finite() or value < 0 or (positive and value == 0):
        raise ValueError(f"{key}: must be a finite number {'> 0' if positive else '>= 0'}")
    if least is not None and value < least:
        raise ValueError(f"{key}: must be at least {_text(least)}, got {value}")
    if most is not None and value > most:
        raise ValueError(f"{key}: must be at most {_text(most)}, got {value}")


def _text(bound: Decimal) -> str:
    return format(bound, "g").replace("e+", "e")  # 1e30, 1e-18, 0.000001, 1


#: Sizes (and the flow's size range): the generator draws them as floats, log-uniform.
_MIN_SIZE = Decimal("1e-18")
_MAX_SIZE = Decimal("1e30")


class Flow(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The seeded RFQ generator."""

    rfqs: _NonNegative = 100
    seed: int = 1
    rate_per_s: Decimal = Decimal(1)
    size_unit: Literal["notional", "base"] = "notional"
    size_min: Decimal = Decimal(10_000)
    size_max: Decimal = Decimal(2_000_000)
    sides: dict[Literal["buy", "sell", "two_way"], Annotated[int, msgspec.Meta(ge=0)]] = (
        msgspec.field(default_factory=lambda: {"buy": 1, "sell": 1})
    )
    clients: dict[str, Annotated[int, msgspec.Meta(ge=0)]] = {}

    def __post_init__(self) -> None:
        # Arrival gaps are drawn as float seconds: a rate that rounds to 0.0 divided by zero.
        _finite(self.rate_per_s, "rate_per_s", least=Decimal("1e-6"), most=Decimal("1e6"))
        _finite(self.size_min, "size_min", least=_MIN_SIZE, most=_MAX_SIZE)
        _finite(self.size_max, "size_max", least=_MIN_SIZE, most=_MAX_SIZE)
        if self.size_max < self.size_min:
            raise ValueError("size_max: must be >= size_min")
        if not any(self.sides.values()):
            raise ValueError("sides: at least one weight must be > 0")


class RfqSpec(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One RFQ of an explicit flow."""

    at_ms: _NonNegative
    client: str
    symbol: str
    side: Literal["buy", "sell", "two_way"]
    qty: Decimal | None = None
    notional: Decimal | None = None
    rfq_id: str | None = None
    accept_side: Literal["buy", "sell"] | None = None

    def __post_init__(self) -> None:
        if (self.qty is None) == (self.notional is None):
            raise ValueError("qty: give exactly one of qty and notional")
        if self.qty is not None:
            _finite(self.qty, "qty", positive=True, most=_MAX_SIZE)
        if self.notional is not None:
            _finite(self.notional, "notional", positive=True, most=_MAX_SIZE)
        if self.side != "two_way" and self.accept_side not in (None, self.side):
            raise ValueError("accept_side: must match side")


class AcceptAlways(
    _Base, frozen=True, forbid_unknown_fields=True, kw_only=True, tag="always", tag_field="model"
):
    """The client accepts every quote."""

    delay_ms: _NonNegative = 200


class AcceptBenchmark(
    _Base, frozen=True, forbid_unknown_fields=True, kw_only=True, tag="benchmark", tag_field="model"
):
    """The client accepts when our price beats mid +/- ``benchmark_bps`` (mid at decision)."""

    delay_ms: _NonNegative = 200
    benchmark_bps: Decimal = Decimal(5)

    def __post_init__(self) -> None:
        _finite(self.benchmark_bps, "benchmark_bps")


class AcceptRandom(
    _Base, frozen=True, forbid_unknown_fields=True, kw_only=True, tag="random", tag_field="model"
):
    """The client accepts with a probability falling linearly with our markup over mid."""

    delay_ms: _NonNegative = 200
    probability_at_mid: Decimal = Decimal(1)
    probability_per_bps: Decimal = Decimal("0.05")

    def __post_init__(self) -> None:
        _finite(self.probability_at_mid, "probability_at_mid", most=Decimal(1))
        _finite(self.probability_per_bps, "probability_per_bps", most=Decimal(1))


AcceptModel = AcceptAlways | AcceptBenchmark | AcceptRandom


class Hedge(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a fill is hedged on the recorded book."""

    latency_ms: _NonNegative | None = None
    consume: bool = True


class Scenario(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole scenario; see the module docstring."""

    symbols: list[str] = []
    warmup_ms: _NonNegative = 2000
    quote_ttl_ms: _Positive | None = None
    size_buckets: list[Decimal] = msgspec.field(
        default_factory=lambda: [Decimal(100_000), Decimal(1_000_000), Decimal(5_000_000)]
    )
    model_check_levels: _NonNegative = 0
    chart_sample_ms: _NonNegative = 1000
    flow: Flow = Flow()
    rfqs: list[RfqSpec] = []
    accept: AcceptModel = AcceptAlways()
    hedge: Hedge = Hedge()
    venues: list[VenueConfig] = []

    def __post_init__(self) -> None:
        edges = self.size_buckets
        if any(not e.is_finite() or e <= 0 for e in edges) or edges != sorted(set(edges)):
            raise ValueError("size_buckets: must be positive and strictly increasing")


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file.

    Raises:
        ConfigError: missing file, not TOML, or a bad key or value (names the file and key).
    """
    return load_toml(path, Scenario)
