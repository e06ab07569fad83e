"""The `audit_events` table: one row per security event, never a secret.

A row names its user by id (set to NULL when the user is deleted: the event outlives them)
and by `subject`, the user's email at the time, so an event of a deleted user still says
whose it was. `detail` is a short, bounded reason (Microsoft's error code, which check
failed, which key prefix), never a token, a code, a key or a secret.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from tracecat.db import Base, UTCDateTime

SUBJECT_MAX_LENGTH = 320  # users.email
ADDRESS_MAX_LENGTH = 64  # an IPv6 address with a zone fits; a longer "address" is cut
DETAIL_MAX_LENGTH = 300


class AuditEvent(StrEnum):
    CONNECT_STARTED = "connect.started"
    CONNECT_COMPLETED = "connect.completed"
    CONNECT_REFUSED = "connect.refused"
    INTEGRATION_DISCONNECTED = "integration.disconnected"
    GRANT_REFUSED = "grant.refused"  # Microsoft refused a refresh: the user must reconnect
    API_KEY_CREATED = "api_key.created"
    API_KEY_ROTATED = "api_key.rotated"
    API_KEY_REVOKED = "api_key.revoked"
    SUBSCRIPTION_CREATED = "subscription.created"
    SUBSCRIPTION_DELETED = "subscription.deleted"
    SUBSCRIPTION_SECRET_ROTATED = "subscription.secret_rotated"
    NOTIFICATION_FORGED = "notification.forged"
    RATE_LIMIT_EXCEEDED = "rate_limit.exceeded"


class AuditOutcome(StrEnum):
    SUCCESS = "success"
    REFUSED = "refused"  # we (or Microsoft) said no: a forged state, a revoked grant, ...
    FAILURE = "failure"  # it could not be done for now (Microsoft unavailable, ...)


class AuditActor(StrEnum):
    """Who acted: the user (an API key or a web session), an operator at the command line,
    Microsoft (its answers and notifications), or a sender we could not identify."""

    USER = "user"
    CLI = "cli"
    MICROSOFT = "microsoft"
    UNKNOWN = "unknown"


class AuditRecord(Base):
    __tablename__ = "audit_events"
    # A user's events newest first (the API's keyset pages); pruning and `audit list --since`
    # scan by time alone.
    __table_args__ = (Index("ix_audit_events_user_id_occurred_at", "user_id", "occurred_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    subject: Mapped[str | None] = mapped_column(String(SUBJECT_MAX_LENGTH), nullable=True)
    event: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(16))
    client_address: Mapped[str | None] = mapped_column(String(ADDRESS_MAX_LENGTH), nullable=True)
    detail: Mapped[str | None] = mapped_column(String(DETAIL_MAX_LENGTH), nullable=True)
