"""The audit of subscriptions (created, secret rotated, deleted) and of forged notifications,
and that no secret of any flow reaches the audit table or the database. Both databases."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.audit.support import events, names, stored_events
from tests.auth.integrations.test_secrets import _stored_tokens
from tests.conftest import Api
from tests.notifications.conftest import Receiver, make_subscription
from tests.notifications.test_inbound import CLIENT_STATE, GRAPH_ID, NOTIFICATIONS, change
from tests.notifications.test_subscriptions_api import (
    READ_MESSAGES,
    SUBS,
    app_session,
    graph_subscriptions,
)
from tests.utils.dump import raw_dump
from tests.utils.flows import ApiUser, sign_in, start_connect
from tracecat.db import Database

BASE = "/auth/integrations/microsoft"


def test_subscription_changes_are_recorded(api: Api, receiver: Receiver) -> None:
    with app_session(api) as session:
        created = session.subscribe(receiver.url)
        assert created.status_code == 201, created.text
        subscription_id = created.json()["id"]
        path = f"{SUBS}/{subscription_id}"
        assert session.call("POST", f"{path}/rotate-secret").status_code == 200
        assert session.call("DELETE", path).status_code == 204
        assert session.call("DELETE", path).status_code == 404  # nothing more happened
        found = events(session.url, session.user)

    assert names(found)[:3] == [
        "subscription.deleted",
        "subscription.secret_rotated",
        "subscription.created",
    ]
    for event in found[:3]:
        assert event["client_address"] == "127.0.0.1" and event["outcome"] == "success"
        assert subscription_id in event["detail"]
    # Not the target URL (a receiver may carry a secret of its own in it), only its host.
    assert found[2]["detail"] == f"subscription {subscription_id}, target host 127.0.0.1"
    assert receiver.url not in str(found)


async def _subscription_of(database: Database, user: ApiUser) -> uuid.UUID:
    row = await make_subscription(
        database,
        "https://hooks.example.com/x",
        uuid.UUID(user.id),
        graph_subscription_id=GRAPH_ID,
        client_state=CLIENT_STATE,
    )
    return row.id


async def test_forged_notifications_are_recorded_once_per_post(
    api: Api, app_database: Database
) -> None:
    user = await asyncio.to_thread(api.user, "analyst@example.com")
    subscription_id = await _subscription_of(app_database, user)
    forged = change(client_state="guessed")
    forged["value"] = forged["value"] * 3
    async with httpx.AsyncClient(base_url=api.url) as client:
        assert (await client.post(NOTIFICATIONS, json=change())).status_code == 202  # genuine
        assert (await client.post(NOTIFICATIONS, json=forged)).status_code == 202
        unknown = change(subscription_id=str(uuid.uuid4()))
        assert (await client.post(NOTIFICATIONS, json=unknown)).status_code == 202

    found = await asyncio.to_thread(events, api.url, user)
    (event,) = [event for event in found if event["event"] == "notification.forged"]
    assert event["detail"] == (
        f"3 change notification(s) dropped: bad_client_state, subscription {subscription_id}"
    )
    assert (event["outcome"], event["actor"]) == ("refused", "unknown")
    assert event["client_address"] == "127.0.0.1"
    assert "guessed" not in str(found)
    rows = await asyncio.to_thread(stored_events, api.database_url)
    (nobodys,) = [row for row in rows if row.event == "notification.forged" and not row.user_id]
    assert nobodys.detail == "1 change notification(s) dropped: unknown_subscription"


def test_no_secret_reaches_the_audit_table(api: Api, receiver: Receiver) -> None:
    """Every secret of the audited flows, against every byte the database holds."""
    settings = {"public_url_is_self": True, "microsoft_extra_scopes": READ_MESSAGES}
    user = api.user("analyst@example.com")
    with api.another_server(**settings) as url, httpx.Client(base_url=url) as browser:
        callback_url = sign_in(start_connect(browser, url, user), "alice@contoso.example")
        code = callback_url.split("code=", 1)[1].split("&", 1)[0]
        assert browser.get(callback_url).status_code == 200
        tokens = _stored_tokens(api, user.id)
        team = browser.get(f"{BASE}/teams", headers=user.headers).json()[0]["id"]
        channel = browser.get(f"{BASE}/teams/{team}/channels", headers=user.headers).json()[0]
        body = {"team_id": team, "channel_id": channel["id"], "target_url": receiver.url}
        created = browser.post(SUBS, json=body, headers=user.headers).json()
        path = f"{SUBS}/{created['id']}"
        rotated = browser.post(f"{path}/rotate-secret", headers=user.headers).json()
        (graph,) = graph_subscriptions(api)
        forged = change(client_state="x", subscription_id=graph["id"])
        assert browser.post(NOTIFICATIONS, json=forged).status_code == 202
        assert browser.delete(path, headers=user.headers).status_code == 204
        assert browser.delete(f"{BASE}/disconnect", headers=user.headers).status_code == 204

    secrets = [
        user.api_key,
        *tokens,
        code,
        api.settings.microsoft_client_secret,
        created["secret"],
        rotated["secret"],
        graph["clientState"],
    ]
    assert all(secrets)
    recorded = stored_events(api.database_url)
    assert {"connect.completed", "subscription.created", "notification.forged"} <= {
        row.event for row in recorded
    }
    table = "\n".join(repr(vars(row)) for row in recorded)
    dump = raw_dump(api.database_url)
    assert b"subscription.secret_rotated" in dump  # the dump is real: it sees the audit table
    for secret in secrets:
        assert secret not in table
        assert secret.removeprefix("whsec_") not in table
        assert secret.encode() not in dump
