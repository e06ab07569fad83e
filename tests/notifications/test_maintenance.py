"""Keeping Graph's subscriptions alive: renewal before expiry, re-creation of one Graph lost
(with catch-up), the lifecycle events, parking on a refused grant and resuming with catch-up
after the user reconnects. Against the emulator, on both databases."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from tests.conftest import Api
from tests.notifications.conftest import Receiver
from tests.notifications.test_catch_up import (
    MS_USER,
    Subscribed,
    enqueued,
    post,
    run,
    server,
    subscribe,
    subscription_row,
    wait_for,
)
from tests.utils.flows import connect
from tracecat.emulator.subscriptions import parse_datetime
from tracecat.notifications.maintenance import (
    LIFECYCLE_PATH,
    NOTIFICATIONS_PATH,
    SubscriptionMaintenance,
    subscriptions_client,
)
from tracecat.notifications.models import InboundNotification

DUE = timedelta(hours=30)  # under half of the 70 h lifetime left


def graph_subscriptions(api: Api) -> dict[str, dict[str, Any]]:
    """The emulator's live subscriptions by id."""
    listed = api.control("GET", "/subscriptions").json()["subscriptions"]
    return {item["id"]: item for item in listed}


def renew(api: Api, subscribed: Subscribed) -> int:
    return run(api, subscribed.settings, lambda m: m.run_once())


def lifecycle_events(api: Api, subscribed: Subscribed) -> list[InboundNotification]:
    async def read(maintenance: SubscriptionMaintenance) -> list[InboundNotification]:
        async with maintenance.database.session() as session:
            rows = await session.scalars(
                select(InboundNotification).where(
                    InboundNotification.subscription_id == subscribed.subscription_id,
                    InboundNotification.kind == "lifecycle",
                )
            )
            return list(rows)

    return run(api, subscribed.settings, read)


def send_lifecycle(api: Api, subscribed: Subscribed, event: str) -> None:
    """Send `event` from the emulator and wait until the server kept it."""
    api.control("POST", f"/subscriptions/{subscribed.graph_id}/lifecycle", json={"event": event})
    wait_for(lambda: bool(lifecycle_events(api, subscribed)), "the lifecycle event was not kept")


def finish_lifecycle(api: Api, subscribed: Subscribed, event: str) -> InboundNotification:
    """Process the kept event (here, or by the server's own job if it got there first);
    returns the processed row."""

    def processed() -> bool:
        run(api, subscribed.settings, lambda m: m.process_lifecycle())
        return all(e.processed_at is not None for e in lifecycle_events(api, subscribed))

    wait_for(processed, "the lifecycle event was not processed")
    (row,) = lifecycle_events(api, subscribed)
    assert row.lifecycle_event == event
    return row


def process_lifecycle(api: Api, subscribed: Subscribed, event: str) -> InboundNotification:
    send_lifecycle(api, subscribed, event)
    return finish_lifecycle(api, subscribed, event)


def seconds_left(api: Api, expiration: str) -> float:
    expires = parse_datetime(expiration)
    assert expires is not None
    return expires - api.clock.now().timestamp()


def assert_recreated(api: Api, subscribed: Subscribed) -> str:
    """The row names a new live Graph subscription with the same clientState and our URLs;
    the old one is gone. Returns the new id."""
    row = subscription_row(api, subscribed)
    assert row.status == "active"
    assert row.graph_subscription_id not in (None, subscribed.graph_id)
    live = graph_subscriptions(api)
    assert subscribed.graph_id not in live
    new = live[str(row.graph_subscription_id)]
    assert new["clientState"] == row.client_state
    assert new["notificationUrl"] == f"{subscribed.url}{NOTIFICATIONS_PATH}"
    assert new["lifecycleNotificationUrl"] == f"{subscribed.url}{LIFECYCLE_PATH}"
    assert seconds_left(api, new["expirationDateTime"]) > 69 * 3600
    return str(row.graph_subscription_id)


def test_renewal_extends_the_expiry_on_graph(api: Api, receiver: Receiver) -> None:
    with server(api) as url:
        due = subscribe(api, url, receiver.url, expires_in=DUE)
        fresh = subscribe(api, url, receiver.url)  # 60 h left: not due
        before = graph_subscriptions(api)[fresh.graph_id]["expirationDateTime"]
        renew(api, due)  # (or the app's own renewal job, were it first)
        live = graph_subscriptions(api)
        assert seconds_left(api, live[due.graph_id]["expirationDateTime"]) > 69 * 3600
        assert live[fresh.graph_id]["expirationDateTime"] == before
        row = subscription_row(api, due)
        assert row.expires_at is not None
        on_graph = parse_datetime(live[due.graph_id]["expirationDateTime"])
        assert on_graph is not None and abs(row.expires_at.timestamp() - on_graph) < 1
        assert renew(api, due) == 0  # renewed: not due any more
        assert row.graph_subscription_id == due.graph_id and row.status == "active"


def test_a_subscription_graph_lost_is_recreated_and_caught_up(api: Api, receiver: Receiver) -> None:
    with server(api) as url:
        subscribed = subscribe(api, url, receiver.url, expires_in=DUE)

        async def lose(maintenance: SubscriptionMaintenance) -> None:
            integrations = maintenance.integrations
            await integrations.call_graph(
                uuid.UUID(subscribed.user.id),
                subscriptions_client(integrations),
                lambda graph: graph.delete(subscribed.graph_id),
            )

        run(api, subscribed.settings, lose)
        missed = post(api, subscribed.team, subscribed.channel, "while it was gone")
        renew(api, subscribed)  # the renewal's 404: re-created
        assert_recreated(api, subscribed)
        assert enqueued(api, subscribed) == [missed]


def test_subscription_removed_recreates_with_catch_up(api: Api, receiver: Receiver) -> None:
    with server(api) as url:
        subscribed = subscribe(api, url, receiver.url)
        send_lifecycle(api, subscribed, "subscriptionRemoved")
        # Graph no longer notifies: only the catch-up after the re-creation can find it.
        missed = post(api, subscribed.team, subscribed.channel, "posted while removed")
        # An instance without TRACECAT_PUBLIC_URL cannot re-create: it leaves the event pending.
        unset = subscribed.settings.model_copy(update={"tracecat_public_url": None})
        assert run(api, unset, lambda m: m.process_lifecycle()) == 0
        (pending,) = lifecycle_events(api, subscribed)
        assert pending.processed_at is None and "TRACECAT_PUBLIC_URL" in (pending.last_error or "")
        event = finish_lifecycle(api, subscribed, "subscriptionRemoved")
        assert event.processed_at is not None
        assert_recreated(api, subscribed)
        wait_for(lambda: missed in enqueued(api, subscribed), "the message was not caught up")
        assert enqueued(api, subscribed).count(missed) == 1


def test_reauthorization_required_is_answered(api: Api, receiver: Receiver) -> None:
    with server(api) as url:
        subscribed = subscribe(api, url, receiver.url)
        event = process_lifecycle(api, subscribed, "reauthorizationRequired")
        assert event.processed_at is not None and event.last_error is None
        live = graph_subscriptions(api)[subscribed.graph_id]
        assert live["needsReauthorization"] is False
        assert subscription_row(api, subscribed).status == "active"


def test_missed_catches_up(api: Api, receiver: Receiver) -> None:
    with server(api) as url:
        subscribed = subscribe(api, url, receiver.url)
    # Down: the post's notification reaches nobody; the lifecycle event is kept as a row.
    posted = post(api, subscribed.team, subscribed.channel, "nobody heard this")

    async def keep_missed(maintenance: SubscriptionMaintenance) -> None:
        async with maintenance.database.session() as session, session.begin():
            session.add(
                InboundNotification(
                    subscription_id=subscribed.subscription_id,
                    kind="lifecycle",
                    lifecycle_event="missed",
                )
            )

    run(api, subscribed.settings, keep_missed)
    finish_lifecycle(api, subscribed, "missed")
    assert enqueued(api, subscribed) == [posted]


def test_a_revoked_grant_parks_and_reconnecting_resumes_with_catch_up(
    api: Api, receiver: Receiver
) -> None:
    with server(api) as url:
        subscribed = subscribe(api, url, receiver.url, expires_in=DUE)
    # The service is down from here until the user reconnects: only the catch-up on resuming
    # can find what is posted meanwhile.
    api.control("POST", f"/users/{MS_USER}/revoke")
    assert renew(api, subscribed) == 0
    assert subscription_row(api, subscribed).status == "reauthorization_required"
    parked = post(api, subscribed.team, subscribed.channel, "while parked")
    refreshes = api.refreshes()
    assert renew(api, subscribed) == 0  # still revoked: left parked, Microsoft not asked
    assert run(api, subscribed.settings, lambda m: m.catch_up.run_once()) == 0
    assert api.refreshes() == refreshes
    assert subscription_row(api, subscribed).status == "reauthorization_required"
    with server(api) as url, api.browser() as browser:
        assert connect(browser, url, subscribed.user, MS_USER).status_code == 200
    renew(api, subscribed)
    row = subscription_row(api, subscribed)
    assert row.status == "active" and row.graph_subscription_id == subscribed.graph_id
    live = graph_subscriptions(api)[subscribed.graph_id]
    assert seconds_left(api, live["expirationDateTime"]) > 69 * 3600
    assert enqueued(api, subscribed) == [parked]


def test_a_refused_grant_on_a_lifecycle_event_parks(api: Api, receiver: Receiver) -> None:
    with server(api) as url:
        subscribed = subscribe(api, url, receiver.url)
        api.control("POST", f"/users/{MS_USER}/revoke")
        event = process_lifecycle(api, subscribed, "reauthorizationRequired")
        assert event.last_error is not None and "parked" in event.last_error
        assert subscription_row(api, subscribed).status == "reauthorization_required"
