"""MQTT 5 clients against the engine: the wire protocol works on MQTT 3.1.1 and 5.

A real mosquitto (it speaks both; amqtt 0.12.1 speaks 3.1.1 only, so these tests skip on it)
carries RFQs and accepts from MQTT 5 clients (aiomqtt with ``ProtocolVersion.V5``, and
``mosquitto_pub``/``mosquitto_sub -V mqttv5``) to a running engine: quotes, fills, rejects
naming the problem, the retained status, and the production ACL.

The engine speaking MQTT 5 (``[broker] mqtt_version = "5"``) publishes a quote with a Message
Expiry Interval, its validity rounded up to whole seconds: a client session that was offline is
not handed a quote long expired when it comes back. A publication the broker refuses (a PUBACK
reason code from 0x80: the ACL denies the topic) is an error at once for ``otc rfq``, and a
logged error for the engine, which serves on.

What MQTT 5 adds that the engine must not depend on or obey: publication properties (a Response
Topic, Correlation Data, user properties, a content type, a payload format indicator, a Message
Expiry Interval, a Topic Alias) are the client's to set or not. The answer goes to the sender's
own reply topic, whatever Response Topic it names: honouring it would let a client make the
engine publish where it chooses (another client's topic, the status).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest
from broker import (
    AMQTT_NO_MQTT5,
    MOSQUITTO_PUB,
    MOSQUITTO_SUB,
    RECEIVE_TIMEOUT_S,
    Publication,
    configured_broker_kind,
    needs_mosquitto,
    needs_mosquitto_clients,
    running_broker,
    secured_broker,
)
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_broker_acl import ENGINE, login, shipped_config
from test_broker_restart import start_engine

from otc.app import Engine
from otc.broker import AuthFiles, BrokerProcess, generate_auth

V5 = aiomqtt.ProtocolVersion.V5


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[BrokerProcess, Engine]]:
    """The demo configuration's engine, up, on a broker that speaks MQTT 5."""
    if configured_broker_kind() == "amqtt":
        pytest.skip(AMQTT_NO_MQTT5)
    with running_broker(tmp_path / "broker") as broker:
        if broker.kind == "amqtt":
            pytest.skip(AMQTT_NO_MQTT5)
        running, task = await start_engine(broker.host, broker.port, tmp_path / "j.sqlite")
        try:
            yield broker, running
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def v5_client(broker: BrokerProcess, **options: Any) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, protocol=V5, **options)


def properties(**values: object) -> Properties:
    """PUBLISH properties: ``ResponseTopic="..."``, ``UserProperty=[(k, v)]``..."""
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


async def until(messages: AsyncIterator[aiomqtt.Message], topic: str) -> list[aiomqtt.Message]:
    """Messages received up to and including the first on ``topic``."""
    seen = []
    async with asyncio.timeout(RECEIVE_TIMEOUT_S):
        async for message in messages:
            seen.append(message)
            if message.topic.value == topic:
                return seen
    raise AssertionError(f"the connection ended before a message on {topic}")


def body(message: aiomqtt.Message) -> dict[str, Any]:
    assert isinstance(message.payload, bytes)
    decoded: dict[str, Any] = msgspec.json.decode(message.payload)
    return decoded


def rfq(rfq_id: str, qty: str = "1", side: str = "buy") -> bytes:
    return json.dumps({"rfq_id": rfq_id, "symbol": "BTC-USDT", "side": side, "qty": qty}).encode()


async def test_an_mqtt5_client_is_quoted_and_filled_whatever_properties_it_sets(
    engine: tuple[BrokerProcess, Engine],
) -> None:
    """A Response Topic naming another client's quotes, or the status, is not obeyed: the answer
    goes to the sender's own topic; the other properties change nothing either."""
    broker, _ = engine
    lure = "otc/v1/client-b/quotes"
    async with v5_client(broker) as client:
        # Everything published anywhere (but $SYS), to see where the engine's answers go.
        await client.subscribe("otc/#", qos=1)
        await client.subscribe("elsewhere/#", qos=1)
        await client.publish(
            "otc/v1/client-a/rfq",
            rfq("v5-1"),
            qos=1,
            properties=properties(
                ResponseTopic=lure,
                CorrelationData=b"\x00\x01",
                UserProperty=[("reply-to", "elsewhere/x"), ("k", "v")],
                ContentType="text/plain",
                PayloadFormatIndicator=1,
                MessageExpiryInterval=3600,
            ),
        )
        seen = await until(client.messages, "otc/v1/client-a/quotes")
        quote = body(seen[-1])
        assert quote["type"] == "quote"
        assert quote["rfq_id"] == "v5-1"
        assert quote["ask"] is not None
        # The accept names the status as its Response Topic: the fill comes on fills all the same.
        await client.publish(
            "otc/v1/client-a/accept",
            json.dumps({"quote_id": quote["quote_id"]}).encode(),
            qos=1,
            properties=properties(ResponseTopic="otc/v1/status", CorrelationData=b"c"),
        )
        seen += await until(client.messages, "otc/v1/client-a/fills")
        fill = body(seen[-1])
        assert fill["type"] == "fill"
        assert fill["price"] == quote["ask"]
    # The engine's publications arrive in order: nothing before the fill went elsewhere.
    topics = [message.topic.value for message in seen]
    assert lure not in topics
    assert not [topic for topic in topics if topic.startswith("elsewhere/")]
    assert [body(m)["state"] for m in seen if m.topic.value == "otc/v1/status"] == ["up"]


async def test_an_mqtt5_client_gets_a_reject_naming_the_problem_and_the_status(
    engine: tuple[BrokerProcess, Engine],
) -> None:
    broker, _ = engine
    async with v5_client(broker) as client:
        await client.subscribe("otc/v1/status", qos=1)
        status = body(await anext(aiter(client.messages)))
        assert status["state"] == "up"
        assert "BTC-USDT" in status["symbols"]
        await client.subscribe("otc/v1/client-a/quotes", qos=1)
        for rfq_id, payload, code, named in [
            ("v5-neg", rfq("v5-neg", qty="-1"), "INVALID_QTY", "'-1'"),
            (
                "v5-num",
                b'{"rfq_id": "v5-num", "symbol": "BTC-USDT", "side": "buy", "qty": 1}',
                "INVALID_MESSAGE",
                "qty",
            ),
        ]:
            await client.publish("otc/v1/client-a/rfq", payload, qos=1)
            answer = body((await until(client.messages, "otc/v1/client-a/quotes"))[-1])
            assert (answer["type"], answer["rfq_id"], answer["code"]) == ("reject", rfq_id, code)
            assert named in answer["reason"], answer


async def test_an_mqtt5_client_publishing_through_a_topic_alias_is_answered(
    engine: tuple[BrokerProcess, Engine],
) -> None:
    """A Topic Alias stands for the topic name of a client's earlier publication: the broker
    resolves it, and the engine sees (and answers on) the client's own topic."""
    broker, _ = engine
    async with v5_client(broker) as client:
        await client.subscribe("otc/v1/client-a/quotes", qos=1)
        await client.publish(
            "otc/v1/client-a/rfq", rfq("alias-1"), qos=1, properties=properties(TopicAlias=1)
        )
        first = body((await until(client.messages, "otc/v1/client-a/quotes"))[-1])
        await client.publish("", rfq("alias-2"), qos=1, properties=properties(TopicAlias=1))
        second = body((await until(client.messages, "otc/v1/client-a/quotes"))[-1])
    assert (first["rfq_id"], first["type"]) == ("alias-1", "quote")
    assert (second["rfq_id"], second["type"]) == ("alias-2", "quote")


@needs_mosquitto_clients
async def test_mosquitto_pub_and_sub_speaking_mqtt5_get_a_quote_and_a_reject(
    engine: tuple[BrokerProcess, Engine],
) -> None:
    """``mosquitto_sub -V mqttv5`` waits for two answers; ``mosquitto_pub -V mqttv5`` sends an
    RFQ (with a Response Topic elsewhere and a user property) until the subscriber is attached
    (an answer sent before it attached is lost to it), then a bad one."""
    broker, _ = engine
    assert MOSQUITTO_PUB is not None
    assert MOSQUITTO_SUB is not None
    # mosquitto 2.0 takes "-V 5" too, 1.6 only "-V mqttv5"
    where = ("-h", broker.host, "-p", str(broker.port), "-V", "mqttv5")
    sub = await asyncio.create_subprocess_exec(
        MOSQUITTO_SUB,
        *where,
        *("-t", "otc/v1/client-a/quotes", "-t", "otc/v1/client-c/quotes", "-v", "-C", "2"),
        stdout=asyncio.subprocess.PIPE,
    )
    assert sub.stdout is not None
    try:
        async with asyncio.timeout(RECEIVE_TIMEOUT_S):
            for attempt in range(1000):
                rfq_id = f"pub-{attempt}-{uuid.uuid4().hex[:6]}"
                pub = await asyncio.create_subprocess_exec(
                    MOSQUITTO_PUB,
                    *where,
                    *("-q", "1", "-t", "otc/v1/client-a/rfq", "-m", rfq(rfq_id).decode()),
                    *("-D", "publish", "response-topic", "otc/v1/client-c/quotes"),
                    *("-D", "publish", "user-property", "reply-to", "otc/v1/client-c/quotes"),
                )
                assert await pub.wait() == 0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.3):
                        line = await sub.stdout.readline()
                        break
            topic, _, text = line.decode().partition(" ")
            assert topic == "otc/v1/client-a/quotes"
            quote = json.loads(text)
            assert (quote["type"], quote["rfq_id"]) == ("quote", rfq_id)
            pub = await asyncio.create_subprocess_exec(
                MOSQUITTO_PUB,
                *where,
                *("-q", "1", "-t", "otc/v1/client-a/rfq", "-m", rfq("pub-bad", side="up").decode()),
            )
            assert await pub.wait() == 0
            topic, _, text = (await sub.stdout.readline()).decode().partition(" ")
            assert await sub.wait() == 0
    finally:
        if sub.returncode is None:
            sub.kill()
            await sub.wait()
    assert topic == "otc/v1/client-a/quotes"  # the second answer too: nothing on client-c's
    reject = json.loads(text)
    assert (reject["type"], reject["rfq_id"], reject["code"]) == (
        "reject",
        "pub-bad",
        "INVALID_SIDE",
    )
    assert "'up'" in reject["reason"], reject


# -- the production ACL, with MQTT 5 clients ----------------------------------------------------


@needs_mosquitto
@pytest.mark.parametrize("config", ["generated", "shipped"])
async def test_an_mqtt5_client_cannot_read_another_clients_quotes(
    tmp_path: Path, config: str
) -> None:
    """mosquitto 2.0 grants an MQTT 5 client's subscriptions (one reason code each) and
    delivers only what the ACL lets its user read: client-a never gets client-b's quote, by
    name, by ``+`` or by ``#``."""
    auth = generate_auth(["client-a", "client-b"], ENGINE, tmp_path / "auth")
    broker_dir = tmp_path / "broker"
    if config == "generated":
        started = secured_broker(broker_dir, auth)
    else:
        file, port = shipped_config(auth, broker_dir)
        started = running_broker(broker_dir, kind="mosquitto", config_file=file, port=port)
    with started as secured:
        async with (
            login(secured, auth, ENGINE) as engine,
            v5_login(secured, auth, "client-a") as client_a,
            v5_login(secured, auth, "client-b") as client_b,
        ):
            codes = {
                topic: await client_a.subscribe(topic, qos=1)
                for topic in ("otc/v1/client-b/quotes", "otc/v1/+/quotes", "otc/v1/#")
            }
            await client_b.subscribe("otc/v1/client-b/quotes", qos=1)
            await engine.publish(Publication("otc/v1/client-b/quotes", b'{"for": "client-b"}'))
            await engine.publish(Publication("otc/v1/client-a/quotes", b'{"for": "client-a"}'))
            async with asyncio.timeout(RECEIVE_TIMEOUT_S):
                got_b = await anext(aiter(client_b.messages))
                got_a = await anext(aiter(client_a.messages))
    assert (got_b.topic.value, got_b.payload) == ("otc/v1/client-b/quotes", b'{"for": "client-b"}')
    # The message to client-b was published first: had client-a got it, it would come first.
    assert (got_a.topic.value, got_a.payload) == ("otc/v1/client-a/quotes", b'{"for": "client-a"}')
    for topic, granted in codes.items():  # a list of reason codes under MQTT 5
        assert len(granted) == 1, (topic, granted)


def v5_login(broker: BrokerProcess, auth: AuthFiles, user: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=user,
        password=auth.passwords[user],
        identifier=user,
        protocol=V5,
    )


# -- quotes expire in the broker: the engine speaking MQTT 5 ------------------------------------

#: A 1.5 s quote, which the broker keeps 2 s (its validity rounded up to whole seconds).
QUOTE_TTL_MS = 1500
#: The client id of client-a's persistent session.
SESSION_ID = "client-a-persistent"


@pytest.fixture
async def v5_engine(tmp_path: Path) -> AsyncIterator[BrokerProcess]:
    """The demo configuration's engine speaking MQTT 5, its quotes firm for 1.5 s, up."""
    if configured_broker_kind() == "amqtt":
        pytest.skip(AMQTT_NO_MQTT5)
    with running_broker(tmp_path / "broker") as broker:
        if broker.kind == "amqtt":
            pytest.skip(AMQTT_NO_MQTT5)
        _, task = await start_engine(
            broker.host, broker.port, tmp_path / "j.sqlite", "5", quote_ttl_ms=QUOTE_TTL_MS
        )
        try:
            yield broker
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def session(broker: BrokerProcess, *, resume: bool) -> aiomqtt.Client:
    """client-a's persistent session, kept an hour after it disconnects: new, or resumed."""
    connect = Properties(PacketTypes.CONNECT)
    connect.SessionExpiryInterval = 3600
    return v5_client(broker, identifier=SESSION_ID, clean_start=not resume, properties=connect)


def expiry_s(message: aiomqtt.Message) -> int | None:
    """A received message's Message Expiry Interval (what is left of it), if it has one."""
    value = getattr(message.properties, "MessageExpiryInterval", None)
    assert value is None or isinstance(value, int)
    return value


@pytest.mark.parametrize("back", ["after_expiry", "before_expiry"])
async def test_a_quote_for_an_offline_session_expires_in_the_broker(
    v5_engine: BrokerProcess, back: str
) -> None:
    """client-a's persistent session subscribes to its quotes and goes offline; an RFQ is sent
    as client-a by another connection; the session comes back once the quote expired in the
    broker (no quote), or well before (the quote, with what is left of its expiry)."""
    broker = v5_engine
    quotes = "otc/v1/client-a/quotes"
    async with session(broker, resume=False) as client:
        await client.subscribe(quotes, qos=1)
    async with v5_client(broker) as other:
        await other.subscribe(quotes, qos=1)
        await other.publish("otc/v1/client-a/rfq", rfq(f"offline-{back}"), qos=1)
        sent = (await until(other.messages, quotes))[-1]
        seen_at = time.monotonic()  # the broker had the quote by then
        quote = body(sent)
        assert (quote["type"], quote["rfq_id"]) == ("quote", f"offline-{back}"), quote
        kept_s = math.ceil(QUOTE_TTL_MS / 1000)
        assert expiry_s(sent) in (kept_s - 1, kept_s), sent.properties  # delivered at once
        if back == "after_expiry":
            # A wait on the broker's own clock, which counts whole seconds: a message it keeps
            # 2 s is dropped within 3 s of its arrival.
            await asyncio.sleep(seen_at + kept_s + 1.5 - time.monotonic())
            assert time.time() * 1000 > quote["valid_until_ms"]
        async with session(broker, resume=True) as client:
            # Published once the session is back: it comes after anything the broker kept.
            await other.publish(quotes, b'{"type": "marker"}', qos=1)
            delivered = []
            async with asyncio.timeout(RECEIVE_TIMEOUT_S):
                async for message in client.messages:
                    delivered.append(message)
                    if body(message)["type"] == "marker":
                        break
    if back == "after_expiry":
        assert [body(m) for m in delivered] == [{"type": "marker"}]
    else:
        assert [body(m) for m in delivered] == [quote, {"type": "marker"}]
        assert expiry_s(delivered[0]) in range(1, kept_s + 1), delivered[0].properties
        assert expiry_s(delivered[1]) is None


# -- publications the broker refuses (a PUBACK reason code from 0x80) ---------------------------


@needs_mosquitto
def test_otc_rfq_as_another_client_is_told_at_once_the_broker_refused_it(tmp_path: Path) -> None:
    """client-a's user sending an RFQ as client-b: the ACL denies the topic, and ``otc rfq``
    says so and exits 2, rather than wait out its timeout for an answer that cannot come (no
    engine runs: the broker's refusal is the whole answer)."""
    auth = generate_auth(["client-a", "client-b"], ENGINE, tmp_path / "auth")
    with secured_broker(tmp_path / "broker", auth) as broker:
        password = urllib.parse.quote(auth.passwords["client-a"], safe="")
        done = subprocess.run(
            [
                *(sys.executable, "-m", "otc.cli", "rfq", "--client", "client-b"),
                *("--broker", f"mqtt://client-a:{password}@{broker.host}:{broker.port}"),
                *("--mqtt-version", "5", "--timeout", "30"),
                *("--symbol", "BTC-USDT", "--side", "buy", "--qty", "1"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert (
        "the broker refused the publication to otc/v1/client-b/rfq: Not authorized (0x87)"
        in done.stderr
    ), done.stderr


@needs_mosquitto
async def test_a_publication_of_the_engine_the_broker_refuses_is_logged_and_it_serves_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL that lets the engine answer client-a but not client-b: client-b's quote is
    refused (0x87), which the engine logs as an error naming the topic, without reconnecting;
    client-a is quoted as before."""
    auth = generate_auth(["client-a", "client-b"], ENGINE, tmp_path / "auth")
    acl = auth.acl_file.read_text()
    assert "topic write otc/v1/+/quotes\n" in acl
    auth.acl_file.write_text(
        acl.replace("topic write otc/v1/+/quotes\n", "topic write otc/v1/client-a/quotes\n")
    )
    caplog.set_level(logging.ERROR, logger="otc.app")
    with secured_broker(tmp_path / "broker", auth) as broker:
        engine, task = await start_engine(
            broker.host,
            broker.port,
            tmp_path / "j.sqlite",
            "5",
            username=ENGINE,
            password=auth.passwords[ENGINE],
        )
        try:
            async with v5_login(broker, auth, "client-b") as client_b:
                await client_b.publish("otc/v1/client-b/rfq", rfq("refused-1"), qos=1)
                async with asyncio.timeout(RECEIVE_TIMEOUT_S):  # a guard, not a timing
                    while not engine.refused:  # noqa: ASYNC110 - the engine's count, polled
                        await asyncio.sleep(0.01)
            async with v5_login(broker, auth, "client-a") as client_a:
                await client_a.subscribe("otc/v1/client-a/quotes", qos=1)
                await client_a.publish("otc/v1/client-a/rfq", rfq("served-1"), qos=1)
                answer = body((await until(client_a.messages, "otc/v1/client-a/quotes"))[-1])
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert (answer["type"], answer["rfq_id"]) == ("quote", "served-1"), answer
    assert engine.refused == {"otc/v1/client-b/quotes": 1}
    assert engine.reconnects == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert (
        "the broker refused the publication to otc/v1/client-b/quotes: Not authorized (0x87)"
        in errors[0]
    )
    assert "'otc-engine' write it?" in errors[0]
