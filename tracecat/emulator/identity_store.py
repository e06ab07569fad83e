"""What the identity platform remembers: apps, users, codes, refresh grants, access tokens.

One part of EmulatorState (state.py), sharing its lock, clock and change counter.
The collections are plain attributes so persistence.py can export and replace them;
anyone touching them directly holds the state's lock.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from tracecat.emulator.clock import Clock
from tracecat.emulator.config import EmulatorConfig
from tracecat.emulator.constants import (
    DEMO_APP_NAME,
    DEMO_APP_SCOPES,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    TENANT_ID,
)

# Entra's default: a refresh token unused for 90 days can no longer be redeemed (AADSTS700082).
REFRESH_TOKEN_MAX_INACTIVE_SECONDS = 90 * 24 * 3600


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class AppRegistration:
    client_id: str
    client_secret: str
    display_name: str
    redirect_uris: list[str]
    # Entra lets any port on a loopback redirect URI match; the demo app goes
    # further and accepts any loopback redirect so no registration step is needed.
    any_loopback_redirect: bool = False
    scopes: tuple[str, ...] = DEMO_APP_SCOPES

    def accepts_redirect(self, uri: str) -> bool:
        try:
            parts = urlsplit(uri)
            _ = parts.port  # raises on a malformed port
        except ValueError:
            return False
        if parts.fragment or parts.scheme not in ("http", "https"):
            return False
        loopback = is_loopback_host(parts.hostname)
        if self.any_loopback_redirect and loopback:
            return True
        if parts.scheme == "http" and not loopback:
            return False
        for registered in self.redirect_uris:
            if registered == uri:
                return True
            reg = urlsplit(registered)
            if (
                loopback
                and is_loopback_host(reg.hostname)
                and (reg.scheme, reg.hostname, reg.path, reg.query)
                == (parts.scheme, parts.hostname, parts.path, parts.query)
            ):
                return True
        return False

    def public(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "display_name": self.display_name,
            "redirect_uris": list(self.redirect_uris),
            "any_loopback_redirect": self.any_loopback_redirect,
            "scopes": list(self.scopes),
        }


def demo_app() -> AppRegistration:
    return AppRegistration(
        DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_APP_NAME, [], any_loopback_redirect=True
    )


@dataclass
class DirectoryUser:
    """A user of the emulated tenant (not the product's own tracecat.auth.models.User)."""

    email: str
    oid: str
    display_name: str
    given_name: str
    surname: str
    # Refresh and access tokens issued before this instant are revoked.
    tokens_valid_from: float | None = None
    # Access tokens issued before this instant are treated as expired.
    access_tokens_expired_before: float | None = None

    def public(self) -> dict[str, Any]:
        return {"email": self.email, "id": self.oid, "display_name": self.display_name}


def describe_user(email: str) -> DirectoryUser:
    """The user an email signs in as, without storing it."""
    local = email.split("@", 1)[0]
    words = [w.capitalize() for w in local.replace("_", ".").replace("-", ".").split(".") if w]
    words = words or [local]
    return DirectoryUser(
        email=email,
        # Derived from the email so a user keeps the same object id across resets.
        oid=str(uuid.uuid5(uuid.UUID(TENANT_ID), f"user/{email}")),
        display_name=" ".join(words),
        given_name=words[0],
        surname=" ".join(words[1:]),
    )


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    email: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    issued_at: float
    redeemed: bool = False


@dataclass
class RefreshGrant:
    token: str
    client_id: str
    email: str
    scopes: tuple[str, ...]
    issued_at: float
    used: bool = False


@dataclass
class IssuedAccessToken:
    jti: str
    email: str
    client_id: str
    issued_at: float


class TokenRejection(Enum):
    """Why a presented code, refresh token or access token is refused."""

    UNKNOWN = "unknown"  # never issued (or forgotten by a reset)
    REDEEMED = "redeemed"  # an authorization code used before
    EXPIRED = "expired"  # a code past its lifetime; an access token expired by the control API
    REVOKED = "revoked"  # issued before the user's tokens were revoked
    WRONG_CLIENT = "wrong_client"  # a refresh token issued to another app
    INACTIVE = "inactive"  # a refresh token unused for longer than Entra allows
    REUSED = "reused"  # a refresh token used before, under strict rotation


class TokenRejected(Exception):
    """Raised by the store; token_endpoint.py turns it into an AADSTS body."""

    def __init__(
        self, reason: TokenRejection, record: AuthorizationCode | RefreshGrant | None = None
    ) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.record = record


def _opaque(prefix: str) -> str:
    return f"{prefix}{secrets.token_urlsafe(48)}"


class IdentityStore:
    def __init__(
        self,
        lock: threading.RLock,
        clock: Clock,
        changed: Callable[[], None],
        config: Callable[[], EmulatorConfig],
    ) -> None:
        self._lock = lock
        self._clock = clock
        # Called (under the lock) after every change that persistence.py saves.
        self._changed = changed
        self._config = config
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.apps: dict[str, AppRegistration] = {DEMO_CLIENT_ID: demo_app()}
            self.users: dict[str, DirectoryUser] = {}
            # Codes live minutes, so they are neither saved nor restored.
            self.codes: dict[str, AuthorizationCode] = {}
            self.refresh_grants: dict[str, RefreshGrant] = {}
            # Kept so revocation compares the exact issue time, not the whole-second iat.
            self.access_tokens: dict[str, IssuedAccessToken] = {}
            self.revoked_jtis: set[str] = set()

    # -- apps and users ------------------------------------------------------------

    def app(self, client_id: str) -> AppRegistration | None:
        with self._lock:
            return self.apps.get(client_id.lower())

    def register_app(self, app: AppRegistration) -> AppRegistration:
        with self._lock:
            app.client_id = app.client_id.lower()
            self.apps[app.client_id] = app
            self._changed()
            return app

    def ensure_user(self, email: str) -> tuple[DirectoryUser, bool]:
        """The user with this email, created if new; the flag says whether it was."""
        key = email.strip().lower()
        with self._lock:
            user = self.users.get(key)
            if user is not None:
                return user, False
            user = describe_user(key)
            self.users[key] = user
            self._changed()
            return user, True

    def user(self, email: str) -> DirectoryUser | None:
        with self._lock:
            return self.users.get(email.strip().lower())

    def all_users(self) -> list[DirectoryUser]:
        with self._lock:
            return list(self.users.values())

    def revoke_user(self, email: str) -> DirectoryUser | None:
        with self._lock:
            user = self.user(email)
            if user is not None:
                user.tokens_valid_from = self._clock.now()
                self._changed()
            return user

    def expire_user_access_tokens(self, email: str) -> DirectoryUser | None:
        with self._lock:
            user = self.user(email)
            if user is not None:
                user.access_tokens_expired_before = self._clock.now()
                self._changed()
            return user

    # -- authorization codes and refresh tokens ---------------------------------------

    def add_code(self, **fields: Any) -> AuthorizationCode:
        code = AuthorizationCode(code=_opaque("1.AEmu"), issued_at=self._clock.now(), **fields)
        with self._lock:
            self.codes[code.code] = code
        return code

    def redeem_code(self, code: str) -> AuthorizationCode:
        """Mark the code used; raise TokenRejected (UNKNOWN, REDEEMED or EXPIRED)."""
        with self._lock:
            record = self.codes.get(code)
            if record is None:
                raise TokenRejected(TokenRejection.UNKNOWN)
            if record.redeemed:
                raise TokenRejected(TokenRejection.REDEEMED, record)
            record.redeemed = True
            age = self._clock.now() - record.issued_at
            if age > self._config().authorization_code_lifetime:
                raise TokenRejected(TokenRejection.EXPIRED, record)
            return record

    def add_refresh_token(self, client_id: str, email: str, scopes: tuple[str, ...]) -> str:
        grant = RefreshGrant(_opaque("0.AEmu"), client_id, email, scopes, self._clock.now())
        with self._lock:
            self.refresh_grants[grant.token] = grant
            self._changed()
        return grant.token

    def use_refresh_token(self, token: str, client_id: str) -> RefreshGrant:
        """Return the grant, now marked used, or raise TokenRejected with the reason:
        UNKNOWN, REVOKED, INACTIVE, WRONG_CLIENT or REUSED (strict rotation only)."""
        with self._lock:
            grant = self.refresh_grants.get(token)
            if grant is None:
                raise TokenRejected(TokenRejection.UNKNOWN)
            user = self.users.get(grant.email)
            if user is None or (
                user.tokens_valid_from is not None and grant.issued_at < user.tokens_valid_from
            ):
                raise TokenRejected(TokenRejection.REVOKED, grant)
            if self._clock.now() - grant.issued_at > REFRESH_TOKEN_MAX_INACTIVE_SECONDS:
                raise TokenRejected(TokenRejection.INACTIVE, grant)
            if grant.client_id != client_id:
                raise TokenRejected(TokenRejection.WRONG_CLIENT, grant)
            if grant.used and self._config().refresh_token_rotation == "strict":
                raise TokenRejected(TokenRejection.REUSED, grant)
            if not grant.used:
                grant.used = True
                self._changed()
            return grant

    # -- access tokens ---------------------------------------------------------------

    def record_access_token(self, jti: str, email: str, client_id: str, issued_at: float) -> None:
        with self._lock:
            self.access_tokens[jti] = IssuedAccessToken(jti, email, client_id, issued_at)
            self._changed()

    def access_token_rejection(self, jti: str, email: str, iat: float) -> TokenRejection | None:
        """REVOKED or EXPIRED when the control API invalidated the token early, else None.

        The token's own `exp` is checked by SigningKey.verify against the same clock."""
        with self._lock:
            record = self.access_tokens.get(jti)
            # Tokens minted before a restart are unknown but still properly signed.
            issued_at = record.issued_at if record else iat
            user = self.users.get(email)
            if jti in self.revoked_jtis:
                return TokenRejection.REVOKED
            if user is None:
                return None
            if user.tokens_valid_from is not None and issued_at < user.tokens_valid_from:
                return TokenRejection.REVOKED
            if (
                user.access_tokens_expired_before is not None
                and issued_at < user.access_tokens_expired_before
            ):
                return TokenRejection.EXPIRED
            return None
