"""IntegrationService: the facade for a user's Microsoft grant.

Connecting (the authorization-code flow bound to one browser), reading the connection
(cached, without tokens), handing out a fresh access token (refreshes live in `refresh.py`)
and running Graph calls with it (`call_graph`, for any Graph client).
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

from anyio import to_thread
from sqlalchemy import CursorResult, bindparam, delete, select

from tracecat.auth.integrations.microsoft import MicrosoftOAuthProvider
from tracecat.auth.integrations.models import (
    MICROSOFT_TEAMS,
    OAUTH_STATE_LIFETIME,
    Grant,
    GrantState,
    IntegrationView,
    OAuthState,
    UserIntegration,
)
from tracecat.auth.integrations.refresh import MIN_REFRESH_SECONDS, TokenRefresher, store_tokens
from tracecat.cache import NO_CACHE, ReadCache
from tracecat.clock import SYSTEM_CLOCK, Clock
from tracecat.config import Settings, get_settings
from tracecat.crypto import hash_secret
from tracecat.db import Database
from tracecat.exceptions import (
    CONNECT_HINT,
    DeliveryUnknownError,
    ForbiddenError,
    GraphError,
    NotConnectedError,
    ReauthorizationRequiredError,
    SignInError,
)
from tracecat.graph.pacing import Pacer, pacer_from_settings
from tracecat.graph.teams import MicrosoftTeamsClient
from tracecat.graph.transport import GraphClient, GraphPool

logger = logging.getLogger(__name__)


def _refusal_in_words(error: str, reason: str) -> str:
    """Microsoft's OAuth error, as a person would say it."""
    if error == "access_denied":
        return (
            "The sign-in was cancelled, or the permissions this app asks for were declined, "
            f"so nothing was connected (Microsoft said: {reason})."
        )
    if error in ("consent_required", "interaction_required"):
        return f"Microsoft needs more consent before it lets this app in ({reason})."
    return f"Microsoft did not grant access: {reason}"


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
        self.refresher = TokenRefresher(
            database, settings, lambda: self.provider, cache, clock=clock
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

    async def start_connect(self, user_id: uuid.UUID, browser_id: str) -> str:
        """Begin the authorization-code flow for a user in one browser; returns the URL to open.

        MSAL's flow dict (PKCE verifier, nonce) stays in the database, encrypted, until the
        callback; `browser_id` is the secret of the cookie that binds it to this browser.
        """
        flow = await to_thread.run_sync(self.provider.initiate, self.settings.redirect_uri())
        now = self.clock.now()
        async with self.database.session() as session:
            await session.execute(delete(OAuthState).where(OAuthState.expires_at < now))
            session.add(
                OAuthState(
                    state_hash=hash_secret(flow["state"]),
                    user_id=user_id,
                    provider=MICROSOFT_TEAMS,
                    browser_hash=hash_secret(browser_id),
                    flow=json.dumps(flow),
                    expires_at=now + OAUTH_STATE_LIFETIME,
                )
            )
            await session.commit()
        return flow["auth_uri"]

    async def complete_connect(
        self, params: dict[str, str], browser_id: str | None
    ) -> UserIntegration:
        """Finish a flow from Microsoft's redirect: only in the browser that started it, once."""
        state = params.get("state")
        if not state:
            raise SignInError(
                "the callback has no state: start again from the connect page",
                what="This address is not a complete answer from Microsoft's sign-in.",
            )
        pending = await self._consume_state(state, browser_id)
        if "error" in params:
            description = (params.get("error_description") or "").splitlines()
            reason = description[0] if description else params["error"]
            raise SignInError(
                f"Microsoft did not grant access ({params['error']}: {reason})",
                what=_refusal_in_words(params["error"], reason),
            )
        if not params.get("code"):
            raise SignInError(
                "the callback has neither a code nor an error",
                what="Microsoft's answer carried neither an authorization nor an error.",
            )
        flow: dict[str, Any] = json.loads(pending.flow)
        tokens = await to_thread.run_sync(self.provider.complete, flow, params)
        async with self.database.session() as session:
            integration = await session.scalar(
                _INTEGRATION, {"user_id": pending.user_id, "provider": MICROSOFT_TEAMS}
            )
            if integration is None:
                integration = UserIntegration(user_id=pending.user_id, provider=MICROSOFT_TEAMS)
                session.add(integration)
                integration.token_version = 0
            store_tokens(integration, tokens, refreshed=False, now=self.clock.now())
            await session.commit()
        self.cache.forget_user(pending.user_id)
        logger.info("User %s connected Microsoft account", pending.user_id)
        return integration

    async def _consume_state(self, state: str, browser_id: str | None) -> OAuthState:
        state_hash = hash_secret(state)
        async with self.database.session() as session:
            # Delete-returning takes the row exactly once even when two callbacks race.
            pending = await session.scalar(
                delete(OAuthState)
                .where(
                    OAuthState.state_hash == state_hash,
                    OAuthState.browser_hash == hash_secret(browser_id or ""),
                )
                .returning(OAuthState)
            )
            await session.commit()
            if pending is None:
                if await session.get(OAuthState, state_hash) is not None:
                    raise SignInError(
                        "this sign-in was started in another browser: finish it where it "
                        "started, or see the README on finishing a flow started with curl",
                        what="This sign-in was started in another browser (or by a script).",
                        advice="Finish it in the browser where you pressed Connect. If a "
                        "script or curl started it, copy this page's address from the address "
                        "bar and hand it to that script, as the README explains.",
                    )
                raise SignInError(
                    "unknown or already used sign-in state: start again",
                    what="This sign-in link was already used, or was never issued here.",
                )
        if pending.is_expired_at(self.clock.now()):
            raise SignInError(
                "this sign-in expired (10 minutes): start again",
                what="This sign-in took longer than 10 minutes and has expired.",
            )
        return pending

    async def disconnect(self, user_id: uuid.UUID) -> None:
        async with self.database.session() as session:
            # A DELETE answers with a cursor result, which carries the row count.
            result = cast(
                CursorResult[Any],
                await session.execute(
                    delete(UserIntegration).where(
                        UserIntegration.user_id == user_id,
                        UserIntegration.provider == MICROSOFT_TEAMS,
                    )
                ),
            )
            await session.execute(delete(OAuthState).where(OAuthState.user_id == user_id))
            await session.commit()
        self.cache.forget_user(user_id)
        if not result.rowcount:
            raise NotConnectedError
        logger.info("User %s disconnected Microsoft account", user_id)

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
