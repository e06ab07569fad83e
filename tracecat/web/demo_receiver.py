"""A webhook receiver built into `serve --emulator`, so a newcomer sees a signed webhook
arrive without writing one: subscribe `{TRACECAT_PUBLIC_URL}/demo/receiver`, post a message,
and the page shows what came, with its signature checked by the subscription's secret as a
receiver would (`standardwebhooks`).

Only with the emulator (its demo app registration): anywhere else both routes are 404. What
it receives is kept in memory, the newest few only (`demo_inbox.py`), gone at restart; a
person sees only webhooks naming subscriptions of theirs.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from standardwebhooks import Webhook, WebhookVerificationError

from tracecat.clock import Clock
from tracecat.deps import ResourcesDep
from tracecat.exceptions import BadRequestError, NotFoundError, PayloadTooLargeError
from tracecat.notifications.models import NotificationSubscription
from tracecat.notifications.service import NotificationService
from tracecat.notifications.signing import signing_secrets
from tracecat.web import present
from tracecat.web.demo_inbox import DemoInbox, Received
from tracecat.web.emulator import DEMO_RECEIVER_PATH as PATH
from tracecat.web.emulator import EmulatorControl, demo_receiver_url
from tracecat.web.router import PageDep
from tracecat.web.subscription_pages import Service

router = APIRouter(include_in_schema=False)

MAX_BODY = 256 * 1024  # a chatMessage with a card is a few KB
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def require_emulator(resources: ResourcesDep) -> None:
    if EmulatorControl.for_settings(resources.settings) is None:
        raise NotFoundError("Not Found")


Emulator = Annotated[None, Depends(require_emulator)]


@router.post(PATH, status_code=204)
async def receive(request: Request, resources: ResourcesDep, _: Emulator) -> Response:
    body = await _read_body(request)
    headers = {name: request.headers.get(name, "") for name in HEADERS}
    if not headers["webhook-id"]:
        raise BadRequestError("not a Standard Webhooks request: no webhook-id header")
    resources.demo_inbox.keep(Received(resources.clock.now(), headers, body))
    return Response(status_code=204)


@router.get(PATH, response_class=HTMLResponse)
async def inbox(page: PageDep, service: Service, _: Emulator) -> Response:
    received = await _shown(page.resources.demo_inbox, service, page.user.id, page.resources.clock)
    url = demo_receiver_url(page.resources.settings)
    return page.render(
        "demo_receiver.html", "receiver", title="Demo receiver", received=received, receiver_url=url
    )


@router.get(f"{PATH}/table", response_class=HTMLResponse)
async def inbox_table(page: PageDep, service: Service, _: Emulator) -> Response:
    received = await _shown(page.resources.demo_inbox, service, page.user.id, page.resources.clock)
    return page.render("_received_table.html", "receiver", received=received)


async def _read_body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise PayloadTooLargeError(f"the demo receiver keeps bodies up to {MAX_BODY} bytes")
    return body


async def _shown(
    inbox: DemoInbox, service: NotificationService, user_id: uuid.UUID, clock: Clock
) -> list[dict[str, Any]]:
    """The webhooks naming the person's subscriptions, each checked as a receiver would."""
    shown = []
    now = clock.now()
    # One read of the person's subscriptions for the whole table, not one per webhook.
    theirs = {str(row.id): row for row in await service.list_subscriptions(user_id)}
    for received in inbox.newest_first():
        event = _json(received.body)
        data = _object(event.get("data"))
        subscription = theirs.get(str(data.get("subscription_id", "")))
        if subscription is None:
            continue  # not theirs, or not ours at all
        message = _object(data.get("message"))
        sender = _object(_object(message.get("from")).get("user")).get("displayName")
        body = _object(message.get("body")).get("content") or ""
        shown.append(
            {
                "webhook_id": received.headers["webhook-id"],
                "type": event.get("type", "?"),
                "when": present.relative_time(received.at, now),
                "at": received.at.isoformat(),
                "sender": sender or "someone",
                "text": present.plain_text(str(body)),
                "valid": _verified(received, subscription, now),
            }
        )
    return shown


def _verified(received: Received, subscription: NotificationSubscription, now: datetime) -> bool:
    """What a receiver does: any secret that signs now verifies the signature, id and time."""
    for secret in signing_secrets(
        subscription.secret,
        subscription.previous_secret,
        subscription.previous_secret_expires_at,
        now,
    ):
        try:
            Webhook(secret).verify(received.body, received.headers)
            return True
        except WebhookVerificationError:
            continue
    return False


def _json(body: bytes) -> dict[str, Any]:
    try:
        return _object(json.loads(body))
    except ValueError:
        return {}


def _object(value: Any) -> dict[str, Any]:
    """A JSON object, or {} for anything else: what arrives here may be anything."""
    return value if isinstance(value, dict) else {}
