"""The app's one clock: what "now" is, and how a pause is waited out.

Everything that judges a token by time (due for a refresh, expired, just refreshed), stamps
one (`expires_at`, `last_refreshed_at`) or pauses between refresh retries reads the clock the
app was built with (`create_app(settings, clock=...)`), so a test can move the app's time or
skip its pauses without editing stored rows or waiting. Production uses `SYSTEM_CLOCK`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Pause this task for `seconds`."""
        ...


@dataclass(frozen=True)
class SystemClock:
    """The real time and the real pause."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
