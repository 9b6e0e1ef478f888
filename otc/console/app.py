"""The console's HTTP application: the page, the JSON API and the push stream, and its server.

Every ``/api`` route needs the operator token: ``Authorization: Bearer <token>`` (the push
stream, which a browser's ``EventSource`` opens without headers, also takes it as
``?access_token=``). Without it: ``401`` and nothing happens. Tokens are compared with
:func:`hmac.compare_digest`. The page itself (``/``, ``/static/...``) holds no data and is
served to anyone; it asks for the token.

Routes (JSON encoded with msgspec; every price, size and bps is decimal text):

=======================  ====================================================================
``GET /api/overview``    :class:`~otc.console.views.Overview`: controls, venues, client limits,
                         inventory, P&L, markouts
``GET /api/depth/S``     :class:`~otc.console.views.Depth` of symbol ``S`` (``?levels=N``)
``GET /api/ladder/S``    the indicative ladder of ``S`` (:class:`otc.protocol.Ladder`)
``GET /api/blotter``     :class:`~otc.console.views.BlotterRow` list, oldest first;
                         ``?client=&symbol=&kind=&after=&limit=``
``GET /api/quotes/Q``    :class:`~otc.console.views.QuoteExplanation` of quote ``Q``
``POST /api/control``    an operator command (the bus's, plus ``operator``); returns the
                         :class:`otc.protocol.ControlResult` (``400`` when refused)
``GET /api/stream``      server-sent events: ``hello`` once, ``state`` (overview, depth and
                         ladder of ``?symbol=``) every ``push_interval_ms``, ``activity``
                         (new blotter rows) as they happen
=======================  ====================================================================

Commands go through the engine's one control path (:meth:`otc.app.Engine.apply_control`: the
same :class:`~otc.quoting.QuoteEngine` methods as ``otc/v1/control/{operator}``), are
journaled with the operator, and their result is also published on
``otc/v1/control/{operator}/result``.

:class:`ConsoleServer` runs the app with uvicorn inside the engine's task group. uvicorn's own
signal handling is switched off: :func:`otc.cli.run_async` owns SIGINT and SIGTERM and cancels
the engine, which shuts the server down (push streams end, connections close).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Literal

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

from otc.clock import Clock
from otc.config import CONSOLE_TOKEN, CONSOLE_TOKEN_RULE, Config
from otc.console import views
from otc.console.activity import Activity
from otc.console.views import Blotter, BrokerLink, Depth, FeedHealthLike, Overview
from otc.errors import ConfigError, OtcError
from otc.market import Market
from otc.protocol import Control, ControlResult, Ladder, repeated_member
from otc.quoting import QuoteEngine

__all__ = ["Console", "ConsoleServer", "ControlRequest", "listen", "resolve_token", "url_of"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_ENV = "OTC_CONSOLE_TOKEN"  # noqa: S105 - a variable name, not a secret
MAX_BODY_BYTES = 4096
#: Operator names are journaled and are MQTT topic levels: as client ids.
OPERATOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: A count or sequence number in a query: ASCII digits only (``str.isdigit`` also takes
#: superscripts, which ``int`` refuses, and other scripts' digits), and few: ``int`` refuses
#: texts of over 4300 digits.
COUNT = re.compile(r"[0-9]{1,18}")
_NS_PER_MS = 1_000_000

ControlFn = Callable[[str, Control], Awaitable[ControlResult]]


def resolve_token(
    config: Config, environ: Mapping[str, str] = os.environ
) -> tuple[str, Literal["environment", "config", "generated"]]:
    """The console token and where it came from: ``OTC_CONSOLE_TOKEN``, else ``[console] token``,
    else a new random one (to be printed).

    Raises:
        ConfigError: ``OTC_CONSOLE_TOKEN`` is set but not a valid token.
    """
    value = environ.get(TOKEN_ENV)
    if value is not None:
        if not CONSOLE_TOKEN.fullmatch(value):
            raise ConfigError(TOKEN_ENV, "$", CONSOLE_TOKEN_RULE)
        return value, "environment"
    if config.console.token is not None:
        return config.console.token, "config"
    return secrets.token_urlsafe(24), "generated"


class ControlRequest(Control, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/control``: the bus's control command (:class:`otc.protocol.Control`) and the
    operator who gives it (journaled with it)."""

    operator: str


class StreamState(msgspec.Struct, frozen=True, kw_only=True):
    """The ``state`` event of the push stream."""

    overview: Overview
    depth: Depth
    ladder: Ladder | None


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    """The ``hello`` event: what the page needs to lay itself out."""

    symbol: str
    symbols: list[str]
    clients: list[str]
    tiers: list[str]
    push_interval_ms: int


class ApiError(msgspec.Struct, frozen=True):
    error: str


_encoder = msgspec.json.Encoder()
_control_decoder = msgspec.json.Decoder(ControlRequest)


def _json(obj: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        _encoder.encode(obj), status_code=status, media_type="application/json", headers=headers
    )


def _error(status: int, message: str) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="otc"'} if status == 401 else None
    if status == 413:  # the rest of the body is not read: the connection cannot serve another
        headers = {"Connection": "close"}
    return _json(ApiError(message), status, headers)


def _sse(event: str, data: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


class _PageFiles(StaticFiles):
    """The page's script, style and vendored chart, revalidated on every load (``no-cache``:
    a ``304`` while unchanged), so that a browser never runs an upgraded engine's page with the
    previous script (without it, browsers cache by heuristic, for days)."""

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


class Console:
    """The console of one running engine.

    Args:
        config: the engine's configuration (``[console]`` and what the views show).
        token: the operator token every API request must present.
        market: the books (read only).
        quotes: the quote engine (read only; commands go through ``control``).
        activity: the journal's events as they happen.
        clock: the engine's clock.
        control: the engine's control path: ``(operator, command) -> result``, journaled.
        feeds: health reports of the live feed connections (none for the synthetic market).
        broker: the engine's broker connection now (``None``: not shown).
    """

    def __init__(
        self,
        config: Config,
        *,
        token: str,
        market: Market,
        quotes: QuoteEngine,
        activity: Activity,
        clock: Clock,
        control: ControlFn,
        feeds: Callable[[], Sequence[FeedHealthLike]] = list,
        broker: Callable[[], BrokerLink | None] = lambda: None,
    ) -> None:
        self.config = config
        self._token = token.encode()
        self.market = market
        self.quotes = quotes
        self.activity = activity
        self.clock = clock
        self._control = control
        self._feeds = feeds
        self._broker = broker
        self.blotter = Blotter(activity, config.console.blotter_size)
        self.push_interval_s = config.console.push_interval_ms / 1e3
        #: symbol -> (push tick, its ``state`` event): streams push on the same ticks of the
        #: loop's clock, and the first of a tick computes what every stream of that symbol sends.
        self._states: dict[str, tuple[int, bytes]] = {}
        #: Set when the server shuts down: push streams end.
        self.closing = asyncio.Event()
        api = [
            Route("/api/overview", self._overview),
            Route("/api/depth/{symbol}", self._depth),
            Route("/api/ladder/{symbol}", self._ladder),
            Route("/api/blotter", self._blotter),
            Route("/api/quotes/{quote_id}", self._explanation),
            Route("/api/control", self._command, methods=["POST"]),
            Route("/api/stream", self._stream),
        ]
        self.app = Starlette(
            routes=[
                Route("/", self._index),
                *api,
                Mount("/static", _PageFiles(directory=STATIC), name="static"),
            ],
            exception_handlers={HTTPException: self._http_error},
        )

    # -- state ---------------------------------------------------------------------------------

    def _mid(self, symbol: str) -> Decimal | None:
        book = self.market.books.get(symbol)
        return None if book is None else views.mid(book, self.clock.now_ns())

    def overview(self) -> Overview:
        now = self.clock.now_ns()
        health = views.venue_health(self.market.books, self._feeds(), now)
        return views.overview(
            self.config, self.quotes, self.activity, health, self._mid, now, self._broker()
        )

    def depth(self, symbol: str, levels: int = 50) -> Depth:
        return views.depth(self.market.books[symbol], self.clock.now_ns(), levels=levels)

    async def sample_markouts(self) -> None:
        """Record the mid at each markout horizon of recent fills, every 100 ms, until cancelled."""
        while True:
            # Horizons are time passed (monotonic), as the fills were booked on: a step of the
            # wall clock neither brings every horizon at once nor holds them back.
            self.activity.markouts.sample(self.clock.monotonic_ns(), self._mid)
            await asyncio.sleep(0.1)

    # -- HTTP ----------------------------------------------------------------------------------

    def _authorized(self, request: Request, *, query: bool = False) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            given = request.query_params.get("access_token", "") if query else ""
        return hmac.compare_digest(given.strip().encode(), self._token)

    def _symbol(self, request: Request, name: str | None) -> str | Response:
        if name is None:
            return next(iter(self.market.books), "")
        if name not in self.market.books:
            return _error(404, f"symbol {name!r} is not configured")
        return name

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (no route takes the path, or not the method): under
        ``/api``, ``401`` without the token, else a JSON error naming the path; plain text
        elsewhere."""
        assert isinstance(exc, HTTPException)
        path = request.url.path
        if not path.startswith("/api/"):
            return PlainTextResponse(exc.detail, exc.status_code, headers=exc.headers)
        if not self._authorized(request, query=path == "/api/stream"):
            return _error(401, "missing or invalid operator token")
        if exc.status_code == 405:
            allowed = sorted((exc.headers or {}).get("Allow", "").replace(",", " ").split())
            message = f"{request.method} is not allowed on {path}: {' or '.join(allowed)} only"
        elif exc.status_code == 404:
            message = f"no API route {request.method} {path}"
        else:
            message = exc.detail
        return _json(ApiError(message), exc.status_code, exc.headers)

    async def _index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def _overview(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "missing or invalid operator token")
        return _json(self.overview())

    async def _depth(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "missing or invalid operator token")
        symbol = self._symbol(request, request.path_params["symbol"])
        if isinstance(symbol, Response):
            return symbol
        text = request.query_params.get("levels", "50")
        if not COUNT.fullmatch(text) or not 1 <= int(text) <= 1000:
            return _error(400, f"levels must be an integer from 1 to 1000, got {text!r}")
        return _json(self.depth(symbol, int(text)))

    async def _ladder(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "missing or invalid operator token")
        symbol = self._symbol(request, request.path_params["symbol"])
        if isinstance(symbol, Response):
            return symbol
        ladder = views.ladder(self.quotes, symbol)
        if ladder is None:
            return _error(404, f"symbol {symbol} has no ladder bands")
        return _json(ladder)

    async def _blotter(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "missing or invalid operator token")
        params = request.query_params
        numbers = {}
        for key, default in (("after", "0"), ("limit", "200")):
            text = params.get(key, default)
            if not COUNT.fullmatch(text):
                return _error(
                    400, f"{key} must be a non-negative integer of at most 18 digits, got {text!r}"
                )
            numbers[key] = int(text)
        kinds = [kind for kind in params.getlist("kind") if kind]  # empty: no filter, as client=
        known = {"rfq", "quote", "reject", "accept", "fill", "accept_reject", "control"}
        unknown = sorted(set(kinds) - known)
        if unknown:
            return _error(400, f"unknown kind {unknown[0]!r}; expected one of {sorted(known)}")
        rows = self.blotter.rows(
            after=numbers["after"],
            client=params.get("client") or None,
            symbol=params.get("symbol") or None,
            kinds=kinds,
            limit=numbers["limit"] or None,
        )
        return _json(rows)

    async def _explanation(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "missing or invalid operator token")
        quote_id = request.path_params["quote_id"]
        found = self.blotter.explanation(quote_id)
        if found is None:
            return _error(404, f"no recent quote {quote_id!r}")
        return _json(found)

    async def _command(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "missing or invalid operator token")
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _error(413, f"body over {MAX_BODY_BYTES} bytes")  # refused before it is sent
        body = b""
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return _error(413, f"body over {MAX_BODY_BYTES} bytes")
        except ClientDisconnect:  # gone before the whole command came: nothing to apply
            return _error(400, "the client went away before the end of the body")
        try:
            req = _control_decoder.decode(body)
        except msgspec.ValidationError as exc:
            return _error(400, f"invalid command: {exc}")
        except msgspec.DecodeError as exc:
            return _error(400, f"invalid command: not valid JSON: {exc}")
        repeated = repeated_member(body)
        if repeated is not None:
            return _error(400, f"invalid command: member {repeated!r} is given twice")
        if not OPERATOR.fullmatch(req.operator):
            return _error(
                400, "invalid command: operator must be 1-64 letters, digits, '_', '.' or '-'"
            )
        result = await self._control(req.operator, req)  # a ControlRequest is a Control
        return _json(result, 200 if result.ok else 400)

    async def _stream(self, request: Request) -> Response:
        if not self._authorized(request, query=True):
            return _error(401, "missing or invalid operator token")
        symbol = self._symbol(request, request.query_params.get("symbol"))
        if isinstance(symbol, Response):
            return symbol
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":  # the headers alone: the stream itself never ends
            return Response(media_type="text/event-stream", headers=headers)
        return StreamingResponse(
            self._events(symbol), media_type="text/event-stream", headers=headers
        )

    async def _events(self, symbol: str) -> AsyncIterator[bytes]:
        config = self.config
        yield b"retry: 1000\n\n"
        yield _sse(
            "hello",
            Hello(
                symbol=symbol,
                symbols=list(self.market.books),
                clients=[c.id for c in config.clients],
                tiers=sorted(config.tiers),
                push_interval_ms=config.console.push_interval_ms,
            ),
        )
        seen = self.activity.last_seq
        backlog = self.blotter.rows(limit=500)
        if backlog:
            yield _sse("activity", backlog)
        loop = asyncio.get_running_loop()
        interval = self.push_interval_s
        pushed = -1
        while not self.closing.is_set():
            tick = int(loop.time() // interval)
            if tick != pushed:
                yield self._state(symbol, tick)
                pushed = tick
            await self.activity.wait(seen, max(0.0, (tick + 1) * interval - loop.time()))
            rows = self.blotter.rows(after=seen)
            if rows:
                seen = rows[-1].seq
                yield _sse("activity", rows)

    def _state(self, symbol: str, tick: int) -> bytes:
        """The ``state`` event of ``symbol`` for push tick ``tick``: computed once per tick
        however many streams show the symbol (each computed its own: about 1.6 ms per stream
        every 500 ms with six venues of 1,000 levels, on the engine's loop)."""
        cached = self._states.get(symbol)
        if cached is not None and cached[0] == tick:
            return cached[1]
        state = StreamState(
            overview=self.overview(),
            depth=self.depth(symbol),
            ladder=views.ladder(self.quotes, symbol),
        )
        event = _sse("state", state)
        self._states[symbol] = (tick, event)
        return event


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # otc.cli.run_async owns SIGINT and SIGTERM: they cancel the engine


class _CutShort(logging.Filter):
    """One line for a request that uvicorn's graceful shutdown cancelled (a client still
    sending its body, a command waiting for the journal): uvicorn logs each as "Exception in
    ASGI application" with the whole traceback of the cancellation."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, asyncio.CancelledError):
            record.msg, record.args = "console: a request was cancelled: %s", (error,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: a free one), for :class:`ConsoleServer`.

    Bound before the engine starts, so that a busy port fails at start-up with a clear error.

    Raises:
        OtcError: the address cannot be bound.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OtcError(f"console: cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OtcError(
            f"console: cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(choose another with [console] port or --console-port)"
        ) from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port/`` of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class ConsoleServer:
    """Serves a :class:`Console` over HTTP on a socket from :func:`listen` (and closes it)."""

    def __init__(self, console: Console, sock: socket.socket) -> None:
        self.console = console
        self._sock = sock
        self.url = url_of(sock)

    async def serve(self) -> None:
        """Serve until cancelled; then stop accepting, end the push streams and close."""
        config = uvicorn.Config(
            self.console.app,
            lifespan="off",
            ws="none",
            http="h11",
            loop="none",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=3,
        )
        server = _Uvicorn(config)
        cut_short = _CutShort()
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addFilter(cut_short)
        try:
            await self._serve(server)
        finally:
            uvicorn_log.removeFilter(cut_short)

    async def _serve(self, server: uvicorn.Server) -> None:
        async with asyncio.TaskGroup() as tg:
            http = tg.create_task(server.serve(sockets=[self._sock]), name="console-http")
            sampler = tg.create_task(self.console.sample_markouts(), name="console-markouts")
            try:
                await asyncio.wait({http})
                log.error("console server stopped")
            finally:
                self.console.closing.set()
                server.should_exit = True
                sampler.cancel()
                await asyncio.wait({http})
