"""Configuration: ``config/*.toml`` decoded straight into frozen msgspec Structs.

Unknown keys, wrong types and invalid values fail at start-up with a :class:`ConfigError` that
names the file and the JSON path of the offending key, e.g.::

    config/otc.toml: $.estimator.max_book_agee_ms: unknown field

Units are in the names: ``*_bps`` basis points, ``*_ms`` milliseconds. Prices, sizes and fees are
decimal strings (``"0.01"``); TOML floats are accepted but strings are exact by construction.

Sections: ``[estimator]``, ``[[instruments]]``, ``[[venues]]`` (books and the estimator), and for
the quoting service ``[quoting]`` (quote lifetime, last look, rate limit, ladder), ``[tiers]``
(spread per client tier), ``[risk]`` (the risk premium), ``[inventory]`` (per-asset limits and
skew), ``[[clients]]`` (who may trade what, and how much), ``[broker]``, ``[journal]`` and
``[console]`` (the operator console's address and token). Every
section but ``instruments`` and ``venues`` has defaults, so a book-only config stays valid.
Cross-references are checked after decoding: a client's tier and symbols, an inventory asset,
the ladder tier (``$.clients[1].tier: no such tier``).
"""

from __future__ import annotations

import re
from decimal import Context, Decimal
from pathlib import Path
from typing import Annotated, Final, Literal, TypeVar

import msgspec

from otc.errors import ConfigError, ValueParseError
from otc.model import Scale, decimals_of, parse_fee_bps
from otc.slippage import ImpactModel

T = TypeVar("T")

__all__ = [
    "CLIENT_ID",
    "RESERVED_IDS",
    "SYMBOL",
    "BrokerConfig",
    "ClientConfig",
    "Config",
    "ConsoleConfig",
    "EstimatorConfig",
    "InstrumentConfig",
    "InventoryConfig",
    "JournalConfig",
    "QuotingConfig",
    "RiskConfig",
    "TierConfig",
    "VenueConfig",
    "config_error",
    "load_config",
    "load_toml",
]

_Decimals = Annotated[int, msgspec.Meta(ge=0, le=18)]
_PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
#: How long RFQ ids and quotes may be remembered (a restart reads the journal that far back,
#: in int64 ns): 365 days.
_YEAR_MS: Final = 365 * 86_400_000
#: Enough digits for exact remainders of any configured size by a lot.
_EXACT = Context(prec=120)
#: Client ids are MQTT topic levels and broker usernames: no ``/``, ``+``, ``#`` or spaces.
CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Second topic levels that are not a client's (``otc/v1/control/...``, ``otc/v1/ladder/...``,
#: ``otc/v1/status``): no client, operator or broker user may be named so. A client named
#: ``control`` would write ``otc/v1/control/rfq`` (a command of operator ``rfq``, to the
#: engine) and read ``otc/v1/control/quotes`` (operator ``quotes``' commands).
RESERVED_IDS: Final = frozenset({"control", "ladder", "status"})
#: Instrument symbols and asset names: a symbol is a topic level (``otc/v1/ladder/{symbol}``),
#: where ``#`` and ``+`` are wildcards and ``/`` a separator; assets are written beside them.
SYMBOL: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RESERVED: Final = "otc/v1/control, otc/v1/ladder and otc/v1/status are not a client's topics"


#: A term in bps applied to a price (spread, skew, volatility): 100 % or more leaves no price.
_MAX_BPS = Decimal(10_000)
#: A dimensionless multiplier of a bps term (``volatility_coefficient``, ``impact.coefficient``).
_MAX_COEFFICIENT = Decimal(100)
#: Sizes and multiples (tick, lot, ladder bands, depth factor): below 1e30.
_MAX_SIZE = Decimal("1e30")


def _check_decimal(
    owner: object, key: str, *, positive: bool = False, below: Decimal | None = None
) -> None:
    """Raise ``ValueError("key: ...")`` unless ``owner.key`` is finite and >= 0 (> 0), and
    less than ``below`` when given (absurd magnitudes overflow the pricing arithmetic)."""
    value: Decimal = getattr(owner, key)
    if not value.is_finite() or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{key}: must be a {kind} number, got {value}")
    if below is not None and value >= below:
        bound = format(below, "g").replace("e+", "e")  # 1e30, 10000
        raise ValueError(f"{key}: must be below {bound}, got {value}")


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Config sections: immutable, and a misspelt key is an error rather than a silent default."""


class InstrumentConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One tradable instrument, in the engine's own naming (``BTC-USDT``).

    ``tick_size`` and ``lot_size`` are what quotes are rounded to; ``price_decimals`` and
    ``size_decimals`` are the resolution books keep (fine enough for every venue's feed).
    """

    symbol: str
    base: str
    quote: str
    tick_size: Decimal
    lot_size: Decimal
    price_decimals: _Decimals = 8
    size_decimals: _Decimals = 8
    impact: ImpactModel | None = None
    #: Base quantities of the indicative ladder (``otc/v1/ladder/{symbol}``), increasing.
    ladder_bands: list[Decimal] = []

    def __post_init__(self) -> None:
        for key in ("symbol", "base", "quote"):
            name = getattr(self, key)
            if not SYMBOL.fullmatch(name):
                why = ": it is a topic level, otc/v1/ladder/{symbol}" if key == "symbol" else ""
                raise ValueError(
                    f"{key}: {name!r} must be 1-64 letters, digits, '_', '.' or '-' (no '/', "
                    f"'+', '#' or spaces{why})"
                )
        for key in ("tick_size", "lot_size"):
            _check_decimal(self, key, positive=True, below=_MAX_SIZE)
        if decimals_of(str(self.tick_size)) > self.price_decimals:
            raise ValueError(f"tick_size: finer than price_decimals = {self.price_decimals}")
        if decimals_of(str(self.lot_size)) > self.size_decimals:
            raise ValueError(f"lot_size: finer than size_decimals = {self.size_decimals}")
        if self.impact is not None:
            for key, below in (
                ("daily_volume", _MAX_SIZE),
                ("daily_volatility_bps", _MAX_BPS),
                ("coefficient", _MAX_COEFFICIENT),
            ):
                try:
                    _check_decimal(self.impact, key, positive=True, below=below)
                except ValueError as exc:
                    raise ValueError(f"impact.{exc}") from None  # impact.daily_volume: ...
            if self.impact.daily_volume < self.lot_size:
                raise ValueError(
                    f"impact.daily_volume: must be at least lot_size = {self.lot_size}, "
                    f"got {self.impact.daily_volume}"
                )
        previous = Decimal(0)
        for i, band in enumerate(self.ladder_bands):
            if not band.is_finite() or band <= 0 or band >= _MAX_SIZE:
                raise ValueError(
                    f"ladder_bands[{i}]: must be a positive number below 1e30, got {band}"
                )
            if _EXACT.remainder(band, self.lot_size):
                raise ValueError(f"ladder_bands[{i}]: {band} is not a multiple of lot_size")
            if band <= previous:
                raise ValueError(f"ladder_bands[{i}]: {band} is not larger than the band before")
            previous = band

    @property
    def scale(self) -> Scale:
        return Scale(self.price_decimals, self.size_decimals)


class VenueConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A venue, its taker fee and its names for our instruments (``{"BTC-USDT": "BTCUSDT"}``)."""

    name: str
    taker_fee_bps: Decimal
    symbols: dict[str, str] = {}
    enabled: bool = True

    def __post_init__(self) -> None:
        try:
            parse_fee_bps(self.taker_fee_bps)
        except ValueParseError as exc:
            raise ValueError(f"taker_fee_bps: {exc}") from None
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", self.name):  # tardis: "binance-futures"
            raise ValueError(
                f"name: {self.name!r} is not a lower-case name (letters, digits, '_', '-')"
            )
        # The venue's messages are routed back to ours by its names: one name for two of our
        # instruments would feed both books' messages into one and leave the other empty.
        ours: dict[str, str] = {}
        for symbol, theirs in self.symbols.items():
            if not theirs:
                raise ValueError(f"symbols.{symbol}: must not be empty")
            if not theirs.isprintable() or " " in theirs:
                raise ValueError(f"symbols.{symbol}: {theirs!r}: no spaces or control characters")
            if theirs in ours:
                raise ValueError(f"symbols.{symbol}: {theirs!r} is {ours[theirs]}'s name too")
            ours[theirs] = symbol

    @property
    def fee(self) -> int:
        """Taker fee in units of 1e-4 bps (see :func:`otc.model.parse_fee_bps`)."""
        return parse_fee_bps(self.taker_fee_bps)


class EstimatorConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Estimator settings.

    ``max_book_age_ms``: a venue whose book was last updated longer ago is excluded as stale.
    ``use_impact_model``: price size beyond visible depth with each instrument's ``impact``
    model (reported separately, labelled as model output).
    """

    max_book_age_ms: Annotated[int, msgspec.Meta(gt=0)] = 2_000
    use_impact_model: bool = False


class QuotingConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The RFQ service.

    ``quote_ttl_ms``: how long a quote is firm. ``last_look``: re-price at accept and refuse
    (``LAST_LOOK``) when the hedge cost moved more than ``last_look_tolerance_bps`` against the
    desk; off by default (firm means firm). ``rate_limit_per_s`` / ``rate_limit_burst``: a
    token bucket per client for RFQs. ``ladder_interval_ms``: how often the indicative ladder
    is refreshed while books move; ``ladder_tier``: the tier whose spread it shows (the widest
    when unset). ``max_qty_depth_factor``: a request for more than this many times the visible
    depth of its side is absurd, not big (``INVALID_QTY``), even with the impact model.
    ``duplicate_window_ms``: how long an ``rfq_id`` is remembered (``DUPLICATE_RFQ_ID``);
    ``quote_memory_ms``: how long a quote is remembered after it expires, so a late or repeated
    accept gets ``EXPIRED`` or its fill again rather than ``UNKNOWN_QUOTE``.
    """

    quote_ttl_ms: Annotated[int, msgspec.Meta(gt=0, le=3_600_000)] = 3_000
    last_look: bool = False
    last_look_tolerance_bps: Decimal = Decimal(2)
    rate_limit_per_s: _PositiveInt = 20
    rate_limit_burst: _PositiveInt = 40
    ladder_interval_ms: _PositiveInt = 250
    ladder_tier: str | None = None
    max_qty_depth_factor: Decimal = Decimal(10)
    duplicate_window_ms: Annotated[int, msgspec.Meta(gt=0, le=_YEAR_MS)] = 600_000
    quote_memory_ms: Annotated[int, msgspec.Meta(ge=0, le=_YEAR_MS)] = 60_000

    def __post_init__(self) -> None:
        _check_decimal(self, "last_look_tolerance_bps")
        factor = self.max_qty_depth_factor
        if not factor.is_finite() or factor < 1 or factor >= _MAX_SIZE:
            raise ValueError(
                f"max_qty_depth_factor: must be a number >= 1 below 1e30, got {factor}"
            )


class TierConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A client tier: the spread added to the hedge cost on each side, in bps (>= 0).

    (Checked by :func:`load_config` rather than here, so that the error names the tier:
    msgspec reports a dict key as ``[...]``.)
    """

    spread_bps: Decimal


class RiskConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The risk premium added to the spread (see :mod:`otc.pricing`).

    Volatility term: ``volatility_coefficient x daily_volatility_bps x sqrt(hedge_latency_ms /
    86_400_000)``, the move to expect while the hedge is being done, with each instrument's
    ``impact.daily_volatility_bps`` (``default_daily_volatility_bps`` for those without one).
    Size term: ``size_premium_bps_per_million_notional x qty x mid / 1_000_000``.
    """

    volatility_coefficient: Decimal = Decimal(1)
    hedge_latency_ms: Annotated[int, msgspec.Meta(ge=0)] = 250
    default_daily_volatility_bps: Decimal = Decimal(300)
    size_premium_bps_per_million_notional: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        for key, below in (
            ("volatility_coefficient", _MAX_COEFFICIENT),
            ("default_daily_volatility_bps", _MAX_BPS),
            ("size_premium_bps_per_million_notional", _MAX_BPS),
        ):
            _check_decimal(self, key, below=below)


class InventoryConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-asset position limits and the price skew they drive.

    ``limits``: asset -> the largest absolute position the desk may hold, in that asset's units
    (``{"BTC" = "50"}``); a trade that would take a position beyond it is refused
    (``LIMIT_EXCEEDED``) unless it reduces the position without crossing zero (a short turned
    into a long beyond the limit is refused). Assets without a limit are not limited.
    ``skew_bps_at_limit``: prices move by this much when the base position is at its limit
    (long: both bid and ask lower; short: both higher), in proportion below it.
    """

    limits: dict[str, Decimal] = {}
    skew_bps_at_limit: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        _check_decimal(self, "skew_bps_at_limit", below=_MAX_BPS)
        for asset, limit in self.limits.items():
            if not limit.is_finite() or limit <= 0:
                raise ValueError(f"limits.{asset}: must be a positive number, got {limit}")


class ClientConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A client: its id (= broker username and topic level), tier, symbols and notional limits.

    ``max_trade_notional`` and ``max_daily_notional`` are in the quote currency of the
    instrument traded (qty x price), the daily one summed over the UTC day.
    """

    id: str
    tier: str
    enabled: bool = True
    symbols: list[str] = []
    max_trade_notional: Decimal
    max_daily_notional: Decimal

    def __post_init__(self) -> None:
        if not CLIENT_ID.fullmatch(self.id):
            raise ValueError(
                f"id: {self.id!r} must be 1-64 letters, digits, '_', '.' or '-' (no '/', '+', '#')"
            )
        if self.id in RESERVED_IDS:
            raise ValueError(f"id: {self.id!r} is reserved ({_RESERVED})")
        _check_decimal(self, "max_trade_notional", positive=True)
        _check_decimal(self, "max_daily_notional", positive=True)


class BrokerConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The MQTT broker the engine connects to."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65_535)] = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    client_id: str = "otc-engine"
    #: Seconds the engine's connection may stay silent: the broker publishes the engine's last
    #: will (status ``down``) when it has not heard from it for 1.5 times as long, and the
    #: engine reconnects when the broker leaves a ping unanswered for as long again.
    keepalive_s: Annotated[int, msgspec.Meta(ge=1, le=65_535)] = 5
    #: The MQTT version the engine speaks to the broker: "3.1.1" or "5" (``otc.bus``); clients
    #: may speak either, whichever the engine does.
    mqtt_version: Literal["3.1.1", "5"] = "3.1.1"
    #: Broker usernames allowed to send operator commands on ``otc/v1/control/{operator}``;
    #: the engine refuses commands from anyone else.
    operators: list[str] = []

    def __post_init__(self) -> None:
        # An empty client id is one the broker makes up (a second engine would no longer take
        # the first one's session over); an empty user or password is most likely one meant
        # to be filled in (``otc broker auth`` writes none for user "").
        for key in ("host", "client_id", "username", "password"):
            if getattr(self, key) == "":
                omit = " (omit it for none)" if key in ("username", "password") else ""
                raise ValueError(f"{key}: must not be empty{omit}")


class JournalConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where the journal is written (SQLite); a relative path is relative to the working dir."""

    path: str = "var/journal.sqlite"
    #: When set, the engine also records every book event it applies to this file
    #: (``otc-book-events``, see :mod:`feeds.record`), for ``otc replay-journal``.
    record_path: str | None = None

    def __post_init__(self) -> None:
        # "" is the working folder (Path("") == Path(".")), never a file meant.
        if not self.path:
            raise ValueError("path: must not be empty (a file, like var/journal.sqlite)")
        if self.record_path == "":
            raise ValueError("record_path: must not be empty (omit it to record nothing)")


class ConsoleConfig(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The operator console (:mod:`otc.console`): a web page and JSON API served by the engine.

    ``token``: what every API request must present (``Authorization: Bearer ...``); the
    environment variable ``OTC_CONSOLE_TOKEN`` overrides it, and without either the engine
    makes a random one at start-up and prints it. ``push_interval_ms``: how often the page's
    live views are refreshed; ``blotter_size``: recent events kept for the blotter.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65_535)] = 8321
    token: str | None = None
    push_interval_ms: Annotated[int, msgspec.Meta(ge=50, le=60_000)] = 500
    blotter_size: Annotated[int, msgspec.Meta(ge=10, le=100_000)] = 2_000

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host: must not be empty (127.0.0.1: this machine only)")
        if self.token is not None and not CONSOLE_TOKEN.fullmatch(self.token):
            raise ValueError(f"token: {CONSOLE_TOKEN_RULE}")


#: What a console token must look like (config or ``OTC_CONSOLE_TOKEN``).
CONSOLE_TOKEN = re.compile(r"[\x21-\x7e]{16,256}")
CONSOLE_TOKEN_RULE = "must be 16 to 256 printable ASCII characters, no spaces"  # noqa: S105


class Config(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole engine configuration."""

    instruments: list[InstrumentConfig]
    venues: list[VenueConfig]
    estimator: EstimatorConfig = EstimatorConfig()
    quoting: QuotingConfig = QuotingConfig()
    tiers: dict[str, TierConfig] = {}
    risk: RiskConfig = RiskConfig()
    inventory: InventoryConfig = InventoryConfig()
    clients: list[ClientConfig] = []
    broker: BrokerConfig = BrokerConfig()
    journal: JournalConfig = JournalConfig()
    console: ConsoleConfig = ConsoleConfig()

    def instrument(self, symbol: str) -> InstrumentConfig:
        for inst in self.instruments:
            if inst.symbol == symbol:
                return inst
        raise KeyError(symbol)

    def client(self, client_id: str) -> ClientConfig:
        for client in self.clients:
            if client.id == client_id:
                return client
        raise KeyError(client_id)


_AT = re.compile(r"^(?P<problem>.*) - at `(?P<path>\$[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]*)`$")
#: ``key: problem``, ``key[3]: problem`` or ``key.sub: problem`` from a ``__post_init__``.
_FIELD = re.compile(
    r"^(?P<field>[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\]|\.[A-Za-z0-9_.-]+)*): (?P<problem>.*)$"
)


def _locate(message: str) -> tuple[str, str]:
    """Split a msgspec validation message into (path, problem), naming the key when known."""
    path, problem = "$", message
    if m := _AT.match(message):
        path, problem = m["path"], m["problem"]
    if m := _UNKNOWN.match(problem):
        return f"{path}.{m['field']}", "unknown field"
    if m := _FIELD.match(problem):
        return f"{path}.{m['field']}", m["problem"]
    return path, problem


def config_error(
    source: str, exc: msgspec.ValidationError, info: msgspec.inspect.Type | None = None
) -> ConfigError:
    """The :class:`ConfigError` for a msgspec validation error in file ``source``; with the
    ``info`` of the type decoded, a key that takes a few values only says which."""
    where, problem = _locate(str(exc))
    choices = None if info is None else _choices(info, where)
    if choices is not None:
        problem += f" (expected one of {', '.join(repr(value) for value in choices)})"
    return ConfigError(source, where, problem)


#: A step of a msgspec error path: ``.name`` (a struct field) or ``[3]`` (an array item).
_STEP = re.compile(r"\.([^.\[]+)|\[([0-9]+)\]")


def _choices(info: msgspec.inspect.Type, where: str) -> tuple[object, ...] | None:
    """The values of the key at ``where`` (``$.broker.mqtt_version``) when its type is a
    ``Literal``, or one that may also be omitted (``Literal[...] | None``); None otherwise, or
    when the path leads nowhere known."""
    for name, index in _STEP.findall(where.removeprefix("$")):
        if isinstance(info, msgspec.inspect.Metadata):
            info = info.type
        if name and isinstance(info, msgspec.inspect.StructType):
            found = [f.type for f in info.fields if f.encode_name == name]
            if not found:
                return None
            info = found[0]
        elif index and isinstance(info, msgspec.inspect.ListType):
            info = info.item_type
        else:
            return None
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    if isinstance(info, msgspec.inspect.UnionType):
        others = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(others) == 1:
            info = others[0]
    if isinstance(info, msgspec.inspect.LiteralType):
        return tuple(info.values)
    return None


def load_toml(path: str | Path, type: type[T]) -> T:
    """Read a TOML file and decode it into ``type`` (a msgspec Struct).

    Raises:
        ConfigError: the file is missing, not TOML, or a key or value is wrong; the message names
            the file and the path of the key.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, "$", f"cannot read: {exc.strerror}") from None
    try:
        decoded = msgspec.toml.decode(data, type=type)
    except msgspec.ValidationError as exc:
        raise config_error(source, exc, msgspec.inspect.type_info(type)) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(source, "$", f"not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(source, "$", "nested too deeply") from None
    # msgspec reads a decimal string with Decimal(), which also takes Python's literal syntax
    # ("1_000"), spaces and non-ASCII digits; the raw document says what the file really holds.
    problem = _loose_decimal(msgspec.toml.decode(data), msgspec.inspect.type_info(type), "$")
    if problem is not None:
        raise ConfigError(source, *problem)
    return decoded


#: A decimal string as a config file may write it: ASCII digits, a sign, a point, an exponent.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _loose_decimal(raw: object, info: msgspec.inspect.Type, path: str) -> tuple[str, str] | None:
    """(path, problem) of the first string in ``raw`` (a document that decoded as ``info``)
    read as a Decimal although it is not written as a decimal number; None when there is none."""
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    if isinstance(info, msgspec.inspect.DecimalType):
        if isinstance(raw, str) and not _DECIMAL_TEXT.fullmatch(raw):
            return path, f"expected a decimal number like '0.01', got {raw!r}"
        return None
    if isinstance(info, msgspec.inspect.UnionType):
        for member in info.types:
            if (found := _loose_decimal(raw, member, path)) is not None:
                return found
        return None
    if isinstance(info, msgspec.inspect.StructType) and isinstance(raw, dict):
        for field in info.fields:
            if field.encode_name in raw:
                at = f"{path}.{field.encode_name}"
                if (found := _loose_decimal(raw[field.encode_name], field.type, at)) is not None:
                    return found
        return None
    if isinstance(info, msgspec.inspect.DictType) and isinstance(raw, dict):
        for key, value in raw.items():
            if (found := _loose_decimal(value, info.value_type, f"{path}.{key}")) is not None:
                return found
        return None
    if isinstance(info, msgspec.inspect.ListType) and isinstance(raw, list):
        for i, item in enumerate(raw):
            if (found := _loose_decimal(item, info.item_type, f"{path}[{i}]")) is not None:
                return found
    return None


def load_config(path: str | Path) -> Config:
    """Read and validate a config file.

    Raises:
        ConfigError: the file is missing, not TOML, or a key or value is wrong; the message names
            the file and the path of the key.
    """
    config = load_toml(path, Config)
    _cross_check(str(path), config)
    return config


def _cross_check(source: str, config: Config) -> None:
    symbols: dict[str, int] = {}
    for i, inst in enumerate(config.instruments):
        if inst.symbol in symbols:
            raise ConfigError(source, f"$.instruments[{i}].symbol", f"{inst.symbol} given twice")
        symbols[inst.symbol] = i
    names: set[str] = set()
    for i, venue in enumerate(config.venues):
        if venue.name in names:
            raise ConfigError(source, f"$.venues[{i}].name", f"{venue.name} given twice")
        names.add(venue.name)
        for symbol in venue.symbols:
            if symbol not in symbols:
                raise ConfigError(
                    source, f"$.venues[{i}].symbols.{symbol}", "not a configured instrument"
                )
    _cross_check_quoting(source, config, symbols)


def _cross_check_quoting(source: str, config: Config, symbols: dict[str, int]) -> None:
    """Cross-references of the quoting sections: tiers, client symbols, inventory assets."""
    for name, tier in config.tiers.items():
        try:
            _check_decimal(tier, "spread_bps", below=_MAX_BPS)
        except ValueError as exc:
            where, problem = _locate(str(exc))
            raise ConfigError(source, f"$.tiers.{name}{where[1:]}", problem) from None
    ladder_tier = config.quoting.ladder_tier
    if ladder_tier is not None and ladder_tier not in config.tiers:
        raise ConfigError(source, "$.quoting.ladder_tier", f"no such tier {ladder_tier!r}")
    assets = {inst.base for inst in config.instruments} | {
        inst.quote for inst in config.instruments
    }
    for asset in config.inventory.limits:
        if asset not in assets:
            raise ConfigError(
                source, f"$.inventory.limits.{asset}", "not the base or quote of an instrument"
            )
    for i, operator in enumerate(config.broker.operators):
        if not CLIENT_ID.fullmatch(operator):  # a broker user and a topic level, as a client id
            raise ConfigError(
                source,
                f"$.broker.operators[{i}]",
                f"{operator!r} must be 1-64 letters, digits, '_', '.' or '-' (no '/', '+', '#')",
            )
        if operator in RESERVED_IDS:
            raise ConfigError(
                source, f"$.broker.operators[{i}]", f"{operator!r} is reserved ({_RESERVED})"
            )
        if operator in config.broker.operators[:i]:
            raise ConfigError(source, f"$.broker.operators[{i}]", f"{operator} given twice")
        if any(client.id == operator for client in config.clients):
            raise ConfigError(source, f"$.broker.operators[{i}]", f"{operator} is also a client id")
    ids: set[str] = set()
    for i, client in enumerate(config.clients):
        if client.id in ids:
            raise ConfigError(source, f"$.clients[{i}].id", f"{client.id} given twice")
        ids.add(client.id)
        if client.tier not in config.tiers:
            raise ConfigError(source, f"$.clients[{i}].tier", f"no such tier {client.tier!r}")
        for j, symbol in enumerate(client.symbols):
            if symbol not in symbols:
                raise ConfigError(
                    source,
                    f"$.clients[{i}].symbols[{j}]",
                    f"{symbol} is not a configured instrument",
                )
