"""Users and their API keys."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, selectinload

from tracecat.audit.models import AuditActor, AuditEvent
from tracecat.audit.service import new_record
from tracecat.auth.models import ApiKey, User
from tracecat.cache import NO_CACHE, ReadCache
from tracecat.crypto import hash_secret, new_api_key
from tracecat.db import Database
from tracecat.exceptions import AuthenticationError, BadRequestError, ConflictError, NotFoundError


@dataclass(frozen=True)
class IssuedKey:
    """A user with a key in plaintext: shown once, never stored."""

    user: User
    api_key: str

    def as_json(self) -> dict[str, str]:
        return {"id": str(self.user.id), "email": self.user.email, "api_key": self.api_key}

    @property
    def prefix(self) -> str:
        """What `users list` shows of the key (its stored `prefix`), never the key."""
        return self.api_key[:8]


@dataclass(frozen=True)
class Principal:
    """The user an API key belongs to: all a request needs to know about its caller."""

    id: uuid.UUID
    email: str
    key_id: uuid.UUID | None = None  # the API key used (rate limits count per key)


_AUTHENTICATE = (
    select(User.id, User.email, ApiKey.id.label("key_id"))
    .join(ApiKey)
    .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
)


async def authenticate(database: Database, api_key: str, cache: ReadCache = NO_CACHE) -> Principal:
    """One indexed lookup of the key's hash, remembered for the cache's TTL (so a key
    revoked by the CLI stops working within TTL seconds). Failures are never cached."""
    key_hash = hash_secret(api_key)
    principal: Principal | None = cache.get("api_key", key_hash)
    if principal is None:
        rows = await database.fetch_all(_AUTHENTICATE, {"key_hash": key_hash})
        if not rows:
            raise AuthenticationError("invalid or revoked API key")
        principal = Principal(id=rows[0].id, email=rows[0].email, key_id=rows[0].key_id)
        cache.put("api_key", key_hash, principal)
    return principal


def column_length(attribute: InstrumentedAttribute[Any]) -> int | None:
    """The declared length of a model's string column (None if unbounded), so input is
    checked against the schema itself: SQLite ignores lengths, PostgreSQL raises DataError."""
    return getattr(attribute.property.columns[0].type, "length", None)


# RFC 5321: an address in a mail path is at most 254 characters, its local part 64, a domain
# label 63. The column may be wider; the tighter limit wins.
EMAIL_MAX_LENGTH = min(254, column_length(User.email) or 254)
_LOCAL_PART_MAX_LENGTH = 64
# Characters a dot-atom local part may not hold (RFC 5322 specials; non-ASCII is RFC 6531).
_LOCAL_PART = re.compile(r"[^\s\"(),:;<>@\[\\\]]+")
# A domain label: letters or digits (any script, for IDNs), inner hyphens, at most 63.
_LABEL = re.compile(r"[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?")


def normalize_email(email: str) -> str:
    """The address in lower case, or BadRequestError saying what is wrong with it (in one
    line: an overlong input is not quoted back)."""
    email = email.strip().lower()
    if len(email) > EMAIL_MAX_LENGTH:
        raise BadRequestError(
            f"email address is {len(email)} characters long: at most {EMAIL_MAX_LENGTH} allowed"
        )
    local, _, domain = email.rpartition("@")
    labels = domain.split(".")
    if (
        not all(c.isprintable() for c in email)
        or len(local) > _LOCAL_PART_MAX_LENGTH
        or not _LOCAL_PART.fullmatch(local)
        or local.startswith(".")
        or local.endswith(".")
        or ".." in local
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise BadRequestError(f"not an email address: {email!r}")
    return email


class UserService:
    """Every change of a user's keys is in the audit log, in the same transaction; `actor`
    says who made it (the command line today)."""

    def __init__(self, session: AsyncSession, *, actor: AuditActor = AuditActor.CLI) -> None:
        self.session = session
        self.actor = actor

    async def create_user(self, email: str) -> IssuedKey:
        user = User(email=normalize_email(email))
        self.session.add(user)
        try:
            await self.session.flush()
        except IntegrityError:
            await self.session.rollback()
            raise ConflictError(f"a user with email {user.email} already exists") from None
        issued = await self._issue_key(user)
        self._audit(AuditEvent.API_KEY_CREATED, user, f"key {issued.prefix}…")
        await self.session.commit()
        return issued

    async def list_users(self) -> list[User]:
        result = await self.session.scalars(
            select(User).options(selectinload(User.api_keys)).order_by(User.created_at)
        )
        return list(result)

    async def get_by_email(self, email: str) -> User:
        # Only case-folded, not validated: a user stored under older, looser rules must stay
        # reachable (to rotate or delete), and a lookup cannot overflow a column.
        email = email.strip().lower()
        user = await self.session.scalar(select(User).where(User.email == email))
        if user is None:
            raise NotFoundError(f"no user with email {email}")
        return user

    async def rotate_key(self, email: str) -> IssuedKey:
        """Revoke every key of the user and issue one new key."""
        user = await self.get_by_email(email)
        count = await self._revoke_keys(user)
        issued = await self._issue_key(user)
        detail = f"{count} key(s) revoked, new key {issued.prefix}…"
        self._audit(AuditEvent.API_KEY_ROTATED, user, detail)
        await self.session.commit()
        return issued

    async def revoke_keys(self, email: str) -> int:
        user = await self.get_by_email(email)
        count = await self._revoke_keys(user)
        if count:
            self._audit(AuditEvent.API_KEY_REVOKED, user, f"{count} key(s) revoked")
        await self.session.commit()
        return count

    async def delete_user(self, email: str) -> None:
        user = await self.get_by_email(email)
        await self.session.delete(user)
        await self.session.commit()

    def _audit(self, event: AuditEvent, user: User, detail: str) -> None:
        self.session.add(
            new_record(
                event, at=datetime.now(UTC), user_id=user.id, actor=self.actor, detail=detail
            )
        )

    async def _issue_key(self, user: User) -> IssuedKey:
        api_key = new_api_key()
        issued = IssuedKey(user=user, api_key=api_key)
        self.session.add(
            ApiKey(user_id=user.id, key_hash=hash_secret(api_key), prefix=issued.prefix)
        )
        await self.session.flush()
        return issued

    async def _revoke_keys(self, user: User) -> int:
        # An UPDATE answers with a cursor result, which carries the row count.
        result = cast(
            CursorResult[Any],
            await self.session.execute(
                update(ApiKey)
                .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            ),
        )
        return result.rowcount or 0
