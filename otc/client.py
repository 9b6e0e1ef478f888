"""The client's side of the wire protocol: an RFQ and its quote, an accept and its fill, an
operator command and its result. What ``otc rfq`` and ``otc control`` run.

A client trusts nothing it reads off the broker. The reply topics are shared by every session
of the client (or operator), may hold a retained message, and carry whatever the engine, or
anyone the broker lets write there, sends. So:

* a message is taken as the answer only when it names our request: the ``rfq_id`` of our RFQ,
  the ``quote_id`` of the quote we accepted, the ``request_id`` of our command. Anything else
  on the topic (other requests' answers, retained leftovers, messages that do not decode) is
  skipped, and the wait goes on;
* the answer must then be a message of the protocol (:class:`~otc.protocol.Quote` or
  :class:`~otc.protocol.Reject`, :class:`~otc.protocol.Fill` or
  :class:`~otc.protocol.AcceptReject`, :class:`~otc.protocol.ControlResult`), each member
  given once, and agree with what was asked: a quote of our symbol, side and size (a notional
  RFQ's: its notional, and a qty that costs no more at each price quoted), priced on
  exactly the sides asked with plain positive decimals, a two-way bid below its ask; a fill of
  the side and quantity accepted, at the price quoted. An answer that names our request and
  breaks any of this raises :class:`ReplyError`: the client must not act on it (accept it,
  report it as done).

Waiting is bounded by the caller (``asyncio.timeout``); the functions wait as long as they are
let.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Context, Decimal
from typing import Literal, TypeVar

import msgspec

from otc.bus import Bus
from otc.errors import OtcError
from otc.model import decimal_text
from otc.protocol import (
    ACCEPT_TOPIC,
    CONTROL_RESULT_TOPIC,
    CONTROL_TOPIC,
    FILLS_TOPIC,
    QUOTES_TOPIC,
    RFQ_TOPIC,
    Accept,
    AcceptReject,
    Code,
    Control,
    ControlResult,
    Fill,
    Outgoing,
    ParsedRfq,
    ProtocolError,
    Quote,
    Reject,
    Rfq,
    check_control,
    check_rfq,
    repeated_member,
    wire_decimal,
)

__all__ = [
    "ReplyError",
    "accept_quote",
    "check_fill",
    "check_quote",
    "new_rfq",
    "request_quote",
    "send_control",
]

T = TypeVar("T")

#: The largest answer read: an engine's answers are a few hundred bytes.
MAX_REPLY_BYTES = 64 * 1024
_EXACT = Context(prec=64)


class ReplyError(OtcError):
    """An answer that names our request but breaks the protocol, or disagrees with what was
    asked: not to be acted on."""


class _Names(msgspec.Struct):
    """The members that tell whose answer a message is (anything else is left unread)."""

    rfq_id: object = None
    quote_id: object = None
    request_id: object = None


def _encode(message: msgspec.Struct) -> bytes:
    """A client message as JSON, members left at ``None`` omitted (the protocol's "absent")."""
    members = msgspec.structs.asdict(message)
    return msgspec.json.encode({k: v for k, v in members.items() if v is not None})


_names = msgspec.json.Decoder(_Names).decode
_quote_answer = msgspec.json.Decoder(Quote | Reject)
_fill_answer = msgspec.json.Decoder(Fill | AcceptReject)
_control_answer = msgspec.json.Decoder(ControlResult)


async def _answer(
    messages: AsyncIterator[tuple[str, bytes]],
    topic: str,
    name: Literal["rfq_id", "quote_id", "request_id"],
    value: str,
    decoder: msgspec.json.Decoder[T],
    what: str,
) -> T:
    """The first message on ``topic`` whose ``name`` is ``value``, decoded by ``decoder``.

    Raises:
        ReplyError: that message does not decode as the protocol's, or repeats a member.
    """
    async for got, payload in messages:
        if got != topic or len(payload) > MAX_REPLY_BYTES:
            continue
        try:
            if getattr(_names(payload), name) != value:
                continue
        except (msgspec.DecodeError, RecursionError):
            continue  # not an object of ours: someone else's, or nobody's
        try:
            answer = decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise ReplyError(f"the answer to {what} is not a protocol message: {exc}") from None
        repeated = repeated_member(payload)
        if repeated is not None:
            raise ReplyError(f"the answer to {what} gives {repeated!r} twice")
        return answer
    raise ReplyError(f"the connection ended before the answer to {what}")


def _decimal(text: object, field: str, what: str) -> Decimal:
    if not isinstance(text, str):
        raise ReplyError(f"{what}: {field} must be a decimal string, got {text!r}")
    try:
        return wire_decimal(text, field, Code.INVALID_MESSAGE)
    except ProtocolError as exc:
        raise ReplyError(f"{what}: {exc.reason}") from None


def check_quote(rfq: ParsedRfq, quote: Quote) -> None:
    """Check that ``quote`` answers ``rfq``: symbol, side, size, prices on exactly the sides
    asked (plain positive decimals), a two-way bid below its ask.

    Raises:
        ReplyError: naming the first disagreement.
    """
    what = f"quote {quote.quote_id!r}"
    if not quote.quote_id:
        raise ReplyError("the quote has an empty quote_id")
    if quote.symbol != rfq.symbol:
        raise ReplyError(f"{what} is for {quote.symbol!r}, the RFQ for {rfq.symbol!r}")
    if quote.side != rfq.side:
        raise ReplyError(f"{what} is a {quote.side!r} quote, the RFQ a {rfq.side!r}")
    qty = _decimal(quote.qty, "qty", what)
    if rfq.qty is not None and qty != rfq.qty:
        raise ReplyError(f"{what} is for qty {quote.qty}, the RFQ for {rfq.qty}")
    notional = None if quote.notional is None else _decimal(quote.notional, "notional", what)
    if rfq.notional is None and notional is not None:
        raise ReplyError(f"{what} gives a notional, which a qty RFQ does not ask")
    if rfq.notional is not None and notional is None:
        raise ReplyError(f"{what} has no notional, the RFQ asks for notional {rfq.notional}")
    if rfq.notional is not None and notional != rfq.notional:
        raise ReplyError(f"{what} is for notional {quote.notional}, the RFQ {rfq.notional}")
    wanted = {"buy": ("ask",), "sell": ("bid",), "two_way": ("bid", "ask")}[rfq.side]
    prices: dict[str, Decimal] = {}
    for side in ("bid", "ask"):
        price = getattr(quote, side)
        if side not in wanted:
            if price is not None:
                raise ReplyError(f"{what} gives a {side}, which a {rfq.side} RFQ does not ask")
            continue
        if price is None:
            raise ReplyError(f"{what} has no {side}")
        prices[side] = _decimal(price, side, what)
    if len(prices) == 2 and prices["bid"] >= prices["ask"]:
        raise ReplyError(f"{what} bids {quote.bid} at or above its ask {quote.ask}")
    if rfq.notional is not None:  # the client never trades more than the notional asked
        for side, price in sorted(prices.items(), key=lambda item: item[0] != "ask"):
            cost = _EXACT.multiply(qty, price)  # 30 digits each at most: exact
            if cost > rfq.notional:
                raise ReplyError(
                    f"{what} costs {decimal_text(cost)} at its {side} {decimal_text(price)}, "
                    f"over the notional {decimal_text(rfq.notional)} asked"
                )


def check_fill(quote: Quote, side: Literal["buy", "sell"], fill: Fill) -> None:
    """Check that ``fill`` is the fill of the whole ``quote`` on ``side``, at its price.

    Raises:
        ReplyError: naming the first disagreement.
    """
    what = f"fill {fill.trade_id!r} of quote {quote.quote_id!r}"
    if not fill.trade_id:
        raise ReplyError(f"the fill of quote {quote.quote_id!r} has an empty trade_id")
    if fill.side != side:
        raise ReplyError(f"{what} is a {fill.side!r}, the accept a {side!r}")
    if fill.symbol and fill.symbol != quote.symbol:
        raise ReplyError(f"{what} is for {fill.symbol!r}, the quote for {quote.symbol!r}")
    if _decimal(fill.qty, "qty", what) != Decimal(quote.qty):
        raise ReplyError(f"{what} is for qty {fill.qty}, the quote for {quote.qty}")
    quoted = quote.ask if side == "buy" else quote.bid  # a client buy fills at our ask
    if quoted is None or _decimal(fill.price, "price", what) != Decimal(quoted):
        raise ReplyError(f"{what} is at {fill.price}, the quote at {quoted}")


def new_rfq(
    symbol: str, side: str, *, qty: str | None = None, notional: str | None = None
) -> tuple[Rfq, ParsedRfq]:
    """An RFQ with a fresh id, and its parsed form.

    Raises:
        ProtocolError: a size or side the engine would refuse (named as it would).
    """
    rfq = Rfq(rfq_id=uuid.uuid4().hex[:16], symbol=symbol, side=side, qty=qty, notional=notional)
    return rfq, check_rfq(rfq)


async def request_quote(bus: Bus, client: str, rfq: Rfq) -> Quote | Reject:
    """Publish ``rfq`` as ``client`` and return the engine's answer (subscribed before the
    RFQ leaves, so that the answer cannot be missed), checked against the RFQ when a quote.

    Raises:
        ReplyError: see the module's docstring.
        ProtocolError: ``rfq`` itself is invalid.
        BusError: from the bus.
    """
    parsed = check_rfq(rfq)
    topic = QUOTES_TOPIC.format(client=client)
    await bus.subscribe(topic, FILLS_TOPIC.format(client=client))
    await bus.publish(Outgoing(RFQ_TOPIC.format(client=client), _encode(rfq)))
    answer = await _answer(
        bus.messages(), topic, "rfq_id", rfq.rfq_id, _quote_answer, f"RFQ {rfq.rfq_id!r}"
    )
    if isinstance(answer, Quote):
        check_quote(parsed, answer)
    return answer


async def accept_quote(
    bus: Bus, client: str, quote: Quote, side: Literal["buy", "sell"]
) -> Fill | AcceptReject:
    """Accept the whole of ``quote`` on ``side`` as ``client`` (subscribed to its fills by
    :func:`request_quote`) and return the engine's answer, checked against the quote when a
    fill.

    Raises:
        ReplyError: see the module's docstring.
        BusError: from the bus.
    """
    accept = Accept(quote_id=quote.quote_id, side=side if quote.side == "two_way" else None)
    await bus.publish(Outgoing(ACCEPT_TOPIC.format(client=client), _encode(accept)))
    what = f"the accept of quote {quote.quote_id!r}"
    topic = FILLS_TOPIC.format(client=client)
    answer = await _answer(bus.messages(), topic, "quote_id", quote.quote_id, _fill_answer, what)
    if isinstance(answer, Fill):
        check_fill(quote, side, answer)
    return answer


async def send_control(bus: Bus, operator: str, control: Control) -> ControlResult:
    """Publish ``control`` as ``operator`` with a fresh ``request_id`` and return the engine's
    result for it (not any other on the shared result topic).

    Raises:
        ReplyError: the result names our request but does not decode, or is for another
            command.
        ProtocolError: ``control`` itself is invalid.
        BusError: from the bus.
    """
    control = msgspec.structs.replace(control, request_id=uuid.uuid4().hex[:16])
    check_control(control)
    topic = CONTROL_RESULT_TOPIC.format(operator=operator)
    await bus.subscribe(topic)
    await bus.publish(Outgoing(CONTROL_TOPIC.format(operator=operator), _encode(control)))
    assert control.request_id is not None
    what = f"command {control.command!r}"
    result = await _answer(
        bus.messages(), topic, "request_id", control.request_id, _control_answer, what
    )
    if result.command != control.command and result.command != "?":
        raise ReplyError(f"the answer to {what} is for {result.command!r}")
    return result
