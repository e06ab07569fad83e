"""What our API costs on top of what it wraps.

(a) GET /auth/integrations/microsoft/teams against a bare FastAPI forwarder making the same
    Graph calls (/me/joinedTeams, every page; `bench/forwarder.py`), and against those calls
    made directly; one async httpx client for all three, interleaved.
(b) GET /auth/integrations/microsoft/status against the bare GET /healthz, loaded with wrk.

Run from the repository root: `python -m bench.overhead --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import msal

from bench.common import (
    Emulator,
    Stack,
    StackOptions,
    bench_stack,
    log,
    print_table,
    run_main,
    spawn,
    wait_until_ready,
)
from tests.utils.flows import query, sign_in
from tests.utils.server import clean_environment, free_port
from tracecat.auth.integrations.microsoft import MicrosoftOAuthProvider
from tracecat.emulator.constants import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_USERS

API = "/auth/integrations/microsoft"
# Page size for /me/joinedTeams: the demo user's 3 teams then take 2 pages on both paths.
JOINED_TEAMS_PAGE = 2
# Any loopback redirect works for the emulator's demo app; nothing listens there.
DIRECT_REDIRECT_URI = "http://127.0.0.1:9/bench-callback"
LATENCY_GOAL = 1.1  # against the bare forwarder
THROUGHPUT_GOAL = 0.5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--requests", type=int, default=200, help="per side, sequential")
    parser.add_argument("--warmup", type=int, default=20, help="per side, not measured")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--wrk-connections", type=int, default=16)
    parser.add_argument("--wrk-seconds", type=int, default=5)
    args = parser.parse_args()
    if args.requests < 1 or args.warmup < 0 or args.wrk_seconds < 1:
        parser.error("--requests and --wrk-seconds must be at least 1, --warmup at least 0")
    return args


# --- (a) latency: ours against direct Graph ------------------------------------------------


def direct_access_token(emulator: Emulator, email: str) -> str:
    """Sign in to the emulator ourselves (MSAL auth-code flow, login_hint), as our server does."""
    with httpx.Client(verify=emulator.ssl_context(), timeout=30.0) as http:
        app = msal.ConfidentialClientApplication(
            DEMO_CLIENT_ID,
            client_credential=DEMO_CLIENT_SECRET,
            authority=f"{emulator.authority_host}/common",
            http_client=http,
            instance_discovery=False,
        )
        flow = app.initiate_auth_code_flow(
            MicrosoftOAuthProvider.scopes, redirect_uri=DIRECT_REDIRECT_URI
        )
        result = app.acquire_token_by_auth_code_flow(flow, query(sign_in(flow["auth_uri"], email)))
    if "access_token" not in result:
        raise RuntimeError(f"direct sign-in failed: {result.get('error_description')}")
    return result["access_token"]


async def ours(client: httpx.AsyncClient, stack: Stack) -> list[str]:
    response = await client.get(
        f"{stack.server_urls[0]}{API}/teams", headers=stack.users[0].headers
    )
    return [team["id"] for team in response.raise_for_status().json()]


async def forwarded(client: httpx.AsyncClient, forwarder_url: str) -> list[str]:
    response = await client.get(f"{forwarder_url}/teams")
    return [team["id"] for team in response.raise_for_status().json()]


def start_forwarder(stack: Stack, token: str) -> str:
    """The bare FastAPI forwarder as its own uvicorn process, like `serve`."""
    port = free_port()
    env = {
        **clean_environment(),
        "BENCH_GRAPH_URL": stack.emulator.graph_url,
        "BENCH_GRAPH_TOKEN": token,
        "BENCH_CA_BUNDLE": str(stack.emulator.ca_bundle),
    }
    program = [sys.executable, "-m", "bench.forwarder"]
    process = spawn(stack.exits, "forwarder", [str(port)], env, stack.work_dir, program)
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(process, f"{url}/healthz")
    return url


async def direct(client: httpx.AsyncClient, graph_url: str, token: str) -> list[str]:
    """GET /me/joinedTeams and every @odata.nextLink, as our Teams client does."""
    ids: list[str] = []
    url: str | None = f"{graph_url}/me/joinedTeams"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    for _ in range(100):  # bounded like the product's max_pages
        page = (await client.get(url, headers=headers)).raise_for_status().json()
        ids.extend(team["id"] for team in page.get("value", []))
        url = page.get("@odata.nextLink")
        if not url:
            return ids
    raise RuntimeError("joinedTeams never ended")


@dataclass
class Latency:
    samples: list[float]

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.samples) * 1000

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples) * 1000

    @property
    def p90_ms(self) -> float:
        return statistics.quantiles(self.samples, n=10)[-1] * 1000


async def timed(operation: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await operation()
    return time.perf_counter() - started


def compare_latency(stack: Stack, args: argparse.Namespace) -> dict[str, Latency]:
    # Throttling off: 2 x N sequential pairs of Graph calls would cross the 50/s tenant limit
    # and measure Retry-After waits instead of overhead.
    page_sizes = {"joined_teams": JOINED_TEAMS_PAGE}
    stack.emulator.control(
        "PATCH", "/config", {"page_sizes": page_sizes, "throttling": {"enabled": False}}
    )
    token = direct_access_token(stack.emulator, DEMO_USERS[0])
    forwarder_url = start_forwarder(stack, token)
    return asyncio.run(_compare_latency(stack, args, token, forwarder_url))


async def _compare_latency(
    stack: Stack, args: argparse.Namespace, token: str, forwarder_url: str
) -> dict[str, Latency]:
    # One async client for both sides: same pool, TLS and HTTP stack, so only the paths
    # differ. Async, as our server's Graph calls and Microsoft's Graph SDK are.
    verify = stack.emulator.ssl_context()
    async with httpx.AsyncClient(verify=verify, timeout=30.0) as client:
        sides: dict[str, Callable[[], Awaitable[list[str]]]] = {
            "ours": lambda: ours(client, stack),
            "forwarder": lambda: forwarded(client, forwarder_url),
            "direct": lambda: direct(client, stack.emulator.graph_url, token),
        }
        answers = [await operation() for operation in sides.values()]
        if any(answer != answers[0] for answer in answers):
            raise RuntimeError("the three sides list different teams: not comparable")
        for _ in range(args.warmup):
            for operation in sides.values():
                await operation()
        samples: dict[str, list[float]] = {name: [] for name in sides}
        for index in range(args.requests):
            # Rotate who goes first, so no side always follows another's warm cache.
            names = list(sides)
            order = names[index % len(names) :] + names[: index % len(names)]
            for name in order:
                samples[name].append(await timed(sides[name]))
    return {name: Latency(values) for name, values in samples.items()}


# --- (b) throughput: status against healthz ------------------------------------------------


def wrk_binary() -> str:
    found = shutil.which("wrk") or ("/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else None)
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing: install it with `sudo apt-get install -y wrk`")
    log("wrk is missing: apt-get install -y wrk")
    install = ["apt-get", "install", "-y", "wrk"]
    if subprocess.run(install, capture_output=True, check=False).returncode != 0:
        # A fresh container may have no package lists yet.
        subprocess.run(["apt-get", "update"], capture_output=True, check=True)
        subprocess.run(install, capture_output=True, check=True)
    return shutil.which("wrk") or "/usr/bin/wrk"


@dataclass
class WrkResult:
    requests_per_second: float
    bad_responses: int
    socket_errors: int


def run_wrk(url: str, args: argparse.Namespace, headers: dict[str, str], seconds: int) -> WrkResult:
    command = [wrk_binary(), f"-t{args.wrk_threads}", f"-c{args.wrk_connections}", f"-d{seconds}s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rate is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        float(rate.group(1)),
        int(bad.group(1)) if bad else 0,
        sum(int(n) for n in errors.groups()) if errors else 0,
    )


def compare_throughput(stack: Stack, args: argparse.Namespace) -> tuple[WrkResult, WrkResult]:
    base = stack.server_urls[0]
    endpoints = {
        "healthz": (f"{base}/healthz", {}),
        "status": (f"{base}{API}/status", stack.users[0].headers),
    }
    results = {}
    for name, (url, headers) in endpoints.items():
        run_wrk(url, args, headers, 1)  # warm-up: connections and lazy imports
        log(f"wrk on {name} for {args.wrk_seconds}s")
        results[name] = run_wrk(url, args, headers, args.wrk_seconds)
    return results["status"], results["healthz"]


# --- report ----------------------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def report(
    args: argparse.Namespace,
    latency: dict[str, Latency],
    status: WrkResult,
    healthz: WrkResult,
) -> None:
    ours, forwarder, direct_ = latency["ours"], latency["forwarder"], latency["direct"]
    mean_ratio = ours.mean_ms / forwarder.mean_ms
    p50_ratio = ours.p50_ms / forwarder.p50_ms
    rate_ratio = status.requests_per_second / healthz.requests_per_second
    wrk_label = f"wrk -t{args.wrk_threads} -c{args.wrk_connections} -d{args.wrk_seconds}s"
    rows = [("database", args.database)]
    rows += [
        (
            f"teams: {name} mean / p50 / p90 ms",
            f"{side.mean_ms:.2f} / {side.p50_ms:.2f} / {side.p90_ms:.2f}",
        )
        for name, side in latency.items()
    ]
    rows += [
        (
            "teams: ratio ours/forwarder",
            f"mean {mean_ratio:.2f}x, p50 {p50_ratio:.2f}x "
            f"(goal <= {LATENCY_GOAL}x: {verdict(max(mean_ratio, p50_ratio) <= LATENCY_GOAL)})",
        ),
        ("teams: ratio ours/direct (for information)", f"p50 {ours.p50_ms / direct_.p50_ms:.2f}x"),
        (
            f"status req/s ({wrk_label})",
            f"{status.requests_per_second:.0f} "
            f"(non-2xx {status.bad_responses}, socket errors {status.socket_errors})",
        ),
        (
            f"healthz req/s ({wrk_label})",
            f"{healthz.requests_per_second:.0f} "
            f"(non-2xx {healthz.bad_responses}, socket errors {healthz.socket_errors})",
        ),
        (
            "ratio status/healthz",
            f"{rate_ratio:.2f}x "
            f"(goal >= {THROUGHPUT_GOAL}x: {verdict(rate_ratio >= THROUGHPUT_GOAL)})",
        ),
    ]
    figures = {
        "database": args.database,
        "ours_p50_ms": f"{ours.p50_ms:.2f}",
        "forwarder_p50_ms": f"{forwarder.p50_ms:.2f}",
        "direct_p50_ms": f"{direct_.p50_ms:.2f}",
        "latency_ratio_mean": f"{mean_ratio:.2f}",
        "latency_ratio_p50": f"{p50_ratio:.2f}",
        "status_rps": f"{status.requests_per_second:.0f}",
        "healthz_rps": f"{healthz.requests_per_second:.0f}",
        "rps_ratio": f"{rate_ratio:.2f}",
        "status_non_2xx": status.bad_responses,
    }
    print_table(rows, figures)


def main() -> None:
    args = parse_args()
    wrk_binary()  # before any set-up: a missing wrk should fail fast
    with bench_stack(StackOptions(database=args.database)) as stack:
        log(f"latency: {args.warmup} warm-up then {args.requests} interleaved requests per side")
        latency = compare_latency(stack, args)
        status, healthz = compare_throughput(stack, args)
    report(args, latency, status, healthz)


if __name__ == "__main__":
    run_main(main)
