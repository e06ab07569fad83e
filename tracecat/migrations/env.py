"""Alembic environment: runs the package's migrations on the async engine of DATABASE_URL."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from tracecat.audit import models as _audit_models  # noqa: F401  (registers tables)
from tracecat.auth import models as _auth_models  # noqa: F401
from tracecat.auth.integrations import models as _integration_models  # noqa: F401
from tracecat.config import get_settings
from tracecat.db import Base, create_engine
from tracecat.notifications import models as _notification_models  # noqa: F401
from tracecat.web import models as _web_models  # noqa: F401

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    url = context.config.attributes.get("database_url") or get_settings().database_url_or_default
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_main())
