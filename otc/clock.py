"""Time, injected: the engine asks a :class:`Clock`; tests and backtests drive a :class:`FakeClock`.

A clock has two parts. Wall time (``now_ns``) stamps quotes (``valid_until_ms``), fills and
journal rows, and names the UTC day of the daily limits: compliance and clients read it. It can
step (NTP correcting it, a virtual machine resumed after a pause, an operator setting the date).
Monotonic time (``monotonic_ns``) never steps back and only counts time passing: the engine
measures every *duration* with it (a quote's lifetime, a book's age, the rate limit, what it
remembers), so a step of the wall clock can neither keep a quote fillable nor a stale book
usable beyond their time. Nothing in the engine calls ``time.time()`` directly, so a replay
reproduces every decision.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def now_ns(self) -> int:
        """Wall time: nanoseconds since the epoch (may step either way)."""
        ...

    def monotonic_ns(self) -> int:
        """Nanoseconds since an arbitrary start, never going back: for durations only."""
        ...


class SystemClock:
    """The machine's wall clock and its monotonic clock (``time.monotonic_ns``, ~50 ns).

    The methods are the C functions themselves: read on every RFQ and every book message, a
    method wrapping them would add a Python call to each.
    """

    now_ns = staticmethod(time.time_ns)
    monotonic_ns = staticmethod(time.monotonic_ns)


class FakeClock:
    """A clock that moves only when told to (tests, backtests).

    :meth:`advance` and :meth:`set` are time passing: both parts move together, except that
    the monotonic part never goes back (moving the wall time back is a step, as below).
    :meth:`step` moves the wall time only, as NTP or an operator stepping it does.
    """

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._now = start_ns
        self._mono = start_ns

    def now_ns(self) -> int:
        return self._now

    def monotonic_ns(self) -> int:
        return self._mono

    def advance(self, *, ns: int = 0, ms: float = 0, s: float = 0) -> None:
        self.set(self._now + ns + round(ms * 1e6) + round(s * 1e9))

    def set(self, now_ns: int) -> None:
        self._mono += max(0, now_ns - self._now)
        self._now = now_ns

    def step(self, *, ns: int = 0, ms: float = 0, s: float = 0) -> None:
        """Step the wall time (either way) while no time passes."""
        self._now += ns + round(ms * 1e6) + round(s * 1e9)
