"""Nothing lost, nothing doubled, with real `serve` processes: two instances on one database
relay each message once; a process SIGKILLed mid-delivery or mid-processing loses nothing
once it is back, and what was posted while it was down arrives by the catch-up at start.

The processes run on a database of their own (`upgraded_url`), out of reach of the session's
test app, whose workers would otherwise take part.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook

from tests.conftest import Api, truncate_all
from tests.notifications.conftest import open_database
from tests.utils.flows import ApiUser, connect, create_user
from tests.utils.polling import eventually
from tests.utils.server import ServeProcess, free_port
from tests.utils.time_travel import MovableClock
from tests.utils.webhook import Received, Receiver, running_receiver
from tracecat.config import Settings
from tracecat.notifications.delivery import DeliveryPolicy, DeliveryWorker, Outcome
from tracecat.notifications.models import InboundNotification, WebhookDelivery

BASE = "/auth/integrations/microsoft"
MS_USER = "alice@contoso.example"
SOMEONE_ELSE = "bob@contoso.example"
RETRY_SECONDS = [1.0, 1.0, 1.0]


@pytest.fixture
def processes(api: Api, upgraded_url: str) -> Iterator[Callable[..., ServeProcess]]:
    """Start `serve` processes on the test database of their own (emptied after the test)
    and the session's emulator: `start(port=None, **env)`; every one is stopped at the end."""
    env = api.serve_environment(upgraded_url) | {
        "MICROSOFT_EXTRA_SCOPES": "ChannelMessage.Read.All",
        # Renewal and the token sweep as in production: every minute.
        "TRACECAT_REFRESH_INTERVAL_SECONDS": "60",
        "TRACECAT_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "TRACECAT_WEBHOOK_RETRY_SECONDS": ",".join(str(s) for s in RETRY_SECONDS),
        # Warnings only: an access line per request would fill the pipe nobody reads.
        "TRACECAT_LOG_LEVEL": "WARNING",
    }
    started: list[ServeProcess] = []

    def start(port: int | None = None, **extra: str) -> ServeProcess:
        port = port or free_port()
        # Microsoft reaches each instance at its own address.
        public_url = {"TRACECAT_PUBLIC_URL": f"http://127.0.0.1:{port}"}
        process = ServeProcess(env | public_url | extra, port=port)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    truncate_all(upgraded_url)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        running.default_status = 204
        yield running


@dataclass
class Subscribed:
    user: ApiUser
    team: str
    channel: str
    id: str
    secret: str


def subscribe(url: str, database_url: str, target_url: str) -> Subscribed:
    """A user connected through the server at `url`, subscribed to their first channel."""
    user = create_user(database_url, f"analyst-{uuid.uuid4().hex[:6]}@example.com")
    with httpx.Client(base_url=url, timeout=30) as browser:
        assert connect(browser, url, user, MS_USER).status_code == 200
        team = browser.get(f"{BASE}/teams", headers=user.headers).json()[0]["id"]
        channels = browser.get(f"{BASE}/teams/{team}/channels", headers=user.headers).json()
        channel = channels[0]["id"]
        created = browser.post(
            f"{BASE}/subscriptions",
            headers=user.headers,
            json={"team_id": team, "channel_id": channel, "target_url": target_url},
        )
    assert created.status_code == 201, created.text
    body = created.json()
    return Subscribed(user, team, channel, body["id"], body["secret"])


def post(api: Api, subscribed: Subscribed, text: str, reply_to: str | None = None) -> str:
    """Someone else posts in the subscribed channel (the emulator notifies at once)."""
    body: dict[str, Any] = {"content": text, "from": SOMEONE_ELSE}
    if reply_to is not None:
        body["reply_to"] = reply_to
    path = f"/teams/{subscribed.team}/channels/{subscribed.channel}/messages"
    return str(api.control("POST", path, json=body).json()["id"])


def deliveries(url: str, subscribed: Subscribed) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{url}{BASE}/subscriptions/{subscribed.id}/deliveries", headers=subscribed.user.headers
    )
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def all_delivered(url: str, subscribed: Subscribed, count: int) -> list[dict[str, Any]] | None:
    rows = deliveries(url, subscribed)
    done = len(rows) == count and all(row["status"] == "delivered" for row in rows)
    return rows if done else None


def verified(subscribed: Subscribed, webhook: Received) -> dict[str, Any]:
    """The event, once its Standard Webhooks signature checks out (raises otherwise)."""
    event: dict[str, Any] = Webhook(subscribed.secret).verify(webhook.body, webhook.headers)
    return event


def message_ids(subscribed: Subscribed, received: list[Received]) -> Counter[str]:
    return Counter(verified(subscribed, w)["data"]["message"]["id"] for w in received)


def test_two_instances_relay_each_message_once(
    api: Api, processes: Callable[..., ServeProcess], upgraded_url: str, receiver: Receiver
) -> None:
    # Both instances process what Microsoft sent, deliver from the outbox and read the
    # channel back every second, all at once; Microsoft sends every notification twice.
    first = processes(TRACECAT_RESYNC_INTERVAL_SECONDS="1").wait_ready()
    second = processes(TRACECAT_RESYNC_INTERVAL_SECONDS="1").wait_ready()
    subscribed = subscribe(first.url, upgraded_url, receiver.url)
    api.control("PATCH", "/config", json={"notifications": {"duplicate": True}})
    roots = [post(api, subscribed, f"alert {i}") for i in range(6)]
    replies = [post(api, subscribed, f"ack {i}", reply_to=root) for i, root in enumerate(roots)]
    posted = roots + replies

    rows = eventually(lambda: all_delivered(second.url, subscribed, len(posted)), timeout=60)
    # Every delivery is committed, so nothing more can be sent: what arrived is final.
    assert message_ids(subscribed, receiver.received()) == Counter(posted)
    webhook_ids = [w.headers["webhook-id"] for w in receiver.received()]
    assert sorted(webhook_ids) == sorted(row["id"] for row in rows)
    assert all(row["attempts"] == 1 for row in rows)
    by_id = {verified(subscribed, w)["data"]["message"]["id"]: w for w in receiver.received()}
    for root, reply in zip(roots, replies, strict=True):
        assert verified(subscribed, by_id[reply])["data"]["message"]["replyToId"] == root


def test_a_process_killed_mid_delivery_loses_nothing(
    api: Api, processes: Callable[..., ServeProcess], upgraded_url: str, receiver: Receiver
) -> None:
    service = processes().wait_ready()
    subscribed = subscribe(service.url, upgraded_url, receiver.url)
    # Microsoft does not retry here: what reaches nobody is found only by the catch-up.
    api.control("PATCH", "/config", json={"notifications": {"retry_delays": []}})
    receiver.answering.clear()  # the target takes the webhook and holds its answer
    in_flight = post(api, subscribed, "alert: impossible travel")
    receiver.wait_for(lambda seen: len(seen) == 1, timeout=30)
    # Killed while the target holds the webhook; the target then takes it (answers 2xx to
    # nobody): the one case where the same webhook may arrive twice.
    service.kill()
    receiver.answering.set()

    # While it is down, an answer in the alert's thread and a new alert: their
    # notifications reach nobody.
    reply = post(api, subscribed, "ack, looking", reply_to=in_flight)
    later = post(api, subscribed, "alert: new admin")
    restarted = processes(port=service.port).wait_ready()

    # The catch-up at start reads both back; they are relayed once each.
    def caught_up() -> dict[str, dict[str, Any]] | None:
        rows = {row["message_id"]: row for row in deliveries(restarted.url, subscribed)}
        done = [rows.get(m, {}).get("status") for m in (reply, later)] == ["delivered"] * 2
        return rows if done else None

    rows = eventually(caught_up, timeout=60)
    assert set(rows) == {in_flight, reply, later}
    # The killed process held a lease on the interrupted delivery: it is still pending.
    assert rows[in_flight]["status"] == "pending" and rows[in_flight]["attempts"] == 0

    # Once that lease lapses, a worker (here one of ours, on a clock moved past it) sends the
    # interrupted webhook again, with the same webhook-id: the target can tell the repeat.
    result = asyncio.run(_deliver_after_the_lease(upgraded_url, api.settings))
    assert [r.outcome for r in result] == [Outcome.DELIVERED]
    ids = Counter(w.headers["webhook-id"] for w in receiver.received())
    assert ids[rows[in_flight]["id"]] == 2 and len(ids) == 3
    assert message_ids(subscribed, receiver.received()) == Counter(
        {in_flight: 2, reply: 1, later: 1}
    )
    final = eventually(lambda: all_delivered(restarted.url, subscribed, 3))
    assert {row["message_id"]: row["attempts"] for row in final}[in_flight] == 1


def test_sigterm_lets_a_delivery_in_flight_finish(
    api: Api, processes: Callable[..., ServeProcess], upgraded_url: str, receiver: Receiver
) -> None:
    service = processes().wait_ready()
    subscribed = subscribe(service.url, upgraded_url, receiver.url)
    receiver.answering.clear()  # the target takes the webhook and holds its answer
    message = post(api, subscribed, "alert: impossible travel")
    receiver.wait_for(lambda seen: len(seen) == 1, timeout=30)
    service.terminate()  # stopping, while the target has not answered yet
    receiver.answering.set()
    assert service.wait() == 128 + signal.SIGTERM

    # The delivery was finished and committed before the exit: a restart sends nothing.
    restarted = processes(port=service.port, TRACECAT_RESYNC_INTERVAL_SECONDS="0").wait_ready()
    (row,) = deliveries(restarted.url, subscribed)
    assert row["status"] == "delivered" and row["attempts"] == 1
    assert message_ids(subscribed, receiver.received()) == Counter([message])


async def _deliver_after_the_lease(database_url: str, settings: Settings) -> list[Any]:
    clock = MovableClock()
    policy = DeliveryPolicy.from_settings(settings)
    clock.advance((policy.lease + timedelta(seconds=1)).total_seconds())
    database = open_database(database_url)
    worker = DeliveryWorker.from_settings(database, settings, clock=clock)
    try:
        return await worker.run_once()
    finally:
        await worker.aclose()
        await database.dispose()


def test_a_process_killed_mid_processing_relays_after_restart(
    api: Api, processes: Callable[..., ServeProcess], upgraded_url: str, receiver: Receiver
) -> None:
    service = processes().wait_ready()
    subscribed = subscribe(service.url, upgraded_url, receiver.url)
    # The notification is kept and answered; reading the message from Graph then hangs.
    path = f"/v1.0/teams/{subscribed.team}/channels/"
    slow = {"kind": "slow", "target": path, "method": "GET", "delay_seconds": 60, "count": 1}
    api.control("POST", "/faults", json=slow)
    message = post(api, subscribed, "alert: mass download")
    eventually(lambda: asyncio.run(_outbox(upgraded_url)) == (1, 0), timeout=30)
    service.kill()  # after the 202, before the message was fetched and its webhook enqueued
    assert asyncio.run(_outbox(upgraded_url)) == (1, 0)

    # Without any catch-up, only the kept notification can bring the message back.
    processes(port=service.port, TRACECAT_RESYNC_INTERVAL_SECONDS="0").wait_ready()
    eventually(lambda: receiver.received(), timeout=60)
    assert message_ids(subscribed, receiver.received()) == Counter([message])
    eventually(lambda: asyncio.run(_outbox(upgraded_url)) == (0, 1))


async def _outbox(database_url: str) -> tuple[int, int]:
    """(kept notifications not yet processed, deliveries in the outbox)."""
    database = open_database(database_url)
    try:
        async with database.session() as session:
            kept = await session.scalar(
                select(func.count())
                .select_from(InboundNotification)
                .where(InboundNotification.processed_at.is_(None))
            )
            queued = await session.scalar(select(func.count()).select_from(WebhookDelivery))
        return kept or 0, queued or 0
    finally:
        await database.dispose()
