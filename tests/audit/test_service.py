"""AuditLog on its own database: keyset pages through events recorded at the same instant,
details cut to the column on both databases, Microsoft's errors reduced to their codes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from tracecat.audit.models import DETAIL_MAX_LENGTH, AuditEvent
from tracecat.audit.service import AuditLog, microsoft_error, new_record
from tracecat.auth.models import User
from tracecat.db import Database


async def _user(database: Database) -> uuid.UUID:
    async with database.session() as session, session.begin():
        user = User(email=f"{uuid.uuid4().hex[:8]}@example.com")
        session.add(user)
    return user.id


async def test_pages_through_events_of_one_instant(database: Database) -> None:
    user_id = await _user(database)
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    async with database.session() as session, session.begin():
        for _ in range(5):
            session.add(new_record(AuditEvent.CONNECT_STARTED, at=at, user_id=user_id))
    audit = AuditLog(database)
    everything = (await audit.list_for_user(user_id)).events
    assert len(everything) == 5
    walked, before = [], None
    while True:
        page = await audit.list_for_user(user_id, 2, before)
        walked += page.events
        if page.next is None:
            break
        before = page.next
    assert [row.id for row in walked] == [row.id for row in everything]
    assert len({row.id for row in walked}) == 5


async def test_details_and_addresses_fit_their_columns(database: Database) -> None:
    user_id = await _user(database)
    audit = AuditLog(database)
    await audit.record(
        AuditEvent.RATE_LIMIT_EXCEEDED,
        user_id=user_id,
        client_address="a" * 100,
        detail="line one\nline\ttwo\x00 " + "x" * 1000,
    )
    await audit.rate_limit_exceeded(user_id=None, client_address="192.0.2.7", limit="30/minute")
    rows = await audit.list_all()
    assert len(rows) == 2
    mine = next(row for row in rows if row.user_id == user_id)
    assert mine.detail is not None and len(mine.detail) == DETAIL_MAX_LENGTH
    assert mine.detail.startswith("line one line two x") and mine.detail.endswith("…")
    assert mine.client_address is not None and len(mine.client_address) == 64
    anonymous = next(row for row in rows if row.user_id is None)
    assert (anonymous.actor, anonymous.outcome, anonymous.detail) == (
        "unknown",
        "refused",
        "limit 30/minute",
    )
    assert [row.id for row in await audit.list_all(since=datetime.now(UTC))] == []


def test_microsoft_errors_become_codes() -> None:
    assert microsoft_error("access_denied", "AADSTS65004: User declined.") == (
        "access_denied AADSTS65004"
    )
    assert microsoft_error("invalid_grant", " AADSTS50173: revoked, user bob@x") == (
        "invalid_grant AADSTS50173"
    )
    assert microsoft_error("<script>", "whatever") == "unrecognized_error"
    assert microsoft_error(None) == "unrecognized_error"
