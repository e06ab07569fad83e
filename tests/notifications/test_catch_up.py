"""Catch-up: what was posted while the service was down (no notification reached it, no
processor ran) is enqueued once it is back, replies in recent threads included, exactly once
however often the catch-up runs; what was posted before the subscription never is."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import select

from tests.conftest import Api
from tests.notifications.conftest import Receiver
from tests.utils.flows import ApiUser, connect
from tests.utils.time_travel import MovableClock
from tracecat.auth.integrations.microsoft import MicrosoftOAuthProvider
from tracecat.auth.integrations.service import IntegrationService
from tracecat.clock import Clock
from tracecat.config import Settings
from tracecat.db import Database
from tracecat.graph.subscriptions import channel_messages_resource
from tracecat.notifications.maintenance import (
    LIFECYCLE_PATH,
    NOTIFICATIONS_PATH,
    SubscriptionMaintenance,
    subscriptions_client,
)
from tracecat.notifications.models import NotificationSubscription, WebhookDelivery
from tracecat.notifications.signing import new_secret

READ_MESSAGES = ["ChannelMessage.Read.All"]
MS_USER = "alice@contoso.example"
T = TypeVar("T")


@dataclass
class Subscribed:
    """A connected user with an active subscription to one channel, on Graph and here."""

    user: ApiUser
    team: str
    channel: str
    graph_id: str
    subscription_id: uuid.UUID
    settings: Settings  # the app's, with TRACECAT_PUBLIC_URL at the server `url`
    url: str


@asynccontextmanager
async def services(
    api: Api, settings: Settings, clock: Clock | None = None
) -> AsyncIterator[SubscriptionMaintenance]:
    """The jobs' objects as the app builds them, on its database and settings, and on its
    clock unless given another."""
    clock = clock or api.clock
    database = Database.from_settings(settings)
    provider = MicrosoftOAuthProvider(settings)
    integrations = IntegrationService(database, settings, provider, clock=clock)
    try:
        yield SubscriptionMaintenance(database, integrations, clock)
    finally:
        provider.close()
        await database.dispose()


def run(
    api: Api,
    settings: Settings,
    work: Callable[[SubscriptionMaintenance], Awaitable[T]],
    clock: Clock | None = None,
) -> T:
    async def go() -> T:
        async with services(api, settings, clock) as maintenance:
            return await work(maintenance)

    return asyncio.run(go())


def catch_up(api: Api, subscribed: Subscribed) -> int:
    return run(api, subscribed.settings, lambda m: m.catch_up.run_once())


@contextmanager
def server(api: Api) -> Iterator[str]:
    with api.another_server(microsoft_extra_scopes=READ_MESSAGES) as url:
        yield url


def subscribe(
    api: Api,
    url: str,
    target_url: str,
    *,
    expires_in: timedelta = timedelta(hours=60),
    before: Callable[[str, str], None] | None = None,
) -> Subscribed:
    """Connect a user through the server at `url`, subscribe on Graph with their token (both
    URLs at `url`, so lifecycle events reach it) and write the row, created now. `before`
    posts in the channel before the subscription exists."""
    user = api.user(f"analyst-{uuid.uuid4().hex[:6]}@example.com")
    with api.browser() as browser:
        browser.base_url = url
        assert connect(browser, url, user, MS_USER).status_code == 200
        team = browser.get("/auth/integrations/microsoft/teams", headers=user.headers).json()[0]
        channel = browser.get(
            f"/auth/integrations/microsoft/teams/{team['id']}/channels", headers=user.headers
        ).json()[0]
    if before is not None:
        before(team["id"], channel["id"])
        time.sleep(0.05)  # the subscription is strictly younger than what was posted
    settings = api.settings.model_copy(
        update={"tracecat_public_url": url, "microsoft_extra_scopes": READ_MESSAGES}
    )
    client_state = secrets.token_urlsafe(48)

    async def create(maintenance: SubscriptionMaintenance) -> tuple[str, uuid.UUID]:
        integrations = maintenance.integrations
        created = await integrations.call_graph(
            uuid.UUID(user.id),
            subscriptions_client(integrations),
            lambda graph: graph.create(
                resource=channel_messages_resource(team["id"], channel["id"]),
                notification_url=f"{url}{NOTIFICATIONS_PATH}",
                lifecycle_notification_url=f"{url}{LIFECYCLE_PATH}",
                expiration=api.clock.now() + expires_in,
                client_state=client_state,
            ),
        )
        async with maintenance.database.session() as session, session.begin():
            row = NotificationSubscription(
                user_id=uuid.UUID(user.id),
                team_id=team["id"],
                channel_id=channel["id"],
                target_url=target_url,
                graph_subscription_id=created.id,
                client_state=client_state,
                secret=new_secret(),
                expires_at=created.expiration_date_time,
                created_at=api.clock.now(),
            )
            session.add(row)
        return created.id, row.id

    graph_id, subscription_id = run(api, settings, create)
    return Subscribed(user, team["id"], channel["id"], graph_id, subscription_id, settings, url)


def post(api: Api, team: str, channel: str, text: str, reply_to: str | None = None) -> str:
    body: dict[str, Any] = {"content": text, "from": "bob@contoso.example"}
    if reply_to is not None:
        body["reply_to"] = reply_to
    return str(
        api.control("POST", f"/teams/{team}/channels/{channel}/messages", json=body).json()["id"]
    )


def subscription_row(api: Api, subscribed: Subscribed) -> NotificationSubscription:
    async def read(maintenance: SubscriptionMaintenance) -> NotificationSubscription:
        async with maintenance.database.session() as session:
            row = await session.get(NotificationSubscription, subscribed.subscription_id)
            assert row is not None
            return row

    return run(api, subscribed.settings, read)


def enqueued(api: Api, subscribed: Subscribed) -> list[str]:
    """The message ids in the outbox of the subscription, one per delivery."""

    async def read(maintenance: SubscriptionMaintenance) -> list[str]:
        async with maintenance.database.session() as session:
            rows = await session.scalars(
                select(WebhookDelivery.message_id).where(
                    WebhookDelivery.subscription_id == subscribed.subscription_id
                )
            )
            return list(rows)

    return run(api, subscribed.settings, read)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_messages_posted_while_down_are_enqueued_once(api: Api, receiver: Receiver) -> None:
    old: dict[str, str] = {}

    def before(team: str, channel: str) -> None:
        old["root"] = post(api, team, channel, "before the subscription")
        old["reply"] = post(api, team, channel, "old reply", reply_to=old["root"])

    with server(api) as url:
        subscribed = subscribe(api, url, receiver.url, before=before)
    # The service is down: Microsoft's notifications reach nobody, nothing is processed.
    team, channel = subscribed.team, subscribed.channel
    root = post(api, team, channel, "alert: suspicious sign-in")
    ack = post(api, team, channel, "ack", reply_to=root)
    late = post(api, team, channel, "late answer in an old thread", reply_to=old["root"])
    second = post(api, team, channel, "another alert")
    expected = {root, ack, late, second}

    catch_up(api, subscribed)
    assert sorted(enqueued(api, subscribed)) == sorted(expected)  # once each, nothing older
    assert catch_up(api, subscribed) == 0  # a second pass (or instance) adds nothing
    assert sorted(enqueued(api, subscribed)) == sorted(expected)
    row = subscription_row(api, subscribed)
    assert row.last_seen_at is not None and row.last_seen_at >= row.created_at

    # The app's delivery worker relays each of them once, replies with their thread's root.
    wait_for(lambda: len(receiver.requests) >= len(expected), "the webhooks did not arrive")
    time.sleep(0.3)
    messages = [json.loads(r.body)["data"]["message"] for r in receiver.requests]
    assert sorted(m["id"] for m in messages) == sorted(expected)
    replies = {m["id"]: m.get("replyToId") for m in messages}
    assert replies[ack] == root and replies[late] == old["root"] and replies[root] is None


def test_catch_up_reads_only_active_subscriptions_and_parks_on_a_refused_grant(
    api: Api, receiver: Receiver
) -> None:
    with server(api) as url:
        subscribed = subscribe(api, url, receiver.url)
    posted = post(api, subscribed.team, subscribed.channel, "while the grant is revoked")
    api.control("POST", f"/users/{MS_USER}/revoke")
    assert catch_up(api, subscribed) == 0
    assert subscription_row(api, subscribed).status == "reauthorization_required"
    assert enqueued(api, subscribed) == []
    # Parked: later passes leave it alone (no Graph call, nothing enqueued).
    assert catch_up(api, subscribed) == 0
    assert posted not in enqueued(api, subscribed)


def test_catch_up_of_one_subscription_ignores_threads_older_than_a_week(
    api: Api, receiver: Receiver
) -> None:
    """A reply is read only in the threads of root messages from the last 7 days."""
    with server(api) as url:
        subscribed = subscribe(api, url, receiver.url)
    root = post(api, subscribed.team, subscribed.channel, "an alert")

    async def later(maintenance: SubscriptionMaintenance) -> int:
        return await maintenance.catch_up.subscription(subscribed.subscription_id)

    run(api, subscribed.settings, later)
    assert enqueued(api, subscribed) == [root]
    reply = post(api, subscribed.team, subscribed.channel, "reply, days on", reply_to=root)
    eight_days_on = MovableClock()
    eight_days_on.advance(timedelta(days=8).total_seconds())
    assert run(api, subscribed.settings, later, clock=eight_days_on) == 0
    assert enqueued(api, subscribed) == [root]
    run(api, subscribed.settings, later)  # within the week it is found
    assert sorted(enqueued(api, subscribed)) == sorted([root, reply])
