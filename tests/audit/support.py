"""Reading the audit log as a user (the API) and as an operator (the table itself)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.utils.flows import ApiUser
from tracecat.audit.models import AuditRecord
from tracecat.audit.service import AuditLog
from tracecat.db import Database

AUDIT = "/auth/integrations/audit"


def audit_page(base_url: str, user: ApiUser, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{base_url}{AUDIT}", headers=user.headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def events(base_url: str, user: ApiUser) -> list[dict[str, Any]]:
    """The user's events, newest first, in one page (tests make far fewer than 500)."""
    page = audit_page(base_url, user, limit=500)
    assert page["next"] is None
    return page["events"]


def names(found: list[dict[str, Any]]) -> list[str]:
    return [event["event"] for event in found]


def stored_events(database_url: str) -> list[AuditRecord]:
    """Every row, newest first, users or not: what `audit list` reads."""

    async def read() -> list[AuditRecord]:
        database = Database(database_url)
        try:
            return await AuditLog(database).list_all()
        finally:
            await database.dispose()

    return asyncio.run(read())
