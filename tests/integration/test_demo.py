"""`otc demo` end to end, on each broker: its own broker, an RFQ quoted, an accept filled.

The demo runs as a real process in a session of its own; a Ctrl-C is sent to that whole process
group, as a terminal does. The broker runs in its own session, so it keeps serving while the
engine shuts down: the retained status ``down`` still reaches a watching client. Once the demo
exited, its broker is gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import needs_amqtt, receive

from otc.broker import find_mosquitto
from otc.bus import Bus

#: How long the demo may run at most: a guard against hangs, not a timing.
DEMO_DURATION_S = 90


@pytest.fixture(
    params=[
        pytest.param(
            "mosquitto",
            marks=pytest.mark.skipif(
                find_mosquitto() is None,
                reason="mosquitto is not installed or OTC_NO_MOSQUITTO is set",
            ),
        ),
        pytest.param("amqtt", marks=needs_amqtt),
    ]
)
def demo(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[str], str]]:
    """The broker kind, a running ``otc demo``, and what it printed up to the instructions."""
    env = dict(os.environ)
    if request.param == "amqtt":
        env["OTC_NO_MOSQUITTO"] = "1"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otc.cli",
            "demo",
            "--duration",
            str(DEMO_DURATION_S),
            "--journal",
            str(tmp_path / "journal.sqlite"),
            "--console-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        printed = ""
        while "engine up" not in printed:
            line = proc.stdout.readline()
            assert line, (printed, proc.stderr.read() if proc.stderr else "")
            printed += line
        yield request.param, proc, printed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_the_demo_quotes_fills_and_goes_down_cleanly_on_ctrl_c(
    demo: tuple[str, subprocess.Popen[str], str],
) -> None:
    kind, proc, printed = demo
    found = re.search(r"broker mqtt://([\d.]+):(\d+)", printed)
    assert found is not None, printed
    host, port = found.group(1), int(found.group(2))
    notice = "otc demo: amqtt instead of mosquitto: MQTT 3.1.1 only"
    assert (notice in printed) is (kind == "amqtt")

    got = subprocess.run(
        [
            *(sys.executable, "-m", "otc.cli", "rfq", "--broker", f"mqtt://{host}:{port}"),
            *("--client", "client-a", "--symbol", "BTC-USDT", "--side", "buy", "--qty", "25"),
            *("--accept", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    quote, fill = (json.loads(line) for line in got.stdout.splitlines())
    assert (quote["type"], fill["type"]) == ("quote", "fill")
    assert fill["price"] == quote["ask"]
    assert fill["qty"] == "25"

    async def ctrl_c_while_watching() -> list[bytes]:
        async with Bus(host=host, port=port) as watcher:
            await watcher.subscribe("otc/v1/status")
            messages = watcher.messages()
            seen = [(await receive(messages))[1]]  # retained: up
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole group
            seen.append((await receive(messages))[1])
            return seen

    up, down = (json.loads(payload)["state"] for payload in asyncio.run(ctrl_c_while_watching()))
    assert (up, down) == ("up", "down")
    assert proc.wait(timeout=30) == 0
    with pytest.raises(ConnectionRefusedError):  # the demo stopped its broker
        socket.create_connection((host, port), timeout=5).close()
