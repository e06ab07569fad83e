"""What bench.notify_latency stands on: a local webhook target that records what arrives, the set-up
(emulator, `serve`, subscriptions), posting messages, tallies, figures, and reads of the
database behind the server's back."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.common import (
    HOST,
    Emulator,
    Process,
    StackOptions,
    connect_user,
    create_user,
    log,
    run_cli,
    server_environment,
    spawn,
    start_emulator,
    wait_until_ready,
)
from bench.notify_target import (
    Posted,
    Run,
    Target,
    ms,
    percentile,
)
from tests.utils.flows import ApiUser
from tests.utils.server import CONTROL_HEADERS, free_port
from tracecat.db import Database
from tracecat.emulator.constants import DEMO_USERS
from tracecat.emulator.subscriptions import parse_channel_messages
from tracecat.notifications.delivery import DeliveryPolicy
from tracecat.notifications.models import DeliveryStatus, InboundNotification, WebhookDelivery

API = "/auth/integrations/microsoft"
NOTIFICATIONS_PATH = "/webhooks/microsoft/notifications"
SUBSCRIBER = DEMO_USERS[0]
# "Someone else": the messages come from another demo user than the subscriber.
SENDER = DEMO_USERS[1]
E2E_GOAL_MS = 150.0
INBOUND_GOAL_MS = 50.0
# Inbound requests sent before the measured burst (connections opened, code paths warm).
INBOUND_WARMUP = 20
# The inbound client: this many httpx clients, round robin, of this many connections each.
INBOUND_CLIENTS = 8
INBOUND_POOL = 50
# A kept notification, of the burst or of a run, must be processed within this.
DRAIN_TIMEOUT = 90.0
# A claimed delivery stays with its worker this long (15 s per turn of a batch, plus 30 s);
# one claimed by the killed process is sent again only once it lapses.
LEASE_SECONDS = DeliveryPolicy(retry_seconds=()).lease.total_seconds()


# --- set-up ----------------------------------------------------------------------------------


@dataclass
class Subscribed:
    team_id: str
    channel_id: str
    id: str  # ours
    secret: str
    graph_id: str = ""  # Graph's (the emulator's)
    client_state: str = ""
    expiration: str = ""


@dataclass
class Setup:
    emulator: Emulator
    env: dict[str, str]
    port: int
    user: ApiUser
    server: Process
    target: Target
    exits: ExitStack
    work_dir: Path
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def database_url(self) -> str:
        default = f"sqlite:///{Path(self.env['TRACECAT_DATA_DIR']) / 'tracecat.db'}"
        return self.env.get("DATABASE_URL", default)

    @property
    def control_url(self) -> str:
        """The emulator's control API on its plain-HTTP listener (no TLS on the timed path)."""
        return f"http://{HOST}:{self.emulator.http_port}/_emulator"


def start_serve(
    exits: ExitStack, env: dict[str, str], port: int, work_dir: Path, name: str
) -> Process:
    """`serve` on `port`, ready; stopped when `exits` closes."""
    process = spawn(exits, name, ["serve", "--host", HOST, "--port", str(port)], env, work_dir)
    wait_until_ready(process, f"http://{HOST}:{port}/healthz")
    return process


@contextmanager
def notify_stack(args: argparse.Namespace) -> Iterator[Setup]:
    """bench_stack's pieces, plus what subscriptions need: the read scope, a public URL that
    is the server's own address (so the port is chosen first, and kept across a restart)
    and loopback targets allowed. The emulator's Teams throttling is off: at --rate the
    message reads would otherwise wait out Retry-After, which is not what is measured."""
    with ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tracecat-bench-")))
        emulator = start_emulator(stack, work_dir)
        emulator.control("PATCH", "/config", {"throttling": {"enabled": False}})
        env = server_environment(emulator, work_dir, StackOptions(args.database), stack)
        port = free_port()
        env |= {
            "MICROSOFT_EXTRA_SCOPES": "ChannelMessage.Read.All",
            "TRACECAT_PUBLIC_URL": f"http://{HOST}:{port}",
            "TRACECAT_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        }
        run_cli(["db", "upgrade"], env)
        server = start_serve(stack, env, port, work_dir, "serve")
        log(f"serve up at http://{HOST}:{port} ({args.database})")
        user = create_user(env, "bench-notify@example.com")
        connect_user(f"http://{HOST}:{port}", user, SUBSCRIBER)
        target = stack.enter_context(Target().running())
        log(f"user connected as {SUBSCRIBER}; target at {target.url}")
        yield Setup(emulator, env, port, user, server, target, stack, work_dir)


def pick_channels(client: httpx.Client, setup: Setup, count: int) -> list[tuple[str, str]]:
    """`count` channels through our API, round robin over the joined teams."""
    headers = setup.user.headers
    teams = client.get(f"{setup.url}{API}/teams", headers=headers).raise_for_status().json()
    channels = [
        [
            (team["id"], channel["id"])
            for channel in client.get(
                f"{setup.url}{API}/teams/{team['id']}/channels", headers=headers
            )
            .raise_for_status()
            .json()
        ]
        for team in teams
    ]
    chosen: list[tuple[str, str]] = []
    for slot in range(max(len(c) for c in channels)):
        chosen.extend(c[slot] for c in channels if slot < len(c))
    if len(chosen) < count:
        raise SystemExit(f"only {len(chosen)} channels: lower --channels")
    return chosen[:count]


def subscribe(client: httpx.Client, setup: Setup, team_id: str, channel_id: str) -> Subscribed:
    body = {"team_id": team_id, "channel_id": channel_id, "target_url": setup.target.url}
    response = client.post(f"{setup.url}{API}/subscriptions", headers=setup.user.headers, json=body)
    if response.status_code != 201:
        raise RuntimeError(f"subscribing failed: {response.status_code} {response.text}")
    created = response.json()
    subscribed = Subscribed(team_id, channel_id, created["id"], created["secret"])
    wanted = (team_id.lower(), channel_id.lower())
    # Graph's side (id, clientState, expiry): what a forged-looking but valid notification needs.
    for graph in setup.emulator.control("GET", "/subscriptions")["subscriptions"]:
        if parse_channel_messages(graph["resource"]) == wanted:
            subscribed.graph_id = graph["id"]
            subscribed.client_state = graph["clientState"]
            subscribed.expiration = graph["expirationDateTime"]
    if not subscribed.graph_id:
        raise RuntimeError(f"the emulator has no subscription for {channel_id}")
    return subscribed


# --- posting messages (parts 1 and 4) ---------------------------------------------------------


def marker(label: str, index: int) -> str:
    """A message's text: unique per run, and no marker is a prefix of another."""
    return f"[{label} #{index}]"


def post_messages(
    setup: Setup,
    subscriptions: list[Subscribed],
    count: int,
    rate: float,
    label: str,
    before_post: Callable[[int], None] | None = None,
) -> Run:
    """`count` messages from someone else at `rate`/s, round robin over the channels; the
    emulator stores each and notifies our server at once (one thread per notification)."""
    run = Run()
    with httpx.Client(base_url=setup.control_url, headers=CONTROL_HEADERS, timeout=30) as client:
        start = time.perf_counter() + 0.05
        for index in range(count):
            if before_post is not None:
                before_post(index)
            scheduled = start + index / rate
            pause = scheduled - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            subscribed = subscriptions[index % len(subscriptions)]
            path = f"/teams/{subscribed.team_id}/channels/{subscribed.channel_id}/messages"
            body = {"content": f"{marker(label, index)} alert", "from": SENDER}
            started = time.perf_counter()
            run.behind_max = max(run.behind_max, started - scheduled)
            try:
                response = client.post(path, json=body)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                run.failed_posts += 1
                log(f"control POST #{index} failed: {exc}")
                continue
            run.posted.append(Posted(str(response.json()["id"]), subscribed, started))
        run.last_post = time.perf_counter()
    return run


def wait_until(done: Callable[[], bool], deadline: float, pause: float = 0.05) -> float | None:
    """Until `done()` (perf_counter then) or `deadline` passed (None)."""
    while True:
        if done():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            return None
        time.sleep(pause)


def wait_for_all(setup: Setup, message_ids: set[str], deadline: float) -> float | None:
    """Until every message has arrived, at least once."""
    return wait_until(lambda: message_ids <= setup.target.received_ids(), deadline)


# --- the database, read behind the server's back ---------------------------------------------


_UNPROCESSED = (
    select(func.count())
    .select_from(InboundNotification)
    .where(InboundNotification.processed_at.is_(None))
)
_PENDING = (
    select(func.count())
    .select_from(WebhookDelivery)
    .where(WebhookDelivery.status == DeliveryStatus.PENDING)
)
_PENDING_LEASED = (
    select(func.count())
    .select_from(WebhookDelivery)
    .where(
        WebhookDelivery.status == DeliveryStatus.PENDING,
        WebhookDelivery.locked_until.is_not(None),
    )
)


def count(setup: Setup, statement: Any) -> int:
    async def query() -> int:
        database = Database(setup.database_url, pool_size=1)
        try:
            return int((await database.fetch_all(statement))[0][0])
        finally:
            await database.dispose()

    return asyncio.run(query())


def wait_drained(setup: Setup, timeout: float = DRAIN_TIMEOUT) -> float | None:
    """Seconds until no kept notification is left unprocessed; None if some still are."""
    started = time.perf_counter()
    while count(setup, _UNPROCESSED):
        if time.perf_counter() - started > timeout:
            return None
        time.sleep(0.2)
    return time.perf_counter() - started


def emulator_answer_times(setup: Setup) -> list[float]:
    """How long our server took to answer the emulator's change notifications (the emulator
    keeps the last ones it sent, retries and failures included)."""
    stats = setup.emulator.control("GET", "/stats")["notifications"]["change"]
    return [float(s) for s in stats["answer_seconds"]]


def emulator_outcomes(setup: Setup) -> Counter[str]:
    stats = setup.emulator.control("GET", "/stats")["notifications"]["change"]
    return Counter({str(k): int(v) for k, v in stats["by_outcome"].items()})


# --- the parts and their rows ----------------------------------------------------------------

Rows = list[tuple[str, Any]]
Figures = dict[str, Any]


def machine_load() -> str:
    """Everything shares this machine's cores: other work running meanwhile shows here."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min), {os.cpu_count()} CPUs"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def p50_p99_max(samples: list[float]) -> str:
    top = max(samples, default=float("nan"))
    return f"{ms(percentile(samples, 50))}/{ms(percentile(samples, 99))}/{ms(top)}"
