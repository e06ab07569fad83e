"""Connecting a Microsoft account and disconnecting it: the authorization-code flow bound to
one browser, single use, 10 minutes; each step in the audit log.

`IntegrationService.start_connect`, `complete_connect` and `disconnect` are this class; it
lives apart so the facade stays small.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, cast

from anyio import to_thread
from sqlalchemy import CursorResult, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from tracecat.audit.models import AuditActor, AuditEvent, AuditOutcome
from tracecat.audit.service import AuditLog, microsoft_error
from tracecat.auth.integrations.microsoft import MicrosoftOAuthProvider
from tracecat.auth.integrations.models import (
    MICROSOFT_TEAMS,
    OAUTH_STATE_LIFETIME,
    OAuthState,
    UserIntegration,
)
from tracecat.auth.integrations.refresh import store_tokens
from tracecat.cache import ReadCache
from tracecat.clock import Clock
from tracecat.config import Settings
from tracecat.crypto import hash_secret
from tracecat.db import Database
from tracecat.exceptions import NotConnectedError, SignInError, TracecatError

logger = logging.getLogger(__name__)

# Refusals before the callback proved it came from the browser that started the flow: the
# sender is not known to be the user.
_UNVERIFIED = frozenset({"no_state", "unknown_state", "other_browser"})


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


class ConnectFlow:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        provider: Callable[[], MicrosoftOAuthProvider],
        cache: ReadCache,
        clock: Clock,
        audit: AuditLog,
    ) -> None:
        self.database = database
        self.settings = settings
        self._provider = provider  # built on first use
        self.cache = cache
        self.clock = clock
        self.audit = audit

    async def start(
        self, user_id: uuid.UUID, browser_id: str, *, client_address: str | None = None
    ) -> str:
        """Begin the authorization-code flow for a user in one browser; returns the URL to open.

        MSAL's flow dict (PKCE verifier, nonce) stays in the database, encrypted, until the
        callback; `browser_id` is the secret of the cookie that binds it to this browser.
        """
        flow = await to_thread.run_sync(self._provider().initiate, self.settings.redirect_uri())
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
            self.audit.add(
                session, AuditEvent.CONNECT_STARTED, user_id=user_id, client_address=client_address
            )
            await session.commit()
        return flow["auth_uri"]

    async def complete(
        self, params: dict[str, str], browser_id: str | None, *, client_address: str | None = None
    ) -> UserIntegration:
        """Finish a flow from Microsoft's redirect: only in the browser that started it, once.
        A refusal is recorded, under the flow's user when it is known."""
        try:
            return await self._complete(params, browser_id, client_address)
        except SignInError as exc:
            await self.audit.record(
                AuditEvent.CONNECT_REFUSED,
                user_id=exc.user_id,
                outcome=AuditOutcome.REFUSED,
                actor=AuditActor.UNKNOWN if exc.reason in _UNVERIFIED else AuditActor.USER,
                client_address=client_address,
                detail=exc.reason,
            )
            raise

    async def _complete(
        self, params: dict[str, str], browser_id: str | None, client_address: str | None
    ) -> UserIntegration:
        state = params.get("state")
        if not state:
            raise SignInError(
                "the callback has no state: start again from the connect page",
                what="This address is not a complete answer from Microsoft's sign-in.",
                reason="no_state",
            )
        pending = await self._consume_state(state, browser_id)
        if "error" in params:
            description = (params.get("error_description") or "").splitlines()
            reason = description[0] if description else params["error"]
            raise SignInError(
                f"Microsoft did not grant access ({params['error']}: {reason})",
                what=_refusal_in_words(params["error"], reason),
                # Only the code: the description is whatever the redirect's URL carried.
                reason=microsoft_error(params["error"], reason),
                user_id=pending.user_id,
            )
        if not params.get("code"):
            raise SignInError(
                "the callback has neither a code nor an error",
                what="Microsoft's answer carried neither an authorization nor an error.",
                reason="no_code",
                user_id=pending.user_id,
            )
        flow: dict[str, Any] = json.loads(pending.flow)
        try:
            tokens = await to_thread.run_sync(self._provider().complete, flow, params)
        except SignInError as exc:
            exc.user_id = pending.user_id
            raise
        except TracecatError as exc:  # Microsoft could not answer: the flow is spent anyway
            await self.audit.record(
                AuditEvent.CONNECT_REFUSED,
                user_id=pending.user_id,
                outcome=AuditOutcome.FAILURE,
                client_address=client_address,
                detail=type(exc).__name__,
            )
            raise
        async with self.database.session() as session:
            integration = await session.scalar(
                select(UserIntegration).where(
                    UserIntegration.user_id == pending.user_id,
                    UserIntegration.provider == MICROSOFT_TEAMS,
                )
            )
            if integration is None:
                integration = UserIntegration(user_id=pending.user_id, provider=MICROSOFT_TEAMS)
                session.add(integration)
                integration.token_version = 0
            store_tokens(integration, tokens, refreshed=False, now=self.clock.now())
            account = tokens.account.get("username")  # which account was attached: no secret
            self.audit.add(
                session,
                AuditEvent.CONNECT_COMPLETED,
                user_id=pending.user_id,
                client_address=client_address,
                detail=f"Microsoft account {account}" if account else None,
            )
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
                other = await session.get(OAuthState, state_hash)
                if other is not None:
                    raise SignInError(
                        "this sign-in was started in another browser: finish it where it "
                        "started, or see the README on finishing a flow started with curl",
                        what="This sign-in was started in another browser (or by a script).",
                        advice="Finish it in the browser where you pressed Connect. If a "
                        "script or curl started it, copy this page's address from the address "
                        "bar and hand it to that script, as the README explains.",
                        reason="other_browser",
                        user_id=other.user_id,  # someone else tried to finish this user's flow
                    )
                raise SignInError(
                    "unknown or already used sign-in state: start again",
                    what="This sign-in link was already used, or was never issued here.",
                    reason="unknown_state",
                    user_id=await _browser_user(session, browser_id),
                )
        if pending.is_expired_at(self.clock.now()):
            raise SignInError(
                "this sign-in expired (10 minutes): start again",
                what="This sign-in took longer than 10 minutes and has expired.",
                reason="expired",
                user_id=pending.user_id,
            )
        return pending

    async def disconnect(self, user_id: uuid.UUID, *, client_address: str | None = None) -> None:
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
            if result.rowcount:
                self.audit.add(
                    session,
                    AuditEvent.INTEGRATION_DISCONNECTED,
                    user_id=user_id,
                    client_address=client_address,
                    detail=MICROSOFT_TEAMS,
                )
            await session.commit()
        self.cache.forget_user(user_id)
        if not result.rowcount:
            raise NotConnectedError
        logger.info("User %s disconnected Microsoft account", user_id)


async def _browser_user(session: AsyncSession, browser_id: str | None) -> uuid.UUID | None:
    """The user with a flow pending in this browser: a forged or replayed answer sent to their
    browser is theirs to see in the audit log. None for a browser we never met."""
    if not browser_id:
        return None
    return await session.scalar(
        select(OAuthState.user_id)
        .where(OAuthState.browser_hash == hash_secret(browser_id))
        .limit(1)
    )
