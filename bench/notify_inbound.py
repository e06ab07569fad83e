"""Part 3 of bench.notify_latency: Graph-shaped change notifications fired straight at
`POST /webhooks/microsoft/notifications`, paced, each 202 timed from when it is on the wire."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from bench.common import (
    log,
)
from bench.notify_support import (
    DRAIN_TIMEOUT,
    INBOUND_CLIENTS,
    INBOUND_GOAL_MS,
    INBOUND_POOL,
    INBOUND_WARMUP,
    NOTIFICATIONS_PATH,
    Figures,
    Rows,
    Setup,
    Subscribed,
    machine_load,
    p50_p99_max,
    verdict,
    wait_drained,
)
from bench.notify_target import (
    ms,
    no_collector_pauses,
    percentile,
)
from tracecat.emulator.constants import TENANT_ID

# --- part 3: inbound notifications fired at us -----------------------------------------------


@dataclass
class Answer:
    status: str
    # From the first byte's way out (a new connection's connect, else the request line) to
    # the answer's headers: the request's own latency.
    seconds: float
    queued: float  # before that, waiting in the client's connection pool
    behind: float  # how far the request started after its scheduled time


# httpcore's trace events: the first that puts the request on the wire, and the answer.
_ON_THE_WIRE = ("connection.connect_tcp.started", "http11.send_request_headers.started")
_ANSWERED = "http11.receive_response_headers.complete"


def inbound_body(subscribed: Subscribed, message_id: str) -> bytes:
    """What the emulator (tracecat/emulator/notifier.py) sends for a new root message. The
    message does not exist: processing it later costs a Graph 404, nothing is relayed."""
    path = (
        f"teams('{subscribed.team_id}')/channels('{subscribed.channel_id}')"
        f"/messages('{message_id}')"
    )
    item = {
        "subscriptionId": subscribed.graph_id,
        "subscriptionExpirationDateTime": subscribed.expiration,
        "changeType": "created",
        "clientState": subscribed.client_state,
        "resource": path,
        "resourceData": {
            "id": message_id,
            "@odata.type": "#Microsoft.Graph.chatMessage",
            "@odata.id": path,
        },
        "tenantId": TENANT_ID,
    }
    return json.dumps({"value": [item]}).encode()


async def inbound_burst(
    setup: Setup, subscribed: Subscribed, rate: float, seconds: float
) -> tuple[list[Answer], int]:
    """One request per 1/rate s at its scheduled time, each in its own task, so a slow answer
    delays no other request; each is timed from when it goes on the wire to its answer (a
    wait for a pooled connection is kept apart). Also returns where serve's log stood when
    the burst began (its access lines time each request too)."""
    total = round(rate * seconds)
    base = int(datetime.now(UTC).timestamp() * 1000) * 1000
    bodies = [inbound_body(subscribed, str(base + i)) for i in range(INBOUND_WARMUP + total)]
    url = f"{setup.url}{NOTIFICATIONS_PATH}"
    headers = {"Content-Type": "application/json"}
    # Several small pools rather than one large: httpcore's pool does work quadratic in its
    # connections on every request, which with hundreds open stalled this client for seconds.
    # Idle connections are dropped before uvicorn's 5 s keep-alive closes them under us (a
    # ReadError that would be the client's doing, not an answer).
    limits = httpx.Limits(
        max_connections=INBOUND_POOL, max_keepalive_connections=INBOUND_POOL, keepalive_expiry=4
    )

    async with AsyncExitStack() as clients_stack:
        clients = [
            await clients_stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=30))
            for _ in range(INBOUND_CLIENTS)
        ]

        async def one(index: int, body: bytes, scheduled: float) -> Answer:
            marks: dict[str, float] = {}

            async def trace(event: str, _info: object) -> None:
                if event in _ON_THE_WIRE:
                    marks.setdefault("wire", time.perf_counter())
                elif event == _ANSWERED:
                    marks["answered"] = time.perf_counter()

            client = clients[index % len(clients)]
            started = time.perf_counter()
            try:
                response = await client.post(
                    url, content=body, headers=headers, extensions={"trace": trace}
                )
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            ended = marks.get("answered", time.perf_counter())
            wire = marks.get("wire", started)
            return Answer(status, ended - wire, wire - started, started - scheduled)

        # Warm-up, one after the other on each client, not counted: connections open, code
        # paths warm.
        for index, body in enumerate(bodies[:INBOUND_WARMUP]):
            await one(index, body, time.perf_counter())
        await asyncio.sleep(0.5)  # their access lines are written meanwhile
        log_offset = setup.server.log_path.stat().st_size
        tasks = []
        start = time.perf_counter() + 0.05
        for index, body in enumerate(bodies[INBOUND_WARMUP:]):
            scheduled = start + index / rate
            pause = scheduled - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            tasks.append(asyncio.create_task(one(index, body, scheduled)))
        return list(await asyncio.gather(*tasks)), log_offset


# One access line per request (tracecat/logs.py): `... "POST /path" 202 2.3ms`.
_ACCESS_202 = re.compile(rf'"POST {re.escape(NOTIFICATIONS_PATH)}" 202 ([0-9.]+)ms')


def served_times(setup: Setup, offset: int) -> list[float]:
    """Seconds each 202 of the notifications route took inside serve, from its access lines
    written after `offset`: the answer time without the client's or the sockets' share."""
    time.sleep(0.5)  # the log is written by a thread of its own
    with setup.server.log_path.open("rb") as log_file:
        log_file.seek(offset)
        text = log_file.read().decode(errors="replace")
    return [float(found) / 1000 for found in _ACCESS_202.findall(text)]


def inbound(setup: Setup, subscribed: Subscribed, args: argparse.Namespace) -> tuple[Rows, Figures]:
    """Part 3, on a subscription (and channel) of its own; its backlog is worked off before
    part 4 starts."""
    total = round(args.inbound_rate * args.inbound_seconds)
    log(
        f"part 3: {total} notifications at {args.inbound_rate:g}/s straight at {setup.url}; "
        f"{machine_load()}"
    )
    with no_collector_pauses():
        burst, log_offset = asyncio.run(
            inbound_burst(setup, subscribed, args.inbound_rate, args.inbound_seconds)
        )
    burst_done = time.perf_counter()
    served = served_times(setup, log_offset)
    drained = wait_drained(setup)
    seconds = [a.seconds for a in burst]
    behind = [a.behind for a in burst]
    queued = [a.queued for a in burst]
    statuses = Counter(a.status for a in burst)
    non_202 = sum(n for status, n in statuses.items() if status != "202")
    p99 = percentile(seconds, 99)
    by_status = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    rows: Rows = [
        (
            "inbound burst",
            f"{total} at {args.inbound_rate:g}/s for {args.inbound_seconds:g}s "
            f"(after {INBOUND_WARMUP} not counted)",
        ),
        (
            "inbound client behind schedule p50/max ms",
            f"{ms(percentile(behind, 50))}/{ms(max(behind))}",
        ),
        (
            "inbound client pool wait p50/p99/max ms",
            f"{p50_p99_max(queued)} (not counted below)",
        ),
        (
            "inbound 202 p50/p99/max ms",
            f"{p50_p99_max(seconds)} "
            f"(goal p99 < {INBOUND_GOAL_MS:.0f}: {verdict(p99 * 1000 < INBOUND_GOAL_MS)})",
        ),
        (
            "inbound 202 inside serve p50/p99/max ms",
            f"{p50_p99_max(served)} (its access lines: {len(served)})",
        ),
        ("inbound non-202", f"{non_202} (goal 0)" + (f": {by_status}" if non_202 else "")),
        (
            "inbound all processed (Graph 404s)",
            f"{time.perf_counter() - burst_done:.1f}s after the burst"
            if drained is not None
            else f"NOT within {DRAIN_TIMEOUT:.0f}s",
        ),
    ]
    figures: Figures = {
        "inbound_p50_ms": ms(percentile(seconds, 50)),
        "inbound_p99_ms": ms(p99),
        "inbound_non_202": non_202,
    }
    return rows, figures
