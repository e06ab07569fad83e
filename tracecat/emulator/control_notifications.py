"""The control API's change-notification routes (documented in control.py's docstring).

Kept apart from control.py to keep that module readable; same prefix, same cross-site
guard, same {"error": "..."} bodies.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from tracecat.emulator.chat_messages import post_chat_message
from tracecat.emulator.constants import DEMO_USERS
from tracecat.emulator.control import ControlError, _field, _json_object, refuse_cross_site
from tracecat.emulator.errors import GraphApiError
from tracecat.emulator.http_utils import emulator_state
from tracecat.emulator.subscriptions import LIFECYCLE_EVENTS

router = APIRouter(prefix="/_emulator", dependencies=[Depends(refuse_cross_site)])


@router.post("/teams/{team_id}/channels/{channel_id}/messages", status_code=201)
async def post_message(team_id: str, channel_id: str, request: Request) -> dict[str, Any]:
    """A message (or reply) from someone else, stored and announced like a Graph POST."""
    body = await _json_object(request)
    unknown = sorted(set(body) - {"content", "content_type", "from", "reply_to"})
    if unknown:
        raise ControlError(f"unknown field(s): {', '.join(unknown)}")
    content = _field(body, "content", str, None)
    if not content:
        raise ControlError("content is required: the message text")
    content_type = _field(body, "content_type", str, "text")
    state = emulator_state(request)
    team = state.teams.team(team_id)
    channel = team.channel(channel_id) if team else None
    if team is None or channel is None:
        raise ControlError(f"no channel {channel_id!r} in team {team_id!r}", 404)
    reply_to = _field(body, "reply_to", str, None)
    if reply_to is not None and state.teams.message(channel.id, reply_to) is None:
        raise ControlError(f"no root message {reply_to!r} in that channel", 404)
    sender_email = _field(body, "from", str, None)
    if sender_email is None:
        # "Someone else": a demo user who is not watching this channel themselves.
        watchers = {s.creator_email for s in state.subscriptions.watching(team.id, channel.id)}
        sender_email = next((u for u in DEMO_USERS if u not in watchers), DEMO_USERS[-1])
    if "@" not in sender_email:
        raise ControlError("from must be an email address")
    sender = state.sign_in(sender_email)
    payload = {"body": {"contentType": content_type, "content": content}}
    try:
        message = post_chat_message(
            state,
            payload,
            team_id=team.id,
            channel_id=channel.id,
            reply_to_id=reply_to,
            sender=sender,
        )
    except GraphApiError as exc:
        raise ControlError(exc.message) from exc
    return message.public()


@router.get("/subscriptions")
async def list_subscriptions(request: Request) -> dict[str, Any]:
    return {"subscriptions": emulator_state(request).subscriptions.report()}


@router.post("/subscriptions/{subscription_id}/lifecycle", status_code=202)
async def lifecycle_event(subscription_id: str, request: Request) -> dict[str, Any]:
    body = await _json_object(request)
    event = _field(body, "event", str, None)
    if set(body) != {"event"} or event not in LIFECYCLE_EVENTS:
        raise ControlError(f'the body must be {{"event": one of {list(LIFECYCLE_EVENTS)}}}')
    state = emulator_state(request)
    subscription = state.subscriptions.get(subscription_id)
    if subscription is None:
        raise ControlError(f"no live subscription {subscription_id!r}", 404)
    if subscription.lifecycle_notification_url is None:
        raise ControlError("that subscription has no lifecycleNotificationUrl to notify")
    if event == "reauthorizationRequired":
        state.subscriptions.set_reauthorization(subscription.id, True)
    elif event == "subscriptionRemoved":
        state.subscriptions.remove(subscription.id)
    state.notifier.lifecycle(subscription, event)
    return {
        "subscription_id": subscription.id,
        "event": event,
        "removed": event == "subscriptionRemoved",
    }
