"""`GET /auth/integrations/audit`: the caller's own security events, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from tracecat.audit.schemas import AuditEventResponse, AuditPageResponse
from tracecat.audit.service import DEFAULT_LIMIT, MAX_LIMIT
from tracecat.deps import CurrentUser, ResourcesDep

router = APIRouter(prefix="/auth/integrations", tags=["audit"])


@router.get("/audit", response_model=AuditPageResponse)
async def list_audit_events(
    user: CurrentUser,
    resources: ResourcesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    before: Annotated[
        str | None, Query(max_length=200, description="the `next` of the previous page")
    ] = None,
) -> AuditPageResponse:
    """Connects, disconnects, refused grants, API keys, subscriptions, forged notifications
    and rate limits of the caller; `next` pages back in time."""
    page = await resources.audit.list_for_user(user.id, limit, before)
    return AuditPageResponse(
        events=[AuditEventResponse.from_row(row) for row in page.events], next=page.next
    )
