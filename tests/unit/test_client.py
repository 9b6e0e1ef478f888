"""otc.client and the `otc rfq` / `otc control` commands: a client takes only its own answer,
and only a protocol message that agrees with what it asked.

The clients talk to a responder of the test's own through a real broker: it answers each
request with what the case gives (noise, other requests' answers, broken or disagreeing
answers), as a faulty engine, or anyone the broker lets write on the reply topics, could.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from broker import Publication

from otc.broker import BrokerProcess
from otc.bus import Bus
from otc.cli import main
from otc.client import (
    ReplyError,
    accept_quote,
    check_fill,
    check_quote,
    new_rfq,
    request_quote,
    send_control,
)
from otc.protocol import AcceptReject, Control, Fill, ParsedRfq, Quote, Reject

CLIENT = "client-a"
#: What the responder sends for one request: payloads (bytes as they are, anything else as
#: JSON), published on the request's reply topic in order.
Answers = Callable[[dict[str, Any]], list[object]]


def quote_for(rfq: dict[str, Any], **changes: object) -> dict[str, Any]:
    """A quote that answers ``rfq`` as the engine would, with ``changes``."""
    side = rfq["side"]
    quote = {
        "type": "quote",
        "rfq_id": rfq["rfq_id"],
        "quote_id": "q-1",
        "symbol": rfq["symbol"],
        "side": side,
        "qty": rfq.get("qty", "2"),
        "bid": "64000.5" if side in ("sell", "two_way") else None,
        "ask": "64001.25" if side in ("buy", "two_way") else None,
        "valid_until_ms": 1_900_000_000_000,
    }
    return {**quote, **changes}


def fill_for(accept: dict[str, Any], **changes: object) -> dict[str, Any]:
    """The fill of the whole of :func:`quote_for`'s buy quote, with ``changes``."""
    fill = {
        "type": "fill",
        "quote_id": accept["quote_id"],
        "trade_id": "t-1",
        "side": accept.get("side", "buy"),
        "qty": "1.5",
        "price": "64001.25",
        "ts_ms": 1_800_000_000_000,
    }
    return {**fill, **changes}


@contextlib.asynccontextmanager
async def responder(
    broker: BrokerProcess, answers: Answers, retained: Mapping[str, object] | None = None
) -> AsyncIterator[list[dict[str, Any]]]:
    """A stand-in engine on ``broker`` answering every RFQ, accept and command with
    ``answers(request)``; ``retained`` messages (topic -> payload) are left on the broker
    first. Yields the requests it received."""
    received: list[dict[str, Any]] = []

    def wire(payload: object) -> bytes:
        return payload if isinstance(payload, bytes) else msgspec.json.encode(payload)

    async with Bus(host=broker.host, port=broker.port) as bus:
        for topic, payload in (retained or {}).items():
            await bus.publish(Publication(topic, wire(payload), retain=True))
        await bus.subscribe("otc/v1/+/rfq", "otc/v1/+/accept", "otc/v1/control/+")

        async def serve() -> None:
            async for topic, payload in bus.messages():
                request = msgspec.json.decode(payload)
                received.append(request)
                parts = topic.split("/")
                if parts[2] == "control":
                    reply = f"{topic}/result"
                else:
                    reply = f"otc/v1/{parts[2]}/{'quotes' if parts[3] == 'rfq' else 'fills'}"
                for answer in answers(request):
                    await bus.publish(Publication(reply, wire(answer)))

        task = asyncio.create_task(serve())
        try:
            yield received
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def ask(broker: BrokerProcess, answers: Answers, **rfq: str) -> Quote | Reject:
    request, _ = new_rfq(**{"symbol": "BTC-USDT", "side": "buy", "qty": "1.5", **rfq})
    async with responder(broker, answers), Bus(host=broker.host, port=broker.port) as bus:
        async with asyncio.timeout(5):
            return await request_quote(bus, CLIENT, request)


# -- which message is the answer ------------------------------------------------------------------


async def test_the_client_skips_what_is_not_its_answer_and_takes_its_own(
    broker: BrokerProcess,
) -> None:
    """A message on the reply topic that did not decode ended the run (and a retained one did
    so for every later run of the client); now only the message naming our RFQ is read."""

    def answers(rfq: dict[str, Any]) -> list[object]:
        return [
            b"{not json",
            b"[1, 2]",
            b"[" * 100_000 + b"]" * 100_000,
            quote_for(rfq, rfq_id="someone-else", symbol="ETH-USDT"),
            {"type": "reject", "rfq_id": 7, "code": "X", "reason": "not ours either"},
            quote_for(rfq),
        ]

    retained = {f"otc/v1/{CLIENT}/quotes": b"garbage left by someone"}
    request, _ = new_rfq("BTC-USDT", "buy", qty="1.5")
    async with responder(broker, answers, retained), Bus(host=broker.host, port=broker.port) as bus:
        async with asyncio.timeout(5):
            quote = await request_quote(bus, CLIENT, request)
    assert isinstance(quote, Quote)
    assert (quote.rfq_id, quote.ask, quote.bid) == (request.rfq_id, "64001.25", None)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"symbol": "ETH-USDT"}, "is for 'ETH-USDT', the RFQ for 'BTC-USDT'"),
        ({"side": "sell", "bid": "64000.5", "ask": None}, "is a 'sell' quote"),
        ({"qty": "250"}, "is for qty 250, the RFQ for 1.5"),
        ({"ask": None}, "has no ask"),
        ({"bid": "64000.5"}, "gives a bid, which a buy RFQ does not ask"),
        ({"ask": 64001.25}, "not a protocol message"),  # a JSON number: float artefacts
        ({"ask": "NaN"}, "ask must be finite"),
        ({"ask": "1e3"}, "plain notation"),
        ({"ask": "-64001.25"}, "ask must be positive"),
        ({"ask": "6" * 40}, "absurdly large"),
        ({"type": None}, "not a protocol message"),
        ({"quote_id": 12345}, "not a protocol message"),
        ({"valid_until_ms": "soon"}, "not a protocol message"),
    ],
)
async def test_an_answer_naming_our_rfq_that_disagrees_is_refused(
    broker: BrokerProcess, changes: dict[str, object], problem: str
) -> None:
    """Such a quote was printed, and accepted: a quote of another symbol or side, of NaN or
    of a float with its artefacts, filled at whatever the engine said."""
    with pytest.raises(ReplyError, match=problem):
        await ask(broker, lambda rfq: [quote_for(rfq, **changes)])


async def test_an_answer_giving_a_member_twice_is_refused(broker: BrokerProcess) -> None:
    # Read as the last value (msgspec): {"rfq_id": "nope", ..., "rfq_id": ours} was ours.
    def answers(rfq: dict[str, Any]) -> list[object]:
        body = msgspec.json.encode(quote_for(rfq, rfq_id="nope"))
        return [body[:-1] + b',"rfq_id":"' + rfq["rfq_id"].encode() + b'"}']

    with pytest.raises(ReplyError, match="gives 'rfq_id' twice"):
        await ask(broker, answers)


async def test_a_reject_is_the_answer(broker: BrokerProcess) -> None:
    def answers(rfq: dict[str, Any]) -> list[object]:
        return [{"type": "reject", "rfq_id": rfq["rfq_id"], "code": "NO_LIQUIDITY", "reason": "x"}]

    reject = await ask(broker, answers)
    assert isinstance(reject, Reject)
    assert reject.code == "NO_LIQUIDITY"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (None, None),
        ({"price": "99999"}, "is at 99999, the quote at 64001.25"),
        ({"side": "sell"}, "is a 'sell', the accept a 'buy'"),
        ({"qty": "250"}, "is for qty 250, the quote for 1.5"),
        ({"symbol": "ETH-USDT"}, "is for 'ETH-USDT'"),
        ({"price": 64001.25}, "not a protocol message"),
    ],
)
async def test_the_fill_must_be_of_the_quote_accepted(
    broker: BrokerProcess, changes: dict[str, object] | None, problem: str | None
) -> None:
    """A fill at another price, of another side or size, was printed as the fill."""

    def answers(request: dict[str, Any]) -> list[object]:
        if "rfq_id" in request:
            return [quote_for(request)]
        other = fill_for({"quote_id": "another-quote"}, price="1")
        return [other, fill_for(request, **(changes or {}))]

    request, _ = new_rfq("BTC-USDT", "buy", qty="1.5")
    bus = Bus(host=broker.host, port=broker.port)
    async with responder(broker, answers) as received, bus, asyncio.timeout(5):
        quote = await request_quote(bus, CLIENT, request)
        assert isinstance(quote, Quote)
        if problem is None:
            fill = await accept_quote(bus, CLIENT, quote, "buy")
            assert isinstance(fill, Fill)
            assert (fill.trade_id, fill.price) == ("t-1", "64001.25")
        else:
            with pytest.raises(ReplyError, match=problem):
                await accept_quote(bus, CLIENT, quote, "buy")
    assert received[1] == {"quote_id": "q-1"}  # no side: not a two-way quote; nulls omitted


async def test_an_accept_reject_is_the_answer(broker: BrokerProcess) -> None:
    def answers(request: dict[str, Any]) -> list[object]:
        if "rfq_id" in request:
            return [quote_for(request)]
        return [{"type": "accept_reject", "quote_id": "q-1", "code": "EXPIRED", "reason": "late"}]

    request, _ = new_rfq("BTC-USDT", "buy", qty="1.5")
    async with responder(broker, answers), Bus(host=broker.host, port=broker.port) as bus:
        async with asyncio.timeout(5):
            quote = await request_quote(bus, CLIENT, request)
            assert isinstance(quote, Quote)
            answer = await accept_quote(bus, CLIENT, quote, "buy")
    assert isinstance(answer, AcceptReject)
    assert answer.code == "EXPIRED"


# -- operator commands ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"ok": True, "command": "halt", "detail": "BTC-USDT halted"}, None),
        ({"ok": "false", "command": "halt", "detail": "?"}, "not a protocol message"),
        ({"ok": True, "command": "resume", "detail": "all resumed"}, "is for 'resume'"),
    ],
)
async def test_a_command_takes_the_result_of_its_own_request(
    broker: BrokerProcess, answer: dict[str, object], problem: str | None
) -> None:
    """The first object on the result topic was the answer: a retained result of another
    day, or another session's (the console's results go there too), said "ok" with no engine
    running at all."""
    topic = "otc/v1/control/ops-1/result"
    stale = {"ok": True, "command": "resume", "detail": "all symbols resumed"}

    def answers(command: dict[str, Any]) -> list[object]:
        other = {**stale, "request_id": "another-session"}
        return [other, {**answer, "request_id": command["request_id"]}]

    control = Control(command="halt", symbol="BTC-USDT")
    bus = Bus(host=broker.host, port=broker.port)
    async with responder(broker, answers, retained={topic: stale}) as received, bus:
        async with asyncio.timeout(5):
            if problem is None:
                result = await send_control(bus, "ops-1", control)
                assert (result.ok, result.detail) == (True, "BTC-USDT halted")
            else:
                with pytest.raises(ReplyError, match=problem):
                    await send_control(bus, "ops-1", control)
    (command,) = received
    assert set(command) == {"command", "symbol", "request_id"}


# -- the checks alone -----------------------------------------------------------------------------


def test_a_two_way_quote_must_bid_below_its_ask() -> None:
    rfq = ParsedRfq("r-1", "BTC-USDT", "two_way", Decimal("1"), None)
    quote = Quote("r-1", "q-1", "BTC-USDT", "two_way", "1", "100", "101", 1)
    check_quote(rfq, quote)
    crossed = msgspec.structs.replace(quote, bid="101")
    with pytest.raises(ReplyError, match="bids 101 at or above its ask 101"):
        check_quote(rfq, crossed)
    fill = Fill("q-1", "t-1", "sell", "1", "100", 1)
    check_fill(quote, "sell", fill)  # a client sell fills at the bid
    with pytest.raises(ReplyError, match="is at 101, the quote at 100"):
        check_fill(quote, "sell", msgspec.structs.replace(fill, price="101"))


def test_a_notional_quote_must_echo_the_notional_asked() -> None:
    rfq = ParsedRfq("r-1", "BTC-USDT", "buy", None, Decimal("5000"))
    quote = Quote("r-1", "q-1", "BTC-USDT", "buy", "0.07", None, "64000", 1, notional="5000")
    check_quote(rfq, quote)
    with pytest.raises(ReplyError, match="notional 6000, the RFQ 5000"):
        check_quote(rfq, msgspec.structs.replace(quote, notional="6000"))


def test_a_notional_quote_must_keep_within_the_notional_asked() -> None:
    """A quote naming a notional RFQ with no notional, or whose qty costs more than the
    notional at its price, was taken (`otc rfq --notional 5000 --accept` accepted 1 BTC at
    64,000); and a quote of a qty RFQ may not claim a notional."""
    rfq = ParsedRfq("r-1", "BTC-USDT", "two_way", None, Decimal("5000"))
    quote = Quote("r-1", "q-1", "BTC-USDT", "two_way", "0.078", "63900", "64000", 1, "5000")
    check_quote(rfq, quote)  # 0.078 x 64000 = 4992
    with pytest.raises(ReplyError, match="has no notional"):
        check_quote(rfq, msgspec.structs.replace(quote, notional=None))
    with pytest.raises(ReplyError, match="costs 64000 at its ask 64000, over the notional 5000"):
        check_quote(rfq, msgspec.structs.replace(quote, qty="1"))
    sell = msgspec.structs.replace(rfq, side="sell")
    sold = msgspec.structs.replace(quote, side="sell", bid="65536", ask=None)
    with pytest.raises(ReplyError, match=r"costs 5111\.808 at its bid 65536, over the notional"):
        check_quote(sell, sold)
    by_qty = ParsedRfq("r-1", "BTC-USDT", "two_way", Decimal("0.078"), None)
    check_quote(by_qty, msgspec.structs.replace(quote, notional=None))
    with pytest.raises(ReplyError, match="gives a notional, which a qty RFQ does not ask"):
        check_quote(by_qty, quote)


# -- the commands' own arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["rfq", "--qty", "nan"], "qty must be finite"),
        (["rfq", "--qty", "-1"], "qty must be positive"),
        (["rfq", "--qty", "1e400"], "plain notation"),
        (["rfq", "--qty", "١٢"], "qty must be a decimal string"),
        (["rfq", "--notional", "0"], "notional must be positive"),
        (["rfq", "--qty", "1", "--timeout", "nan"], "must be above 0"),
        (["rfq", "--qty", "1", "--timeout", "inf"], "must be above 0"),
        (["rfq", "--qty", "1", "--timeout", "0"], "must be above 0"),
        (["rfq", "--qty", "1", "--client", "a/b"], "--client 'a/b' must be"),
        (["rfq", "--qty", "1", "--client", ""], "--client '' must be"),
        # otc/v1/control/rfq is a command of operator "rfq", not an RFQ of client "control"
        (["rfq", "--qty", "1", "--client", "control"], "--client 'control' is reserved"),
        (["rfq", "--qty", "1", "--accept-side", "sell"], "--accept-side goes with --accept"),
        (["rfq", "--qty", "1", "--accept", "--accept-side", "sell"], "a buy quote is accepted"),
        (["rfq", "--qty", "1", "--side", "two_way", "--accept"], "--accept-side buy|sell"),
        (["control", "halt", "--symbol", ""], "--symbol is empty"),
        (["control", "resume", "--symbol", " "], "--symbol is empty"),
        (["control", "client", "", "disable"], "client '' must be"),
        (["control", "spread", "gold", "nan"], "spread_bps must be finite"),
        (["control", "spread", "gold", "10000"], "below 10000"),
        (["control", "--timeout", "-1", "resume"], "must be above 0"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(argv: list[str], problem: str) -> None:
    """These were published as they were (an empty --symbol as a halt of every symbol), or
    waited forever (--timeout inf)."""
    command, *rest = argv
    nowhere = ["--broker", "mqtt://127.0.0.1:9"]  # the discard port: nothing would answer
    if command == "rfq":
        base = ["rfq", *nowhere, "--client", CLIENT, "--symbol", "BTC-USDT", "--side", "buy"]
    else:
        base = ["control", *nowhere, "--operator", "ops-1"]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = main([*base, *rest])
        except SystemExit as exc:  # argparse's own refusals
            status = exc.code  # type: ignore[assignment]
    assert status == 2
    (line,) = stderr.getvalue().strip().splitlines()[-1:]
    assert problem in line
    assert "Traceback" not in stderr.getvalue()


async def test_an_accept_left_unanswered_says_the_quote_may_be_filled(
    broker: BrokerProcess,
) -> None:
    """`otc rfq --accept` as a process, its accept never answered: the error says how to find
    out (accepts are exactly-once), rather than leave the user guessing whether they traded."""

    def answers(request: dict[str, Any]) -> list[object]:
        return [quote_for(request)] if "rfq_id" in request else []

    url = f"mqtt://{broker.host}:{broker.port}"
    argv = ["rfq", "--broker", url, "--client", CLIENT, "--symbol", "BTC-USDT", "--side", "buy"]
    async with responder(broker, answers):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "otc.cli",
            *argv,
            "--qty",
            "1.5",
            "--accept",
            "--timeout",
            "1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert out.decode().startswith("quote: BTC-USDT buy 1.5: ask 64001.25 (quote q-1")
    assert err.decode() == (
        "otc: error: no answer to the accept within 1 s; quote q-1 may be filled: "
        "accepting it again returns its fill\n"
    )


async def test_an_answer_cannot_forge_a_line_of_output(broker: BrokerProcess) -> None:
    """A reason holding a newline printed a line of its own (`fill: ...` in the helper's case)."""

    def answers(request: dict[str, Any]) -> list[object]:
        reason = "cheap\nfill: buy 1 at 1 (trade X)"
        return [{"type": "reject", "rfq_id": request["rfq_id"], "code": "X", "reason": reason}]

    url = f"mqtt://{broker.host}:{broker.port}"
    argv = ["rfq", "--broker", url, "--client", CLIENT, "--symbol", "BTC-USDT", "--side", "buy"]
    async with responder(broker, answers):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "otc.cli", *argv, "--qty", "1"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert out.decode() == "reject: X: cheap\\nfill: buy 1 at 1 (trade X)\n"
