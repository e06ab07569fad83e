"""A user's subscriptions to channel messages: made on Graph and here together, read, deleted,
their signing secret rotated, their deliveries listed and retried (the routes in `api.py`).

Creating, in this order, so nothing is made for a request that is going to be refused:
ids, the setting that makes subscriptions possible (`TRACECAT_PUBLIC_URL`), the
`ChannelMessage.Read.All` scope (403), the target (422), then Graph's subscription (which
runs Graph's validation handshake against our public URL), then the row. If the row cannot
be written, Graph's subscription is deleted again: there is never a row without a Graph
subscription behind it, nor (barring a failure of that deletion) the reverse.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete, select

from tracecat.audit.models import AuditEvent
from tracecat.audit.service import AuditLog
from tracecat.auth.integrations.service import IntegrationService
from tracecat.clock import Clock
from tracecat.config import Settings
from tracecat.db import Database
from tracecat.exceptions import (
    ConflictError,
    NotConnectedError,
    NotFoundError,
    ReauthorizationRequiredError,
    TracecatError,
)
from tracecat.graph.ids import require_segment
from tracecat.graph.resources import Subscription
from tracecat.graph.subscriptions import GraphSubscriptionsClient, channel_messages_resource
from tracecat.graph.transport import GraphPool
from tracecat.notifications import signing
from tracecat.notifications.models import (
    DeliveryStatus,
    NotificationSubscription,
    SubscriptionStatus,
    WebhookDelivery,
)
from tracecat.notifications.targets import check_target

logger = logging.getLogger(__name__)

READ_SCOPE = "ChannelMessage.Read.All"
NOTIFICATIONS_PATH = "/webhooks/microsoft/notifications"
LIFECYCLE_PATH = "/webhooks/microsoft/lifecycle"
MAX_DELIVERIES = 100


class PublicUrlMissingError(TracecatError):
    """Subscriptions need an address at which Microsoft reaches this service. 503: the
    request is fine, this server cannot serve it as configured (the operator's fix)."""

    status_code = 503

    def __init__(self) -> None:
        super().__init__(
            "change notifications need TRACECAT_PUBLIC_URL: the https:// base URL at which "
            "Microsoft reaches this service (`serve --emulator` sets it to its own address)"
        )


def new_client_state() -> str:
    """What Graph echoes in each notification: 64 random URL-safe characters (Graph allows
    128), compared in constant time by `inbound`."""
    return secrets.token_urlsafe(48)


def _subscription_id(value: str) -> uuid.UUID:
    """Ids are UUIDs: anything else is no subscription of the caller's (404, like an
    unknown id or another user's)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFoundError("no such subscription") from None


class NotificationService:
    def __init__(
        self,
        database: Database,
        integrations: IntegrationService,
        settings: Settings,
        clock: Clock,
        graph_pool: GraphPool | None = None,
        *,
        audit: AuditLog | None = None,
    ) -> None:
        self.database = database
        self.integrations = integrations
        self.settings = settings
        self.clock = clock
        self.graph_pool = graph_pool
        # Created, deleted and rotated are recorded in the transaction that makes the change.
        self.audit = audit or AuditLog(database, clock)

    def graph_client(self, access_token: str) -> GraphSubscriptionsClient:
        return GraphSubscriptionsClient(
            access_token,
            settings=self.settings,
            http_client=self.graph_pool.http if self.graph_pool else None,
        )

    # --- creating -------------------------------------------------------------------------

    async def create(
        self,
        user_id: uuid.UUID,
        team_id: str,
        channel_id: str,
        target_url: str,
        *,
        client_address: str | None = None,
    ) -> tuple[NotificationSubscription, str]:
        """The new row and its signing secret (shown once)."""
        require_segment(team_id, "team_id")
        require_segment(channel_id, "channel_id")
        resource = channel_messages_resource(team_id, channel_id)
        public_url = self.settings.tracecat_public_url
        if not public_url:
            raise PublicUrlMissingError
        await self.integrations.require_scope(user_id, READ_SCOPE)
        target = await check_target(target_url, self.settings.tracecat_webhook_allowed_networks)

        client_state = new_client_state()
        lifetime = timedelta(seconds=self.settings.tracecat_subscription_lifetime_seconds)
        now = self.clock.now()

        async def subscribe(graph: GraphSubscriptionsClient) -> Subscription:
            return await graph.create(
                resource=resource,
                notification_url=public_url + NOTIFICATIONS_PATH,
                lifecycle_notification_url=public_url + LIFECYCLE_PATH,
                expiration=now + lifetime,
                client_state=client_state,
            )

        created = await self.integrations.call_graph(user_id, self.graph_client, subscribe)
        secret = signing.new_secret()
        row = NotificationSubscription(
            id=uuid.uuid4(),
            user_id=user_id,
            team_id=team_id,
            channel_id=channel_id,
            target_url=target.url,
            status=SubscriptionStatus.ACTIVE,
            graph_subscription_id=created.id,
            client_state=client_state,
            secret=secret,
            expires_at=created.expiration_date_time,
            last_seen_at=now,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self.database.session() as session, session.begin():
                session.add(row)
                self.audit.add(
                    session,
                    AuditEvent.SUBSCRIPTION_CREATED,
                    user_id=user_id,
                    client_address=client_address,
                    # Not the target URL: some receivers carry their own secret in it.
                    detail=f"subscription {row.id}, target host {target.host}",
                )
        except BaseException:
            # Never a Graph subscription without its row: notifications for it would be
            # dropped as unknown until it expired.
            await self._delete_on_graph(user_id, created.id, best_effort=True)
            raise
        logger.info("User %s subscribed to a channel (subscription %s)", user_id, row.id)
        return row, secret

    # --- reading --------------------------------------------------------------------------

    async def list_subscriptions(self, user_id: uuid.UUID) -> Sequence[NotificationSubscription]:
        async with self.database.session() as session:
            rows = await session.scalars(
                select(NotificationSubscription)
                .where(NotificationSubscription.user_id == user_id)
                .order_by(NotificationSubscription.created_at, NotificationSubscription.id)
            )
            return list(rows)

    async def get(self, user_id: uuid.UUID, subscription_id: str) -> NotificationSubscription:
        """The caller's subscription; 404 for an unknown id and for another user's alike."""
        key = _subscription_id(subscription_id)
        async with self.database.session() as session:
            row = await session.scalar(
                select(NotificationSubscription).where(
                    NotificationSubscription.id == key,
                    NotificationSubscription.user_id == user_id,
                )
            )
        if row is None:
            raise NotFoundError("no such subscription")
        return row

    # --- deleting -------------------------------------------------------------------------

    async def delete(
        self, user_id: uuid.UUID, subscription_id: str, *, client_address: str | None = None
    ) -> None:
        """Graph's subscription first (gone already is fine), then the row; its deliveries
        and kept notifications go with it (cascade)."""
        row = await self.get(user_id, subscription_id)
        if row.graph_subscription_id:
            await self._delete_on_graph(user_id, row.graph_subscription_id, best_effort=False)
        async with self.database.session() as session, session.begin():
            await session.execute(
                delete(NotificationSubscription).where(
                    NotificationSubscription.id == row.id,
                    NotificationSubscription.user_id == user_id,
                )
            )
            self.audit.add(
                session,
                AuditEvent.SUBSCRIPTION_DELETED,
                user_id=user_id,
                client_address=client_address,
                detail=f"subscription {row.id}",
            )
        logger.info("User %s deleted subscription %s", user_id, row.id)

    async def _delete_on_graph(
        self, user_id: uuid.UUID, graph_id: str, *, best_effort: bool
    ) -> None:
        """Delete Graph's subscription (its 404 is success). Without a usable grant (not
        connected, or Microsoft refused it) it cannot be deleted: it lapses by itself within
        the lifetime, and its notifications are dropped as unknown meanwhile, so the caller
        goes on. Other failures are raised unless `best_effort`."""
        try:
            await self.integrations.call_graph(
                user_id, self.graph_client, lambda graph: graph.delete(graph_id)
            )
        except (NotConnectedError, ReauthorizationRequiredError) as exc:
            logger.warning(
                "Graph subscription of user %s not deleted (%s): it lapses by itself",
                user_id,
                type(exc).__name__,
            )
        except TracecatError as exc:
            if not best_effort:
                raise
            logger.warning(
                "Graph subscription of user %s not deleted (%s): it lapses by itself",
                user_id,
                type(exc).__name__,
            )

    # --- the signing secret ---------------------------------------------------------------

    async def rotate_secret(
        self, user_id: uuid.UUID, subscription_id: str, *, client_address: str | None = None
    ) -> str:
        """A new secret; the current one keeps signing too for `signing.ROTATION_OVERLAP`."""
        key = _subscription_id(subscription_id)
        now = self.clock.now()
        async with self.database.session() as session, session.begin():
            row = await session.scalar(
                select(NotificationSubscription)
                .where(
                    NotificationSubscription.id == key,
                    NotificationSubscription.user_id == user_id,
                )
                .with_for_update()
            )
            if row is None:
                raise NotFoundError("no such subscription")
            secret, previous, previous_expires_at = signing.rotated(row.secret, now)
            row.secret = secret
            row.previous_secret = previous
            row.previous_secret_expires_at = previous_expires_at
            row.updated_at = now
            self.audit.add(
                session,
                AuditEvent.SUBSCRIPTION_SECRET_ROTATED,
                user_id=user_id,
                client_address=client_address,
                detail=f"subscription {key}",
            )
        logger.info("User %s rotated the secret of subscription %s", user_id, key)
        return secret

    # --- deliveries -----------------------------------------------------------------------

    async def deliveries(
        self, user_id: uuid.UUID, subscription_id: str, limit: int = MAX_DELIVERIES
    ) -> Sequence[WebhookDelivery]:
        """Newest first."""
        row = await self.get(user_id, subscription_id)
        async with self.database.session() as session:
            rows = await session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.subscription_id == row.id)
                .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
                .limit(min(max(limit, 1), MAX_DELIVERIES))
            )
            return list(rows)

    async def retry_delivery(
        self, user_id: uuid.UUID, subscription_id: str, delivery_id: str
    ) -> WebhookDelivery:
        """A pending or failed delivery is due now (pending, no lease); 409 for a delivered
        one, and while the subscription is disabled (nothing would send it). A delivery a
        worker is sending at this moment (its lease not yet lapsed) is left to that attempt:
        clearing the lease would let a second worker send it alongside."""
        subscription = await self.get(user_id, subscription_id)
        if subscription.status == SubscriptionStatus.DISABLED:
            raise ConflictError(
                "the subscription is disabled (its target answered 410 Gone): "
                "create a new subscription for a working target"
            )
        now = self.clock.now()
        async with self.database.session() as session, session.begin():
            delivery = await session.scalar(
                select(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.subscription_id == subscription.id,
                )
                .with_for_update()
            )
            if delivery is None:
                raise NotFoundError("no such delivery")
            if delivery.status == DeliveryStatus.DELIVERED:
                raise ConflictError("this delivery was already delivered")
            in_flight = (
                delivery.status == DeliveryStatus.PENDING
                and delivery.locked_until is not None
                and delivery.locked_until > now
            )
            if not in_flight:
                delivery.status = DeliveryStatus.PENDING
                delivery.next_attempt_at = now
                delivery.locked_until = None
        return delivery
