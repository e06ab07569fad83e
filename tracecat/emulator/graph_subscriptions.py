"""Microsoft Graph v1.0 /subscriptions for Teams channel messages (change notifications).

Creation follows Graph's order: authenticate, check the resource and the delegated
permission it needs (ChannelMessage.Read.All), check the body's rules (expiry at most
4320 minutes ahead, a lifecycleNotificationUrl when more than an hour ahead, clientState
at most 128 characters), then the validation handshake with each endpoint (notifier.py),
and only then store and answer 201.

Deliberate differences from Graph, each documented in the control API: notificationUrl
may be plain http (Graph insists on https) so a developer's loopback webhook works, and
includeResourceData=true is refused because the emulator does not encrypt resource data.
A subscription is seen only by the app that created it (404 otherwise, like Graph).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tracecat.emulator import errors
from tracecat.emulator.graph_access import (
    Caller,
    authenticate,
    authorize,
    member_team,
    team_channel,
)
from tracecat.emulator.http_utils import emulator_state, graph_base
from tracecat.emulator.notifier import validate_endpoint
from tracecat.emulator.state import EmulatorState
from tracecat.emulator.subscriptions import (
    CHANGE_TYPES,
    LIFECYCLE_URL_REQUIRED_AFTER_SECONDS,
    MAX_CLIENT_STATE,
    MAX_LIFETIME_SECONDS,
    TLS_VERSIONS,
    Subscription,
    parse_channel_messages,
    parse_datetime,
)

router = APIRouter(prefix="/v1.0")

# Graph's delegated permission for subscribing to one channel's messages.
SUBSCRIBE_CHANNEL_MESSAGES = ("ChannelMessage.Read.All",)
UPDATABLE = {"expirationDateTime"}


def _context(request: Request, entity: bool) -> str:
    return f"{graph_base(request)}/$metadata#subscriptions{'/$entity' if entity else ''}"


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise errors.graph_bad_request(
            "Unable to read JSON request payload. Please ensure Content-Type header is set and "
            "payload is of valid JSON format."
        )
    return body


def _string(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise errors.graph_validation_error(f"{name} is a required property of type string.")
    return value.strip()


def _url(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    url = _string(body, name, required=required)
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.fragment:
        raise errors.graph_validation_error(f"Invalid {name} '{url}': must be an absolute URL.")
    return url


def _expiration(
    state: EmulatorState, body: dict[str, Any], lifecycle_url: str | None, *, creating: bool
) -> float:
    raw = body.get("expirationDateTime")
    expiration = parse_datetime(raw)
    if expiration is None:
        raise errors.graph_validation_error(
            f"expirationDateTime '{raw}' is not a valid ISO 8601 date and time."
        )
    now = state.now()
    if expiration <= now:
        raise errors.graph_validation_error("Subscription expiration must be in the future.")
    if expiration > now + MAX_LIFETIME_SECONDS:
        raise errors.graph_validation_error(
            f"Subscription expiration can only be {MAX_LIFETIME_SECONDS // 60} minutes in the "
            "future."
        )
    if lifecycle_url is None and expiration > now + LIFECYCLE_URL_REQUIRED_AFTER_SECONDS:
        operation = "creation" if creating else "update"
        raise errors.graph_validation_error(
            f"lifecycleNotificationUrl is a required property for subscription {operation} on "
            "this resource when the expirationDateTime value is set to greater than 1 hour."
        )
    return expiration


def _change_type(body: dict[str, Any]) -> str:
    raw = _string(body, "changeType", required=True) or ""
    kinds = [kind.strip() for kind in raw.split(",")]
    if any(kind not in CHANGE_TYPES for kind in kinds) or len(set(kinds)) != len(kinds):
        raise errors.graph_validation_error(
            f"changeType '{raw}' is invalid: use a comma-separated list of "
            f"{', '.join(CHANGE_TYPES)}."
        )
    return ",".join(kinds)


def _options(body: dict[str, Any]) -> tuple[str | None, str, str | None]:
    """clientState, latestSupportedTlsVersion, notificationUrlAppId."""
    client_state = body.get("clientState")
    if client_state is not None and not isinstance(client_state, str):
        raise errors.graph_validation_error("clientState must be a string.")
    if client_state is not None and len(client_state) > MAX_CLIENT_STATE:
        raise errors.graph_validation_error(
            f"clientState must be at most {MAX_CLIENT_STATE} characters long."
        )
    if body.get("includeResourceData") not in (None, False):
        raise errors.graph_validation_error(
            "includeResourceData=true needs an encryptionCertificate; the emulator only sends "
            "notifications without resource data, so set it to false."
        )
    tls = body.get("latestSupportedTlsVersion") or "v1_2"
    if tls not in TLS_VERSIONS:
        raise errors.graph_validation_error(
            f"latestSupportedTlsVersion must be one of {', '.join(TLS_VERSIONS)}."
        )
    app_id = body.get("notificationUrlAppId")
    if app_id is not None and not isinstance(app_id, str):
        raise errors.graph_validation_error("notificationUrlAppId must be a string.")
    return client_state, tls, app_id


async def _handshake(state: EmulatorState, *urls: str | None) -> None:
    timeout = state.config.notifications.timeout_seconds
    for url in urls:
        if url is None:
            continue
        problem = await validate_endpoint(url, timeout_seconds=timeout)
        state.stats.record_validation(problem is None)
        if problem is not None:
            raise errors.graph_validation_error(problem)


def _owned(state: EmulatorState, caller: Caller, subscription_id: str) -> Subscription:
    """The caller's app's live subscription; 404 for one of another app, like Graph."""
    subscription = state.subscriptions.get(subscription_id)
    if subscription is None or subscription.application_id != caller.app_id:
        raise errors.graph_resource_not_found(
            f"The subscription '{subscription_id}' was not found or has expired."
        )
    return subscription


@router.post("/subscriptions")
async def create_subscription(request: Request) -> JSONResponse:
    body = await _body(request)
    state = emulator_state(request)
    resource = body.get("resource")
    target = parse_channel_messages(resource) if isinstance(resource, str) else None
    if target is None:
        authenticate(request)  # a bad token is a 401 before anything about the body
        raise errors.graph_validation_error(
            f"Resource '{resource}' is not supported: the emulator offers change notifications "
            "for /teams/{team-id}/channels/{channel-id}/messages only."
        )
    team_id, channel_id = target
    caller = authorize(request, SUBSCRIBE_CHANNEL_MESSAGES, team_id=team_id)
    team = member_team(state, caller, team_id)
    channel = team_channel(team, channel_id)
    change_type = _change_type(body)
    notification_url = _url(body, "notificationUrl", required=True) or ""
    lifecycle_url = _url(body, "lifecycleNotificationUrl", required=False)
    expiration = _expiration(state, body, lifecycle_url, creating=True)
    client_state, tls, url_app_id = _options(body)
    await _handshake(state, notification_url, lifecycle_url)
    subscription = Subscription(
        id=str(uuid.uuid4()),
        resource=str(resource),
        team_id=team.id,
        channel_id=channel.id,
        application_id=caller.app_id,
        change_type=change_type,
        notification_url=notification_url,
        expiration=expiration,
        creator_id=caller.user.oid,
        creator_email=caller.user.email,
        client_state=client_state,
        lifecycle_notification_url=lifecycle_url,
        latest_supported_tls_version=tls,
        notification_url_app_id=url_app_id,
    )
    state.subscriptions.add(subscription)
    answer = {"@odata.context": _context(request, True), **subscription.resource_json()}
    return JSONResponse(answer, status_code=201)


@router.get("/subscriptions")
async def list_subscriptions(request: Request) -> dict[str, Any]:
    caller = authenticate(request)
    state = emulator_state(request)
    # Delegated: what this app created for the signed-in user.
    mine = state.subscriptions.for_app(caller.app_id, caller.user.oid)
    return {
        "@odata.context": _context(request, False),
        "value": [subscription.resource_json() for subscription in mine],
    }


@router.get("/subscriptions/{subscription_id}")
async def get_subscription(subscription_id: str, request: Request) -> dict[str, Any]:
    caller = authenticate(request)
    subscription = _owned(emulator_state(request), caller, subscription_id)
    return {"@odata.context": _context(request, True), **subscription.resource_json()}


@router.patch("/subscriptions/{subscription_id}")
async def renew_subscription(subscription_id: str, request: Request) -> dict[str, Any]:
    caller = authorize(request, SUBSCRIBE_CHANNEL_MESSAGES)
    state = emulator_state(request)
    subscription = _owned(state, caller, subscription_id)
    body = await _body(request)
    unknown = sorted(set(body) - UPDATABLE)
    if unknown or "expirationDateTime" not in body:
        raise errors.graph_validation_error(
            "Only expirationDateTime can be updated"
            + (f"; not {', '.join(unknown)}." if unknown else ".")
        )
    expiration = _expiration(state, body, subscription.lifecycle_notification_url, creating=False)
    renewed = state.subscriptions.renew(subscription.id, expiration)
    if renewed is None:  # expired or deleted while this request ran
        raise errors.graph_resource_not_found(
            f"The subscription '{subscription_id}' was not found."
        )
    return {"@odata.context": _context(request, True), **renewed.resource_json()}


@router.delete("/subscriptions/{subscription_id}")
async def delete_subscription(subscription_id: str, request: Request) -> Response:
    caller = authenticate(request)
    state = emulator_state(request)
    subscription = _owned(state, caller, subscription_id)
    state.subscriptions.remove(subscription.id)
    return Response(status_code=204)


@router.post("/subscriptions/{subscription_id}/reauthorize")
async def reauthorize_subscription(subscription_id: str, request: Request) -> Response:
    caller = authorize(request, SUBSCRIBE_CHANNEL_MESSAGES)
    state = emulator_state(request)
    subscription = _owned(state, caller, subscription_id)
    state.subscriptions.set_reauthorization(subscription.id, False)
    return Response(status_code=204)
