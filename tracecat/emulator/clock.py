"""The emulator's one clock: real time plus an offset tests can move forward.

Every expiry the emulator decides (access token `exp`/`nbf`/`iat`, authorization
code lifetime, refresh-token inactivity, revocation instants) and every time it
stamps (token claims, message ids and dates, error timestamps) reads this clock,
so `POST /_emulator/clock {"advance_seconds": N}` lets a test make a token expire
without sleeping. `reset()` puts the offset back to 0.

Only what is not emulated reads the real time: the TLS and token-signing
certificates (clients check them against their own clock) and the server's
start-up timeout.
"""

from __future__ import annotations

import datetime as dt
import time

# Ten years: far beyond any token lifetime, well inside what datetime can represent.
MAX_OFFSET_SECONDS = 10 * 365 * 24 * 3600


class Clock:
    """Not locked on its own: EmulatorState changes the offset under its lock.

    Reading a float attribute is atomic, so `now()` needs no lock.
    """

    def __init__(self) -> None:
        self._offset = 0.0

    @property
    def offset(self) -> float:
        return self._offset

    def now(self) -> float:
        """Seconds since the epoch, as the emulator sees them."""
        return time.time() + self._offset

    def monotonic(self) -> float:
        """For measuring intervals (rate-limit windows): immune to wall-clock steps, but
        moved by the same offset, so advancing the clock also ends throttling windows."""
        return time.monotonic() + self._offset

    def utcnow(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now(), dt.UTC)

    def advance(self, seconds: float) -> float:
        """Move forward (never back, so nothing already issued is from the future)."""
        if not 0 <= seconds <= MAX_OFFSET_SECONDS - self._offset:
            raise ValueError(
                f"advance_seconds must be between 0 and {MAX_OFFSET_SECONDS - self._offset:.0f}"
            )
        self._offset += seconds
        return self._offset

    def reset(self) -> None:
        self._offset = 0.0
