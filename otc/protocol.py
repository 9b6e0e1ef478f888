"""Wire protocol v1: the messages clients and the engine exchange over MQTT, and their codecs.

Topics (``{c}`` is the client id, which is also the client's broker username)::

    client -> otc/v1/{c}/rfq        Rfq
    engine -> otc/v1/{c}/quotes     Quote | Reject
    client -> otc/v1/{c}/accept     Accept
    engine -> otc/v1/{c}/fills      Fill | AcceptReject
    engine -> otc/v1/status         Status (retained; the last will says "down")
    engine -> otc/v1/ladder/{sym}   Ladder (indicative prices for configured size bands)
    operator -> otc/v1/control/{op} Control (kill switch, client enable, tier spread)
    engine -> otc/v1/control/{op}/result  ControlResult

``{op}`` is the operator's broker username; the broker's ACL decides who may write control.

JSON, encoded and decoded with msgspec; sides are the CLIENT's (a client ``buy`` fills at our
ask). Prices and sizes are decimal strings, never JSON floats. Engine messages carry ``type``.
Client messages are decoded leniently into :class:`Rfq` / :class:`Accept` (string fields kept as
text) and then validated by :func:`parse_rfq` / :func:`parse_accept`, which name the offending
field in a :class:`ProtocolError` carrying the reject code.
"""

from __future__ import annotations

import enum
from decimal import Decimal, InvalidOperation
from typing import Literal, TypeVar

import msgspec

from otc.errors import OtcError
from otc.model import decimal_text, repeated_member_at

__all__ = [
    "ACCEPT_TOPIC",
    "CONTROL_RESULT_TOPIC",
    "CONTROL_TOPIC",
    "FILLS_TOPIC",
    "LADDER_TOPIC",
    "MAX_PAYLOAD_BYTES",
    "QUOTES_TOPIC",
    "RFQ_TOPIC",
    "STATUS_TOPIC",
    "Accept",
    "AcceptReject",
    "ClientSide",
    "Code",
    "Control",
    "ControlResult",
    "Fill",
    "Ladder",
    "LadderBand",
    "Outgoing",
    "ProtocolError",
    "Quote",
    "Reject",
    "Rfq",
    "Status",
    "check_accept",
    "check_control",
    "check_rfq",
    "decode_accept",
    "decode_control",
    "decode_rfq",
    "encode",
    "parse_accept",
    "parse_rfq",
    "repeated_member",
    "wire_decimal",
]

T = TypeVar("T")

PREFIX = "otc/v1"
RFQ_TOPIC = PREFIX + "/{client}/rfq"
QUOTES_TOPIC = PREFIX + "/{client}/quotes"
ACCEPT_TOPIC = PREFIX + "/{client}/accept"
FILLS_TOPIC = PREFIX + "/{client}/fills"
STATUS_TOPIC = PREFIX + "/status"
LADDER_TOPIC = PREFIX + "/ladder/{symbol}"
CONTROL_TOPIC = PREFIX + "/control/{operator}"
CONTROL_RESULT_TOPIC = PREFIX + "/control/{operator}/result"

#: Larger client payloads are rejected unread (``INVALID_MESSAGE``).
MAX_PAYLOAD_BYTES = 4096

ClientSide = Literal["buy", "sell", "two_way"]


class Code(enum.StrEnum):
    """Reject codes, on ``quotes`` (RFQ rejects) and ``fills`` (accept rejects)."""

    INVALID_MESSAGE = "INVALID_MESSAGE"  # not JSON, wrong types, missing fields, too large
    UNKNOWN_CLIENT = "UNKNOWN_CLIENT"
    CLIENT_DISABLED = "CLIENT_DISABLED"
    UNKNOWN_SYMBOL = "UNKNOWN_SYMBOL"
    SYMBOL_NOT_ALLOWED = "SYMBOL_NOT_ALLOWED"
    INVALID_QTY = "INVALID_QTY"  # zero, negative, NaN, infinite, absurd, finer than the lot
    INVALID_SIDE = "INVALID_SIDE"
    DUPLICATE_RFQ_ID = "DUPLICATE_RFQ_ID"
    RATE_LIMITED = "RATE_LIMITED"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"  # per-trade, daily notional or inventory limit
    MARKET_UNAVAILABLE = "MARKET_UNAVAILABLE"  # no healthy venue, stale or crossed book
    NO_LIQUIDITY = "NO_LIQUIDITY"  # visible depth cannot cover the size
    MARKET_HALTED = "MARKET_HALTED"  # kill switch, global or per symbol
    UNKNOWN_QUOTE = "UNKNOWN_QUOTE"
    EXPIRED = "EXPIRED"
    ALREADY_FILLED = "ALREADY_FILLED"
    LAST_LOOK = "LAST_LOOK"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class ProtocolError(OtcError):
    """A client message that cannot be served; ``code`` goes on the wire with the message."""

    def __init__(self, code: Code, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


# -- client -> engine ----------------------------------------------------------------------------


class Rfq(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A request for quote: exactly one of ``qty`` (base) and ``notional`` (quote currency)."""

    rfq_id: str
    symbol: str
    side: str
    qty: str | None = None
    notional: str | None = None


class Accept(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Accept a quote: ``side`` is required for a two-way quote; ``qty`` at most the quoted."""

    quote_id: str
    side: str | None = None
    qty: str | None = None


# -- engine -> client ----------------------------------------------------------------------------


class _Out(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=False):
    """Engine messages: tagged by ``type``."""


class Quote(_Out, frozen=True, tag="quote"):
    """A firm quote; ``bid``/``ask`` present only for the side(s) asked (None otherwise)."""

    rfq_id: str
    quote_id: str
    symbol: str
    side: str
    qty: str
    bid: str | None
    ask: str | None
    valid_until_ms: int
    notional: str | None = None


class Reject(_Out, frozen=True, tag="reject"):
    rfq_id: str
    code: str
    reason: str


class Fill(_Out, frozen=True, tag="fill"):
    quote_id: str
    trade_id: str
    side: str
    qty: str
    price: str
    ts_ms: int
    symbol: str = ""
    rfq_id: str = ""


class AcceptReject(_Out, frozen=True, tag="accept_reject"):
    quote_id: str
    code: str
    reason: str


class Outgoing(msgspec.Struct, frozen=True):
    """A message for the bus to publish (engine or client): its topic, its encoded payload.

    ``expiry_s``: how long the broker may keep the message for a subscriber that is offline,
    in whole seconds (MQTT 5's Message Expiry Interval; ignored under MQTT 3.1.1); ``None``
    for as long as its session lasts. A quote's is its remaining validity, rounded up.
    """

    topic: str
    payload: bytes
    retain: bool = False
    expiry_s: int | None = None


class Status(msgspec.Struct, frozen=True):
    state: Literal["up", "down"]
    ts_ms: int
    version: str = "1"
    symbols: list[str] = []
    venues: dict[str, str] = {}


class LadderBand(msgspec.Struct, frozen=True):
    qty: str
    bid: str | None
    ask: str | None


class Ladder(msgspec.Struct, frozen=True):
    symbol: str
    ts_ms: int
    indicative: bool
    bands: list[LadderBand]


_encoder = msgspec.json.Encoder()
_rfq_decoder = msgspec.json.Decoder(Rfq)
_accept_decoder = msgspec.json.Decoder(Accept)


def encode(message: msgspec.Struct) -> bytes:
    """JSON bytes of an engine message."""
    return _encoder.encode(message)


def _decode(decoder: msgspec.json.Decoder[T], payload: bytes, what: str) -> T:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            Code.INVALID_MESSAGE, f"{what} of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}"
        )
    try:
        message = decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise ProtocolError(Code.INVALID_MESSAGE, f"{what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(Code.INVALID_MESSAGE, f"{what} is not valid JSON: {exc}") from None
    name = repeated_member(payload)
    if name is not None:
        raise ProtocolError(Code.INVALID_MESSAGE, f"{what}: member {name!r} is given twice")
    return message


def repeated_member(payload: bytes) -> str | None:
    """A member name given twice in the object ``payload`` holds (valid JSON), if any.

    JSON leaves repeated names undefined and msgspec keeps the last value, so that
    ``{"side": "sell", ..., "side": "buy"}`` would be served as a buy: such a message is
    ambiguous and refused. Messages are flat objects, and every member takes a colon outside
    the strings: a payload with no more colons than distinct members has no repeats (one count,
    the usual case); any other is parsed again, member by member.
    """
    members = msgspec.json.decode(payload)
    if isinstance(members, dict) and payload.count(b":") <= len(members):
        return None
    repeated = repeated_member_at(payload)
    return None if repeated is None else repeated[1]


def decode_rfq(payload: bytes) -> Rfq:
    """Decode an RFQ; malformed JSON, wrong types, unknown or missing fields raise."""
    return _decode(_rfq_decoder, payload, "rfq")


def decode_accept(payload: bytes) -> Accept:
    return _decode(_accept_decoder, payload, "accept")


#: Sizes beyond this many significant digits or this magnitude are absurd, not big.
_MAX_DIGITS = 30


def wire_decimal(
    text: str, field: str, code: Code = Code.INVALID_QTY, *, zero: bool = False
) -> Decimal:
    """A strictly positive (``zero``: or zero), finite decimal from wire text, or a
    ProtocolError naming ``field``."""
    if not text or len(text) > 64 or not text.isascii() or "_" in text or text != text.strip():
        raise ProtocolError(code, f"{field} must be a decimal string, got {text!r}")
    if "e" in text or "E" in text:  # "1e3" is 1000: a typo away from "1.3"; we never send it
        raise ProtocolError(
            code, f"{field} must be in plain notation (like '250' or '0.5'), got {text!r}"
        )
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ProtocolError(code, f"{field} is not a number: {text!r}") from None
    if not value.is_finite():
        raise ProtocolError(code, f"{field} must be finite, got {text!r}")
    if value < 0 or (value == 0 and not zero):
        rule = "must not be negative" if zero else "must be positive"
        raise ProtocolError(code, f"{field} {rule}, got {text!r}")
    if value == 0:
        return Decimal(0)  # also for "-0" and "0.00"
    if value.adjusted() >= _MAX_DIGITS or len(value.as_tuple().digits) > _MAX_DIGITS:
        raise ProtocolError(code, f"{field} {text!r} is absurdly large or precise")
    return value


class ParsedRfq(msgspec.Struct, frozen=True):
    rfq_id: str
    symbol: str
    side: ClientSide
    qty: Decimal | None
    notional: Decimal | None


def parse_rfq(payload: bytes) -> ParsedRfq:
    """Decode and validate an RFQ (symbol existence and limits are checked by the engine)."""
    return check_rfq(decode_rfq(payload))


def check_rfq(rfq: Rfq) -> ParsedRfq:
    """Validate a decoded RFQ: its id, side and exactly one positive size."""
    if not rfq.rfq_id or len(rfq.rfq_id) > 64 or not rfq.rfq_id.isprintable():
        raise ProtocolError(
            Code.INVALID_MESSAGE, "rfq_id must be 1 to 64 printable characters (no controls)"
        )
    if rfq.side not in ("buy", "sell", "two_way"):
        raise ProtocolError(
            Code.INVALID_SIDE, f"side must be buy, sell or two_way, got {rfq.side!r}"
        )
    if (rfq.qty is None) == (rfq.notional is None):
        raise ProtocolError(Code.INVALID_QTY, "give exactly one of qty and notional")
    qty = None if rfq.qty is None else wire_decimal(rfq.qty, "qty")
    notional = None if rfq.notional is None else wire_decimal(rfq.notional, "notional")
    side: ClientSide = rfq.side  # type: ignore[assignment]  # checked above
    return ParsedRfq(rfq.rfq_id, rfq.symbol, side, qty, notional)


class ParsedAccept(msgspec.Struct, frozen=True):
    quote_id: str
    side: Literal["buy", "sell"] | None
    qty: Decimal | None


def parse_accept(payload: bytes) -> ParsedAccept:
    """Decode and validate an accept (the quote it names is checked by the engine)."""
    return check_accept(decode_accept(payload))


def check_accept(accept: Accept) -> ParsedAccept:
    """Validate a decoded accept: its side and, when given, a positive qty."""
    if accept.side not in (None, "buy", "sell"):
        raise ProtocolError(Code.INVALID_SIDE, f"side must be buy or sell, got {accept.side!r}")
    qty = None if accept.qty is None else wire_decimal(accept.qty, "qty")
    side: Literal["buy", "sell"] | None = accept.side  # type: ignore[assignment]
    return ParsedAccept(accept.quote_id, side, qty)


class Control(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An operator command.

    ``halt`` / ``resume``: the kill switch of ``symbol`` (every symbol when omitted);
    ``client``: enable or disable ``client``; ``spread``: set ``tier``'s ``spread_bps``.
    Any command may carry a ``request_id`` (1 to 64 characters of the sender's choosing), which
    its result repeats: the result topic is shared by every session of the operator (and the
    console's commands), and may hold a retained message, so that a sender waiting for its own
    answer tells it by that id.
    """

    command: Literal["halt", "resume", "client", "spread"]
    symbol: str | None = None
    client: str | None = None
    enabled: bool | None = None
    tier: str | None = None
    spread_bps: str | None = None
    request_id: str | None = None


#: The members each command takes, besides ``command``.
_CONTROL_MEMBERS: dict[str, tuple[str, ...]] = {
    "halt": ("symbol",),
    "resume": ("symbol",),
    "client": ("client", "enabled"),
    "spread": ("tier", "spread_bps"),
}


def check_control(control: Control) -> None:
    """Refuse a command given members of another (``null`` counts as omitted).

    Each command reads only its own members, so that ``{"command": "halt", "client":
    "client-b"}`` would halt every symbol, and ``{"command": "spread", "tier": "gold",
    "spread_bps": "9", "client": "client-a"}`` change the spread of every gold client: such a
    command is ambiguous, and refused (``INVALID_MESSAGE``) before anything changes. So is a
    ``request_id`` that is empty or longer than 64 characters.
    """
    takes = _CONTROL_MEMBERS[control.command]
    if control.request_id is not None and not 0 < len(control.request_id) <= 64:
        raise ProtocolError(Code.INVALID_MESSAGE, "request_id must be 1 to 64 characters")
    for name in Control.__struct_fields__:
        if name in ("command", "request_id") or name in takes:
            continue
        if getattr(control, name) is not None:
            members = " and ".join(repr(m) for m in takes)
            raise ProtocolError(
                Code.INVALID_MESSAGE,
                f"{control.command} takes {members}, not {name!r}",
            )


class ControlResult(msgspec.Struct, frozen=True, omit_defaults=True):
    """The answer to a :class:`Control`: ``command`` is ``"?"`` when the command did not decode,
    ``request_id`` the command's (omitted when it gave none, or did not decode)."""

    ok: bool
    command: str
    detail: str
    request_id: str | None = None


_control_decoder = msgspec.json.Decoder(Control)


def decode_control(payload: bytes) -> Control:
    return _decode(_control_decoder, payload, "control")


def text(value: Decimal) -> str:
    """Wire text of a price or size: plain decimal, never exponent notation."""
    return decimal_text(value)
