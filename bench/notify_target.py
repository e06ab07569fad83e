"""The webhook target of bench.notify_latency: a local threaded HTTP server that records each
POST (arrival time, headers, body) and answers 204; and the tallies and figures of what arrived."""

from __future__ import annotations

import gc
import json
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from standardwebhooks import Webhook, WebhookVerificationError

from bench.common import (
    HOST,
)

if TYPE_CHECKING:  # the set-up imports this module; the type is only named here
    from bench.notify_support import Subscribed


@dataclass
class Posted:
    message_id: str
    subscription: Subscribed
    started: float  # perf_counter just before the control POST


@dataclass
class Run:
    posted: list[Posted] = field(default_factory=list)
    behind_max: float = 0.0  # how far a POST started after its scheduled time, seconds
    failed_posts: int = 0
    last_post: float = 0.0


# --- the target: a local webhook receiver ----------------------------------------------------


@dataclass
class Arrival:
    at: float  # perf_counter once the whole body was read
    headers: dict[str, str]  # names in lower case
    body: bytes
    # The sender was SIGKILLed before we answered: our 204 reached nobody.
    sender_killed: bool = False

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def event(self) -> dict[str, Any] | None:
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    def message_id(self) -> str | None:
        event = self.event() or {}
        message = (event.get("data") or {}).get("message") or {}
        value = message.get("id")
        return str(value) if value is not None else None

    def subscription_id(self) -> str | None:
        value = ((self.event() or {}).get("data") or {}).get("subscription_id")
        return str(value) if value is not None else None


class Target:
    """A threaded HTTP/1.1 server on 127.0.0.1 that answers every POST 204 and records it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        # Called in the handler's thread on each arrival, before the answer (part 4's kill).
        self.on_arrival: Callable[[Arrival], None] | None = None
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would offer

            def setup(self) -> None:
                super().setup()
                # Like uvicorn's sockets: no Nagle delay on our small answers.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                arrival = Arrival(
                    time.perf_counter(), {k.lower(): v for k, v in self.headers.items()}, body
                )
                with target.lock:
                    target.arrivals.append(arrival)
                if target.on_arrival is not None:
                    target.on_arrival(arrival)
                try:
                    self.send_response(204)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    self.wfile.flush()
                except OSError:
                    pass  # the sender died with the request in flight

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="target", daemon=True
        )

    def snapshot(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)

    def received_ids(self) -> set[str]:
        return {m for a in self.snapshot() if (m := a.message_id()) is not None}

    @contextmanager
    def running(self) -> Iterator[Target]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class Tally:
    latencies: list[float]  # seconds, first arrival of each received message
    invalid_signatures: int
    lost: list[str]
    duplicates: int  # extra receipts of a webhook-id after a 2xx that reached its sender
    # Extra receipts of a webhook-id whose earlier receipt's 2xx reached nobody (its sender
    # was SIGKILLed first): at-least-once, by design; receivers deduplicate on webhook-id.
    repeats_after_kill: int
    ids_per_message_max: int  # distinct webhook-ids for one message (1 expected)
    last_arrival: float | None


def tally(run: Run, arrivals: list[Arrival]) -> Tally:
    """Match the webhooks to the posts by message id; verify every signature."""
    by_message = {p.message_id: p for p in run.posted}
    secrets = {p.subscription.id: p.subscription.secret for p in run.posted}
    mine = [a for a in arrivals if a.message_id() in by_message]
    invalid = 0
    for arrival in mine:
        try:
            Webhook(secrets.get(arrival.subscription_id() or "", "whsec_")).verify(
                arrival.body, arrival.headers
            )
        except (WebhookVerificationError, ValueError):
            invalid += 1
    first: dict[str, float] = {}
    webhook_ids: dict[str, set[str]] = {}
    for arrival in sorted(mine, key=lambda a: a.at):
        message_id = arrival.message_id() or ""
        first.setdefault(message_id, arrival.at)
        webhook_ids.setdefault(message_id, set()).add(arrival.webhook_id)
    receipts = Counter(a.webhook_id for a in mine)
    unanswered = {a.webhook_id for a in mine if a.sender_killed}
    extra = {webhook_id: n - 1 for webhook_id, n in receipts.items() if n > 1}
    return Tally(
        latencies=[first[m] - p.started for m, p in by_message.items() if m in first],
        invalid_signatures=invalid,
        lost=[m for m in by_message if m not in first],
        duplicates=sum(n for webhook_id, n in extra.items() if webhook_id not in unanswered),
        repeats_after_kill=sum(n for webhook_id, n in extra.items() if webhook_id in unanswered),
        ids_per_message_max=max((len(ids) for ids in webhook_ids.values()), default=0),
        last_arrival=max((a.at for a in mine), default=None),
    )


@contextmanager
def no_collector_pauses() -> Iterator[None]:
    """The bench's own garbage collector off while it times things: a full collection of
    this process took 60 ms, which showed up as latency (a late client, a late arrival)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def percentile(samples: list[float], p: int) -> float:
    if not samples:
        return float("nan")
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"
