"""Pacers spread sends under Teams' limits, in one process or shared through a real Redis."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable
from itertools import pairwise

import pytest
import redis.asyncio as aioredis

from tracecat.auth.integrations.pacing import (
    MAX_MOVES,
    InProcessPacer,
    Pacer,
    RedisPacer,
    default_pacer,
    pacer_from_settings,
)
from tracecat.config import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"
# 20 sends per second per channel, 40 per team: short waits, easy to tell apart from zero.
LIMITS = {"channel_per_second": 20.0, "team_per_second": 40.0, "tenant_per_second": 1000.0}
CHANNEL_GAP = 1 / (20.0 * 0.9)
TEAM_GAP = 1 / (40.0 * 0.9)


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


async def test_in_process_spaces_one_channel():
    times = await finish_times(InProcessPacer(**LIMITS), [("t", "c")] * 5)
    assert times[0] < 0.02  # the first send does not wait
    assert on_schedule(times, CHANNEL_GAP)
    assert times[-1] < 4 * CHANNEL_GAP + 0.1  # paced, not stalled


async def test_in_process_team_limit_spans_its_channels():
    pacer = InProcessPacer(**LIMITS)
    times = await finish_times(pacer, [("t", f"c{i}") for i in range(5)])
    assert on_schedule(times, TEAM_GAP)
    assert not on_schedule(times, CHANNEL_GAP)  # different channels need not wait a full gap
    # Another team has its own budget.
    assert await pacer.acquire("other", "c0") < 0.01


async def test_in_process_tenant_limit_spans_teams():
    pacer = InProcessPacer(channel_per_second=1000, team_per_second=1000, tenant_per_second=20)
    times = await finish_times(pacer, [(f"t{i}", "c") for i in range(4)])
    assert on_schedule(times, CHANNEL_GAP)


async def test_acquire_reports_its_wait():
    pacer = InProcessPacer(**LIMITS)
    assert await pacer.acquire("t", "c") == 0
    waited = await pacer.acquire("t", "c")
    assert CHANNEL_GAP * 0.5 < waited <= CHANNEL_GAP * 1.05


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        InProcessPacer(channel_per_second=0)
    with pytest.raises(ValueError):
        InProcessPacer(safety_factor=1.5)


async def test_redis_pacers_share_one_budget(prefix: str, redis_client: aioredis.Redis):
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
):
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


async def test_redis_budget_frees_up_over_time(prefix: str, redis_client: aioredis.Redis):
    pacer = RedisPacer(redis_client, prefix=prefix, **LIMITS)
    await pacer.acquire("team", "channel")
    await asyncio.sleep(CHANNEL_GAP * 1.2)
    assert await pacer.acquire("team", "channel") == 0


def test_settings_choose_the_pacer():
    assert isinstance(pacer_from_settings(Settings(redis_url=None)), InProcessPacer)
    redis_pacer = pacer_from_settings(Settings(redis_url=REDIS_URL))
    assert isinstance(redis_pacer, RedisPacer)
    assert redis_pacer.intervals == pytest.approx((1 / 0.9, 1 / 3.6, 1 / 45))
    # Every client of the process shares one default pacer.
    settings = Settings(redis_url=None)
    assert default_pacer(settings) is default_pacer(Settings(redis_url=None))


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


async def schedule(pacer: Pacer, sends: list[tuple[str, str]]) -> list[float]:
    """Book each send in order; return when each may go, in seconds after the first one."""
    booked = []
    for team, channel in sends:
        before = time.monotonic()
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
def teams_pacer(request: pytest.FixtureRequest, prefix: str) -> Pacer:
    if request.param == "in-process":
        return InProcessPacer()
    return RedisPacer(request.getfixturevalue("redis_client"), prefix=prefix)


@pytest.mark.parametrize(
    "sends",
    [TWO_CHANNELS, shuffled(TWO_CHANNELS), shuffled(TWO_TEAMS), shuffled(TWO_TEAMS, seed=3)],
    ids=["grouped", "shuffled", "two-teams-shuffled", "two-teams-shuffled-again"],
)
async def test_any_arrival_order_finishes_as_fast_as_the_limits_allow(
    teams_pacer: Pacer, sends: list[tuple[str, str]]
):
    # One channel's late bookings must not push back its siblings' earlier free team slots.
    times = await schedule(teams_pacer, sends)
    assert IDEAL - SLACK <= max(times) <= IDEAL + SLACK
    assert_within_limits(sends, times)


async def test_a_send_fills_a_hole_left_by_another_channel():
    pacer = InProcessPacer()
    await schedule(pacer, [("t", "a")] * 10)
    # The team is free long before channel a's last booking.
    assert await pacer.reserve("t", "b", "tenant") <= 1 / 3.6 + 0.01


async def test_long_queue_on_one_channel_stays_evenly_spaced():
    # Past MAX_MOVES bookings the search gives up and appends: still exactly one gap apart.
    sends = [("t", "c")] * (MAX_MOVES + 50)
    pacer = InProcessPacer(channel_per_second=100, team_per_second=1e5, tenant_per_second=1e5)
    times = sorted(await schedule(pacer, sends))
    gap = 1 / (100 * 0.9)
    assert all(b - a == pytest.approx(gap, abs=1e-3) for a, b in pairwise(times))


async def test_two_redis_pacers_never_exceed_a_limit(prefix: str, redis_client: aioredis.Redis):
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
