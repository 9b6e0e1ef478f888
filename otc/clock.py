"""Time, injected: the engine asks a :class:`Clock`; tests and backtests drive a :class:`FakeClock`.

Wall time (``now_ns``) stamps quotes, fills and journal rows and decides expiry; nothing in the
engine calls ``time.time()`` directly, so a replay reproduces every decision.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def now_ns(self) -> int:
        """Nanoseconds since the epoch."""
        ...


class SystemClock:
    """The machine's wall clock."""

    def now_ns(self) -> int:
        return time.time_ns()


class FakeClock:
    """A clock that moves only when told to (tests, backtests)."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def advance(self, *, ns: int = 0, ms: float = 0, s: float = 0) -> None:
        self._now += ns + round(ms * 1e6) + round(s * 1e9)

    def set(self, now_ns: int) -> None:
        self._now = now_ns
