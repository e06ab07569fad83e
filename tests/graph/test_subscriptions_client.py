"""GraphSubscriptionsClient against the Microsoft emulator's /v1.0/subscriptions, with a local
webhook answering (or failing) Graph's validation handshake.

Expiry times are taken from the emulator's clock, which tests may move. Nothing here sleeps:
a notification or a late subscription is polled for with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import httpx
import pytest

from tests.graph.emulated import ALERTS, PRIVATE, SECOPS, EmulatedTeams, signed_in_bench
from tests.utils.graph_sign_in import graph_token
from tests.utils.polling import eventually
from tests.utils.webhook import Receiver, running_receiver
from tracecat.emulator.constants import DEMO_USERS
from tracecat.emulator.server import EmulatorServer
from tracecat.exceptions import BadRequestError, DeliveryUnknownError, GraphError
from tracecat.graph.resources import Subscription
from tracecat.graph.subscriptions import (
    GraphSubscriptionsClient,
    channel_messages_resource,
    graph_datetime,
)

SUBSCRIPTIONS = "/v1.0/subscriptions"
CLIENT_STATE = "state-1234"

T = TypeVar("T")


class Emulated(EmulatedTeams):
    def subscriptions(self, token: str | None = None, **options: Any) -> GraphSubscriptionsClient:
        options.setdefault("retry", self.retry())
        return GraphSubscriptionsClient(token or self.token, settings=self.settings, **options)

    def now(self) -> datetime:
        """The emulator's now, to the second (its expiries are kept as float seconds)."""
        now = self.control.get("/clock").json()["now"]
        return datetime.fromtimestamp(int(now), UTC)

    def emulator_subscriptions(self) -> list[dict[str, Any]]:
        return self.control.get("/subscriptions").json()["subscriptions"]

    def lifecycle(self, subscription_id: str, event: str) -> None:
        response = self.control.post(
            f"/subscriptions/{subscription_id}/lifecycle", json={"event": event}
        )
        response.raise_for_status()


@pytest.fixture
def emulated(emulator: EmulatorServer) -> Iterator[Emulated]:
    notifications = {"retry_delays": [0.05], "timeout_seconds": 5}
    with signed_in_bench(emulator, Emulated, notifications=notifications) as emulated:
        yield emulated


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    with running_receiver() as hook:
        yield hook


async def subscribe(
    emulated: Emulated, webhook: Receiver, client: GraphSubscriptionsClient | None = None
) -> Subscription:
    return await (client or emulated.subscriptions()).create(
        resource=channel_messages_resource(SECOPS, ALERTS),
        notification_url=f"{webhook.url}/notify",
        lifecycle_notification_url=f"{webhook.url}/lifecycle",
        expiration=emulated.now() + timedelta(hours=2),
        client_state=CLIENT_STATE,
    )


async def eventually_async(check: Callable[[], Awaitable[T]], seconds: float = 15.0) -> T:
    """Await `check` until it returns something truthy; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"still {result!r} after {seconds} s"
        await asyncio.sleep(0.05)


# -- the resource and the expiry ----------------------------------------------------------------


def test_channel_resource_holds_the_raw_ids() -> None:
    assert (
        channel_messages_resource(SECOPS, ALERTS) == f"/teams/{SECOPS}/channels/{ALERTS}/messages"
    )
    assert ":" in ALERTS and "@" in ALERTS  # kept as they are, as Graph's examples show


@pytest.mark.parametrize(
    ("team_id", "channel_id"),
    [("..", ALERTS), (SECOPS, "a/b"), (SECOPS, "%2e%2e"), (SECOPS, "x?y"), ("t('x')", ALERTS)],
    ids=["dot-segment", "slash", "encoded-dots", "query", "key-syntax"],
)
def test_channel_resource_refuses_ids_that_change_its_meaning(
    team_id: str, channel_id: str
) -> None:
    with pytest.raises(BadRequestError):
        channel_messages_resource(team_id, channel_id)


def test_expiration_is_sent_as_utc_with_z() -> None:
    eastern = datetime(2026, 12, 2, 3, 4, 5, 600, tzinfo=UTC).astimezone(
        timezone(timedelta(hours=-5))
    )
    assert graph_datetime(eastern) == "2026-12-02T03:04:05.000600Z"
    with pytest.raises(BadRequestError):
        graph_datetime(datetime(2026, 12, 2, 3, 4, 5))  # naive: which zone?


# -- lifecycle of a subscription ----------------------------------------------------------------


async def test_create_get_renew_reauthorize_and_delete(
    emulated: Emulated, webhook: Receiver
) -> None:
    client = emulated.subscriptions()
    expiration = emulated.now() + timedelta(hours=2)
    created = await client.create(
        resource=channel_messages_resource(SECOPS, ALERTS),
        notification_url=f"{webhook.url}/notify",
        lifecycle_notification_url=f"{webhook.url}/lifecycle",
        expiration=expiration,
        client_state=CLIENT_STATE,
    )
    # Graph validated both endpoints before answering.
    assert webhook.validated_paths() == ["/notify", "/lifecycle"]
    assert created.resource == f"/teams/{SECOPS}/channels/{ALERTS}/messages"
    assert created.change_type == "created"
    assert created.notification_url == f"{webhook.url}/notify"
    assert created.lifecycle_notification_url == f"{webhook.url}/lifecycle"
    assert created.client_state == CLIENT_STATE
    assert created.expiration_date_time == expiration
    assert created.model_dump()["expirationDateTime"] == expiration  # Graph's names
    assert emulated.statuses("POST", SUBSCRIPTIONS) == [201]

    fetched = await client.get(created.id)
    assert (fetched.id, fetched.resource) == (created.id, created.resource)
    assert [s.id for s in await client.list_subscriptions()] == [created.id]

    later = expiration + timedelta(hours=24)
    renewed = await client.renew(created.id, later)
    assert renewed.id == created.id and renewed.expiration_date_time == later
    assert (await client.get(created.id)).expiration_date_time == later

    emulated.lifecycle(created.id, "reauthorizationRequired")
    eventually(lambda: webhook.received("/lifecycle"), timeout=10)
    assert emulated.emulator_subscriptions()[0]["needsReauthorization"] is True
    assert await client.reauthorize(created.id) is None
    assert emulated.emulator_subscriptions()[0]["needsReauthorization"] is False

    path = f"{SUBSCRIPTIONS}/{created.id}"
    assert await client.delete(created.id) is None
    with pytest.raises(GraphError) as gone:
        await client.get(created.id)
    assert gone.value.status_code == 404
    assert await client.delete(created.id) is None  # already gone: quiet
    assert emulated.statuses("DELETE", path) == [204, 404]
    assert emulated.emulator_subscriptions() == []


async def test_unknown_subscription_is_a_404_except_for_delete(emulated: Emulated) -> None:
    client = emulated.subscriptions()
    missing = "00000000-0000-0000-0000-000000000001"
    for call in (client.get(missing), client.renew(missing, emulated.now() + timedelta(hours=1))):
        with pytest.raises(GraphError) as caught:
            await call
        assert caught.value.status_code == 404
    await client.delete(missing)
    with pytest.raises(BadRequestError):
        await client.delete("../me")  # never a path
    assert emulated.waits == []


async def test_a_token_without_the_read_scope_is_refused(
    emulated: Emulated, webhook: Receiver
) -> None:
    token = graph_token(
        emulated.emulator, DEMO_USERS[0], scopes=("User.Read", "ChannelMessage.Send")
    )
    with pytest.raises(GraphError) as caught:
        await subscribe(emulated, webhook, emulated.subscriptions(token))
    assert (caught.value.status_code, caught.value.code) == (403, "Forbidden")
    assert "ChannelMessage.Read.All" in caught.value.message
    assert webhook.validations == []  # refused before any handshake
    assert emulated.emulator_subscriptions() == []


async def test_a_team_the_user_is_not_in_is_refused(emulated: Emulated, webhook: Receiver) -> None:
    with pytest.raises(GraphError) as caught:
        await emulated.subscriptions().create(
            resource=channel_messages_resource(PRIVATE, ALERTS),
            notification_url=f"{webhook.url}/notify",
            lifecycle_notification_url=None,
            expiration=emulated.now() + timedelta(minutes=30),
            client_state=None,
        )
    assert caught.value.status_code == 403


@pytest.mark.parametrize("answer", ["wrong", "500"])
async def test_a_webhook_failing_validation_is_a_clear_400(
    emulated: Emulated, webhook: Receiver, answer: str
) -> None:
    webhook.validation = answer
    with pytest.raises(GraphError) as caught:
        await subscribe(emulated, webhook)
    assert (caught.value.status_code, caught.value.code) == (400, "ValidationError")
    assert "validation" in caught.value.message.lower()
    assert webhook.validated_paths() == ["/notify"]
    assert emulated.statuses("POST", SUBSCRIPTIONS) == [400]  # not retried
    assert emulated.emulator_subscriptions() == []


async def test_a_create_that_times_out_is_not_resent(emulated: Emulated, webhook: Receiver) -> None:
    # The webhook holds the handshake past our read timeout: Graph may still create it.
    webhook.answering.clear()
    settings = emulated.settings
    async with httpx.AsyncClient(
        verify=settings.ssl_context(), timeout=httpx.Timeout(10.0, read=0.5)
    ) as impatient:
        with pytest.raises(DeliveryUnknownError):
            await subscribe(emulated, webhook, emulated.subscriptions(http_client=impatient))
    webhook.answering.set()
    client = emulated.subscriptions()
    # Found by its notification URL and client state, as the module docstring advises.
    (found,) = await eventually_async(client.list_subscriptions)
    assert (found.notification_url, found.client_state) == (f"{webhook.url}/notify", CLIENT_STATE)
    assert emulated.statuses("POST", SUBSCRIPTIONS) == [201]  # one send, never repeated
    assert emulated.waits == []


async def test_client_works_inside_async_with(emulated: Emulated, webhook: Receiver) -> None:
    async with emulated.subscriptions() as client:
        created = await subscribe(emulated, webhook, client)
        await client.reauthorize(created.id)
        await client.delete(created.id)
    assert emulated.emulator_subscriptions() == []
