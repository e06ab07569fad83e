"""Microsoft's POSTs to us: the validation handshake, genuine notifications kept before the
202, forged ones dropped and counted, never kept."""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx
from sqlalchemy import select

from tests.conftest import Api
from tests.notifications.conftest import make_subscription
from tracecat.db import Database
from tracecat.notifications.models import InboundNotification, NotificationSubscription

NOTIFICATIONS = "/webhooks/microsoft/notifications"
LIFECYCLE = "/webhooks/microsoft/lifecycle"
GRAPH_ID = "4a6f3e8c-1c2b-4d5e-9f70-8a9b0c1d2e3f"
CLIENT_STATE = "kTq7-random-client-state-of-at-least-32-characters"
CHAT_MESSAGE = "#Microsoft.Graph.chatMessage"
RESOURCE = "teams('team-1')/channels('19:channel@thread.tacv2')/messages('1700000000001')"


def change(client_state: str = CLIENT_STATE, subscription_id: str = GRAPH_ID) -> dict:
    return {
        "value": [
            {
                "subscriptionId": subscription_id,
                "subscriptionExpirationDateTime": "2026-12-04T10:00:00Z",
                "changeType": "created",
                "clientState": client_state,
                "resource": RESOURCE,
                "resourceData": {
                    "id": "1700000000001",
                    "@odata.type": "#Microsoft.Graph.chatMessage",
                },
                "tenantId": "8f6c0000-0000-0000-0000-000000000000",
            }
        ]
    }


async def _subscribed(database: Database) -> NotificationSubscription:
    return await make_subscription(
        database,
        "https://hooks.example.com/x",
        graph_subscription_id=GRAPH_ID,
        client_state=CLIENT_STATE,
    )


async def _kept(database: Database) -> list[InboundNotification]:
    async with database.session() as session:
        return list(await session.scalars(select(InboundNotification)))


def _dropped(api: Api, outcome: str) -> float:
    metrics = httpx.get(f"{api.url}/metrics").text
    pattern = rf'tracecat_notifications_received_total{{kind="change",outcome="{outcome}"}} (\S+)'
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


async def test_the_validation_handshake_echoes_the_decoded_token(api: Api) -> None:
    token = "Validation: Testing client application reachability for subscription Request-Id: 1"
    async with httpx.AsyncClient(base_url=api.url) as client:
        for path in (NOTIFICATIONS, LIFECYCLE):
            answer = await client.post(f"{path}?validationToken={quote(token)}")
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain")
            assert answer.text == token


async def test_a_genuine_notification_is_kept_before_the_202(
    api: Api, app_database: Database
) -> None:
    subscription = await _subscribed(app_database)
    async with httpx.AsyncClient(base_url=api.url) as client:
        answer = await client.post(NOTIFICATIONS, json=change())
    assert answer.status_code == 202
    (kept,) = await _kept(app_database)
    assert kept.subscription_id == subscription.id and kept.kind == "change"
    assert kept.resource == RESOURCE and kept.processed_at is None


async def test_forged_notifications_are_dropped_and_counted(
    api: Api, app_database: Database
) -> None:
    await _subscribed(app_database)
    before = {o: _dropped(api, o) for o in ("bad_client_state", "unknown_subscription")}
    async with httpx.AsyncClient(base_url=api.url) as client:
        # The same answer as a genuine one: a forger learns nothing.
        wrong = await client.post(NOTIFICATIONS, json=change(client_state=CLIENT_STATE[:-1] + "x"))
        unknown = await client.post(NOTIFICATIONS, json=change(subscription_id="not-ours"))
    assert wrong.status_code == unknown.status_code == 202
    assert await _kept(app_database) == []
    assert _dropped(api, "bad_client_state") == before["bad_client_state"] + 1
    assert _dropped(api, "unknown_subscription") == before["unknown_subscription"] + 1


async def test_lifecycle_events_are_kept(api: Api, app_database: Database) -> None:
    await _subscribed(app_database)
    event = {
        "value": [
            {
                "subscriptionId": GRAPH_ID,
                "subscriptionExpirationDateTime": "2026-12-04T10:00:00Z",
                "tenantId": "8f6c0000-0000-0000-0000-000000000000",
                "clientState": CLIENT_STATE,
                "lifecycleEvent": "reauthorizationRequired",
            }
        ]
    }
    async with httpx.AsyncClient(base_url=api.url) as client:
        assert (await client.post(LIFECYCLE, json=event)).status_code == 202
        event["value"][0]["lifecycleEvent"] = "somethingElse"
        refused = await client.post(LIFECYCLE, json=event)
    assert refused.status_code == 400 and "lifecycle" in refused.json()["detail"]
    (kept,) = await _kept(app_database)
    assert kept.kind == "lifecycle" and kept.lifecycle_event == "reauthorizationRequired"


async def test_a_body_that_is_no_notification_is_a_400(api: Api, app_database: Database) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        for body in (b"not json", b"[]", b'{"value": [{"subscriptionId": 1}]}', b'{"value": 3}'):
            answer = await client.post(
                NOTIFICATIONS, content=body, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 400, body
            assert isinstance(answer.json()["detail"], str)
    assert await _kept(app_database) == []
