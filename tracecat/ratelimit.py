"""Rate limits: requests per API key, and failed authentications per client address.

The `limits` package keeps the counters (fixed windows): in this process's memory, or in
Redis when REDIS_URL is set, so every instance and worker shares one budget (in memory,
each process counts on its own). An address over its failure limit is refused everything,
valid keys included, until the window passes: only that stops guessing keys.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from limits import parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter

from tracecat.config import Settings
from tracecat.exceptions import RateLimitedError


@dataclass(frozen=True)
class Exceeded:
    """A limit refused its first request of a window (later refusals are not reported)."""

    limit: str  # the setting's text, e.g. "30/minute"
    user_id: uuid.UUID | None  # whose API key, for the per-key limit
    address: str | None  # the client


OnExceeded = Callable[[Exceeded], Awaitable[None]]
KEY, ADDRESS = "key", "address"  # the two kinds of counter


def storage_for(redis_url: str | None) -> Storage:
    if not redis_url:
        return MemoryStorage()
    # limits names its async Redis schemes `async+redis`, `async+rediss`, `async+redis+unix`.
    scheme, rest = redis_url.split("://", 1)
    async_scheme = "async+redis+unix" if scheme == "unix" else f"async+{scheme}"
    return RedisStorage(f"{async_scheme}://{rest}", implementation="redispy")


class RateLimits:
    def __init__(self, settings: Settings, on_exceeded: OnExceeded | None = None) -> None:
        # Each kind of counter: its limit, and the setting's text for messages and the audit.
        self._limits = {
            KEY: (parse(settings.tracecat_rate_limit), settings.tracecat_rate_limit),
            ADDRESS: (
                parse(settings.tracecat_auth_failure_limit),
                settings.tracecat_auth_failure_limit,
            ),
        }
        self._storage = storage_for(settings.redis_url)
        self._limiter = FixedWindowRateLimiter(self._storage)
        self._on_exceeded = on_exceeded

    async def count_request(
        self, key_id: str, user_id: uuid.UUID | None = None, address: str | None = None
    ) -> None:
        """One request of the API key's budget; RateLimitedError once it is spent."""
        if not await self._limiter.hit(self._limits[KEY][0], KEY, key_id):
            await self._refuse(KEY, key_id, user_id, address)

    async def refuse_if_blocked(self, address: str | None) -> None:
        """An address that failed too often is refused before its key is even looked at."""
        if address is not None and not await self._limiter.test(
            self._limits[ADDRESS][0], ADDRESS, address
        ):
            await self._refuse(ADDRESS, address, None, address)

    async def count_failure(self, address: str | None) -> None:
        """A wrong or revoked key from `address`; RateLimitedError for the one over the limit."""
        if address is not None and not await self._limiter.hit(
            self._limits[ADDRESS][0], ADDRESS, address
        ):
            await self._refuse(ADDRESS, address, None, address)

    async def _refuse(
        self, kind: str, key: str, user_id: uuid.UUID | None, address: str | None
    ) -> None:
        item, text = self._limits[kind]
        stats = await self._limiter.get_window_stats(item, kind, key)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        # Reported once per key or address and window: a second limit, of one per window.
        once = type(item)(1, item.multiples, namespace="REPORTED")
        if self._on_exceeded is not None and await self._limiter.hit(once, kind, key):
            await self._on_exceeded(Exceeded(text, user_id, address))
        whose = "this API key" if kind == KEY else "this address (too many failed sign-ins)"
        raise RateLimitedError(
            f"rate limit of {text} exceeded for {whose}: retry in {retry_after} s", retry_after
        )

    async def reset(self) -> None:
        """Forget every counter (tests; an operator's escape hatch)."""
        await self._storage.reset()
