"""Request and response models of the subscription routes (`api.py`). The signing secret is
only in `SubscriptionCreated`, the answer to the create: never listed, never read back."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tracecat.notifications.models import (
    DeliveryStatus,
    NotificationSubscription,
    SubscriptionStatus,
    WebhookDelivery,
)


class CreateSubscriptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    team_id: str = Field(min_length=1, max_length=255)
    channel_id: str = Field(min_length=1, max_length=255)
    target_url: str = Field(min_length=1, max_length=2048)


class SubscriptionResponse(BaseModel):
    id: uuid.UUID
    team_id: str
    channel_id: str
    target_url: str
    status: SubscriptionStatus
    expires_at: datetime | None

    @classmethod
    def from_row(cls, row: NotificationSubscription) -> SubscriptionResponse:
        return cls(
            id=row.id,
            team_id=row.team_id,
            channel_id=row.channel_id,
            target_url=row.target_url,
            status=SubscriptionStatus(row.status),
            expires_at=row.expires_at,
        )


class SubscriptionCreated(SubscriptionResponse):
    """The one answer that carries the signing secret (`whsec_...`): keep it now."""

    secret: str


class SecretResponse(BaseModel):
    """A rotated secret; the previous one keeps signing for 24 hours."""

    secret: str


class DeliveryResponse(BaseModel):
    id: str = Field(description="The webhook-id: the same on every attempt")
    event_type: str
    message_id: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None

    @classmethod
    def from_row(cls, row: WebhookDelivery) -> DeliveryResponse:
        return cls(
            id=row.id,
            event_type=row.event_type,
            message_id=row.message_id,
            status=DeliveryStatus(row.status),
            attempts=row.attempts,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
            next_attempt_at=row.next_attempt_at,
        )


class MessageEventData(BaseModel):
    subscription_id: uuid.UUID
    team_id: str
    channel_id: str
    message: dict[str, Any] = Field(
        description="The chatMessage as Microsoft Graph returns it; a reply's `replyToId` "
        "names its thread's root message"
    )


class MessageEvent(BaseModel):
    """The body of a webhook (documented in the OpenAPI schema's `webhooks`)."""

    type: Literal["message.created"]
    timestamp: datetime
    data: MessageEventData
