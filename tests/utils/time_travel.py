"""Letting time pass for a running app and the emulator without waiting for it.

Two clocks judge a Microsoft token: the emulator's (Graph refuses an expired token) and the
app's (`tracecat.clock`: due for a refresh, expired, just refreshed). The emulator's moves
through its control API; the app's is the `MovableClock` the test apps are built with
(`create_app(settings, clock=...)`), which the test moves forward.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.conftest import Api


class MovableClock:
    """A `tracecat.clock.Clock` for tests: the real time plus an offset the test moves
    forward, and pauses that are recorded instead of waited out (time stands still during
    them). Shared by the test's thread and the live server's: each change is one assignment
    or append, so no lock is needed."""

    def __init__(self) -> None:
        self.offset = timedelta(0)
        self.pauses: list[float] = []

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        await asyncio.sleep(0)  # still a suspension point, as a real sleep is

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)

    def reset(self) -> None:
        self.offset = timedelta(0)
        self.pauses.clear()


def let_time_pass(api: Api, seconds: float) -> None:
    """`seconds` pass for the emulator and for every app built on `api.clock` (the test
    server and `api.another_server`); not for apps in other processes."""
    api.control("POST", "/clock", json={"advance_seconds": seconds})
    api.clock.advance(seconds)
