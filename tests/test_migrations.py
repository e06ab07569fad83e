"""The migrations and the models agree: after `upgrade head`, autogenerate finds nothing to do,
on SQLite and on PostgreSQL alike. A model change without its migration fails here."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

import tracecat.audit.models  # noqa: F401  (registers the tables)
import tracecat.auth.integrations.models  # noqa: F401
import tracecat.auth.models  # noqa: F401
import tracecat.notifications.models  # noqa: F401
import tracecat.web.models  # noqa: F401
from tracecat.db import Base, Database, upgrade_schema


def _pending(database_url: str) -> list[Any]:
    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async def run() -> list[Any]:
        database = Database(database_url)
        try:
            async with database.engine.connect() as connection:
                return await connection.run_sync(compare)
        finally:
            await database.dispose()

    return asyncio.run(run())


def test_migrations_match_the_models(database_url: str) -> None:
    upgrade_schema(database_url)
    assert _pending(database_url) == []
