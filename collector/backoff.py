"""Capped, jittered exponential backoff with the clock and randomness passed in.

Modelled on psycopg_pool's ``AttemptWithBackoff``: one object per sequence of attempts; ``next_delay()``
gives the wait before the next attempt; ``reset()`` after a success.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

__all__ = ["Backoff", "Sleeper", "event_sleeper"]

Sleeper = Callable[[float], bool]
"""Waits up to the given seconds; returns True when it was interrupted (stop requested)."""


class Backoff:
    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.25,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or cap < initial or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < initial <= cap, factor >= 1, 0 <= jitter < 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - not for crypto
        self.attempts = 0

    def next_delay(self, at_least: float = 0.0) -> float:
        """The next wait: exponential, capped, +/- jitter; never below ``at_least`` (e.g. Retry-After)."""
        base = min(self.cap, self.initial * self.factor**self.attempts)
        self.attempts += 1
        spread = base * self.jitter
        delay = base + self._rng.uniform(-spread, spread)
        return max(at_least, min(delay, self.cap))

    def reset(self) -> None:
        self.attempts = 0


def event_sleeper(stop: threading.Event) -> Sleeper:
    """A Sleeper that wakes early when ``stop`` is set."""
    return stop.wait
