"""A burst of Teams sends through our API against the emulator's enforced Teams limits.

N messages to K channels (in 1 or 2 teams) are fired at once; our pacer should spread them so
that callers never see a 429, nothing is lost and nothing is stored twice, at close to the
rate the limits allow. Run from the repository root: `python -m bench.send_burst --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import httpx

from bench.common import (
    DEFAULT_REDIS_URL,
    Stack,
    StackOptions,
    bench_stack,
    log,
    print_table,
    run_main,
)
from tests.utils.flows import ApiUser

API = "/auth/integrations/microsoft"
REQUEST_TIMEOUT = 90.0
# Teams limits the emulator enforces by default (tracecat/emulator/config.py: Throttling).
CHANNEL_PER_SECOND = 1
TEAM_PER_SECOND = 4
TENANT_PER_SECOND = 50


@dataclass(frozen=True)
class Target:
    team_id: str
    channel_id: str


@dataclass
class Outcome:
    marker: str
    status: str
    finished_at: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40, help="N messages (default 40)")
    parser.add_argument("--channels", type=int, default=4, help="K channels (default 4)")
    parser.add_argument("--teams", type=int, choices=(1, 2), default=2, help="spread over")
    parser.add_argument("--instances", type=int, default=1, help="`serve` processes")
    parser.add_argument("--users", type=int, default=1, help="API users sending (round robin)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default=None)
    parser.add_argument("--redis-url", default=None, help=f"default {DEFAULT_REDIS_URL} if I>1")
    args = parser.parse_args()
    if min(args.messages, args.channels, args.instances, args.users) < 1:
        parser.error("--messages, --channels, --instances and --users must be at least 1")
    # Several instances must share the database and the pacing budget.
    args.database = args.database or ("postgresql" if args.instances > 1 else "sqlite")
    if args.instances > 1 and not args.redis_url:
        args.redis_url = DEFAULT_REDIS_URL
    return args


def pick_targets(
    client: httpx.Client, base_url: str, user: ApiUser, args: argparse.Namespace
) -> list[Target]:
    """K channels through our own API: round robin over the `--teams` teams with most channels."""
    teams = client.get(f"{base_url}{API}/teams", headers=user.headers).raise_for_status().json()
    channels = {
        team["id"]: client.get(f"{base_url}{API}/teams/{team['id']}/channels", headers=user.headers)
        .raise_for_status()
        .json()
        for team in teams
    }
    chosen = sorted(channels, key=lambda team_id: -len(channels[team_id]))[: args.teams]
    targets = []
    for index in range(args.channels):
        team_id = chosen[index % len(chosen)]
        slot = index // len(chosen)
        if slot >= len(channels[team_id]):
            raise SystemExit(f"too few channels for --channels {args.channels}: lower it")
        targets.append(Target(team_id, channels[team_id][slot]["id"]))
    return targets


def team_count(targets: list[Target]) -> int:
    return len({target.team_id for target in targets})


def minimum_seconds(counts: Counter, limit: int) -> int:
    """Under a sliding 1-second window of `limit` requests, n requests on one key need at least
    ceil(n / limit) - 1 seconds between the first and the last."""
    return max((math.ceil(n / limit) - 1 for n in counts.values()), default=0)


def theoretical_seconds(targets: list[Target], messages: int) -> int:
    """The shortest time the limits allow for this burst: the tightest channel, team or tenant."""
    per_channel: Counter = Counter(targets[i % len(targets)] for i in range(messages))
    per_team: Counter = Counter()
    for target, count in per_channel.items():
        per_team[target.team_id] += count
    return max(
        minimum_seconds(per_channel, CHANNEL_PER_SECOND),
        minimum_seconds(per_team, TEAM_PER_SECOND),
        minimum_seconds(Counter({"tenant": messages}), TENANT_PER_SECOND),
    )


def steady_rate(targets: list[Target]) -> float:
    """Messages per second the limits sustain for this layout once a burst is long."""
    per_team = Counter(target.team_id for target in set(targets))
    rate = sum(min(TEAM_PER_SECOND, n * CHANNEL_PER_SECOND) for n in per_team.values())
    return float(min(rate, TENANT_PER_SECOND))


async def send_one(
    client: httpx.AsyncClient, base_url: str, user: ApiUser, target: Target, marker: str
) -> Outcome:
    url = f"{base_url}{API}/teams/{target.team_id}/channels/{target.channel_id}/messages"
    try:
        response = await client.post(url, headers=user.headers, json={"content": marker})
        status = str(response.status_code)
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return Outcome(marker, status, time.perf_counter())


async def fire(stack: Stack, targets: list[Target], markers: list[str]) -> tuple[float, list]:
    """All sends at once, spread over instances and users; returns the start time and outcomes."""
    limits = httpx.Limits(max_connections=len(markers) + 10)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits) as client:
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(
                send_one(
                    client,
                    stack.server_urls[i % len(stack.server_urls)],
                    stack.users[i % len(stack.users)],
                    targets[i % len(targets)],
                    marker,
                )
                for i, marker in enumerate(markers)
            )
        )
    return started, outcomes


def stored_counts(stack: Stack, markers: list[str]) -> Counter:
    """How many times the emulator stored each marker, wherever it sits in a message's body."""
    counts: Counter = Counter({marker: 0 for marker in markers})
    pattern = re.compile("|".join(re.escape(marker) for marker in markers))
    for message in stack.emulator.control("GET", "/messages")["messages"]:
        body = message["chat_message"].get("body") or {}
        for found in set(pattern.findall(body.get("content", ""))):
            counts[found] += 1
    return counts


def run(args: argparse.Namespace) -> None:
    options = StackOptions(args.database, args.instances, args.users, args.redis_url)
    with bench_stack(options) as stack, httpx.Client(timeout=30.0) as client:
        targets = pick_targets(client, stack.server_urls[0], stack.users[0], args)
        # Let the listing's Graph requests leave the emulator's 1-second windows.
        time.sleep(1.1)
        throttled_before = stack.emulator.control("GET", "/stats")["throttled"]
        run_id = uuid.uuid4().hex[:8]
        # Delimited so that no marker is a prefix of another.
        markers = [f"[bench {run_id} #{i}]" for i in range(args.messages)]
        log(
            f"firing {args.messages} sends to {len(targets)} channel(s) in "
            f"{team_count(targets)} team(s) over {len(stack.server_urls)} "
            f"instance(s) ({args.database}, redis={'yes' if args.redis_url else 'no'})"
        )
        started, outcomes = asyncio.run(fire(stack, targets, markers))
        throttled = stack.emulator.control("GET", "/stats")["throttled"] - throttled_before
        report(args, targets, started, outcomes, throttled, stored_counts(stack, markers))


def report(
    args: argparse.Namespace,
    targets: list[Target],
    started: float,
    outcomes: list[Outcome],
    emulator_429: int,
    stored: Counter,
) -> None:
    statuses = Counter(outcome.status for outcome in outcomes)
    delivered = [o for o in outcomes if o.status == "201"]
    elapsed = max((o.finished_at for o in delivered), default=started) - started
    rate = len(delivered) / elapsed if elapsed > 0 else 0.0
    minimum = theoretical_seconds(targets, args.messages)
    # With no wait needed at all the limits allow any rate: no meaningful ratio then.
    max_rate = args.messages / minimum if minimum else math.inf
    ratio = rate / max_rate if minimum else math.nan
    duplicates = sum(count - 1 for count in stored.values() if count > 1)
    lost = sum(1 for count in stored.values() if count == 0)
    non_201 = {status: n for status, n in sorted(statuses.items()) if status != "201"}
    rows = [
        (
            "layout",
            f"{args.messages} msgs, {len(targets)} channels, {team_count(targets)} teams, "
            f"{args.instances} instance(s)",
        ),
        ("delivered (201)", f"{len(delivered)} in {elapsed:.2f}s"),
        ("delivered msgs/s", f"{rate:.2f}"),
        ("max msgs/s for this burst", f"{max_rate:.2f} (limits need >= {minimum}s)"),
        ("steady-state limit msgs/s", f"{steady_rate(targets):.2f}"),
        ("ratio delivered/max", f"{ratio:.2f}"),
        ("429s seen by callers", f"{statuses.get('429', 0)} (goal 0)"),
        (
            "other non-201 answers",
            non_201 and ", ".join(f"{k}: {v}" for k, v in non_201.items()) or "none",
        ),
        ("429s issued by emulator", emulator_429),
        ("duplicates stored", f"{duplicates} (goal 0)"),
        ("lost (never stored)", f"{lost} (goal 0)"),
    ]
    figures = {
        "delivered_per_s": f"{rate:.2f}",
        "max_per_s": f"{max_rate:.2f}",
        "ratio": f"{ratio:.2f}",
        "caller_429": statuses.get("429", 0),
        "non_201": sum(non_201.values()),
        "emulator_429": emulator_429,
        "duplicates": duplicates,
        "lost": lost,
    }
    print_table(rows, figures)


def main() -> None:
    run(parse_args())


if __name__ == "__main__":
    run_main(main)
