"""Letting time pass for a running app and the emulator without waiting for it.

Two clocks judge a Microsoft token: the emulator's (Graph refuses an expired token) and the
app's, which compares the expiry it stored with the real time. The emulator's moves through
its control API; the app's cannot be moved in a live server, so the stored times move back
instead, which to the app is the same as that much time having passed.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from tracecat.auth.integrations.models import UserIntegration
from tracecat.db import Database

if TYPE_CHECKING:
    from tests.conftest import Api


async def _age_grants(database_url: str, seconds: float) -> None:
    shift = timedelta(seconds=seconds)
    database = Database(database_url)  # no keyring needed: no token is read or written
    try:
        async with database.session() as session:
            columns = (UserIntegration.id, UserIntegration.expires_at)
            rows = (
                await session.execute(select(*columns, UserIntegration.last_refreshed_at))
            ).all()
            for row_id, expires_at, last_refreshed_at in rows:
                values = {
                    "expires_at": expires_at and expires_at - shift,
                    "last_refreshed_at": last_refreshed_at and last_refreshed_at - shift,
                }
                await session.execute(
                    update(UserIntegration).where(UserIntegration.id == row_id).values(**values)
                )
            await session.commit()
    finally:
        await database.dispose()


def let_time_pass(api: Api, seconds: float) -> None:
    """`seconds` pass for the emulator and for every app on `api`'s database.

    A running app may keep serving what it read shortly before (TRACECAT_CACHE_SECONDS):
    call this when it has nothing cached about the user, e.g. right after a connect or a
    refresh attempt, which drop the user's cached reads.
    """
    api.control("POST", "/clock", json={"advance_seconds": seconds})
    asyncio.run(_age_grants(api.database_url, seconds))
