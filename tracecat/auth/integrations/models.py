"""Integration tables and the API's request/response schemas."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from tracecat.auth.models import utcnow
from tracecat.clock import SYSTEM_CLOCK, Clock
from tracecat.db import Base, EncryptedText, UTCDateTime

MICROSOFT_TEAMS = "microsoft-teams"
OAUTH_STATE_LIFETIME = timedelta(minutes=10)


class TokenLifetime:
    """Expiry arithmetic shared by the table row and its token-free and cached reads; the
    class using it has `expires_at` and `last_refreshed_at`.

    Every check takes the time it judges at: the app passes its clock's `now()`, so a sweep,
    a refresh and the status it reports agree on what "now" is.
    """

    expires_at: datetime | None
    last_refreshed_at: datetime | None

    @property
    def is_expired(self) -> bool:
        """Expired by the system clock: for scripts (`integration.is_expired`, as in the
        README); the app uses `is_expired_at(clock.now())`."""
        return self.is_expired_at(SYSTEM_CLOCK.now())

    def is_expired_at(self, now: datetime) -> bool:
        return self.needs_refresh(0, now)

    def needs_refresh(self, margin_seconds: float, now: datetime) -> bool:
        """Expired at `now`, or will be within `margin_seconds` of it."""
        return self.expires_at is not None and (
            now + timedelta(seconds=margin_seconds) >= self.expires_at
        )

    def just_refreshed(self, seconds: float, now: datetime) -> bool:
        """Refreshed (not merely connected) within `seconds` before `now`, and still valid."""
        return (
            self.last_refreshed_at is not None
            and now - self.last_refreshed_at < timedelta(seconds=seconds)
            and not self.is_expired_at(now)
        )


class IntegrationStatus(StrEnum):
    CONNECTED = "connected"
    EXPIRED = "expired"
    REAUTHORIZATION_REQUIRED = "reauthorization_required"
    NOT_CONNECTED = "not_connected"


class GrantState(StrEnum):
    """What is stored; `expired` is derived from the clock, not stored."""

    ACTIVE = "active"
    REFRESH_FAILING = "refresh_failing"  # passing failures (5xx, timeouts)
    REVOKED = "revoked"  # Microsoft answered invalid_grant: the user must reconnect


class OAuthState(Base):
    """A pending authorization-code flow: single use, bound to a user and a browser."""

    __tablename__ = "oauth_states"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(64))
    browser_hash: Mapped[str] = mapped_column(String(64))
    # MSAL's flow dict holds the PKCE verifier and nonce: a secret until the callback.
    flow: Mapped[str] = mapped_column(EncryptedText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    def is_expired_at(self, now: datetime) -> bool:
        return now >= self.expires_at


class UserIntegration(TokenLifetime, Base):
    __tablename__ = "user_integrations"
    __table_args__ = (UniqueConstraint("user_id", "provider"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(64))
    access_token: Mapped[str] = mapped_column(EncryptedText)
    refresh_token: Mapped[str | None] = mapped_column(EncryptedText, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    scope: Mapped[str] = mapped_column(Text, default="")
    # `metadata` is taken on declarative classes; the column keeps the seed's name.
    provider_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    status: Mapped[str] = mapped_column(String(32), default=GrantState.ACTIVE)
    # Bumped on every token write: a writer holding an older version must not overwrite.
    token_version: Mapped[int] = mapped_column(Integer, default=1)
    last_refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    refresh_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()


@dataclass(frozen=True)
class IntegrationView(TokenLifetime):
    """What may be shown of a connection: every column but the tokens."""

    provider: str
    status: str
    expires_at: datetime | None
    scope: str
    provider_metadata: dict[str, Any]
    has_refresh_token: bool
    last_refreshed_at: datetime | None
    refresh_failures: int
    # What "now" is for `is_expired` and `public_status`: the clock of the app that read it.
    clock: Clock = field(default=SYSTEM_CLOCK, kw_only=True, repr=False, compare=False)

    @classmethod
    def columns(cls) -> tuple[Any, ...]:
        """The SELECT list, in field order (all but `clock`), so a read never decrypts a
        token."""
        c = UserIntegration
        return (
            c.provider,
            c.status,
            c.expires_at,
            c.scope,
            c.provider_metadata,
            c.refresh_token.is_not(None),
            c.last_refreshed_at,
            c.refresh_failures,
        )

    @property
    def is_expired(self) -> bool:
        return self.is_expired_at(self.clock.now())

    @property
    def public_status(self) -> IntegrationStatus:
        if self.status == GrantState.REVOKED:
            return IntegrationStatus.REAUTHORIZATION_REQUIRED
        if not self.is_expired:
            return IntegrationStatus.CONNECTED
        if self.has_refresh_token and self.status == GrantState.ACTIVE:
            return IntegrationStatus.CONNECTED
        return IntegrationStatus.EXPIRED


@dataclass(frozen=True)
class Grant(TokenLifetime):
    """The token side of a connection, as the Graph calls need it."""

    id: uuid.UUID
    access_token: str
    expires_at: datetime | None
    status: str
    token_version: int
    last_error: str | None
    last_refreshed_at: datetime | None

    @classmethod
    def columns(cls) -> tuple[Any, ...]:
        c = UserIntegration
        return (
            c.id,
            c.access_token,
            c.expires_at,
            c.status,
            c.token_version,
            c.last_error,
            c.last_refreshed_at,
        )

    def __repr__(self) -> str:  # never the token
        return f"Grant(id={self.id}, expires_at={self.expires_at}, status={self.status})"
