"""Keeping Graph's subscriptions alive: renewal before expiry, the lifecycle events, parking on
a refused grant and resuming after the user reconnects.

- `run_once` (a Job): every active subscription with less than half its lifetime
  (`TRACECAT_SUBSCRIPTION_LIFETIME_SECONDS`) left is renewed (PATCH) to a full lifetime; one
  Graph no longer knows (404) is re-created with the same clientState and caught up. Each
  parked subscription (`reauthorization_required`) whose user's grant is no longer revoked
  (they reconnected) is renewed or re-created, set active again and caught up.
- `process_lifecycle` (a Job): the kept lifecycle notifications. `reauthorizationRequired` ->
  reauthorize (re-create on 404), `subscriptionRemoved` -> re-create (unless Graph still has
  it: a stale event), `missed` -> catch up; each is then marked processed.
- A refused grant (`ReauthorizationRequiredError`) parks the subscription anywhere here.

Several instances may run all of this at once: a re-creation stores its new Graph id only
if the row still names the Graph id it replaced (compare and set); the loser deletes the
subscription it made, the winner deletes the one it replaced. No transaction is open while
Graph is called: read the rows, call Graph, then write.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, bindparam, or_, select, update

from tracecat.auth.integrations.models import GrantState
from tracecat.auth.integrations.service import IntegrationService
from tracecat.clock import Clock
from tracecat.db import Database
from tracecat.exceptions import (
    GraphError,
    NotConnectedError,
    ReauthorizationRequiredError,
    SettingsError,
    TracecatError,
)
from tracecat.graph.resources import Subscription
from tracecat.graph.subscriptions import GraphSubscriptionsClient, channel_messages_resource
from tracecat.notifications.catch_up import CatchUp, park
from tracecat.notifications.models import (
    InboundKind,
    InboundNotification,
    NotificationSubscription,
    SubscriptionStatus,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

NOTIFICATIONS_PATH = "/webhooks/microsoft/notifications"
LIFECYCLE_PATH = "/webhooks/microsoft/lifecycle"
# A lifecycle event whose work keeps failing (Graph down for long) is given up after this
# many attempts; renewal and catch-up cover what it asked for.
MAX_LIFECYCLE_ATTEMPTS = 10
# Subscriptions handled per pass: the rest wait for the next one.
BATCH = 100


def subscriptions_client(
    integrations: IntegrationService,
) -> Callable[[str], GraphSubscriptionsClient]:
    """Builds a `/subscriptions` client from an access token, on the app's Graph pool."""

    def build(access_token: str) -> GraphSubscriptionsClient:
        pool = integrations.graph_pool
        return GraphSubscriptionsClient(
            access_token,
            settings=integrations.settings,
            http_client=pool.http if pool else None,
        )

    return build


@dataclass(frozen=True)
class _Row:
    """What the work needs of a subscription, read before Graph is called."""

    id: uuid.UUID
    user_id: uuid.UUID
    team_id: str
    channel_id: str
    graph_id: str | None
    client_state: str
    status: str


_COLUMNS = (
    NotificationSubscription.id,
    NotificationSubscription.user_id,
    NotificationSubscription.team_id,
    NotificationSubscription.channel_id,
    NotificationSubscription.graph_subscription_id,
    NotificationSubscription.client_state,
    NotificationSubscription.status,
)

_PENDING_LIFECYCLE = (
    select(
        InboundNotification.id,
        InboundNotification.subscription_id,
        InboundNotification.lifecycle_event,
    )
    .where(
        InboundNotification.processed_at.is_(None),
        InboundNotification.kind == InboundKind.LIFECYCLE,
    )
    .order_by(InboundNotification.received_at)
    .limit(bindparam("limit"))
)


class SubscriptionMaintenance:
    def __init__(
        self,
        database: Database,
        integrations: IntegrationService,
        clock: Clock,
        catch_up: CatchUp | None = None,
    ) -> None:
        self.database = database
        self.integrations = integrations
        self.clock = clock
        self.settings = integrations.settings
        self.catch_up = catch_up or CatchUp(database, integrations, clock)
        self._client = subscriptions_client(integrations)

    @property
    def lifetime(self) -> timedelta:
        return timedelta(seconds=self.settings.tracecat_subscription_lifetime_seconds)

    # -- renewal -------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Renew what is due and resume what can be; returns how many subscriptions were
        renewed, re-created or resumed."""
        done = 0
        for row in await self._due(self.clock.now()):
            done += await self._guarded(self._renew, row)
        for row in await self._parked():
            done += await self._guarded(self._resume, row)
        return done

    async def _guarded(self, work: Callable[[_Row], Awaitable[bool]], row: _Row) -> int:
        try:
            return int(await work(row))
        except ReauthorizationRequiredError:
            await park(self.database, row.id)
        except TracecatError as exc:  # Graph or the database failing for now: next pass
            logger.warning(
                "Subscription %s not maintained yet: %s: %s",
                row.id,
                type(exc).__name__,
                str(exc)[:200],
            )
        return 0

    async def _due(self, now: datetime) -> list[_Row]:
        threshold = now + self.lifetime / 2
        statement = (
            select(*_COLUMNS)
            .where(
                NotificationSubscription.status == SubscriptionStatus.ACTIVE,
                NotificationSubscription.graph_subscription_id.is_not(None),
                or_(
                    NotificationSubscription.expires_at.is_(None),
                    NotificationSubscription.expires_at < threshold,
                ),
            )
            .order_by(NotificationSubscription.expires_at)
            .limit(BATCH)
        )
        return await self._rows(statement)

    async def _parked(self) -> list[_Row]:
        statement = (
            select(*_COLUMNS)
            .where(NotificationSubscription.status == SubscriptionStatus.REAUTHORIZATION_REQUIRED)
            .order_by(NotificationSubscription.updated_at)
            .limit(BATCH)
        )
        return await self._rows(statement)

    async def _rows(self, statement: Any) -> list[_Row]:
        # One read without a transaction (on SQLite a transaction takes the write lock).
        return [_Row(*list(row)) for row in await self.database.fetch_all(statement)]

    async def _unless_gone(
        self, row: _Row, operation: Callable[[GraphSubscriptionsClient], Awaitable[T]]
    ) -> tuple[T] | None:
        """`(answer,)` from Graph with the user's token, or None when Graph no longer has the
        subscription (404): the one case every caller answers by re-creating it."""
        try:
            return (await self.integrations.call_graph(row.user_id, self._client, operation),)
        except GraphError as exc:
            if exc.status_code != 404:
                raise
            return None

    async def _renewed(self, row: _Row, graph_id: str) -> Subscription | None:
        """PATCH to a full lifetime; None when Graph no longer has it."""
        expiration = self.clock.now() + self.lifetime
        answer = await self._unless_gone(row, lambda graph: graph.renew(graph_id, expiration))
        return None if answer is None else answer[0]

    async def _renew(self, row: _Row) -> bool:
        """PATCH to a full lifetime; a subscription Graph lost is re-created and caught up."""
        if row.graph_id is None:
            return False
        renewed = await self._renewed(row, row.graph_id)
        if renewed is None:
            return await self.recreate(row)
        await self._store(row, renewed.expiration_date_time, status=None)
        return True

    async def _resume(self, row: _Row) -> bool:
        """A parked subscription whose user reconnected: renew (which also clears Graph's
        pending reauthorization) or re-create it, set it active, catch up."""
        try:
            grant = await self.integrations.get_grant(row.user_id)
        except NotConnectedError:
            return False  # disconnected: nothing to resume with until they connect again
        if grant.status == GrantState.REVOKED:
            return False  # still refused: no Graph call until they reconnect
        renewed = None if row.graph_id is None else await self._renewed(row, row.graph_id)
        if renewed is None:
            return await self.recreate(row)
        if await self._store(row, renewed.expiration_date_time, status=SubscriptionStatus.ACTIVE):
            logger.info("Subscription %s resumed", row.id)
            await self._catch_up(row.id)
        return True

    async def _store(
        self, row: _Row, expires_at: datetime, status: SubscriptionStatus | None
    ) -> bool:
        """Write a renewal's expiry (and status), unless the row was re-created, disabled or
        deleted meanwhile. True if written."""
        values: dict[str, Any] = {"expires_at": expires_at, "updated_at": self.clock.now()}
        if status is not None:
            values["status"] = status
        async with self.database.session() as session:
            result = await session.execute(
                update(NotificationSubscription)
                .where(
                    NotificationSubscription.id == row.id,
                    NotificationSubscription.graph_subscription_id == row.graph_id,
                    NotificationSubscription.status == row.status,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
        return bool(_rowcount(result))

    # -- re-creation ---------------------------------------------------------------------------

    async def recreate(self, row: _Row) -> bool:
        """Subscribe again on Graph (same clientState, our public URLs), store the new Graph
        id if nobody replaced the old one meanwhile, set the row active and catch it up."""
        public_url = self.settings.tracecat_public_url
        if public_url is None:
            # Raised, not skipped: a lifecycle event stays pending for an instance that can.
            raise SettingsError(
                f"subscription {row.id} is gone on Graph and cannot be re-created without "
                "TRACECAT_PUBLIC_URL"
            )
        expiration = self.clock.now() + self.lifetime
        resource = channel_messages_resource(row.team_id, row.channel_id)

        async def subscribe(graph: GraphSubscriptionsClient) -> Subscription:
            return await graph.create(
                resource=resource,
                notification_url=f"{public_url}{NOTIFICATIONS_PATH}",
                lifecycle_notification_url=f"{public_url}{LIFECYCLE_PATH}",
                expiration=expiration,
                client_state=row.client_state,
            )

        created = await self.integrations.call_graph(row.user_id, self._client, subscribe)
        async with self.database.session() as session:
            result = await session.execute(
                update(NotificationSubscription)
                .where(
                    NotificationSubscription.id == row.id,
                    NotificationSubscription.status == row.status,
                    NotificationSubscription.graph_subscription_id == row.graph_id
                    if row.graph_id is not None
                    else NotificationSubscription.graph_subscription_id.is_(None),
                )
                .values(
                    graph_subscription_id=created.id,
                    expires_at=created.expiration_date_time,
                    status=SubscriptionStatus.ACTIVE,
                    updated_at=self.clock.now(),
                )
                .execution_options(synchronize_session=False)
            )
            await session.commit()
        if not _rowcount(result):
            # Another instance re-created it first, or it was disabled or deleted: ours is
            # one too many.
            await self._delete_quietly(row.user_id, created.id)
            return False
        logger.info("Subscription %s re-created on Graph", row.id)
        if row.graph_id is not None:  # gone, usually; if not, it would notify twice
            await self._delete_quietly(row.user_id, row.graph_id)
        await self._catch_up(row.id)
        return True

    async def _catch_up(self, subscription_id: uuid.UUID) -> None:
        """Catch up a subscription that just came back; if Graph fails now, the periodic
        catch-up does it later (the subscription itself is fine)."""
        try:
            await self.catch_up.subscription(subscription_id)
        except TracecatError as exc:
            logger.warning(
                "Catch-up of subscription %s left to the next pass: %s",
                subscription_id,
                type(exc).__name__,
            )

    async def _delete_quietly(self, user_id: uuid.UUID, graph_id: str) -> None:
        try:
            await self.integrations.call_graph(
                user_id, self._client, lambda graph: graph.delete(graph_id)
            )
        except TracecatError as exc:  # it expires by itself; its notifications are dropped
            logger.warning("Graph subscription not deleted: %s", type(exc).__name__)

    # -- lifecycle events ----------------------------------------------------------------------

    async def process_lifecycle(self, limit: int = BATCH) -> int:
        """Work through the kept lifecycle notifications, oldest first; returns how many
        were processed."""
        events = await self.database.fetch_all(_PENDING_LIFECYCLE, {"limit": limit})
        done = 0
        for event in events:
            event_id, subscription_id, name = list(event)
            done += await self._lifecycle(event_id, subscription_id, name)
        return done

    async def _lifecycle(
        self, event_id: uuid.UUID, subscription_id: uuid.UUID, name: str | None
    ) -> int:
        found = await self._rows(
            select(*_COLUMNS).where(NotificationSubscription.id == subscription_id)
        )
        row = found[0] if found else None
        note: str | None = None
        if row is not None and row.status == SubscriptionStatus.ACTIVE:
            try:
                note = await self._act(row, name)
            except ReauthorizationRequiredError:
                await park(self.database, row.id)
                note = "the grant was refused: parked until the user reconnects"
            except TracecatError as exc:
                return await self._lifecycle_failed(event_id, exc)
        elif row is not None:
            note = f"nothing to do: the subscription is {row.status}"
        return await self._finish(event_id, note)

    async def _act(self, row: _Row, name: str | None) -> str | None:
        graph_id = row.graph_id
        if name == "missed":
            await self.catch_up.subscription(row.id)
            return None
        if graph_id is None:
            return "no Graph subscription"
        if name == "reauthorizationRequired":
            if await self._unless_gone(row, lambda graph: graph.reauthorize(graph_id)) is None:
                await self.recreate(row)
                return "gone on Graph: re-created"
            # Graph may have held notifications back while it waited: look for them.
            await self.catch_up.subscription(row.id)
            return None
        if name == "subscriptionRemoved":
            if await self._unless_gone(row, lambda graph: graph.get(graph_id)) is None:
                await self.recreate(row)
                return None
            return "still on Graph (re-created already): nothing to do"
        return f"unknown lifecycle event {name!r}"

    async def _finish(self, event_id: uuid.UUID, note: str | None) -> int:
        async with self.database.session() as session:
            result = await session.execute(
                update(InboundNotification)
                .where(
                    InboundNotification.id == event_id,
                    InboundNotification.processed_at.is_(None),
                )
                .values(processed_at=self.clock.now(), last_error=note)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
        return int(bool(_rowcount(result)))

    async def _lifecycle_failed(self, event_id: uuid.UUID, exc: TracecatError) -> int:
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
        logger.warning("Lifecycle event %s not processed yet: %s", event_id, type(exc).__name__)
        async with self.database.session() as session:
            event = await session.get(InboundNotification, event_id)
            if event is None or event.processed_at is not None:
                return 0
            event.attempts += 1
            event.last_error = error
            if event.attempts >= MAX_LIFECYCLE_ATTEMPTS:
                event.processed_at = self.clock.now()  # renewal and catch-up take it from here
            await session.commit()
        return 0


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched."""
    return int(cast(CursorResult[Any], result).rowcount or 0)
