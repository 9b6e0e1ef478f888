"""Value types shared by every layer: sides, fixed-point scales, instrument ids.

Representation
--------------
Inside the engine, prices and sizes are Python ``int`` s in fixed point: a price of
``64000.15`` at ``price_decimals = 8`` is ``6400015000000``. Integer arithmetic is exact, hashes
fast, and compares in one instruction; a ``Decimal`` appears only at the edges (config, files,
the wire), and a ``float`` never touches a price or a size.

* price: quote currency per one unit of base, scaled by ``10**price_decimals``
* size: base units, scaled by ``10**size_decimals``
* notional = price x size: quote currency, scaled by ``10**(price_decimals + size_decimals)``
* fee: basis points, scaled by ``10**FEE_DECIMALS`` (so 2.5 bps is ``25_000``)

Parsing refuses what it cannot represent exactly (NaN, infinities, more decimals than the scale)
instead of rounding it away: a book that silently rounds is not an exact book.
"""

from __future__ import annotations

import enum
import json
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation

import msgspec

from otc.errors import ValueParseError

__all__ = [
    "BPS_DENOMINATOR",
    "FEE_DECIMALS",
    "FEE_DENOMINATOR",
    "BookDelta",
    "BookEvent",
    "BookSnapshot",
    "InstrumentId",
    "Levels",
    "Scale",
    "Side",
    "decimal_text",
    "decimals_of",
    "parse_fee_bps",
    "parse_fixed",
    "plain",
    "printable",
    "repeated_member_at",
    "to_decimal",
]

#: Fees are stored in units of 1e-4 bps: enough for any venue's fee schedule.
FEE_DECIMALS = 4
#: 1 + fee is ``(FEE_DENOMINATOR + fee) / FEE_DENOMINATOR`` (1e4 bps per unit x 1e4 sub-units).
FEE_DENOMINATOR = 10_000 * 10**FEE_DECIMALS
BPS_DENOMINATOR = 10_000
#: Fixed-point values have at most this many digits (integer part + scale): far beyond any price,
#: size or notional, and a bound that keeps absurd input ("1e999999") from building huge ints.
_MAX_DIGITS = 64
#: Scales decimals without rounding: the default context keeps only 28 significant digits.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


class Side(enum.Enum):
    """The side a taker is on: ``BUY`` lifts asks, ``SELL`` hits bids."""

    BUY = "buy"
    SELL = "sell"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class InstrumentId(msgspec.Struct, frozen=True, order=True):
    """One instrument on one venue, e.g. ``InstrumentId("BTC-USDT", "binance")``."""

    symbol: str
    venue: str

    def __str__(self) -> str:
        return f"{self.symbol}.{self.venue}"


#: Book levels as (price ticks, size lots).
Levels = list[tuple[int, int]]


class BookSnapshot(msgspec.Struct, frozen=True, gc=False, tag="snapshot", array_like=True):
    """A full book: replaces everything known about ``symbol`` on ``venue``.

    Prices in ticks, sizes in lots at the symbol's scale; ``ts_*_ns`` in ns since the epoch
    (``ts_event_ns`` from the venue, 0 when it gives none; ``ts_recv_ns`` local).
    """

    venue: str
    symbol: str
    bids: Levels
    asks: Levels
    sequence: int | None
    ts_event_ns: int
    ts_recv_ns: int


class BookDelta(msgspec.Struct, frozen=True, gc=False, tag="delta", array_like=True):
    """Level changes: each (price, size) sets an absolute size; size 0 deletes the level."""

    venue: str
    symbol: str
    bids: Levels
    asks: Levels
    sequence: int | None
    ts_event_ns: int
    ts_recv_ns: int


BookEvent = BookSnapshot | BookDelta


class Scale(msgspec.Struct, frozen=True):
    """Fixed-point resolution of a book: how many decimals prices and sizes keep."""

    price_decimals: int
    size_decimals: int

    @property
    def notional_decimals(self) -> int:
        return self.price_decimals + self.size_decimals

    def price(self, text: str | Decimal) -> int:
        """Parse a price (must be > 0) to ticks of ``10**-price_decimals``."""
        value = parse_fixed(text, self.price_decimals, what="price")
        if value <= 0:
            raise ValueParseError(f"price must be positive, got {text!r}")
        return value

    def size(self, text: str | Decimal) -> int:
        """Parse a size (must be >= 0; 0 deletes a level) to lots of ``10**-size_decimals``."""
        value = parse_fixed(text, self.size_decimals, what="size")
        if value < 0:
            raise ValueParseError(f"size must not be negative, got {text!r}")
        return value

    def price_text(self, ticks: int) -> Decimal:
        return to_decimal(ticks, self.price_decimals)

    def size_text(self, lots: int) -> Decimal:
        return to_decimal(lots, self.size_decimals)


def decimals_of(text: str) -> int:
    """Decimal places a plain decimal text needs (``"64000.10"`` -> 2; exponents honoured)."""
    try:
        exponent = Decimal(text).as_tuple().exponent
    except InvalidOperation:
        raise ValueParseError(f"not a number: {text!r}") from None
    if not isinstance(exponent, int):
        raise ValueParseError(f"not a finite number: {text!r}")
    return max(0, -exponent)


def parse_fixed(text: str | Decimal, decimals: int, *, what: str = "value") -> int:
    """Exact fixed-point value of ``text`` at ``decimals`` places.

    The fast path handles the plain ``"123.456"`` form every venue sends, without building a
    ``Decimal`` (which costs several times a whole JSON decode); anything else (exponents,
    ``Decimal`` instances) goes through ``Decimal``. Raises :class:`ValueParseError` for
    non-numbers, NaN/infinity, values that need more than ``decimals`` places, and values of
    more than ``_MAX_DIGITS`` digits at that scale.
    """
    if isinstance(text, str):
        whole, dot, frac = text.partition(".")
        if (
            whole
            and (whole.isdigit() or (whole[0] == "-" and whole[1:].isdigit()))
            and (not dot or frac.isdigit())
            and whole.isascii()
            and frac.isascii()
        ):
            if len(whole) + decimals > _MAX_DIGITS:
                digits = whole.lstrip("-").lstrip("0")
                if len(digits) + decimals > _MAX_DIGITS:
                    raise ValueParseError(f"{what} {text!r} is out of range")
                # Leading zeros only: int() refuses texts of over 4300 digits, however small.
                whole = ("-" if whole[0] == "-" else "") + (digits or "0")
            if len(frac) > decimals:
                stripped = frac.rstrip("0")
                if len(stripped) > decimals:
                    raise ValueParseError(
                        f"{what} {text!r} has more than {decimals} decimal places"
                    )
                frac = stripped
            return int(whole + frac + "0" * (decimals - len(frac)))
        stripped = text.strip()
        # Decimal() also takes Python literal syntax ("1_000") and non-ASCII digits: not numbers.
        if not stripped.isascii() or "_" in stripped:
            raise ValueParseError(f"{what} is not a number: {text!r}")
        try:
            value = Decimal(stripped)
        except InvalidOperation:
            raise ValueParseError(f"{what} is not a number: {text!r}") from None
    elif isinstance(text, Decimal):
        value = text
    else:
        raise ValueParseError(f"{what} must be a decimal string, got {type(text).__name__}")
    if not value.is_finite():
        raise ValueParseError(f"{what} must be finite, got {_shown(text)!r}")
    if not value:
        return 0
    if value.adjusted() + 1 + decimals > _MAX_DIGITS:
        raise ValueParseError(f"{what} {_shown(text)!r} is out of range")
    scaled = value.scaleb(decimals, _EXACT)
    if scaled != scaled.to_integral_value():
        raise ValueParseError(f"{what} {_shown(text)!r} has more than {decimals} decimal places")
    return int(scaled)


def _shown(text: str | Decimal) -> str:
    """A value as an error message shows it: as given, a ``Decimal`` in plain form."""
    if isinstance(text, str):
        return text
    return decimal_text(text) if text.is_finite() else str(text)


def to_decimal(value: int, decimals: int) -> Decimal:
    """The exact ``Decimal`` of a fixed-point int (``6400015, 2`` -> ``Decimal('64000.15')``)."""
    return Decimal(value).scaleb(-decimals, _EXACT)


def decimal_text(value: Decimal) -> str:
    """Plain positional text of a decimal, trailing zeros dropped: never ``"6.4E+4"``.

    ``str(Decimal)`` switches to exponent notation for small and normalized values; every number
    a client or operator reads goes through this function instead.
    """
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def repeated_member_at(data: bytes) -> tuple[str, str] | None:
    """The first member given twice in an object of the JSON document ``data`` (valid JSON),
    in document order, as (its JSON path, its name); ``None`` when there is none.

    JSON leaves repeated names undefined, and msgspec keeps the last value: a wire message or a
    file holding one is ambiguous, and refused by its reader.
    """

    def first(node: object, path: str) -> tuple[str, str] | None:
        if isinstance(node, _Members):
            names: set[str] = set()
            for name, value in node:
                if name in names:
                    return f"{path}.{name}", name
                names.add(name)
                found = first(value, f"{path}.{name}")
                if found is not None:
                    return found
        elif isinstance(node, list):
            for i, value in enumerate(node):
                found = first(value, f"{path}[{i}]")
                if found is not None:
                    return found
        return None

    return first(json.loads(data, object_pairs_hook=_Members), "$")


class _Members(list[tuple[str, object]]):
    """A JSON object as its members in order, repeats kept (see :func:`repeated_member_at`)."""


def printable(text: str) -> str:
    """``text`` from a client, the engine or a file, for a terminal: control characters escaped,
    so that an id or a reason holding a newline or an ANSI escape cannot forge a line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def plain(obj: object) -> object:
    """``obj`` as JSON-ready builtins with every ``Decimal`` as plain decimal text.

    msgspec encodes a ``Decimal`` with ``str()``, which may print ``"8E+1"`` or ``"5E-8"``; every
    document a client or operator reads is built with this function instead.
    """
    return _plain(msgspec.to_builtins(obj, builtin_types=(Decimal,)))


def _plain(value: object) -> object:
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):  # msgspec.to_builtins keeps tuples as tuples
        return [_plain(v) for v in value]
    return value


def parse_fee_bps(text: str | Decimal) -> int:
    """A taker fee in bps (``"2.5"``) as an int in units of ``10**-FEE_DECIMALS`` bps.

    Fees must lie in ``[0, 10000)`` bps: a fee of 100 % or more makes every price meaningless.
    """
    value = parse_fixed(text if isinstance(text, str) else Decimal(text), FEE_DECIMALS, what="fee")
    if not 0 <= value < FEE_DENOMINATOR:
        raise ValueParseError(f"fee must be in [0, 10000) bps, got {text!r}")
    return value
