"""Running an MQTT broker for the demo and the tests, and securing mosquitto for production.

:func:`start_broker` runs ``mosquitto`` on a loopback port with the low-latency settings when it
is installed, and otherwise amqtt, a broker installed with pip::

    async with start_broker(config_dir=tmp) as broker:     # or `with start_broker(...)`
        bus = Bus(host=broker.host, port=broker.port)

amqtt 0.12.1 pins ``websockets`` 15, which our own ``websockets`` requirement excludes, so it
lives in its own virtualenv, ``.venv-amqtt`` at the repository root (``make .venv-amqtt``;
``make demo`` and ``make test`` build it only when mosquitto is missing), and runs as a child
process (``.venv-amqtt/bin/amqtt -c amqtt.yaml``), as mosquitto does. It speaks MQTT 3.1.1
only (the bus's protocol: aiomqtt's default), has no ``$share``, runs here without passwords
or ACL, never drops a client that went silent (nor publishes its will), and is a few times
slower than mosquitto: fine for the demo, not for production
(:attr:`BrokerProcess.notice` says so). ``OTC_NO_MOSQUITTO=1`` in the environment makes
:func:`find_mosquitto` act as if mosquitto were not installed, to run the demo or the tests on
amqtt where mosquitto is.

:func:`generate_auth` writes the password file and the ACL for the production configuration in
``config/mosquitto/otc.conf``: every client may write only its own ``rfq`` and ``accept``
topics and read only its own ``quotes`` and ``fills`` (plus the status and the ladders); the
engine's user reads every ``rfq``/``accept`` and writes every ``quotes``/``fills``. Run again,
it keeps the passwords of the users already in the password file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal, NamedTuple, Self

from otc.config import CLIENT_ID, RESERVED_IDS
from otc.errors import ConfigError, OtcError
from otc.files import replaced

__all__ = [
    "AMQTT_VENV",
    "AuthFiles",
    "BrokerError",
    "BrokerKind",
    "BrokerProcess",
    "amqtt_config",
    "amqtt_version",
    "find_amqtt",
    "find_mosquitto",
    "generate_auth",
    "hash_password",
    "mosquitto_config",
    "start_broker",
]

log = logging.getLogger("otc.broker")

BrokerKind = Literal["mosquitto", "amqtt"]

#: amqtt's own virtualenv: at the repository root, next to ``.venv`` (``make .venv-amqtt``).
AMQTT_VENV: Final = Path(__file__).resolve().parents[1] / ".venv-amqtt"
#: The amqtt release ``make .venv-amqtt`` installs (the Makefile's ``AMQTT_VERSION``); its
#: configuration format changes between releases.
AMQTT_VERSION: Final = "0.12.1"

#: What to tell the user when amqtt runs instead of mosquitto (:attr:`BrokerProcess.notice`).
AMQTT_NOTICE: Final = (
    "amqtt instead of mosquitto: MQTT 3.1.1 only, slower than mosquitto, no $share, "
    "no passwords or ACL, no will for a client gone silent; fine for the demo and the tests, "
    "not for production"
)

#: QoS 1 messages mosquitto queues per client beyond its in-flight window before it silently
#: drops them (mosquitto's default is 1000, which a burst of RFQs to a busy engine can exceed).
MAX_QUEUED_MESSAGES: Final = 10_000

_START_TIMEOUT_S: Final = 10.0
_STOP_TIMEOUT_S: Final = 5.0

#: What amqtt logs once its listener is bound, and when its start failed (it keeps running).
_AMQTT_LISTENING: Final = "Listener 'default' bind to {bind} "
_AMQTT_FAILED: Final = "Broker startup failed"


class BrokerError(OtcError):
    """A broker could not be started (or the auth files not written); ``detail`` has its log."""

    def __init__(self, problem: str, detail: str = "") -> None:
        self.problem = problem
        self.detail = detail
        super().__init__(problem + (f": {detail.strip()}" if detail.strip() else ""))


def _mosquitto_ignored() -> bool:
    return os.environ.get("OTC_NO_MOSQUITTO", "") not in ("", "0")


def _no_mosquitto() -> str:
    """Why :func:`find_mosquitto` found nothing, for error messages."""
    if _mosquitto_ignored():
        return "mosquitto is ignored (OTC_NO_MOSQUITTO is set)"
    return "mosquitto is not installed"


def find_mosquitto() -> Path | None:
    """The ``mosquitto`` executable: on ``PATH``, or in ``/usr/sbin`` (Debian puts it there).

    ``None`` when it is not installed, or when ``OTC_NO_MOSQUITTO`` is set (not ``0``).
    """
    if _mosquitto_ignored():
        return None
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for candidate in (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_amqtt() -> Path | None:
    """amqtt's command, ``.venv-amqtt/bin/amqtt``; ``None`` when that virtualenv is absent."""
    candidate = AMQTT_VENV / "bin" / "amqtt"
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def amqtt_version() -> str | None:
    """The amqtt release installed in ``.venv-amqtt`` (from its metadata); ``None`` if absent."""
    for info in sorted(AMQTT_VENV.glob("lib/python*/site-packages/amqtt-*.dist-info")):
        return info.name.removeprefix("amqtt-").removesuffix(".dist-info")
    return None


def mosquitto_config(
    *,
    port: int,
    host: str = "127.0.0.1",
    log_file: Path | None = None,
    password_file: Path | None = None,
    acl_file: Path | None = None,
) -> str:
    """A mosquitto configuration for a loopback broker (the demo and the tests).

    Anonymous when no ``password_file`` is given; with one (and an ``acl_file``), only known
    users, each connection's client id replaced by its user name, as in production.
    """
    lines = [
        "# Generated by otc.broker: a broker for the demo and the tests.",
        f"listener {port} {host}",
    ]
    if password_file is None:
        lines += [
            "# Loopback only, no passwords: production uses config/mosquitto/otc.conf.",
            "allow_anonymous true",
        ]
    else:
        lines += [
            "allow_anonymous false",
            f"password_file {password_file}",
            "# Client id = user name: no user can close another's connection by taking its id.",
            "use_username_as_clientid true",
        ]
    if acl_file is not None:
        lines.append(f"acl_file {acl_file}")
    lines += [
        "# Nothing kept on disk: the broker lives as long as the demo or the test session.",
        "persistence false",
        "# Send each packet at once (no Nagle): a QoS 1 round trip drops from 40-90 ms to < 1 ms.",
        "set_tcp_nodelay true",
        "# QoS 1 messages queued per client past the in-flight window; beyond this mosquitto",
        "# drops them silently (default 1000), which a burst of RFQs can exceed.",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines += [
            "# Started as root, mosquitto would switch to user 'mosquitto', who cannot",
            "# read this (private) directory: stay.",
            "user root",
        ]
    if log_file is not None:
        lines += [
            f"log_dest file {log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
    return "\n".join(lines) + "\n"


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def amqtt_config(*, port: int, host: str = "127.0.0.1") -> str:
    """An amqtt 0.12 configuration (YAML) for a loopback broker (the demo and the tests).

    One TCP listener, anonymous clients, and no other plugin: no ``$SYS`` topics, no packet
    logging. asyncio sets ``TCP_NODELAY`` on every TCP connection, so amqtt needs no setting.
    """
    return (
        "# Generated by otc.broker: amqtt for the demo and the tests, when mosquitto is missing.\n"
        "listeners:\n"
        "  default:\n"
        "    type: tcp\n"
        f"    bind: '{_bind_address(host, port)}'\n"
        "plugins:\n"
        "  # Loopback only, no passwords: production uses mosquitto (config/mosquitto/otc.conf).\n"
        "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
    )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as both brokers bind
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class BrokerProcess:
    """A broker in a child process: ``mosquitto``, or ``amqtt`` from ``.venv-amqtt``.

    Not started on construction (see :func:`start_broker`): entering it, with ``with`` or
    ``async with``, starts it and waits until it accepts connections; leaving it stops the
    process with SIGTERM, waits for it and closes every file. (amqtt has no SIGTERM handler and
    exits at once, which loses nothing: it keeps nothing on disk, and its SIGINT shutdown only
    closes the connections too, from a ``KeyboardInterrupt`` raised wherever its loop is, which
    now and then fails half-way.) :meth:`start` and :meth:`stop` do the same by hand (they block: in
    async code use ``async with``). The broker runs in a session of its own, so a Ctrl-C meant
    for the demo does not stop it under the engine while the engine shuts down (and publishes
    its status ``down``).

    Raises:
        BrokerError: on construction, when the broker is not there (the message says how to
            get it), or amqtt is given passwords, an ACL or a config file.
    """

    def __init__(
        self,
        *,
        kind: BrokerKind,
        config_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        config_file: Path | None = None,
        executable: Path | None = None,
    ) -> None:
        if kind == "amqtt" and (password_file or acl_file or config_file):
            raise BrokerError(
                "amqtt runs without passwords, ACL or config file: those need mosquitto"
            )
        if executable is None:
            executable = find_mosquitto() if kind == "mosquitto" else find_amqtt()
        if executable is None:
            if kind == "mosquitto":
                raise BrokerError(_no_mosquitto())
            raise BrokerError(f"{AMQTT_VENV} is absent: run `make .venv-amqtt`")
        if config_file is not None and port == 0:
            raise BrokerError("with a config file, give the port it listens on")
        self.kind: BrokerKind = kind
        self.host = host
        self.port = port
        self._requested_port = port
        self._config_dir = Path(config_dir)
        self._password_file = password_file
        self._acl_file = acl_file
        self._config_file = config_file
        self._executable = executable
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        #: Set when ``async with`` is cancelled while :meth:`start` runs in its thread.
        self._abort = threading.Event()

    @property
    def url(self) -> str:
        """``mqtt://host:port``."""
        return f"mqtt://{_bind_address(self.host, self.port)}"

    @property
    def notice(self) -> str:
        """What to tell the user about this broker: empty for mosquitto."""
        return AMQTT_NOTICE if self.kind == "amqtt" else ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_file(self) -> Path:
        """Where the broker's output (and mosquitto's log) goes."""
        return self._config_dir / f"{self.kind}.log"

    def start(self) -> None:
        """Start the broker and wait until it accepts connections.

        Raises:
            BrokerError: it exited, failed or did not listen within 10 s; the message has its
                log.
        """
        if self._process is not None:
            raise BrokerError("the broker is already running")
        self._config_dir.mkdir(parents=True, exist_ok=True)
        if self._requested_port and not _bindable(self.host, self._requested_port):
            raise BrokerError(f"{self.kind} did not start: {self.host}:{self.port} is in use")
        attempts = 3 if self._requested_port == 0 else 1  # a free port may be taken meanwhile
        for attempt in range(attempts):
            try:
                self._start_once()
            except BrokerError:
                if attempt == attempts - 1 or self._abort.is_set():
                    raise
            else:
                break
        notice = f" ({self.notice})" if self.notice else ""
        log.info("%s listening on %s:%d%s", self.kind, self.host, self.port, notice)

    def _start_once(self) -> None:
        self.port = self._requested_port or _free_port(self.host)
        config = self._config_file
        if config is None and self.kind == "mosquitto":
            config = self._config_dir / "mosquitto.conf"
            config.write_text(
                mosquitto_config(
                    port=self.port,
                    host=self.host,
                    log_file=self._config_dir / "mosquitto.log",
                    password_file=self._password_file,
                    acl_file=self._acl_file,
                )
            )
        elif config is None:
            config = self._config_dir / "amqtt.yaml"
            config.write_text(amqtt_config(port=self.port, host=self.host))
        self._output = open(self.log_file, "wb")  # noqa: SIM115 (closed in stop())
        self._process = subprocess.Popen(  # noqa: S603 (our own executable and config)
            [str(self._executable), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C is for the demo: we stop the broker after it
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._listening():
            if self._abort.is_set():
                self.stop()
                raise BrokerError(f"{self.kind} start abandoned: cancelled")
            if self._process.poll() is not None or time.monotonic() > deadline:
                detail = self._logs()
                self.stop()
                raise BrokerError(f"{self.kind} did not start on {self.host}:{self.port}", detail)
            time.sleep(0.005)

    def _listening(self) -> bool:
        """Whether the broker is up; amqtt says so in its log, and keeps running if it failed.

        Raises:
            BrokerError: amqtt logged that its start failed (the port was taken meanwhile).
        """
        if self.kind == "amqtt":
            with contextlib.suppress(OSError):
                text = self.log_file.read_text(errors="replace")
                if _AMQTT_FAILED in text:
                    detail = self._logs()
                    self.stop()
                    raise BrokerError(f"amqtt did not start on {self.host}:{self.port}", detail)
                bind = _bind_address(self.host, self.port)
                if _AMQTT_LISTENING.format(bind=bind) not in text:
                    return False
        return _accepts(self.host, self.port)

    def _logs(self) -> str:
        text = ""
        for path in (self.log_file, self._config_dir / "mosquitto.log"):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")[-2000:]
        return text

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s), reap it, close its log file."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._output is not None:
            self._output.close()
            self._output = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        self._abort.clear()
        starting = asyncio.ensure_future(asyncio.to_thread(self.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # Cancelled (SIGINT, SIGTERM) while the thread starts the broker: the thread would
            # go on and start it, and no `__aexit__` follows a failed `__aenter__`: a broker
            # nobody stops, holding its port. The thread gives up at its next look (stopping
            # what it started); a start that was done by then is stopped here.
            self._abort.set()
            await _unstoppable(self._stop_after(starting))
            raise
        return self

    async def _stop_after(self, starting: asyncio.Future[None]) -> None:
        await asyncio.wait({starting})
        if not starting.cancelled():
            starting.exception()  # a start that failed or gave up has stopped its process
        await asyncio.to_thread(self.stop)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Not cut short by a second Ctrl-C: the broker would outlive us (in its own session).
        await _unstoppable(asyncio.to_thread(self.stop))


async def _unstoppable(step: Coroutine[Any, Any, None]) -> None:
    """Run ``step`` to its end even when the caller is cancelled meanwhile (the cancellation
    is raised once it is done). For stopping a broker: bounded by :meth:`BrokerProcess.stop`'s
    SIGKILL after ``_STOP_TIMEOUT_S``."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


def start_broker(
    *,
    config_dir: Path,
    port: int = 0,
    host: str = "127.0.0.1",
    kind: BrokerKind | Literal["auto"] = "auto",
    password_file: Path | None = None,
    acl_file: Path | None = None,
    config_file: Path | None = None,
) -> BrokerProcess:
    """A broker to run with ``with`` or ``async with``: mosquitto when installed, else amqtt.

    Args:
        config_dir: Where the generated configuration and the broker's log go.
        port: The port to listen on; ``0`` picks a free one (read it from ``.port``).
        host: The address to listen on (loopback by default).
        kind: ``"auto"`` (mosquitto when :func:`find_mosquitto` finds it, else amqtt from
            ``.venv-amqtt``), ``"mosquitto"`` or ``"amqtt"``.
        password_file: mosquitto only: require these users (see :func:`generate_auth`).
        acl_file: mosquitto only: apply this ACL.
        config_file: mosquitto only: run this configuration as it is (it must listen on
            ``host:port``) instead of a generated one.

    Raises:
        BrokerError: neither broker is there (the message says how to get one), or the one
            asked for is not, or the options need mosquitto and it is not there.
    """
    if kind == "auto":
        needs_mosquitto = password_file or acl_file or config_file
        if find_mosquitto() is not None:
            kind = "mosquitto"
        elif needs_mosquitto:
            raise BrokerError(f"{_no_mosquitto()}: passwords, an ACL or a config file need it")
        elif find_amqtt() is not None:
            kind = "amqtt"
        else:
            raise BrokerError(
                f"{_no_mosquitto()} and {AMQTT_VENV} is absent: run `make .venv-amqtt` "
                "(or install mosquitto)"
            )
    return BrokerProcess(
        kind=kind,
        config_dir=config_dir,
        host=host,
        port=port,
        password_file=password_file,
        acl_file=acl_file,
        config_file=config_file,
    )


# --- production auth: password file and ACL ---------------------------------------------------

#: PBKDF2 rounds for the password file. mosquitto 2.0's own tool uses 101; the passwords we
#: generate are random (192 bits), so the count only matters for passwords given by hand.
PBKDF2_ITERATIONS: Final = 1000

_ACL_HEADER: Final = """\
# Generated by `otc broker auth`: who may read and write which otc/v1 topics.
# mosquitto puts the connecting user's name in place of %u; a client's id is its user name.
# A publication the ACL denies is dropped, without telling the sender under MQTT 3.1.1 (under
# MQTT 5 its PUBACK says 0x87 Not authorized); a subscription to a topic it denies delivers
# nothing.

# Every user: its own requests out, its own answers in, and the public topics (mosquitto
# warns at start-up that these two patterns have no %u: they are every user's alike).
pattern write otc/v1/%u/rfq
pattern write otc/v1/%u/accept
pattern read otc/v1/%u/quotes
pattern read otc/v1/%u/fills
pattern read otc/v1/status
pattern read otc/v1/ladder/#
"""

_ENGINE_ACL: Final = """
# The engine: reads every client's requests, answers on every client's topics, publishes the
# status (also its last will) and the ladders.
user {engine}
topic read otc/v1/+/rfq
topic read otc/v1/+/accept
topic write otc/v1/+/quotes
topic write otc/v1/+/fills
topic write otc/v1/status
topic write otc/v1/ladder/#
topic read otc/v1/control/+
topic write otc/v1/control/+/result
"""

_OPERATOR_ACL: Final = """
# Operator {operator}: its own commands out, their results in.
user {operator}
topic write otc/v1/control/{operator}
topic read otc/v1/control/{operator}/result
"""


class AuthFiles(NamedTuple):
    """What :func:`generate_auth` wrote, and the passwords to hand out."""

    password_file: Path
    acl_file: Path
    #: The users given a password this time (new users, rotated ones, those of ``passwords``),
    #: with it: hand each to its user; nothing else keeps them in plaintext.
    passwords: dict[str, str]
    #: The users of the password file already there who keep their password.
    kept: tuple[str, ...] = ()
    #: The users of the password file already there who are no longer configured: dropped.
    removed: tuple[str, ...] = ()


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """mosquitto 2's password hash: ``$7$iterations$salt$hash``, PBKDF2-HMAC-SHA512.

    The format ``mosquitto_passwd`` writes: a 12-byte salt and a 64-byte hash, both base64.
    """
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _check_users(
    clients: Iterable[str], engine_user: str, operators: Iterable[str] = (), source: str = "clients"
) -> list[str]:
    clients = list(clients)
    operators = list(operators)
    users = [*clients, engine_user, *operators]
    seen: set[str] = set()
    for i, user in enumerate(users):
        if i < len(clients):
            path = f"$.clients[{i}].id"
        elif i == len(clients):
            path = "$.broker.username"
        else:
            path = f"$.broker.operators[{i - len(clients) - 1}]"
        if not CLIENT_ID.fullmatch(user):
            raise ConfigError(
                source,
                path,
                f"{user!r} is not a usable broker user: 1-64 letters, digits, '_', '.', '-'",
            )
        if user in RESERVED_IDS:  # otc/v1/%u/... would be another topic tree's
            raise ConfigError(source, path, f"{user!r} is reserved: not a usable broker user")
        if user in seen:
            raise ConfigError(source, path, f"{user!r} given twice")
        seen.add(user)
    return users


def generate_auth(
    clients: Iterable[str],
    engine_user: str,
    out_dir: Path,
    *,
    operators: Iterable[str] = (),
    passwords: Mapping[str, str] | None = None,
    rotate: Iterable[str] = (),
    rotate_all: bool = False,
    source: str = "clients",
) -> AuthFiles:
    """Write mosquitto's password file and ACL for ``clients``, the engine and ``operators``.

    Writes ``out_dir/passwd`` (mode 0600) and ``out_dir/acl``, each replaced atomically (a
    file written in full and synced, then renamed over the old one). When ``out_dir/passwd``
    is there already, its users keep their passwords (their hashed lines are copied), users
    new to it get a random one, and users no longer given are dropped: adding a client does
    not lock every other user out. The replaced files keep their owner and group (so a
    ``chown mosquitto`` stays done) and their group read bit; never any access for others.

    Args:
        clients: Client ids; each is also the client's broker user name.
        engine_user: The engine's broker user name.
        out_dir: Where to write (created when missing).
        operators: Broker user names of the operators (``otc/v1/control/{operator}``).
        passwords: Passwords to set, by user name (instead of the kept or a random one).
        rotate: Users to give a new random password.
        rotate_all: Give every user a new random password (the old file's hashes are not
            kept, and a line of it this function does not write is no error).
        source: The file the names come from, named by the errors (the config file).

    Returns:
        The two paths, the passwords set (to hand to their users), the users kept and removed.

    Raises:
        ConfigError: a user name is not a single topic level of ``[A-Za-z0-9_.-]`` (1-64,
            starting with a letter or digit), is reserved (``control``, ``ladder``,
            ``status``: topics of their own under ``otc/v1``), or appears twice.
        BrokerError: a user to rotate is not one of them, or the password file already there
            has a line this function does not write (nothing is written then).
    """
    operators = list(operators)
    users = _check_users(clients, engine_user, operators, source)
    rotate = set(rotate)
    unknown = sorted(rotate - set(users))
    if unknown:
        raise BrokerError(f"cannot rotate {unknown[0]!r}: not a user of {source}")
    out_dir = Path(out_dir)
    password_file = out_dir / "passwd"
    acl_file = out_dir / "acl"
    known = _read_password_file(password_file, strict=not rotate_all)
    existing = {} if rotate_all else known
    given = dict(passwords or {})
    chosen: dict[str, str] = {}
    lines: list[str] = []
    for user in users:
        if given.get(user):
            chosen[user] = given[user]
        elif user in existing and user not in rotate:
            lines.append(f"{user}:{existing[user]}\n")
            continue
        else:
            chosen[user] = secrets.token_urlsafe(24)  # 192 random bits
        lines.append(f"{user}:{hash_password(chosen[user])}\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    acl = _ACL_HEADER + _ENGINE_ACL.format(engine=engine_user)
    acl += "".join(_OPERATOR_ACL.format(operator=operator) for operator in operators)
    # The ACL first: a run that fails after writing the password file would have set the
    # hashes of passwords it never returns (and the next run keeps hashes).
    _write(acl_file, acl, mode=0o644)
    _write(password_file, "".join(lines), mode=0o600)
    kept = tuple(user for user in users if user not in chosen)
    removed = tuple(user for user in known if user not in users)
    return AuthFiles(password_file, acl_file, chosen, kept, removed)


#: A line of a mosquitto password file this module (or mosquitto_passwd) writes: a user name
#: as :func:`_check_users` takes it, and a SHA512 (``$6$``) or PBKDF2 (``$7$``) hash.
_PASSWORD_LINE = re.compile(rf"(?P<user>{CLIENT_ID.pattern}):(?P<hash>\$[67]\$[A-Za-z0-9+/=$]+)")


def _read_password_file(path: Path, *, strict: bool = True) -> dict[str, str]:
    """The hashed password of each user of the password file ``path``; empty when absent.
    Not ``strict``: what can be read of it (the users to report removed), never an error.

    Raises:
        BrokerError: a line that is not ``user:$7$...`` (or ``$6$``), or a user given twice.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        if not strict:
            return {}
        raise BrokerError(f"cannot read {path}: {exc}") from None
    hashes: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _PASSWORD_LINE.fullmatch(line)
        if not strict:
            if match is not None:
                hashes.setdefault(match["user"], match["hash"])
            continue
        if match is None or match["user"] in hashes:
            problem = "a user given twice" if match else "not a 'user:$7$...' line"
            raise BrokerError(
                f"{path}:{number}: {problem}; fix or remove the file, or give every user a new "
                "password (--rotate-all)"
            )
        hashes[match["user"]] = match["hash"]
    return hashes


def _write(path: Path, text: str, *, mode: int) -> None:
    """Replace ``path`` atomically by ``text`` (:func:`otc.files.replaced`). Created with
    ``mode``; a file replaced keeps its owner and group (when we may set them) and lends its
    group read bit."""
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    if old is not None:
        mode |= old.st_mode & stat.S_IRGRP
    with replaced(path, mode=mode, owner=old) as file:
        file.write(text)
