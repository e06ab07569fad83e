"""The outbox on both databases: idempotent enqueue, claims by exactly one worker, leases
that lapse, the retry schedule."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from tests.notifications.conftest import (
    chat_message,
    enqueue,
    make_subscription,
    open_database,
)
from tracecat.db import Database
from tracecat.notifications import outbox
from tracecat.notifications.models import (
    MESSAGE_CREATED,
    DeliveryStatus,
    SubscriptionStatus,
    WebhookDelivery,
)

LEASE = timedelta(seconds=60)


async def deliveries(database: Database) -> list[WebhookDelivery]:
    async with database.session() as session:
        return list((await session.scalars(select(WebhookDelivery))).all())


async def test_enqueue_is_idempotent(database: Database) -> None:
    subscription = await make_subscription(database, "https://hooks.example.com/x")
    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    message = chat_message("42")

    assert await enqueue(database, subscription, message, now) is True
    assert await enqueue(database, subscription, message, now + timedelta(minutes=1)) is False

    [delivery] = await deliveries(database)
    assert delivery.id == outbox.webhook_id(subscription.id, MESSAGE_CREATED, "42")
    assert delivery.id.startswith("msg_")
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("pending", 0, now)
    body = json.loads(delivery.payload)
    assert body == {
        "type": "message.created",
        "timestamp": "2026-12-01T10:00:00Z",
        "data": {
            "subscription_id": str(subscription.id),
            "team_id": "team-1",
            "channel_id": "19:channel@thread.tacv2",
            "message": message,
        },
    }


async def test_enqueue_is_part_of_the_callers_transaction(database: Database) -> None:
    subscription = await make_subscription(database, "https://hooks.example.com/x")
    with pytest.raises(RuntimeError):
        async with database.session() as session, session.begin():
            assert await outbox.enqueue(session, subscription, chat_message("1"))
            raise RuntimeError("recording the notification failed: all of it rolls back")
    assert await deliveries(database) == []


async def test_a_due_delivery_is_claimed_by_exactly_one_of_two_workers(
    database: Database, upgraded_url: str
) -> None:
    subscription = await make_subscription(database, "https://hooks.example.com/x")
    other = open_database(upgraded_url)
    try:
        for round_ in range(5):
            await enqueue(database, subscription, chat_message(f"m{round_}"))
            now = datetime.now(UTC)
            first, second = await asyncio.gather(
                outbox.claim_due(database, now, 10, LEASE), outbox.claim_due(other, now, 10, LEASE)
            )
            assert len(first) + len(second) == 1
    finally:
        await other.dispose()


async def test_concurrent_claims_are_disjoint_and_cover_everything(
    database: Database, upgraded_url: str
) -> None:
    subscription = await make_subscription(database, "https://hooks.example.com/x")
    for number in range(30):
        await enqueue(database, subscription, chat_message(f"m{number}"))
    workers = [open_database(upgraded_url) for _ in range(3)]
    try:
        now = datetime.now(UTC)
        claims = await asyncio.gather(*(outbox.claim_due(w, now, 12, LEASE) for w in workers))
    finally:
        for worker in workers:
            await worker.dispose()
    ids = [claim.id for batch in claims for claim in batch]
    assert len(ids) == len(set(ids)) == 30


# PostgreSQL only: SQLite has one writer at a time, so there a claim waits and cannot skip.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_skips_rows_another_worker_is_claiming(
    database: Database, upgraded_url: str
) -> None:
    subscription = await make_subscription(database, "https://hooks.example.com/x")
    await enqueue(database, subscription, chat_message("held"), datetime.now(UTC) - timedelta(1))
    await enqueue(database, subscription, chat_message("free"))
    held = outbox.webhook_id(subscription.id, MESSAGE_CREATED, "held")
    other = open_database(upgraded_url)
    try:
        async with other.session() as session, session.begin():
            # A worker in the middle of its claim: the row is locked, not yet leased.
            await session.execute(
                text("SELECT id FROM webhook_deliveries WHERE id = :id FOR UPDATE"), {"id": held}
            )
            claims = await asyncio.wait_for(
                outbox.claim_due(database, datetime.now(UTC), 10, LEASE), timeout=5
            )
    finally:
        await other.dispose()
    assert [c.id for c in claims] == [outbox.webhook_id(subscription.id, MESSAGE_CREATED, "free")]


async def test_a_crashed_workers_lease_lapses_and_another_retries(database: Database) -> None:
    subscription = await make_subscription(database, "https://hooks.example.com/x")
    now = datetime.now(UTC)
    await enqueue(database, subscription, chat_message("1"), now)

    [crashed] = await outbox.claim_due(database, now, 10, LEASE)
    assert await outbox.claim_due(database, now + LEASE - timedelta(seconds=1), 10, LEASE) == []
    later = now + LEASE + timedelta(seconds=1)
    [retried] = await outbox.claim_due(database, later, 10, LEASE)
    assert retried.id == crashed.id and retried.locked_until == later + LEASE

    # The first worker wakes up late: its failure is not written over the new claim.
    assert not await outbox.record_failure(
        database, crashed, status_code=500, error="late", retry_at=later
    )
    assert await outbox.record_failure(
        database, retried, status_code=500, error="HTTP 500", retry_at=later + LEASE
    )
    [delivery] = await deliveries(database)
    assert (delivery.attempts, delivery.last_error, delivery.locked_until) == (1, "HTTP 500", None)


async def test_only_due_deliveries_of_live_subscriptions_are_claimed(database: Database) -> None:
    live = await make_subscription(database, "https://hooks.example.com/live")
    disabled = await make_subscription(
        database, "https://hooks.example.com/off", status=SubscriptionStatus.DISABLED
    )
    now = datetime.now(UTC)
    await enqueue(database, live, chat_message("due"), now)
    await enqueue(database, live, chat_message("later"), now + timedelta(minutes=5))
    await enqueue(database, disabled, chat_message("due"), now)

    claims = await outbox.claim_due(database, now, 10, LEASE)
    assert [c.id for c in claims] == [outbox.webhook_id(live.id, MESSAGE_CREATED, "due")]
    assert claims[0].secret.startswith("whsec_") and claims[0].target_url.endswith("/live")
    assert claims[0].secret not in repr(claims[0])


async def test_a_delivered_message_is_not_claimed_again(database: Database) -> None:
    subscription = await make_subscription(database, "https://hooks.example.com/x")
    now = datetime.now(UTC)
    await enqueue(database, subscription, chat_message("1"), now)
    [claim] = await outbox.claim_due(database, now, 10, LEASE)
    await outbox.record_delivered(database, claim, 204, now)
    later = now + LEASE * 10
    assert await outbox.claim_due(database, later, 10, LEASE) == []
    await enqueue(database, subscription, chat_message("1"), later)  # a repeat notification
    [delivery] = await deliveries(database)
    assert (delivery.status, delivery.delivered_at, delivery.next_attempt_at) == (
        DeliveryStatus.DELIVERED,
        now,
        None,
    )


def test_the_retry_schedule_with_jitter() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    schedule = (5.0, 30.0, 120.0)
    assert outbox.next_attempt_at(1, schedule, now, lambda: 0.0) == now + timedelta(seconds=5)
    assert outbox.next_attempt_at(2, schedule, now, lambda: 1.0) == now + timedelta(seconds=33)
    assert outbox.next_attempt_at(3, schedule, now, lambda: 0.5) == now + timedelta(seconds=126)
    assert outbox.next_attempt_at(4, schedule, now, lambda: 0.5) is None
