"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import running_broker, unique_topic_prefix  # tests/broker.py

from otc.broker import BrokerProcess

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The recorded venue data of ``../shared/data``; tests using it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"recorded venue data not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker of the test's own on a free loopback port: mosquitto when installed, else amqtt
    from .venv-amqtt (``OTC_TEST_BROKER=amqtt|mosquitto`` to choose); see tests/broker.py."""
    with running_broker(tmp_path / "broker") as process:
        yield process


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test uses (``test/<name>/<random>``)."""
    return unique_topic_prefix(request.node.name)
