"""Keeping one venue adapter connected: subscribe, heartbeat, reconnect, resync, staleness.

:class:`FeedConnection` owns a websocket to one venue and drives a
:class:`~feeds.base.VenueBookFeed` with what arrives. Everything venue-specific (messages to
send, how to resync a symbol) is asked of the adapter; this module holds the one copy of the
connection logic:

* connect with ``websockets``, send the adapter's subscribe messages, and send its application
  heartbeat every ``heartbeat_interval_s`` (protocol pings are on as well);
* every message goes to ``feed.on_message``; a :class:`~feeds.base.SequenceGap` or
  :class:`~feeds.base.ChecksumMismatch` triggers a resync of that symbol: the adapter's
  resubscribe messages when it has them, a REST snapshot when it syncs from one (Binance), or
  else a reconnect;
* a :class:`~feeds.base.MalformedSnapshot` (a snapshot that does not parse or apply, its symbol
  left out of sync) is counted as malformed and resynced the same way: most venues send a
  snapshot only on (re)subscription, so skipping it would leave the symbol out of the
  consolidated book until the next reconnect. A message of several books that put more than
  one out of sync resyncs them all (the error's ``others``), and the events it did apply are
  forwarded all the same (its ``applied``). A REST snapshot body that does not parse leaves
  its symbol pending: it is fetched again, ``snapshot_retry_s`` later at the earliest;
* resyncs of one symbol that follow each other (none ``resync_calm_s`` after the previous one
  went out) are paced by a growing, jittered delay (``resync_base_s`` doubling up to
  ``resync_cap_s``): a fault that keeps coming back must not turn into a flood of
  subscriptions, which venues rate-limit or ban;
* a symbol still out of sync ``sync_timeout_s`` after its watchdog first saw it so (a snapshot
  the adapter could not decode at all, a subscription the venue ignored) is resynced: the
  safety net behind the rules above; so is one whose book stays crossed for
  ``crossed_timeout_s`` (left out of the consolidated view, it would wait for a snapshot that
  nothing else brings);
* a connection that goes quiet for ``stale_after_ms`` (counted from its opening: a venue that
  never says a word is stale too) is dropped and reopened; a dropped connection is reopened
  after a capped, jittered exponential backoff, which starts over only after a connection that
  stayed live for 10 s (a venue that hangs up after each snapshot is redialled ever more
  slowly); closing handshakes the venue does not complete are given up after 1 s;
* REST snapshots are fetched only for the symbols subscribed, and one that keeps failing (an
  HTTP error, a broken response, a body that does not parse) is fetched again paced like a
  resync, never faster than ``snapshot_retry_s`` nor sooner than an HTTP error's
  ``Retry-After`` asks (Binance's 429 and 418: it bans for longer each time a client does not
  wait);
* other malformed messages are counted and skipped, never fatal; the venue's error answer to a
  request (:class:`~feeds.base.RequestRefused`, e.g. a refused subscription) is logged and
  skipped, its symbols staying out of sync;
* :meth:`FeedConnection.health` reports state, age of the last update and the counters, for the
  quoting service and the console.

All tasks live in one named :class:`asyncio.TaskGroup`; cancelling :meth:`FeedConnection.run`
closes the socket and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import http.client
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import IO, Literal

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect

from feeds.base import (
    BookEvent,
    ChecksumMismatch,
    MalformedSnapshot,
    RequestRefused,
    SequenceGap,
    VenueBookFeed,
)
from otc.errors import ValueParseError

__all__ = ["Backoff", "FeedConnection", "FeedHealth"]

log = logging.getLogger(__name__)

#: What a message or REST body that does not parse raises (nested too deeply included).
_MALFORMED = (msgspec.DecodeError, msgspec.ValidationError, ValueParseError, RecursionError)
#: How long a connection must stay live before its end starts the reconnect back-off over.
_CALM_NS = 10 * 1_000_000_000

FeedState = Literal["connecting", "syncing", "live", "stale", "down"]


class Backoff:
    """Capped exponential backoff with jitter: ``uniform(least * c, c)``, ``c = min(cap, base *
    2**n)`` for the ``n``-th delay since the last reset (full jitter with ``least`` 0).

    Args:
        base_s: first ceiling, seconds.
        cap_s: largest ceiling, seconds.
        least: share of the ceiling always waited (0 to 1).
        rng: random source (seed it in tests).
    """

    def __init__(
        self,
        *,
        base_s: float = 0.5,
        cap_s: float = 30.0,
        least: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.least = least
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next_delay(self) -> float:
        # A float power: 2**n as an int no longer converts to a float past n = 1023 (a venue
        # away for hours), and the exponent stops where the float would overflow.
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(self.attempt, 1000))
        self.attempt += 1
        return self._rng.uniform(self.least * ceiling, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class FeedHealth(msgspec.Struct, frozen=True):
    """One venue feed's health, as the quoting service and the console see it."""

    venue: str
    state: FeedState
    age_ms: int | None
    symbols_in_sync: int
    symbols: int
    gaps: int
    checksum_failures: int
    resyncs: int
    reconnects: int
    malformed: int
    last_error: str


class FeedConnection:
    """Keeps ``feed`` subscribed to ``venue_symbols`` over a websocket.

    Args:
        feed: the venue adapter (it owns the books).
        venue_symbols: the venue's own symbol names to subscribe to.
        url: websocket endpoint; the adapter's public ``url`` when omitted.
        rest_url: base of the venue's REST API for snapshot-synced venues (tests point it at a
            loopback exchange).
        stale_after_ms: a connection quiet for this long is reopened; health says ``stale``.
        backoff: reconnect policy.
        on_events: called with the events each message applied (recorder, engine).
        clock_ns: wall clock in ns, which stamps the events received (``ts_recv_ns``).
        monotonic_ns: the clock every duration is measured on (quiet time, staleness, resync
            pacing, the back-off's calm spell): a wall clock stepped forward must not drop
            every connection as quiet, nor one stepped back keep a silent one open.
        snapshot_retry_s: least time between two REST snapshot requests for one symbol.
        sync_timeout_s: a symbol of a live connection out of sync this long (no snapshot came:
            one the adapter could not even decode, a subscription the venue ignored...) is
            resynced, as after a gap: the safety net behind every other resync rule.
        crossed_timeout_s: a symbol in sync whose book stays crossed (best bid at or above
            best ask) this long is marked out of sync and resynced: the consolidated view
            leaves a crossed book out, and nothing else would ever bring a fresh snapshot.
        resync_base_s, resync_cap_s, resync_calm_s: pacing of a symbol's resyncs by
            resubscription or reconnection. A symbol's first resync ``resync_calm_s`` or more
            after the previous one went out (not was asked for) is immediate; each further one
            waits ``d / 2 + uniform(0, d / 2)``, ``d = min(resync_cap_s, resync_base_s *
            2**n)`` for its ``n``-th in a row, so that a fault that keeps coming back (a
            checksum that never matches, a venue sending bad snapshots) does not become a flood
            of subscriptions, which venues rate-limit.
    """

    def __init__(
        self,
        feed: VenueBookFeed,
        venue_symbols: list[str],
        *,
        url: str | None = None,
        rest_url: str | None = None,
        stale_after_ms: int = 10_000,
        backoff: Backoff | None = None,
        on_events: Callable[[list[BookEvent]], None] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        snapshot_retry_s: float = 1.0,
        sync_timeout_s: float = 15.0,
        crossed_timeout_s: float = 5.0,
        resync_base_s: float = 0.5,
        resync_cap_s: float = 30.0,
        resync_calm_s: float = 10.0,
    ) -> None:
        self.feed = feed
        self.venue_symbols = list(venue_symbols)
        self.url = url or feed.url
        self.rest_url = rest_url
        self.stale_after_ms = stale_after_ms
        self.backoff = backoff or Backoff()
        self.on_events = on_events
        self.clock_ns = clock_ns
        self.monotonic_ns = monotonic_ns
        self.snapshot_retry_s = snapshot_retry_s
        self.state: FeedState = "down"
        self.reconnects = 0
        self.malformed = 0
        self.last_error = ""
        #: When the last message arrived, on ``monotonic_ns`` (0: none yet).
        self.last_message_ns = 0
        self.connected = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._fetching: set[str] = set()
        self.sync_timeout_s = sync_timeout_s
        self.crossed_timeout_s = crossed_timeout_s
        self.resync_base_s = resync_base_s
        self.resync_cap_s = resync_cap_s
        self.resync_calm_s = resync_calm_s
        #: Per symbol: the pacing of its resyncs in a row, and when the last was.
        self._resyncs: dict[str, tuple[Backoff, int]] = {}
        self._resync_waiting: set[str] = set()
        self._live_since: int | None = None  # when the current connection went live

    # -- public --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and keep connected until cancelled."""
        first = True
        while True:
            if not first:
                self.reconnects += 1
                delay = self.backoff.next_delay()
                log.info("%s: reconnecting in %.2f s", self.feed.venue, delay)
                await asyncio.sleep(delay)
            first = False
            self.state = "connecting"
            self._live_since = None
            try:
                await self._session()
            except* (
                OSError,
                TimeoutError,
                websockets.ConnectionClosed,
                websockets.InvalidHandshake,
            ) as group:
                exc = group.exceptions[0]
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("%s: connection lost: %s", self.feed.venue, self.last_error)
            finally:
                self.connected.clear()
                self._ws = None
                self.state = "down"
                for symbol in list(self.feed.in_sync):
                    self.feed.mark(symbol, False, "disconnected")
                # Back-off starts over only after a connection that stayed live for a while: a
                # venue that sends one snapshot and hangs up must not be redialled at once, forever.
                live_since = self._live_since
                if live_since is not None and self.monotonic_ns() - live_since >= _CALM_NS:
                    self.backoff.reset()

    def health(self, now_ns: int | None = None) -> FeedHealth:
        """The connection's health; ``now_ns`` on ``monotonic_ns`` (default: now)."""
        now = self.monotonic_ns() if now_ns is None else now_ns
        age = (now - self.last_message_ns) // 1_000_000 if self.last_message_ns else None
        state = self.state
        if state == "live" and age is not None and age > self.stale_after_ms:
            state = "stale"
        stats = self.feed.stats
        return FeedHealth(
            venue=self.feed.venue,
            state=state,
            age_ms=age,
            symbols_in_sync=sum(
                bool(self.feed.in_sync.get(self.feed.our_symbol(name)))
                for name in self.venue_symbols
            ),
            symbols=len(self.venue_symbols),
            gaps=stats.gaps,
            checksum_failures=stats.checksums_failed,
            resyncs=stats.resyncs,
            reconnects=self.reconnects,
            malformed=self.malformed,
            last_error=self.last_error,
        )

    # -- internals -----------------------------------------------------------------------------

    async def _session(self) -> None:
        async with connect(
            self.url, open_timeout=10, close_timeout=1, max_size=2**24, compression=None
        ) as ws:
            self._ws = ws
            self.state = "syncing"
            # Quiet time counts from the opening: a venue that never says a word is stale too,
            # and a new connection is not judged by the last message of the one before.
            self.last_message_ns = self.monotonic_ns()
            for message in self.feed.subscribe_messages(self.venue_symbols):
                await ws.send(message.decode())
            self.connected.set()
            async with asyncio.TaskGroup() as tg:
                helpers = [
                    tg.create_task(self._heartbeat(ws), name=f"{self.feed.venue}-heartbeat"),
                    tg.create_task(self._watchdog(ws, tg), name=f"{self.feed.venue}-watchdog"),
                ]
                try:
                    await self._receive(ws, tg)
                finally:
                    for task in helpers:
                        task.cancel()

    async def _receive(self, ws: ClientConnection, tg: asyncio.TaskGroup) -> None:
        feed = self.feed
        symbols = [feed.our_symbol(name) for name in self.venue_symbols]
        subscribed = set(self.venue_symbols)  # another symbol the venue sends gets no snapshot
        async for message in ws:
            now = self.clock_ns()
            self.last_message_ns = self.monotonic_ns()
            data = message.encode() if isinstance(message, str) else message
            try:
                events = feed.on_message(data, now)
            except (SequenceGap, ChecksumMismatch, MalformedSnapshot) as exc:
                if isinstance(exc, MalformedSnapshot):
                    self.malformed += 1
                    self.last_error = f"malformed message: {exc}"
                else:
                    self.last_error = str(exc)
                if exc.applied and self.on_events is not None:
                    self.on_events(list(exc.applied))
                for symbol in (exc.symbol, *exc.others):
                    await self._resync(ws, tg, symbol)
                continue
            except RequestRefused as exc:
                self.last_error = str(exc)
                log.warning("%s", exc)
                continue
            except _MALFORMED as exc:
                self.malformed += 1
                self.last_error = f"malformed message: {exc or type(exc).__name__}"
                continue
            if events:
                if self.on_events is not None:
                    self.on_events(events)
                if self.state == "syncing" and all(
                    feed.in_sync.get(symbol) for symbol in symbols
                ):  # every subscribed symbol, not only those seen so far
                    self.state = "live"
                    if self._live_since is None:
                        self._live_since = self.monotonic_ns()
            for venue_symbol in feed.pending_snapshots():
                if venue_symbol in subscribed and venue_symbol not in self._fetching:
                    self._fetching.add(venue_symbol)
                    tg.create_task(self._fetch_snapshot(venue_symbol), name=f"rest-{venue_symbol}")

    def resync_delay(self, symbol: str) -> float:
        """Seconds to wait before resyncing our ``symbol`` now (see the class's Args), and
        count that resync."""
        now = self.monotonic_ns()
        if symbol in self._resyncs:
            pacing, last = self._resyncs[symbol]
        else:
            pacing = Backoff(base_s=self.resync_base_s, cap_s=self.resync_cap_s, least=0.5)
            last = None
        if last is None or now - last >= self.resync_calm_s * 1e9:
            pacing.reset()  # the first of a row: at once
            delay = 0.0
        else:
            delay = pacing.next_delay()
        # The calm spell counts from when the resync goes out, not from when it was asked for:
        # a fault back right after a resync paced longer than the spell is still in a row.
        self._resyncs[symbol] = (pacing, now + round(delay * 1e9))
        return delay

    async def _resync(self, ws: ClientConnection, tg: asyncio.TaskGroup, symbol: str) -> None:
        """Resync our ``symbol`` (out of sync already), now or, paced, from a task."""
        self.state = "syncing"
        if symbol in self._resync_waiting:
            return  # a paced resync of it is on its way
        delay = self.resync_delay(symbol)
        if delay <= 0:
            await self._resync_now(ws, symbol)
            return
        log.info("%s %s: resync again in %.2f s", self.feed.venue, symbol, delay)
        self._resync_waiting.add(symbol)
        tg.create_task(self._resync_later(ws, symbol, delay), name=f"resync-{symbol}")

    async def _resync_later(self, ws: ClientConnection, symbol: str, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            self._resync_waiting.discard(symbol)
        if not self.feed.in_sync.get(symbol):
            await self._resync_now(ws, symbol)

    async def _resync_now(self, ws: ClientConnection, symbol: str) -> None:
        feed = self.feed
        venue_symbol = feed.venue_symbol(symbol)
        messages = feed.resubscribe_messages(venue_symbol)
        if messages is not None:
            for message in messages:
                await ws.send(message.decode())
            return
        if venue_symbol in feed.pending_snapshots():
            return  # the receive loop schedules the REST snapshot
        await ws.close(reason="resync")

    async def _fetch_snapshot(self, venue_symbol: str) -> None:
        url = self.feed.snapshot_url(venue_symbol, base=self.rest_url)
        symbol = self.feed.our_symbol(venue_symbol)
        retry_after_s = 0.0  # what the venue asked us to wait, if it did
        try:
            try:
                body = await asyncio.to_thread(_http_get, url)
                events = self.feed.on_rest(url, body, self.clock_ns())
                if events and self.on_events is not None:
                    self.on_events(events)
                if not events and not self.feed.in_sync.get(symbol):  # say why it still waits
                    self.last_error = (
                        f"snapshot {venue_symbol}: older than the events buffered (or they are "
                        "none yet): fetching another"
                    )
            except (SequenceGap, ChecksumMismatch) as exc:
                self.last_error = str(exc)
                if exc.applied and self.on_events is not None:
                    self.on_events(list(exc.applied))
            except _MALFORMED as exc:
                # MalformedSnapshot included: the symbol stays pending, so it is fetched again.
                self.malformed += 1
                self.last_error = f"snapshot {venue_symbol}: malformed body: {exc}"
            except urllib.error.HTTPError as exc:
                # 429 (over the limits) or 418 (banned) with the seconds to wait: a venue bans
                # for longer each time a client asks again sooner (Binance: 2 min to 3 days).
                self.last_error = f"snapshot {venue_symbol}: {type(exc).__name__}: {exc}"
                retry_after_s = _retry_after_s(exc.headers)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # HTTP errors, a broken HTTP response, a bad redirect (urllib's ValueError).
                self.last_error = f"snapshot {venue_symbol}: {type(exc).__name__}: {exc}"
            # Space out retries: a deep REST snapshot is expensive in the venue's rate limits,
            # and snapshots that keep failing are paced like resyncs (a flood gets the IP banned).
            delay = max(self.snapshot_retry_s, retry_after_s)
            if not self.feed.in_sync.get(symbol):
                delay = max(delay, self.resync_delay(symbol))
            await asyncio.sleep(delay)
        finally:  # cancelled included: no wait then
            self._fetching.discard(venue_symbol)

    async def _heartbeat(self, ws: ClientConnection) -> None:
        message = self.feed.heartbeat_message()
        interval = self.feed.heartbeat_interval_s
        if message is None:
            return
        while True:
            await asyncio.sleep(interval)
            await ws.send(message.decode())

    async def _watchdog(self, ws: ClientConnection, tg: asyncio.TaskGroup) -> None:
        """Close a connection quiet for ``stale_after_ms``; resync a symbol out of sync for
        ``sync_timeout_s``, or crossed for ``crossed_timeout_s``."""
        period = min(
            self.stale_after_ms / 1e3 / 4, self.sync_timeout_s / 2, self.crossed_timeout_s / 2
        )
        out_since: dict[str, int] = {}  # our symbol -> when this watchdog saw it out of sync
        crossed_since: dict[str, int] = {}  # our symbol -> when it saw its book crossed
        while True:
            await asyncio.sleep(period)
            now = self.monotonic_ns()
            quiet_ms = (now - self.last_message_ns) // 1_000_000
            if self.last_message_ns and quiet_ms > self.stale_after_ms:
                self.last_error = f"no data for {quiet_ms} ms"
                self.state = "stale"
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.close(reason="stale")
                return
            for venue_symbol in self.venue_symbols:
                symbol = self.feed.our_symbol(venue_symbol)
                if self.feed.in_sync.get(symbol):
                    out_since.pop(symbol, None)
                    await self._check_crossed(ws, tg, venue_symbol, symbol, now, crossed_since)
                    continue
                crossed_since.pop(symbol, None)
                if venue_symbol in self._fetching:
                    out_since.pop(symbol, None)
                    continue
                since = out_since.setdefault(symbol, now)
                if now - since >= self.sync_timeout_s * 1e9:
                    out_since[symbol] = now  # the next check counts from this resync
                    self.last_error = f"{symbol}: out of sync for {self.sync_timeout_s:g} s"
                    log.warning("%s %s", self.feed.venue, self.last_error)
                    await self._resync(ws, tg, symbol)

    async def _check_crossed(
        self,
        ws: ClientConnection,
        tg: asyncio.TaskGroup,
        venue_symbol: str,
        symbol: str,
        now: int,
        crossed_since: dict[str, int],
    ) -> None:
        """Resync our ``symbol`` (in sync) once its book has been crossed for
        ``crossed_timeout_s`` in a row (a moment's crossing is left alone)."""
        book = self.feed.books.get(symbol)
        if book is None or not book.crossed:
            crossed_since.pop(symbol, None)
            return
        since = crossed_since.setdefault(symbol, now)
        if now - since < self.crossed_timeout_s * 1e9:
            return
        crossed_since.pop(symbol, None)
        self.last_error = f"{symbol}: book crossed for {self.crossed_timeout_s:g} s"
        log.warning("%s %s", self.feed.venue, self.last_error)
        self.feed.stats.resyncs += 1
        self.feed.mark(symbol, False, self.last_error)
        if self.feed.resubscribe_messages(venue_symbol) is None:
            return  # synced from REST snapshots: the events buffered from now on fetch one
        await self._resync(ws, tg, symbol)


#: The longest Retry-After followed (Binance's longest ban); a longer one waits this long.
_MAX_RETRY_AFTER_S = 3 * 86_400.0


def _retry_after_s(headers: email.message.Message | None) -> float:
    """The seconds an HTTP error's ``Retry-After`` asks for (0 without one; its date form,
    which the venues do not send, counts as none)."""
    value = (headers.get("Retry-After") if headers is not None else None) or ""
    value = value.strip()
    if not (value.isdigit() and value.isascii() and len(value) <= 9):
        return 0.0
    return min(float(value), _MAX_RETRY_AFTER_S)


#: A REST snapshot's whole exchange may take this long, and its body be this large, at most:
#: a venue dripping a body byte by byte must not hold a thread for hours, nor fill the memory.
_SNAPSHOT_DEADLINE_S = 30.0
_SNAPSHOT_MAX_BYTES = 64 * 2**20


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows a redirect to another http(s) URL only (urllib also follows ``ftp://``)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not newurl.startswith(("http://", "https://")):
            fp.close()
            raise urllib.error.HTTPError(
                newurl, code, "refusing a non-HTTP redirect", headers, None
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly)


def _http_get(url: str) -> bytes:
    """Blocking GET (run in a thread): REST snapshots are rare; the body read in chunks within
    :data:`_SNAPSHOT_DEADLINE_S` (plus one socket timeout) and :data:`_SNAPSHOT_MAX_BYTES`."""
    if not url.startswith(("http://", "https://")):
        raise OSError(f"refusing non-HTTP snapshot url {url!r}")
    started = time.monotonic()
    chunks: list[bytes] = []
    size = 0
    with _OPENER.open(url, timeout=10) as response:
        while chunk := response.read1(1 << 16):  # what has arrived: the deadline holds
            size += len(chunk)
            if size > _SNAPSHOT_MAX_BYTES:
                raise OSError(f"snapshot body over {_SNAPSHOT_MAX_BYTES} bytes")
            if time.monotonic() - started > _SNAPSHOT_DEADLINE_S:
                raise OSError(f"snapshot took over {_SNAPSHOT_DEADLINE_S:g} s")
            chunks.append(chunk)
    return b"".join(chunks)
