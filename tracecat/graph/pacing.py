"""Pacing of Teams sends under Microsoft's published per-app limits.

Each send books the earliest instant at least one interval away from every booking of its
channel, team and tenant (holes included, whatever the arrival order), then sleeps until then,
so a burst is spread out instead of running into 429s. `InProcessPacer` keeps the bookings
in the pacer object; `RedisPacer` keeps them in Redis so that several `serve` processes share
one budget.

A budget is shared by exactly the clients that are given the same pacer: nothing here is
process-wide, so the app creates one pacer (`pacer_from_settings`) and passes it to every
client it builds, and closes it on shutdown.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypedDict, TypeVar, Unpack

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
# Bookings a search may step over before it settles for the slot after all of them.
MAX_MOVES = 256


class LoopLocal(Generic[T]):
    """One object per running event loop and key: asyncio clients cannot cross loops.

    Meant to live on an instance (as `RedisPacer`'s connections do), never at module level.
    """

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


class Limits(TypedDict, total=False):
    """Pacer limits other than Teams' defaults (the keyword arguments of `Pacer`)."""

    channel_per_second: float
    team_per_second: float
    tenant_per_second: float
    safety_factor: float


class Pacer(ABC):
    """Spaces sends per channel, team and tenant; `acquire` returns the seconds it waited.

    `sleep` is injectable so that tests can check a schedule without waiting it out.
    """

    def __init__(
        self,
        *,
        channel_per_second: float = CHANNEL_PER_SECOND,
        team_per_second: float = TEAM_PER_SECOND,
        tenant_per_second: float = TENANT_PER_SECOND,
        safety_factor: float = SAFETY_FACTOR,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        rates = (channel_per_second, team_per_second, tenant_per_second)
        if min(rates) <= 0 or not 0 < safety_factor <= 1:
            raise ValueError("rates must be positive and safety_factor in (0, 1]")
        # Seconds between two sends on the same channel, team and tenant.
        self.intervals = tuple(1.0 / (rate * safety_factor) for rate in rates)
        self._sleep = sleep

    async def acquire(
        self, team_id: str, channel_id: str, *, tenant_id: str = DEFAULT_TENANT
    ) -> float:
        delay = await self.reserve(team_id, channel_id, tenant_id)
        if delay > 0:
            THROTTLE_WAIT_SECONDS.labels(source="pacer").inc(delay)
            await self._sleep(delay)
        return delay

    @abstractmethod
    async def reserve(self, team_id: str, channel_id: str, tenant_id: str) -> float:
        """Book the next free slot for this send; return the seconds until it."""

    async def aclose(self) -> None:
        return None


class InProcessPacer(Pacer):
    """Bookings kept in this object: one budget for every client given this pacer.

    `monotonic_ns` is the clock bookings are made on (integer nanoseconds, so gaps add up
    exactly); tests inject a fake one together with `sleep`.
    """

    def __init__(
        self,
        *,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        **limits: Unpack[Limits],
    ) -> None:
        super().__init__(sleep=sleep, **limits)
        self._monotonic_ns = monotonic_ns
        # Integer nanoseconds: a slot placed at booking + gap must not seem to conflict with it.
        self._gaps = tuple(round(interval * 1e9) for interval in self.intervals)
        # key -> sorted monotonic_ns times booked on it (the recent past and the future).
        self._booked: dict[tuple[str, ...], list[int]] = {}
        # A threading lock, not an asyncio one: the pacer may be shared by several loops.
        self._lock = threading.Lock()

    async def reserve(self, team_id: str, channel_id: str, tenant_id: str) -> float:
        keys = (("channel", team_id, channel_id), ("team", team_id), ("tenant", tenant_id))
        with self._lock:
            now = self._monotonic_ns()
            booked = [self._booked.setdefault(key, []) for key in keys]
            for times, gap in zip(booked, self._gaps, strict=True):
                # A booking at least `gap` ago can no longer conflict with one at or after now.
                del times[: bisect.bisect_right(times, now - gap)]
            start = _earliest_slot(now, booked, self._gaps)
            for times in booked:
                bisect.insort(times, start)
            if len(self._booked) > 10_000:
                horizon = now - max(self._gaps)
                self._booked = {k: v for k, v in self._booked.items() if v and v[-1] > horizon}
            return (start - now) / 1e9


def _earliest_slot(now: int, booked: list[list[int]], gaps: tuple[int, ...]) -> int:
    """The earliest t >= now at least `gap` away from every booking of each key.

    Sends at least 1 / (rate * safety) apart never exceed the rate in any sliding second, and
    unlike one "next free" time per key, this lets a send fill a hole that other keys left.
    """
    keys = list(zip(booked, gaps, strict=True))
    t, moves, moved = now, 0, True
    while moved and moves <= MAX_MOVES:
        moved = False
        for times, gap in keys:
            # The latest booking closer than `gap` to t, if any: t must clear it.
            i = bisect.bisect_left(times, t + gap) - 1
            if i >= 0 and times[i] > t - gap:
                t, moved, moves = times[i] + gap, True, moves + 1
    if moved:
        # Bounded work per send: after every booking is always free.
        t = max([now, *(times[-1] + gap for times, gap in keys if times)])
    return t


# Redis' own clock is the one every instance shares. Times are in microseconds. Each key is a
# sorted set of booked times; a time is its own member, unique since bookings of a key are
# at least its gap apart. The search is `_earliest_slot`, kept atomic by running in Redis.
# KEYS: channel, team, tenant; ARGV: their gaps, then MAX_MOVES. Returns the wait in µs.
_RESERVE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local function fmt(x) return string.format('%.0f', x) end
local gaps = {}
for i = 1, #KEYS do
  gaps[i] = tonumber(ARGV[i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', fmt(now - gaps[i]))
end
local max_moves = tonumber(ARGV[#KEYS + 1])
local t, moves, moved = now, 0, true
while moved and moves <= max_moves do
  moved = false
  for i = 1, #KEYS do
    local hit = redis.call('ZREVRANGEBYSCORE', KEYS[i], '(' .. fmt(t + gaps[i]),
      '(' .. fmt(t - gaps[i]), 'WITHSCORES', 'LIMIT', 0, 1)
    if #hit > 0 then
      t, moved, moves = tonumber(hit[2]) + gaps[i], true, moves + 1
    end
  end
end
if moved then
  t = now
  for i = 1, #KEYS do
    local last = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
    if #last > 0 and tonumber(last[2]) + gaps[i] > t then t = tonumber(last[2]) + gaps[i] end
  end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], fmt(t), fmt(t))
  local last = tonumber(redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIRE', KEYS[i], math.ceil((last + gaps[i] - now) / 1000) + 1000)
end
return t - now
"""


class RedisPacer(Pacer):
    """The budget lives in Redis (keys expire once idle), so it is shared by every process."""

    def __init__(
        self,
        redis: str | aioredis.Redis,
        *,
        prefix: str = "tracecat:pacing",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        **limits: Unpack[Limits],
    ) -> None:
        # Bookings are made on Redis' clock (see the script), so only the sleep is injectable.
        super().__init__(sleep=sleep, **limits)
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
        gaps = [max(1, round(interval * 1_000_000)) for interval in self.intervals]
        waited = await self._client().eval(_RESERVE_SCRIPT, len(keys), *keys, *gaps, MAX_MOVES)
        return max(0, int(waited)) / 1_000_000

    async def aclose(self) -> None:
        """Close the connections this pacer opened on the current loop (not a given client)."""
        if isinstance(self._redis, str) and (client := self._clients.pop(self._redis)):
            await client.aclose()


def pacer_from_settings(settings: Settings) -> Pacer:
    """A new pacer: Redis-backed when REDIS_URL is set, else in-process.

    Each call makes a new, independent budget: to share one, share the pacer.
    """
    if settings.redis_url:
        return RedisPacer(settings.redis_url)
    return InProcessPacer()
