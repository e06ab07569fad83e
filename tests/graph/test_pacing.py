"""Pacers spread sends under Teams' limits, in one process or shared through a real Redis.

Schedules of the in-process pacer are checked on a fake clock (nothing sleeps, so the checks
are exact); one smoke test and the Redis tests run on real time. Redis books on its own clock,
which a test cannot move: time passing is simulated by moving the bookings into the past.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable
from itertools import pairwise
from typing import Any

import pytest
import redis.asyncio as aioredis

from tracecat.config import Settings
from tracecat.graph.pacing import (
    MAX_MOVES,
    InProcessPacer,
    Limits,
    Pacer,
    RedisPacer,
    pacer_from_settings,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
# 20 sends per second per channel, 40 per team: short waits, easy to tell apart from zero.
LIMITS: Limits = {"channel_per_second": 20.0, "team_per_second": 40.0, "tenant_per_second": 1000.0}
CHANNEL_GAP = 1 / (20.0 * 0.9)
TEAM_GAP = 1 / (40.0 * 0.9)


class FakeClock:
    """A monotonic clock that moves only when told to; a sleep records its wait and returns."""

    def __init__(self) -> None:
        self.now_ns = 1_000 * 10**9
        self.slept: list[float] = []

    def monotonic_ns(self) -> int:
        return self.now_ns

    def monotonic(self) -> float:
        return self.now_ns / 1e9

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)  # still a suspension point, as a real sleep is

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * 1e9)


def fake_clock_pacer(clock: FakeClock, **limits: float) -> InProcessPacer:
    return InProcessPacer(monotonic_ns=clock.monotonic_ns, sleep=clock.sleep, **limits)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def prefix() -> str:
    return f"test:pacing:{uuid.uuid4().hex}"


@pytest.fixture
async def redis_client(prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    keys = [key async for key in client.scan_iter(f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def finish_times(pacer: Pacer, sends: list[tuple[str, str]]) -> list[float]:
    """Acquire for every (team, channel) at once; return when each was let through."""
    started = time.monotonic()

    async def one(team: str, channel: str) -> float:
        await pacer.acquire(team, channel)
        return time.monotonic() - started

    return sorted(await asyncio.gather(*(one(t, c) for t, c in sends)))


def on_schedule(times: list[float], gap: float) -> bool:
    """The i-th send went no earlier than i gaps after the burst began (sleeps never end early,
    so this holds however late the loop wakes up)."""
    return all(t >= i * gap - 0.003 for i, t in enumerate(times))


async def burst_on(clock: FakeClock, pacer: Pacer, sends: list[tuple[str, str]]) -> list[float]:
    """A burst arriving at one instant of the fake clock: when each send is let through."""
    waits = sorted(await asyncio.gather(*(pacer.acquire(t, c) for t, c in sends)))
    assert sorted(clock.slept) == [w for w in waits if w > 0]  # each wait was slept, once
    return waits


def evenly(gap: float, count: int) -> list[Any]:
    """0, gap, 2 gaps, ...: exact but for the nanosecond rounding of the gaps."""
    return [pytest.approx(i * gap, abs=1e-8) for i in range(count)]


async def test_in_process_real_clock_smoke() -> None:
    # The real clock and sleep: the schedule the fake clock checks exactly below, give or
    # take the loop's wake-up latency (with room for a busy machine waking sleepers late).
    times = await finish_times(InProcessPacer(**LIMITS), [("t", "c")] * 5)
    assert on_schedule(times, CHANNEL_GAP)
    assert times[-1] < 4 * CHANNEL_GAP + 0.5  # paced, not stalled


async def test_in_process_spaces_one_channel(clock: FakeClock) -> None:
    times = await burst_on(clock, fake_clock_pacer(clock, **LIMITS), [("t", "c")] * 5)
    assert times[0] == 0  # the first send does not wait
    assert on_schedule(times, CHANNEL_GAP)
    assert times == evenly(CHANNEL_GAP, 5)  # paced, not stalled


async def test_in_process_team_limit_spans_its_channels(clock: FakeClock) -> None:
    pacer = fake_clock_pacer(clock, **LIMITS)
    times = await burst_on(clock, pacer, [("t", f"c{i}") for i in range(5)])
    assert on_schedule(times, TEAM_GAP)
    assert not on_schedule(times, CHANNEL_GAP)  # different channels need not wait a full gap
    assert times == evenly(TEAM_GAP, 5)
    # Another team has its own budget: it waits only for the tenant's (much shorter) gap.
    assert await pacer.acquire("other", "c0") < 0.01


async def test_in_process_tenant_limit_spans_teams(clock: FakeClock) -> None:
    pacer = fake_clock_pacer(
        clock, channel_per_second=1000, team_per_second=1000, tenant_per_second=20
    )
    times = await burst_on(clock, pacer, [(f"t{i}", "c") for i in range(4)])
    assert on_schedule(times, CHANNEL_GAP)
    assert times == evenly(CHANNEL_GAP, 4)  # 20 per second, like LIMITS' channels


async def test_acquire_reports_its_wait(clock: FakeClock) -> None:
    pacer = fake_clock_pacer(clock, **LIMITS)
    assert await pacer.acquire("t", "c") == 0
    waited = await pacer.acquire("t", "c")
    assert CHANNEL_GAP * 0.5 < waited <= CHANNEL_GAP * 1.05
    assert waited == pytest.approx(CHANNEL_GAP, abs=1e-8)
    assert clock.slept == [waited]


async def test_in_process_budget_frees_up_over_time(clock: FakeClock) -> None:
    pacer = fake_clock_pacer(clock, **LIMITS)
    await pacer.acquire("t", "c")
    clock.advance(CHANNEL_GAP / 4)
    assert await pacer.acquire("t", "c") == pytest.approx(CHANNEL_GAP * 3 / 4, abs=1e-8)
    clock.advance(2 * CHANNEL_GAP)  # more than a gap past the second booking
    assert await pacer.acquire("t", "c") == 0


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        InProcessPacer(channel_per_second=0)
    with pytest.raises(ValueError):
        InProcessPacer(safety_factor=1.5)


async def test_redis_pacers_share_one_budget(prefix: str, redis_client: aioredis.Redis) -> None:
    # Two pacers stand for two `serve` processes: their sends interleave on one schedule.
    first = RedisPacer(REDIS_URL, prefix=prefix, **LIMITS)
    second = RedisPacer(redis_client, prefix=prefix, **LIMITS)
    started = time.monotonic()

    async def send(pacer: Pacer) -> float:
        await pacer.acquire("team", "channel")
        return time.monotonic() - started

    times = sorted(await asyncio.gather(*(send(p) for p in [first, second] * 3)))
    assert on_schedule(times, CHANNEL_GAP)
    await first.aclose()


async def test_redis_keys_expire_and_prefixes_are_separate(
    prefix: str, redis_client: aioredis.Redis
) -> None:
    pacer = RedisPacer(redis_client, prefix=prefix, **LIMITS)
    await pacer.acquire("team", "channel", tenant_id="tenant-a")
    keys = sorted([key.decode() async for key in redis_client.scan_iter(f"{prefix}*")])
    assert keys == [
        f"{prefix}:{{tenant-a}}",
        f"{prefix}:{{tenant-a}}:channel:team:channel",
        f"{prefix}:{{tenant-a}}:team:team",
    ]
    for key in keys:
        assert 0 < await redis_client.pttl(key) <= 2000
    assert await pacer.acquire("team", "channel", tenant_id="tenant-a") > 0
    other = RedisPacer(redis_client, prefix=f"{prefix}:other", **LIMITS)
    assert await other.acquire("team", "channel", tenant_id="tenant-a") == 0


async def age_bookings(redis_client: aioredis.Redis, prefix: str, seconds: float) -> None:
    """Move every booking under `prefix` `seconds` into the past. The Redis pacer books on
    Redis' own clock, which no test can move: to the pacer this is that much time passing."""
    shift = round(seconds * 1_000_000)  # bookings are in microseconds
    async for key in redis_client.scan_iter(f"{prefix}*"):
        booked = await redis_client.zrange(key, 0, -1, withscores=True)
        ttl = await redis_client.pttl(key)
        aged = {f"{score - shift:.0f}": score - shift for _, score in booked}
        async with redis_client.pipeline(transaction=True) as pipe:
            pipe.delete(key).zadd(key, aged)
            if ttl > 0:
                pipe.pexpire(key, ttl)
            await pipe.execute()


async def test_redis_budget_frees_up_over_time(prefix: str, redis_client: aioredis.Redis) -> None:
    pacer = RedisPacer(redis_client, prefix=prefix, **LIMITS)
    await pacer.acquire("team", "channel")
    await age_bookings(redis_client, prefix, CHANNEL_GAP * 1.2)
    assert await pacer.acquire("team", "channel") == 0


def test_settings_choose_the_pacer() -> None:
    assert isinstance(pacer_from_settings(Settings(redis_url=None)), InProcessPacer)
    redis_pacer = pacer_from_settings(Settings(redis_url=REDIS_URL))
    assert isinstance(redis_pacer, RedisPacer)
    assert redis_pacer.intervals == pytest.approx((1 / 0.9, 1 / 3.6, 1 / 45))
    # Nothing is process-wide: each call is a new budget, so sharing one means passing one.
    settings = Settings(redis_url=None)
    assert pacer_from_settings(settings) is not pacer_from_settings(settings)


# -- schedules under Teams' real limits, booked with reserve() so nothing sleeps ---------------

# Ten sends per channel need nine channel gaps (1 / 0.9 s), and a team's second channel can
# start one team gap (1 / 3.6 s) after its first: no order can finish sooner.
IDEAL = 9 / 0.9 + 1 / 3.6
# Slack for a tenant gap between teams and for measuring bookings on our clock, not Redis.
SLACK = 0.15
TWO_CHANNELS = [("t", "a")] * 10 + [("t", "b")] * 10
TWO_TEAMS = [(team, f"{team}-{c}") for team in ("t1", "t2") for c in "ab" for _ in range(10)]


def shuffled(sends: list[tuple[str, str]], seed: int = 7) -> list[tuple[str, str]]:
    sends = list(sends)
    random.Random(seed).shuffle(sends)
    return sends


async def schedule(
    pacer: Pacer, sends: list[tuple[str, str]], clock: Callable[[], float] = time.monotonic
) -> list[float]:
    """Book each send in order; return when each may go, in seconds after the first one.
    `clock` must be the one the pacer books on (for Redis: near enough to Redis' own)."""
    booked = []
    for team, channel in sends:
        before = clock()
        booked.append(before + await pacer.reserve(team, channel, "tenant"))
    return [t - min(booked) for t in booked]


def busiest_second(times: list[float]) -> int:
    """The most sends in any closed 1-second window (stricter than Microsoft's half-open one)."""
    times = sorted(times)
    return max(bisect_right(times, t + 1.0) - i for i, t in enumerate(times))


def assert_within_limits(sends: list[tuple[str, str]], times: list[float]) -> None:
    def per(key: Callable[[tuple[str, str]], object]) -> list[list[float]]:
        groups: dict[object, list[float]] = {}
        for send, t in zip(sends, times, strict=True):
            groups.setdefault(key(send), []).append(t)
        return list(groups.values())

    assert max(busiest_second(ts) for ts in per(lambda send: send)) <= 1
    assert max(busiest_second(ts) for ts in per(lambda send: send[0])) <= 4
    assert busiest_second(times) <= 50


@pytest.fixture(params=["in-process", "redis"])
def teams_pacer(request: pytest.FixtureRequest, prefix: str) -> tuple[Pacer, Callable[[], float]]:
    """A pacer under Teams' real limits, and the clock it books on."""
    if request.param == "in-process":
        clock = FakeClock()
        return fake_clock_pacer(clock), clock.monotonic
    return RedisPacer(request.getfixturevalue("redis_client"), prefix=prefix), time.monotonic


@pytest.mark.parametrize(
    "sends",
    [TWO_CHANNELS, shuffled(TWO_CHANNELS), shuffled(TWO_TEAMS), shuffled(TWO_TEAMS, seed=3)],
    ids=["grouped", "shuffled", "two-teams-shuffled", "two-teams-shuffled-again"],
)
async def test_any_arrival_order_finishes_as_fast_as_the_limits_allow(
    teams_pacer: tuple[Pacer, Callable[[], float]], sends: list[tuple[str, str]]
) -> None:
    # One channel's late bookings must not push back its siblings' earlier free team slots.
    pacer, clock = teams_pacer
    times = await schedule(pacer, sends, clock)
    assert IDEAL - SLACK <= max(times) <= IDEAL + SLACK
    assert_within_limits(sends, times)


async def test_a_send_fills_a_hole_left_by_another_channel(clock: FakeClock) -> None:
    pacer = fake_clock_pacer(clock)
    await schedule(pacer, [("t", "a")] * 10, clock.monotonic)
    # The team is free long before channel a's last booking: its first hole.
    assert await pacer.reserve("t", "b", "tenant") <= 1 / 3.6 + 0.01
    assert await pacer.reserve("t", "c", "tenant") == pytest.approx(2 / 3.6, abs=1e-8)


async def test_long_queue_on_one_channel_stays_evenly_spaced(clock: FakeClock) -> None:
    # Past MAX_MOVES bookings the search gives up and appends: still exactly one gap apart.
    sends = [("t", "c")] * (MAX_MOVES + 50)
    pacer = fake_clock_pacer(
        clock, channel_per_second=100, team_per_second=1e5, tenant_per_second=1e5
    )
    times = sorted(await schedule(pacer, sends, clock.monotonic))
    gap = 1 / (100 * 0.9)
    assert all(b - a == pytest.approx(gap, abs=1e-6) for a, b in pairwise(times))


async def test_two_redis_pacers_never_exceed_a_limit(
    prefix: str, redis_client: aioredis.Redis
) -> None:
    # Two instances book a shuffled burst concurrently; Redis keeps the bookings themselves.
    pacers = [RedisPacer(REDIS_URL, prefix=prefix), RedisPacer(redis_client, prefix=prefix)]
    sends = shuffled(TWO_TEAMS, seed=11)
    await asyncio.gather(
        *(pacers[i % 2].reserve(team, channel, "tenant") for i, (team, channel) in enumerate(sends))
    )
    await pacers[0].aclose()

    async def booked(key: str) -> list[float]:
        return [score / 1e6 for _, score in await redis_client.zrange(key, 0, -1, withscores=True)]

    base = f"{prefix}:{{tenant}}"
    channels = sorted(set(sends))
    for team, channel in channels:
        assert busiest_second(await booked(f"{base}:channel:{team}:{channel}")) == 1
    # The tenant key forgets bookings older than its own gap: gather the teams' instead.
    every = []
    for team in ("t1", "t2"):
        times = await booked(f"{base}:team:{team}")
        assert len(times) == 20 and busiest_second(times) <= 4
        every += times
    assert busiest_second(every) <= 50
    assert max(every) - min(every) <= IDEAL + SLACK
