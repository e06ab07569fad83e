"""IntegrationService: connecting, storing and refreshing a user's Microsoft grant.

Refresh guarantees (see `get_access_token`):
- at most one refresh per grant at a time across every process sharing the database
  (PostgreSQL: `SELECT ... FOR UPDATE` on the row; SQLite: `BEGIN IMMEDIATE`, the database
  write lock), and the row is re-read once the lock is held, so a waiter uses the token its
  neighbour just stored instead of refreshing again;
- the rotated refresh token is always stored, in the same transaction that held the lock, so
  an older token is never written over a newer one;
- `invalid_grant` marks the grant revoked (the user must reconnect); passing failures keep it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from anyio import to_thread
from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from tracecat.auth.integrations.microsoft import (
    MicrosoftOAuthProvider,
    MicrosoftTeamsClient,
    TokenResult,
)
from tracecat.auth.integrations.models import (
    MICROSOFT_TEAMS,
    OAUTH_STATE_LIFETIME,
    Grant,
    GrantState,
    IntegrationView,
    OAuthState,
    UserIntegration,
)
from tracecat.cache import NO_CACHE, ReadCache
from tracecat.config import Settings, get_settings
from tracecat.crypto import hash_secret
from tracecat.db import Database
from tracecat.exceptions import (
    CONNECT_HINT,
    DeliveryUnknownError,
    ForbiddenError,
    GraphError,
    NotConnectedError,
    ProviderUnavailableError,
    ReauthorizationRequiredError,
    SignInError,
    TracecatError,
    TransientProviderError,
    UpstreamError,
)
from tracecat.metrics import REFRESH_SECONDS, REFRESHES

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

# A token refreshed this recently is not refreshed again while it is valid (unless Graph
# rejects it).
MIN_REFRESH_SECONDS = 30
# Transient refresh failures are retried this many times, with these pauses (seconds).
REFRESH_RETRY_DELAYS = (0.5, 1.5)


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
_DUE = select(UserIntegration.id).where(
    UserIntegration.expires_at <= bindparam("horizon"),
    UserIntegration.refresh_token.is_not(None),
    UserIntegration.status != GrantState.REVOKED,
)


class IntegrationService:
    def __init__(
        self,
        database: Database,
        settings: Settings | None = None,
        provider: MicrosoftOAuthProvider | None = None,
        refresh_locks: RefreshLocks | None = None,
        cache: ReadCache = NO_CACHE,
    ) -> None:
        self.database = database
        self.settings = settings or get_settings()
        self._provider = provider
        self.refresh_locks = refresh_locks or RefreshLocks()
        self.cache = cache

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
        try:
            yield cls(database, settings, provider)
        finally:
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
            views = [IntegrationView(*row) for row in rows]
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
            grant = Grant(*rows[0])
            self.cache.put("grant", user_id, grant)
        return grant

    # --- connecting -----------------------------------------------------------------------

    async def start_connect(self, user_id: uuid.UUID, browser_id: str) -> str:
        """Begin the authorization-code flow for a user in one browser; returns the URL to open.

        MSAL's flow dict (PKCE verifier, nonce) stays in the database, encrypted, until the
        callback; `browser_id` is the secret of the cookie that binds it to this browser.
        """
        flow = await to_thread.run_sync(self.provider.initiate, self.settings.redirect_uri())
        now = datetime.now(UTC)
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
            self._store_tokens(integration, tokens, refreshed=False)
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
        if pending.is_expired:
            raise SignInError(
                "this sign-in expired (10 minutes): start again",
                what="This sign-in took longer than 10 minutes and has expired.",
            )
        return pending

    async def disconnect(self, user_id: uuid.UUID) -> None:
        async with self.database.session() as session:
            result = await session.execute(
                delete(UserIntegration).where(
                    UserIntegration.user_id == user_id,
                    UserIntegration.provider == MICROSOFT_TEAMS,
                )
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
        self, user_id: uuid.UUID, operation: Callable[[MicrosoftTeamsClient], Awaitable[T]]
    ) -> T:
        """Run a Graph operation with the user's token.

        Graph may reject a token we thought valid (revoked early, clock skew): then the token
        is refreshed once and the operation retried once. A 401 means Graph did not act, so
        this is safe for sends too.
        """
        token = await self.get_access_token(user_id)
        try:
            return await operation(self.teams_client(token))
        except GraphError as exc:
            if exc.status_code != 401 or isinstance(exc, DeliveryUnknownError):
                raise
            logger.info("Graph rejected the token of user %s: refreshing once", user_id)
        token = await self.get_access_token(user_id, force_refresh=True)
        return await operation(self.teams_client(token))

    def teams_client(self, access_token: str) -> MicrosoftTeamsClient:
        return MicrosoftTeamsClient(access_token, settings=self.settings)

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
        if not force_refresh and (
            not grant.needs_refresh(margin) or grant.just_refreshed(MIN_REFRESH_SECONDS)
        ):
            return grant.access_token
        return await self.refresh(grant.id, seen_version=grant.token_version, force=force_refresh)

    async def refresh(
        self, integration_id: uuid.UUID, *, seen_version: int | None = None, force: bool = False
    ) -> str:
        """Refresh under the grant's lock; see the module docstring for the guarantees.

        `seen_version` is the token version the caller judged stale: if the row has moved on
        by the time the lock is held, a neighbour refreshed it and its token is used. Unless
        `force` (Graph rejected the token), a still-valid token refreshed in the last
        MIN_REFRESH_SECONDS is used as it is: an identity provider issuing tokens shorter than
        the margin would otherwise be asked on every call.
        """
        started = time.perf_counter()
        # Callers in this process queue here, so only one of them holds a database
        # connection waiting on the row lock.
        async with self.refresh_locks.get(integration_id):
            try:
                return await self._refresh_locked(integration_id, seen_version, force)
            finally:
                REFRESH_SECONDS.observe(time.perf_counter() - started)

    async def _refresh_locked(
        self, integration_id: uuid.UUID, seen_version: int | None, force: bool
    ) -> str:
        margin = self.settings.tracecat_refresh_margin_seconds
        # The row lock: FOR UPDATE on PostgreSQL; on SQLite every transaction starts with
        # BEGIN IMMEDIATE, the database write lock (see db.py).
        async with self.database.session() as session:
            integration = await session.get(
                UserIntegration, integration_id, with_for_update=True, populate_existing=True
            )
            if integration is None:
                raise NotConnectedError
            # Whatever happens next changes or confirms the row: cached reads must go.
            self.cache.forget_user(integration.user_id)
            if integration.status == GrantState.REVOKED:
                raise ReauthorizationRequiredError(integration.last_error or "refresh refused")
            moved_on = seen_version is not None and integration.token_version != seen_version
            if (
                moved_on
                or (seen_version is None and not integration.needs_refresh(margin))
                or (not force and integration.just_refreshed(MIN_REFRESH_SECONDS))
            ):
                REFRESHES.labels(outcome="reused").inc()
                return integration.access_token
            if not integration.refresh_token:
                return await self._fail_passing(
                    session, integration, "no refresh token was granted (offline_access)"
                )
            try:
                tokens = await self._redeem(integration.refresh_token)
            except ReauthorizationRequiredError as exc:
                await _record_failure(
                    session, integration, GrantState.REVOKED, exc.reason, "invalid_grant"
                )
                raise
            except TransientProviderError as exc:
                return await self._fail_passing(session, integration, str(exc.detail))
            except UpstreamError as exc:  # our app registration or settings: the grant is fine
                return await self._fail_passing(session, integration, str(exc.detail), exc)
            self._store_tokens(integration, tokens, refreshed=True)
            await session.commit()
            REFRESHES.labels(outcome="refreshed").inc()
            logger.info("Refreshed Microsoft token for user %s", integration.user_id)
            return integration.access_token

    async def refresh_due(self) -> int:
        """Refresh every grant inside the margin (the sweeper's pass); returns how many were
        attempted. Each goes through `refresh`, so it never races a request doing the same."""
        margin = timedelta(seconds=self.settings.tracecat_refresh_margin_seconds)
        ids = [
            row.id
            for row in await self.database.fetch_all(_DUE, {"horizon": datetime.now(UTC) + margin})
        ]
        for integration_id in ids:
            try:
                await self.refresh(integration_id)
            except TracecatError as exc:  # recorded on the row; the next pass tries again
                logger.info("Sweeper could not refresh %s: %s", integration_id, type(exc).__name__)
        return len(ids)

    async def _redeem(self, refresh_token: str) -> TokenResult:
        """Redeem with retries; each retry uses a fresh MSAL app, since the shared one would
        replay the 5xx it just saw for about 5 seconds without asking Microsoft again."""
        for attempt, delay in enumerate((*REFRESH_RETRY_DELAYS, None)):
            try:
                return await to_thread.run_sync(
                    functools.partial(self.provider.refresh, refresh_token, fresh_app=attempt > 0)
                )
            except TransientProviderError:
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _fail_passing(
        self,
        session: AsyncSession,
        integration: UserIntegration,
        reason: str,
        error: TracecatError | None = None,
    ) -> str:
        """Keep the grant; use the current token while it lasts, else raise `error` (by
        default: retry later)."""
        outcome = "transient" if error is None else "refused"
        await _record_failure(session, integration, GrantState.REFRESH_FAILING, reason, outcome)
        if not integration.is_expired:
            return integration.access_token
        raise error or ProviderUnavailableError(
            f"the Microsoft token expired and cannot be renewed right now ({reason}): retry later",
            retry_after=10,
        )

    @staticmethod
    def _store_tokens(
        integration: UserIntegration, tokens: TokenResult, *, refreshed: bool
    ) -> None:
        integration.access_token = tokens.access_token
        # Providers may omit a new refresh token; keep the one we have then.
        integration.refresh_token = tokens.refresh_token or integration.refresh_token
        integration.expires_at = tokens.expires_at
        integration.scope = tokens.scope or integration.scope
        metadata = dict(integration.provider_metadata or {})
        if tokens.account:
            metadata["account"] = tokens.account
        integration.provider_metadata = metadata
        integration.status = GrantState.ACTIVE
        integration.refresh_failures = 0
        integration.last_error = None
        # A new connection has not been refreshed yet (and must not count as just refreshed).
        integration.last_refreshed_at = datetime.now(UTC) if refreshed else None
        integration.token_version = (integration.token_version or 0) + 1


async def _record_failure(
    session: AsyncSession,
    integration: UserIntegration,
    state: GrantState,
    reason: str,
    outcome: str,
) -> None:
    """Keep the refusal on the row (status, last error, failures in a row), say so in the
    metrics and the log; never the token."""
    integration.status = state
    integration.refresh_failures += 1
    integration.last_error = reason
    await session.commit()
    REFRESHES.labels(outcome=outcome).inc()
    logger.warning("Refresh failed for user %s (%s): %s", integration.user_id, outcome, reason)


class RefreshLocks:
    """One asyncio lock per grant, for the callers of one process (one event loop)."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def get(self, integration_id: uuid.UUID) -> asyncio.Lock:
        lock = self._locks.get(integration_id)
        if lock is None:
            lock = self._locks[integration_id] = asyncio.Lock()
        return lock


async def run_sweeper(service: IntegrationService) -> None:
    """Refresh due tokens every TRACECAT_REFRESH_INTERVAL_SECONDS, so idle users stay
    connected and their refresh tokens stay alive. Runs until cancelled."""
    interval = service.settings.tracecat_refresh_interval_seconds
    while True:
        try:
            await service.refresh_due()
        except Exception:  # a database blip must not end the sweeper
            logger.exception("Refresh sweep failed; retrying in %s s", interval)
        await asyncio.sleep(interval)


def _as_uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def new_browser_id() -> str:
    return secrets.token_urlsafe(32)
