"""Signing in to the web UI: an API key, posted once, becomes a session cookie.

The cookie holds a random token; the database holds its SHA-256 hash, the user and the API
key that opened it, so a dump holds no usable session and revoking the key ends its sessions.
The cookie is HttpOnly and SameSite=Lax: sent when Microsoft's sign-in (another site)
redirects the browser back, never on another site's POST. Every change a page makes also
carries a CSRF token derived from the session's own token (HMAC), checked in constant time,
so no state is stored for it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Response
from sqlalchemy import bindparam, delete, select

from tracecat.auth.models import ApiKey, User
from tracecat.auth.service import Principal
from tracecat.clock import Clock
from tracecat.crypto import hash_secret
from tracecat.db import Database
from tracecat.exceptions import AuthenticationError, ForbiddenError, SignInRequiredError
from tracecat.web.models import WebSession

SESSION_COOKIE = "tracecat_session"
SESSION_LIFETIME = timedelta(hours=12)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

_KEY = select(ApiKey.id, ApiKey.user_id).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
)
_SESSION = (
    select(User.id, User.email, WebSession.api_key_id)
    .select_from(WebSession)
    .join(User, User.id == WebSession.user_id)
    .join(ApiKey, ApiKey.id == WebSession.api_key_id)
    .where(
        WebSession.token_hash == bindparam("token_hash"),
        WebSession.expires_at > bindparam("now"),
        ApiKey.revoked_at.is_(None),
    )
)


@dataclass(frozen=True)
class WebUser:
    """The person behind a page request and the CSRF token their forms carry."""

    principal: Principal
    csrf_token: str

    @property
    def id(self) -> uuid.UUID:
        return self.principal.id

    def check_csrf(self, sent: str | None) -> None:
        if not sent or not hmac.compare_digest(sent, self.csrf_token):
            raise ForbiddenError(
                "this form is out of date or came from another site: reload the page and try again"
            )


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"csrf", hashlib.sha256).hexdigest()


class WebSessions:
    def __init__(self, database: Database, clock: Clock) -> None:
        self.database = database
        self.clock = clock

    async def open(self, api_key: str) -> str:
        """A new session for the key's user; its token (for the cookie only)."""
        rows = await self.database.fetch_all(_KEY, {"key_hash": hash_secret(api_key.strip())})
        if not rows:
            raise AuthenticationError("invalid or revoked API key")
        token = secrets.token_urlsafe(32)
        now = self.clock.now()
        async with self.database.session() as session, session.begin():
            # Ended sessions are of no use to anyone: each sign-in sweeps them away.
            await session.execute(delete(WebSession).where(WebSession.expires_at <= now))
            session.add(
                WebSession(
                    token_hash=hash_secret(token),
                    user_id=rows[0].user_id,
                    api_key_id=rows[0].id,
                    created_at=now,
                    expires_at=now + SESSION_LIFETIME,
                )
            )
        return token

    async def resolve(self, token: str | None) -> WebUser:
        if not token:
            raise SignInRequiredError
        rows = await self.database.fetch_all(
            _SESSION, {"token_hash": hash_secret(token), "now": self.clock.now()}
        )
        if not rows:
            raise SignInRequiredError
        row = rows[0]
        principal = Principal(id=row.id, email=row.email, key_id=row.api_key_id)
        return WebUser(principal, csrf_token(token))

    async def close(self, token: str | None) -> None:
        if token:
            async with self.database.session() as session, session.begin():
                await session.execute(
                    delete(WebSession).where(WebSession.token_hash == hash_secret(token))
                )


def set_session_cookie(response: Response, token: str, *, secure: bool) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure,
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
