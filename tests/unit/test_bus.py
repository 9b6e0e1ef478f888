"""otc.bus against real brokers (mosquitto and amqtt), and otc.broker's helpers."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from broker import (
    MOSQUITTO,
    RECEIVE_TIMEOUT_S,
    Publication,
    broker_kinds,
    broker_kinds_and_versions,
    read_mqtt_packet,
    receive,
    running_broker,
    secured_broker,
    unique_topic_prefix,
    until_closed,
)

from otc.broker import (
    MAX_QUEUED_MESSAGES,
    BrokerError,
    BrokerProcess,
    generate_auth,
    hash_password,
    mosquitto_config,
    start_broker,
)
from otc.bus import (
    MQTT_VERSIONS,
    Bus,
    BusError,
    MqttVersion,
    PublicationRefused,
    parse_broker_url,
)
from otc.errors import ConfigError

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "otc.toml"


#: The MQTT version :func:`bus_for` speaks to a broker of :func:`each_broker`, by its port.
_VERSIONS: dict[int, MqttVersion] = {}


@pytest.fixture(params=broker_kinds_and_versions())
def each_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerProcess]:
    """Each test runs against mosquitto with MQTT 3.1.1 and 5, and against amqtt with 3.1.1
    (each skips when its broker is not there); :func:`bus_for` speaks the version."""
    kind, version = request.param
    with running_broker(tmp_path / "broker", kind=kind) as process:
        _VERSIONS[process.port] = version
        try:
            yield process
        finally:
            del _VERSIONS[process.port]


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return unique_topic_prefix(request.node.name)


def bus_for(broker: BrokerProcess, **options: object) -> Bus:
    """A bus to ``broker``, speaking its :func:`each_broker` MQTT version (else 3.1.1)."""
    options.setdefault("protocol", _VERSIONS.get(broker.port, "3.1.1"))
    return Bus(host=broker.host, port=broker.port, **options)  # type: ignore[arg-type]


# --- publish, subscribe, retain, will ----------------------------------------------------------


async def test_round_trip_delivers_matching_topics_in_order(
    each_broker: BrokerProcess, prefix: str
) -> None:
    async with bus_for(each_broker) as sub, bus_for(each_broker) as pub:
        await sub.subscribe(f"{prefix}/+/rfq", f"{prefix}/exact")
        messages = sub.messages()
        sent = [
            Publication(f"{prefix}/client-a/rfq", b'{"rfq_id": "r1"}'),
            Publication(f"{prefix}/client-a/quotes", b"not subscribed"),
            Publication(f"{prefix}/exact", bytes(range(256))),
            Publication(f"{prefix}/client-b/rfq", b""),
        ]
        for message in sent:
            await pub.publish(message)
        received = [await receive(messages) for _ in range(3)]
    assert received == [(m.topic, m.payload) for m in sent if not m.topic.endswith("quotes")]


async def test_many_messages_at_qos_0_and_1_arrive_in_order(
    each_broker: BrokerProcess, prefix: str
) -> None:
    async with bus_for(each_broker) as sub, bus_for(each_broker, qos=0) as pub0:
        await sub.subscribe(f"{prefix}/#")
        messages = sub.messages()
        for i in range(200):
            await pub0.publish(Publication(f"{prefix}/n/{i % 7}", str(i).encode()))
        received = [await receive(messages) for _ in range(200)]
        async with bus_for(each_broker, qos=1) as pub1:
            await pub1.publish(Publication(f"{prefix}", b"parent level matches '#'"))
        assert await receive(messages) == (prefix, b"parent level matches '#'")
    assert [int(payload) for _, payload in received] == list(range(200))


async def test_retained_status_reaches_a_later_subscriber(
    each_broker: BrokerProcess, prefix: str
) -> None:
    status = f"{prefix}/status"
    async with bus_for(each_broker) as engine:
        await engine.publish(Publication(status, b'{"state": "up"}', retain=True))
    async with bus_for(each_broker) as late:
        await late.subscribe(f"{prefix}/#")
        assert await receive(late.messages()) == (status, b'{"state": "up"}')


async def test_last_will_is_published_and_retained_when_the_connection_drops(
    each_broker: BrokerProcess, prefix: str
) -> None:
    status = f"{prefix}/status"
    down = Publication(status, b'{"state": "down"}', retain=True)
    async with bus_for(each_broker) as watcher:
        await watcher.subscribe(status)
        watched = watcher.messages()
        engine = bus_for(each_broker, will=down)
        async with engine:
            await engine.publish(Publication(status, b'{"state": "up"}', retain=True))
            assert await receive(watched) == (status, b'{"state": "up"}')
            live = engine._socket()
            assert live is not None
            live.shutdown(socket.SHUT_RDWR)  # the network drops: no DISCONNECT is sent
            assert await receive(watched) == (status, b'{"state": "down"}')
            with pytest.raises(BusError, match="connection lost"):
                await receive(engine.messages())
    async with bus_for(each_broker) as late:
        await late.subscribe(status)
        assert await receive(late.messages()) == (status, b'{"state": "down"}')


async def test_a_clean_disconnect_does_not_publish_the_will(
    each_broker: BrokerProcess, prefix: str
) -> None:
    async with bus_for(each_broker) as watcher:
        await watcher.subscribe(f"{prefix}/#")
        async with bus_for(each_broker, will=Publication(f"{prefix}/status", b"down")):
            pass
        async with bus_for(each_broker) as other:
            await other.publish(Publication(f"{prefix}/marker", b"after"))
        assert await receive(watcher.messages()) == (f"{prefix}/marker", b"after")


async def test_a_second_connection_with_the_same_client_id_takes_over(
    each_broker: BrokerProcess,
) -> None:
    if each_broker.kind == "amqtt":
        pytest.skip(
            "mosquitto only: amqtt 0.12.1 leaves the first connection open when a clean-session "
            "client connects again with its id (MQTT 3.1.1 section 3.1.4 says to close it)"
        )
    client_id = f"dup-{uuid.uuid4().hex[:8]}"
    async with bus_for(each_broker, client_id=client_id) as first:
        messages = first.messages()
        async with bus_for(each_broker, client_id=client_id):
            with pytest.raises(BusError, match="connection lost"):
                await receive(messages)


async def test_the_conftest_broker_fixture_serves_a_round_trip(
    broker: BrokerProcess, topic_prefix: str
) -> None:
    async with bus_for(broker) as bus:
        await bus.subscribe(f"{topic_prefix}/#")
        await bus.publish(Publication(f"{topic_prefix}/x", b"fixture"))
        assert await receive(bus.messages()) == (f"{topic_prefix}/x", b"fixture")


# --- TCP_NODELAY --------------------------------------------------------------------------------


async def test_tcp_nodelay_is_set_on_the_live_socket(each_broker: BrokerProcess) -> None:
    bus = bus_for(each_broker)
    assert not bus.tcp_nodelay  # no socket yet
    async with bus:
        live = bus._socket()
        assert live is not None
        assert live.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert bus.tcp_nodelay
    assert bus._socket() is None


def test_mosquitto_config_has_the_low_latency_settings(tmp_path: Path) -> None:
    text = mosquitto_config(port=1234, log_file=tmp_path / "log")
    lines = text.splitlines()
    assert "listener 1234 127.0.0.1" in lines
    assert "set_tcp_nodelay true" in lines
    assert f"max_queued_messages {MAX_QUEUED_MESSAGES}" in lines
    assert "allow_anonymous true" in lines
    assert "persistence false" in lines
    secured = mosquitto_config(port=1, password_file=Path("/p"), acl_file=Path("/a")).splitlines()
    assert "allow_anonymous false" in secured
    assert {"password_file /p", "acl_file /a"} <= set(secured)


# --- the Bus object -----------------------------------------------------------------------------


async def test_the_bus_is_reusable_but_not_reentrant(
    each_broker: BrokerProcess, prefix: str
) -> None:
    bus = bus_for(each_broker)
    async with bus:
        with pytest.raises(BusError, match="not reentrant"):
            await bus.__aenter__()
        messages = bus.messages()
    with pytest.raises(StopAsyncIteration):  # a clean disconnect ends the iteration
        await receive(messages)
    async with bus:  # a fresh connection; subscriptions do not carry over
        await bus.subscribe(f"{prefix}/again")
        await bus.publish(Publication(f"{prefix}/again", b"2"))
        assert await receive(bus.messages()) == (f"{prefix}/again", b"2")


async def test_using_the_bus_outside_async_with_is_an_error() -> None:
    bus = Bus(host="127.0.0.1", port=1)
    with pytest.raises(BusError, match="not connected"):
        await bus.publish(Publication("t", b""))
    with pytest.raises(BusError, match="not connected"):
        await bus.subscribe("t")
    with pytest.raises(BusError, match="not connected"):
        bus.messages()
    with pytest.raises(ValueError, match="qos"):
        Bus(host="127.0.0.1", port=1, qos=3)


async def test_connecting_to_no_broker_raises_bus_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BusError, match=rf"127\.0\.0\.1:{port}: cannot connect"):
        async with Bus(host="127.0.0.1", port=port):
            pass


async def test_from_url_connects(each_broker: BrokerProcess, prefix: str) -> None:
    async with Bus.from_url(
        each_broker.url,
        client_id=f"url-{uuid.uuid4().hex[:6]}",
        protocol=_VERSIONS[each_broker.port],
    ) as bus:
        assert bus.protocol == _VERSIONS[each_broker.port]
        await bus.subscribe(f"{prefix}/u")
        await bus.publish(Publication(f"{prefix}/u", b"ok"))
        assert await receive(bus.messages()) == (f"{prefix}/u", b"ok")


async def test_a_cancellation_arriving_with_the_puback_still_cancels(
    broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiomqtt waits with wait_for, which on Python 3.11 swallows such a cancellation."""
    async with bus_for(broker) as bus:
        acked = asyncio.get_running_loop().create_future()

        async def publish_like_aiomqtt(*args: object, **kwargs: object) -> None:
            await asyncio.wait_for(acked, timeout=RECEIVE_TIMEOUT_S)  # waiting for the PUBACK

        monkeypatch.setattr(bus._client, "publish", publish_like_aiomqtt)
        ran_on = []

        async def handler() -> None:
            await bus.publish(Publication("t", b""))
            ran_on.append(True)

        task = asyncio.create_task(handler())
        await asyncio.sleep(0)
        acked.set_result(None)  # the PUBACK arrives...
        task.cancel()  # ...as the engine shuts down
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ran_on == []


# --- broker URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "username", "password", "tls"),
    [
        ("mqtt://127.0.0.1:1884", "127.0.0.1", 1884, None, None, False),
        ("mqtt://broker.example", "broker.example", 1883, None, None, False),
        ("mqtts://broker.example", "broker.example", 8883, None, None, True),
        ("mqtts://eng:s%40cr%3At@h:9000/", "h", 9000, "eng", "s@cr:t", True),
        ("mqtt://client-a@[::1]:1883", "::1", 1883, "client-a", None, False),
    ],
)
def test_parse_broker_url(
    url: str, host: str, port: int, username: str | None, password: str | None, tls: bool
) -> None:
    parsed = parse_broker_url(url)
    assert (parsed.host, parsed.port, parsed.username, parsed.password, parsed.tls) == (
        host,
        port,
        username,
        password,
        tls,
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://host:1883", "scheme"),
        ("host:1883", "scheme"),
        ("mqtt://:1883", "no host"),
        ("mqtt://host:notaport", "not a broker URL"),
        ("mqtt://host:70000", "not a broker URL"),
        ("mqtt://host:0", "port 0"),
        ("mqtt://host:1883/otc/v1", "no path"),
        ("mqtt://host:1883?x=1", "no path"),
    ],
)
def test_bad_broker_urls_raise_bus_error(url: str, problem: str) -> None:
    with pytest.raises(BusError, match=problem) as caught:
        parse_broker_url(url)
    assert caught.value.where == url


# --- starting brokers ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", broker_kinds())
def test_a_broker_that_cannot_listen_raises_with_its_log(kind: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = start_broker(config_dir=tmp_path, port=port, kind=kind)  # type: ignore[arg-type]
        with pytest.raises(BrokerError, match="did not start") as caught:
            broker.start()
    assert "in use" in str(caught.value)
    assert broker.pid is None  # reaped, pipes closed


@pytest.mark.parametrize("kind", broker_kinds())
async def test_brokers_start_with_async_with_pick_a_free_port_and_stop(
    kind: str, tmp_path: Path
) -> None:
    async with start_broker(config_dir=tmp_path, kind=kind) as broker:  # type: ignore[arg-type]
        assert (broker.kind, broker.host) == (kind, "127.0.0.1")
        assert broker.port != 0
        assert broker.pid is not None
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert (broker.notice == "") is (kind == "mosquitto")
        async with bus_for(broker) as bus:
            assert bus.tcp_nodelay
    assert broker.pid is None
    with pytest.raises(ConnectionRefusedError):  # stopped, not left running
        socket.create_connection((broker.host, broker.port), timeout=RECEIVE_TIMEOUT_S).close()


async def test_malformed_topics_and_filters_raise_bus_error(each_broker: BrokerProcess) -> None:
    async with bus_for(each_broker) as bus:
        with pytest.raises(BusError, match="cannot subscribe"):
            await bus.subscribe("a/#/b")
        with pytest.raises(BusError, match="cannot publish"):
            await bus.publish(Publication("a/+", b""))


# --- production auth files ----------------------------------------------------------------------


def test_generate_auth_writes_a_private_password_file_and_the_acl(tmp_path: Path) -> None:
    auth = generate_auth(
        ["client-a", "client-b"], "otc-engine", tmp_path / "auth", operators=["ops-1"]
    )
    assert set(auth.passwords) == {"client-a", "client-b", "otc-engine", "ops-1"}
    assert len(set(auth.passwords.values())) == 4
    assert stat.S_IMODE(os.stat(auth.password_file).st_mode) == 0o600
    users = [line.split(":")[0] for line in auth.password_file.read_text().splitlines()]
    assert users == ["client-a", "client-b", "otc-engine", "ops-1"]
    acl = [line for line in auth.acl_file.read_text().splitlines() if not line.startswith("#")]
    assert [line for line in acl if line.startswith("pattern")] == [
        "pattern write otc/v1/%u/rfq",
        "pattern write otc/v1/%u/accept",
        "pattern read otc/v1/%u/quotes",
        "pattern read otc/v1/%u/fills",
        "pattern read otc/v1/status",
        "pattern read otc/v1/ladder/#",
    ]
    engine = acl[acl.index("user otc-engine") + 1 : acl.index("user ops-1")]
    assert [line for line in engine if line] == [
        "topic read otc/v1/+/rfq",
        "topic read otc/v1/+/accept",
        "topic write otc/v1/+/quotes",
        "topic write otc/v1/+/fills",
        "topic write otc/v1/status",
        "topic write otc/v1/ladder/#",
        "topic read otc/v1/control/+",
        "topic write otc/v1/control/+/result",
    ]
    assert acl[acl.index("user ops-1") + 1 :] == [
        "topic write otc/v1/control/ops-1",
        "topic read otc/v1/control/ops-1/result",
    ]
    again = generate_auth(
        ["client-a", "client-b"], "otc-engine", tmp_path / "auth", passwords={"client-a": "set"}
    )
    assert again.passwords == {"client-a": "set"}
    assert again.kept == ("client-b", "otc-engine")
    assert again.removed == ("ops-1",)
    assert sorted(os.listdir(tmp_path / "auth")) == ["acl", "passwd"]  # no temporary file left


def test_generate_auth_keeps_the_users_hashes_unless_rotated(tmp_path: Path) -> None:
    """Each run gave every user a new password: adding a client locked every other one, and
    the engine, out at the broker's next reload. (Logging in with them: test_broker_acl.)"""
    first = generate_auth(["client-a", "client-b"], "otc-engine", tmp_path)
    hashes = dict(line.split(":") for line in first.password_file.read_text().splitlines())
    again = generate_auth(["client-a", "client-c"], "otc-engine", tmp_path, rotate=["client-a"])
    assert set(again.passwords) == {"client-a", "client-c"}
    assert (again.kept, again.removed) == (("otc-engine",), ("client-b",))
    now = dict(line.split(":") for line in again.password_file.read_text().splitlines())
    assert list(now) == ["client-a", "client-c", "otc-engine"]
    assert now["otc-engine"] == hashes["otc-engine"]
    assert now["client-a"] != hashes["client-a"]
    everyone = generate_auth(["client-a", "client-c"], "otc-engine", tmp_path, rotate_all=True)
    assert set(everyone.passwords) == {"client-a", "client-c", "otc-engine"}
    # --rotate-all does not keep the file's hashes, but still says whom it removed.
    fewer = generate_auth(["client-a"], "otc-engine", tmp_path, rotate_all=True)
    assert (set(fewer.passwords), fewer.kept, fewer.removed) == (
        {"client-a", "otc-engine"},
        (),
        ("client-c",),
    )
    with pytest.raises(BrokerError, match="cannot rotate 'client-b': not a user of clients"):
        generate_auth(["client-a"], "otc-engine", tmp_path, rotate=["client-b"])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("client-a:plain\n", ":1: not a 'user:$7$...' line"),
        ("client-a:$7$101$c2FsdA==$aGFzaA==\n\n", ":2: not a 'user:$7$...' line"),
        ("client-a:$7$101$c2FsdA==$aGFzaA==\nclient-a:$6$x$y\n", ":2: a user given twice"),
        ("client-a:$7$101$c2FsdA==$aGFzaA==\nuser otc-engine\n", ":2: not a 'user:$7$...'"),
    ],
)
def test_generate_auth_refuses_a_password_file_it_did_not_write(
    text: str, problem: str, tmp_path: Path
) -> None:
    (tmp_path / "passwd").write_text(text)
    with pytest.raises(BrokerError, match=re.escape(f"{tmp_path / 'passwd'}{problem}")):
        generate_auth(["client-a"], "otc-engine", tmp_path)
    assert (tmp_path / "passwd").read_text() == text
    assert not (tmp_path / "acl").exists()
    assert set(generate_auth(["client-a"], "otc-engine", tmp_path, rotate_all=True).passwords) == {
        "client-a",
        "otc-engine",
    }


def test_generate_auth_that_cannot_write_the_acl_sets_no_password(tmp_path: Path) -> None:
    """The password file was written first: an ACL that could not be written then lost the
    new passwords (never returned, never printed) while their hashes stayed, and every later
    run kept those hashes: users locked out until rotated by name."""
    (tmp_path / "acl").mkdir()  # os.replace cannot put a file there
    with pytest.raises(IsADirectoryError):
        generate_auth(["client-a"], "otc-engine", tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["acl"]  # no password file, no temporary file
    (tmp_path / "acl").rmdir()
    assert set(generate_auth(["client-a"], "otc-engine", tmp_path).passwords) == {
        "client-a",
        "otc-engine",
    }


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root (chown)")
def test_generate_auth_keeps_the_owner_and_group_of_the_files_it_replaces(tmp_path: Path) -> None:
    """README: ``chown mosquitto`` the password file. A new run replaced it with a file of
    root's that the broker (user mosquitto) could not read at its next reload."""
    first = generate_auth(["client-a"], "otc-engine", tmp_path)
    os.chown(first.password_file, 4321, 4322)
    os.chmod(first.password_file, 0o640)  # root:mosquitto 0640 works as well: kept
    os.chown(first.acl_file, 4321, 4322)
    again = generate_auth(["client-a", "client-b"], "otc-engine", tmp_path)
    for path, mode in ((again.password_file, 0o640), (again.acl_file, 0o644)):
        info = os.stat(path)
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4321, 4322, mode)
    os.chmod(again.password_file, 0o666)  # noqa: S103 (never readable by others after this)
    last = generate_auth(["client-a"], "otc-engine", tmp_path)
    assert stat.S_IMODE(os.stat(last.password_file).st_mode) == 0o640


def test_otc_broker_auth_prints_only_the_new_passwords(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from otc.cli import main

    argv = ["broker", "auth", "--config", str(REPO_CONFIG), "--out", str(tmp_path)]
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()
    assert first[1].startswith("new passwords (shown this once")
    assert [line.split(":")[0] for line in first[2:]] == [
        "  client-a",
        "  client-b",
        "  ops-1",
        "  otc-engine",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "kept their password: client-a, client-b, otc-engine, ops-1"
    ]
    assert main([*argv, "--rotate", "ops-1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[2:]] == [
        "  ops-1",
        "kept their password",
    ]


def test_otc_broker_auth_says_how_to_start_over_when_it_cannot_print_the_passwords(
    tmp_path: Path,
) -> None:
    """The new passwords exist only in what ``otc broker auth`` prints (their hashes are kept,
    and a later run keeps them): printed to a reader already gone, they were lost without a
    word, status 0, and those users locked out. It now says so and names the users to rotate."""
    argv = ["broker", "auth", "--config", str(REPO_CONFIG), "--out", str(tmp_path)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "otc.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # the reader goes before anything is printed (`| head -0`)
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1, err
    assert "the new passwords could not be printed" in err, err
    rotate = "--rotate client-a --rotate client-b --rotate ops-1 --rotate otc-engine"
    assert f"otc broker auth --out {tmp_path} {rotate}" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("clients", "engine", "path", "problem"),
    [
        (["client-a", "client/b"], "otc-engine", r"\$\.clients\[1\]\.id", "not a usable"),
        (["+"], "otc-engine", r"\$\.clients\[0\]\.id", "not a usable"),
        (["#"], "otc-engine", r"\$\.clients\[0\]\.id", "not a usable"),
        (["a b"], "otc-engine", r"\$\.clients\[0\]\.id", "not a usable"),
        (["x:y"], "otc-engine", r"\$\.clients\[0\]\.id", "not a usable"),
        (["a\nuser otc-engine"], "otc-engine", r"\$\.clients\[0\]\.id", "not a usable"),
        (["a\n"], "otc-engine", r"\$\.clients\[0\]\.id", "not a usable"),  # `$` would pass
        (["a\x00b"], "otc-engine", r"\$\.clients\[0\]\.id", "not a usable"),
        (["client-\u00e9"], "otc-engine", r"\$\.clients\[0\]\.id", "not a usable"),
        (["%c"], "otc-engine", r"\$\.clients\[0\]\.id", "not a usable"),
        (["a" * 65], "otc-engine", r"\$\.clients\[0\]\.id", "not a usable"),
        ([""], "otc-engine", r"\$\.clients\[0\]\.id", "not a usable"),
        (["control"], "otc-engine", r"\$\.clients\[0\]\.id", "reserved"),
        (["ladder"], "otc-engine", r"\$\.clients\[0\]\.id", "reserved"),
        ([], "status", r"\$\.broker\.username", "reserved"),
        (["client-a", "client-a"], "otc-engine", r"\$\.clients\[1\]\.id", "twice"),
        (["otc-engine"], "otc-engine", r"\$\.broker\.username", "twice"),
        ([], "", r"\$\.broker\.username", "not a usable"),
        (["ops-1"], "otc-engine", r"\$\.broker\.operators\[0\]", "twice"),
        ([], "otc-engine", r"\$\.broker\.operators\[1\]", "not a usable"),
    ],
)
def test_generate_auth_refuses_unusable_user_names(
    clients: list[str], engine: str, path: str, problem: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=f"{path}: .*{problem}"):
        generate_auth(clients, engine, tmp_path, operators=["ops-1", "ops/2"])
    assert not (tmp_path / "passwd").exists()


@pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd is not installed"
)
def test_hash_password_is_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "alice", "s3cret!"], check=True)
    user, stored = passwd.read_text().strip().split(":", 1)
    _, algorithm, iterations, salt, _ = stored.split("$")
    assert (user, algorithm) == ("alice", "7")
    assert hash_password("s3cret!", salt=base64.b64decode(salt), iterations=int(iterations)) == (
        stored
    )
    assert hash_password("other", salt=base64.b64decode(salt), iterations=int(iterations)) != (
        stored
    )


# --- a broker that misbehaves (found by fuzzing the engine against a fake broker) --------------


async def test_a_connection_lost_to_a_packet_the_client_cannot_read_closes_its_socket() -> None:
    """A PUBLISH whose topic is not UTF-8 broke the connection inside aiomqtt, which left the
    socket open: paho read the same packet again and again, at 100 % CPU with a log line each
    time, until the keepalive closed it two minutes later."""
    closed = asyncio.Event()

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_mqtt_packet(reader)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        _, body = await read_mqtt_packet(reader)  # SUBSCRIBE
        writer.write(b"\x90\x03" + body[:2] + b"\x01")  # SUBACK, QoS 1 granted
        topic = b"otc/v1/\xff/rfq"
        writer.write(b"\x30" + bytes([2 + len(topic) + 1]) + len(topic).to_bytes(2) + topic + b"x")
        writer.write(b"\xd0\x00")  # and something more to read
        await writer.drain()
        await until_closed(reader, writer)
        closed.set()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        bus = Bus(host="127.0.0.1", port=port)

        async def read_all() -> None:
            async with bus, asyncio.timeout(5):
                await bus.subscribe("otc/v1/+/rfq")
                async for _ in bus.messages():
                    pass

        with pytest.raises(BusError):
            await read_all()
        async with asyncio.timeout(2):
            await closed.wait()  # our side closed the socket


@pytest.mark.parametrize("version", MQTT_VERSIONS)
async def test_a_broker_that_stops_answering_is_noticed_by_the_keepalive(
    version: MqttVersion,
) -> None:
    """A broker (or the network to it) gone silent without closing the connection: with
    aiomqtt's default keepalive of 60 s nothing noticed it for up to two minutes."""
    pinged = asyncio.Event()

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_mqtt_packet(reader)  # CONNECT
        writer.write(connack(version))  # accepted
        _, body = await read_mqtt_packet(reader)  # SUBSCRIBE
        writer.write(suback(version, body, b"\x01"))  # QoS 1 granted, then silence
        await writer.drain()
        try:
            while True:
                kind, _ = await read_mqtt_packet(reader)
                if kind == 0xC0:  # PINGREQ, never answered
                    pinged.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()  # the client hung up

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        bus = Bus(host="127.0.0.1", port=port, keepalive=1, protocol=version)

        async def read_all() -> None:
            async with bus, asyncio.timeout(10):
                await bus.subscribe("otc/v1/+/rfq")
                async for _ in bus.messages():
                    pass

        with pytest.raises(BusError):
            await read_all()
    assert pinged.is_set()


def test_keepalive_must_keep_pings_on() -> None:
    for keepalive in (0, -1, 65_536):
        with pytest.raises(ValueError, match="keepalive"):
            Bus(host="127.0.0.1", port=1883, keepalive=keepalive)


async def test_a_suback_with_too_few_codes_is_a_refusal() -> None:
    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_mqtt_packet(reader)
        writer.write(b"\x20\x02\x00\x00")
        _, body = await read_mqtt_packet(reader)
        writer.write(b"\x90\x03" + body[:2] + b"\x01")  # one code for two topics
        await writer.drain()
        await until_closed(reader, writer)

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, Bus(host="127.0.0.1", port=port) as bus:
        with pytest.raises(BusError, match="1 codes for 2 topics"):
            await bus.subscribe("a/b", "c/d")


async def test_messages_beyond_max_queued_are_dropped_not_held(
    broker: BrokerProcess, prefix: str
) -> None:
    """Unbounded, the queue of received messages grew by ~500 bytes per RFQ of a flood the
    engine could not keep up with (37 -> 84 MB in 30 s, and a 45 s backlog)."""
    async with bus_for(broker, max_queued=3) as sub, bus_for(broker) as pub:
        await sub.subscribe(f"{prefix}/#")
        for i in range(10):
            await pub.publish(Publication(f"{prefix}/n", str(i).encode()))
        await asyncio.sleep(0.3)  # all of them delivered to `sub`, none read yet
        messages = sub.messages()
        received = [await receive(messages) for _ in range(3)]
        with pytest.raises(TimeoutError):
            await receive(messages, timeout_s=0.3)
    assert [payload for _, payload in received] == [b"0", b"1", b"2"]


async def test_a_connect_that_times_out_closes_its_socket() -> None:
    """The socket of a connect that failed stayed open, and a CONNACK arriving late made a
    session of it with the engine's client id and last will, never read again."""
    closed = asyncio.Event()

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_mqtt_packet(reader)  # CONNECT, never answered
        await until_closed(reader, writer)
        closed.set()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(BusError, match="cannot connect"):
            await Bus(host="127.0.0.1", port=port, timeout=0.3).__aenter__()
        async with asyncio.timeout(2):
            await closed.wait()


async def test_a_connection_lost_with_the_queue_full_still_ends_the_messages() -> None:
    """The end of the messages was a marker put in the queue of received messages, which
    ``max_queued`` bounds: with the queue full when the connection broke, the marker was
    refused (``QueueFull`` in a callback, logged by asyncio), and a reader that had drained the
    queue then waited for ever instead of raising :class:`BusError`."""

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_mqtt_packet(reader)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        _, body = await read_mqtt_packet(reader)  # SUBSCRIBE
        writer.write(b"\x90\x03" + body[:2] + b"\x00")  # SUBACK, QoS 0 granted
        for i in range(5):  # QoS 0 PUBLISHes: more than the queue holds
            topic, payload = b"otc/v1/c/rfq", str(i).encode()
            writer.write(b"\x30" + bytes([2 + len(topic) + len(payload)]))
            writer.write(len(topic).to_bytes(2) + topic + payload)
        await writer.drain()
        writer.close()  # and the connection breaks

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, Bus(host="127.0.0.1", port=port, qos=0, max_queued=2) as bus:
        await bus.subscribe("otc/v1/+/rfq")
        messages = bus.messages()
        lost = bus._client._disconnected  # type: ignore[union-attr]
        received: list[bytes] = []

        async def drain() -> None:
            async for _, payload in messages:
                received.append(payload)

        async with asyncio.timeout(RECEIVE_TIMEOUT_S):
            await asyncio.wait((lost,))  # every message read off the socket, none taken yet
            with pytest.raises(BusError, match="connection lost"):
                await drain()
    assert received == [b"0", b"1"]  # the queue's two; the rest were dropped


async def test_a_flood_beyond_max_queued_is_counted_and_logged_at_powers_of_two(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiomqtt logged a warning for every message a full queue dropped: a flood the engine
    could not keep up with wrote 208,133 lines in 40 s (5,000 a second) to its log. The bus
    counts them (:attr:`Bus.dropped`) and logs the 1st, 2nd, 4th, 8th... drop of a connection."""

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_mqtt_packet(reader)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        _, body = await read_mqtt_packet(reader)  # SUBSCRIBE
        writer.write(b"\x90\x03" + body[:2] + b"\x00")  # SUBACK, QoS 0 granted
        for i in range(40):  # QoS 0 PUBLISHes, none read: 2 queued, 38 dropped
            topic, payload = b"otc/v1/c/rfq", str(i).encode()
            writer.write(b"\x30" + bytes([2 + len(topic) + len(payload)]))
            writer.write(len(topic).to_bytes(2) + topic + payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    bus = Bus(host="127.0.0.1", port=port, qos=0, max_queued=2)
    with caplog.at_level(logging.WARNING):
        async with server, bus:
            await bus.subscribe("otc/v1/+/rfq")
            lost = bus._client._disconnected  # type: ignore[union-attr]
            async with asyncio.timeout(RECEIVE_TIMEOUT_S):
                await asyncio.wait((lost,))  # every message read off the socket
            assert bus.dropped == 38
    assert bus.dropped == 38  # kept once the connection is closed
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    counts = [int(re.search(r": (\d+) received", line)[1]) for line in drops]  # type: ignore[index]
    assert counts == [1, 2, 4, 8, 16, 32]
    assert "queue of 2" in drops[0]
    assert not [r for r in caplog.records if r.name == "mqtt"]  # aiomqtt's line per message


# --- MQTT 5 ---------------------------------------------------------------------------------------


def connack(version: MqttVersion) -> bytes:
    """CONNACK, accepted (MQTT 5 adds an empty property list)."""
    return b"\x20\x02\x00\x00" if version == "3.1.1" else b"\x20\x03\x00\x00\x00"


def suback(version: MqttVersion, subscribe: bytes, codes: bytes) -> bytes:
    """SUBACK answering the SUBSCRIBE of body ``subscribe`` with ``codes``."""
    body = subscribe[:2] + (b"" if version == "3.1.1" else b"\x00") + codes
    return bytes([0x90, len(body)]) + body


def test_the_bus_speaks_mqtt_3_1_1_unless_told_otherwise() -> None:
    assert Bus(host="127.0.0.1", port=1883).protocol == "3.1.1"
    assert Bus(host="127.0.0.1", port=1883, protocol="5").protocol == "5"
    with pytest.raises(ValueError, match="protocol must be one of"):
        Bus(host="127.0.0.1", port=1883, protocol="4")  # type: ignore[arg-type]


@pytest.mark.parametrize("version", MQTT_VERSIONS)
async def test_the_connect_and_subscribe_packets_of_each_version(version: MqttVersion) -> None:
    """The CONNECT names the version (level 4 is 3.1.1) with a clean session / clean start and
    no session kept after the connection (MQTT 5: no Session Expiry Interval, so 0); an MQTT 5
    SUBSCRIBE asks QoS 1 with "retain as published" off, so that the retain flag marks only
    the broker's replays of retained messages, as in 3.1.1 (``messages(retained=False)``)."""
    packets: list[bytes] = []

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, connect = await read_mqtt_packet(reader)
        packets.append(connect)
        writer.write(connack(version))
        _, subscribe = await read_mqtt_packet(reader)
        packets.append(subscribe)
        writer.write(suback(version, subscribe, b"\x01"))
        await writer.drain()
        await until_closed(reader, writer)

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, Bus(host="127.0.0.1", port=port, protocol=version) as bus:
        await bus.subscribe("a/b")
    connect, subscribe = packets
    assert connect[:6] == b"\x00\x04MQTT"
    assert connect[6] == (4 if version == "3.1.1" else 5)
    assert connect[7] & 0x02  # clean session (3.1.1), clean start (5)
    if version == "5":
        assert connect[10] == 0  # no properties: no Session Expiry Interval, the session ends
        assert subscribe[2] == 0  # no properties
        assert subscribe[3:] == b"\x00\x03a/b\x01"  # QoS 1; no local, RAP, retain handling 0
    else:
        assert subscribe[2:] == b"\x00\x03a/b\x01"


@pytest.mark.parametrize(("version", "refusal"), [("3.1.1", 0x80), ("5", 0x87)])
async def test_a_subscription_the_broker_refuses_raises_bus_error(
    version: MqttVersion, refusal: int
) -> None:
    """A SUBACK code of 0x80 (3.1.1: failure) or above (5: 0x87 not authorized...) refuses."""

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_mqtt_packet(reader)
        writer.write(connack(version))
        _, body = await read_mqtt_packet(reader)
        writer.write(suback(version, body, bytes([0x01, refusal])))
        await writer.drain()
        await until_closed(reader, writer)

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, Bus(host="127.0.0.1", port=port, protocol=version) as bus:
        with pytest.raises(BusError, match=re.escape("refused the subscription to ['c/d']")):
            await bus.subscribe("a/b", "c/d")


async def test_retained_replays_are_skipped_and_retained_news_is_not(
    each_broker: BrokerProcess, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``messages(retained=False)`` skips what the broker replays on subscribing and delivers a
    retained message published while subscribed (whose retain flag the broker clears: in MQTT 5
    because the bus subscribes with "retain as published" off)."""
    topic = f"{prefix}/rfq"
    async with bus_for(each_broker) as client:
        await client.publish(Publication(topic, b"old", retain=True))
    async with bus_for(each_broker) as engine, bus_for(each_broker) as client:
        await engine.subscribe(topic)
        await client.publish(Publication(topic, b"new", retain=True))
        await client.publish(Publication(topic, b"plain"))
        messages = engine.messages(retained=False)
        assert await receive(messages) == (topic, b"new")
        assert await receive(messages) == (topic, b"plain")
    assert f"skipped a retained message on {topic}" in caplog.text
    async with bus_for(each_broker) as late:  # the retained one is there, and replayed
        await late.subscribe(topic)
        assert await receive(late.messages()) == (topic, b"new")


async def test_a_session_ends_with_its_connection(each_broker: BrokerProcess, prefix: str) -> None:
    """Clean session (3.1.1) / clean start without session expiry (5): what was published
    while a client id was away is not delivered when it connects again."""
    client_id = f"session-{uuid.uuid4().hex[:8]}"
    async with bus_for(each_broker, client_id=client_id) as away:
        await away.subscribe(f"{prefix}/#")
    async with bus_for(each_broker) as other:
        await other.publish(Publication(f"{prefix}/missed", b"while away"))
    async with bus_for(each_broker, client_id=client_id) as back, bus_for(each_broker) as other:
        await back.subscribe(f"{prefix}/marker")
        await other.publish(Publication(f"{prefix}/marker", b"after"))
        assert await receive(back.messages()) == (f"{prefix}/marker", b"after")


@pytest.mark.skipif(MOSQUITTO is None, reason="MQTT 5 needs mosquitto (amqtt speaks 3.1.1)")
async def test_under_mqtt_5_a_message_expiry_goes_with_the_publication(
    tmp_path: Path, prefix: str
) -> None:
    """``expiry_s`` is sent as the Message Expiry Interval (a subscriber gets what is left of
    it, so the same whole seconds or one fewer); a message without one has none."""
    with running_broker(tmp_path / "broker", kind="mosquitto") as broker:
        watcher = aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5)
        async with watcher, bus_for(broker, protocol="5") as bus:
            await watcher.subscribe(f"{prefix}/#", qos=1)
            await bus.publish(Publication(f"{prefix}/quote", b"q", expiry_s=60))
            await bus.publish(Publication(f"{prefix}/fill", b"f"))
            got = []
            async with asyncio.timeout(RECEIVE_TIMEOUT_S):
                async for message in watcher.messages:
                    got.append(
                        (
                            message.topic.value,
                            getattr(message.properties, "MessageExpiryInterval", None),
                        )
                    )
                    if len(got) == 2:
                        break
    assert got[0] in ((f"{prefix}/quote", 60), (f"{prefix}/quote", 59))
    assert got[1] == (f"{prefix}/fill", None)


@pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto (its ACL; MQTT 5)")
@pytest.mark.parametrize("version", MQTT_VERSIONS)
async def test_under_mqtt_5_a_publication_the_acl_denies_raises_naming_topic_and_reason(
    tmp_path: Path, version: MqttVersion
) -> None:
    """mosquitto acknowledges a publication its ACL denies with 0x87 Not authorized under
    MQTT 5: the bus raises, and the connection serves on. Under 3.1.1 the PUBACK has no reason
    code: the message is dropped silently (the bus cannot tell); at QoS 0 there is no PUBACK;
    at QoS 2 the refusal is in the PUBREC, whose code paho drops (the docs say QoS 1 only)."""
    auth = generate_auth(["client-a", "client-b"], "otc-engine", tmp_path / "auth")
    with secured_broker(tmp_path / "broker", auth) as broker:
        login = {"username": "client-a", "password": auth.passwords["client-a"]}
        async with bus_for(broker, protocol=version, **login) as bus:
            forged = Publication("otc/v1/client-b/rfq", b"{}")
            if version == "5":
                with pytest.raises(PublicationRefused) as refused:
                    await bus.publish(forged)
                assert (refused.value.topic, refused.value.code) == ("otc/v1/client-b/rfq", 0x87)
                assert str(refused.value) == (
                    f"{bus.where}: the broker refused the publication to otc/v1/client-b/rfq: "
                    "Not authorized (0x87)"
                )
            else:
                await bus.publish(forged)
            await bus.subscribe("otc/v1/client-a/quotes")  # the connection is sound
            await bus.publish(Publication("otc/v1/client-a/rfq", b"{}"))
        for qos in (0, 2):
            async with bus_for(broker, protocol=version, qos=qos, **login) as bus:
                await bus.publish(forged)
