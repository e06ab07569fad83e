"""The API's request and response models (tables live in `models.py`, Graph's resources in
`tracecat.graph.resources`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tracecat.auth.integrations.models import (
    MICROSOFT_TEAMS,
    IntegrationStatus,
    IntegrationView,
)
from tracecat.graph.resources import Mention


class ConnectResponse(BaseModel):
    auth_url: str


class Account(BaseModel):
    id: str | None = None
    tenant_id: str | None = None
    username: str | None = None
    display_name: str | None = None


class IntegrationSummary(BaseModel):
    provider: str
    status: IntegrationStatus
    expires_at: datetime | None
    scopes: list[str]
    account: Account | None

    @classmethod
    def from_view(cls, integration: IntegrationView) -> IntegrationSummary:
        return cls(
            provider=integration.provider,
            status=integration.public_status,
            expires_at=integration.expires_at,
            scopes=integration.scope.split(),
            account=Account(**integration.provider_metadata.get("account", {})),
        )


class StatusResponse(IntegrationSummary):
    connected: bool
    is_expired: bool
    last_refreshed_at: datetime | None = None
    refresh_failures: int = 0

    @classmethod
    def from_view(cls, integration: IntegrationView | None) -> StatusResponse:
        if integration is None:
            return cls(
                provider=MICROSOFT_TEAMS,
                connected=False,
                status=IntegrationStatus.NOT_CONNECTED,
                expires_at=None,
                is_expired=False,
                scopes=[],
                account=None,
            )
        summary = IntegrationSummary.from_view(integration)
        return cls(
            **summary.model_dump(),
            connected=summary.status in (IntegrationStatus.CONNECTED, IntegrationStatus.EXPIRED),
            is_expired=integration.is_expired,
            last_refreshed_at=integration.last_refreshed_at,
            refresh_failures=integration.refresh_failures,
        )


class SendMessageRequest(BaseModel):
    """A message or reply to post; Graph's own limits are checked here, before any call."""

    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1, max_length=28_000)  # Teams' message size limit
    content_type: Literal["text", "html"] = "text"
    subject: str | None = Field(default=None, max_length=255)
    mentions: list[Mention] | None = Field(default=None, max_length=20)
    adaptive_card: dict[str, Any] | None = None
