"""Configuration: ``config/*.toml`` decoded straight into frozen msgspec Structs.

Unknown keys, wrong types and invalid values fail at start-up with a :class:`ConfigError` that
names the file and the JSON path of the offending key, e.g.::

    config/otc.toml: $.estimator.max_book_agee_ms: unknown field

Units are in the names: ``*_bps`` basis points, ``*_ms`` milliseconds. Prices, sizes and fees are
decimal strings (``"0.01"``); TOML floats are accepted but strings are exact by construction.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import msgspec

from otc.errors import ConfigError, ValueParseError
from otc.model import Scale, decimals_of, parse_fee_bps
from otc.slippage import ImpactModel

__all__ = [
    "Config",
    "EstimatorConfig",
    "InstrumentConfig",
    "VenueConfig",
    "config_error",
    "load_config",
]

_Decimals = Annotated[int, msgspec.Meta(ge=0, le=18)]


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

    def __post_init__(self) -> None:
        for key in ("tick_size", "lot_size"):
            value: Decimal = getattr(self, key)
            if not value.is_finite() or value <= 0:
                raise ValueError(f"{key}: must be a positive number, got {value}")
        if decimals_of(str(self.tick_size)) > self.price_decimals:
            raise ValueError(f"tick_size: finer than price_decimals = {self.price_decimals}")
        if decimals_of(str(self.lot_size)) > self.size_decimals:
            raise ValueError(f"lot_size: finer than size_decimals = {self.size_decimals}")
        if self.impact is not None:
            for key in ("daily_volume", "daily_volatility_bps", "coefficient"):
                value = getattr(self.impact, key)
                if not value.is_finite() or value <= 0:
                    raise ValueError(f"impact: {key} must be a positive number, got {value}")

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
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"name: {self.name!r} is not a lower-case identifier")

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


class Config(_Base, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole engine configuration."""

    instruments: list[InstrumentConfig]
    venues: list[VenueConfig]
    estimator: EstimatorConfig = EstimatorConfig()

    def instrument(self, symbol: str) -> InstrumentConfig:
        for inst in self.instruments:
            if inst.symbol == symbol:
                return inst
        raise KeyError(symbol)


_AT = re.compile(r"^(?P<problem>.*) - at `(?P<path>\$[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]*)`$")
_FIELD = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_]*): (?P<problem>.*)$")


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


def config_error(source: str, exc: msgspec.ValidationError) -> ConfigError:
    """The :class:`ConfigError` for a msgspec validation error in file ``source``."""
    where, problem = _locate(str(exc))
    return ConfigError(source, where, problem)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file.

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
        config = msgspec.toml.decode(data, type=Config)
    except msgspec.ValidationError as exc:
        raise config_error(source, exc) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(source, "$", f"not valid TOML: {exc}") from None
    _cross_check(source, config)
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
