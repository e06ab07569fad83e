"""Sending through the worker to a real local receiver, on both databases: signatures that
verify, delivered/retried/failed/gone, secret rotation."""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from tests.notifications.conftest import Receiver, chat_message, enqueue, make_subscription
from tests.utils.time_travel import MovableClock
from tracecat.config import Settings
from tracecat.db import Database
from tracecat.notifications.delivery import DeliveryPolicy, DeliveryWorker, Outcome
from tracecat.notifications.models import (
    NotificationSubscription,
    SubscriptionStatus,
    WebhookDelivery,
)
from tracecat.notifications.outbox import ClaimedDelivery
from tracecat.notifications.signing import rotated

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def worker(
    database: Database,
    client: httpx.AsyncClient,
    clock: MovableClock,
    retry_seconds: tuple[float, ...] = (5.0, 30.0),
    timeout_seconds: float = 15.0,
) -> DeliveryWorker:
    policy = DeliveryPolicy(retry_seconds, LOOPBACK, timeout_seconds=timeout_seconds)
    return DeliveryWorker(database, client, policy, clock=clock, random=lambda: 0.5)


async def the_delivery(database: Database) -> WebhookDelivery:
    async with database.session() as session:
        return (await session.scalars(select(WebhookDelivery))).one()


async def the_subscription(database: Database) -> NotificationSubscription:
    async with database.session() as session:
        return (await session.scalars(select(NotificationSubscription))).one()


async def test_a_2xx_is_delivered_with_a_signature_that_verifies(
    database: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    subscription = await make_subscription(database, receiver.url + "?token=abc")
    clock = MovableClock()
    await enqueue(database, subscription, chat_message("7", "héllo"), clock.now())
    receiver.statuses = [204]

    [result] = await worker(database, client, clock).run_once()

    assert (result.outcome, result.status_code) == (Outcome.DELIVERED, 204)
    [request] = receiver.requests
    delivery = await the_delivery(database)
    assert request.path == "/hook?token=abc"
    assert request.body == delivery.payload.encode()
    assert request.headers["webhook-id"] == delivery.id
    assert request.headers["Content-Type"] == "application/json"
    assert len(request.headers["webhook-signature"].split()) == 1
    verified = Webhook(subscription.secret).verify(request.body, request.headers)
    assert verified["data"]["message"]["body"]["content"] == "héllo"
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 204)
    assert delivery.delivered_at is not None and delivery.next_attempt_at is None
    assert await worker(database, client, clock).run_once() == []


async def test_a_failure_is_retried_on_schedule_with_the_same_webhook_id(
    database: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    subscription = await make_subscription(database, receiver.url)
    clock = MovableClock()
    await enqueue(database, subscription, chat_message(), clock.now())
    receiver.statuses = [500]
    sender = worker(database, client, clock)

    [result] = await sender.run_once()
    failed_at = clock.now()
    assert (result.outcome, result.status_code) == (Outcome.RETRY, 500)
    delivery = await the_delivery(database)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    assert delivery.last_error == "the target answered HTTP 500"
    # 5 s stretched by jitter 0.1 * 0.5: 5.25 s after the failure.
    assert delivery.next_attempt_at is not None
    pause = (delivery.next_attempt_at - failed_at).total_seconds()
    assert 5.2 < pause <= 5.25

    clock.advance(5)
    assert await sender.run_once() == []
    clock.advance(1)
    [result] = await sender.run_once()
    assert result.outcome == Outcome.DELIVERED
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert (await the_delivery(database)).attempts == 2


async def test_the_delivery_fails_once_the_schedule_is_spent(
    database: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    subscription = await make_subscription(database, receiver.url)
    clock = MovableClock()
    await enqueue(database, subscription, chat_message(), clock.now())
    receiver.statuses = [503, 502, 500]
    sender = worker(database, client, clock, retry_seconds=(1.0, 2.0))

    outcomes = []
    for _ in range(3):
        [result] = await sender.run_once()
        outcomes.append(result.outcome)
        clock.advance(10)
    assert outcomes == [Outcome.RETRY, Outcome.RETRY, Outcome.FAILED]
    delivery = await the_delivery(database)
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("failed", 3, None)
    assert await sender.run_once() == []


async def test_410_fails_the_delivery_and_disables_the_subscription(
    database: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    subscription = await make_subscription(database, receiver.url)
    clock = MovableClock()
    await enqueue(database, subscription, chat_message("1"), clock.now())
    await enqueue(database, subscription, chat_message("2"), clock.now() + timedelta(hours=1))
    receiver.statuses = [410]
    disabled: list[ClaimedDelivery] = []

    async def on_disabled(claim: ClaimedDelivery) -> None:
        disabled.append(claim)

    sender = worker(database, client, clock)
    sender.on_disabled = on_disabled
    [result] = await sender.run_once()

    assert (result.outcome, result.subscription_disabled) == (Outcome.GONE, True)
    assert [c.subscription_id for c in disabled] == [subscription.id]
    assert (await the_subscription(database)).status == SubscriptionStatus.DISABLED
    async with database.session() as session:
        rows = (await session.scalars(select(WebhookDelivery))).all()
    assert {(r.message_id, r.status, r.last_status_code) for r in rows} == {
        ("1", "failed", 410),
        ("2", "failed", None),
    }
    clock.advance(7200)
    assert await sender.run_once() == []


async def test_after_a_rotation_both_secrets_sign_for_a_day(
    database: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    clock = MovableClock()
    old = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    new, previous, previous_expires_at = rotated(old, clock.now())
    subscription = await make_subscription(
        database,
        receiver.url,
        secret=new,
        previous_secret=previous,
        previous_secret_expires_at=previous_expires_at,
    )
    await enqueue(database, subscription, chat_message("1"), clock.now())
    await worker(database, client, clock).run_once()

    [request] = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        Webhook(secret).verify(request.body, request.headers)

    # A day later only the new secret signs (timestamps checked against the real time, so
    # the headers are compared, not verified).
    clock.advance(24 * 3600)
    await enqueue(database, subscription, chat_message("2"), clock.now())
    await worker(database, client, clock).run_once()
    assert len(receiver.requests[1].headers["webhook-signature"].split(" ")) == 1


async def test_connection_errors_and_timeouts_are_retried_without_secrets(
    database: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/hook?token=s3cr3t"
    refused = await make_subscription(database, closed)
    slow = await make_subscription(database, receiver.url)
    clock = MovableClock()
    await enqueue(database, refused, chat_message("1"), clock.now())
    await enqueue(database, slow, chat_message("2"), clock.now())
    receiver.delay = 1.0

    results = await worker(database, client, clock, timeout_seconds=0.3).run_once()

    assert {r.outcome for r in results} == {Outcome.RETRY}
    async with database.session() as session:
        rows = {r.subscription_id: r for r in (await session.scalars(select(WebhookDelivery)))}
    assert rows[slow.id].last_error == "timed out"
    error = rows[refused.id].last_error or ""
    assert error.startswith("ConnectError") and "s3cr3t" not in error
    assert refused.secret not in json.dumps([r.last_error for r in rows.values()])
    assert all(r.last_status_code is None for r in rows.values())


async def test_a_refused_target_is_a_failed_attempt(
    database: Database, client: httpx.AsyncClient
) -> None:
    subscription = await make_subscription(database, "http://169.254.169.254/latest/meta-data")
    clock = MovableClock()
    await enqueue(database, subscription, chat_message(), clock.now())
    [result] = await worker(database, client, clock).run_once()
    assert result.outcome == Outcome.RETRY
    assert "private, loopback or reserved" in (result.error or "")


async def test_the_worker_from_settings_owns_its_client(database: Database) -> None:
    settings = Settings(
        tracecat_webhook_retry_seconds=[1.0, 2.0],
        tracecat_webhook_allowed_networks=[ipaddress.ip_network("10.0.0.0/8")],
    )
    sender = DeliveryWorker.from_settings(database, settings)
    assert sender.policy.retry_seconds == (1.0, 2.0)
    assert sender.policy.allowed_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    # A lease longer than a whole batch can take, so a live worker never loses its claim.
    turns = -(-sender.policy.batch_size // sender.policy.concurrency)
    assert sender.policy.lease.total_seconds() > sender.policy.timeout_seconds * turns
    assert await sender.run_once() == []
    await sender.aclose()
    assert sender.client.is_closed
