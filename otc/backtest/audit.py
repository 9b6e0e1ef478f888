"""``otc replay-journal``: reproduce a run's quotes from its journal and the books it saw.

Inputs: the run's SQLite journal and a recording of the book events the engine applied
(``otc-book-events``, e.g. written by the engine's feed or ``otc record``). The client messages
(RFQs, accepts, operator controls) are taken from the journal, in journal order, and handed to
a fresh :class:`~otc.quoting.QuoteEngine` (the live code) over a :class:`~otc.market.Market`
rebuilt from the recording; every quote, reject, fill and accept reject it produces is compared
with the journaled one, payload and explanation included.

Assumptions, which make the reproduction exact:

* the config is the run's;
* quote and trade ids: the run id is the prefix of the first journaled quote id;
* the clock: each message is handled at its journaled ``ts_ns`` (what the live engine's clock
  said), so expiry, rate limits, daily notional and book ages repeat;
* the books: before an RFQ, each venue's book of the symbol is brought to the state it was
  priced from: the venue's events are applied up to the one whose sequence id the journaled
  explanation names for it (so events that arrived between two RFQs in the same millisecond
  are placed exactly; see :meth:`_Books.until` for a numbering that starts over); a venue the
  explanation does not name and a venue without sequence ids get the events received at or
  before the RFQ's ``ts_ns``. Other symbols' books are left as
  they are until an RFQ of theirs (a quote reads only its own symbol's book; the engine stamps
  a feed event when it receives it, and may apply it a little later, after RFQs it holds);
* one run per journal file, and the desk starts flat, as a live engine does on a new journal
  (positions only come from fills and ``position`` controls, which are journaled; a run that
  restored an earlier run's state journaled it as ``start-up`` controls, replayed like any);
* concurrency: the live engine handles messages concurrently. An RFQ is priced and its outcome
  queued to the journal without a pause, but an accept is journaled on arrival and decided
  later (after its journal write), at the place of its outcome in the journal: an RFQ handled
  in between was priced before that fill moved the desk's position. The replay holds each
  accept the same way, between its journal row and its outcome's row (the clock then reads the
  outcome's time), so the outcomes come out in the journal's order, from the same state.

A difference is reported with the event, the field path and both values.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections import deque
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec

from otc.backtest.runner import recorded_scales, refused_event
from otc.clock import FakeClock
from otc.config import Config
from otc.errors import ConfigError, OtcError
from otc.journal import JournalError, JournalEvent, MemoryJournal, _encode_payload, export
from otc.market import Market
from otc.model import BookEvent
from otc.quoting import (
    ClientRecord,
    HaltRecord,
    Outgoing,
    PositionRecord,
    QuoteEngine,
    SpreadRecord,
    read_control,
)

__all__ = ["AuditResult", "Mismatch", "format_audit", "replay_journal"]

_OUTCOMES = ("quote", "reject", "fill", "accept_reject")


class Mismatch(msgspec.Struct, frozen=True):
    """A reproduced event that differs from the journaled one."""

    index: int
    kind: str
    rfq_id: str
    quote_id: str
    path: str
    journaled: object
    reproduced: object


class AuditResult(msgspec.Struct, frozen=True, kw_only=True):
    """What ``otc replay-journal`` found."""

    rfqs: int
    accepts: int
    controls: int
    journaled: int
    reproduced: int
    identical_events: int
    mismatches: list[Mismatch]

    @property
    def identical(self) -> bool:
        return not self.mismatches and self.journaled == self.reproduced


def _diff(path: str, a: object, b: object) -> tuple[str, object, object] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _diff(f"{path}.{key}", a.get(key), b.get(key))
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _diff(f"{path}[{i}]", x, y)
            if found is not None:
                return found
        return None
    return None if a == b else (path, a, b)


def _journal_rows(path: Path) -> list[dict[str, Any]]:
    buf = io.StringIO()
    export(path, "json", buf)
    rows: list[dict[str, Any]] = json.loads(buf.getvalue())
    return rows


def _as_journaled(event: JournalEvent) -> dict[str, Any]:
    """A reproduced event as the journal stores it (its own payload encoding)."""
    return {
        "kind": event.kind,
        "client": event.client,
        "ts_ns": event.ts_ns,
        "rfq_id": event.rfq_id,
        "quote_id": event.quote_id,
        "trade_id": event.trade_id,
        "payload": json.loads(_encode_payload(event)),
    }


class _HeldAccepts(MemoryJournal):
    """The replay's journal: an accept's handler waits, once its accept is journaled, until
    :meth:`release` lets it decide (at its outcome's row)."""

    def __init__(self) -> None:
        super().__init__()
        #: (client, quote id) -> the gates of accepts waiting, oldest first.
        self.waiting: dict[tuple[str, str], deque[asyncio.Future[None]]] = {}
        self.arrived = asyncio.Event()

    async def append(self, event: JournalEvent) -> None:
        await super().append(event)
        if event.kind == "accept":
            gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.setdefault((event.client, event.quote_id), deque()).append(gate)
            self.arrived.set()
            await gate

    def release(self, client: str, quote_id: str) -> bool:
        """Let the oldest accept waiting for (client, quote_id) decide; False if none waits."""
        gates = self.waiting.get((client, quote_id))
        if not gates:
            return False
        gates.popleft().set_result(None)
        return True

    def release_all(self) -> None:
        for gates in self.waiting.values():
            while gates:
                gates.popleft().set_result(None)


class _Books:
    """The recorded events per (venue, our symbol), applied on demand; ``source`` names the
    recording in errors."""

    def __init__(self, market: Market, events: Iterable[BookEvent], source: str) -> None:
        self.market = market
        self.source = source
        routes: dict[tuple[str, str], str | None] = {}
        for cfg in market.config.venues:
            for ours, theirs in cfg.symbols.items():
                routes[(cfg.name, theirs)] = ours
                routes[(cfg.name, ours)] = ours
        self.queues: dict[tuple[str, str], deque[BookEvent]] = {}
        for event in events:
            symbol = routes.get((event.venue, event.symbol))
            if symbol is not None:
                self.queues.setdefault((event.venue, symbol), deque()).append(event)

    def until(
        self, ts_ns: int, targets: dict[tuple[str, str], int], only: str | None = None
    ) -> None:
        """Apply each (venue, symbol)'s events up to the one its book was priced from: the
        last one received at or before ``ts_ns`` numbered as its target sequence (and the
        unnumbered ones after it); failing that, the first one numbered so received later
        (during a wait before the pricing), among events numbered up to it; else every event
        received at or before ``ts_ns``. ``only``: that symbol's books only.

        The last one numbered so, not the events numbered up to the target: a venue's
        numbering may start over (a reconnection, maintenance), and its events received after
        ``ts_ns`` with a smaller number were not applied when the RFQ was priced.
        """
        for (venue, symbol), queue in self.queues.items():
            if only is not None and symbol != only:
                continue
            target = targets.get((venue, symbol))
            count = 0  # events received at or before ts_ns
            last = None  # how many events up to the one numbered ``target``
            for event in queue:
                if event.ts_recv_ns > ts_ns:
                    break
                count += 1
                if target is not None and event.sequence == target:
                    last = count
            if last is not None:
                while last < count and queue[last].sequence is None:
                    last += 1
            elif target is not None:
                later = count
                for event in islice(queue, count, None):
                    if event.sequence is not None and event.sequence > target:
                        break
                    later += 1
                    if event.sequence == target:
                        last = later
                        break
            for _ in range(count if last is None else last):
                self._apply(queue.popleft(), symbol)

    def _apply(self, event: BookEvent, symbol: str) -> None:
        try:
            self.market.apply(event, symbol)
        except ValueError as exc:  # a level no book holds (a negative size...)
            raise refused_event(self.source, event, exc) from None


def _targets(quote: dict[str, Any] | None, symbol: str) -> dict[tuple[str, str], int]:
    """(venue, symbol) -> the book sequence the journaled quote was priced from."""
    targets: dict[tuple[str, str], int] = {}
    if quote is None:
        return targets
    for expl in quote["payload"].get("explanation", {}).values():
        for venue, state in expl.get("books", {}).items():
            if state.get("sequence") is not None:
                targets[(venue, symbol)] = int(state["sequence"])
    return targets


def replay_journal(config: Config, journal: Path, data: list[Path]) -> AuditResult:
    """Replay ``journal``'s client messages over the books of ``data``; compare the outcomes.

    Raises:
        JournalError: the journal cannot be read. ConfigError: a malformed recording.
    """
    from feeds.replay import ReplayFeed

    rows = _journal_rows(journal)
    events = ReplayFeed(data, scales=recorded_scales(config)).iter_events()
    market = Market(config)
    books = _Books(market, events, ", ".join(map(str, data)))
    first_quote = next((r for r in rows if r["kind"] == "quote"), None)
    run_id = first_quote["quote_id"].rsplit("-q", 1)[0] if first_quote else "replay"
    clock = FakeClock(rows[0]["ts_ns"] if rows else 0)
    counts = {"rfq": 0, "accept": 0, "control": 0}
    reproduced_journal = MemoryJournal()

    async def run() -> None:
        journal = _HeldAccepts()
        engine = QuoteEngine(config, market, journal, clock, run_id=run_id)
        accepts: dict[tuple[str, str], deque[asyncio.Task[list[Outgoing]]]] = {}
        for i, row in enumerate(rows):
            current[0] = row
            kind = row["kind"]
            if kind in ("fill", "accept_reject"):  # an accept held until here decides now
                key = (row["client"], row["quote_id"])
                if journal.release(*key):
                    clock.set(row["ts_ns"])
                    await accepts[key].popleft()
                continue
            if kind not in counts:
                continue
            counts[kind] += 1
            payload = row["payload"]
            body = payload["raw"].encode() if "invalid" in payload else msgspec.json.encode(payload)
            if kind == "rfq":
                quote = next(
                    (
                        r
                        for r in rows[i + 1 : i + 3]
                        if r["kind"] == "quote" and r["rfq_id"] == row["rfq_id"]
                    ),
                    None,
                )
                symbol = str(payload.get("symbol", ""))
                books.until(row["ts_ns"], _targets(quote, symbol), only=symbol)
                clock.set(row["ts_ns"])
                await engine.on_rfq(row["client"], body)
            elif kind == "accept":
                if config.quoting.last_look:  # the accept re-prices: books as of its arrival
                    books.until(row["ts_ns"], {})
                clock.set(row["ts_ns"])
                journal.arrived.clear()
                task = asyncio.create_task(engine.on_accept(row["client"], body))
                accepts.setdefault((row["client"], row["quote_id"]), deque()).append(task)
                arrived = asyncio.create_task(journal.arrived.wait())
                await asyncio.wait((task, arrived), return_when=asyncio.FIRST_COMPLETED)
                arrived.cancel()
            else:
                clock.set(row["ts_ns"])
                _control(engine, row)
                await engine.flush_controls()
        journal.release_all()  # accepts whose outcome the journal lacks decide last
        for tasks in accepts.values():
            for task in tasks:
                await task
        reproduced_journal.events = journal.events

    current: list[dict[str, Any] | None] = [None]  # the row being replayed, for errors
    try:
        asyncio.run(run())
    except (JournalError, ConfigError):  # the journal, or the recording, named already
        raise
    except (
        KeyError,
        AttributeError,
        TypeError,
        ValueError,
        ArithmeticError,
        msgspec.ValidationError,
        OtcError,
    ) as exc:
        # A row the engine did not write so (a hand-edited or foreign journal).
        row = current[0] or {}
        problem = f"no member {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        raise JournalError(
            f"cannot replay journal {journal}: event {row.get('id')} ({row.get('kind')}): {problem}"
        ) from exc
    journaled = [r for r in rows if r["kind"] in _OUTCOMES]
    reproduced = [_as_journaled(e) for e in reproduced_journal.events if e.kind in _OUTCOMES]
    mismatches = []
    for index, (want, got) in enumerate(zip(journaled, reproduced, strict=False)):
        keys = ("kind", "client", "ts_ns", "rfq_id", "quote_id", "trade_id", "payload")
        found = _diff("$", {k: want[k] for k in keys}, {k: got[k] for k in keys})
        if found is not None:
            path, a, b = found
            mismatches.append(
                Mismatch(index, want["kind"], want["rfq_id"], want["quote_id"], path, a, b)
            )
    return AuditResult(
        rfqs=counts["rfq"],
        accepts=counts["accept"],
        controls=counts["control"],
        journaled=len(journaled),
        reproduced=len(reproduced),
        identical_events=min(len(journaled), len(reproduced)) - len(mismatches),
        mismatches=mismatches,
    )


def _control(engine: QuoteEngine, row: dict[str, Any]) -> None:
    record = read_control(row["payload"])
    operator = record.operator
    match record:
        case HaltRecord():
            engine.set_halted(record.symbol, record.halted, operator=operator)
        case ClientRecord():
            engine.set_client_enabled(row["client"], record.enabled, operator=operator)
        case SpreadRecord():
            engine.set_tier_spread(record.tier, record.spread_bps, operator=operator)
        case PositionRecord():
            engine.set_position(record.asset, record.position, operator=operator)


def format_audit(result: AuditResult) -> str:
    """A few lines: counts, then each difference."""
    lines = [
        f"replayed {result.rfqs} RFQs, {result.accepts} accepts, {result.controls} controls; "
        f"{result.identical_events} of {result.journaled} journaled outcomes reproduced "
        f"identically ({result.reproduced} reproduced)",
    ]
    lines.extend(
        f"  #{m.index} {m.kind} rfq {m.rfq_id} quote {m.quote_id}: {m.path}: "
        f"journaled {m.journaled!r}, reproduced {m.reproduced!r}"
        for m in result.mismatches[:50]
    )
    lines.append("IDENTICAL" if result.identical else "DIFFERENT")
    return "\n".join(lines) + "\n"
