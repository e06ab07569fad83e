"""The audit log's JSON, for `GET /auth/integrations/audit` and `audit list` alike."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from tracecat.audit.models import AuditActor, AuditEvent, AuditOutcome, AuditRecord


class AuditEventResponse(BaseModel):
    id: uuid.UUID
    occurred_at: datetime
    event: AuditEvent
    outcome: AuditOutcome
    actor: AuditActor
    user_id: uuid.UUID | None = Field(description="null once the user is deleted")
    subject: str | None = Field(description="the user's email when the event was recorded")
    client_address: str | None
    detail: str | None = Field(description="why, in a few words: never a token or secret")

    @classmethod
    def from_row(cls, row: AuditRecord) -> AuditEventResponse:
        return cls(
            id=row.id,
            occurred_at=row.occurred_at,
            event=AuditEvent(row.event),
            outcome=AuditOutcome(row.outcome),
            actor=AuditActor(row.actor),
            user_id=row.user_id,
            subject=row.subject,
            client_address=row.client_address,
            detail=row.detail,
        )


class AuditPageResponse(BaseModel):
    events: list[AuditEventResponse] = Field(description="newest first")
    next: str | None = Field(description="pass as `before` for the next, older page; null: none")
