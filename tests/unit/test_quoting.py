"""otc.quoting: the RFQ/accept lifecycle, every reject code, limits, exactly-once fills, journal.

Books come from the seeded synthetic market (six venues, as in ``config/otc.toml``) or, where
exact numbers matter, from the two-venue book of :mod:`otc.pricing`'s worked example. Time is a
:class:`FakeClock`; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import otc.book
import otc.quoting
from feeds.sim import SyntheticMarket
from otc.clock import FakeClock
from otc.config import (
    ClientConfig,
    Config,
    InstrumentConfig,
    InventoryConfig,
    RiskConfig,
    TierConfig,
    VenueConfig,
    load_config,
)
from otc.errors import OtcError
from otc.journal import JournalError, JournalEvent, MemoryJournal, Receipt
from otc.market import Market
from otc.model import BookSnapshot, Scale, Side, plain
from otc.protocol import MAX_PAYLOAD_BYTES, Code, ProtocolError, parse_rfq
from otc.quoting import Outgoing, QuoteEngine
from otc.slippage import ImpactModel

REPO_CONFIG = Path(__file__).parents[2] / "config" / "otc.toml"
D = Decimal
SCALE = Scale(8, 8)
replace = msgspec.structs.replace


# -- fixtures ---------------------------------------------------------------------------------


class Desk:
    """An engine over a market, with a fake clock and an in-memory journal, and helpers."""

    def __init__(self, config: Config, refresh: Callable[[Market, int], None]) -> None:
        self.config = config
        self.clock = FakeClock()
        self.journal = MemoryJournal()
        self.market = Market(config)
        self._refresh = refresh
        self.refresh()
        self.engine = QuoteEngine(config, self.market, self.journal, self.clock)
        self.sent: list[tuple[str, Outgoing]] = []  # (client, message) of everything returned

    def refresh(self) -> None:
        """Fresh snapshots of every book, stamped now."""
        self._refresh(self.market, self.clock.now_ns())

    async def send_rfq(self, client: str, payload: bytes) -> dict[str, Any]:
        out = await self.engine.on_rfq(client, payload)
        assert len(out) == 1
        assert out[0].topic == f"otc/v1/{client}/quotes"
        assert out[0].retain is False
        self.sent.append((client, out[0]))
        message: dict[str, Any] = msgspec.json.decode(out[0].payload)
        return message

    async def rfq(self, client: str = "client-a", **fields: str | None) -> dict[str, Any]:
        body = {"rfq_id": f"r{len(self.sent)}", "symbol": "BTC-USDT", "side": "buy", **fields}
        if "notional" not in body and "qty" not in body:
            body["qty"] = "1"
        return await self.send_rfq(client, msgspec.json.encode(body))

    async def quote(self, client: str = "client-a", **fields: str | None) -> dict[str, Any]:
        message = await self.rfq(client, **fields)
        assert message["type"] == "quote", message
        return message

    async def send_accept(self, client: str, payload: bytes) -> dict[str, Any]:
        out = await self.engine.on_accept(client, payload)
        assert len(out) == 1
        assert out[0].topic == f"otc/v1/{client}/fills"
        self.sent.append((client, out[0]))
        message: dict[str, Any] = msgspec.json.decode(out[0].payload)
        return message

    async def accept(
        self, quote_id: str, client: str = "client-a", **fields: str
    ) -> dict[str, Any]:
        return await self.send_accept(client, msgspec.json.encode({"quote_id": quote_id, **fields}))

    def explanations(self) -> list[Any]:
        """The explanation of every journaled quote, as the journal writes it (plain text)."""
        return [plain(e.payload["explanation"]) for e in self.events("quote")]

    def kinds(self) -> list[str]:
        return [e.kind for e in self.journal.events]

    def events(self, kind: str) -> list[JournalEvent]:
        return [e for e in self.journal.events if e.kind == kind]


def sim_refresh(seed: int = 7) -> Callable[[Market, int], None]:
    sims: dict[str, SyntheticMarket] = {}

    def refresh(market: Market, now_ns: int) -> None:
        for symbol, mid in (("BTC-USDT", "64000"), ("ETH-USDT", "3200")):
            inst = market.config.instrument(symbol)
            sim = sims.setdefault(
                symbol, SyntheticMarket(symbol, inst.scale, mid=D(mid), seed=seed)
            )
            for event in sim.snapshot_events(now_ns):
                market.apply(event)

    return refresh


def repo_config(**sections: Any) -> Config:
    config = load_config(REPO_CONFIG)
    for name, changes in sections.items():
        sections[name] = replace(getattr(config, name), **changes)
    return replace(config, **sections)


def levels(rows: list[tuple[str, str]]) -> list[tuple[int, int]]:
    return [(SCALE.price(p), SCALE.size(q)) for p, q in rows]


EXAMPLE_BOOKS = {
    "alpha": ([("63990", "2")], [("64010", "1"), ("64030", "4")]),
    "beta": ([("63980", "3")], [("64020", "2"), ("64060", "5")]),
}


def example_refresh(
    books: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] | None = None,
) -> Callable[[Market, int], None]:
    def refresh(market: Market, now_ns: int) -> None:
        for seq, (venue, (bids, asks)) in enumerate((books or EXAMPLE_BOOKS).items(), 1):
            market.apply(
                BookSnapshot(venue, "BTC-USDT", levels(bids), levels(asks), seq, now_ns, now_ns)
            )

    return refresh


def example_config(impact: bool = False, **changes: Any) -> Config:
    """The worked example of otc.pricing: two venues, a gold client, long 10 BTC of 50."""
    model = ImpactModel(daily_volatility_bps=D(300), daily_volume=D(25_000)) if impact else None
    config = Config(
        instruments=[
            InstrumentConfig(
                symbol="BTC-USDT",
                base="BTC",
                quote="USDT",
                tick_size=D("0.01"),
                lot_size=D("0.00001"),
                impact=model,
                ladder_bands=[D(1), D("2.5"), D(20)],
            )
        ],
        venues=[
            VenueConfig(name="alpha", taker_fee_bps=D(10), symbols={"BTC-USDT": "A"}),
            VenueConfig(name="beta", taker_fee_bps=D("2.5"), symbols={"BTC-USDT": "B"}),
        ],
        tiers={"gold": TierConfig(spread_bps=D(2))},
        risk=RiskConfig(
            volatility_coefficient=D(1),
            hedge_latency_ms=240,
            default_daily_volatility_bps=D(300),
            size_premium_bps_per_million_notional=D(1),
        ),
        inventory=InventoryConfig(limits={"BTC": D(50)}, skew_bps_at_limit=D(5)),
        clients=[
            ClientConfig(
                id="client-a",
                tier="gold",
                symbols=["BTC-USDT"],
                max_trade_notional=D(10**9),
                max_daily_notional=D(10**10),
            )
        ],
    )
    if impact:
        config = replace(config, estimator=replace(config.estimator, use_impact_model=True))
    return replace(config, **changes)


@pytest.fixture
def desk() -> Desk:
    return Desk(repo_config(), sim_refresh())


@pytest.fixture
def example() -> Desk:
    desk = Desk(example_config(), example_refresh())
    desk.engine.set_position("BTC", D(10), operator="test")
    return desk


def rfq_bytes(**fields: object) -> bytes:
    body: dict[str, object] = {"rfq_id": "x1", "symbol": "BTC-USDT", "side": "buy", "qty": "1"}
    body.update(fields)
    return msgspec.json.encode({k: v for k, v in body.items() if v is not None})


# -- quotes -----------------------------------------------------------------------------------


async def test_the_worked_example_is_quoted_exactly(example: Desk) -> None:
    quote = await example.quote(side="two_way", qty="2.5")
    assert (quote["bid"], quote["ask"]) == ("63940.59", "64054.24")
    assert quote["qty"] == "2.5"
    assert quote["side"] == "two_way"
    explanation = example.explanations()[0]
    ask = explanation["ask"]
    assert ask["hedge_vwap"] == "64018"
    assert ask["hedge_all_in"] == "64043.606"
    assert ask["route"] == {
        "alpha": {"qty": "0.5", "notional": "32005"},
        "beta": {"qty": "2", "notional": "128040"},
    }
    assert (ask["spread_bps"], ask["risk_bps"], ask["skew_bps"]) == ("2", "0.66", "-1")
    assert (ask["risk_volatility_bps"], ask["risk_size_bps"]) == ("0.5", "0.16")
    assert ask["price_raw"] == "64054.237238596"
    assert ask["books"] == {
        "alpha": {"sequence": 1, "age_ms": 0},
        "beta": {"sequence": 2, "age_ms": 0},
    }
    assert explanation["bid"]["price_raw"] == "63940.59417417"


async def test_the_skew_follows_the_position_after_every_fill_and_control(example: Desk) -> None:
    """Long 10 BTC of a 50 limit at 5 bps: -1 bps; each fill or control moves it at once."""
    skews = []
    for step in ("start", "fill", "control", "fill"):
        if step == "fill":
            quote = await example.quote(qty="5")  # the client buys 5: the desk sells 5
            assert (await example.accept(quote["quote_id"]))["type"] == "fill"
        elif step == "control":
            example.engine.set_position("BTC", D(-25), operator="test")
        await example.quote(qty="1")
        skews.append(example.explanations()[-1]["ask"]["skew_bps"])
    assert skews == ["-1", "-0.5", "2.5", "3"]


async def test_what_a_quote_leaves_behind_is_out_of_the_garbage_collectors_walks(
    desk: Desk,
) -> None:
    """The journal's and the console's recent events hold every quote's explanation for a
    while: immutable, untracked structs keep the collector's full walks short (p99)."""
    await desk.quote(side="two_way", qty="1")
    event = desk.events("quote")[-1]
    explanations = event.payload["explanation"]
    assert isinstance(explanations, dict)
    assert not gc.is_tracked(event)
    for expl in explanations.values():
        assert not gc.is_tracked(expl)
        assert isinstance(expl.excluded, tuple)
        assert not any(gc.is_tracked(v) for v in (*expl.route.values(), *expl.books.values()))


async def test_a_quote_is_firm_for_the_ttl_and_addressed_to_the_asking_client(desk: Desk) -> None:
    now_ms = desk.clock.now_ns() // 1_000_000
    quote = await desk.quote(rfq_id="mine-1", qty="0.5")
    assert quote["rfq_id"] == "mine-1"
    assert quote["symbol"] == "BTC-USDT"
    assert (quote["side"], quote["qty"]) == ("buy", "0.5")
    assert quote["bid"] is None
    assert D(quote["ask"]) > 0
    assert quote["valid_until_ms"] == now_ms + desk.config.quoting.quote_ttl_ms
    sell = await desk.quote(side="sell", qty="0.5")
    assert sell["ask"] is None
    assert D(sell["bid"]) < D(quote["ask"])


@pytest.mark.parametrize(
    ("ttl_ms", "into_the_ms_ns", "expiry_s"),
    [
        (1500, 0, 2),  # 1.5 s left: the broker keeps it 2 s
        (3000, 0, 3),  # exactly 3 s left
        (3000, 400_000, 3),  # 2,999.6 ms left (validity counts from the whole ms)
        (2001, 0, 3),
        (1, 999_999, 1),  # 1 ns left
    ],
)
async def test_a_quote_expires_in_the_broker_its_validity_rounded_up_to_seconds(
    ttl_ms: int, into_the_ms_ns: int, expiry_s: int
) -> None:
    """MQTT 5's Message Expiry Interval counts whole seconds: never less than the validity."""
    desk = Desk(repo_config(quoting={"quote_ttl_ms": ttl_ms}), sim_refresh())
    desk.clock.advance(ns=into_the_ms_ns)
    quote = await desk.quote()
    assert desk.sent[-1][1].expiry_s == expiry_s
    left_ns = quote["valid_until_ms"] * 1_000_000 - desk.clock.now_ns()
    assert (expiry_s - 1) * 1_000_000_000 < left_ns <= expiry_s * 1_000_000_000


async def test_rejects_fills_and_accept_rejects_do_not_expire_in_the_broker(desk: Desk) -> None:
    """A client must always learn its fill; an RFQ reject has no validity to expire with."""
    await desk.rfq(qty="-1")
    quote = await desk.quote()
    await desk.accept("nope")
    await desk.accept(quote["quote_id"])
    kinds = [msgspec.json.decode(out.payload)["type"] for _, out in desk.sent]
    assert kinds == ["reject", "quote", "accept_reject", "fill"]
    assert [out.expiry_s for _, out in desk.sent] == [None, 3, None, None]


async def test_two_way_prices_both_sides_like_the_one_sided_quotes(desk: Desk) -> None:
    two_way = await desk.quote(side="two_way", qty="3")
    buy = await desk.quote(side="buy", qty="3")
    sell = await desk.quote(side="sell", qty="3")
    assert D(two_way["bid"]) < D(two_way["ask"])
    assert (two_way["bid"], two_way["ask"]) == (sell["bid"], buy["ask"])
    explanation = desk.explanations()[0]
    assert set(explanation) == {"bid", "ask"}


async def test_prices_are_rounded_to_the_tick_in_the_desks_favour(desk: Desk) -> None:
    tick = desk.config.instrument("BTC-USDT").tick_size
    for qty in ("0.1", "0.73", "2.5", "11.11111"):
        await desk.quote(side="two_way", qty=qty)
    for explanation in desk.explanations():
        ask, bid = explanation["ask"], explanation["bid"]
        assert D(ask["price"]) % tick == 0
        assert D(bid["price"]) % tick == 0
        assert D(ask["price_raw"]) <= D(ask["price"]) < D(ask["price_raw"]) + tick
        assert D(bid["price_raw"]) - tick < D(bid["price"]) <= D(bid["price_raw"])
        assert D(ask["price"]) > D(ask["hedge_all_in"])  # spread and risk on top of the hedge
        assert D(bid["price"]) < D(bid["hedge_all_in"])


async def test_a_notional_request_is_quoted_for_the_lots_it_buys(desk: Desk) -> None:
    lot = desk.config.instrument("BTC-USDT").lot_size
    for side, key in (("buy", "ask"), ("sell", "bid")):
        quote = await desk.quote(side=side, notional="100000")
        qty, price = D(quote["qty"]), D(quote[key])
        assert quote["notional"] == "100000"
        assert qty % lot == 0
        assert qty * price <= 100_000
        assert (qty + 2 * lot) * price > 100_000  # as many lots as the notional pays for
    two_way = await desk.quote(side="two_way", notional="250000.5")
    qty = D(two_way["qty"])
    assert qty * D(two_way["ask"]) <= D("250000.5")
    assert qty * D(two_way["bid"]) <= D("250000.5")


async def test_a_notional_sell_is_cut_until_it_fits_the_notional_at_its_own_bid() -> None:
    """A client sell's bid rises as its qty falls: one cut to floor(notional / bid) may leave
    a qty whose own (higher) bid pays more than the notional asked, so it is cut again.

    Worked by hand: lots of 1 BTC, one venue, no fee, spread or risk premium; the desk short at
    its limit with a 2000 bps skew (bid = all-in x 1.2). Bids 200 x 3, 50 x 1000; 716 USDT:
    the hedge walk sizes it 5 (all-in 140, bid 168); 716 / 168 -> 4 (all-in 162.5, bid 195:
    780 > 716); 716 / 195 -> 3 (all-in 200, bid 240: 720 > 716, where the engine stopped);
    716 / 240 -> 2 (bid 240: 480 <= 716).
    """
    book = {"alpha": ([("200", "3"), ("50", "1000")], [("201", "1000")])}
    config = example_config()
    config = replace(
        config,
        instruments=[replace(config.instruments[0], lot_size=D(1), ladder_bands=[])],
        venues=[VenueConfig(name="alpha", taker_fee_bps=D(0), symbols={"BTC-USDT": "A"})],
        tiers={"gold": TierConfig(spread_bps=D(0))},
        risk=RiskConfig(
            volatility_coefficient=D(0),
            hedge_latency_ms=240,
            default_daily_volatility_bps=D(300),
            size_premium_bps_per_million_notional=D(0),
        ),
        inventory=InventoryConfig(limits={"BTC": D(100)}, skew_bps_at_limit=D(2000)),
    )
    desk = Desk(config, example_refresh(book))
    desk.engine.set_position("BTC", D(-100), operator="test")
    quote = await desk.quote(side="sell", notional="716")
    assert (quote["qty"], quote["bid"]) == ("2", "240")
    assert D(quote["qty"]) * D(quote["bid"]) <= 716


async def test_a_tier_spread_change_applies_to_the_next_quote(desk: Desk) -> None:
    before = await desk.quote(qty="1")
    desk.engine.set_tier_spread("gold", D(50), operator="ops")
    after = await desk.quote(qty="1")
    assert D(after["ask"]) > D(before["ask"]) * D("1.0045")


async def test_book_ages_and_sequences_are_in_the_explanation(example: Desk) -> None:
    example.clock.advance(ms=750)
    await example.quote(qty="1")
    explanation = example.explanations()[0]
    assert explanation["ask"]["books"] == {
        "alpha": {"sequence": 1, "age_ms": 750},
        "beta": {"sequence": 2, "age_ms": 750},
    }


async def test_quote_ids_are_unique_within_and_across_runs(desk: Desk) -> None:
    ids = {(await desk.quote(qty="0.01"))["quote_id"] for _ in range(30)}
    other = QuoteEngine(desk.config, desk.market, MemoryJournal(), desk.clock)
    out = await other.on_rfq("client-a", rfq_bytes(rfq_id="other"))
    ids.add(msgspec.json.decode(out[0].payload)["quote_id"])
    assert len(ids) == 31


# -- rfq rejects ------------------------------------------------------------------------------


BAD_RFQS: list[tuple[bytes, Code, str]] = [
    (b"{", Code.INVALID_MESSAGE, "not valid JSON"),
    (b"", Code.INVALID_MESSAGE, "not valid JSON"),
    (b"\xff\xfe\x00", Code.INVALID_MESSAGE, "not valid JSON"),
    (b"[]", Code.INVALID_MESSAGE, "Expected `object`"),
    (b"null", Code.INVALID_MESSAGE, "Expected `object`"),
    (b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}", Code.INVALID_MESSAGE, "unknown field"),
    (b" " * (MAX_PAYLOAD_BYTES + 1), Code.INVALID_MESSAGE, "exceeds"),
    (rfq_bytes(extra="1"), Code.INVALID_MESSAGE, "unknown field `extra`"),
    (rfq_bytes(symbol=None), Code.INVALID_MESSAGE, "missing required field `symbol`"),
    (rfq_bytes(rfq_id=5), Code.INVALID_MESSAGE, "$.rfq_id"),
    (rfq_bytes(rfq_id=""), Code.INVALID_MESSAGE, "rfq_id"),
    (rfq_bytes(rfq_id="x" * 65), Code.INVALID_MESSAGE, "rfq_id"),
    (rfq_bytes(qty=1.5), Code.INVALID_MESSAGE, "$.qty"),
    (rfq_bytes(side="BUY"), Code.INVALID_SIDE, "side"),
    (rfq_bytes(side="hold"), Code.INVALID_SIDE, "side"),
    (rfq_bytes(qty="0"), Code.INVALID_QTY, "qty must be positive"),
    (rfq_bytes(qty="-1"), Code.INVALID_QTY, "qty must be positive"),
    (rfq_bytes(qty="NaN"), Code.INVALID_QTY, "qty must be finite"),
    (rfq_bytes(qty="Infinity"), Code.INVALID_QTY, "qty must be finite"),
    (rfq_bytes(qty="1" + "0" * 40), Code.INVALID_QTY, "absurdly large"),
    (rfq_bytes(qty="1." + "1" * 30), Code.INVALID_QTY, "absurdly large or precise"),
    (rfq_bytes(qty="1e3"), Code.INVALID_QTY, "qty must be in plain notation"),
    (rfq_bytes(qty=None, notional="5E+6"), Code.INVALID_QTY, "notional must be in plain"),
    # A member given twice is ambiguous (msgspec would keep the last): refused, whichever it is.
    (
        b'{"rfq_id":"x1","symbol":"BTC-USDT","side":"sell","qty":"1","side":"buy"}',
        Code.INVALID_MESSAGE,
        "rfq: member 'side' is given twice",
    ),
    (
        b'{"rfq_id":"x1","symbol":"BTC-USDT","side":"buy","qty":"1", "qty" : "1"}',
        Code.INVALID_MESSAGE,
        "member 'qty' is given twice",
    ),
    (rfq_bytes(qty="1_000"), Code.INVALID_QTY, "qty"),
    (rfq_bytes(qty="abc"), Code.INVALID_QTY, "qty is not a number"),
    (rfq_bytes(qty="1", notional="5"), Code.INVALID_QTY, "exactly one of qty and notional"),
    (rfq_bytes(qty=None), Code.INVALID_QTY, "exactly one of qty and notional"),
    (rfq_bytes(qty=None, notional="-5"), Code.INVALID_QTY, "notional must be positive"),
    (rfq_bytes(qty="0.000001"), Code.INVALID_QTY, "not a multiple of the lot size 0.00001"),
    (rfq_bytes(qty=None, notional="0.5"), Code.INVALID_QTY, "less than one lot"),
    (rfq_bytes(qty=None, notional="1." + "1" * 17), Code.INVALID_QTY, "decimal places"),
    (rfq_bytes(symbol="DOGE-USDT"), Code.UNKNOWN_SYMBOL, "DOGE-USDT"),
    (rfq_bytes(symbol="BTC-USD"), Code.SYMBOL_NOT_ALLOWED, "BTC-USD is not allowed for client-a"),
]


@pytest.mark.parametrize(("payload", "code", "reason"), BAD_RFQS)
async def test_bad_rfqs_get_a_specific_reject_on_the_clients_own_topic(
    desk: Desk, payload: bytes, code: Code, reason: str
) -> None:
    reject = await desk.send_rfq("client-a", payload)
    assert reject["type"] == "reject"
    assert reject["code"] == code.value
    assert reason in reject["reason"]
    assert desk.kinds() == ["rfq", "reject"]
    assert desk.engine.open_quotes == 0


async def test_a_reject_echoes_the_rfq_id_when_there_is_one(desk: Desk) -> None:
    assert (await desk.send_rfq("client-a", rfq_bytes(rfq_id="r-9", side="x")))["rfq_id"] == "r-9"
    assert (await desk.send_rfq("client-a", b'{"rfq_id": "r-10", "qty": 5}'))["rfq_id"] == "r-10"
    assert (await desk.send_rfq("client-a", b"not json"))["rfq_id"] == ""


async def test_unknown_and_disabled_clients_are_refused(desk: Desk) -> None:
    assert (await desk.rfq("mallory"))["code"] == "UNKNOWN_CLIENT"
    desk.engine.set_client_enabled("client-a", False, operator="ops")
    reject = await desk.rfq("client-a")
    assert (reject["code"], reject["reason"]) == ("CLIENT_DISABLED", "client client-a is disabled")
    assert (await desk.rfq("client-b"))["type"] == "quote"
    desk.engine.set_client_enabled("client-a", True, operator="ops")
    assert (await desk.rfq("client-a"))["type"] == "quote"


async def test_a_client_disabled_in_config_is_refused() -> None:
    config = repo_config()
    clients = [replace(c, enabled=c.id != "client-b") for c in config.clients]
    desk = Desk(replace(config, clients=clients), sim_refresh())
    assert (await desk.rfq("client-b"))["code"] == "CLIENT_DISABLED"


async def test_the_rate_limit_is_a_token_bucket_per_client() -> None:
    desk = Desk(repo_config(quoting={"rate_limit_per_s": 2, "rate_limit_burst": 3}), sim_refresh())
    codes = [(await desk.rfq(qty="0.01"))["type"] for _ in range(3)]
    assert codes == ["quote"] * 3
    limited = await desk.rfq(qty="0.01")
    assert limited["code"] == "RATE_LIMITED"
    assert "2 RFQs per second" in limited["reason"]
    assert (await desk.rfq("client-b", qty="0.01"))["type"] == "quote"  # its own bucket
    desk.clock.advance(ms=499)
    assert (await desk.rfq(qty="0.01"))["code"] == "RATE_LIMITED"
    desk.clock.advance(ms=1)  # 500 ms at 2/s: one token
    assert (await desk.rfq(qty="0.01"))["type"] == "quote"
    assert (await desk.rfq(qty="0.01"))["code"] == "RATE_LIMITED"


async def test_the_wall_clock_stepping_back_does_not_starve_the_rate_limit() -> None:
    """The bucket refilled only while the clock moved past its last refill: after the wall
    clock stepped back an hour (NTP, a VM resumed), a client that spent its burst was refused
    ``RATE_LIMITED`` for that hour. The bucket now refills from the time it was stepped to."""
    desk = Desk(repo_config(quoting={"rate_limit_per_s": 2, "rate_limit_burst": 3}), sim_refresh())
    for _ in range(3):
        assert (await desk.rfq(qty="0.01"))["type"] == "quote"
    desk.clock.advance(s=-3600)
    desk.refresh()
    assert (await desk.rfq(qty="0.01"))["code"] == "RATE_LIMITED"  # the burst is spent
    desk.clock.advance(ms=500)  # one token at 2/s
    assert (await desk.rfq(qty="0.01"))["type"] == "quote"
    assert (await desk.rfq(qty="0.01"))["code"] == "RATE_LIMITED"


async def test_an_rfq_id_is_used_once_per_client_within_the_window() -> None:
    desk = Desk(repo_config(quoting={"duplicate_window_ms": 1000}), sim_refresh())
    assert (await desk.rfq(rfq_id="same"))["type"] == "quote"
    duplicate = await desk.rfq(rfq_id="same")
    assert duplicate["code"] == "DUPLICATE_RFQ_ID"
    assert duplicate["rfq_id"] == "same"
    assert (await desk.rfq("client-b", rfq_id="same"))["type"] == "quote"  # another client's ids
    desk.clock.advance(ms=1001)
    desk.refresh()
    assert (await desk.rfq(rfq_id="same"))["type"] == "quote"  # forgotten after the window


async def test_the_kill_switch_global_and_per_symbol(desk: Desk) -> None:
    desk.engine.set_halted("BTC-USDT", True, operator="ops")
    halted = await desk.rfq()
    assert (halted["code"], halted["reason"]) == ("MARKET_HALTED", "trading in BTC-USDT is halted")
    assert (await desk.rfq(symbol="ETH-USDT"))["type"] == "quote"
    desk.engine.set_halted(None, True, operator="ops")
    assert (await desk.rfq(symbol="ETH-USDT"))["code"] == "MARKET_HALTED"
    desk.engine.set_halted(None, False, operator="ops")
    desk.engine.set_halted("BTC-USDT", False, operator="ops")
    assert (await desk.rfq())["type"] == "quote"
    with pytest.raises(OtcError):
        desk.engine.set_halted("DOGE-USDT", True, operator="ops")


async def test_a_stale_book_makes_the_market_unavailable(desk: Desk) -> None:
    max_age = desk.config.estimator.max_book_age_ms
    desk.clock.advance(ms=max_age)
    assert (await desk.rfq())["type"] == "quote"  # exactly max_book_age_ms old is still fresh
    desk.clock.advance(ms=1)
    reject = await desk.rfq()
    assert reject["code"] == "MARKET_UNAVAILABLE"
    assert "binance: stale" in reject["reason"]
    assert "okx: stale" in reject["reason"]
    desk.refresh()
    assert (await desk.rfq())["type"] == "quote"


async def test_venues_out_of_sync_or_crossed_or_an_empty_side_make_the_market_unavailable(
    desk: Desk,
) -> None:
    reject = await desk.rfq("client-b", symbol="BTC-USD")  # no feed: never in sync
    assert reject["code"] == "MARKET_UNAVAILABLE"
    assert "coinbase: out_of_sync" in reject["reason"]
    assert "kraken: out_of_sync" in reject["reason"]

    crossed = Desk(
        example_config(),
        example_refresh({"alpha": ([("100", "1")], [("99", "1")]), "beta": ([("101", "1")], [])}),
    )
    reject = await crossed.rfq()
    assert reject["code"] == "MARKET_UNAVAILABLE"
    assert "alpha: crossed" in reject["reason"]
    assert "a side of the consolidated book is empty" in reject["reason"]


async def test_venues_crossed_against_each_other_get_no_two_way_quote() -> None:
    # Each book is uncrossed on its own, but alpha bids 1 % over beta's ask: beyond the fees
    # (10 + 2.5 bps) and spreads, a two-way quote would bid above its ask.
    books = {
        "alpha": ([("64700", "5")], [("64710", "5")]),
        "beta": ([("63990", "5")], [("64000", "5")]),
    }
    desk = Desk(example_config(), example_refresh(books))
    reject = await desk.rfq(side="two_way")
    assert reject["type"] == "reject"
    assert reject["code"] == "MARKET_UNAVAILABLE"
    assert "cross each other" in reject["reason"]
    bid = D(reject["reason"].split("bid ")[1].split(" ")[0])
    ask = D(reject["reason"].split("ask ")[1].split(")")[0])
    assert bid >= ask
    # One side at a time is still a sound price: the desk can hedge it where it is cheapest.
    buy = await desk.rfq(rfq_id="b", side="buy")
    sell = await desk.rfq(rfq_id="s", side="sell")
    assert (buy["ask"], sell["bid"]) == (str(ask), str(bid))

    ladder = desk.engine.indicative_ladder("BTC-USDT")
    assert ladder is not None
    assert [(b.bid, b.ask) for b in ladder.bands[:2]] == [(None, None)] * 2  # 1 and 2.5: crossed

    uncrossed = Desk(example_config(), example_refresh())
    quote = await uncrossed.rfq(side="two_way")
    assert D(quote["bid"]) < D(quote["ask"])
    ladder = uncrossed.engine.indicative_ladder("BTC-USDT")
    assert ladder is not None
    assert all(D(b.bid) < D(b.ask) for b in ladder.bands[:2] if b.bid and b.ask)
    assert ladder.bands[0].bid is not None


async def test_depth_impact_model_and_absurd_sizes(example: Desk) -> None:
    reject = await example.rfq(qty="20")  # 12 visible on the ask side
    assert reject["code"] == "NO_LIQUIDITY"
    assert "covers 12" in reject["reason"]
    assert (await example.rfq(qty=None, notional="10000000"))["code"] == "NO_LIQUIDITY"
    absurd = await example.rfq(qty="121")  # more than 10 x the visible depth
    assert absurd["code"] == "INVALID_QTY"
    assert "absurd" in absurd["reason"]

    modelled = Desk(example_config(impact=True), example_refresh())
    quote = await modelled.quote(qty="20")
    explanation = modelled.explanations()[0]
    assert explanation["ask"]["model_qty"] == "8"
    assert D(quote["ask"]) > D(explanation["ask"]["hedge_vwap"])
    assert D((await modelled.quote(qty=None, notional="2000000"))["qty"]) > 12
    assert (await modelled.rfq(qty="121"))["code"] == "INVALID_QTY"


async def test_per_trade_daily_and_inventory_limits() -> None:
    config = repo_config()
    clients = [
        replace(c, max_trade_notional=D(1_000_000), max_daily_notional=D(1_500_000))
        for c in config.clients
    ]
    desk = Desk(replace(config, clients=clients), sim_refresh())
    trade = await desk.rfq(qty="16")  # ~1.02 M
    assert trade["code"] == "LIMIT_EXCEEDED"
    assert "per-trade limit 1000000" in trade["reason"]
    first = await desk.quote(qty="14", side="buy")
    second = await desk.quote(qty="14", side="sell")  # both fit while nothing is traded
    assert (await desk.accept(first["quote_id"]))["type"] == "fill"
    assert (await desk.rfq(qty="14"))["code"] == "LIMIT_EXCEEDED"  # daily, at the next rfq
    again = await desk.accept(second["quote_id"])  # limits are re-checked at accept
    assert again["code"] == "LIMIT_EXCEEDED"
    assert "daily limit 1500000" in again["reason"]
    assert (await desk.quote("client-b", qty="5"))["type"] == "quote"  # its own daily total

    # A new UTC day starts from zero.
    desk.clock.set((desk.clock.now_ns() // 86_400_000_000_000 + 1) * 86_400_000_000_000)
    desk.refresh()
    assert (await desk.quote(qty="14"))["type"] == "quote"


class HeldAccepts(MemoryJournal):
    """Holds the accepts of quote ``hold`` until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = ""
        self.gate = asyncio.Event()

    async def append(self, event: JournalEvent) -> None:
        if event.kind == "accept" and event.quote_id == self.hold:
            await self.gate.wait()
        await super().append(event)


@pytest.mark.parametrize("limit", [100_000, 10_000_000])
async def test_an_accept_from_before_midnight_booked_after_one_from_after_counts_on_its_day(
    limit: int,
) -> None:
    """Accepts are handled concurrently: one that arrived at 23:59:59.999 can be booked after
    one that arrived at 00:00:00.5. Each counts on its own UTC day, as a restart counts it."""
    day = 86_400_000_000_000
    config = repo_config()
    clients = [replace(c, max_daily_notional=D(limit)) for c in config.clients]
    desk = Desk(replace(config, clients=clients), sim_refresh())
    journal = HeldAccepts()
    desk.engine = QuoteEngine(desk.config, desk.market, journal, desk.clock)
    desk.journal = journal
    midnight = (desk.clock.now_ns() // day + 1) * day
    desk.clock.set(midnight - 2_000_000_000)
    desk.refresh()
    earlier = await desk.quote(qty="1")
    late = await desk.quote(qty="1")
    before = await desk.accept(earlier["quote_id"])
    assert before["type"] == "fill"
    journal.hold = late["quote_id"]
    desk.clock.set(midnight - 1_000_000)
    held = asyncio.create_task(desk.accept(late["quote_id"]))  # arrives before midnight
    for _ in range(5):
        await asyncio.sleep(0)
    desk.clock.set(midnight + 500_000_000)
    desk.refresh()
    after = await desk.accept((await desk.quote(qty="1"))["quote_id"])
    assert after["type"] == "fill"
    journal.gate.set()
    reply = await held
    if limit == 100_000:  # two fills of ~64,000 the day before midnight: one too many
        assert reply["code"] == "LIMIT_EXCEEDED"
        assert f"on top of {before['price']} traded today" in reply["reason"]
    else:
        assert reply["type"] == "fill"
    assert desk.engine.daily_notional("client-a") == D(after["price"])  # the new day's only


async def test_inventory_limits_refuse_what_adds_to_a_position_beyond_them(desk: Desk) -> None:
    desk.engine.set_position("BTC", D(-49), operator="ops")  # short, limit 50
    assert (await desk.rfq(qty="1"))["type"] == "quote"  # to -50: at the limit
    reject = await desk.rfq(qty="1.5")
    assert reject["code"] == "LIMIT_EXCEEDED"
    assert "BTC position to -50.5, beyond its limit 50" in reject["reason"]
    assert (await desk.rfq(qty="1.5", side="two_way"))["code"] == "LIMIT_EXCEEDED"
    desk.engine.set_position("BTC", D(-60), operator="ops")  # beyond, e.g. after a hedge failed
    assert (await desk.rfq(qty="5", side="sell"))["type"] == "quote"  # reduces: allowed
    quote = await desk.quote(qty="5", side="sell")
    desk.engine.set_position("BTC", D(48), operator="ops")
    reject = await desk.accept(quote["quote_id"])  # re-checked at accept: 48 + 5 > 50
    assert reject["code"] == "LIMIT_EXCEEDED"


async def test_a_position_beyond_its_limit_may_not_flip_beyond_it_the_other_way() -> None:
    config = repo_config()
    clients = [
        replace(c, max_trade_notional=D(10**9), max_daily_notional=D(10**10))
        for c in config.clients
    ]
    desk = Desk(replace(config, clients=clients), sim_refresh())
    desk.engine.set_position("BTC", D(-60), operator="ops")  # short beyond the limit of 50
    assert (await desk.rfq(qty="100", side="sell"))["type"] == "quote"  # to +40: within
    quote = await desk.quote(qty="100", side="sell")
    reject = await desk.rfq(qty="115", side="sell")  # to +55: a new long beyond the limit
    assert reject["code"] == "LIMIT_EXCEEDED"
    assert "BTC position to 55, beyond its limit 50" in reject["reason"]
    desk.engine.set_position("BTC", D(-75), operator="ops")
    assert (await desk.accept(quote["quote_id"]))["type"] == "fill"  # to +25: within
    assert desk.engine.positions["BTC"] == 25
    desk.engine.set_position("BTC", D(-60), operator="ops")
    to_flat = await desk.quote(qty="60", side="sell")  # a client sell to 0: allowed
    desk.engine.set_position("BTC", D(-111), operator="ops")
    assert (await desk.accept(to_flat["quote_id"]))["type"] == "fill"  # still reduces: to -51
    flip = await desk.quote(qty="60", side="sell")
    desk.engine.set_position("BTC", D(-5), operator="ops")
    assert (await desk.accept(flip["quote_id"]))["code"] == "LIMIT_EXCEEDED"  # to +55


async def test_an_internal_error_is_a_reject_not_a_crash(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug")

    quote = await desk.quote()
    monkeypatch.setattr(otc.quoting, "price_walk", broken)
    reject = await desk.rfq()
    assert (reject["code"], reject["reason"]) == ("INTERNAL_ERROR", "internal error")
    monkeypatch.setattr(otc.quoting, "_position_changes", broken)
    reject = await desk.accept(quote["quote_id"])
    assert (reject["type"], reject["code"]) == ("accept_reject", "INTERNAL_ERROR")
    monkeypatch.undo()
    assert (await desk.accept(quote["quote_id"]))["type"] == "fill"


# -- accepts ----------------------------------------------------------------------------------


async def test_an_accept_fills_at_the_quoted_price_and_moves_inventory(desk: Desk) -> None:
    quote = await desk.quote(qty="2")
    fill = await desk.accept(quote["quote_id"])
    assert fill["type"] == "fill"
    assert (fill["quote_id"], fill["side"], fill["qty"]) == (quote["quote_id"], "buy", "2")
    assert fill["price"] == quote["ask"]
    assert fill["symbol"] == "BTC-USDT"
    assert fill["rfq_id"] == quote["rfq_id"]
    assert fill["ts_ms"] == desk.clock.now_ns() // 1_000_000
    notional = 2 * D(quote["ask"])
    assert desk.engine.positions == {"BTC": D(-2), "USDT": notional}
    assert desk.engine.daily_notional("client-a") == notional
    sell = await desk.quote(side="two_way", qty="0.5")
    partial = await desk.accept(sell["quote_id"], side="sell", qty="0.2")
    assert (partial["side"], partial["qty"], partial["price"]) == ("sell", "0.2", sell["bid"])
    assert desk.engine.positions["BTC"] == D("-1.8")


async def test_repeating_an_accept_returns_the_same_fill_and_others_get_already_filled(
    desk: Desk,
) -> None:
    quote = await desk.quote(side="two_way", qty="2")
    fill = await desk.accept(quote["quote_id"], side="buy")
    assert await desk.accept(quote["quote_id"], side="buy") == fill
    assert await desk.accept(quote["quote_id"], side="buy", qty="2") == fill  # same qty, spelt out
    for other in ({"side": "sell"}, {"side": "buy", "qty": "1"}, {}):
        reject = await desk.accept(quote["quote_id"], **other)
        assert reject["type"] == "accept_reject"
        assert reject["code"] == "ALREADY_FILLED"
    desk.clock.advance(s=10)  # after expiry too: the fill happened
    assert await desk.accept(quote["quote_id"], side="buy") == fill
    assert len(desk.events("fill")) == 1
    assert desk.engine.positions["BTC"] == D(-2)


async def test_a_partial_accept_uses_the_quote_up(desk: Desk) -> None:
    quote = await desk.quote(qty="2")
    fill = await desk.accept(quote["quote_id"], qty="0.5")
    assert (fill["type"], fill["qty"]) == ("fill", "0.5")
    assert await desk.accept(quote["quote_id"], qty="0.50") == fill  # the same accept again
    assert await desk.accept(quote["quote_id"], qty="0.5", side="buy") == fill
    assert (await desk.accept(quote["quote_id"], qty="1.5"))["code"] == "ALREADY_FILLED"
    assert (await desk.accept(quote["quote_id"]))["code"] == "ALREADY_FILLED"
    assert len(desk.events("fill")) == 1
    assert desk.engine.positions["BTC"] == D("-0.5")


async def test_expiry_follows_the_clock(desk: Desk) -> None:
    ttl = desk.config.quoting.quote_ttl_ms
    late = await desk.quote()
    on_time = await desk.quote()
    desk.clock.advance(ms=ttl)
    assert (await desk.accept(on_time["quote_id"]))["type"] == "fill"  # at valid_until: firm
    desk.clock.advance(ns=1)
    reject = await desk.accept(late["quote_id"])
    assert reject["code"] == "EXPIRED"
    assert str(late["valid_until_ms"]) in reject["reason"]


@pytest.mark.parametrize(
    ("side", "fields", "code", "reason"),
    [
        ("two_way", {}, Code.INVALID_SIDE, "side is required to accept a two-way quote"),
        ("buy", {"side": "sell"}, Code.INVALID_SIDE, "does not match the quote's side buy"),
        ("buy", {"side": "both"}, Code.INVALID_SIDE, "side must be buy or sell"),
        ("buy", {"qty": "2.5"}, Code.INVALID_QTY, "exceeds the quoted 2"),
        ("buy", {"qty": "0.000001"}, Code.INVALID_QTY, "not a multiple of the lot size"),
        ("buy", {"qty": "0"}, Code.INVALID_QTY, "qty must be positive"),
        ("buy", {"qty": "NaN"}, Code.INVALID_QTY, "qty must be finite"),
        ("buy", {"price": "1"}, Code.INVALID_MESSAGE, "unknown field `price`"),
        ("buy", {"qty": "2e0"}, Code.INVALID_QTY, "qty must be in plain notation"),
    ],
)
async def test_bad_accepts_are_refused_and_the_quote_stays_open(
    desk: Desk, side: str, fields: dict[str, str], code: Code, reason: str
) -> None:
    quote = await desk.quote(side=side, qty="2")
    reject = await desk.accept(quote["quote_id"], **fields)
    assert reject["type"] == "accept_reject"
    assert reject["quote_id"] == quote["quote_id"]
    assert reject["code"] == code.value
    assert reason in reject["reason"]
    assert (await desk.accept(quote["quote_id"], side="buy"))["type"] == "fill"


async def test_an_accept_with_a_member_given_twice_is_refused(desk: Desk) -> None:
    quote = await desk.quote(side="two_way", qty="2")
    twice = f'{{"quote_id":"{quote["quote_id"]}","side":"buy","side":"sell"}}'.encode()
    reject = await desk.send_accept("client-a", twice)
    assert (reject["type"], reject["code"]) == ("accept_reject", "INVALID_MESSAGE")
    assert reject["reason"] == "accept: member 'side' is given twice"
    assert (await desk.accept(quote["quote_id"], side="sell"))["type"] == "fill"


async def test_colons_inside_strings_are_not_members(desk: Desk) -> None:
    """More colons than members: the payload is checked member by member, and passes."""
    quote = await desk.quote(rfq_id="desk:a:b:c", symbol="BTC-USDT")
    assert quote["rfq_id"] == "desk:a:b:c"
    spaced = b'{ "rfq_id" : "r:2" , "symbol" : "BTC-USDT" , "side" : "buy" , "qty" : "1" }'
    assert (await desk.send_rfq("client-a", spaced))["type"] == "quote"


async def test_unknown_quotes_and_other_clients_quotes_look_the_same(desk: Desk) -> None:
    quote = await desk.quote("client-a")
    stolen = await desk.accept(quote["quote_id"], client="client-b")
    bogus = await desk.accept("no-such-quote", client="client-b")
    assert stolen["code"] == bogus["code"] == "UNKNOWN_QUOTE"
    assert stolen["reason"] == f"no quote '{quote['quote_id']}' for client client-b"
    assert bogus["reason"] == "no quote 'no-such-quote' for client client-b"
    assert (await desk.accept(quote["quote_id"], client="mallory"))["code"] == "UNKNOWN_QUOTE"
    bad = await desk.send_accept("client-a", b'{"quote_id": "q-1", "qty": 1}')
    assert (bad["code"], bad["quote_id"]) == ("INVALID_MESSAGE", "q-1")
    assert (await desk.send_accept("client-a", b"]"))["code"] == "INVALID_MESSAGE"
    assert (await desk.accept(quote["quote_id"]))["type"] == "fill"  # still a's to take


async def test_a_disabled_client_or_a_halt_refuses_the_accept(desk: Desk) -> None:
    quote = await desk.quote()
    desk.engine.set_client_enabled("client-a", False, operator="ops")
    assert (await desk.accept(quote["quote_id"]))["code"] == "CLIENT_DISABLED"
    desk.engine.set_client_enabled("client-a", True, operator="ops")
    desk.engine.set_halted(None, True, operator="ops")
    assert (await desk.accept(quote["quote_id"]))["code"] == "MARKET_HALTED"
    desk.engine.set_halted(None, False, operator="ops")
    assert (await desk.accept(quote["quote_id"]))["type"] == "fill"


async def test_firm_means_firm_without_last_look(example: Desk) -> None:
    quote = await example.quote(qty="1")
    move_market(example, "1.01")
    example.clock.advance(s=2.9)  # the books are stale, too: no matter
    assert (await example.accept(quote["quote_id"]))["price"] == quote["ask"]


def move_market(desk: Desk, factor: str) -> None:
    """Re-snapshot the example books with every price times ``factor``."""
    moved = {
        venue: (
            [(str(D(p) * D(factor)), q) for p, q in bids],
            [(str(D(p) * D(factor)), q) for p, q in asks],
        )
        for venue, (bids, asks) in EXAMPLE_BOOKS.items()
    }
    example_refresh(moved)(desk.market, desk.clock.now_ns())


async def test_last_look_rejects_a_move_against_the_desk_beyond_tolerance() -> None:
    config = example_config()
    config = replace(config, quoting=replace(config.quoting, last_look=True))
    desk = Desk(config, example_refresh())
    buy = await desk.quote(qty="1")
    sell = await desk.quote(qty="1", side="sell")
    move_market(desk, "1.0001")  # 1 bps up: within the 2 bps tolerance
    assert (await desk.accept(buy["quote_id"]))["type"] == "fill"
    assert (await desk.accept(sell["quote_id"]))["type"] == "fill"  # in our favour
    buy = await desk.quote(qty="1")
    sell = await desk.quote(qty="1", side="sell")
    move_market(desk, "0.99")  # down 1 %: against a bid, for an ask
    reject = await desk.accept(sell["quote_id"])
    assert reject["code"] == "LAST_LOOK"
    assert "tolerance 2 bps" in reject["reason"]
    assert (await desk.accept(buy["quote_id"]))["type"] == "fill"
    stale = await desk.quote(qty="1")
    desk.clock.advance(ms=2001)
    reject = await desk.accept(stale["quote_id"])
    assert reject["code"] == "LAST_LOOK"
    assert "cannot re-price" in reject["reason"]


# -- exactly once -----------------------------------------------------------------------------


class YieldingJournal(MemoryJournal):
    """Yields to the loop inside every append, as a real journal's commit does."""

    async def append(self, event: JournalEvent) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        await super().append(event)


async def test_fifty_concurrent_identical_accepts_make_one_fill(desk: Desk) -> None:
    desk.engine = QuoteEngine(desk.config, desk.market, YieldingJournal(), desk.clock)
    desk.journal = desk.engine._journal  # type: ignore[assignment]
    quote = await desk.quote(qty="1")
    payload = msgspec.json.encode({"quote_id": quote["quote_id"]})
    results = await asyncio.gather(*(desk.engine.on_accept("client-a", payload) for _ in range(50)))
    fills = {out[0].payload for out in results}
    assert len(fills) == 1  # every accept got the same fill, the same trade id
    assert msgspec.json.decode(fills.pop())["type"] == "fill"
    assert len(desk.events("fill")) == 1
    assert len(desk.events("accept")) == 50
    assert desk.engine.positions["BTC"] == D(-1)


async def test_fifty_concurrent_different_accepts_make_one_fill(desk: Desk) -> None:
    desk.engine = QuoteEngine(desk.config, desk.market, YieldingJournal(), desk.clock)
    desk.journal = desk.engine._journal  # type: ignore[assignment]
    quote = await desk.quote(side="two_way", qty="1")
    payloads = [
        msgspec.json.encode(
            {
                "quote_id": quote["quote_id"],
                "side": "buy" if i % 2 else "sell",
                "qty": f"0.{i + 1:02}",
            }
        )
        for i in range(50)
    ]
    results = await asyncio.gather(*(desk.engine.on_accept("client-a", p) for p in payloads))
    replies = [msgspec.json.decode(out[0].payload) for out in results]
    fills = [r for r in replies if r["type"] == "fill"]
    assert len(fills) == 1
    assert {r["code"] for r in replies if r["type"] != "fill"} == {"ALREADY_FILLED"}
    assert len(desk.events("fill")) == 1
    filled = D(fills[0]["qty"])
    assert desk.engine.positions["BTC"] == (-filled if fills[0]["side"] == "buy" else filled)


class GatedJournal(MemoryJournal):
    """Holds every ``fill`` append until ``gate`` is set; may fail fills with ``fill_error``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.fill_error: Exception | None = None

    async def append(self, event: JournalEvent) -> None:
        if event.kind == "fill":
            await self.gate.wait()
            if self.fill_error is not None:
                raise self.fill_error
        await super().append(event)


async def test_a_fill_is_returned_only_after_the_journal_committed_it(desk: Desk) -> None:
    journal = GatedJournal()
    desk.engine = QuoteEngine(desk.config, desk.market, journal, desk.clock)
    desk.journal = journal
    quote = await desk.quote(qty="1")
    payload = msgspec.json.encode({"quote_id": quote["quote_id"]})
    task = asyncio.create_task(desk.engine.on_accept("client-a", payload))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    assert desk.events("fill") == []
    journal.gate.set()
    out = await task
    assert msgspec.json.decode(out[0].payload)["type"] == "fill"
    assert desk.kinds()[-1] == "fill"


class HandedJournal(MemoryJournal):
    """Takes a submitted ``fill`` at once and decides it when ``gate`` is set (recorded, or
    failed with ``fill_error``), as SQLite's writer does with a queued event."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.fill_error: Exception | None = None

    async def submit(self, event: JournalEvent, *, urgent: bool = False) -> Receipt:
        if event.kind != "fill":
            return await super().submit(event, urgent=urgent)
        receipt: Receipt = asyncio.get_running_loop().create_future()

        async def decide() -> None:
            await self.gate.wait()
            if self.fill_error is not None:
                receipt.set_exception(self.fill_error)
            else:
                self.events.append(event)
                receipt.set_result(None)

        self.deciding = asyncio.ensure_future(decide())
        return receipt


@pytest.mark.parametrize("fails", [False, True])
@pytest.mark.parametrize("journal_kind", [GatedJournal, HandedJournal])
async def test_an_accept_cancelled_while_its_fill_is_written_fills_only_what_the_journal_took(
    desk: Desk, fails: bool, journal_kind: type[GatedJournal | HandedJournal]
) -> None:
    """An accept is cancelled when its broker connection is lost; the fill it was writing is
    the journal's to decide. A repeated accept waits for that write: it gets the fill once it
    is committed, never a fill the journal did not take. (The quote was marked filled on the
    cancellation, whatever the journal then did.) ``GatedJournal``: cancelled before the fill
    was handed over; ``HandedJournal``: after."""
    journal = journal_kind()
    desk.engine = QuoteEngine(desk.config, desk.market, journal, desk.clock)
    desk.journal = journal
    quote = await desk.quote(qty="1")
    payload = msgspec.json.encode({"quote_id": quote["quote_id"]})
    cancelled = asyncio.create_task(desk.engine.on_accept("client-a", payload))
    for _ in range(5):
        await asyncio.sleep(0)
    cancelled.cancel()  # the fill is held by the journal's gate
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    repeated = asyncio.create_task(desk.engine.on_accept("client-a", payload))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not repeated.done()  # waits for the write, publishes nothing before its commit
    if fails:
        journal.fill_error = JournalError("disk full")
    journal.gate.set()
    reply = msgspec.json.decode((await repeated)[0].payload)
    if fails:
        assert (reply["type"], reply["code"]) == ("accept_reject", "INTERNAL_ERROR")
        assert desk.engine.positions == {"BTC": D(0), "USDT": D(0)}
        assert desk.engine.daily_notional("client-a") == 0
        journal.fill_error = None
        reply = await desk.accept(quote["quote_id"])
    assert reply["type"] == "fill"
    assert [e.trade_id for e in desk.events("fill")] == [reply["trade_id"]]
    assert desk.engine.positions["BTC"] == D(-1)
    assert await desk.accept(quote["quote_id"]) == reply


async def test_a_journal_failure_fills_nothing_and_the_accept_can_be_repeated(desk: Desk) -> None:
    journal = GatedJournal()
    journal.gate.set()
    journal.fill_error = JournalError("disk full")
    desk.engine = QuoteEngine(desk.config, desk.market, journal, desk.clock)
    desk.journal = journal
    quote = await desk.quote(qty="1")
    reject = await desk.accept(quote["quote_id"])  # an answer, not an error that ends the engine
    assert (reject["type"], reject["code"]) == ("accept_reject", "INTERNAL_ERROR")
    assert reject["quote_id"] == quote["quote_id"]
    assert "could not record" in reject["reason"]
    assert "nothing was filled" in reject["reason"]
    assert desk.engine.positions == {"BTC": D(0), "USDT": D(0)}
    assert desk.engine.daily_notional("client-a") == 0
    assert desk.events("accept_reject")[-1].payload["code"] == "INTERNAL_ERROR"
    journal.fill_error = None
    assert (await desk.accept(quote["quote_id"]))["type"] == "fill"
    assert len(desk.events("fill")) == 1


async def test_a_journal_that_records_nothing_gets_answers_not_a_crash(desk: Desk) -> None:
    quote = await desk.quote(qty="1")
    desk.journal.error = JournalError("disk full")  # every write fails, controls too
    desk.engine.set_halted("ETH-USDT", True, operator="ops")
    reject = await desk.accept(quote["quote_id"])
    assert (reject["type"], reject["code"]) == ("accept_reject", "INTERNAL_ERROR")
    assert reject["quote_id"] == quote["quote_id"]
    refused = await desk.rfq(rfq_id="r-x")
    assert (refused["type"], refused["code"], refused["rfq_id"]) == (
        "reject",
        "INTERNAL_ERROR",
        "r-x",
    )
    assert "could not record" in refused["reason"]
    assert desk.engine.positions == {}
    desk.journal.error = None  # the disk has room again: the halt is journaled first, then on
    assert (await desk.accept(quote["quote_id"]))["type"] == "fill"
    assert desk.kinds()[-3:] == ["control", "accept", "fill"]


async def test_a_quote_the_journal_did_not_take_cannot_be_accepted(desk: Desk) -> None:
    class NoQuotes(MemoryJournal):
        full = True

        async def append(self, event: JournalEvent) -> None:
            if event.kind == "quote" and self.full:
                raise JournalError("disk full")
            await super().append(event)

    journal = NoQuotes()
    desk.engine = QuoteEngine(desk.config, desk.market, journal, desk.clock)
    reject = await desk.rfq(rfq_id="r-1")
    assert (reject["type"], reject["code"]) == ("reject", "INTERNAL_ERROR")
    assert desk.engine.open_quotes == 0
    journal.full = False  # "no quote was made": the client asks again with the same id
    assert (await desk.rfq(rfq_id="r-1"))["type"] == "quote"  # not DUPLICATE_RFQ_ID


# -- journal, isolation, memory ---------------------------------------------------------------


async def test_every_event_is_journaled(desk: Desk) -> None:
    quote = await desk.quote(rfq_id="j1", qty="1")
    await desk.rfq(rfq_id="j2", symbol="DOGE-USDT")
    await desk.accept("nope")
    fill = await desk.accept(quote["quote_id"])
    desk.engine.set_halted("ETH-USDT", True, operator="alice")
    await desk.engine.flush_controls()
    assert desk.kinds() == [
        "rfq", "quote", "rfq", "reject", "accept", "accept_reject", "accept", "fill", "control",
    ]  # fmt: skip
    rfq, quoted, _, reject, _, _, accept, filled, control = desk.journal.events
    assert rfq.payload == {"rfq_id": "j1", "symbol": "BTC-USDT", "side": "buy", "qty": "1"}
    assert (rfq.client, rfq.rfq_id) == ("client-a", "j1")
    assert (quoted.rfq_id, quoted.quote_id) == ("j1", quote["quote_id"])
    assert quoted.payload["quote"] == quote
    explanation = desk.explanations()[0]
    for key in ("hedge_vwap", "hedge_all_in", "route", "spread_bps", "risk_bps", "skew_bps"):
        assert key in explanation["ask"]
    assert set(explanation["ask"]["books"]) == {
        "binance", "bitget", "bybit", "coinbase", "kraken", "okx",
    }  # fmt: skip
    assert reject.payload["code"] == "UNKNOWN_SYMBOL"
    assert accept.payload == {"quote_id": quote["quote_id"]}
    assert (filled.quote_id, filled.trade_id, filled.rfq_id) == (
        quote["quote_id"], fill["trade_id"], "j1",
    )  # fmt: skip
    assert filled.payload == fill
    assert control.payload == {
        "action": "halt", "symbol": "ETH-USDT", "halted": True, "operator": "alice",
    }  # fmt: skip
    assert control.ts_ns == desk.clock.now_ns()
    for event in desk.journal.events:  # JSON builtins and exact Decimals, never a float
        for leaf in leaves(plain(event.payload)):
            assert not isinstance(leaf, float)
            if isinstance(leaf, str) and is_number(leaf):
                assert "E" not in leaf.upper(), leaf  # plain decimal text, never 6.4E+4


def leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


def is_number(text: str) -> bool:
    try:
        Decimal(text)
    except ArithmeticError:
        return False
    return True


async def test_controls_are_journaled_before_the_next_request_at_the_latest(desk: Desk) -> None:
    desk.clock.advance(ms=5)
    desk.engine.set_tier_spread("gold", D("2.5"), operator="bob")
    desk.engine.set_client_enabled("client-b", False, operator="bob")
    desk.engine.set_position("BTC", D("1.5"), operator="bob")
    assert desk.events("control") == []
    await desk.rfq("client-b")
    assert desk.kinds()[:3] == ["control"] * 3
    tier, client, position = desk.events("control")
    assert tier.payload == {
        "action": "tier_spread",
        "tier": "gold",
        "spread_bps": "2.5",
        "operator": "bob",
    }
    assert (client.client, client.payload["enabled"]) == ("client-b", False)
    assert position.payload["position"] == "1.5"
    with pytest.raises(OtcError):
        desk.engine.set_tier_spread("platinum", D(1), operator="bob")
    with pytest.raises(OtcError):
        desk.engine.set_tier_spread("gold", D(-1), operator="bob")
    with pytest.raises(OtcError):
        desk.engine.set_client_enabled("mallory", True, operator="bob")


async def test_nothing_is_ever_addressed_to_another_client(desk: Desk) -> None:
    clients = ["client-a", "client-b", "mallory"]
    quotes: list[str] = []
    for i in range(60):
        client = clients[i % 3]
        other = clients[(i + 1) % 3]
        message = await desk.rfq(client, qty="0.01", side=("buy", "sell", "two_way")[i % 3])
        if message["type"] == "quote":
            quotes.append(message["quote_id"])
        if quotes:
            await desk.accept(quotes[i % len(quotes)], client=other, side="buy")
            await desk.accept(quotes[-1], client=client, side="buy")
    await desk.send_rfq("client-b", b"garbage")
    await desk.send_accept("mallory", b"garbage")
    assert len(desk.sent) > 100
    for client, outgoing in desk.sent:
        assert outgoing.topic in (f"otc/v1/{client}/quotes", f"otc/v1/{client}/fills")
    fills = [msgspec.json.decode(m.payload) for _, m in desk.sent if m.topic.endswith("/fills")]
    assert sum(f["type"] == "fill" for f in fills) > 0


async def test_expired_quotes_are_forgotten(desk: Desk) -> None:
    for _ in range(20):
        await desk.quote(qty="0.01")
    assert desk.engine.open_quotes == 20
    memory = desk.config.quoting.quote_memory_ms + desk.config.quoting.quote_ttl_ms
    assert desk.engine.prune(desk.clock.monotonic_ns() + memory * 1_000_000) == 0
    quote = await desk.quote(qty="0.01")
    desk.clock.advance(ms=memory + 1)
    await desk.rfq()  # stale books by now: a reject, but the engine prunes as it goes
    assert desk.engine.open_quotes == 0
    assert (await desk.accept(quote["quote_id"]))["code"] == "UNKNOWN_QUOTE"


async def test_what_the_engine_remembers_stays_bounded_over_days_of_traffic() -> None:
    """A service runs for weeks: drive RFQs and accepts from the configured clients and from
    thousands of distinct unknown client ids (an open broker lets anyone publish on
    ``otc/v1/<anything>/rfq``) over three days of a fake clock, and count what is kept."""
    quoting = {"rate_limit_per_s": 1000, "duplicate_window_ms": 60_000, "quote_memory_ms": 30_000}
    desk = Desk(repo_config(quoting=quoting), sim_refresh())
    engine = desk.engine
    configured = [c.id for c in desk.config.clients]
    bogus = 0
    for step in range(24):  # every 3 hours
        desk.clock.advance(s=3 * 3600)
        desk.refresh()
        for i in range(20):
            client = configured[i % len(configured)]
            quote = await desk.quote(client, qty="0.01", side=("buy", "sell")[i % 2])
            assert (await desk.accept(quote["quote_id"], client=client))["type"] == "fill"
            bogus += 1
            assert (await desk.rfq(f"bogus-{bogus}"))["code"] == "UNKNOWN_CLIENT"
            await desk.accept(quote["quote_id"], client=f"bogus-{bogus}")
            desk.clock.advance(ms=100)
        # Only the last 20 RFQs (2 s) are within the windows.
        assert engine.open_quotes == 20, step
        state = engine._clients  # the per-client state there is
        assert sorted(state) == sorted(configured)
        assert sum(len(c.rfq_ids) for c in state.values()) == 20
        assert all(len(c.daily) <= 2 for c in state.values())
    assert bogus == 480


# -- ladder -----------------------------------------------------------------------------------


async def test_the_ladder_prices_every_band_and_publishes_on_change(desk: Desk) -> None:
    out = desk.engine.ladder("BTC-USDT")
    assert out is not None
    assert (out.topic, out.retain) == ("otc/v1/ladder/BTC-USDT", True)
    ladder = msgspec.json.decode(out.payload)
    assert ladder["symbol"] == "BTC-USDT"
    assert ladder["indicative"] is True
    assert ladder["ts_ms"] == desk.clock.now_ns() // 1_000_000
    bands = ladder["bands"]
    assert [b["qty"] for b in bands] == ["0.1", "1", "5", "10", "25"]
    for band in bands:
        assert D(band["bid"]) < D(band["ask"])
    asks = [D(b["ask"]) for b in bands]
    bids = [D(b["bid"]) for b in bands]
    assert asks == sorted(asks)
    assert bids == sorted(bids, reverse=True)

    assert desk.engine.ladder("BTC-USDT") is None  # nothing moved
    assert desk.engine.ladder("BTC-USDT", force=True) is not None
    desk.engine.set_tier_spread("bronze", D(20), operator="ops")  # the ladder's tier
    wider = desk.engine.ladder("BTC-USDT")
    assert wider is not None
    assert D(msgspec.json.decode(wider.payload)["bands"][0]["ask"]) > asks[0]
    desk.refresh()
    assert desk.engine.ladder("BTC-USDT") is not None  # books moved
    desk.engine.set_halted("BTC-USDT", True, operator="ops")
    halted = desk.engine.ladder("BTC-USDT")
    assert halted is not None
    assert all(
        b["bid"] is None and b["ask"] is None for b in msgspec.json.decode(halted.payload)["bands"]
    )
    assert desk.engine.ladder("BTC-USD") is None  # no bands
    assert desk.engine.ladder("DOGE-USDT") is None


async def test_a_band_is_priced_as_an_rfq_of_its_size_but_checks_no_limit(example: Desk) -> None:
    """The README's ladder row: the ladder tier's RFQ of a band's qty gets the band's prices
    (gold, the only tier, is the widest); the worked example's 2.5 BTC is a band."""
    out = example.engine.ladder("BTC-USDT", force=True)
    assert out is not None
    bands = {b["qty"]: (b["bid"], b["ask"]) for b in msgspec.json.decode(out.payload)["bands"]}
    assert bands["2.5"] == ("63940.59", "64054.24")
    assert bands["20"] == (None, None)  # beyond visible depth on both sides
    for qty in ("1", "2.5"):
        quote = await example.quote(side="two_way", qty=qty)
        assert (quote["bid"], quote["ask"]) == bands[qty]
    example.engine.set_position("BTC", D(-49), operator="test")  # a client buy of 2.5: -51.5
    out = example.engine.ladder("BTC-USDT")
    assert out is not None
    band = msgspec.json.decode(out.payload)["bands"][1]
    assert band["qty"] == "2.5"
    assert band["ask"] is not None
    assert (await example.rfq(side="buy", qty="2.5"))["code"] == "LIMIT_EXCEEDED"


def test_a_deep_ladder_is_built_a_bounded_batch_per_step(desk: Desk) -> None:
    """Each step adds at most _LADDER_CHUNK levels per venue to the consolidated book, and the
    prices are those a walk of the whole book gives (the same as built in one go)."""
    one_go = desk.engine.ladder("ETH-USDT", force=True)
    assert one_go is not None
    book = desk.market.books["ETH-USDT"]
    venues = len(book.venues)
    desk.refresh()  # new books: the ladder is built again, from its top
    steps = desk.engine.ladder_steps("ETH-USDT", force=True)
    levels, grown = 0, []
    while True:
        try:
            next(steps)
        except StopIteration as done:
            stepped = done.value
            break
        now = sum(len(book.view().ladder(side)) for side in Side)
        grown.append(now - levels)
        levels = now
    assert stepped is not None
    assert stepped.payload == one_go.payload  # same books (refreshed unchanged), same ladder
    bands = len(desk.config.instrument("ETH-USDT").ladder_bands)
    assert len(grown) > 2 * bands  # the 250 ETH band took several steps of its own
    # A step builds on one side; the first also finds the touch on the other (16 a venue).
    assert max(grown) <= (otc.quoting._LADDER_CHUNK + otc.book.Ladder.chunk) * venues


def test_a_ladder_survives_books_moving_while_it_is_built(desk: Desk) -> None:
    steps = desk.engine.ladder_steps("ETH-USDT", force=True)
    for _ in range(5):
        next(steps)
    desk.clock.advance(ms=1)
    desk.refresh()  # every venue's book replaced mid-ladder: later steps use the new ones
    ladder = otc.quoting._drain(steps)  # the rest of the steps
    assert ladder is not None
    assert all(b["bid"] and b["ask"] for b in msgspec.json.decode(ladder.payload)["bands"])


async def test_a_ladder_band_beyond_depth_has_no_price(example: Desk) -> None:
    out = example.engine.ladder("BTC-USDT")
    assert out is not None
    bands = msgspec.json.decode(out.payload)["bands"]
    assert [b["qty"] for b in bands] == ["1", "2.5", "20"]
    assert bands[2] == {"qty": "20", "bid": None, "ask": None}
    # The ladder shows the widest tier (gold is the only one) with the same terms as a quote.
    quote = await example.quote(side="two_way", qty="2.5")
    assert (bands[1]["bid"], bands[1]["ask"]) == (quote["bid"], quote["ask"])


# -- any payload: invariants --------------------------------------------------------------------

#: Reject codes a client may see for what it sends (INTERNAL_ERROR is a bug, never input's fault).
CLIENT_CODES = {code.value for code in Code} - {Code.INTERNAL_ERROR.value}
#: Wire texts that are easy to get wrong: non-finite, signed zero, exponents, too precise or too
#: large, padded, other scripts' digits, wrong case, empty.
TRICKY = [
    *("NaN", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "-0", "0", "0.0", "1e3", "2E0"),
    *("0.000000000000000000000001", "9" * 40, " 1", "1 ", "1_0", "+1", ".5", "0x10", "\u0661"),
    *("", " ", "1", "2", "0.5", "0.00001", "250000", "buy", "sell", "two_way", "BUY", "btc-usdt"),
    *("BTC-USDT", "ETH-USDT", "BTC-USD", "x" * 65, "\U0001f600"),
]
JSON_VALUES = st.one_of(
    st.sampled_from(TRICKY),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def client_payloads(draw: st.DrawFn, fields: dict[str, object]) -> bytes:
    """``fields`` with some members changed, dropped, added or given twice, as JSON text; or
    that text cut or bytes spliced in; or any bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    members = list(fields.items())
    names = [*fields, "rfq_id", "quote_id", "symbol", "side", "qty", "notional", "price"]
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "drop", "add"]))
        if action == "add" or not members:
            members.append((draw(st.sampled_from(names)), draw(JSON_VALUES)))
        elif action == "set":
            i = draw(st.integers(0, len(members) - 1))
            members[i] = (members[i][0], draw(JSON_VALUES))
        else:
            del members[draw(st.integers(0, len(members) - 1))]
    encode = msgspec.json.encode
    text = b"{" + b",".join(encode(k) + b":" + encode(v) for k, v in members) + b"}"
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(max_size=4)) + text[at + draw(st.integers(0, 4)) :]
    return text


def assert_well_formed(reply: dict[str, Any], inst: dict[str, InstrumentConfig]) -> None:
    """A reject with a documented code and a reason; or a quote of plain, tick-aligned prices."""
    if reply["type"] in ("reject", "accept_reject"):
        assert reply["code"] in CLIENT_CODES, reply
        assert reply["reason"].strip(), reply
        return
    assert reply["type"] in ("quote", "fill"), reply
    tick = inst[reply["symbol"]].tick_size
    for key in ("bid", "ask", "price"):
        text = reply.get(key)
        if text is not None:
            assert text == plain(D(text)), reply  # plain notation, no float artefacts
            assert D(text) > 0, reply
            assert D(text) % tick == 0, reply
    if reply.get("side") == "two_way" and reply["type"] == "quote":
        assert D(reply["bid"]) < D(reply["ask"]), reply


@functools.cache
def shared_repo_config() -> Config:
    return repo_config()


@settings(max_examples=30, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["client-a", "client-b"]),
            st.sampled_from(["rfq", "two_way", "accept"]),
            st.data(),
        ),
        min_size=1,
        max_size=5,
    )
)
async def test_any_payload_gets_a_well_formed_reply_and_leaves_the_state_sound(
    steps: list[tuple[str, str, st.DataObject]],
) -> None:
    desk = Desk(shared_repo_config(), sim_refresh())  # a fresh engine, market and journal
    engine = desk.engine
    inst = {i.symbol: i for i in desk.config.instruments}
    for n, (client, kind, data) in enumerate(steps):
        if kind in ("rfq", "two_way"):
            size = {"qty": "1"} if kind == "rfq" else {"notional": "250000"}
            side = "buy" if kind == "rfq" else "two_way"
            fields = {"rfq_id": f"p{n}", "symbol": "BTC-USDT", "side": side, **size}
            reply = await desk.send_rfq(client, data.draw(client_payloads(fields)))
            assert_well_formed(reply, inst)
            continue
        quote = await desk.quote(client, rfq_id=f"q{n}", side="two_way", qty="2")
        fields = {"quote_id": quote["quote_id"], "side": "buy", "qty": "2"}
        accepter = data.draw(st.sampled_from([client, "client-a", "client-b"]))
        payload = data.draw(client_payloads(fields))
        positions, used = engine.positions, engine.daily_notional(accepter)
        reply = await desk.send_accept(accepter, payload)
        assert_well_formed(reply, inst)
        if reply["type"] == "accept_reject":  # a refused accept changes nothing
            assert (engine.positions, engine.daily_notional(accepter)) == (positions, used)
        else:
            assert accepter == client
            assert reply["quote_id"] == quote["quote_id"]
    # Every reply went to the sender's own topic (send_rfq and send_accept check each one).
    # The state is sound: a plain RFQ is quoted, and its accept fills exactly once.
    quote = await desk.quote("client-a", rfq_id="after-all", side="sell", qty="0.5")
    accept = msgspec.json.encode({"quote_id": quote["quote_id"]})
    fill = await desk.send_accept("client-a", accept)
    position = engine.positions["BTC"]
    assert fill["type"] == "fill"
    assert await desk.send_accept("client-a", accept) == fill
    assert engine.positions["BTC"] == position


def test_an_rfq_id_with_control_characters_is_refused() -> None:
    # Journaled as it came, it printed a line of its own in the blotter.
    for rfq_id in ("a\nb", "\x1b[31m", "tab\there"):
        with pytest.raises(ProtocolError, match="printable") as info:
            parse_rfq(
                msgspec.json.encode({"rfq_id": rfq_id, "symbol": "X", "side": "buy", "qty": "1"})
            )
        assert info.value.code == Code.INVALID_MESSAGE


async def test_an_rfq_whose_reject_the_journal_did_not_take_leaves_its_id_free(desk: Desk) -> None:
    """A reject that could not be journaled is answered INTERNAL_ERROR ("the journal could not
    record the RFQ"): the client asks again with the same id and gets the real answer, not
    DUPLICATE_RFQ_ID (as for a quote the journal did not take)."""
    desk.journal.error = JournalError("disk full")
    refused = await desk.rfq(rfq_id="r-1", symbol="DOGE-USDT")
    assert (refused["type"], refused["code"]) == ("reject", "INTERNAL_ERROR")
    desk.journal.error = None
    again = await desk.rfq(rfq_id="r-1", symbol="DOGE-USDT")
    assert (again["type"], again["code"]) == ("reject", "UNKNOWN_SYMBOL"), again
    assert (await desk.rfq(rfq_id="r-1"))["code"] == "DUPLICATE_RFQ_ID"  # now it was journaled
