"""AuditLog: recording security events, reading them back a page at a time, pruning them.

An event that goes with a change of state is added to the session making the change
(`add`), so both commit or neither does: there is no "connected" without its event, nor the
reverse. An event about something refused (a forged state, a forged notification, a rate
limit) has no transaction to join and is written on its own (`record`); that write never
raises, so a database failure cannot turn the refusal's own answer into another one.

Usage::

    audit = AuditLog(database, clock, retention_days=90)
    async with database.session() as session:
        ...                                          # the change
        audit.add(session, AuditEvent.CONNECT_STARTED, user_id=user_id, client_address=ip)
        await session.commit()
    page = await audit.list_for_user(user_id, limit=100, before=None)
    page.next                                        # pass back as `before` for older ones
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, delete, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from tracecat.audit.models import (
    ADDRESS_MAX_LENGTH,
    DETAIL_MAX_LENGTH,
    AuditActor,
    AuditEvent,
    AuditOutcome,
    AuditRecord,
)
from tracecat.auth.models import User
from tracecat.clock import SYSTEM_CLOCK, Clock
from tracecat.db import Database
from tracecat.exceptions import TracecatError

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
_CURSOR_MAX_LENGTH = 200
# Microsoft's OAuth error codes are lower-case words (`access_denied`, `invalid_grant`); its
# descriptions may name the tenant or user, so only the AADSTS number is taken from them.
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_AADSTS = re.compile(r"\bAADSTS\d{1,9}\b")


class InvalidCursorError(TracecatError):
    """`before` is not a cursor this service handed out: 422 like any invalid parameter."""

    status_code = 422

    def __init__(self) -> None:
        super().__init__("`before` is not a cursor from a previous page's `next`: leave it out")


def microsoft_error(error: str | None, description: str | None = None) -> str:
    """Microsoft's error as a code fit for the log, e.g. `invalid_grant AADSTS50173`."""
    code = error.strip() if error else ""
    code = code if _ERROR_CODE.fullmatch(code) else "unrecognized_error"
    aadsts = _AADSTS.search(description or "")
    return f"{code} {aadsts.group()}" if aadsts else code


def _bounded(text: str | None, limit: int) -> str | None:
    """One line of at most `limit` characters (a client address or detail may come from
    outside: no control characters, no unbounded length)."""
    if text is None:
        return None
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def new_record(
    event: AuditEvent,
    *,
    at: datetime,
    user_id: uuid.UUID | None,
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
    actor: AuditActor = AuditActor.USER,
    client_address: str | None = None,
    detail: str | None = None,
) -> AuditRecord:
    """The row of one event. Its `subject` is the user's email, read by the INSERT itself
    (no extra round trip), so it outlives the user whose `user_id` becomes NULL."""
    subject: Any = None
    if user_id is not None:
        subject = select(User.email).where(User.id == user_id).scalar_subquery()
    return AuditRecord(
        id=uuid.uuid4(),
        occurred_at=at,
        user_id=user_id,
        subject=subject,
        event=event,
        outcome=outcome,
        actor=actor,
        client_address=_bounded(client_address, ADDRESS_MAX_LENGTH),
        detail=_bounded(detail, DETAIL_MAX_LENGTH),
    )


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditRecord]
    next: str | None  # the cursor of the next (older) page; None on the last one


def encode_cursor(row: AuditRecord) -> str:
    raw = f"{row.occurred_at.isoformat()}|{row.id.hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if len(cursor) > _CURSOR_MAX_LENGTH:
        raise InvalidCursorError
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, key = raw.partition("|")
        occurred_at, row_id = datetime.fromisoformat(at), uuid.UUID(hex=key)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursorError from None
    if occurred_at.tzinfo is None:
        raise InvalidCursorError
    return occurred_at, row_id


_NEWEST_FIRST = (AuditRecord.occurred_at.desc(), AuditRecord.id.desc())


async def list_all(
    session: AsyncSession, user_id: uuid.UUID | None = None, since: datetime | None = None
) -> list[AuditRecord]:
    """`AuditLog.list_all` in a session of the caller's (the command line has one)."""
    query = select(AuditRecord)
    if user_id is not None:
        query = query.where(AuditRecord.user_id == user_id)
    if since is not None:
        query = query.where(AuditRecord.occurred_at >= since)
    return list(await session.scalars(query.order_by(*_NEWEST_FIRST)))


class AuditLog:
    def __init__(
        self, database: Database, clock: Clock = SYSTEM_CLOCK, *, retention_days: int = 90
    ) -> None:
        self.database = database
        self.clock = clock
        self.retention = timedelta(days=retention_days)

    # --- recording ------------------------------------------------------------------------

    def add(
        self,
        session: AsyncSession,
        event: AuditEvent,
        *,
        user_id: uuid.UUID | None,
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
        actor: AuditActor = AuditActor.USER,
        client_address: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Add the event to `session`: it commits with the caller's change, or not at all."""
        session.add(
            new_record(
                event,
                at=self.clock.now(),
                user_id=user_id,
                outcome=outcome,
                actor=actor,
                client_address=client_address,
                detail=detail,
            )
        )

    async def record(
        self,
        event: AuditEvent,
        *,
        user_id: uuid.UUID | None,
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
        actor: AuditActor = AuditActor.USER,
        client_address: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Write the event in a transaction of its own. Never raises: a failure is logged
        (without the detail) and the caller's answer stays what it was going to be."""
        try:
            async with self.database.session() as session, session.begin():
                self.add(
                    session,
                    event,
                    user_id=user_id,
                    outcome=outcome,
                    actor=actor,
                    client_address=client_address,
                    detail=detail,
                )
        except (SQLAlchemyError, OSError) as exc:
            logger.error("Audit event %s not recorded: %s", event, type(exc).__name__)

    async def rate_limit_exceeded(
        self, *, user_id: uuid.UUID | None, client_address: str | None, limit: str
    ) -> None:
        """For the rate limiter, once per key or address per window (not per 429)."""
        await self.record(
            AuditEvent.RATE_LIMIT_EXCEEDED,
            user_id=user_id,
            outcome=AuditOutcome.REFUSED,
            actor=AuditActor.USER if user_id else AuditActor.UNKNOWN,
            client_address=client_address,
            detail=f"limit {limit}",
        )

    # --- reading --------------------------------------------------------------------------

    async def list_for_user(
        self, user_id: uuid.UUID, limit: int = DEFAULT_LIMIT, before: str | None = None
    ) -> AuditPage:
        """The user's events newest first, `limit` at a time; `before` is the `next` of the
        previous page. Keyset, not offset: events recorded meanwhile shift nothing."""
        limit = min(max(limit, 1), MAX_LIMIT)
        query = select(AuditRecord).where(AuditRecord.user_id == user_id)
        if before is not None:
            at, row_id = decode_cursor(before)
            query = query.where(
                or_(
                    AuditRecord.occurred_at < at,
                    and_(AuditRecord.occurred_at == at, AuditRecord.id < row_id),
                )
            )
        async with self.database.session() as session:
            rows = list(await session.scalars(query.order_by(*_NEWEST_FIRST).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return AuditPage(rows, encode_cursor(rows[-1]) if more else None)

    async def list_all(
        self, user_id: uuid.UUID | None = None, since: datetime | None = None
    ) -> list[AuditRecord]:
        """Every event (of one user), at or after `since`, newest first: for operators."""
        async with self.database.session() as session:
            return await list_all(session, user_id, since)

    # --- pruning --------------------------------------------------------------------------

    async def prune(self, now: datetime | None = None) -> int:
        """Delete the events older than the retention (by the app's clock unless `now` is
        given); returns how many went."""
        horizon = (now or self.clock.now()) - self.retention
        async with self.database.session() as session, session.begin():
            result = cast(
                CursorResult[Any],
                await session.execute(delete(AuditRecord).where(AuditRecord.occurred_at < horizon)),
            )
        if result.rowcount:
            logger.info("Pruned %s audit event(s) older than %s", result.rowcount, horizon)
        return result.rowcount or 0
