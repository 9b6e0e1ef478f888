"""The production broker security with the real mosquitto: passwords and the ACL by pattern.

``generate_auth`` writes the password file and ACL; mosquitto enforces them. Denied
publications are dropped silently (MQTT 3.1.1), so each test proves an absence by ordering: the
broker delivers one publisher's messages in order, so a marker published *after* the forbidden
message arriving first shows the forbidden one was never delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from broker import (
    RECEIVE_TIMEOUT_S,
    Publication,
    needs_mosquitto,
    receive,
    running_broker,
    secured_broker,
)

from otc.app import Engine
from otc.broker import AuthFiles, BrokerProcess, generate_auth
from otc.bus import Bus, BusError
from otc.client import new_rfq, request_quote
from otc.config import load_config
from otc.protocol import Quote

pytestmark = needs_mosquitto

ENGINE = "otc-engine"
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config" / "mosquitto" / "otc.conf"
OTC_CONFIG = Path(__file__).resolve().parents[2] / "config" / "otc.toml"


@pytest.fixture
def auth(tmp_path: Path) -> AuthFiles:
    return generate_auth(["client-a", "client-b"], ENGINE, tmp_path / "auth", operators=["ops-1"])


@pytest.fixture(params=["generated", "shipped"])
def secured(
    auth: AuthFiles, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[BrokerProcess]:
    """mosquitto enforcing ``auth``: with the tests' own configuration, and with the shipped
    production one (config/mosquitto/otc.conf) pointed at a free port and a temp directory."""
    broker_dir = tmp_path / "broker"
    if request.param == "generated":
        with secured_broker(broker_dir, auth) as process:
            yield process
        return
    config, port = shipped_config(auth, broker_dir)
    with running_broker(broker_dir, kind="mosquitto", config_file=config, port=port) as process:
        yield process


def shipped_config(
    auth: AuthFiles, broker_dir: Path, tls: tuple[int, Path] | None = None
) -> tuple[Path, int]:
    """config/mosquitto/otc.conf as shipped, but on a free port, with ``auth``'s files, and its
    persistence and log in ``broker_dir``: (that configuration's path, its port). With ``tls``
    (a port and a folder of ``server.crt``, ``server.key`` and ``ca.crt``), its TLS listener
    uncommented as it is, on that port with those files."""
    text = SHIPPED_CONFIG.read_text()
    broker_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    replacements = {
        r"^listener 1883 127\.0\.0\.1$": f"listener {port} 127.0.0.1",
        r"^password_file .*$": f"password_file {auth.password_file}",
        r"^acl_file .*$": f"acl_file {auth.acl_file}",
        r"^persistence_location .*$": f"persistence_location {broker_dir}/",
        r"^log_dest syslog$": f"log_dest file {broker_dir}/mosquitto.log",
    }
    if tls is not None:
        tls_port, certs = tls
        replacements |= {
            r"^#listener 8883$": f"listener {tls_port}",
            r"^#certfile /etc/mosquitto/certs/server\.crt$": f"certfile {certs}/server.crt",
            r"^#keyfile /etc/mosquitto/certs/server\.key$": f"keyfile {certs}/server.key",
            r"^#cafile /etc/mosquitto/certs/ca\.crt$": f"cafile {certs}/ca.crt",
            r"^#tls_version tlsv1\.2$": "tls_version tlsv1.2",
        }
    for pattern, replacement in replacements.items():
        text, found = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert found == 1, pattern
    text += "user root\n"  # as root, keep reading the private test directory (else no effect)
    config = broker_dir / "otc.conf"
    config.write_text(text)
    return config, port


def login(broker: BrokerProcess, auth: AuthFiles, user: str) -> Bus:
    return Bus(host=broker.host, port=broker.port, username=user, password=auth.passwords[user])


async def test_a_client_cannot_read_another_clients_quotes(
    secured: BrokerProcess, auth: AuthFiles
) -> None:
    async with (
        login(secured, auth, ENGINE) as engine,
        login(secured, auth, "client-a") as client_a,
        login(secured, auth, "client-b") as client_b,
    ):
        # mosquitto accepts these subscriptions and delivers only what client-a may read
        await client_a.subscribe("otc/v1/client-b/quotes", "otc/v1/+/quotes", "otc/v1/#")
        await client_b.subscribe("otc/v1/client-b/quotes")
        await engine.publish(Publication("otc/v1/client-b/quotes", b'{"for": "client-b"}'))
        await engine.publish(Publication("otc/v1/client-a/quotes", b'{"for": "client-a"}'))
        assert await receive(client_b.messages()) == (
            "otc/v1/client-b/quotes",
            b'{"for": "client-b"}',
        )
        assert await receive(client_a.messages()) == (
            "otc/v1/client-a/quotes",
            b'{"for": "client-a"}',
        )


async def test_a_client_cannot_send_rfqs_or_accepts_as_another_client(
    secured: BrokerProcess, auth: AuthFiles
) -> None:
    async with (
        login(secured, auth, ENGINE) as engine,
        login(secured, auth, "client-a") as client_a,
    ):
        await engine.subscribe("otc/v1/+/rfq", "otc/v1/+/accept")
        await client_a.publish(Publication("otc/v1/client-b/rfq", b'{"rfq_id": "forged"}'))
        await client_a.publish(Publication("otc/v1/client-b/accept", b'{"quote_id": "forged"}'))
        await client_a.publish(Publication("otc/v1/client-a/rfq", b'{"rfq_id": "own"}'))
        await client_a.publish(Publication("otc/v1/client-a/accept", b'{"quote_id": "own"}'))
        messages = engine.messages()
        assert await receive(messages) == ("otc/v1/client-a/rfq", b'{"rfq_id": "own"}')
        assert await receive(messages) == ("otc/v1/client-a/accept", b'{"quote_id": "own"}')


async def test_a_client_cannot_impersonate_the_engine(
    secured: BrokerProcess, auth: AuthFiles
) -> None:
    async with (
        login(secured, auth, ENGINE) as engine,
        login(secured, auth, "client-a") as client_a,
        login(secured, auth, "client-b") as client_b,
    ):
        await client_b.subscribe("otc/v1/client-b/fills", "otc/v1/status")
        await client_a.publish(Publication("otc/v1/client-b/fills", b'{"type": "fill"}'))
        await client_a.publish(Publication("otc/v1/status", b'{"state": "down"}', retain=True))
        await engine.publish(Publication("otc/v1/status", b'{"state": "up"}', retain=True))
        assert await receive(client_b.messages()) == ("otc/v1/status", b'{"state": "up"}')


async def test_only_an_operator_sends_commands_and_only_it_reads_their_results(
    secured: BrokerProcess, auth: AuthFiles
) -> None:
    async with (
        login(secured, auth, ENGINE) as engine,
        login(secured, auth, "ops-1") as ops,
        login(secured, auth, "client-a") as client_a,
    ):
        await engine.subscribe("otc/v1/control/+")
        await ops.subscribe("otc/v1/control/ops-1/result")
        await client_a.subscribe("otc/v1/control/#")
        await client_a.publish(Publication("otc/v1/control/client-a", b'{"command": "halt"}'))
        await client_a.publish(Publication("otc/v1/control/ops-1", b'{"command": "halt"}'))
        await ops.publish(Publication("otc/v1/control/ops-1", b'{"command": "resume"}'))
        assert await receive(engine.messages()) == (
            "otc/v1/control/ops-1",
            b'{"command": "resume"}',
        )
        await engine.publish(Publication("otc/v1/control/ops-1/result", b'{"ok": true}'))
        await engine.publish(Publication("otc/v1/control/ops-1/result", b'{"ok": "again"}'))
        ops_inbox = ops.messages()
        assert await receive(ops_inbox) == ("otc/v1/control/ops-1/result", b'{"ok": true}')
        assert await receive(ops_inbox) == ("otc/v1/control/ops-1/result", b'{"ok": "again"}')
        # client-a read none of it: the first message it gets is a later one on its own topic
        await client_a.subscribe("otc/v1/client-a/quotes")
        await engine.publish(Publication("otc/v1/client-a/quotes", b"marker"))
        assert await receive(client_a.messages()) == ("otc/v1/client-a/quotes", b"marker")


async def test_unknown_users_wrong_passwords_and_anonymous_clients_are_refused(
    secured: BrokerProcess, auth: AuthFiles
) -> None:
    attempts = [
        Bus(host=secured.host, port=secured.port),
        Bus(host=secured.host, port=secured.port, username="client-a", password="no"),  # noqa: S106
        Bus(host=secured.host, port=secured.port, username="client-c", password="x"),  # noqa: S106
        Bus(  # a valid password, for another user
            host=secured.host,
            port=secured.port,
            username="client-a",
            password=auth.passwords["client-b"],
        ),
    ]
    for bus in attempts:
        with pytest.raises(BusError, match=r"cannot connect: .*(authori[sz]ed|password)"):
            async with bus:
                pass


def test_the_shipped_production_config_keeps_its_settings() -> None:
    """What the tests on the shipped configuration rely on is there (they run it as shipped)."""
    text = SHIPPED_CONFIG.read_text()
    for setting in (
        "allow_anonymous false",
        "use_username_as_clientid true",
        "set_tcp_nodelay true",
        "max_queued_messages",
        "max_packet_size",
    ):
        assert re.search(rf"^{setting}", text, re.MULTILINE), setting


async def test_a_client_cannot_take_the_engines_connection_over_with_its_client_id(
    secured: BrokerProcess, auth: AuthFiles
) -> None:
    """MQTT gives a client id to one connection at a time: a new connection with the engine's
    closed the engine's, and the broker published the engine's will, the retained status
    ``down``, on its behalf; the broker now replaces every client id with the user name."""
    status_down = Publication("otc/v1/status", b'{"state": "down"}', retain=True)
    engine = Bus(
        host=secured.host,
        port=secured.port,
        username=ENGINE,
        password=auth.passwords[ENGINE],
        client_id=ENGINE,
        will=status_down,
    )
    async with engine, login(secured, auth, "client-b") as client_b:
        await engine.publish(Publication("otc/v1/status", b'{"state": "up"}', retain=True))
        await client_b.subscribe("otc/v1/status")
        statuses = client_b.messages()
        assert await receive(statuses) == ("otc/v1/status", b'{"state": "up"}')
        async with Bus(
            host=secured.host,
            port=secured.port,
            username="client-a",
            password=auth.passwords["client-a"],
            client_id=ENGINE,
        ):
            await engine.publish(Publication("otc/v1/status", b'{"state": "still up"}'))
        assert await receive(statuses) == ("otc/v1/status", b'{"state": "still up"}')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_new_client_gets_a_password_and_the_others_keep_theirs(
    auth: AuthFiles, tmp_path: Path
) -> None:
    """``otc broker auth`` run again for a new client: every user already there logs in with its
    password as before (each run used to give everyone a new one), the new one with its own,
    a removed one no more; a rotated user only with its new password."""
    out = auth.password_file.parent
    again = generate_auth(["client-a", "client-c"], ENGINE, out, operators=["ops-1"])
    assert set(again.passwords) == {"client-c"}
    assert again.removed == ("client-b",)
    with secured_broker(tmp_path / "broker", again) as broker:
        for user, password in [
            ("client-a", auth.passwords["client-a"]),
            (ENGINE, auth.passwords[ENGINE]),
            ("ops-1", auth.passwords["ops-1"]),
            ("client-c", again.passwords["client-c"]),
        ]:
            async with Bus(host=broker.host, port=broker.port, username=user, password=password):
                pass
        with pytest.raises(BusError, match="cannot connect"):
            async with Bus(
                host=broker.host,
                port=broker.port,
                username="client-b",
                password=auth.passwords["client-b"],
            ):
                pass
    rotated = generate_auth(
        ["client-a", "client-c"], ENGINE, out, operators=["ops-1"], rotate=["client-a"]
    )
    assert set(rotated.passwords) == {"client-a"}
    with secured_broker(tmp_path / "broker-rotated", rotated) as broker:
        async with Bus(
            host=broker.host,
            port=broker.port,
            username="client-a",
            password=rotated.passwords["client-a"],
        ):
            pass
        with pytest.raises(BusError, match="cannot connect"):
            async with Bus(
                host=broker.host,
                port=broker.port,
                username="client-a",
                password=auth.passwords["client-a"],
            ):
                pass


async def test_a_client_reads_nothing_else_by_wildcard_and_writes_no_public_topic(
    secured: BrokerProcess, auth: AuthFiles
) -> None:
    """Subscriptions to everything (``#``, ``$SYS/#``, every client's answers) deliver only what
    the client may read; its publications on the status, a ladder or a command are dropped,
    retained or not, and so is its last will on the status."""
    client_a = Bus(
        host=secured.host,
        port=secured.port,
        username="client-a",
        password=auth.passwords["client-a"],
        will=Publication("otc/v1/status", b"forged will", retain=True),
    )
    async with (
        login(secured, auth, ENGINE) as engine,
        login(secured, auth, "client-b") as client_b,
        login(secured, auth, "ops-1") as ops,
    ):
        async with client_a:
            await client_a.subscribe(
                "#", "$SYS/#", "+/+/+/+", "otc/v1/+/quotes", "otc/v1/+/fills", "otc/v1/control/#"
            )
            await client_b.subscribe("otc/v1/status", "otc/v1/ladder/+")
            await engine.subscribe("otc/v1/control/+")
            await engine.publish(Publication("otc/v1/client-b/quotes", b"b's quote"))
            await engine.publish(Publication("otc/v1/client-b/fills", b"b's fill"))
            await ops.publish(Publication("otc/v1/control/ops-1", b'{"command": "halt"}'))
            assert await receive(engine.messages()) == (
                "otc/v1/control/ops-1",
                b'{"command": "halt"}',
            )
            await engine.publish(Publication("otc/v1/control/ops-1/result", b'{"ok": true}'))
            for topic in ("otc/v1/status", "otc/v1/ladder/BTC-USDT"):
                await client_a.publish(Publication(topic, b"forged", retain=True))
            await client_a.publish(Publication("otc/v1/control/ops-1", b'{"command": "go"}'))
            await ops.publish(Publication("otc/v1/control/ops-1", b'{"command": "resume"}'))
            assert await receive(engine.messages()) == (
                "otc/v1/control/ops-1",
                b'{"command": "resume"}',
            )
            await engine.publish(Publication("otc/v1/ladder/BTC-USDT", b"ladder", retain=True))
            await engine.publish(Publication("otc/v1/status", b"up", retain=True))
            await engine.publish(Publication("otc/v1/client-a/quotes", b"marker"))
            # the ladder and the status, which client-a may read, then its own quote: nothing
            # of anyone else's in between, nor any $SYS topic
            inbox = client_a.messages()
            assert await receive(inbox) == ("otc/v1/ladder/BTC-USDT", b"ladder")
            assert await receive(inbox) == ("otc/v1/status", b"up")
            assert await receive(inbox) == ("otc/v1/client-a/quotes", b"marker")
            inbox = client_b.messages()
            assert await receive(inbox) == ("otc/v1/ladder/BTC-USDT", b"ladder")
            assert await receive(inbox) == ("otc/v1/status", b"up")
            # a new connection of client-a's replaces this one, whose will the broker publishes
            async with login(secured, auth, "client-a"):
                pass
        await engine.publish(Publication("otc/v1/status", b"still up", retain=True))
        assert await receive(inbox) == ("otc/v1/status", b"still up")
    async with login(secured, auth, "client-b") as late:  # the retained ones are the engine's
        await late.subscribe("otc/v1/status", "otc/v1/ladder/+")
        retained = {await receive(late.messages()), await receive(late.messages())}
        assert retained == {("otc/v1/status", b"still up"), ("otc/v1/ladder/BTC-USDT", b"ladder")}


def _certificates(folder: Path) -> Path:
    """A test CA (``ca.crt``) and a server certificate it signed for 127.0.0.1 (``server.crt``,
    ``server.key``), made with the ``openssl`` command."""
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=otc test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")  # fmt: skip
    (folder / "san").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san")  # fmt: skip
    return folder


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_the_shipped_tls_listener_takes_tls_1_2_and_up_with_the_same_acl(
    auth: AuthFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commented TLS listener of config/mosquitto/otc.conf, uncommented as it is: clients
    connect over TLS (``mqtts://``, the engine's ``tls = true``), with the same passwords and
    ACL as on the loopback listener, TLS 1.2 or 1.3."""
    certs = _certificates(tmp_path / "certs")
    tls_port = _free_port()
    broker_dir = tmp_path / "broker"
    config, port = shipped_config(auth, broker_dir, tls=(tls_port, certs))
    monkeypatch.setenv("SSL_CERT_FILE", str(certs / "ca.crt"))  # Bus trusts the test CA
    with running_broker(broker_dir, kind="mosquitto", config_file=config, port=port) as broker:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            context = ssl.create_default_context(cafile=certs / "ca.crt")
            context.minimum_version = context.maximum_version = version
            with (
                socket.create_connection((broker.host, tls_port)) as sock,
                context.wrap_socket(sock, server_hostname=broker.host) as wrapped,
            ):
                assert wrapped.version() == version.name.replace("v1_", "v1.")
        with pytest.raises(BusError, match="cannot connect"):  # anonymous over TLS
            async with Bus(host=broker.host, port=tls_port, tls=True):
                pass

        def over_tls(user: str) -> Bus:
            return Bus(
                host=broker.host,
                port=tls_port,
                tls=True,
                username=user,
                password=auth.passwords[user],
            )

        async with over_tls(ENGINE) as engine, over_tls("client-a") as client_a:
            await engine.subscribe("otc/v1/+/rfq")
            await client_a.publish(Publication("otc/v1/client-b/rfq", b"forged"))
            await client_a.publish(Publication("otc/v1/client-a/rfq", b"own"))
            assert await receive(engine.messages()) == ("otc/v1/client-a/rfq", b"own")


async def test_the_shipped_config_disconnects_a_client_sending_a_huge_message(
    auth: AuthFiles, tmp_path: Path
) -> None:
    """An RFQ is a few hundred bytes (the engine refuses more than 4 KiB), but mosquitto took up
    to 256 MiB and handed it on the engine's one connection, in the way of every other
    client's messages; ``max_packet_size`` now disconnects the sender instead."""
    broker_dir = tmp_path / "broker"
    config, port = shipped_config(auth, broker_dir)
    with running_broker(broker_dir, kind="mosquitto", config_file=config, port=port) as broker:
        async with (
            login(broker, auth, ENGINE) as engine,
            login(broker, auth, "client-a") as client_a,
            login(broker, auth, "client-b") as client_b,
        ):
            await engine.subscribe("otc/v1/+/rfq")
            huge = Publication("otc/v1/client-a/rfq", b"x" * 1024 * 1024)
            publishing = asyncio.create_task(client_a.publish(huge))
            with pytest.raises(BusError, match="connection lost"):
                await receive(client_a.messages())
            publishing.cancel()  # its PUBACK never comes
            with contextlib.suppress(asyncio.CancelledError, BusError):
                await publishing
            await client_b.publish(Publication("otc/v1/client-b/rfq", b"b"))
            assert await receive(engine.messages()) == ("otc/v1/client-b/rfq", b"b")
        async with login(broker, auth, "client-a") as again:  # what fits is still taken
            await again.publish(Publication("otc/v1/client-a/rfq", b"y" * 60_000))


def _serve(broker: BrokerProcess, logs: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``otc serve`` with the demo config and synthetic feeds against ``broker``, its output in
    ``logs``/serve.out and serve.err (never a full pipe)."""
    with (logs / "serve.out").open("w") as out, (logs / "serve.err").open("w") as err:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "otc.cli", "serve", "--config", str(OTC_CONFIG)),
                *("--feeds", "sim", "--no-console", "--journal", str(logs / "journal.db")),
                *("--broker", f"mqtt://{broker.host}:{broker.port}"),
            ],
            stdout=out,
            stderr=err,
            text=True,
            env=env,
        )


async def test_otc_serve_takes_the_brokers_password_from_the_environment(
    auth: AuthFiles, tmp_path: Path
) -> None:
    """``OTC_BROKER_PASSWORD`` logs the engine in (the shipped config has no password, and a
    password in ``--broker`` would show in ``ps``): it comes up and quotes client-a."""
    with secured_broker(tmp_path / "broker", auth) as broker:
        serve = _serve(
            broker, tmp_path, os.environ | {"OTC_BROKER_PASSWORD": auth.passwords[ENGINE]}
        )
        err = tmp_path / "serve.err"
        try:
            async with login(broker, auth, "client-a") as bus:
                await bus.subscribe("otc/v1/status")
                for _ in range(60):  # a guard against a hang: until the status says up
                    assert serve.poll() is None, err.read_text()
                    with contextlib.suppress(TimeoutError):
                        _, payload = await receive(bus.messages(), timeout_s=1.0)
                        if b'"up"' in payload:
                            break
                else:
                    pytest.fail("the engine never came up")
                rfq, _ = new_rfq("BTC-USDT", "buy", qty="1")
                answer = await asyncio.wait_for(request_quote(bus, "client-a", rfq), 30)
            assert isinstance(answer, Quote), answer
        finally:
            serve.terminate()
            serve.wait(timeout=30)
        assert serve.returncode == 0, err.read_text()
        assert "not authori" not in err.read_text().lower()


def test_an_empty_broker_password_variable_is_refused(tmp_path: Path) -> None:
    """Set but empty is a mistake (a variable meant to be filled), not "no password"."""
    done = subprocess.run(
        [sys.executable, "-m", "otc.cli", "serve", "--config", str(OTC_CONFIG), "--no-console"],
        env=os.environ | {"OTC_BROKER_PASSWORD": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "OTC_BROKER_PASSWORD is set but empty" in done.stderr


async def test_a_second_connection_as_the_engines_user_takes_over_and_the_engine_says_so(
    auth: AuthFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On the production broker the client id is the user name, so what takes the engine's
    session over is another connection as the engine's user (a second engine, say): its warning
    names that user, not only the client id no one else can use there."""
    caplog.set_level(logging.WARNING, logger="otc.app")
    config = load_config(OTC_CONFIG)
    config = msgspec.structs.replace(
        config, journal=msgspec.structs.replace(config.journal, path=str(tmp_path / "j.db"))
    )
    with secured_broker(tmp_path / "broker", auth) as broker:
        ready = asyncio.Event()
        engine = Engine(
            config,
            host=broker.host,
            port=broker.port,
            username=ENGINE,
            password=auth.passwords[ENGINE],
            on_ready=ready.set,
            console=False,
        )
        task = asyncio.create_task(engine.run())
        try:
            async with asyncio.timeout(RECEIVE_TIMEOUT_S):
                await ready.wait()
            with contextlib.suppress(BusError):  # the engine takes the session back
                async with login(broker, auth, ENGINE), asyncio.timeout(RECEIVE_TIMEOUT_S):
                    while engine.reconnects == 0:  # noqa: ASYNC110 - polled counter
                        await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert f"client id 'otc-engine' or as user {ENGINE!r}?" in caplog.text
