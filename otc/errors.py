"""The one error tree of ``otc``.

Every error the engine raises on purpose derives from :class:`OtcError`, so a caller can catch
the whole family at a boundary (the CLI, a bus handler) and nothing else::

    OtcError
    ├── ConfigError          a config file or book file is malformed; names the file and the path
    ├── ValueParseError      a price/size/fee text is not an exact, finite, allowed number
    │   └── MalformedSnapshot    a venue snapshot does not parse or apply; resynced (feeds.base)
    ├── FeedError            a venue feed lost integrity (sequence gap, checksum, staleness)
    │   ├── SequenceGap          an update does not follow the last one (feeds.base)
    │   │   └── LostUpdate       an update that does not parse, where nothing else shows it
    │   ├── ChecksumMismatch     the book disagrees with the venue's checksum (feeds.base)
    │   └── RequestRefused       the venue answered a request of ours with an error (feeds.base)
    ├── QuoteError           a request cannot be priced
    │   ├── InsufficientDepth    visible depth cannot cover the size (and no impact model)
    │   └── MarketUnavailable    no venue is fit to price from (all stale, crossed or out of sync)
    ├── ProtocolError        a wire message is invalid; carries the reject code (otc.protocol)
    ├── JournalError         an event could not be recorded, or a journal read (otc.journal)
    │   └── JournalClosed        the journal is closed: the event was not recorded
    ├── BusError             the broker refused or dropped the connection (otc.bus)
    │   └── PublicationRefused   the broker dropped a publication, saying why (MQTT 5)
    ├── BrokerError          a broker of our own could not be started (otc.broker)
    ├── RecordError          a recording of book events could not be created (feeds.record)
    └── UsageError           a command-line argument is invalid (otc.cli)

Errors marked with a module live next to the code that raises them; this module holds the
shared ones. Each error carries the data a caller needs as attributes, and its message is one line.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FeedError",
    "InsufficientDepth",
    "MarketUnavailable",
    "OtcError",
    "QuoteError",
    "ValueParseError",
]


class OtcError(Exception):
    """Base of every error raised by ``otc`` on purpose."""


class ConfigError(OtcError):
    """A configuration (or book) file is malformed.

    Raised at start-up, before anything runs. ``source`` is the file, ``path`` the location
    inside it in JSON-path form (``$.venues[0].taker_fee_bps``).
    """

    def __init__(self, source: str, path: str, problem: str) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        super().__init__(f"{source}: {path}: {problem}")


class ValueParseError(OtcError, ValueError):
    """A decimal text could not be turned into an exact fixed-point value.

    Raised for non-numeric text, NaN, infinities, negative sizes and values finer than the
    resolution they must be stored at (which would otherwise be rounded silently).
    """


class FeedError(OtcError):
    """A venue feed lost integrity; the venue must resync before it is used again."""

    def __init__(self, venue: str, problem: str) -> None:
        self.venue = venue
        self.problem = problem
        super().__init__(f"{venue}: {problem}")


class QuoteError(OtcError):
    """A request cannot be priced."""


class InsufficientDepth(QuoteError):
    """Visible depth on the included venues cannot cover the requested size."""

    def __init__(self, requested: str, available: str) -> None:
        self.requested = requested
        self.available = available
        super().__init__(f"visible depth {available} cannot cover {requested}")


class MarketUnavailable(QuoteError):
    """No venue is fit to price from; ``reasons`` maps each venue to why it is excluded."""

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = dict(reasons)
        detail = ", ".join(f"{v}: {r}" for v, r in sorted(reasons.items())) or "no venues"
        super().__init__(f"no venue fit to price from ({detail})")
