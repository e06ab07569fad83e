"""Pacing of Teams sends under Microsoft's published per-app limits.

Each send reserves the earliest instant that its channel, team and tenant budgets all allow,
then sleeps until then (spacing, GCRA-style), so a burst is spread out instead of running into
429s. `InProcessPacer` keeps that state per process; `RedisPacer` keeps it in Redis so that
several `serve` processes share one budget.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import redis.asyncio as aioredis

from tracecat.config import Settings
from tracecat.metrics import THROTTLE_WAIT_SECONDS

T = TypeVar("T")

# Microsoft Teams limits per app: messages per channel, requests per team and per tenant.
CHANNEL_PER_SECOND = 1.0
TEAM_PER_SECOND = 4.0
TENANT_PER_SECOND = 50.0
# Below the published rates: our clock and Graph's disagree by network jitter.
SAFETY_FACTOR = 0.9
DEFAULT_TENANT = "common"


class LoopLocal(Generic[T]):
    """One object per running event loop and key: asyncio clients cannot cross loops."""

    def __init__(self) -> None:
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, T]]
        self._items = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, key: Hashable, factory: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            items = self._items.setdefault(loop, {})
            if key not in items:
                items[key] = factory()
            return items[key]

    def pop(self, key: Hashable) -> T | None:
        """Forget (and return) the current loop's object for `key`."""
        loop = asyncio.get_running_loop()
        with self._lock:
            return self._items.get(loop, {}).pop(key, None)


class Pacer(ABC):
    """Spaces sends per channel, team and tenant; `acquire` returns the seconds it waited."""

    def __init__(
        self,
        *,
        channel_per_second: float = CHANNEL_PER_SECOND,
        team_per_second: float = TEAM_PER_SECOND,
        tenant_per_second: float = TENANT_PER_SECOND,
        safety_factor: float = SAFETY_FACTOR,
    ) -> None:
        rates = (channel_per_second, team_per_second, tenant_per_second)
        if min(rates) <= 0 or not 0 < safety_factor <= 1:
            raise ValueError("rates must be positive and safety_factor in (0, 1]")
        # Seconds between two sends on the same channel, team and tenant.
        self.intervals = tuple(1.0 / (rate * safety_factor) for rate in rates)

    async def acquire(
        self, team_id: str, channel_id: str, *, tenant_id: str = DEFAULT_TENANT
    ) -> float:
        delay = await self.reserve(team_id, channel_id, tenant_id)
        if delay > 0:
            THROTTLE_WAIT_SECONDS.labels(source="pacer").inc(delay)
            await asyncio.sleep(delay)
        return delay

    @abstractmethod
    async def reserve(self, team_id: str, channel_id: str, tenant_id: str) -> float:
        """Book the next free slot for this send; return the seconds until it."""

    async def aclose(self) -> None:
        return None


class InProcessPacer(Pacer):
    def __init__(self, **limits: float) -> None:
        super().__init__(**limits)
        # key -> monotonic time from which the next send is allowed.
        self._next: dict[tuple[str, ...], float] = {}
        # A threading lock, not an asyncio one: the pacer may be shared by several loops.
        self._lock = threading.Lock()

    async def reserve(self, team_id: str, channel_id: str, tenant_id: str) -> float:
        keys = (("channel", team_id, channel_id), ("team", team_id), ("tenant", tenant_id))
        with self._lock:
            now = time.monotonic()
            start = max([now, *(self._next.get(key, now) for key in keys)])
            for key, interval in zip(keys, self.intervals, strict=True):
                self._next[key] = start + interval
            if len(self._next) > 10_000:
                self._next = {k: v for k, v in self._next.items() if v > now}
            return start - now


# Redis' own clock is the one every instance shares. Times are in microseconds.
# KEYS: channel, team, tenant; ARGV: their intervals. Returns the wait in microseconds.
_RESERVE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local start = now
for i = 1, #KEYS do
  local booked = tonumber(redis.call('GET', KEYS[i]) or '0')
  if booked > start then start = booked end
end
for i = 1, #KEYS do
  local next_free = start + tonumber(ARGV[i])
  local ttl_ms = math.ceil((next_free - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.0f', next_free), 'PX', ttl_ms)
end
return start - now
"""


class RedisPacer(Pacer):
    """The budget lives in Redis (keys expire once idle), so it is shared by every process."""

    def __init__(
        self,
        redis: str | aioredis.Redis,
        *,
        prefix: str = "tracecat:pacing",
        **limits: float,
    ) -> None:
        super().__init__(**limits)
        self.prefix = prefix
        self._redis = redis
        self._clients: LoopLocal[aioredis.Redis] = LoopLocal()

    def _client(self) -> aioredis.Redis:
        if not isinstance(self._redis, str):
            return self._redis
        url = self._redis
        # redis.asyncio connections belong to the loop that opened them.
        return self._clients.get(url, lambda: aioredis.Redis.from_url(url))

    async def reserve(self, team_id: str, channel_id: str, tenant_id: str) -> float:
        # The tenant hash tag keeps all three keys in one Redis Cluster slot.
        base = f"{self.prefix}:{{{tenant_id}}}"
        keys = [f"{base}:channel:{team_id}:{channel_id}", f"{base}:team:{team_id}", base]
        intervals = [round(interval * 1_000_000) for interval in self.intervals]
        waited = await self._client().eval(_RESERVE_SCRIPT, len(keys), *keys, *intervals)
        return max(0, int(waited)) / 1_000_000

    async def aclose(self) -> None:
        """Close the connections this pacer opened on the current loop (not a given client)."""
        if isinstance(self._redis, str) and (client := self._clients.pop(self._redis)):
            await client.aclose()


def pacer_from_settings(settings: Settings) -> Pacer:
    """A new pacer: Redis-backed when REDIS_URL is set, else per process."""
    if settings.redis_url:
        return RedisPacer(settings.redis_url)
    return InProcessPacer()


_shared: dict[str | None, Pacer] = {}
_shared_lock = threading.Lock()


def default_pacer(settings: Settings) -> Pacer:
    """The process-wide pacer for these settings, so every client shares one budget."""
    with _shared_lock:
        if settings.redis_url not in _shared:
            _shared[settings.redis_url] = pacer_from_settings(settings)
        return _shared[settings.redis_url]
