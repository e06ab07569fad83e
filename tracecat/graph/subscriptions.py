"""Microsoft Graph change-notification subscriptions (`/subscriptions`) for one user.

Groundwork for Teams change notifications: a subscription to a channel's messages
(`channel_messages_resource`) is created, renewed before it expires (at most 4320 minutes
ahead for channel messages, with a lifecycle URL when more than an hour ahead), reauthorized
when Graph asks, and deleted.

Creating is slow: Graph answers only after its validation handshake with the notification URL
and then the lifecycle URL, each allowed 10 s. The transport has no per-request timeout; the
default read timeout of its HTTP clients (30 s, `transport.new_http_client`) covers both, and
a given `http_client` must allow as much. A create, renewal, deletion or reauthorization that
times out is not resent (the transport's send rules): it raises `DeliveryUnknownError`, and
after a create the subscription may exist: find it in `list_subscriptions()` (its
notification URL and client state) before creating another.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tracecat.exceptions import BadRequestError, GraphError
from tracecat.graph.ids import require_segment, segment
from tracecat.graph.resources import Subscription
from tracecat.graph.responses import parse
from tracecat.graph.transport import GraphClient

# Characters a raw id cannot hold inside a resource string without changing its meaning
# (a query, a fragment, Graph's key syntax `teams('id')`, an escape), besides whitespace.
_RESOURCE_UNSAFE = frozenset("?#%'()")


def _raw_id(value: str, name: str) -> str:
    require_segment(value, name)
    if any(c in _RESOURCE_UNSAFE or c.isspace() or not c.isprintable() for c in value):
        raise BadRequestError(
            f"{name} is not a valid id for a subscription resource: it cannot contain "
            "whitespace or any of ? # % ' ( )"
        )
    return value


def channel_messages_resource(team_id: str, channel_id: str) -> str:
    """`/teams/{team-id}/channels/{channel-id}/messages`, the ids raw as Graph expects them
    inside a resource string (`19:...@thread.tacv2`, not percent-encoded)."""
    team = _raw_id(team_id, "team_id")
    channel = _raw_id(channel_id, "channel_id")
    return f"/teams/{team}/channels/{channel}/messages"


def graph_datetime(moment: datetime) -> str:
    """An aware datetime as Graph's ISO 8601 UTC with `Z` (`2026-12-02T01:00:00.000000Z`)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise BadRequestError("expiration must be a timezone-aware datetime (e.g. in UTC)")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _subscription_path(subscription_id: str) -> str:
    return f"/subscriptions/{segment(subscription_id, 'subscription_id')}"


class GraphSubscriptionsClient(GraphClient):
    """Graph's `/subscriptions` for one user's access token (delegated).

    Connections are as in `GraphClient`. Every call is a single request under the
    transport's retry rules: reads are retried; sends (POST, PATCH, DELETE) only when Graph
    refused them with Retry-After or nothing reached it.
    """

    async def create(
        self,
        *,
        resource: str,
        change_type: str = "created",
        notification_url: str,
        lifecycle_notification_url: str | None,
        expiration: datetime,
        client_state: str | None,
    ) -> Subscription:
        """Subscribe; Graph validates both URLs before answering (see the module docstring).

        A URL that fails Graph's validation handshake is a GraphError 400 (ValidationError)
        whose message says why; a token without ChannelMessage.Read.All is a 403.
        """
        body: dict[str, Any] = {
            "changeType": change_type,
            "notificationUrl": notification_url,
            "resource": resource,
            "expirationDateTime": graph_datetime(expiration),
        }
        if lifecycle_notification_url is not None:
            body["lifecycleNotificationUrl"] = lifecycle_notification_url
        if client_state is not None:
            body["clientState"] = client_state
        return await self._post(Subscription, "/subscriptions", body)

    async def get(self, subscription_id: str) -> Subscription:
        """A live subscription of this app; GraphError 404 once it expired or was deleted."""
        return await self._get(Subscription, _subscription_path(subscription_id))

    async def list_subscriptions(self) -> list[Subscription]:
        """The live subscriptions this app created for the signed-in user."""
        return await self._list(Subscription, "/subscriptions")

    async def renew(self, subscription_id: str, expiration: datetime) -> Subscription:
        """Move the expiry to `expiration` (which also clears a pending reauthorization)."""
        body = {"expirationDateTime": graph_datetime(expiration)}
        async with self._connection() as http:
            answer = await self._request(
                http, "PATCH", _subscription_path(subscription_id), json=body
            )
        return parse(Subscription, answer)

    async def delete(self, subscription_id: str) -> None:
        """Unsubscribe; a subscription already gone (Graph's 404) is not an error."""
        path = _subscription_path(subscription_id)
        try:
            async with self._connection() as http:
                await self._request(http, "DELETE", path)
        except GraphError as exc:
            if exc.status_code != 404:
                raise

    async def reauthorize(self, subscription_id: str) -> None:
        """Answer a `reauthorizationRequired` lifecycle notification with this user's token."""
        async with self._connection() as http:
            await self._request(http, "POST", f"{_subscription_path(subscription_id)}/reauthorize")
