"""The operator console end to end in a real browser: `otc demo` as a process (its own broker,
the synthetic market, the console on a free port), Debian's Chromium driven by Playwright.

The page must show the book moving without a reload, a quote sent by `otc rfq` in its blotter
(and its explanation), the kill switch flipped from the page rejecting the next RFQ with
MARKET_HALTED, and the engine's death as "disconnected". Against consoles served in-process
(an engine restarted on the same port, or gone quiet): the page reconnects, and shows the
engine's blotter, not the previous one's, and a symbol it has. Skips when /usr/bin/chromium or
the playwright package is missing (`.ci/run` installs the `chromium` package).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from otc.app import Engine
from otc.clock import FakeClock
from otc.config import load_config
from otc.console import Activity, Console, ConsoleServer, ObservedJournal, listen
from otc.journal import MemoryJournal
from otc.quoting import QuoteEngine

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does it)",
)


class Demo:
    def __init__(self, proc: subprocess.Popen[str], console: str, broker: str) -> None:
        self.proc = proc
        self.console = console
        self.broker = broker


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    env = {k: v for k, v in os.environ.items() if k != "OTC_CONSOLE_TOKEN"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otc.cli",
            "demo",
            "--console-port",
            "0",
            "--journal",
            str(tmp_path / "journal.sqlite"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        seen = []
        console = broker = None
        for line in proc.stdout:
            seen.append(line)
            if m := re.search(r"engine up, broker (mqtt://\S+?),", line):
                broker = m[1]
            if m := re.search(r"console: (http://\S+#token=\S+)", line):
                console = m[1]
                break
        assert console is not None, "".join(seen)
        assert broker is not None, "".join(seen)
        yield Demo(proc, console, broker)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def rfq(broker: str, rfq_qty: str = "1") -> tuple[int, dict[str, object]]:
    got = subprocess.run(
        [
            *(sys.executable, "-m", "otc.cli", "rfq", "--broker", broker, "--client", "client-a"),
            *("--symbol", "BTC-USDT", "--side", "buy", "--qty", rfq_qty, "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.stdout, got.stderr
    doc: dict[str, object] = json.loads(got.stdout.splitlines()[0])
    return got.returncode, doc


def test_console_in_chromium(demo: Demo, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(demo.console)
            expect = sync_api.expect
            expect(page.locator("#conn-status")).to_have_text("live", timeout=20_000)
            # The book updates live: the depth timestamp moves, with no reload.
            updated = page.locator("#depth-updated")
            expect(updated).not_to_have_text("-", timeout=10_000)
            first = updated.get_attribute("data-ts-ms")
            expect(updated).not_to_have_attribute("data-ts-ms", first or "", timeout=10_000)
            expect(page.locator("#best-bid")).to_have_text(re.compile(r"^\d+(\.\d+)?$"))
            assert int(page.locator("#depth-chart").get_attribute("data-points") or 0) > 10
            expect(page.locator("#venues tbody tr")).to_have_count(6)
            # An RFQ sent over the bus appears in the blotter as a quote; its explanation opens.
            code, quote = rfq(demo.broker)
            assert code == 0, quote
            assert quote["type"] == "quote", quote
            row = page.locator(
                f'#blotter tr[data-kind="quote"][data-quote-id="{quote["quote_id"]}"]'
            )
            expect(row).to_have_count(1, timeout=10_000)
            expect(row).to_contain_text(str(quote["ask"]))
            row.click()
            explanation = page.locator("#explanation")
            expect(explanation).to_contain_text("hedge all-in", timeout=10_000)
            expect(explanation).to_contain_text(str(quote["ask"]))
            # The kill switch, flipped in the page, rejects the next RFQ.
            switch = page.locator('button[data-halt-symbol="BTC-USDT"]')
            switch.click()
            expect(page.locator("#last-action")).to_contain_text("BTC-USDT halted")
            expect(switch).to_contain_text("HALTED", timeout=10_000)
            code, reject = rfq(demo.broker)
            assert code == 1
            assert reject["code"] == "MARKET_HALTED", reject
            rejected = page.locator(
                f'#blotter tr[data-kind="reject"][data-rfq-id="{reject["rfq_id"]}"]'
            )
            expect(rejected).to_contain_text("MARKET_HALTED", timeout=10_000)
            expect(page.locator('#blotter tr[data-kind="control"]').first).to_contain_text(
                "console"
            )
            shot = tmp_path / "console.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"console screenshot: {shot}")
            assert shot.stat().st_size > 10_000
            # The engine goes away: the page says so.
            demo.proc.send_signal(signal.SIGTERM)
            assert demo.proc.wait(timeout=30) == 0
            expect(page.locator("#conn-status")).to_have_text("disconnected", timeout=15_000)
            expect(page.locator("#banner")).to_be_visible()
            assert errors == []
        finally:
            browser.close()


# -- the page against an in-process console -----------------------------------------------------

IN_PROCESS_TOKEN = "in-process-token-0123456789"  # noqa: S105 - a test's token


class InProcess:
    """Consoles served by an event loop in a thread, one at a time and on one port (an engine
    restarted): the page's side of a reconnection, without an engine process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = 0
        self.streams = 0  # push streams opened, over every console served
        self.task: asyncio.Task[None] | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    async def _start(self, quiet: bool, without: str | None) -> QuoteEngine:
        config = load_config(Path(__file__).parents[2] / "config" / "otc.toml")
        if without is not None:  # restarted with that instrument or client out of the config
            instruments = [inst for inst in config.instruments if inst.symbol != without]
            clients = [client for client in config.clients if client.id != without]
            config = msgspec.structs.replace(config, instruments=instruments, clients=clients)
        clock = FakeClock()
        engine = Engine(config, clock=clock, console=False)
        activity = Activity(
            config.console.blotter_size, clients=[c.id for c in config.clients], clock=clock
        )
        journal = ObservedJournal(MemoryJournal(), activity.record)
        quotes = QuoteEngine(config, engine.market, journal, clock)
        engine.quotes = quotes
        console = Console(
            config,
            token=IN_PROCESS_TOKEN,
            market=engine.market,
            quotes=quotes,
            activity=activity,
            clock=clock,
            control=engine.apply_control,
        )
        if quiet:  # nothing pushed after the first state: an engine gone quiet, socket open
            console.push_interval_s = 3600.0
        events = console._events

        def counted(symbol: str) -> AsyncIterator[bytes]:
            self.streams += 1
            return events(symbol)

        console._events = counted  # type: ignore[method-assign]
        server = ConsoleServer(console, listen("127.0.0.1", self.port))
        self.port = int(server.url.rstrip("/").rsplit(":", 1)[1])
        self.task = asyncio.create_task(server.serve())
        return quotes

    def start(self, *, quiet: bool = False, without: str | None = None) -> QuoteEngine:
        return self.run(self._start(quiet, without))

    def stop(self) -> None:
        async def stop(task: asyncio.Task[None]) -> None:
            task.cancel()
            await asyncio.wait({task})

        if self.task is not None:
            self.run(stop(self.task))
            self.task = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/#token={IN_PROCESS_TOKEN}"


@pytest.fixture
def in_process() -> Iterator[InProcess]:
    served = InProcess()
    try:
        yield served
    finally:
        served.stop()
        served.loop.call_soon_threadsafe(served.loop.stop)
        served.thread.join(timeout=30)
        served.loop.close()


@pytest.fixture
def page() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_the_page_reconnects_when_the_engine_goes_quiet(in_process: InProcess, page: Any) -> None:
    # The page said "disconnected" when the stream went quiet, but waited on the silent socket
    # for good (a frozen engine, a half-open connection) instead of reconnecting, as it says.
    from playwright.sync_api import expect

    in_process.start(quiet=True)
    page.goto(in_process.url)
    expect(page.locator("#conn-status")).to_have_text("live", timeout=20_000)
    for _ in range(300):  # until the page opens another stream; a hang guard
        if in_process.streams >= 2:
            break
        page.wait_for_timeout(100)
    assert in_process.streams >= 2
    expect(page.locator("#conn-status")).to_have_text("live", timeout=20_000)


def test_a_restarted_engine_s_empty_blotter_clears_the_page_s(
    in_process: InProcess, page: Any
) -> None:
    # After a reconnection, the rows of the engine before it stayed on the page until a new
    # event came: the page showed a blotter the engine no longer had.
    from playwright.sync_api import expect

    quotes = in_process.start()
    page.goto(in_process.url)
    expect(page.locator("#conn-status")).to_have_text("live", timeout=20_000)
    rfq = b'{"rfq_id": "before-restart", "symbol": "BTC-USDT", "side": "buy", "qty": "1"}'
    in_process.run(quotes.on_rfq("client-a", rfq))
    expect(page.locator('#blotter tr[data-rfq-id="before-restart"]').first).to_be_visible(
        timeout=20_000
    )
    opened = in_process.streams
    in_process.stop()
    in_process.start()  # on the same port, with nothing happened yet
    for _ in range(300):  # until the page opens a stream on it; a hang guard
        if in_process.streams > opened:
            break
        page.wait_for_timeout(100)
    assert in_process.streams > opened
    expect(page.locator("#conn-status")).to_have_text("live", timeout=20_000)
    expect(page.locator("#blotter tbody tr")).to_have_count(0, timeout=20_000)


def test_the_page_drops_a_symbol_the_restarted_engine_no_longer_has(
    in_process: InProcess, page: Any
) -> None:
    # The page reopened its stream with the symbol it showed: refused (404) by an engine
    # restarted without it, it retried the same request every second, "disconnected" for good.
    from playwright.sync_api import expect

    in_process.start()
    page.goto(in_process.url)
    expect(page.locator("#conn-status")).to_have_text("live", timeout=20_000)
    page.select_option("#symbol", "ETH-USDT")
    expect(page.locator("#depth-symbol")).to_have_text("ETH-USDT", timeout=20_000)
    opened = in_process.streams
    in_process.stop()
    in_process.start(without="ETH-USDT")
    expect(page.locator("#depth-symbol")).to_have_text("BTC-USDT", timeout=20_000)
    expect(page.locator("#conn-status")).to_have_text("live", timeout=20_000)
    assert in_process.streams > opened


def test_the_blotter_filters_list_the_restarted_engine_s_clients(
    in_process: InProcess, page: Any
) -> None:
    # The symbol and filter lists were rebuilt only when the number of symbols changed: an
    # engine restarted with other clients (or symbols, as many) kept the old ones listed.
    from playwright.sync_api import expect

    in_process.start()
    page.goto(in_process.url)
    expect(page.locator("#conn-status")).to_have_text("live", timeout=20_000)
    expect(page.locator('#filter-client option[value="client-b"]')).to_have_count(1)
    opened = in_process.streams
    in_process.stop()
    in_process.start(without="client-b")
    for _ in range(300):  # until the page opens a stream on it; a hang guard
        if in_process.streams > opened:
            break
        page.wait_for_timeout(100)
    assert in_process.streams > opened
    expect(page.locator('#filter-client option[value="client-b"]')).to_have_count(0, timeout=20_000)
    expect(page.locator('#filter-client option[value="client-a"]')).to_have_count(1)


def test_a_client_switch_in_the_blotter_names_its_operator(
    in_process: InProcess, page: Any
) -> None:
    # A control row showed its client in the client column when it had one, so that who
    # disabled a client (the operator, journaled) was shown nowhere on the page.
    from playwright.sync_api import expect

    in_process.start()
    page.goto(in_process.url)
    expect(page.locator("#conn-status")).to_have_text("live", timeout=20_000)
    page.fill("#operator", "ops-9")
    page.click('button[data-toggle-client="client-b"]')
    expect(page.locator("#last-action")).to_contain_text("client-b disabled", timeout=20_000)
    row = page.locator('#blotter tr[data-kind="control"]')
    expect(row).to_have_count(1, timeout=20_000)
    expect(row.locator("td").nth(2)).to_have_text("ops-9")
    expect(row).to_contain_text("client-b disabled")
    page.select_option("#filter-client", "client-b")  # still the client's row
    expect(row).to_have_count(1)


def test_a_command_the_engine_does_not_answer_says_so(in_process: InProcess, page: Any) -> None:
    # With the engine gone, a click on a kill switch failed silently (an unhandled rejection
    # of fetch): the status line went on showing the previous command's "ok: ...".
    from playwright.sync_api import expect

    in_process.start()
    page.goto(in_process.url)
    expect(page.locator("#conn-status")).to_have_text("live", timeout=20_000)
    page.click('button[data-halt-symbol="BTC-USDT"]')
    expect(page.locator("#last-action")).to_have_text("ok: BTC-USDT halted", timeout=20_000)
    in_process.stop()
    expect(page.locator("#conn-status")).to_have_text("disconnected", timeout=20_000)
    page.click("#resume-all")
    expect(page.locator("#last-action")).to_contain_text(
        "no answer from the engine", timeout=20_000
    )
    expect(page.locator("#last-action")).to_have_class("last-action error")


def test_a_flood_from_unknown_clients_leaves_the_desk_s_rows_on_the_page(
    in_process: InProcess, page: Any
) -> None:
    # RFQs under client ids the config does not name (a broker without the shipped ACL) filled
    # the page's 2,000 rows as the engine's: the desk's quotes left the blotter. They are kept
    # apart (a few), and the page says how many the engine dropped.
    from playwright.sync_api import expect

    quotes = in_process.start()
    page.goto(in_process.url)
    expect(page.locator("#conn-status")).to_have_text("live", timeout=20_000)
    desk = b'{"rfq_id": "desk-1", "symbol": "BTC-USDT", "side": "buy", "qty": "1"}'
    in_process.run(quotes.on_rfq("client-a", desk))
    expect(page.locator('#blotter tr[data-rfq-id="desk-1"]').first).to_be_visible(timeout=20_000)

    async def flood() -> None:
        for n in range(1_200):
            rfq = f'{{"rfq_id": "x{n}", "symbol": "BTC-USDT", "side": "buy", "qty": "1"}}'
            await quotes.on_rfq(f"intruder-{n % 5}", rfq.encode())
            if n % 50 == 0:  # let the stream push them to the page as they come
                await asyncio.sleep(0.02)

    in_process.run(flood())
    expect(page.locator('#blotter tr[data-rfq-id="x1199"]').first).to_be_visible(timeout=20_000)
    expect(page.locator('#blotter tr[data-rfq-id="desk-1"]').first).to_be_visible()
    expect(page.locator("#unknown-clients")).to_contain_text("dropped", timeout=20_000)
    assert page.locator('#blotter tr[data-kind="rfq"]').count() <= 300


def test_the_page_tells_a_quiet_engine_even_when_its_own_clock_steps_back(
    in_process: InProcess, page: Any
) -> None:
    # The page timed the stream's silence on the wall clock (Date.now): the operator's
    # machine stepped back an hour (NTP, a resumed virtual machine), and a frozen engine was
    # shown "live", its views stale, for that hour, without a reconnection. Silence is timed
    # on performance.now: the page reconnects as it does without a step.
    from playwright.sync_api import expect

    in_process.start(quiet=True)  # one state, then nothing: an engine gone quiet
    page.goto(in_process.url)
    expect(page.locator("#conn-status")).to_have_text("live", timeout=20_000)
    opened = in_process.streams
    page.evaluate("() => { const wall = Date.now; Date.now = () => wall() - 3_600_000; }")
    for _ in range(300):  # until the page opens another stream; a hang guard
        if in_process.streams > opened:
            break
        page.wait_for_timeout(100)
    assert in_process.streams > opened
