"""Notification tables: a user's subscription to a channel, and the outbox of webhooks.

A delivery is one webhook message to one subscription's endpoint (Svix's "message" and
"attempt" folded into one row: attempts, the last status code and error are kept on it).
Its id is the `webhook-id` header, derived from what it is about, so a repeat notification or
a retry carries the same id and the receiver can deduplicate.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from tracecat.auth.models import utcnow
from tracecat.db import Base, EncryptedText, UTCDateTime

MESSAGE_CREATED = "message.created"


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    REAUTHORIZATION_REQUIRED = "reauthorization_required"  # the Microsoft grant was revoked
    DISABLED = "disabled"  # the target answered 410 Gone, or the user turned it off


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class NotificationSubscription(Base):
    __tablename__ = "notification_subscriptions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    team_id: Mapped[str] = mapped_column(String(255))
    channel_id: Mapped[str] = mapped_column(String(255))
    target_url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32), default=SubscriptionStatus.ACTIVE)
    # Graph's id, once Graph accepted the subscription; notifications are matched by it.
    graph_subscription_id: Mapped[str | None] = mapped_column(
        String(255), unique=True, nullable=True
    )
    # Graph echoes it in each notification: proof that the notification came from Graph.
    client_state: Mapped[str] = mapped_column(EncryptedText)
    # `whsec_...`: signs every webhook. After a rotation the previous one signs too, until
    # `previous_secret_expires_at`, so receivers can switch without dropping a message.
    secret: Mapped[str] = mapped_column(EncryptedText)
    previous_secret: Mapped[str | None] = mapped_column(EncryptedText, nullable=True)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When Graph's subscription lapses; the renewal job scans by it.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    # The newest message seen: the catch-up reads the channel from here after a gap.
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:  # never the secrets
        return f"NotificationSubscription(id={self.id}, status={self.status})"


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    # The same message enqueued twice (a repeated notification, a catch-up overlapping a
    # notification) is one delivery: inserts are ON CONFLICT DO NOTHING.
    __table_args__ = (UniqueConstraint("subscription_id", "message_id", "event_type"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the webhook-id
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        # Named here: the convention's name is longer than PostgreSQL's 63 characters.
        ForeignKey(
            "notification_subscriptions.id",
            ondelete="CASCADE",
            name="fk_webhook_deliveries_subscription_id",
        )
    )
    event_type: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str] = mapped_column(String(255))
    # The exact body sent (JSON text), built once: every attempt sends and signs these bytes.
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set while pending, cleared once delivered or failed, so the due scan reads a small index.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    # A worker's lease: claimed rows are skipped until then; a crashed worker's lease lapses
    # and another worker retries the delivery.
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class InboundKind(StrEnum):
    CHANGE = "change"  # a message or reply was created: fetch it, then enqueue its webhook
    LIFECYCLE = "lifecycle"  # reauthorizationRequired, subscriptionRemoved, missed


class InboundNotification(Base):
    """What Microsoft sent, kept before we answer 202 (Graph retries an unanswered one for
    hours, but an answered one is ours to keep): the work it calls for is done afterwards."""

    __tablename__ = "inbound_notifications"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey(
            "notification_subscriptions.id",
            ondelete="CASCADE",
            name="fk_inbound_notifications_subscription_id",
        ),
        index=True,
    )
    kind: Mapped[str] = mapped_column(String(16))
    # Change: Graph's resource path (`teams('…')/channels('…')/messages('…')[/replies('…')]`).
    resource: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Lifecycle: the event's name.
    lifecycle_event: Mapped[str | None] = mapped_column(String(64), nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Unset until the work is done; the processing job scans for these.
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
