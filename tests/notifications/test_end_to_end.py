"""A message someone else posts in a subscribed channel arrives at the user's endpoint as a
signed Standard Webhook: the emulator notifies our endpoint, the processing job fetches the
message with the user's token, the delivery worker signs and sends it."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta

from standardwebhooks import Webhook

from tests.conftest import Api
from tests.notifications.conftest import Receiver, make_subscription, open_database
from tests.utils.flows import connect
from tracecat.auth.integrations.service import IntegrationService
from tracecat.graph.subscriptions import GraphSubscriptionsClient, channel_messages_resource
from tracecat.notifications.models import NotificationSubscription
from tracecat.notifications.signing import new_secret

READ_MESSAGES = ["ChannelMessage.Read.All"]


async def _graph_subscription(api: Api, user_id: str, team: str, channel: str, url: str) -> str:
    """Subscribe on Graph with the user's own token, as the subscription service will."""
    async with IntegrationService.with_session(api.settings) as service:
        token = await service.get_access_token(uuid.UUID(user_id))
    async with GraphSubscriptionsClient(token, settings=api.settings) as graph:
        created = await graph.create(
            resource=channel_messages_resource(team, channel),
            notification_url=f"{url}/webhooks/microsoft/notifications",
            lifecycle_notification_url=None,
            expiration=datetime.now(UTC) + timedelta(minutes=50),  # no lifecycle URL needed
            client_state=CLIENT_STATE,
        )
    return created.id


CLIENT_STATE = secrets.token_urlsafe(32)


def test_a_message_from_someone_else_arrives_signed(api: Api, receiver: Receiver) -> None:
    user = api.user("analyst@example.com")
    with api.another_server(microsoft_extra_scopes=READ_MESSAGES) as url:
        with api.browser() as browser:
            browser.base_url = url
            assert connect(browser, url, user, "alice@contoso.example").status_code == 200
            teams = browser.get("/auth/integrations/microsoft/teams", headers=user.headers).json()
            team = teams[0]["id"]
            channels = browser.get(
                f"/auth/integrations/microsoft/teams/{team}/channels", headers=user.headers
            ).json()
            channel = channels[0]["id"]
        graph_id = asyncio.run(_graph_subscription(api, user.id, team, channel, url))
        secret = new_secret()
        asyncio.run(_subscribe(api, user.id, receiver.url, team, channel, graph_id, secret))
        posted = api.control(
            "POST",
            f"/teams/{team}/channels/{channel}/messages",
            json={"content": "false positive, closing", "from": "bob@contoso.example"},
        ).json()
        deadline = time.monotonic() + 30
        while not receiver.requests:
            assert time.monotonic() < deadline, "no webhook arrived"
            time.sleep(0.05)
    (webhook,) = receiver.requests
    headers = {k.lower(): v for k, v in webhook.headers.items()}
    event = Webhook(secret).verify(webhook.body, headers)
    assert event["type"] == "message.created"
    assert event["data"]["team_id"] == team and event["data"]["channel_id"] == channel
    message = event["data"]["message"]
    assert message["id"] == posted["id"]
    assert "false positive" in message["body"]["content"]
    assert json.loads(webhook.body) == event


async def _subscribe(
    api: Api, user_id: str, target: str, team: str, channel: str, graph_id: str, secret: str
) -> None:
    """The row the subscription service will write, for the connected user."""
    database = open_database(api.database_url)
    try:
        subscription = await make_subscription(
            database,
            target,
            team_id=team,
            channel_id=channel,
            graph_subscription_id=graph_id,
            client_state=CLIENT_STATE,
            secret=secret,
        )
        # make_subscription made a throwaway user: the subscription is the connected one's.
        async with database.session() as session, session.begin():
            row = await session.get(NotificationSubscription, subscription.id)
            assert row is not None
            row.user_id = uuid.UUID(user_id)
    finally:
        await database.dispose()
