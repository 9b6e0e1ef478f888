"""Brokers for the tests: a real one per test, on a free loopback port.

``mosquitto`` when it is installed, amqtt from ``.venv-amqtt`` otherwise (see ``otc.broker``);
set ``OTC_TEST_BROKER=amqtt`` (or ``mosquitto``) to choose, or ``OTC_NO_MOSQUITTO=1`` to run
everything as on a machine without mosquitto. The fixtures in ``conftest.py`` call these
helpers; tests that need a particular broker use :func:`broker_kinds`, :data:`needs_mosquitto`
or :data:`needs_amqtt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import msgspec
import pytest

from otc.broker import (
    AMQTT_VENV,
    AuthFiles,
    BrokerKind,
    BrokerProcess,
    find_amqtt,
    find_mosquitto,
    start_broker,
)
from otc.bus import MQTT_VERSIONS, Bus

MOSQUITTO = find_mosquitto()
AMQTT = find_amqtt()

_NO_MOSQUITTO = "mosquitto is not installed (apt-get install mosquitto) or OTC_NO_MOSQUITTO is set"

#: For tests that need mosquitto itself (ACLs, passwords, its configuration files).
needs_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None, reason=f"needs mosquitto (passwords, ACL, its config): {_NO_MOSQUITTO}"
)

#: For tests of the fallback broker, amqtt, run from its own virtualenv.
needs_amqtt = pytest.mark.skipif(
    AMQTT is None,
    reason=f"{AMQTT_VENV} is absent (make .venv-amqtt); this test runs the amqtt fallback broker",
)

#: The command-line clients, for end-to-end tests that drive the service like a user would.
MOSQUITTO_PUB = shutil.which("mosquitto_pub")
MOSQUITTO_SUB = shutil.which("mosquitto_sub")
needs_mosquitto_clients = pytest.mark.skipif(
    MOSQUITTO_PUB is None or MOSQUITTO_SUB is None,
    reason="mosquitto_pub/mosquitto_sub are not installed (apt-get install mosquitto-clients)",
)

#: How long a test waits for a message before it fails (a guard against hangs, not a timing).
RECEIVE_TIMEOUT_S = 10.0


def configured_broker_kind() -> BrokerKind | Literal["auto"]:
    """The broker the tests use: ``$OTC_TEST_BROKER`` (auto, mosquitto or amqtt)."""
    kind = os.environ.get("OTC_TEST_BROKER", "auto")
    if kind not in ("auto", "mosquitto", "amqtt"):
        raise ValueError(f"OTC_TEST_BROKER must be auto, mosquitto or amqtt, not {kind!r}")
    return cast("BrokerKind | Literal['auto']", kind)


def _kind_marks() -> dict[BrokerKind, pytest.MarkDecorator]:
    return {
        "mosquitto": pytest.mark.skipif(MOSQUITTO is None, reason=_NO_MOSQUITTO),
        "amqtt": needs_amqtt,
    }


def broker_kinds() -> list[object]:
    """``pytest.param``s for each broker kind; each skips when its broker is not there."""
    return [pytest.param(kind, marks=mark, id=kind) for kind, mark in _kind_marks().items()]


#: Why a test of MQTT 5 does not run on amqtt.
AMQTT_NO_MQTT5 = (
    "amqtt 0.12.1 speaks MQTT 3.1.1 only (it refuses an MQTT 5 CONNECT: unsupported protocol "
    "version): MQTT 5 needs mosquitto"
)


def broker_kinds_and_versions() -> list[object]:
    """``pytest.param``s of ``(broker kind, MQTT version)``: each broker with each version it
    speaks (mosquitto 3.1.1 and 5, amqtt 3.1.1); each skips when its broker is not there."""
    return [
        pytest.param((kind, version), marks=mark, id=f"{kind}-{version}")
        for kind, mark in _kind_marks().items()
        for version in MQTT_VERSIONS
        if not (kind == "amqtt" and version == "5")
    ]


@contextlib.contextmanager
def running_broker(
    config_dir: Path,
    *,
    kind: BrokerKind | Literal["auto"] | None = None,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    config_file: Path | None = None,
    port: int = 0,
) -> Iterator[BrokerProcess]:
    """A started broker of ``kind`` (default: :func:`configured_broker_kind`), stopped on exit."""
    with start_broker(
        config_dir=config_dir,
        kind=configured_broker_kind() if kind is None else kind,
        password_file=password_file,
        acl_file=acl_file,
        config_file=config_file,
        port=port,
    ) as broker:
        yield broker


@contextlib.contextmanager
def secured_broker(config_dir: Path, auth: AuthFiles) -> Iterator[BrokerProcess]:
    """A started mosquitto enforcing ``auth``'s password file and ACL, stopped on exit."""
    with running_broker(
        config_dir, kind="mosquitto", password_file=auth.password_file, acl_file=auth.acl_file
    ) as broker:
        yield broker


def unique_topic_prefix(test_name: str) -> str:
    """A topic prefix no other test uses: ``test/<test name>/<random>``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-")[:48]
    return f"test/{name}/{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Publication:
    """A message for ``Bus.publish`` (shaped like ``otc.quoting.Outgoing``)."""

    topic: str
    payload: bytes
    retain: bool = False
    expiry_s: int | None = None


async def receive(
    messages: AsyncIterator[tuple[str, bytes]], timeout_s: float = RECEIVE_TIMEOUT_S
) -> tuple[str, bytes]:
    """The next message; fails the test (``TimeoutError``) rather than hang when none comes."""
    async with asyncio.timeout(timeout_s):
        return await anext(messages)


async def ask_engine(
    host: str, port: int, client: str, kind: Literal["rfq", "accept"], body: dict[str, str]
) -> dict[str, Any]:
    """Publish ``body`` as ``client`` on ``otc/v1/{client}/{kind}``; the engine's reply (on the
    client's ``quotes`` topic for an RFQ, ``fills`` for an accept)."""
    replies = f"otc/v1/{client}/{'quotes' if kind == 'rfq' else 'fills'}"
    async with Bus(host=host, port=port) as bus:
        await bus.subscribe(replies)
        await bus.publish(Publication(f"otc/v1/{client}/{kind}", msgspec.json.encode(body)))
        messages = bus.messages()
        while True:  # amqtt may hand a new client an earlier client's subscriptions too
            topic, payload = await receive(messages)
            if topic == replies:
                break
    answer: dict[str, Any] = msgspec.json.decode(payload)
    return answer


async def retained_status(host: str, port: int) -> dict[str, Any]:
    """The engine's retained ``otc/v1/status``."""
    async with Bus(host=host, port=port) as bus:
        await bus.subscribe("otc/v1/status")
        _, payload = await receive(bus.messages())
    status: dict[str, Any] = msgspec.json.decode(payload)
    return status


# -- a broker of the test's own making, for what real brokers never do ---------------------------


async def read_mqtt_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT packet off a raw connection: (its type-and-flags byte, its body)."""
    kind = (await reader.readexactly(1))[0]
    length = shift = 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return kind, await reader.readexactly(length)


async def until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read and drop whatever the client sends until it closes the connection; close ours."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while await reader.read(1024):
            pass
    writer.close()
