"""The subscription routes, through HTTP against a live app and the emulator (both databases):
create (and what is refused before anything is made on Graph), read, isolation between
users, delete, secret rotation (both secrets sign for a while), the deliveries log, retry."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import Api
from tests.notifications.conftest import Receiver
from tests.utils.dump import raw_dump
from tests.utils.flows import ApiUser, connect
from tracecat.auth.integrations.service import IntegrationService
from tracecat.clock import SYSTEM_CLOCK
from tracecat.db import Database
from tracecat.logs import quiet_libraries
from tracecat.notifications.models import NotificationSubscription
from tracecat.notifications.service import NotificationService

BASE = "/auth/integrations/microsoft"
SUBS = f"{BASE}/subscriptions"
READ_MESSAGES = ["ChannelMessage.Read.All"]
SUBSCRIPTION_KEYS = {"id", "team_id", "channel_id", "target_url", "status", "expires_at"}
DELIVERY_KEYS = {
    "id",
    "event_type",
    "message_id",
    "status",
    "attempts",
    "last_status_code",
    "last_error",
    "created_at",
    "delivered_at",
    "next_attempt_at",
}


@dataclass
class Session:
    """A connected user of an app whose TRACECAT_PUBLIC_URL is its own address."""

    url: str
    client: httpx.Client
    user: ApiUser
    team: str
    channel: str

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, path, headers=self.user.headers, **kwargs)

    def subscribe(self, target_url: str, **overrides: str) -> httpx.Response:
        body = {"team_id": self.team, "channel_id": self.channel, "target_url": target_url}
        return self.call("POST", SUBS, json={**body, **overrides})


def _connect(client: httpx.Client, url: str, user: ApiUser, ms_email: str) -> tuple[str, str]:
    assert connect(client, url, user, ms_email).status_code == 200
    teams = client.get(f"{BASE}/teams", headers=user.headers).json()
    team = teams[0]["id"]
    channels = client.get(f"{BASE}/teams/{team}/channels", headers=user.headers).json()
    return team, channels[0]["id"]


@contextmanager
def app_session(
    api: Api, email: str = "analyst@example.com", scopes: list[str] | None = None, **settings: Any
) -> Iterator[Session]:
    extra = READ_MESSAGES if scopes is None else scopes
    with (
        api.another_server(
            public_url_is_self=True, microsoft_extra_scopes=extra, **settings
        ) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        user = api.user(email)
        team, channel = _connect(client, url, user, "alice@contoso.example")
        yield Session(url, client, user, team, channel)


def graph_subscriptions(api: Api) -> list[dict[str, Any]]:
    return api.control("GET", "/subscriptions").json()["subscriptions"]


def wait_for(condition: Callable[[], Any], what: str, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def post_from_someone_else(api: Api, session: Session, text: str) -> dict[str, Any]:
    return api.control(
        "POST",
        f"/teams/{session.team}/channels/{session.channel}/messages",
        json={"content": text, "from": "bob@contoso.example"},
    ).json()


# --- creating -------------------------------------------------------------------------------


def test_create_without_the_scope_is_403_and_makes_nothing(api: Api, receiver: Receiver) -> None:
    with app_session(api, scopes=[]) as session:
        response = session.subscribe(receiver.url)
        assert response.status_code == 403
        assert "ChannelMessage.Read.All" in response.json()["detail"]
        assert "MICROSOFT_EXTRA_SCOPES" in response.json()["detail"]
        assert graph_subscriptions(api) == []
        assert session.call("GET", SUBS).json() == []


def test_create_without_a_public_url_names_the_setting(api: Api, receiver: Receiver) -> None:
    user = api.user("nourl@example.com")
    with httpx.Client(base_url=api.url, timeout=30) as client:
        team, channel = _connect(client, api.url, user, "alice@contoso.example")
        body = {"team_id": team, "channel_id": channel, "target_url": receiver.url}
        response = client.post(SUBS, headers=user.headers, json=body)
    assert response.status_code == 503
    assert "TRACECAT_PUBLIC_URL" in response.json()["detail"]
    assert graph_subscriptions(api) == []


def test_refused_targets_are_422_before_graph_is_called(api: Api) -> None:
    with app_session(api) as session:
        for target in (
            "http://10.0.0.7/hook",  # private
            "http://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
            "ftp://127.0.0.1/hook",  # not http(s)
            "http://user:pw@127.0.0.1/hook",  # credentials in the URL
            "https://[::1]/hook",  # loopback outside the allowed 127.0.0.0/8
        ):
            response = session.subscribe(target)
            assert response.status_code == 422, (target, response.text)
            assert "webhook target" in response.json()["detail"]
        assert graph_subscriptions(api) == []
        assert session.call("GET", SUBS).json() == []


def test_bad_bodies_and_ids(api: Api, receiver: Receiver) -> None:
    with app_session(api) as session:
        assert session.call("POST", SUBS, json={"team_id": session.team}).status_code == 422
        unknown_field = {"team_id": "t", "channel_id": "c", "target_url": receiver.url, "x": 1}
        assert session.call("POST", SUBS, json=unknown_field).status_code == 422
        assert session.subscribe(receiver.url, team_id="..").status_code == 400
        assert session.subscribe(receiver.url, channel_id="a'b").status_code == 400
        assert graph_subscriptions(api) == []


def test_create_list_get_and_graph_subscription(api: Api, receiver: Receiver) -> None:
    with app_session(api) as session:
        response = session.subscribe(receiver.url)
        assert response.status_code == 201, response.text
        created = response.json()
        assert set(created) == SUBSCRIPTION_KEYS | {"secret"}
        assert created["status"] == "active"
        assert (created["team_id"], created["channel_id"]) == (session.team, session.channel)
        assert created["target_url"] == receiver.url
        assert created["secret"].startswith("whsec_") and len(created["secret"]) >= 6 + 32
        assert created["expires_at"]

        listed = session.call("GET", SUBS).json()
        assert listed == [{k: v for k, v in created.items() if k != "secret"}]
        one = session.call("GET", f"{SUBS}/{created['id']}")
        assert one.status_code == 200 and one.json() == listed[0]

        (graph,) = graph_subscriptions(api)
        assert graph["notificationUrl"] == f"{session.url}/webhooks/microsoft/notifications"
        assert graph["lifecycleNotificationUrl"] == f"{session.url}/webhooks/microsoft/lifecycle"
        assert graph["resource"] == f"/teams/{session.team}/channels/{session.channel}/messages"
        assert 32 <= len(graph["clientState"]) <= 128


def test_users_see_only_their_own(api: Api, receiver: Receiver) -> None:
    with app_session(api) as session:
        created = session.subscribe(receiver.url).json()
        other = api.user("other@example.com")
        headers = other.headers
        path = f"{SUBS}/{created['id']}"
        assert session.client.get(SUBS, headers=headers).json() == []
        assert session.client.get(path, headers=headers).status_code == 404
        assert session.client.delete(path, headers=headers).status_code == 404
        assert session.client.post(f"{path}/rotate-secret", headers=headers).status_code == 404
        assert session.client.get(f"{path}/deliveries", headers=headers).status_code == 404
        # Unknown and non-UUID ids are the same 404.
        assert session.call("GET", f"{SUBS}/{uuid.uuid4()}").status_code == 404
        assert session.call("GET", f"{SUBS}/not-a-uuid").status_code == 404
        # Without an API key: 401.
        assert session.client.get(SUBS).status_code == 401
        # Still there for its owner, on Graph too.
        assert session.call("GET", path).status_code == 200
        assert len(graph_subscriptions(api)) == 1


def test_delete_removes_the_row_and_the_graph_subscription(api: Api, receiver: Receiver) -> None:
    with app_session(api) as session:
        created = session.subscribe(receiver.url).json()
        assert len(graph_subscriptions(api)) == 1
        response = session.call("DELETE", f"{SUBS}/{created['id']}")
        assert response.status_code == 204, response.text
        assert graph_subscriptions(api) == []
        assert session.call("GET", f"{SUBS}/{created['id']}").status_code == 404
        assert session.call("GET", SUBS).json() == []
        assert session.call("DELETE", f"{SUBS}/{created['id']}").status_code == 404


def test_delete_when_graph_already_dropped_it(api: Api, receiver: Receiver) -> None:
    with app_session(api) as session:
        created = session.subscribe(receiver.url).json()
        (graph,) = graph_subscriptions(api)
        api.control(
            "POST", f"/subscriptions/{graph['id']}/lifecycle", json={"event": "subscriptionRemoved"}
        )
        assert graph_subscriptions(api) == []
        assert session.call("DELETE", f"{SUBS}/{created['id']}").status_code == 204
        assert session.call("GET", SUBS).json() == []


# --- webhooks: rotation, the deliveries log, retry -------------------------------------------


def _headers(received: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in received.headers.items()}


def test_rotated_secret_signs_alongside_the_old_one(api: Api, receiver: Receiver) -> None:
    with app_session(api) as session:
        created = session.subscribe(receiver.url).json()
        old = created["secret"]
        rotated = session.call("POST", f"{SUBS}/{created['id']}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        assert set(rotated.json()) == {"secret"}
        new = rotated.json()["secret"]
        assert new.startswith("whsec_") and new != old
        assert "secret" not in session.call("GET", f"{SUBS}/{created['id']}").json()

        posted = post_from_someone_else(api, session, "ack")
        wait_for(lambda: receiver.requests, "the webhook")
    (webhook,) = receiver.requests
    headers = _headers(webhook)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        event = Webhook(secret).verify(webhook.body, headers)
        assert event["data"]["message"]["id"] == posted["id"]
        assert event["data"]["subscription_id"] == created["id"]


def test_deliveries_log_newest_first(api: Api, receiver: Receiver) -> None:
    with app_session(api) as session:
        created = session.subscribe(receiver.url).json()
        path = f"{SUBS}/{created['id']}/deliveries"
        assert session.call("GET", path).json() == []
        first = post_from_someone_else(api, session, "first")
        wait_for(lambda: len(receiver.requests) == 1, "the first webhook")
        second = post_from_someone_else(api, session, "second")
        wait_for(lambda: len(receiver.requests) == 2, "the second webhook")

        def delivered() -> list[dict[str, Any]] | None:
            rows = session.call("GET", path).json()
            return rows if all(r["status"] == "delivered" for r in rows) else None

        rows = wait_for(delivered, "both delivered")
        assert [r["message_id"] for r in rows] == [second["id"], first["id"]]
        for row, webhook in zip(rows, reversed(receiver.requests), strict=True):
            assert set(row) == DELIVERY_KEYS
            assert row["id"] == _headers(webhook)["webhook-id"]
            assert row["event_type"] == "message.created"
            assert row["attempts"] == 1 and row["last_status_code"] == 200
            assert row["last_error"] is None and row["next_attempt_at"] is None
            assert row["created_at"] and row["delivered_at"]
        limited = session.call("GET", path, params={"limit": 1}).json()
        assert [r["message_id"] for r in limited] == [second["id"]]
        assert session.call("GET", path, params={"limit": 0}).status_code == 422
        assert session.call("GET", path, params={"limit": 101}).status_code == 422


def test_retry_a_failed_delivery(api: Api, receiver: Receiver) -> None:
    receiver.statuses = [500] * 40  # every attempt of the schedule is refused
    with app_session(api) as session:
        created = session.subscribe(receiver.url).json()
        path = f"{SUBS}/{created['id']}/deliveries"
        post_from_someone_else(api, session, "will fail first")
        wait_for(lambda: receiver.requests, "the first attempt")

        def failed() -> dict[str, Any] | None:
            rows = session.call("GET", path).json()
            if rows and rows[0]["status"] == "failed":
                return rows[0]
            # Both apps on this database deliver; past each pause, on their shared clock.
            api.clock.advance(14 * 3600)
            time.sleep(0.2)
            return None

        row = wait_for(failed, "the delivery to fail", seconds=60)
        assert row["attempts"] >= 2 and row["last_status_code"] == 500
        assert row["next_attempt_at"] is None and row["delivered_at"] is None

        receiver.statuses = []  # the target is back
        retry = f"{path}/{row['id']}/retry"
        response = session.call("POST", retry)
        assert response.status_code == 202, response.text
        assert set(response.json()) == DELIVERY_KEYS
        assert response.json()["status"] == "pending" and response.json()["next_attempt_at"]

        def delivered() -> dict[str, Any] | None:
            rows = session.call("GET", path).json()
            return rows[0] if rows[0]["status"] == "delivered" else None

        done = wait_for(delivered, "the retried delivery")
        assert done["attempts"] == row["attempts"] + 1 and done["last_status_code"] == 200
        assert done["last_error"] is None and done["delivered_at"]
        assert len({_headers(r)["webhook-id"] for r in receiver.requests}) == 1

        again = session.call("POST", retry)
        assert again.status_code == 409
        assert session.call("POST", f"{path}/msg_unknown/retry").status_code == 404
        other = api.user("other@example.com")
        assert session.client.post(retry, headers=other.headers).status_code == 404


class _FailingDatabase:
    """A database whose writes fail: the row of a new subscription cannot be stored."""

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        raise OSError("the database went away")
        yield  # pragma: no cover


def test_a_row_that_cannot_be_written_leaves_no_graph_subscription(
    api: Api, receiver: Receiver
) -> None:
    with app_session(api) as session:
        settings = api.settings.model_copy(
            update={"tracecat_public_url": session.url, "microsoft_extra_scopes": READ_MESSAGES}
        )

        async def create() -> None:
            async with IntegrationService.with_session(settings) as integrations:
                service = NotificationService(
                    cast(Database, _FailingDatabase()), integrations, settings, SYSTEM_CLOCK
                )
                with pytest.raises(OSError):
                    await service.create(
                        uuid.UUID(session.user.id), session.team, session.channel, receiver.url
                    )

        asyncio.run(create())
        assert graph_subscriptions(api) == []
        assert session.call("GET", SUBS).json() == []


def _stored_secrets(api: Api, subscription_id: str) -> list[str]:
    """The subscription's secrets as the app reads them (decrypted)."""

    async def read() -> list[str]:
        database = Database.from_settings(api.settings)
        try:
            async with database.session() as session:
                row = await session.get(NotificationSubscription, uuid.UUID(subscription_id))
                assert row is not None and row.previous_secret is not None
                return [row.secret, row.previous_secret, row.client_state]
        finally:
            await database.dispose()

    return asyncio.run(read())


def test_no_signing_secret_or_client_state_at_rest_or_in_logs(
    api: Api, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    quiet_libraries()  # as `serve` sets logging up, even at TRACECAT_LOG_LEVEL=DEBUG
    caplog.set_level(logging.DEBUG)
    with app_session(api) as session:
        created = session.subscribe(receiver.url).json()
        session.call("POST", f"{SUBS}/{created['id']}/rotate-secret")
        post_from_someone_else(api, session, "ack")
        wait_for(lambda: receiver.requests, "the webhook")
        path = f"{SUBS}/{created['id']}/deliveries"
        wait_for(lambda: session.call("GET", path).json()[0]["status"] == "delivered", "done")
    (graph,) = graph_subscriptions(api)
    secrets = _stored_secrets(api, created["id"])
    assert secrets[0] != created["secret"] == secrets[1] and secrets[2] == graph["clientState"]
    dump = raw_dump(api.database_url)
    assert created["team_id"].encode() in dump  # the dump is real: it sees the subscription
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "/webhooks/microsoft/notifications" in text  # access lines were captured
    for secret in secrets:
        assert secret.encode() not in dump
        assert secret not in text
        assert secret.removeprefix("whsec_") not in text
