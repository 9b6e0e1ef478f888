"""The message bus: one MQTT connection, the only module of ``otc`` that imports aiomqtt.

A :class:`Bus` is an async context manager around one ``aiomqtt.Client``: it connects (plain TCP
or TLS, username and password), registers a last will, publishes at QoS 1 by default, subscribes
and yields ``(topic, payload)`` pairs::

    async with Bus(host="127.0.0.1", port=1883, will=status_down) as bus:
        await bus.subscribe("otc/v1/+/rfq", "otc/v1/+/accept")
        async for topic, payload in bus.messages():
            ...

Latency: paho and aiomqtt leave Nagle's algorithm on, which holds back a small write while an
earlier one is unacknowledged (with delayed ACKs on the other side, a QoS 1 round trip then
takes 40-90 ms instead of under a millisecond). The bus sets ``TCP_NODELAY`` on its socket right
after connecting, through aiomqtt's ``socket_options``; :attr:`Bus.tcp_nodelay` reads the option
back from the live socket. The broker needs the same (``set_tcp_nodelay true`` in mosquitto).

MQTT 3.1.1 by default; ``protocol="5"`` speaks MQTT 5 (mosquitto; amqtt 0.12.1 refuses it), with
the same behaviour: a clean start and a session that ends with the connection (no Session
Expiry Interval), subscriptions whose retained messages come with the retain flag only when the
broker replays them on subscribing ("retain as published" off, as in 3.1.1), a SUBACK reason code
of 0x80 or above a refusal. Properties of received messages are ignored; a publication's
``expiry_s`` (a quote's) goes as its Message Expiry Interval, under MQTT 5 only. Under MQTT 5 a
PUBACK carries a reason code, and one of 0x80 or above (0x87 Not authorized: the ACL denies the
topic) means the broker dropped the message: aiomqtt ignores it, the bus raises
:class:`PublicationRefused`. Under 3.1.1 a broker drops such a message silently (mosquitto
acknowledges it all the same), and at QoS 0 there is no acknowledgement to read. At QoS 2 the
refusal is not seen either: it comes in the PUBREC, whose reason code paho (2.2) drops, and
mosquitto then completes the exchange (PUBCOMP) with success.

Every aiomqtt or socket error leaving this module is a :class:`BusError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self, TypeVar, get_args

import aiomqtt
import msgspec
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from otc.errors import OtcError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "MQTT_VERSIONS",
    "BrokerUrl",
    "Bus",
    "BusError",
    "MqttVersion",
    "PublicationRefused",
    "parse_broker_url",
]

DEFAULT_PORT: Final = 1883
DEFAULT_TLS_PORT: Final = 8883

#: The MQTT versions a :class:`Bus` speaks: "3.1.1" (the default) or "5".
MqttVersion = Literal["3.1.1", "5"]
MQTT_VERSIONS: Final[tuple[MqttVersion, ...]] = get_args(MqttVersion)
_PROTOCOLS: Final = {"3.1.1": aiomqtt.ProtocolVersion.V311, "5": aiomqtt.ProtocolVersion.V5}

_NODELAY: Final = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
#: Pending calls (publications awaiting their PUBACK...) beyond which aiomqtt logs a warning.
_PENDING_CALLS_WARNING: Final = 10_000
#: The longest string MQTT carries (a two-byte length prefix): user, password, client id.
_MAX_MQTT_STRING: Final = 65_535

T = TypeVar("T")

log = logging.getLogger(__name__)


class BusError(OtcError):
    """The broker cannot be reached, refused us, or the connection broke.

    Raised by :class:`Bus` (connect, publish, subscribe, a broken connection while iterating
    messages) and by :func:`parse_broker_url` for a malformed URL. ``where`` is ``host:port``
    (or the URL), ``problem`` what went wrong.
    """

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class PublicationRefused(BusError):
    """The broker acknowledged a publication with a reason code of 0x80 or above (MQTT 5,
    QoS 1: at QoS 2 paho drops the PUBREC's code): it dropped the message, and says why
    (``0x87 Not authorized``: the ACL does not let the user write ``topic``). The connection
    is fine.

    ``topic`` is the publication's, ``reason`` the broker's reason (its name), ``code`` its
    value.
    """

    def __init__(self, where: str, topic: str, reason: str, code: int) -> None:
        self.topic = topic
        self.reason = reason
        self.code = code
        super().__init__(
            where, f"the broker refused the publication to {topic}: {reason} (0x{code:02X})"
        )


class Publishable(Protocol):
    """What the bus publishes: ``otc.protocol.Outgoing`` or anything shaped like it."""

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...

    @property
    def retain(self) -> bool: ...

    @property
    def expiry_s(self) -> int | None: ...


class BrokerUrl(msgspec.Struct, frozen=True, kw_only=True):
    """Where a broker is and how to log in, from ``mqtt://user:pass@host:port``."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` (TLS).

    The port defaults to 1883 (``mqtt``) or 8883 (``mqtts``); user and password are
    percent-decoded; an IPv6 host is written in brackets (``mqtt://[::1]:1883``).

    Raises:
        BusError: unknown scheme, no host, a bad port, or a path, query or fragment.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BusError(url, f"not a broker URL: {exc}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise BusError(url, "the scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise BusError(url, "no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BusError(url, "a broker URL has no path, query or fragment")
    if port == 0:
        raise BusError(url, "port 0 is not a port to connect to")
    tls = parts.scheme == "mqtts"
    return BrokerUrl(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_TLS_PORT if tls else DEFAULT_PORT,
        username=urllib.parse.unquote(parts.username) if parts.username is not None else None,
        password=urllib.parse.unquote(parts.password) if parts.password is not None else None,
        tls=tls,
    )


class Bus:
    """One MQTT connection: publish, subscribe, iterate received messages.

    An async context manager: entering connects (and sets ``TCP_NODELAY``), leaving
    disconnects cleanly, so the broker does not publish the last will. It is reusable, not
    reentrant: each ``async with`` opens a fresh connection (subscriptions do not carry over),
    and entering it again while connected raises :class:`BusError`.

    Args:
        host: The broker's host name or address.
        port: The broker's port.
        username: The user to log in as (a client's id is its user name).
        password: The user's password.
        tls: Connect over TLS, verifying the broker's certificate against the system's CAs.
        client_id: The MQTT client id; a random one when ``None``. Two connections with the
            same id knock each other off the broker.
        will: Published by the broker (with its ``retain`` flag) when the connection drops
            without a clean disconnect; the engine's retained status ``down``.
        qos: The QoS of publications, subscriptions and the will: 1 (at least once) by
            default, 0 for fire-and-forget.
        tcp_nodelay: Set ``TCP_NODELAY`` on the socket (the default). ``False`` leaves Nagle's
            algorithm on, as plain paho does: only to measure what it costs
            (``otc bench rfq``).
        timeout: Seconds each exchange with the broker may take (connecting, a subscription,
            a QoS 1 publication) before :class:`BusError`; aiomqtt's 10 s when ``None``.
        max_queued: Received messages kept waiting for :meth:`messages` at most (0: no
            bound); beyond it they are dropped, counted in :attr:`dropped` and logged at the
            1st, 2nd, 4th, 8th... drop of a connection (a warning per message, as aiomqtt
            logs them, wrote thousands of lines a second during a flood). The engine bounds
            it so that a flood costs dropped RFQs, not memory without end.
        keepalive: Seconds (1 to 65,535) the connection may stay silent. After that the
            client pings the broker, and drops the connection when the ping is not answered
            within as long again (:meth:`messages` then raises :class:`BusError`); the broker
            drops a client it has not heard from for 1.5 times as long, publishing its will.
            aiomqtt's 60 s by default: the engine's is shorter (``[broker] keepalive_s``).
        protocol: The MQTT version: "3.1.1" (the default) or "5" (see the module's docstring).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        client_id: str | None = None,
        will: Publishable | None = None,
        qos: int = 1,
        tcp_nodelay: bool = True,
        timeout: float | None = None,
        max_queued: int = 0,
        keepalive: int = 60,
        protocol: MqttVersion = "3.1.1",
    ) -> None:
        if protocol not in MQTT_VERSIONS:
            raise ValueError(f"protocol must be one of {MQTT_VERSIONS}, not {protocol!r}")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        if not 1 <= keepalive <= 65_535:  # 0 would turn pings off: a silent peer goes unseen
            raise ValueError(f"keepalive must be within 1..65535 s, not {keepalive!r}")
        self._keepalive = keepalive
        self._protocol: MqttVersion = protocol
        self._timeout = timeout
        self._max_queued = max_queued
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._tls = tls
        self._client_id = client_id
        self._will = will
        self._qos = qos
        self._socket_options = (_NODELAY,) if tcp_nodelay else ()
        self._client: _Client | None = None
        self._dropped = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        client_id: str | None = None,
        will: Publishable | None = None,
        qos: int = 1,
        protocol: MqttVersion = "3.1.1",
    ) -> Bus:
        """A bus for the broker at ``url`` (see :func:`parse_broker_url`).

        Args:
            url: ``mqtt://user:password@host:port`` or ``mqtts://...``.
            client_id: As for :class:`Bus`.
            will: As for :class:`Bus`.
            qos: As for :class:`Bus`.
            protocol: As for :class:`Bus`.
        """
        where = parse_broker_url(url)
        return cls(
            host=where.host,
            port=where.port,
            username=where.username,
            password=where.password,
            tls=where.tls,
            client_id=client_id,
            will=will,
            qos=qos,
            protocol=protocol,
        )

    @property
    def protocol(self) -> MqttVersion:
        """The MQTT version the bus speaks."""
        return self._protocol

    @property
    def where(self) -> str:
        """``host:port`` of the broker, for messages."""
        return f"{self._host}:{self._port}"

    async def __aenter__(self) -> Self:
        if self._client is not None:
            raise BusError(self.where, "the bus is reusable, but not reentrant")
        for name, value in (
            ("username", self._username),
            ("password", self._password),
            ("client id", self._client_id),
        ):  # an MQTT string is at most 65,535 bytes: paho would fail packing it (struct.error)
            if value is not None and len(value.encode()) > _MAX_MQTT_STRING:
                raise BusError(self.where, f"the {name} is longer than {_MAX_MQTT_STRING} bytes")
        will = None
        if self._will is not None:
            will = aiomqtt.Will(
                topic=self._will.topic,
                payload=self._will.payload,
                qos=self._qos,
                retain=self._will.retain,
            )
        tls_context = await asyncio.to_thread(ssl.create_default_context) if self._tls else None
        # MQTT 5: a clean start, and no Session Expiry Interval (0: the session ends with the
        # connection), as a 3.1.1 clean session (paho's default, which 5 refuses to be given).
        session: dict[str, Any] = {"clean_start": True} if self._protocol == "5" else {}
        client = _Client(
            self._host,
            self._port,
            where=self.where,
            username=self._username,
            password=self._password,
            identifier=self._client_id,
            will=will,
            tls_context=tls_context,
            socket_options=self._socket_options,
            timeout=self._timeout,
            max_queued_incoming_messages=self._max_queued,
            keepalive=self._keepalive,
            protocol=_PROTOCOLS[self._protocol],
            **session,
        )
        # aiomqtt logs a warning on every call made while more than 10 are pending: the engine
        # has up to `max_in_flight` publications awaiting their PUBACK under load, and a log
        # line per message would cost more than the message.
        client.pending_calls_threshold = _PENDING_CALLS_WARNING
        try:
            await _keep_cancellation(client.__aenter__())
        except aiomqtt.MqttError as exc:
            _drop_socket(client)  # a CONNACK arriving late must not make a session of it
            raise BusError(self.where, f"cannot connect: {exc}") from exc
        self._client = client
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._dropped = client.dropped
        try:
            await client.__aexit__(exc_type, exc, tb)
        except aiomqtt.MqttError as error:
            if exc is None:  # never hide the error that is already leaving the block
                raise BusError(self.where, f"disconnect failed: {error}") from error
        finally:
            # aiomqtt leaves the socket of a connection already lost open (its __aexit__ returns
            # early): paho would keep reading a packet it cannot handle, at 100 % CPU.
            _drop_socket(client)
            lost = client._disconnected
            if lost.done() and not lost.cancelled():
                lost.exception()  # seen: asyncio must not log it as never retrieved

    @property
    def dropped(self) -> int:
        """Received messages dropped because ``max_queued`` were waiting, on the current
        connection (or the last one, once closed)."""
        return self._client.dropped if self._client is not None else self._dropped

    def _connected(self) -> _Client:
        if self._client is None:
            raise BusError(self.where, "not connected: use the bus inside `async with`")
        return self._client

    async def publish(self, message: Publishable) -> None:
        """Publish ``message`` at the bus's QoS, with its ``retain`` flag.

        At QoS 1 this returns once the broker acknowledged the message (PUBACK). Under MQTT 5,
        a message's ``expiry_s`` is sent as its Message Expiry Interval: the broker drops it,
        rather than hand it to a subscriber that was offline, once that many seconds passed.

        Raises:
            PublicationRefused: under MQTT 5 at QoS 1, the broker acknowledged the message
                with a reason code of 0x80 or above: it dropped it (the connection is fine).
                Not at QoS 2 (see the module's docstring).
            BusError: not connected, the connection broke, or the topic is not a topic name.
        """
        client = self._connected()
        topic = message.topic
        try:
            if self._protocol == "5":
                expiry_s = message.expiry_s
                refusal = await _keep_cancellation(
                    client.publish_checked(
                        topic,
                        message.payload,
                        qos=self._qos,
                        retain=message.retain,
                        properties=None if expiry_s is None else _expiry(expiry_s),
                    )
                )
            else:  # aiomqtt's own publish and PUBACK callback
                await _keep_cancellation(
                    client.publish(topic, message.payload, qos=self._qos, retain=message.retain)
                )
                return
        except (aiomqtt.MqttError, ValueError) as exc:  # ValueError: paho's topic checks
            raise BusError(self.where, f"cannot publish to {topic}: {exc}") from exc
        if refusal is not None:
            raise PublicationRefused(self.where, topic, str(refusal), refusal.value)

    async def subscribe(self, *topics: str) -> None:
        """Subscribe to topics or filters (``+``, ``#``) at the bus's QoS, in one request.

        Returns once the broker acknowledged. Retained messages on the topics arrive through
        :meth:`messages`. A broker enforcing an ACL may accept a subscription and still deliver
        only what the user may read.

        Raises:
            BusError: not connected, the connection broke, a filter is malformed, or the
                broker refused it.
        """
        if not topics:
            return
        client = self._connected()
        wanted: list[tuple[str, Any]]
        if self._protocol == "5":  # retain as published off: the retain flag marks replays only
            options = SubscribeOptions(qos=self._qos, retainAsPublished=False)
            wanted = [(topic, options) for topic in topics]
        else:
            wanted = [(topic, self._qos) for topic in topics]
        try:
            granted = await _keep_cancellation(client.subscribe(wanted))
        except (aiomqtt.MqttError, ValueError) as exc:  # ValueError: paho's filter checks
            raise BusError(self.where, f"cannot subscribe to {', '.join(topics)}: {exc}") from exc
        codes = [code if isinstance(code, int) else code.value for code in granted]
        if len(codes) != len(topics):
            raise BusError(
                self.where, f"the broker answered {len(codes)} codes for {len(topics)} topics"
            )
        refused = [topic for topic, code in zip(topics, codes, strict=True) if code >= 0x80]
        if refused:
            raise BusError(self.where, f"the broker refused the subscription to {refused}")

    def messages(self, *, retained: bool = True) -> AsyncIterator[tuple[str, bytes]]:
        """Received messages as ``(topic, payload)``, in arrival order.

        The iteration ends after a clean disconnect and raises :class:`BusError` when the
        connection breaks; messages that arrived before either are delivered first.

        ``retained=False`` skips, and logs, the messages the broker hands over because they are
        retained: sent on subscribing, they replay something published earlier (requests a
        client published with the retain flag would come back on every reconnection); a
        retained message published while subscribed arrives as a new one (MQTT 3.1.1 section
        3.3.1.3; MQTT 5 section 3.3.1.3 with "retain as published" off, as the bus subscribes)
        and is not skipped.

        Raises:
            BusError: not connected.
        """
        return _Inbox(self._connected(), self.where, skip_retained=not retained)

    @property
    def tcp_nodelay(self) -> bool:
        """Whether ``TCP_NODELAY`` is set on the live socket (read back from the kernel)."""
        sock = self._socket()
        return sock is not None and bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def _socket(self) -> socket.socket | None:
        """The connection's socket (TLS sockets included); ``None`` when not connected."""
        if self._client is None:
            return None
        sock = self._client._client.socket()  # paho's client inside aiomqtt's
        return sock if isinstance(sock, socket.socket) else None


class _Client(aiomqtt.Client):
    """aiomqtt's client, counting the messages its full queue drops instead of logging each;
    under MQTT 5, reading the reason code of each PUBACK (:meth:`publish_checked`)."""

    def __init__(
        self, *args: Any, where: str, max_queued_incoming_messages: int, **kwargs: Any
    ) -> None:
        super().__init__(*args, max_queued_incoming_messages=max_queued_incoming_messages, **kwargs)
        self.where = where
        self.max_queued = max_queued_incoming_messages
        self.dropped = 0
        #: Refusals (PUBACK reason codes from 0x80) of publications awaited, by message id.
        self._refused: dict[int, ReasonCode] = {}
        if kwargs.get("protocol") == aiomqtt.ProtocolVersion.V5:  # 3.1.1 keeps aiomqtt's own
            self._client.on_publish = self._on_publish_checked

    def _on_publish_checked(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason_code.is_failure and mid in self._pending_publishes:  # someone to tell
            self._refused[mid] = reason_code
        self._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool,
        properties: Properties | None,
    ) -> ReasonCode | None:
        """aiomqtt's ``publish``, returning the broker's refusal: the reason code paho hands
        ``on_publish`` when it is 0x80 or above, else ``None``. That is the PUBACK's at QoS 1;
        at QoS 2 the PUBCOMP's (paho drops the PUBREC's, which carries a refusal), and always
        ``None`` at QoS 0.

        aiomqtt (pinned below 3) waits for the acknowledgement and drops its reason code: this
        does the same wait, with its helpers, and keeps the code.
        """
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            lost = self._disconnected
            cause = lost.exception() if lost.done() and not lost.cancelled() else None
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message") from cause
        if info.is_published():  # QoS 0: sent, nothing to wait for
            return None
        confirmation = asyncio.Event()
        try:
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                await self._wait_for(confirmation.wait(), timeout=None)
        finally:
            refusal = self._refused.pop(info.mid, None)
        return refusal

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if not self._queue.full():
            super()._on_message(client, userdata, message)
            return
        self.dropped += 1
        if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8...: a flood logs a few lines
            log.warning(
                "%s: %d received messages dropped so far on this connection: the queue of %d "
                "waiting to be handled is full (logged at 1, 2, 4, 8... drops)",
                self.where,
                self.dropped,
                self.max_queued,
            )


@functools.lru_cache(maxsize=64)
def _expiry(expiry_s: int) -> Properties:
    """PUBLISH properties with a Message Expiry Interval of ``expiry_s``: made once per value
    (8 us each), as the engine's quotes share a few values; paho reads them, never changes."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.MessageExpiryInterval = expiry_s
    return properties


def _drop_socket(client: aiomqtt.Client) -> None:
    """Close the socket of ``client`` if paho still holds one (no DISCONNECT is sent)."""
    paho = client._client
    if paho.socket() is not None:
        with contextlib.suppress(OSError):
            paho._sock_close()


async def _keep_cancellation(call: Awaitable[T]) -> T:
    """Await an aiomqtt call without losing a cancellation of the calling task.

    aiomqtt waits with ``asyncio.wait_for``, which on Python 3.11 swallows a cancellation that
    arrives as the awaited operation completes (python/cpython#86296): the call returns
    normally and the task runs on, so a TaskGroup cancelled at shutdown can hang on the next
    ``messages()``. The task's ``cancelling()`` count shows the lost request: raise it again.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await call
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result


class _Inbox:
    """Async iterator over a client's received messages.

    aiomqtt's own iterator starts a task and an ``asyncio.wait`` for every message, to race the
    queue against a disconnect. This one waits on the queue alone, and a callback on the
    client's ``disconnected`` future wakes it with a sentinel when the connection ends, which
    saves tens of microseconds on every message (aiomqtt is pinned below 3; the bus tests pin
    this behaviour). The queue is bounded (``max_queued``): when it is full as the connection
    ends, the sentinel does not fit, and the end is seen once the queue is drained instead.
    """

    _END: Final = object()

    def __init__(self, client: aiomqtt.Client, where: str, *, skip_retained: bool = False) -> None:
        self._where = where
        self._skip_retained = skip_retained
        self._queue: asyncio.Queue[object] = client._queue  # type: ignore[assignment]
        self._disconnected: asyncio.Future[None] = client._disconnected
        if self._disconnected.done():
            self._wake()
        else:
            self._disconnected.add_done_callback(lambda _: self._wake())

    def _wake(self) -> None:
        """Wake a reader waiting on the empty queue; a full queue has none waiting."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(self._END)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        while True:
            # done() first: the future's (C) method, where the queue's empty() is Python's, and
            # while connected the first test settles it.
            if self._disconnected.done() and self._queue.empty():
                message: object = self._END  # drained, and the sentinel may not have fitted
            else:
                message = await self._queue.get()
            if message is self._END:
                self._wake()  # every later call (and other iterators) ends too
                error = self._disconnected.exception()
                if error is None:
                    raise StopAsyncIteration
                raise BusError(self._where, f"connection lost: {error}") from error
            assert isinstance(message, aiomqtt.Message)
            if not (self._skip_retained and message.retain):
                break
            log.warning(
                "%s: skipped a retained message on %s: the broker replays it on subscribing "
                "(it was handled when it was sent, if anyone was subscribed then)",
                self._where,
                message.topic.value,
            )
        payload = message.payload
        if not isinstance(payload, bytes):  # paho always gives bytes; the type is wider
            payload = str(payload).encode() if payload is not None else b""
        return message.topic.value, payload
