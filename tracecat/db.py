"""Database engines and sessions.

DATABASE_URL takes the plain forms users know (`sqlite:///path`, `postgresql://...`); the async
drivers are this module's business.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Executable, LargeBinary, MetaData, Row, TypeDecorator, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from tracecat.config import Settings
from tracecat.crypto import Keyring
from tracecat.exceptions import SettingsError
from tracecat.urls import (
    DATABASE_SCHEMES,
    DATABASE_URL_FORMS,
    check_url,
    redact_url,
    url_error_reason,
)

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


# Where a Database leaves its keyring for the encrypted columns: a column type sees only the
# dialect, and each engine has its own, so the keys travel with the Database, never globally.
_KEYRING = "tracecat_keyring"


def _attach_keyring(engine: Engine, keyring: Keyring | None) -> None:
    setattr(engine.dialect, _KEYRING, keyring)


def _keyring_of(dialect: object) -> Keyring:
    keyring: Keyring | None = getattr(dialect, _KEYRING, None)
    if keyring is None:
        raise SettingsError(
            "TRACECAT_ENCRYPTION_KEYS: this database was opened without encryption keys "
            "(use Database.from_settings or pass keyring=)"
        )
    return keyring


class EncryptedText(TypeDecorator[str]):
    """Plaintext in Python, a Fernet token on disk, with the keyring of the Database."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: object) -> bytes | None:
        return None if value is None else _keyring_of(dialect).encrypt(value)

    def process_result_value(self, value: bytes | None, dialect: object) -> str | None:
        return None if value is None else _keyring_of(dialect).decrypt(bytes(value))


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def async_url(url: str) -> URL:
    """The URL with its async driver; every engine is made from one, so no driver ever sees
    a URL whose password it could misread (see config.check_url)."""
    try:
        check_url(url, DATABASE_SCHEMES, DATABASE_URL_FORMS)
    except ValueError as exc:
        raise SettingsError(f"DATABASE_URL: {exc}") from None
    try:
        parsed = make_url(url.strip())
    except Exception:  # whatever it is, its text may quote the URL
        raise SettingsError(f"DATABASE_URL: cannot parse it: use {DATABASE_URL_FORMS}") from None
    backend = parsed.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    return parsed.set(drivername=_ASYNC_DRIVERS[backend])


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    parsed = async_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(parsed, pool_size=pool_size, max_overflow=pool_size)


def _sqlite_begin(connection: Connection) -> None:
    # pysqlite's own transaction handling is off (see _sqlite_pragmas), so SQLAlchemy emits
    # BEGIN itself. IMMEDIATE takes the write lock up front: it is SQLite's stand-in for a row
    # lock, and a deferred transaction that reads then writes fails at once (SQLITE_BUSY) when
    # another writer committed in between. Hot reads do not come here (see Database.fetch_all).
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_reader(engine: AsyncEngine) -> Engine:
    """A synchronous twin of an SQLite engine, for the one-row reads of the hot paths."""
    reader = create_sync_engine(
        engine.url.set(drivername="sqlite"), connect_args={"check_same_thread": False}
    )
    event.listen(reader, "connect", _sqlite_pragmas)
    # It runs in the event loop: never wait long for a lock there (WAL readers rarely do).
    event.listen(reader, "connect", lambda dbapi, _: dbapi.execute("PRAGMA busy_timeout=2000"))
    return reader


class Database:
    """One engine and session factory per process (or per app under test)."""

    def __init__(self, url: str, pool_size: int = 10, keyring: Keyring | None = None) -> None:
        """`keyring` encrypts and decrypts the EncryptedText columns; without one, reading or
        writing such a column is an error (the rest works)."""
        self.url = url
        self.keyring = keyring
        self.engine = create_engine(url, pool_size)
        _attach_keyring(self.engine.sync_engine, keyring)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite's hot reads skip aiosqlite's thread hops: see fetch_all.
        self._sqlite_reader = _sqlite_reader(self.engine) if is_sqlite(self.engine) else None
        if self._sqlite_reader is not None:
            _attach_keyring(self._sqlite_reader, keyring)
        # SQLite: this process's transactions take turns here, in arrival order (see session).
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._has_turn: ContextVar[bool] = ContextVar(f"tracecat-db-turn-{id(self)}", default=False)

    async def fetch_all(
        self, query: Executable, params: dict[str, Any] | None = None
    ) -> Sequence[Row[Any]]:
        """Run one read-only statement with no BEGIN/ROLLBACK around it (one statement is
        consistent on its own); the API-key check and status go through here on every request.

        On SQLite the statement runs right in the event loop: an indexed read of a row takes
        microseconds, far less than aiosqlite's several thread hops, and in WAL mode readers
        never wait for writers. Pass a statement built once, with bind parameters: building one
        costs more than running it.
        """
        if self._sqlite_reader is not None:
            with self._sqlite_reader.connect() as connection:
                return connection.execute(query, params).all()
        async with self.engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            return (await connection.execute(query, params)).all()

    @classmethod
    def from_settings(cls, settings: Settings, keyring: Keyring | None = None) -> Database:
        return cls(
            settings.database_url_or_default,
            settings.tracecat_database_pool_size,
            keyring or Keyring.from_settings(settings),
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session; on SQLite it waits for this process's turn first.

        Every SQLite transaction takes the database's one write lock at BEGIN. Left to
        SQLite, waiters poll for it with sleeps of up to 100 ms, and a burst (Microsoft
        posting 200 notifications a second) queues for seconds. Taking turns here first,
        first come first served, hands the lock straight on; other processes on the same
        file still meet SQLite's wait. A task already in a session does not queue again
        (a nested session must not wait for its own parent).
        """
        if self._sqlite_reader is None or self._has_turn.get():
            async with self.sessionmaker() as session:
                yield session
            return
        loop = asyncio.get_running_loop()
        turn = self._turns.setdefault(loop, asyncio.Lock())
        async with turn:
            token = self._has_turn.set(True)
            try:
                async with self.sessionmaker() as session:
                    yield session
            finally:
                self._has_turn.reset(token)

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._sqlite_reader is not None:
            self._sqlite_reader.dispose()


def upgrade_schema(url: str) -> None:
    """Alembic `upgrade head`; safe to call on every start.

    Raises SettingsError (one line, URL redacted) when the database cannot be opened or
    migrated.
    """
    from alembic import command
    from alembic.config import Config

    asyncio.run(check_connection(url))
    config = Config()
    config.set_main_option("script_location", "tracecat:migrations")
    config.attributes["database_url"] = url
    try:
        command.upgrade(config, "head")
    except (SQLAlchemyError, OSError) as exc:
        raise SettingsError(
            f"DATABASE_URL: cannot upgrade the schema of {redact_url(url)}: "
            f"{url_error_reason(exc, url)}"
        ) from None


async def check_connection(url: str) -> None:
    """Open one connection, so that a wrong DATABASE_URL is reported as such, in one line.

    Any exception counts: a stray query parameter makes asyncpg raise TypeError, a bad host
    OSError, a refused login an SQLAlchemy error; all of them are about the URL.
    """
    engine: AsyncEngine | None = None
    try:
        engine = create_engine(url, pool_size=1)  # makes an SQLite file's directory: OSError
        # Connecting is enough (it logs in); a statement would take SQLite's write lock.
        async with engine.connect():
            pass
    except SettingsError:
        raise
    except Exception as exc:  # reported below, in one line
        raise SettingsError(
            f"DATABASE_URL: cannot open {redact_url(url)}: {url_error_reason(exc, url)}"
        ) from None
    finally:
        if engine is not None:
            await engine.dispose()


async def reencrypt_all(engine: AsyncEngine, keyring: Keyring) -> int:
    """Re-encrypt every EncryptedText value under the keyring's first key, in one transaction.

    Works on the raw ciphertext, table by table, so it needs no knowledge of the models.
    """
    from sqlalchemy import LargeBinary as Raw
    from sqlalchemy import column, select, table, update

    count = 0
    async with engine.begin() as connection:
        for model_table in Base.metadata.sorted_tables:
            encrypted = [c.name for c in model_table.columns if isinstance(c.type, EncryptedText)]
            if not encrypted:
                continue
            keys = [c.name for c in model_table.primary_key.columns]
            raw = table(
                model_table.name, *(column(n, Raw) for n in encrypted), *(column(k) for k in keys)
            )
            rows = (await connection.execute(select(raw))).mappings().all()
            for row in rows:
                values = {n: keyring.rotate(bytes(row[n])) for n in encrypted if row[n] is not None}
                if values:
                    where = [raw.c[k] == row[k] for k in keys]
                    await connection.execute(update(raw).where(*where).values(**values))
                    count += len(values)
    return count
