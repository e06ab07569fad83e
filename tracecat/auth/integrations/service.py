"""IntegrationService: the facade for a user's Microsoft grant.

Connecting (the authorization-code flow bound to one browser: `connect.py`), reading the
connection (cached, without tokens), handing out a fresh access token (refreshes live in
`refresh.py`) and running Graph calls with it (`call_graph`, for any Graph client).
"""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy import bindparam, select

from tracecat.audit.service import AuditLog
from tracecat.auth.integrations.connect import ConnectFlow
from tracecat.auth.integrations.microsoft import MicrosoftOAuthProvider
from tracecat.auth.integrations.models import (
    MICROSOFT_TEAMS,
    Grant,
    GrantState,
    IntegrationView,
    UserIntegration,
)
from tracecat.auth.integrations.refresh import MIN_REFRESH_SECONDS, TokenRefresher
from tracecat.cache import NO_CACHE, ReadCache
from tracecat.clock import SYSTEM_CLOCK, Clock
from tracecat.config import Settings, get_settings
from tracecat.db import Database
from tracecat.exceptions import (
    CONNECT_HINT,
    DeliveryUnknownError,
    ForbiddenError,
    GraphError,
    NotConnectedError,
    ReauthorizationRequiredError,
)
from tracecat.graph.pacing import Pacer, pacer_from_settings
from tracecat.graph.teams import MicrosoftTeamsClient
from tracecat.graph.transport import GraphClient, GraphPool

logger = logging.getLogger(__name__)


T = TypeVar("T")
ClientT = TypeVar("ClientT", bound=GraphClient)


# Built once: building a statement costs more than running it on the hot read paths.
_VIEWS = (
    select(*IntegrationView.columns())
    .where(UserIntegration.user_id == bindparam("user_id"))
    .order_by(UserIntegration.provider)
)
_OF_USER = (
    UserIntegration.user_id == bindparam("user_id"),
    UserIntegration.provider == bindparam("provider"),
)
_INTEGRATION = select(UserIntegration).where(*_OF_USER)
_GRANT = select(*Grant.columns()).where(*_OF_USER)


class IntegrationService:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        provider: MicrosoftOAuthProvider | None = None,
        cache: ReadCache = NO_CACHE,
        *,
        graph_pool: GraphPool | None = None,
        pacer: Pacer | None = None,
        clock: Clock = SYSTEM_CLOCK,
        audit: AuditLog | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self._provider = provider
        self.cache = cache
        # Shared by every Graph client this service makes: keep-alive connections, and one
        # send budget. Without them (scripts) each client opens its own.
        self.graph_pool = graph_pool
        self.pacer = pacer
        # What "now" is for every expiry this service judges or stamps (tests move it).
        self.clock = clock
        # Connects, disconnects and refused grants are recorded with the change they make.
        self.audit = audit or AuditLog(database, clock)
        self.refresher = TokenRefresher(
            database, settings, lambda: self.provider, cache, clock=clock, audit=self.audit
        )
        self.connect_flow = ConnectFlow(
            database, settings, lambda: self.provider, cache, clock, self.audit
        )

    @classmethod
    @asynccontextmanager
    async def with_session(
        cls, settings: Settings | None = None
    ) -> AsyncIterator[IntegrationService]:
        """For scripts and workers: a service with its own database connections.

        Usage::

            async with IntegrationService.with_session() as service:
                integration = await service.get_user_integration(
                    user_id=user_id, provider="microsoft-teams"
                )
        """
        settings = settings or get_settings()
        database = Database.from_settings(settings)
        provider = MicrosoftOAuthProvider(settings)
        pacer = pacer_from_settings(settings)
        try:
            yield cls(database, settings, provider, pacer=pacer)
        finally:
            await pacer.aclose()
            provider.close()
            await database.dispose()

    @property
    def provider(self) -> MicrosoftOAuthProvider:
        if self._provider is None:
            self._provider = MicrosoftOAuthProvider(self.settings)
        return self._provider

    # --- reading --------------------------------------------------------------------------

    async def get_user_integration(
        self, *, user_id: uuid.UUID | str, provider: str = MICROSOFT_TEAMS
    ) -> UserIntegration | None:
        """The connection with its tokens (decrypted), detached from any session."""
        params = {"user_id": _as_uuid(user_id), "provider": provider}
        async with self.database.session() as session:
            return await session.scalar(_INTEGRATION, params)

    async def list_views(
        self, user_id: uuid.UUID, provider: str | None = None
    ) -> list[IntegrationView]:
        """The user's connections without their tokens: one statement, no transaction."""
        views: list[IntegrationView] | None = self.cache.get("views", user_id)
        if views is None:
            rows = await self.database.fetch_all(_VIEWS, {"user_id": user_id})
            views = [IntegrationView(*list(row), clock=self.clock) for row in rows]
            self.cache.put("views", user_id, views)
        return [view for view in views if provider in (None, view.provider)]

    async def get_grant(self, user_id: uuid.UUID) -> Grant:
        """The token side of the user's Teams connection, without holding a connection."""
        grant: Grant | None = self.cache.get("grant", user_id)
        if grant is None:
            rows = await self.database.fetch_all(
                _GRANT, {"user_id": user_id, "provider": MICROSOFT_TEAMS}
            )
            if not rows:
                raise NotConnectedError
            grant = Grant(*list(rows[0]))
            self.cache.put("grant", user_id, grant)
        return grant

    # --- connecting -----------------------------------------------------------------------

    async def start_connect(
        self, user_id: uuid.UUID, browser_id: str, *, client_address: str | None = None
    ) -> str:
        """Begin the authorization-code flow for a user in one browser; returns the URL to open
        (see `ConnectFlow.start`). `client_address` is for the audit log."""
        return await self.connect_flow.start(user_id, browser_id, client_address=client_address)

    async def complete_connect(
        self, params: dict[str, str], browser_id: str | None, *, client_address: str | None = None
    ) -> UserIntegration:
        """Finish a flow from Microsoft's redirect: only in the browser that started it, once."""
        return await self.connect_flow.complete(params, browser_id, client_address=client_address)

    async def disconnect(self, user_id: uuid.UUID, *, client_address: str | None = None) -> None:
        await self.connect_flow.disconnect(user_id, client_address=client_address)

    async def require_scope(self, user_id: uuid.UUID, scope: str) -> None:
        """Refuse early, with the fix, a call Graph would refuse for a scope never granted."""
        views = await self.list_views(user_id, MICROSOFT_TEAMS)
        if not views:
            raise NotConnectedError
        granted = {s.rsplit("/", 1)[-1].lower() for s in views[0].scope.split()}
        if scope.lower() not in granted:
            raise ForbiddenError(
                f"this needs the {scope} permission, which was not granted: set "
                f"MICROSOFT_EXTRA_SCOPES={scope} (it needs an admin's consent in Entra ID), "
                f"then the user must {CONNECT_HINT}"
            )

    # --- acting in Teams --------------------------------------------------------------------

    async def call_graph(
        self,
        user_id: uuid.UUID,
        client: Callable[[str], ClientT],
        operation: Callable[[ClientT], Awaitable[T]],
    ) -> T:
        """Run `operation` on a Graph client that `client` builds from the user's token, e.g.
        `call_graph(user_id, service.teams_client, lambda teams: teams.get_user_teams())`.

        Graph may reject a token we thought valid (revoked early, clock skew): then the token
        is refreshed once and the operation retried once. A 401 means Graph did not act, so
        this is safe for sends too.
        """
        token = await self.get_access_token(user_id)
        try:
            return await operation(client(token))
        except GraphError as exc:
            if exc.status_code != 401 or isinstance(exc, DeliveryUnknownError):
                raise
            logger.info("Graph rejected the token of user %s: refreshing once", user_id)
        token = await self.get_access_token(user_id, force_refresh=True)
        return await operation(client(token))

    def teams_client(self, access_token: str) -> MicrosoftTeamsClient:
        return MicrosoftTeamsClient(
            access_token,
            settings=self.settings,
            http_client=self.graph_pool.http if self.graph_pool else None,
            pacer=self.pacer,
        )

    # --- tokens ---------------------------------------------------------------------------

    async def get_access_token(self, user_id: uuid.UUID, *, force_refresh: bool = False) -> str:
        """A usable access token, refreshed first when it is inside the refresh margin.

        `force_refresh` is for a token Graph rejected although we thought it valid. No
        database connection is held while waiting for a neighbour's refresh or for Graph.
        """
        grant = await self.get_grant(user_id)
        if grant.status == GrantState.REVOKED:
            raise ReauthorizationRequiredError(grant.last_error or "refresh refused")
        margin = self.settings.tracecat_refresh_margin_seconds
        now = self.clock.now()
        if not force_refresh and (
            not grant.needs_refresh(margin, now) or grant.just_refreshed(MIN_REFRESH_SECONDS, now)
        ):
            return grant.access_token
        return await self.refresher.refresh(
            grant.id, seen_version=grant.token_version, force=force_refresh
        )

    async def refresh_due(self) -> int:
        """Refresh every grant inside the margin: the token sweep's pass."""
        return await self.refresher.refresh_due()


def _as_uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def new_browser_id() -> str:
    return secrets.token_urlsafe(32)


# What new_browser_id makes: 32 random bytes, URL-safe base64 without padding.
_BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{43}")


def browser_id_from(cookie: str | None) -> str:
    """The browser's flow-binding id: its cookie if we could have minted it, else a new one
    (a planted or mangled value is replaced, never stored or echoed)."""
    if cookie is not None and _BROWSER_ID.fullmatch(cookie):
        return cookie
    return new_browser_id()
