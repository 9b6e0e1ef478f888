"""A loopback exchange: replays a recorded session in the venue's own protocol, with faults.

Tests run the real websocket client (:class:`~feeds.connection.FeedConnection`) against it;
``otc feeds serve-replay`` runs it by hand. It listens on 127.0.0.1 and:

* answers every websocket connection: waits for the client's first message (its subscription),
  then streams the recording's websocket messages in order from a cursor shared by all
  connections (the market goes on while a client reconnects);
* answers a resubscription, and every connection after the first, with a fresh snapshot of each
  symbol, in the venue's format, built by a clean reference adapter that has seen the recording
  up to the cursor; a client that resynced therefore ends with exactly the clean book;
* serves REST depth snapshots (``GET /api/v3/depth?symbol=...``) from the same reference, for
  venues that sync from one;
* injects faults at given message indices: drop, duplicate, swap with the next message,
  corrupt the checksum (carried to the next message that has one), disconnect.

Snapshots are encoded by the adapter's :meth:`~feeds.base.VenueBookFeed.snapshot_message`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from feeds.base import ChecksumMismatch, SequenceGap, VenueBookFeed
from feeds.recorded import RecordedMessage, read_recording
from feeds.registry import adapter_class

__all__ = ["Fault", "LoopbackExchange"]

log = logging.getLogger(__name__)


class Fault(enum.Enum):
    DROP = "drop"
    DUPLICATE = "duplicate"
    SWAP = "swap"
    CORRUPT = "corrupt"
    DISCONNECT = "disconnect"


_CHECKSUM = re.compile(rb'("(?:checksum|c)"\s*:\s*"?)(-?[0-9]+)')


def corrupt_checksum(data: bytes) -> bytes | None:
    """``data`` with its checksum field changed (plus one), or None if it carries none (or 0).

    Covers the venues' spellings: ``"checksum": -123`` (OKX, Bitget, Kraken v2) and
    ``"c": "123"`` (Kraken v1).
    """
    m = _CHECKSUM.search(data)
    if m is None or int(m.group(2)) == 0:
        return None
    wrong = str(int(m.group(2)) + 1).encode()
    return data[: m.start(2)] + wrong + data[m.end(2) :]


class LoopbackExchange:
    """Replays ``recording`` for ``venue`` on 127.0.0.1 with optional ``faults``.

    Args:
        venue: adapter name (``feeds.registry``).
        recording: derived-JSONL recording of that venue.
        faults: websocket message index (0-based, counting only websocket messages) -> fault.
        interval_s: pause between messages (0: as fast as the client reads).
        port: TCP port; 0 picks a free one.
    """

    def __init__(
        self,
        venue: str,
        recording: str | Path,
        *,
        faults: Mapping[int, Fault] | None = None,
        interval_s: float = 0.0,
        port: int = 0,
    ) -> None:
        self.venue = venue
        records = list(read_recording(recording))
        self.messages: list[RecordedMessage] = [r for r in records if not r.conn.startswith("REST")]
        # REST snapshots of the recording, keyed by the websocket message they came before:
        # the reference adapter syncs from them at the same point of the session.
        self._rest: dict[int, list[RecordedMessage]] = {}
        seen = 0
        for record in records:
            if record.conn.startswith("REST"):
                self._rest.setdefault(seen, []).append(record)
            else:
                seen += 1
        self.faults = dict(faults or {})
        self.interval_s = interval_s
        self.port = port
        self.reference: VenueBookFeed = adapter_class(venue)()
        self.cursor = 0
        self.connections = 0
        self.sent = 0
        self.done = asyncio.Event()
        self._server: Server | None = None
        #: Messages sent (or dropped) on each connection: venues that number their messages
        #: per connection get them renumbered (``VenueBookFeed.stamp``).
        self._numbers: dict[ServerConnection, int] = {}
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> LoopbackExchange:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            process_request=self._process_request,
            compression=None,
            max_size=2**24,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def serve_forever(self) -> None:
        async with self:
            await asyncio.Future()

    # -- clean reference -----------------------------------------------------------------------

    def _advance_reference(self, index: int) -> None:
        """Feed clean message ``index`` (and REST snapshots recorded before it) to the reference."""
        record = self.messages[index]
        try:
            for rest in self._rest.pop(index, ()):
                self.reference.on_rest(rest.conn.removeprefix("REST "), rest.data, rest.ts_recv_ns)
            self.reference.on_message(record.data, record.ts_recv_ns)
        except (SequenceGap, ChecksumMismatch) as exc:  # the recording itself is broken
            log.warning("loopback reference: %s", exc)

    def _snapshots(self) -> list[bytes]:
        """Fresh snapshot messages of every synced symbol (none for REST-synced venues)."""
        out = []
        for symbol, in_sync in sorted(self.reference.in_sync.items()):
            if not in_sync:
                continue
            try:
                out.append(self.reference.snapshot_message(symbol))
            except NotImplementedError:  # the venue resyncs from a REST snapshot instead
                return []
        return out

    # -- serving -------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        url = urlparse(request.path)
        symbol = parse_qs(url.query).get("symbol", [""])[0]
        try:
            body = self.reference.rest_snapshot_body(self.reference.our_symbol(symbol))
        except (KeyError, NotImplementedError) as exc:
            return _response(HTTPStatus.NOT_FOUND, str(exc).encode())
        return _response(HTTPStatus.OK, body, "application/json")

    async def _send(self, ws: ServerConnection, payload: bytes, *, times: int = 1) -> None:
        number = self._numbers.get(ws, 0)
        self._numbers[ws] = number + 1
        text = self.reference.stamp(payload, number).decode()
        for _ in range(times):
            await ws.send(text)

    def _skip(self, ws: ServerConnection) -> None:
        """A message lost on the way: the connection's numbering moves on without it."""
        self._numbers[ws] = self._numbers.get(ws, 0) + 1

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        first_connection = self.connections == 1
        try:
            await ws.recv()  # the subscription
            if not first_connection:
                for snap in self._snapshots():
                    await self._send(ws, snap)
            listener = asyncio.create_task(self._listen(ws), name="loopback-listen")
            try:
                await self._stream(ws)
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
        except ConnectionClosed:
            return
        finally:
            self._numbers.pop(ws, None)

    async def _listen(self, ws: ServerConnection) -> None:
        """Answer resubscriptions with fresh snapshots; ignore pings and the rest."""
        async for message in ws:
            text = message if isinstance(message, str) else message.decode()
            if "unsubscribe" in text:
                continue
            if "subscribe" in text:
                async with self._lock:
                    for snap in self._snapshots():
                        await self._send(ws, snap)

    async def _stream(self, ws: ServerConnection) -> None:
        while self.cursor < len(self.messages):
            async with self._lock:
                index = self.cursor
                record = self.messages[index]
                self.cursor += 1
                fault = self.faults.pop(index, None)
                self._advance_reference(index)
                if fault is Fault.DISCONNECT:
                    await ws.close(reason="fault injection")
                    return
                if fault is Fault.DROP:
                    self._skip(ws)
                    continue
                if fault is Fault.SWAP and self.cursor < len(self.messages):
                    following = self.messages[self.cursor]
                    self._advance_reference(self.cursor)
                    self.cursor += 1
                    first, second = self._numbers.get(ws, 0), self._numbers.get(ws, 0) + 1
                    self._numbers[ws] = second + 1
                    await ws.send(self.reference.stamp(following.data, second).decode())
                    await ws.send(self.reference.stamp(record.data, first).decode())
                    self.sent += 2
                    continue
                payload = record.data
                if fault is Fault.CORRUPT:
                    corrupted = corrupt_checksum(record.data)
                    if corrupted is None:  # no checksum here: corrupt the next one that has
                        self.faults.setdefault(index + 1, Fault.CORRUPT)
                    else:
                        payload = corrupted
                times = 2 if fault is Fault.DUPLICATE else 1
                await self._send(ws, payload, times=times)
                self.sent += times
            if self.interval_s:
                await asyncio.sleep(self.interval_s)
            else:
                await asyncio.sleep(0)
        self.done.set()
        await ws.wait_closed()


def _response(status: HTTPStatus, body: bytes, content_type: str = "text/plain") -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)
