"""What `/readyz` checks (`health.py`): the database, and Redis when REDIS_URL is set, each
within a few seconds; what fails is named by its kind of error, never its message."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import text

from tracecat.config import Settings
from tracecat.db import Database

CHECK_TIMEOUT = 2.0  # an orchestrator's probe gives up after a few seconds itself


class Readiness:
    """The checks behind `/readyz`, with the Redis client they use (closed with the app)."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.database = database
        self._redis = aioredis.Redis.from_url(settings.redis_url) if settings.redis_url else None

    async def problems(self) -> dict[str, str]:
        """What does not answer, and how: empty when ready."""
        checks: dict[str, Awaitable[Any]] = {"database": self._database()}
        if self._redis is not None:
            checks["redis"] = self._redis.ping()
        found = {}
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check, CHECK_TIMEOUT)
            except TimeoutError:
                found[name] = f"no answer within {CHECK_TIMEOUT:g} s"
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
                # The type only: messages of drivers can quote a URL with its password.
                found[name] = f"unreachable ({type(exc).__name__})"
        return found

    async def _database(self) -> None:
        async with self.database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
