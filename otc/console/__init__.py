"""The operator console: a live web page and a JSON API, served by the engine.

It reads the engine's state (books, feed health, quoting controls, positions, the journal's
events as they happen) and sends the operators' commands through the same
:class:`~otc.quoting.QuoteEngine` controls as the bus; it never edits a book. Modules:

* :mod:`otc.console.activity`: the journal's events as they happen (blotter, explanations,
  fills for P&L and markouts);
* :mod:`otc.console.views`: the snapshots the page and the API serve, as msgspec Structs;
* :mod:`otc.console.app`: the HTTP application (API, push stream, static page) and its server.

Nothing else in ``otc`` imports this package but :mod:`otc.app`.
"""

from otc.console.activity import Activity, ObservedJournal
from otc.console.app import Console, ConsoleServer, listen, resolve_token, url_of

__all__ = [
    "Activity",
    "Console",
    "ConsoleServer",
    "ObservedJournal",
    "listen",
    "resolve_token",
    "url_of",
]
