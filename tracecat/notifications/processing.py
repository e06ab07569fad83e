"""The work a kept notification calls for, done after the 202: fetch the message with the
subscriber's token and put its webhook in the outbox, in one transaction with marking the
notification done, so a crash at any point repeats the work and never loses it (the outbox
ignores a message it already holds).

Without `includeResourceData` a Graph notification carries only the message's path:
`teams('{team}')/channels('{channel}')/messages('{id}')`, and for a reply
`.../messages('{root}')/replies('{id}')`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from tracecat.auth.integrations.service import IntegrationService
from tracecat.clock import Clock
from tracecat.db import Database
from tracecat.exceptions import GraphError, ReauthorizationRequiredError, TracecatError
from tracecat.graph.resources import ChatMessage
from tracecat.graph.teams import MicrosoftTeamsClient
from tracecat.notifications import inbound, outbox
from tracecat.notifications.models import (
    InboundKind,
    InboundNotification,
    NotificationSubscription,
    SubscriptionStatus,
)

logger = logging.getLogger(__name__)

_RESOURCE = re.compile(
    r"/?teams\('(?P<team>[^']+)'\)/channels\('(?P<channel>[^']+)'\)"
    r"/messages\('(?P<message>[^']+)'\)(?:/replies\('(?P<reply>[^']+)'\))?"
)


@dataclass(frozen=True)
class MessagePath:
    team_id: str
    channel_id: str
    message_id: str
    reply_id: str | None

    @classmethod
    def parse(cls, resource: str) -> MessagePath | None:
        found = _RESOURCE.fullmatch(resource)
        if found is None:
            return None
        return cls(found["team"], found["channel"], found["message"], found["reply"])

    async def fetch(self, teams: MicrosoftTeamsClient) -> ChatMessage:
        if self.reply_id is None:
            return await teams.get_message(self.team_id, self.channel_id, self.message_id)
        return await teams.get_reply(self.team_id, self.channel_id, self.message_id, self.reply_id)


class NotificationProcessor:
    """One pass (`run_once`, a Job) works through the kept notifications, oldest first."""

    def __init__(
        self,
        database: Database,
        integrations: IntegrationService,
        clock: Clock,
        on_enqueued: Callable[[], None] | None = None,
    ) -> None:
        self.database = database
        self.integrations = integrations
        self.clock = clock
        # Told when a webhook entered the outbox, so the delivery worker starts at once.
        self.on_enqueued = on_enqueued

    async def run_once(self, limit: int = 100) -> int:
        done = 0
        for item in await inbound.pending(self.database, limit):
            done += await self._process(item)
        return done

    async def _process(self, item: inbound.Pending) -> int:
        async with self.database.session() as session:
            subscription = await session.get(NotificationSubscription, item.subscription_id)
        if subscription is None:  # deleted meanwhile: the notification went with it (cascade)
            return 0
        if item.kind == InboundKind.LIFECYCLE:
            # Renewal, reauthorization and re-creation belong to the subscription jobs; until
            # they exist the event is kept, unprocessed, for them to act on.
            return 0
        path = MessagePath.parse(item.resource or "")
        if path is None or (path.team_id, path.channel_id) != (
            subscription.team_id,
            subscription.channel_id,
        ):
            return await self._finish(item, None, subscription, "not a message of this channel")
        try:
            message = await self.integrations.call_graph(
                subscription.user_id, self.integrations.teams_client, path.fetch
            )
        except ReauthorizationRequiredError:
            await self._park(subscription)
            return 0
        except GraphError as exc:
            if exc.status_code == 404:  # deleted before we read it: nothing to relay
                return await self._finish(item, None, subscription, "the message is gone")
            return await self._failed(item, exc)
        except TracecatError as exc:  # Microsoft or the database failing for now
            return await self._failed(item, exc)
        return await self._finish(item, message, subscription, None)

    async def _finish(
        self,
        item: inbound.Pending,
        message: ChatMessage | None,
        subscription: NotificationSubscription,
        note: str | None,
    ) -> int:
        now = self.clock.now()
        async with self.database.session() as session:
            row = await session.get(InboundNotification, item.id, with_for_update=True)
            if row is None or row.processed_at is not None:  # another instance did it
                return 0
            if message is not None and _after(message, subscription.created_at):
                # Graph's JSON, as Graph returned it (unknown fields were kept).
                raw = message.model_dump(mode="json", by_alias=True, exclude_none=True)
                enqueued = await outbox.enqueue(session, subscription, raw, now=now)
            else:
                enqueued = False
            row.processed_at = now
            row.last_error = note
            await session.commit()
        if enqueued and self.on_enqueued is not None:
            self.on_enqueued()
        return 1

    async def _failed(self, item: inbound.Pending, exc: TracecatError) -> int:
        async with self.database.session() as session:
            row = await session.get(InboundNotification, item.id)
            if row is not None:
                row.attempts += 1
                row.last_error = f"{type(exc).__name__}: {str(exc.detail)[:200]}"
                await session.commit()
        logger.warning("Notification %s not processed yet: %s", item.id, type(exc).__name__)
        return 0

    async def _park(self, subscription: NotificationSubscription) -> None:
        """The grant was refused: park the subscription until the user reconnects (the
        notification stays kept; catch-up relays what was missed)."""
        async with self.database.session() as session:
            row = await session.get(NotificationSubscription, subscription.id)
            if row is not None and row.status == SubscriptionStatus.ACTIVE:
                row.status = SubscriptionStatus.REAUTHORIZATION_REQUIRED
                await session.commit()


def _after(message: ChatMessage, created_at: datetime) -> bool:
    """Messages posted before the subscription existed are never relayed."""
    posted = message.created_date_time
    return posted is None or posted >= created_at
