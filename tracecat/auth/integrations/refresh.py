"""Refreshing a user's Microsoft grant: one refresh per grant at a time, everywhere.

Guarantees:
- at most one refresh per grant at a time across every process sharing the database
  (PostgreSQL: `SELECT ... FOR UPDATE` on the row; SQLite: `BEGIN IMMEDIATE`, the database
  write lock), and the row is re-read once the lock is held, so a waiter uses the token its
  neighbour just stored instead of refreshing again;
- the rotated refresh token is always stored, in the same transaction that held the lock, so
  an older token is never written over a newer one;
- `invalid_grant` marks the grant revoked (the user must reconnect), with a `grant.refused`
  audit event in the same transaction; passing failures keep it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta

from anyio import to_thread
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from tracecat.audit.models import AuditActor, AuditEvent, AuditOutcome
from tracecat.audit.service import AuditLog, microsoft_error
from tracecat.auth.integrations.microsoft import MicrosoftOAuthProvider, TokenResult
from tracecat.auth.integrations.models import GrantState, UserIntegration
from tracecat.cache import ReadCache
from tracecat.clock import SYSTEM_CLOCK, Clock
from tracecat.config import Settings
from tracecat.db import Database
from tracecat.exceptions import (
    NotConnectedError,
    ProviderUnavailableError,
    ReauthorizationRequiredError,
    TracecatError,
    TransientProviderError,
    UpstreamError,
)
from tracecat.metrics import REFRESH_SECONDS, REFRESHES

logger = logging.getLogger(__name__)

# A token refreshed this recently is not refreshed again while it is valid (unless Graph
# rejects it).
MIN_REFRESH_SECONDS = 30
# Transient refresh failures are retried this many times, with these pauses (seconds).
REFRESH_RETRY_DELAYS = (0.5, 1.5)

_DUE = select(UserIntegration.id).where(
    UserIntegration.expires_at <= bindparam("horizon"),
    UserIntegration.refresh_token.is_not(None),
    UserIntegration.status != GrantState.REVOKED,
)


class TokenRefresher:
    """The refresh state machine over one database, MSAL provider and read cache."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        provider: Callable[[], MicrosoftOAuthProvider],
        cache: ReadCache,
        *,
        clock: Clock = SYSTEM_CLOCK,
        audit: AuditLog | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self._provider = provider  # built on first use: connecting and reading need none
        self.cache = cache
        self.locks = RefreshLocks()
        # What "now" is for every check and stamp here, and the pause between retries: one
        # clock, so a sweep and the refresh it starts agree on which tokens are due.
        self.clock = clock
        self.audit = audit or AuditLog(database, clock)

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
        async with self.locks.get(integration_id):
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
            now = self.clock.now()
            if (
                moved_on
                or (seen_version is None and not integration.needs_refresh(margin, now))
                or (not force and integration.just_refreshed(MIN_REFRESH_SECONDS, now))
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
                error, _, description = exc.reason.partition(":")
                self.audit.add(
                    session,
                    AuditEvent.GRANT_REFUSED,
                    user_id=integration.user_id,
                    outcome=AuditOutcome.REFUSED,
                    actor=AuditActor.MICROSOFT,
                    detail=microsoft_error(error, description),
                )
                await _record_failure(
                    session, integration, GrantState.REVOKED, exc.reason, "invalid_grant"
                )
                raise
            except TransientProviderError as exc:
                return await self._fail_passing(session, integration, str(exc.detail))
            except UpstreamError as exc:  # our app registration or settings: the grant is fine
                return await self._fail_passing(session, integration, str(exc.detail), exc)
            store_tokens(integration, tokens, refreshed=True, now=self.clock.now())
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
            for row in await self.database.fetch_all(_DUE, {"horizon": self.clock.now() + margin})
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
                    functools.partial(
                        self._provider().refresh, refresh_token, fresh_app=attempt > 0
                    )
                )
            except TransientProviderError:
                if delay is None:
                    raise
                await self.clock.sleep(delay)
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
        if not integration.is_expired_at(self.clock.now()):
            return integration.access_token
        raise error or ProviderUnavailableError(
            f"the Microsoft token expired and cannot be renewed right now ({reason}): retry later",
            retry_after=10,
        )


def store_tokens(
    integration: UserIntegration, tokens: TokenResult, *, refreshed: bool, now: datetime
) -> None:
    """Put a token answer, received at `now` (the app's clock), on the row: a new connection
    or a refresh."""
    integration.access_token = tokens.access_token
    # Providers may omit a new refresh token; keep the one we have then.
    integration.refresh_token = tokens.refresh_token or integration.refresh_token
    integration.expires_at = now + timedelta(seconds=tokens.expires_in)
    integration.scope = tokens.scope or integration.scope
    metadata = dict(integration.provider_metadata or {})
    if tokens.account:
        metadata["account"] = tokens.account
    integration.provider_metadata = metadata
    integration.status = GrantState.ACTIVE
    integration.refresh_failures = 0
    integration.last_error = None
    # A new connection has not been refreshed yet (and must not count as just refreshed).
    integration.last_refreshed_at = now if refreshed else None
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
