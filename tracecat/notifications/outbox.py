"""The transactional outbox of webhooks: never lose one, never send one twice on purpose.

- `enqueue` inserts the delivery in the CALLER's transaction (the one that records the
  notification), so a notification is either stored with its delivery or not at all. The
  same message enqueued again is a no-op (`INSERT ... ON CONFLICT DO NOTHING`).
- `claim_due` hands due deliveries to exactly one worker: one statement that picks, locks
  (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: the write lock every transaction here takes
  with `BEGIN IMMEDIATE`) and stamps a lease (`locked_until`), then commits. A worker that
  dies holding a lease loses it when it lapses, and another worker retries the delivery.
- `record_*` write an attempt's outcome. A failure is written only by the worker that still
  holds the lease (its `locked_until`), so a slow worker whose lease lapsed cannot undo the
  outcome of the one that took over; a success is written by whoever saw it.

Only a crash between the target's 2xx and our commit repeats a delivery, with the same
`webhook-id`, which receivers use to deduplicate.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from tracecat.db import Database
from tracecat.notifications.models import (
    MESSAGE_CREATED,
    DeliveryStatus,
    NotificationSubscription,
    SubscriptionStatus,
    WebhookDelivery,
)

# uuid5 namespace of webhook ids: any fixed UUID works, it must only never change.
_WEBHOOK_ID_NAMESPACE = uuid.UUID("4f1c2b9e-8d3a-5e7f-9a61-0c2d4b6e8f10")
# Last errors are for people reading a status page, not for logs: keep them short.
MAX_ERROR_LENGTH = 200


def webhook_id(subscription_id: uuid.UUID, event_type: str, message_id: str) -> str:
    """The `webhook-id` of a message's event for a subscription: the same for every retry
    and every repeat of the notification."""
    name = f"{subscription_id}:{event_type}:{message_id}"
    return "msg_" + uuid.uuid5(_WEBHOOK_ID_NAMESPACE, name).hex


def build_payload(
    subscription: NotificationSubscription,
    message: dict[str, Any],
    event_type: str,
    occurred_at: datetime,
) -> str:
    """The body, as JSON text: built once and stored, so every attempt sends (and signs)
    the same bytes."""
    body = {
        "type": event_type,
        "timestamp": occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "subscription_id": str(subscription.id),
            "team_id": subscription.team_id,
            "channel_id": subscription.channel_id,
            "message": message,
        },
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


async def enqueue(
    session: AsyncSession,
    subscription: NotificationSubscription,
    message: dict[str, Any],
    event_type: str = MESSAGE_CREATED,
    now: datetime | None = None,
) -> bool:
    """Add the delivery of `message` (a chatMessage as Graph returns it) in the caller's
    transaction, due at once; the caller commits. True if it is new, False if this message
    was already enqueued for this subscription (nothing changes then).

    `now` is the event's time (the body's `timestamp`) and when the delivery is due.
    """
    now = now or datetime.now(UTC)
    message_id = str(message["id"])
    values = {
        "id": webhook_id(subscription.id, event_type, message_id),
        "subscription_id": subscription.id,
        "event_type": event_type,
        "message_id": message_id,
        "payload": build_payload(subscription, message, event_type, now),
        "status": DeliveryStatus.PENDING,
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
    }
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(WebhookDelivery)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(WebhookDelivery.id)
    )
    return (await session.execute(statement)).first() is not None


@dataclass(frozen=True)
class ClaimedDelivery:
    """What a worker needs to send one delivery; `locked_until` is its lease, and proof of
    it when writing a failure. `repr` shows no secret."""

    id: str
    subscription_id: uuid.UUID
    payload: str
    attempts: int
    locked_until: datetime
    target_url: str
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None

    def __repr__(self) -> str:
        return f"ClaimedDelivery(id={self.id}, attempts={self.attempts})"


def _due(now: datetime, limit: int) -> Any:
    live = select(NotificationSubscription.id).where(
        NotificationSubscription.status != SubscriptionStatus.DISABLED
    )
    return (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until <= now),
            WebhookDelivery.subscription_id.in_(live),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        # PostgreSQL: rows another worker is claiming right now are skipped, not waited for.
        # SQLite renders no FOR UPDATE: BEGIN IMMEDIATE already made this transaction the
        # only writer.
        .with_for_update(skip_locked=True)
    )


_ANY_DUE = (
    select(WebhookDelivery.id)
    .where(
        WebhookDelivery.status == DeliveryStatus.PENDING,
        WebhookDelivery.next_attempt_at <= bindparam("now"),
        or_(
            WebhookDelivery.locked_until.is_(None),
            WebhookDelivery.locked_until <= bindparam("now"),
        ),
    )
    .limit(1)
)


async def claim_due(
    database: Database, now: datetime, limit: int, lease: timedelta
) -> list[ClaimedDelivery]:
    """Claim up to `limit` due deliveries for `lease` and commit: until the lease lapses no
    other worker (process or instance) claims them."""
    locked_until = now + lease
    # A cheap look first, without a transaction: the worker polls every second, and an empty
    # outbox (the usual case) must not take SQLite's write lock or a PostgreSQL row lock.
    if not await database.fetch_all(_ANY_DUE, {"now": now}):
        return []
    async with database.session() as session, session.begin():
        claim = (
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(_due(now, limit)))
            .values(locked_until=locked_until)
            .returning(WebhookDelivery.id)
            .execution_options(synchronize_session=False)
        )
        ids = list((await session.execute(claim)).scalars())
        if not ids:
            return []
        rows = await session.execute(
            select(
                WebhookDelivery.id,
                WebhookDelivery.subscription_id,
                WebhookDelivery.payload,
                WebhookDelivery.attempts,
                NotificationSubscription.target_url,
                NotificationSubscription.secret,
                NotificationSubscription.previous_secret,
                NotificationSubscription.previous_secret_expires_at,
            )
            .join(NotificationSubscription)
            .where(WebhookDelivery.id.in_(ids))
            .order_by(WebhookDelivery.next_attempt_at)
        )
        return [
            ClaimedDelivery(
                id=row.id,
                subscription_id=row.subscription_id,
                payload=row.payload,
                attempts=row.attempts,
                locked_until=locked_until,
                target_url=row.target_url,
                secret=row.secret,
                previous_secret=row.previous_secret,
                previous_secret_expires_at=row.previous_secret_expires_at,
            )
            for row in rows
        ]


def next_attempt_at(
    attempts: int,
    retry_seconds: Sequence[float],
    now: datetime,
    random: Callable[[], float],
    jitter: float = 0.1,
) -> datetime | None:
    """When to try again after `attempts` failed attempts, or None when the schedule is
    spent. The pause is stretched by up to `jitter` of itself, so deliveries that failed
    together (a receiver's outage) do not all come back in the same second."""
    if attempts > len(retry_seconds):
        return None
    pause = retry_seconds[attempts - 1] * (1 + jitter * random())
    return now + timedelta(seconds=pause)


def short_error(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_ERROR_LENGTH else line[: MAX_ERROR_LENGTH - 1] + "…"


async def record_delivered(
    database: Database, claim: ClaimedDelivery, status_code: int, now: datetime
) -> None:
    async with database.session() as session, session.begin():
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == claim.id, WebhookDelivery.status == DeliveryStatus.PENDING)
            .values(
                status=DeliveryStatus.DELIVERED,
                attempts=claim.attempts + 1,
                last_status_code=status_code,
                last_error=None,
                delivered_at=now,
                next_attempt_at=None,
                locked_until=None,
            )
            .execution_options(synchronize_session=False)
        )


async def record_failure(
    database: Database,
    claim: ClaimedDelivery,
    *,
    status_code: int | None,
    error: str,
    retry_at: datetime | None,
) -> bool:
    """A failed attempt: pending again until `retry_at`, or `failed` when None. False when
    the lease was lost (another worker took over; its outcome stands)."""
    async with database.session() as session, session.begin():
        result = await session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == claim.id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.locked_until == claim.locked_until,
            )
            .values(
                status=DeliveryStatus.PENDING if retry_at else DeliveryStatus.FAILED,
                attempts=claim.attempts + 1,
                last_status_code=status_code,
                last_error=short_error(error),
                next_attempt_at=retry_at,
                locked_until=None,
            )
            .execution_options(synchronize_session=False)
            .returning(WebhookDelivery.id)
        )
        return result.first() is not None


GONE_ERROR = "the target answered 410 Gone: subscription disabled"


async def record_gone(
    database: Database, claim: ClaimedDelivery, now: datetime, status_code: int = 410
) -> bool:
    """The target said 410 Gone: this delivery and every other pending one of the
    subscription fail, and the subscription is disabled. True if this call disabled it (the
    caller then deletes Graph's subscription)."""
    async with database.session() as session, session.begin():
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == claim.id, WebhookDelivery.status == DeliveryStatus.PENDING)
            .values(attempts=claim.attempts + 1, last_status_code=status_code)
            .execution_options(synchronize_session=False)
        )
        await session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.subscription_id == claim.subscription_id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
            )
            .values(
                status=DeliveryStatus.FAILED,
                last_error=GONE_ERROR,
                next_attempt_at=None,
                locked_until=None,
            )
            .execution_options(synchronize_session=False)
        )
        disabled = await session.execute(
            update(NotificationSubscription)
            .where(
                NotificationSubscription.id == claim.subscription_id,
                NotificationSubscription.status != SubscriptionStatus.DISABLED,
            )
            .values(status=SubscriptionStatus.DISABLED, updated_at=now)
            .execution_options(synchronize_session=False)
            .returning(NotificationSubscription.id)
        )
        return disabled.first() is not None
