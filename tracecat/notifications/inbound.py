"""What Microsoft POSTs to us: change and lifecycle notifications, kept before the 202.

Each notification names Graph's subscription and echoes its `clientState`, a secret we chose:
one that does not match (in constant time) or names no subscription of ours is dropped,
counted in /metrics, recorded in the audit log (`notification.forged`, under the
subscription's user when the subscription is ours) and never relayed. The rest are stored
in one transaction and answered 202 at once (Graph wants an answer within 3 s); fetching the
message and enqueueing its webhook happens afterwards, in a job, so a slow Graph or target
never slows the answer.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select

from tracecat.audit.models import AuditActor, AuditEvent, AuditOutcome
from tracecat.audit.service import AuditLog
from tracecat.clock import Clock
from tracecat.db import Database
from tracecat.exceptions import BadRequestError
from tracecat.metrics import NOTIFICATIONS_RECEIVED
from tracecat.notifications.models import (
    InboundKind,
    InboundNotification,
    NotificationSubscription,
)

logger = logging.getLogger(__name__)

# Lifecycle events Graph documents; anything else is kept out.
LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})

_BY_GRAPH_ID = select(NotificationSubscription).where(
    NotificationSubscription.graph_subscription_id.in_(bindparam("ids", expanding=True))
)


@dataclass(frozen=True)
class _Item:
    subscription_id: str
    client_state: str
    resource: str | None
    lifecycle_event: str | None


def _items(body: object, kind: InboundKind) -> list[_Item] | None:
    """The notifications in Graph's `{"value": [...]}`, or None when the body is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("value"), list):
        return None
    items = []
    for raw in body["value"]:
        if not isinstance(raw, dict):
            return None
        subscription_id, client_state = raw.get("subscriptionId"), raw.get("clientState")
        if not isinstance(subscription_id, str) or not isinstance(client_state, str):
            return None
        resource = raw.get("resource") if kind is InboundKind.CHANGE else None
        event = raw.get("lifecycleEvent") if kind is InboundKind.LIFECYCLE else None
        if kind is InboundKind.CHANGE and (
            not isinstance(resource, str) or raw.get("changeType") != "created"
        ):
            return None
        if kind is InboundKind.LIFECYCLE and event not in LIFECYCLE_EVENTS:
            return None
        items.append(_Item(subscription_id, client_state, resource, event))
    return items


async def receive(
    database: Database,
    body: Any,
    kind: InboundKind,
    clock: Clock,
    *,
    audit: AuditLog | None = None,
    client_address: str | None = None,
) -> int:
    """Store the genuine notifications of one POST; returns how many were kept. Forged ones
    are dropped quietly (the sender learns nothing); a body that is not a notification
    collection at all is a 400 (Graph never sends one)."""
    audit = audit or AuditLog(database, clock)
    items = _items(body, kind)
    if items is None:
        NOTIFICATIONS_RECEIVED.labels(kind=kind, outcome="malformed").inc()
        raise BadRequestError(f"not a Microsoft Graph {kind} notification collection")
    if not items:
        return 0
    async with database.session() as session:
        rows = await session.scalars(_BY_GRAPH_ID, {"ids": [i.subscription_id for i in items]})
        subscriptions = {row.graph_subscription_id: row for row in rows}
        kept = 0
        # One audit event per POST, subscription and verdict: a forger sending a thousand
        # items in one body adds a row, not a thousand.
        dropped: Counter[tuple[uuid.UUID | None, str]] = Counter()
        for item in items:
            subscription = subscriptions.get(item.subscription_id)
            outcome = _verdict(subscription, item)
            NOTIFICATIONS_RECEIVED.labels(kind=kind, outcome=outcome).inc()
            if subscription is None or outcome != "accepted":
                logger.warning("Dropped a %s notification: %s", kind, outcome)
                dropped[(subscription.id if subscription else None, outcome)] += 1
                continue
            session.add(
                InboundNotification(
                    subscription_id=subscription.id,
                    kind=kind,
                    resource=item.resource,
                    lifecycle_event=item.lifecycle_event,
                    received_at=clock.now(),
                )
            )
            kept += 1
        owners = {row.id: row.user_id for row in subscriptions.values()}
        for (subscription_id, outcome), count in dropped.items():
            audit.add(
                session,
                AuditEvent.NOTIFICATION_FORGED,
                user_id=owners.get(subscription_id) if subscription_id else None,
                outcome=AuditOutcome.REFUSED,
                actor=AuditActor.UNKNOWN,
                client_address=client_address,
                detail=f"{count} {kind} notification(s) dropped: {outcome}"
                + (f", subscription {subscription_id}" if subscription_id else ""),
            )
        await session.commit()
    return kept


def _verdict(subscription: NotificationSubscription | None, item: _Item) -> str:
    if subscription is None:
        return "unknown_subscription"
    # Constant time: the comparison must not tell a forger how much of it was right.
    if not hmac.compare_digest(subscription.client_state.encode(), item.client_state.encode()):
        return "bad_client_state"
    return "accepted"


@dataclass(frozen=True)
class Pending:
    id: uuid.UUID
    subscription_id: uuid.UUID
    kind: str
    resource: str | None


_PENDING = (
    select(
        InboundNotification.id,
        InboundNotification.subscription_id,
        InboundNotification.kind,
        InboundNotification.resource,
    )
    .where(InboundNotification.processed_at.is_(None))
    .order_by(InboundNotification.received_at)
    .limit(bindparam("limit"))
)


async def pending(database: Database, limit: int = 100) -> Sequence[Pending]:
    """Stored notifications whose work is not done yet, oldest first. One statement with no
    transaction: the job polls every second, and on SQLite a transaction takes the write lock."""
    rows = await database.fetch_all(_PENDING, {"limit": limit})
    return [Pending(*list(row)) for row in rows]
