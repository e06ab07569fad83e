"""Shared fixtures: a real emulator, real databases (SQLite and PostgreSQL), a real app server.

Every test that touches storage runs once per database (`backend` parameter). Tables are
emptied after each test, so each starts on a clean database.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.utils.flows import ApiUser, create_user
from tests.utils.server import CONTROL_HEADERS, LiveServer, free_port
from tests.utils.time_travel import MovableClock
from tracecat.app import create_app
from tracecat.clock import Clock
from tracecat.config import Settings
from tracecat.crypto import generate_key
from tracecat.db import Base, Database, upgrade_schema
from tracecat.emulator.server import EmulatorServer

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
ENCRYPTION_KEY = generate_key()


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    server = EmulatorServer(tmp_path_factory.mktemp("emulator"))
    server.start()
    yield server
    server.stop()


def _run(statement: str, url: str) -> None:
    async def execute() -> None:
        database = Database(url)
        try:
            if url.startswith("postgresql"):  # CREATE DATABASE cannot run in a transaction
                async with database.engine.connect() as connection:
                    connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                    await connection.execute(text(statement))
            else:
                async with database.engine.begin() as connection:
                    await connection.execute(text(statement))
        finally:
            await database.dispose()

    asyncio.run(execute())


@contextmanager
def new_database(kind: str, tmp_path_factory: pytest.TempPathFactory, prefix: str) -> Iterator[str]:
    """An empty database of `kind` (a SQLite file or a PostgreSQL database), dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp(prefix) / 'tracecat.db'}"
        return
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _run(f'CREATE DATABASE "{name}"', POSTGRES_ADMIN_URL)
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    _run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', POSTGRES_ADMIN_URL)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with new_database(request.param, tmp_path_factory, "tracecat_test") as url:
        yield url


@pytest.fixture(scope="session")
def upgraded_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of the same kind as `database_url` but of its own, schema in place: the
    session's test app runs a delivery worker on `database_url`, which would claim the
    deliveries of a test that runs its own `serve` process or worker."""
    kind = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    with new_database(kind, tmp_path_factory, "tracecat_own") as url:
        upgrade_schema(url)
        yield url


def make_settings(
    emulator: EmulatorServer, database_url: str, data_dir: Path, port: int, **extra: object
) -> Settings:
    values: dict[str, object] = {
        "microsoft_client_id": emulator.client_id,
        "microsoft_client_secret": emulator.client_secret,
        "microsoft_authority_host": emulator.authority_host,
        "microsoft_graph_url": emulator.graph_url,
        "microsoft_ca_bundle": emulator.ca_bundle,
        "microsoft_redirect_uri": f"http://127.0.0.1:{port}/auth/integrations/microsoft/callback",
        "database_url": database_url,
        "tracecat_data_dir": data_dir,
        "tracecat_encryption_keys": [ENCRYPTION_KEY],
        "tracecat_refresh_interval_seconds": 0,  # no token sweep or subscription renewal
        # Every test calls from 127.0.0.1 into one session-long app: the limits are tested
        # on apps of their own (tests/test_rate_limits.py).
        "tracecat_rate_limit": "1000000/minute",
        "tracecat_auth_failure_limit": "1000000/minute",
        # No periodic catch-up either: tests run these passes themselves, when they mean to.
        "tracecat_resync_interval_seconds": 0,
        # Webhook targets in the tests are local receivers, as with `serve --emulator`.
        "tracecat_webhook_allowed_networks": ["127.0.0.0/8"],
    }
    values.update(extra)
    return Settings(**values)


@dataclass
class Api:
    """A running app on one database, with the emulator it talks to and the app's clock
    (moved by `let_time_pass`; the refresher's retry pauses are recorded in `clock.pauses`
    instead of waited out)."""

    url: str
    database_url: str
    settings: Settings
    emulator: EmulatorServer
    clock: MovableClock

    def user(self, email: str) -> ApiUser:
        return create_user(self.database_url, email)

    def browser(self) -> httpx.Client:
        """A fresh browser: its own cookie jar."""
        return httpx.Client(base_url=self.url, timeout=30)

    def control(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """The emulator's control API (faults, config, stats)."""
        url = f"{self.emulator.http_url}/_emulator{path}"
        response = httpx.request(method, url, headers=CONTROL_HEADERS, **kwargs)  # type: ignore[arg-type]
        response.raise_for_status()
        return response

    def refresh_outcomes(self) -> dict[str, int]:
        """Refresh-token requests the emulator answered, by outcome."""
        stats = self.control("GET", "/stats").json()
        return stats["token_requests"].get("refresh_token", {})

    def refreshes(self) -> int:
        return sum(self.refresh_outcomes().values())

    def serve_environment(self, database_url: str | None = None) -> dict[str, str]:
        """The environment of a `serve` process on this emulator, keyring and data dir, on
        this database unless given another; no token sweep."""
        return {
            "MICROSOFT_CLIENT_ID": self.emulator.client_id,
            "MICROSOFT_CLIENT_SECRET": self.emulator.client_secret,
            "MICROSOFT_AUTHORITY_HOST": self.emulator.authority_host,
            "MICROSOFT_GRAPH_URL": self.emulator.graph_url,
            "MICROSOFT_CA_BUNDLE": str(self.emulator.ca_bundle),
            "DATABASE_URL": database_url or self.database_url,
            "TRACECAT_DATA_DIR": str(self.settings.tracecat_data_dir),
            "TRACECAT_ENCRYPTION_KEYS": ENCRYPTION_KEY,
            "TRACECAT_REFRESH_INTERVAL_SECONDS": "0",
            # Tests poll and guess from 127.0.0.1: limits are tested on their own.
            "TRACECAT_RATE_LIMIT": "1000000/minute",
            "TRACECAT_AUTH_FAILURE_LIMIT": "1000000/minute",
        }

    @contextmanager
    def another_server(
        self, *, clock: Clock | None = None, public_url_is_self: bool = False, **settings: object
    ) -> Iterator[str]:
        """A second app on the same database and emulator, with some settings changed; on
        the same clock unless given another. `public_url_is_self`: TRACECAT_PUBLIC_URL is the
        server's own URL, so the emulator's notifications reach it."""
        port = free_port()
        if public_url_is_self:
            settings["tracecat_public_url"] = f"http://127.0.0.1:{port}"
        data_dir = self.settings.tracecat_data_dir
        changed = make_settings(self.emulator, self.database_url, data_dir, port, **settings)
        app = create_app(changed, clock=clock or self.clock)
        server = LiveServer(app, port=port).start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture(scope="session")
def api_server(
    emulator: EmulatorServer, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    upgrade_schema(database_url)
    port = free_port()
    settings = make_settings(emulator, database_url, tmp_path_factory.mktemp("data"), port)
    clock = MovableClock()
    server = LiveServer(create_app(settings, clock=clock), port=port).start()
    yield Api(server.url, database_url, settings, emulator, clock)
    server.stop()


def truncate_all(database_url: str) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    if database_url.startswith("postgresql"):
        _run(f"TRUNCATE {', '.join(tables)} CASCADE", database_url)
    else:
        for table in tables:
            _run(f"DELETE FROM {table}", database_url)


@pytest.fixture
def api(api_server: Api) -> Iterator[Api]:
    yield api_server
    truncate_all(api_server.database_url)
    api_server.control("POST", "/reset")  # the emulator's clock included
    api_server.clock.reset()
