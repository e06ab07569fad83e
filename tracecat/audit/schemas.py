"""The audit log's JSON, for `GET /auth/integrations/audit` and `audit list` alike."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from tracecat.audit.models import AuditActor, AuditEvent, AuditOutcome, AuditRecord


class AuditEventResponse(BaseModel):
    id: uuid.UUID
    occurred_at: datetime
    # Plain strings, not enums: an event a newer instance recorded (during a rolling
    # upgrade) must still be readable by an older one.
    event: str = Field(description="one of: " + ", ".join(AuditEvent))
    outcome: str = Field(description="one of: " + ", ".join(AuditOutcome))
    actor: str = Field(description="who acted, one of: " + ", ".join(AuditActor))
    user_id: uuid.UUID | None = Field(description="null once the user is deleted")
    subject: str | None = Field(description="the user's email when the event was recorded")
    client_address: str | None
    detail: str | None = Field(description="why, in a few words: never a token or secret")

    @classmethod
    def from_row(cls, row: AuditRecord) -> AuditEventResponse:
        return cls(
            id=row.id,
            occurred_at=row.occurred_at,
            event=row.event,
            outcome=row.outcome,
            actor=row.actor,
            user_id=row.user_id,
            subject=row.subject,
            client_address=row.client_address,
            detail=row.detail,
        )


class AuditPageResponse(BaseModel):
    events: list[AuditEventResponse] = Field(description="newest first")
    next: str | None = Field(description="pass as `before` for the next, older page; null: none")
