"""Fixtures for the notifications tests: a schema-upgraded database with its keyring (both
databases), subscriptions as rows, and a real local webhook receiver (plain or TLS)."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import ENCRYPTION_KEY, Api, truncate_all
from tracecat.auth.models import User
from tracecat.crypto import Keyring
from tracecat.db import Database
from tracecat.notifications import outbox
from tracecat.notifications.models import NotificationSubscription
from tracecat.notifications.signing import new_secret


def open_database(database_url: str) -> Database:
    return Database(database_url, keyring=Keyring([ENCRYPTION_KEY]))


@pytest.fixture
async def database(upgraded_url: str) -> AsyncIterator[Database]:
    """An outbox no app's worker touches: what the tests enqueue stays theirs."""
    database_url = upgraded_url
    db = open_database(database_url)
    yield db
    await db.dispose()
    await asyncio.to_thread(truncate_all, database_url)


@pytest.fixture
async def app_database(api: Api) -> AsyncIterator[Database]:
    """The live test app's own database (the `api` fixture empties it after each test)."""
    db = open_database(api.database_url)
    yield db
    await db.dispose()


async def make_subscription(
    database: Database, target_url: str, user_id: uuid.UUID | None = None, **columns: object
) -> NotificationSubscription:
    """An active subscription to one channel, of `user_id` or of a new user."""
    async with database.session() as session, session.begin():
        if user_id is None:
            user = User(email=f"{uuid.uuid4().hex[:8]}@example.com")
            session.add(user)
            await session.flush()
            user_id = user.id
        values: dict[str, object] = {
            "team_id": "team-1",
            "channel_id": "19:channel@thread.tacv2",
            "client_state": "client-state",
            "secret": new_secret(),
            **columns,
        }
        subscription = NotificationSubscription(user_id=user_id, target_url=target_url, **values)
        session.add(subscription)
    return subscription


def chat_message(message_id: str = "1700000000001", text: str = "hello") -> dict[str, object]:
    return {
        "id": message_id,
        "messageType": "message",
        "createdDateTime": "2026-12-01T10:00:00Z",
        "body": {"contentType": "text", "content": text},
    }


async def enqueue(
    database: Database,
    subscription: NotificationSubscription,
    message: dict[str, object],
    now: datetime | None = None,
) -> bool:
    async with database.session() as session, session.begin():
        return await outbox.enqueue(session, subscription, message, now=now or datetime.now(UTC))


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1 that records each request and answers the next status
    of `statuses` (200 once they run out), after `delay` seconds."""

    url: str
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0


def _serve(tls: ssl.SSLContext | None) -> Iterator[Receiver]:
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
            if receiver.delay:
                time.sleep(receiver.delay)
            status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls else "http"
    receiver.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve(None)


@dataclass
class TlsReceiver:
    receiver: Receiver
    ca_file: Path


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[TlsReceiver]:
    """HTTPS with the emulator's CA: its certificate names `localhost`, 127.0.0.1 and ::1."""
    from tracecat.emulator.certs import ensure_certificates

    paths = ensure_certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths.cert, paths.key)
    for receiver in _serve(context):
        yield TlsReceiver(receiver, paths.ca_cert)
