"""Catch-up: relay what the notifications did not bring (the service was down, Graph dropped
one, a subscription was parked or re-created). Graph sends no `missed` event for Teams, so
this runs at start and every `TRACECAT_RESYNC_INTERVAL_SECONDS`, and for one subscription
whenever it comes back (re-created, reauthorized, resumed).

For each active subscription the channel's newest root messages are listed (Graph lists and
deltas hold root messages only), and the replies of the threads whose root is from the last
`RECENT_THREADS`; every message or reply created after the subscription is enqueued in the
outbox. The outbox ignores a message it already holds (per subscription), so overlapping with
the notifications, with an earlier pass or with another instance running the same pass is
harmless. Messages created before the subscription are never relayed.

The work is bounded (`MAX_ROOTS` root messages, `MAX_THREADS` threads, `MAX_REPLIES` replies
per thread) and no database transaction is open while Graph is read: read the row, read
Graph, then one short transaction writes what was new.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update

from tracecat.auth.integrations.service import IntegrationService
from tracecat.clock import Clock
from tracecat.db import Database
from tracecat.exceptions import GraphError, ReauthorizationRequiredError, TracecatError
from tracecat.graph.resources import ChatMessage
from tracecat.graph.teams import MicrosoftTeamsClient
from tracecat.notifications import outbox
from tracecat.notifications.models import (
    MESSAGE_CREATED,
    NotificationSubscription,
    SubscriptionStatus,
    WebhookDelivery,
)

logger = logging.getLogger(__name__)

# Replies are read in the threads of root messages this recent.
RECENT_THREADS = timedelta(days=7)
# Bounds of one subscription's pass: root messages listed (newest first), threads whose
# replies are read, replies read per thread (newest first).
MAX_ROOTS = 100
MAX_THREADS = 50
MAX_REPLIES = 50

_ACTIVE = select(NotificationSubscription.id).where(
    NotificationSubscription.status == SubscriptionStatus.ACTIVE,
    NotificationSubscription.graph_subscription_id.is_not(None),
)

# One read without a transaction (on SQLite a transaction takes the write lock).
_CHANNEL = select(
    NotificationSubscription.id,
    NotificationSubscription.user_id,
    NotificationSubscription.team_id,
    NotificationSubscription.channel_id,
    NotificationSubscription.created_at,
).where(
    NotificationSubscription.id == bindparam("id"),
    NotificationSubscription.status == SubscriptionStatus.ACTIVE,
)


@dataclass(frozen=True)
class _Channel:
    """What a pass needs of the subscription, read before Graph is called."""

    id: uuid.UUID
    user_id: uuid.UUID
    team_id: str
    channel_id: str
    created_at: datetime


class CatchUp:
    """`run_once` (a Job) catches up every active subscription; `subscription` one of them."""

    def __init__(self, database: Database, integrations: IntegrationService, clock: Clock) -> None:
        self.database = database
        self.integrations = integrations
        self.clock = clock

    async def run_once(self) -> int:
        """Every active subscription, one after the other; returns how many messages were
        newly enqueued. One subscription failing (Graph down, channel gone) does not stop
        the others: it is logged and tried again next pass."""
        ids = [row[0] for row in await self.database.fetch_all(_ACTIVE)]
        enqueued = 0
        for subscription_id in ids:
            try:
                enqueued += await self.subscription(subscription_id)
            except TracecatError as exc:
                logger.warning(
                    "Catch-up of subscription %s failed for now: %s",
                    subscription_id,
                    type(exc).__name__,
                )
        return enqueued

    async def subscription(self, subscription_id: uuid.UUID) -> int:
        """Catch up one subscription if it is active; returns how many messages were newly
        enqueued. A refused grant parks it (`reauthorization_required`); other Graph errors
        are raised."""
        found = await self.database.fetch_all(_CHANNEL, {"id": subscription_id})
        if not found:
            return 0
        channel = _Channel(*list(found[0]))
        since = self.clock.now() - RECENT_THREADS

        async def read(teams: MicrosoftTeamsClient) -> list[ChatMessage]:
            return await _read_channel(teams, channel, since)

        try:
            messages = await self.integrations.call_graph(
                channel.user_id, self.integrations.teams_client, read
            )
        except ReauthorizationRequiredError:
            await park(self.database, channel.id)
            return 0
        return await self._enqueue(channel, messages)

    async def _enqueue(self, channel: _Channel, messages: list[ChatMessage]) -> int:
        fresh = [m for m in messages if _relayable(m, channel.created_at)]
        fresh.sort(key=lambda m: (m.created_date_time or channel.created_at, m.id))
        now = self.clock.now()
        enqueued = 0
        async with self.database.session() as session:
            subscription = await session.get(NotificationSubscription, channel.id)
            if subscription is None or subscription.status == SubscriptionStatus.DISABLED:
                return 0
            known: set[str] = set()
            if fresh:
                known = set(
                    await session.scalars(
                        select(WebhookDelivery.message_id).where(
                            WebhookDelivery.subscription_id == channel.id,
                            WebhookDelivery.event_type == MESSAGE_CREATED,
                            WebhookDelivery.message_id.in_([m.id for m in fresh]),
                        )
                    )
                )
            for message in fresh:
                if message.id in known:
                    continue
                raw = message.model_dump(mode="json", by_alias=True, exclude_none=True)
                enqueued += await outbox.enqueue(session, subscription, raw, now=now)
            newest = max(
                (m.created_date_time for m in messages if m.created_date_time is not None),
                default=None,
            )
            if newest is not None and (
                subscription.last_seen_at is None or newest > subscription.last_seen_at
            ):
                subscription.last_seen_at = newest
            await session.commit()
        if enqueued:
            logger.info("Catch-up enqueued %s message(s) for subscription %s", enqueued, channel.id)
        return enqueued


async def _read_channel(
    teams: MicrosoftTeamsClient, channel: _Channel, since: datetime
) -> list[ChatMessage]:
    """The newest root messages, and the replies in the threads of the recent ones."""
    roots = await teams.list_channel_messages(channel.team_id, channel.channel_id, top=MAX_ROOTS)
    if len(roots) >= MAX_ROOTS:
        logger.warning(
            "Catch-up of subscription %s read only the newest %s root messages",
            channel.id,
            MAX_ROOTS,
        )
    recent = [
        root
        for root in roots
        if root.created_date_time is not None
        and root.created_date_time >= since
        and root.deleted_date_time is None
    ]
    recent.sort(key=lambda m: m.created_date_time or since, reverse=True)
    messages = list(roots)
    for root in recent[:MAX_THREADS]:
        try:
            replies = await teams.list_replies(
                channel.team_id, channel.channel_id, root.id, top=MAX_REPLIES
            )
        except GraphError as exc:
            if exc.status_code != 404:  # a thread deleted meanwhile has nothing to relay
                raise
            continue
        messages.extend(replies)
    return messages


def _relayable(message: ChatMessage, subscribed_at: datetime) -> bool:
    """Created after the subscription (older ones are never relayed), and not deleted."""
    posted = message.created_date_time
    return posted is not None and posted >= subscribed_at and message.deleted_date_time is None


async def park(database: Database, subscription_id: uuid.UUID) -> bool:
    """The user's grant was refused: park an active subscription until they reconnect.
    True if this call parked it."""
    async with database.session() as session:
        result = await session.execute(
            update(NotificationSubscription)
            .where(
                NotificationSubscription.id == subscription_id,
                NotificationSubscription.status == SubscriptionStatus.ACTIVE,
            )
            .values(status=SubscriptionStatus.REAUTHORIZATION_REQUIRED)
            .execution_options(synchronize_session=False)
            .returning(NotificationSubscription.id)
        )
        parked = result.first() is not None
        await session.commit()
    if parked:
        logger.warning("Subscription %s parked: the user must reconnect", subscription_id)
    return parked
