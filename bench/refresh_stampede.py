"""Refresh stampede: many concurrent calls, over several instances, all finding tokens stale.

Every user's access token is inside our refresh margin when N calls of
GET /auth/integrations/microsoft/teams arrive at once, spread over users and `serve` instances
sharing one PostgreSQL database. The emulator rotates refresh tokens strictly (a refresh token
used twice fails), so each grant must be refreshed exactly once across all instances. Measured:
refreshes per grant, failed calls, and the latency the stampede adds over the same calls once
tokens are warm.

Run from the repository root: `python -m bench.refresh_stampede --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import (
    POSTGRES_ADMIN_URL,
    Emulator,
    Process,
    StackOptions,
    connect_user,
    create_user,
    log,
    print_table,
    run_main,
    server_environment,
    start_emulator,
    start_servers,
)
from tests.utils.flows import ApiUser
from tracecat.emulator.constants import TENANT_DOMAIN

TEAMS_PATH = "/auth/integrations/microsoft/teams"
# Inside our 300 s refresh margin (TRACECAT_REFRESH_MARGIN_SECONDS): every first call refreshes.
STALE_LIFETIME = 200
# The emulator's default, outside the margin: a refreshed token is not refreshed again.
FRESH_LIFETIME = 3599
# Per call and per round: a stuck refresh shows up as timeouts, never as a hung bench.
CALL_TIMEOUT = 45.0
ROUND_TIMEOUT = 60.0
SETUP_THREADS = 8
# The closing line of a Python traceback, e.g. "sqlalchemy.exc.TimeoutError: QueuePool ...".
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Timeout)\b.*$", re.MULTILINE)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=3, help="`serve` processes, one db")
    parser.add_argument("--users", type=int, default=10, help="each with its own Microsoft user")
    parser.add_argument("--calls", type=int, default=300, help="fired at once, per round")
    args = parser.parse_args()
    if args.instances < 1 or args.users < 1 or args.calls < args.users:
        parser.error("--instances and --users must be at least 1, --calls at least --users")
    return args


@dataclass
class Setup:
    emulator: Emulator
    server_urls: list[str]
    # Our API user and the Microsoft account it connected: stats are keyed by the latter.
    users: list[tuple[ApiUser, str]]
    servers: list[Process]


def postgres_headroom() -> tuple[int, int]:
    """(max_connections, connections open now): the server may be shared, and each instance's
    pool can open 30 (tracecat/db.py), so "too many clients" may be someone else's doing."""
    import asyncpg

    async def query() -> tuple[int, int]:
        connection = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            limit = int(await connection.fetchval("SHOW max_connections"))
            return limit, int(await connection.fetchval("SELECT count(*) FROM pg_stat_activity"))
        finally:
            await connection.close()

    return asyncio.run(query())


@contextmanager
def stampede_stack(args: argparse.Namespace) -> Iterator[Setup]:
    """bench_stack's pieces, but with the emulator configured before anyone connects (the
    tokens issued at connect time must already be short-lived) and one Microsoft account per
    user, since the emulator counts refreshes per account and has only 3 demo users."""
    with ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tracecat-bench-")))
        emulator = start_emulator(stack, work_dir)
        emulator.control(
            "PATCH",
            "/config",
            {
                "refresh_token_rotation": "strict",
                # Graph's Teams limits would add Retry-After waits to both rounds, not refreshes.
                "throttling": {"enabled": False},
                "access_token_lifetime": STALE_LIFETIME,
            },
        )
        limit, in_use = postgres_headroom()
        log(f"PostgreSQL: max_connections={limit}, {in_use} open before we start")
        options = StackOptions(database="postgresql", instances=args.instances)
        env = server_environment(emulator, work_dir, options, stack)
        # Sweeper off: it would refresh the stale tokens before the stampede does.
        env["TRACECAT_REFRESH_INTERVAL_SECONDS"] = "0"
        urls, processes = start_servers(stack, env, args.instances, work_dir)

        def enrol(index: int) -> tuple[ApiUser, str]:
            user = create_user(env, f"stampede-user-{index}@example.com")
            ms_email = f"stampede.user{index}@{TENANT_DOMAIN}"
            connect_user(urls[index % len(urls)], user, ms_email)
            return user, ms_email

        # `users create` is a CLI start each: in parallel, setup stays a few seconds.
        with ThreadPoolExecutor(min(SETUP_THREADS, args.users)) as pool:
            users = list(pool.map(enrol, range(args.users)))
        log(f"{len(users)} users created and connected (token lifetime {STALE_LIFETIME}s)")
        emulator.control("PATCH", "/config", {"access_token_lifetime": FRESH_LIFETIME})
        yield Setup(emulator, urls, users, processes)


# --- one round of concurrent calls -----------------------------------------------------------


@dataclass
class Call:
    status: str
    seconds: float


def plan(setup: Setup, calls: int) -> list[tuple[str, ApiUser]]:
    """Call i goes to user i mod U; the instance also shifts every U calls, so each user's
    calls reach every instance even when U is a multiple of the instance count."""
    users, urls = setup.users, setup.server_urls
    return [
        (urls[(i + i // len(users)) % len(urls)], users[i % len(users)][0]) for i in range(calls)
    ]


async def one_call(client: httpx.AsyncClient, url: str, user: ApiUser, go: asyncio.Event) -> Call:
    await go.wait()
    started = time.perf_counter()
    try:
        response = await client.get(f"{url}{TEAMS_PATH}", headers=user.headers)
        status = str(response.status_code)
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return Call(status, time.perf_counter() - started)


async def fire(setup: Setup, calls: int) -> list[Call]:
    targets = plan(setup, calls)
    limits = httpx.Limits(max_connections=calls, max_keepalive_connections=calls)
    # A new client per round: both rounds open their connections the same way, and none is
    # reused after idling past uvicorn's 5 s keep-alive (closed under us: a ReadError).
    async with httpx.AsyncClient(limits=limits, timeout=CALL_TIMEOUT) as client:
        go = asyncio.Event()
        tasks = [asyncio.create_task(one_call(client, url, user, go)) for url, user in targets]
        await asyncio.sleep(0)  # every task is parked on `go`, so they all leave together
        go.set()
        # asyncio.wait, not wait_for(gather): a Ctrl-C then leaves no orphan gather future
        # to print "exception was never retrieved" over the clean-up messages.
        _done, pending = await asyncio.wait(tasks, timeout=ROUND_TIMEOUT)
        for task in pending:
            task.cancel()
        if pending:
            raise RuntimeError(f"{len(pending)} calls still running after {ROUND_TIMEOUT:.0f}s")
        return [task.result() for task in tasks]


# --- figures ---------------------------------------------------------------------------------


def percentile(samples: list[float], p: int) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def refreshes(setup: Setup) -> dict[str, Counter[str]]:
    """refresh_token requests per Microsoft account, by outcome (success, invalid_grant...)."""
    by_user = setup.emulator.control("GET", "/stats")["token_requests_by_user"]
    return {
        ms_email: Counter(by_user.get(ms_email, {}).get("refresh_token", {}))
        for _, ms_email in setup.users
    }


def server_errors(setup: Setup) -> Counter[str]:
    """The exceptions the instances logged (last line of each traceback), to explain failures."""
    errors: Counter[str] = Counter()
    for process in setup.servers:
        text = process.log_path.read_text(errors="replace")
        errors.update(match.group(0)[:160] for match in EXCEPTION_LINE.finditer(text))
    return errors


def report(
    args: argparse.Namespace,
    per_grant: dict[str, Counter[str]],
    warm_refreshes: int,
    stampede: list[Call],
    warm: list[Call],
) -> None:
    totals = [sum(outcomes.values()) for outcomes in per_grant.values()]
    not_one = sum(1 for total in totals if total != 1)
    refused = sum(outcomes.get("invalid_grant", 0) for outcomes in per_grant.values())
    failures = Counter(call.status for call in [*stampede, *warm] if call.status != "200")
    failed_stampede = sum(1 for call in stampede if call.status != "200")
    failed_warm = sum(1 for call in warm if call.status != "200")
    # Latency over every call, failed ones included: a timeout is latency too.
    ms = {
        name: {p: percentile([c.seconds for c in calls], p) * 1000 for p in (50, 99)}
        for name, calls in (("stampede", stampede), ("warm", warm))
    }
    added = {p: ms["stampede"][p] - ms["warm"][p] for p in (50, 99)}
    rows = [
        ("layout", f"{args.calls} calls, {args.users} users, {args.instances} instances, pg"),
        ("refreshes per grant min/max", f"{min(totals)}/{max(totals)} (goal 1/1)"),
        ("grants with refreshes != 1", f"{not_one} (goal 0)"),
        ("refreshes refused (invalid_grant)", refused),
        ("refreshes during warm round", f"{warm_refreshes} (goal 0)"),
        ("failed calls stampede/warm", f"{failed_stampede}/{failed_warm} (goal 0/0)"),
        ("failed by status", ", ".join(f"{k}: {v}" for k, v in sorted(failures.items())) or "none"),
        ("stampede p50/p99 ms", f"{ms['stampede'][50]:.1f}/{ms['stampede'][99]:.1f}"),
        ("warm p50/p99 ms", f"{ms['warm'][50]:.1f}/{ms['warm'][99]:.1f}"),
        ("added p50/p99 ms", f"{added[50]:+.1f}/{added[99]:+.1f}"),
    ]
    figures = {
        "refresh_min": min(totals),
        "refresh_max": max(totals),
        "grants_not_1": not_one,
        "invalid_grant": refused,
        "warm_refreshes": warm_refreshes,
        "failed_stampede": failed_stampede,
        "failed_warm": failed_warm,
        "stampede_p50_ms": f"{ms['stampede'][50]:.1f}",
        "stampede_p99_ms": f"{ms['stampede'][99]:.1f}",
        "warm_p50_ms": f"{ms['warm'][50]:.1f}",
        "warm_p99_ms": f"{ms['warm'][99]:.1f}",
        "added_p50_ms": f"{added[50]:.1f}",
        "added_p99_ms": f"{added[99]:.1f}",
    }
    print_table(rows, figures)


def run(args: argparse.Namespace) -> None:
    with stampede_stack(args) as setup:
        before = refreshes(setup)
        if any(before.values()):
            raise RuntimeError(f"tokens were refreshed before the stampede: {before}")
        log(f"stampede: {args.calls} calls at once over {len(setup.server_urls)} instances")
        stampede = asyncio.run(fire(setup, args.calls))
        per_grant = refreshes(setup)
        log("warm round: the same calls again")
        warm = asyncio.run(fire(setup, args.calls))
        after = refreshes(setup)
        warm_refreshes = sum(
            sum(after[email].values()) - sum(per_grant[email].values()) for email in after
        )
        for line, count in server_errors(setup).most_common(5):
            log(f"instances logged {count}x: {line}")
        report(args, per_grant, warm_refreshes, stampede, warm)


def main() -> None:
    run(parse_args())


if __name__ == "__main__":
    run_main(main)
