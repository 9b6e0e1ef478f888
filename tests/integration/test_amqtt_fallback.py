"""The broker without mosquitto: amqtt from ``.venv-amqtt``, chosen by ``start_broker``.

``OTC_NO_MOSQUITTO=1`` makes ``start_broker`` act as on a machine without mosquitto, so these
tests run the fallback here too. The bus tests of tests/unit/test_bus.py also run against
amqtt (``each_broker``); ``OTC_NO_MOSQUITTO=1 make test`` runs the whole suite on it.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from broker import Publication, needs_amqtt, receive

import otc.broker
from otc.broker import BrokerError, amqtt_config, amqtt_version, find_mosquitto, start_broker
from otc.bus import Bus


@pytest.fixture
def no_mosquitto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTC_NO_MOSQUITTO", "1")


@needs_amqtt
@pytest.mark.usefixtures("no_mosquitto")
async def test_without_mosquitto_the_broker_is_amqtt_and_the_bus_round_trips(
    tmp_path: Path,
) -> None:
    prefix = f"test/fallback/{uuid.uuid4().hex[:8]}"
    async with start_broker(config_dir=tmp_path) as broker:
        assert broker.kind == "amqtt"
        for words in ("amqtt", "MQTT 3.1.1 only", "slower than mosquitto", "no $share", "demo"):
            assert words in broker.notice
        will = Publication(f"{prefix}/status", b"down", retain=True)
        async with Bus(host=broker.host, port=broker.port) as sub:
            await sub.subscribe(f"{prefix}/#")
            messages = sub.messages()
            async with Bus(host=broker.host, port=broker.port, will=will) as pub:
                # amqtt speaks MQTT 3.1.1 only: the bus connects with it (aiomqtt's default).
                assert pub._client is not None
                assert pub._client._client.protocol == paho.MQTTv311
                await pub.publish(Publication(f"{prefix}/client-a/rfq", b'{"rfq_id": "r1"}'))
                assert await receive(messages) == (f"{prefix}/client-a/rfq", b'{"rfq_id": "r1"}')
                live = pub._socket()
                assert live is not None
                live.shutdown(socket.SHUT_RDWR)  # dropped without DISCONNECT: the will goes out
                assert await receive(messages) == (f"{prefix}/status", b"down")
    assert broker.pid is None  # stopped and reaped
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((broker.host, broker.port), timeout=5).close()


@pytest.mark.usefixtures("no_mosquitto")
def test_otc_no_mosquitto_hides_mosquitto(tmp_path: Path) -> None:
    assert find_mosquitto() is None
    with pytest.raises(BrokerError, match=r"mosquitto is ignored \(OTC_NO_MOSQUITTO is set\)"):
        start_broker(config_dir=tmp_path, kind="mosquitto")
    with pytest.raises(BrokerError, match="passwords, an ACL or a config file need it"):
        start_broker(config_dir=tmp_path, password_file=tmp_path / "passwd")


def test_otc_no_mosquitto_0_does_not_hide_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTC_NO_MOSQUITTO", raising=False)
    installed = find_mosquitto()
    monkeypatch.setenv("OTC_NO_MOSQUITTO", "0")
    assert find_mosquitto() == installed


@pytest.mark.usefixtures("no_mosquitto")
def test_without_either_broker_the_error_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(otc.broker, "AMQTT_VENV", tmp_path / ".venv-amqtt")
    with pytest.raises(BrokerError) as caught:
        start_broker(config_dir=tmp_path)
    assert str(caught.value) == (
        f"mosquitto is ignored (OTC_NO_MOSQUITTO is set) and {tmp_path / '.venv-amqtt'} is "
        "absent: run `make .venv-amqtt` (or install mosquitto)"
    )
    with pytest.raises(BrokerError, match=r"\.venv-amqtt is absent: run `make \.venv-amqtt`$"):
        start_broker(config_dir=tmp_path, kind="amqtt")
    assert amqtt_version() is None


def test_amqtt_takes_no_passwords_acl_or_config_file(tmp_path: Path) -> None:
    for option in ("password_file", "acl_file", "config_file"):
        with pytest.raises(BrokerError, match=r"amqtt runs without passwords.*need mosquitto"):
            start_broker(config_dir=tmp_path, kind="amqtt", port=1, **{option: tmp_path / "f"})


def test_amqtt_config_listens_on_the_address_given() -> None:
    text = amqtt_config(port=18830)
    assert "    bind: '127.0.0.1:18830'\n" in text
    assert "AnonymousAuthPlugin" in text
    assert "BrokerSysPlugin" not in text  # no $SYS topics
    assert "bind: '[::1]:1'" in amqtt_config(port=1, host="::1")


@needs_amqtt
def test_amqtt_that_loses_its_port_to_another_process_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port is taken between our check and amqtt's bind: amqtt logs it and keeps running."""
    monkeypatch.setattr(otc.broker, "_bindable", lambda host, port: True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = start_broker(config_dir=tmp_path, kind="amqtt", port=port)
        with pytest.raises(BrokerError, match=f"amqtt did not start on 127.0.0.1:{port}") as caught:
            broker.start()
    assert "address already in use" in str(caught.value)
    assert broker.pid is None  # stopped and reaped


@needs_amqtt
def test_amqtt_version_reads_the_installed_release() -> None:
    assert amqtt_version() == otc.broker.AMQTT_VERSION
