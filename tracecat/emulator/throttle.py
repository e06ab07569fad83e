"""Sliding one-second windows, one per (limit, scope) key, like Teams' per-app limits."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Sequence

WINDOW_SECONDS = 1.0


class RateLimiter:
    """Not thread-safe on its own: EmulatorState calls it under its lock."""

    def __init__(self) -> None:
        self._events: dict[Hashable, deque[float]] = {}

    def admit(self, checks: Sequence[tuple[Hashable, int]], now: float) -> int | None:
        """Record one request against every key, or none if any key is full.

        Returns None when admitted, else the Retry-After seconds. A refused request
        is not recorded, so it costs nothing: it was not delivered.
        """
        wait = 0.0
        for key, limit in checks:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - WINDOW_SECONDS:
                events.popleft()
            if len(events) >= limit:
                wait = max(wait, events[len(events) - limit] + WINDOW_SECONDS - now)
        if wait > 0:
            return max(1, math.ceil(wait))
        for key, _ in checks:
            self._events[key].append(now)
        return None

    def clear(self) -> None:
        self._events.clear()
