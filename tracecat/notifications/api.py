"""Routes under /auth/integrations/microsoft/subscriptions (API key): a user's subscriptions
to a channel's messages, relayed as signed webhooks to their target. Thin: the work is in
`service.py`, the JSON in `schemas.py`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, status

from tracecat.clients import request_address
from tracecat.deps import CurrentUser, ResourcesDep
from tracecat.notifications.schemas import (
    CreateSubscriptionRequest,
    DeliveryResponse,
    MessageEvent,
    SecretResponse,
    SubscriptionCreated,
    SubscriptionResponse,
)
from tracecat.notifications.service import MAX_DELIVERIES, NotificationService

router = APIRouter(prefix="/auth/integrations/microsoft/subscriptions", tags=["subscriptions"])
# What we send to a subscription's target: documented as OpenAPI webhooks, never served.
webhooks = APIRouter(tags=["subscriptions"])


async def get_notification_service(resources: ResourcesDep) -> NotificationService:
    return NotificationService(
        resources.database,
        resources.integrations,
        resources.settings,
        resources.clock,
        resources.graph_pool,
        audit=resources.audit,
    )


Service = Annotated[NotificationService, Depends(get_notification_service)]


@router.post("", response_model=SubscriptionCreated, status_code=status.HTTP_201_CREATED)
async def create_subscription(
    request: Request, body: CreateSubscriptionRequest, user: CurrentUser, service: Service
) -> SubscriptionCreated:
    """Subscribe `target_url` to new messages and replies in a channel. The answer carries the
    signing secret (`whsec_...`), shown only here."""
    row, secret = await service.create(
        user.id,
        body.team_id,
        body.channel_id,
        body.target_url,
        client_address=request_address(request),
    )
    return SubscriptionCreated(**SubscriptionResponse.from_row(row).model_dump(), secret=secret)


@router.get("", response_model=list[SubscriptionResponse])
async def list_subscriptions(user: CurrentUser, service: Service) -> list[SubscriptionResponse]:
    return [SubscriptionResponse.from_row(row) for row in await service.list_subscriptions(user.id)]


@router.get("/{subscription_id}", response_model=SubscriptionResponse)
async def get_subscription(
    subscription_id: str, user: CurrentUser, service: Service
) -> SubscriptionResponse:
    return SubscriptionResponse.from_row(await service.get(user.id, subscription_id))


@router.delete("/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_subscription(
    request: Request, subscription_id: str, user: CurrentUser, service: Service
) -> None:
    await service.delete(user.id, subscription_id, client_address=request_address(request))


@router.post("/{subscription_id}/rotate-secret", response_model=SecretResponse)
async def rotate_secret(
    request: Request, subscription_id: str, user: CurrentUser, service: Service
) -> SecretResponse:
    """A new signing secret; for 24 hours webhooks are signed by the previous one too."""
    address = request_address(request)
    return SecretResponse(
        secret=await service.rotate_secret(user.id, subscription_id, client_address=address)
    )


@router.get("/{subscription_id}/deliveries", response_model=list[DeliveryResponse])
async def list_deliveries(
    subscription_id: str,
    user: CurrentUser,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=MAX_DELIVERIES)] = MAX_DELIVERIES,
) -> list[DeliveryResponse]:
    """Newest first."""
    rows = await service.deliveries(user.id, subscription_id, limit)
    return [DeliveryResponse.from_row(row) for row in rows]


@router.post(
    "/{subscription_id}/deliveries/{delivery_id}/retry",
    response_model=DeliveryResponse,
    status_code=status.HTTP_202_ACCEPTED,
)
async def retry_delivery(
    subscription_id: str,
    delivery_id: str,
    user: CurrentUser,
    service: Service,
    resources: ResourcesDep,
) -> DeliveryResponse:
    """Send a pending or failed delivery again now; 409 once delivered."""
    delivery = await service.retry_delivery(user.id, subscription_id, delivery_id)
    resources.deliveries_due()
    return DeliveryResponse.from_row(delivery)


@webhooks.post("message.created", status_code=status.HTTP_204_NO_CONTENT)
def message_created(
    event: MessageEvent,
    webhook_id: Annotated[str, Header(description="Stable per subscription and message")],
    webhook_timestamp: Annotated[str, Header(description="Unix seconds of this attempt")],
    webhook_signature: Annotated[
        str, Header(description="`v1,<base64 HMAC-SHA256>`, space-separated after a rotation")
    ],
) -> None:
    """POSTed to `target_url` for each new message or reply in the channel, signed per the
    Standard Webhooks spec with the subscription's secret. Answer 2xx to accept it
    (deduplicate on `webhook-id`: a retry carries the same one); any other answer is retried
    on `TRACECAT_WEBHOOK_RETRY_SECONDS`; 410 Gone disables the subscription."""
