"""Microsoft Graph v1.0 for Teams: /me, joined teams, channels, channel messages and replies.

Messages list newest first (optionally `$expand=replies`); `messages/delta` lists root
messages oldest first and ends with an `@odata.deltaLink` for catching up later. A
stored message is announced to change-notification subscribers (graph_subscriptions.py).

Every route authenticates the bearer token, checks the delegated scope Graph
documents for it, and applies the Teams throttling limits before answering
(graph_access.py); this module is the routes and the resources they render.
Path segments arrive already percent-decoded, so `19%3Aabc%40thread.tacv2` and
`19:abc@thread.tacv2` name the same channel, as they do for Graph.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tracecat.emulator import errors
from tracecat.emulator.chat_messages import post_chat_message
from tracecat.emulator.demo_data import EmulatedChannel, EmulatedTeam
from tracecat.emulator.graph_access import (
    READ_CHANNELS,
    READ_JOINED_TEAMS,
    READ_ME,
    READ_MESSAGES,
    READ_TEAM,
    SEND_MESSAGES,
    authenticate,
    authorize,
    member_team,
    team_channel,
)
from tracecat.emulator.graph_paging import collection_page
from tracecat.emulator.http_utils import emulator_state, graph_base, https_base
from tracecat.emulator.state import EmulatorState
from tracecat.emulator.teams_store import StoredMessage

router = APIRouter(prefix="/v1.0")
userinfo_router = APIRouter()

MAX_MESSAGES_TOP = 50


def _root_message(state: EmulatorState, channel: EmulatedChannel, message_id: str) -> StoredMessage:
    message = state.teams.message(channel.id, message_id)
    if message is None:
        raise errors.graph_not_found(f"Message {message_id} was not found in the channel.")
    return message


def _odata(request: Request, fragment: str) -> str:
    return f"{graph_base(request)}/$metadata#{fragment}"


def _q(value: str) -> str:
    return quote(value, safe="")


def _team_json(team: EmulatedTeam, tenant_id: str, *, full: bool) -> dict[str, Any]:
    general = team.channels[0].id
    body: dict[str, Any] = {
        "id": team.id,
        "createdDateTime": team.created if full else None,
        "displayName": team.display_name,
        "description": team.description,
        "internalId": general if full else None,
        "classification": None,
        "specialization": "none" if full else None,
        "visibility": "private" if not team.open_to_all_users else "public",
        "webUrl": (
            f"https://teams.microsoft.com/l/team/{_q(general)}/conversations"
            f"?groupId={team.id}&tenantId={tenant_id}"
        ),
        "isArchived": False,
        "tenantId": tenant_id,
        "isMembershipLimitedToOwners": False if full else None,
        "summary": None,
    }
    if full:
        body["memberSettings"] = {
            "allowCreateUpdateChannels": True,
            "allowDeleteChannels": True,
            "allowAddRemoveApps": True,
            "allowCreateUpdateRemoveTabs": True,
            "allowCreateUpdateRemoveConnectors": True,
        }
        body["guestSettings"] = {"allowCreateUpdateChannels": False, "allowDeleteChannels": False}
        body["messagingSettings"] = {
            "allowUserEditMessages": True,
            "allowUserDeleteMessages": True,
            "allowOwnerDeleteMessages": True,
            "allowTeamMentions": True,
            "allowChannelMentions": True,
        }
        body["funSettings"] = {
            "allowGiphy": True,
            "giphyContentRating": "moderate",
            "allowStickersAndMemes": True,
            "allowCustomMemes": True,
        }
        body["discoverySettings"] = {"showInTeamsSearchAndSuggestions": team.open_to_all_users}
    return body


def _channel_json(channel: EmulatedChannel, tenant_id: str) -> dict[str, Any]:
    return {
        "id": channel.id,
        "createdDateTime": channel.created,
        "displayName": channel.display_name,
        "description": channel.description,
        "isFavoriteByDefault": None,
        "email": "",
        "tenantId": tenant_id,
        "webUrl": (
            f"https://teams.microsoft.com/l/channel/{_q(channel.id)}/{_q(channel.display_name)}"
            f"?groupId={channel.team_id}&tenantId={tenant_id}"
        ),
        "membershipType": "standard",
        "isArchived": False,
    }


def _message_json(message: StoredMessage) -> dict[str, Any]:
    return message.resource


# -- routes ------------------------------------------------------------------------------


@router.get("/me")
async def me(request: Request) -> dict[str, Any]:
    user = authorize(request, READ_ME).user
    return {
        "@odata.context": _odata(request, "users/$entity"),
        "businessPhones": [],
        "displayName": user.display_name,
        "givenName": user.given_name,
        "jobTitle": None,
        "mail": user.email,
        "mobilePhone": None,
        "officeLocation": None,
        "preferredLanguage": "en-US",
        "surname": user.surname or None,
        "userPrincipalName": user.email,
        "id": user.oid,
    }


@router.get("/me/joinedTeams")
async def joined_teams(request: Request) -> dict[str, Any]:
    caller = authorize(request, READ_JOINED_TEAMS)
    state = emulator_state(request)
    return collection_page(
        request,
        state.teams.joined_teams(caller.user.email),
        key=lambda team: team.id,
        render=lambda team: _team_json(team, state.tenant_id, full=False),
        context=_odata(request, "teams"),
        page_size=state.config.page_sizes.joined_teams,
    )


@router.get("/teams/{team_id}")
async def get_team(team_id: str, request: Request) -> dict[str, Any]:
    caller = authorize(request, READ_TEAM, team_id=team_id)
    state = emulator_state(request)
    team = member_team(state, caller, team_id)
    return {
        "@odata.context": _odata(request, "teams/$entity"),
        **_team_json(team, state.tenant_id, full=True),
    }


@router.get("/teams/{team_id}/channels")
async def list_channels(team_id: str, request: Request) -> dict[str, Any]:
    caller = authorize(request, READ_CHANNELS, team_id=team_id)
    state = emulator_state(request)
    team = member_team(state, caller, team_id)
    return collection_page(
        request,
        team.channels,
        key=lambda channel: channel.id,
        render=lambda channel: _channel_json(channel, state.tenant_id),
        context=_odata(request, f"teams('{team.id}')/channels"),
        page_size=state.config.page_sizes.channels,
    )


@router.get("/teams/{team_id}/channels/{channel_id}")
async def get_channel(team_id: str, channel_id: str, request: Request) -> dict[str, Any]:
    caller = authorize(request, READ_CHANNELS, team_id=team_id)
    state = emulator_state(request)
    channel = team_channel(member_team(state, caller, team_id), channel_id)
    return {
        "@odata.context": _odata(request, f"teams('{channel.team_id}')/channels/$entity"),
        **_channel_json(channel, state.tenant_id),
    }


@router.get("/teams/{team_id}/channels/{channel_id}/messages")
async def list_messages(team_id: str, channel_id: str, request: Request) -> dict[str, Any]:
    caller = authorize(request, READ_MESSAGES, team_id=team_id)
    state = emulator_state(request)
    channel = team_channel(member_team(state, caller, team_id), channel_id)
    context = f"teams('{channel.team_id}')/channels('{_q(channel.id)}')/messages"
    expand = request.query_params.get("$expand")
    if expand not in (None, "replies"):
        raise errors.graph_bad_request(f"Parsing OData Select and Expand failed: '{expand}'.")

    def render(message: StoredMessage) -> dict[str, Any]:
        if expand is None:
            return message.resource
        # Newest first, like the replies list.
        replies = [reply.resource for reply in reversed(message.replies)]
        return {
            **message.resource,
            "replies@odata.context": _odata(request, f"{context}('{message.id}')/replies"),
            "replies": replies,
        }

    return collection_page(
        request,
        list(reversed(state.teams.messages(channel.id))),
        key=lambda message: message.id,
        render=render,
        context=_odata(
            request, f"teams('{channel.team_id}')/channels('{_q(channel.id)}')/messages"
        ),
        page_size=state.config.page_sizes.messages,
        max_top=MAX_MESSAGES_TOP,
    )


async def _post_message(
    request: Request, team_id: str, channel_id: str, parent_id: str | None
) -> JSONResponse:
    caller = authorize(request, SEND_MESSAGES, team_id=team_id, channel_send=channel_id)
    state = emulator_state(request)
    channel = team_channel(member_team(state, caller, team_id), channel_id)
    parent = _root_message(state, channel, parent_id) if parent_id else None
    try:
        payload = await request.json()
    except ValueError:
        payload = None
    message = post_chat_message(
        state,
        payload,
        team_id=channel.team_id,
        channel_id=channel.id,
        reply_to_id=parent.id if parent else None,
        sender=caller.user,
    )
    path = f"teams('{channel.team_id}')/channels('{_q(channel.id)}')/messages"
    if parent:
        path += f"('{parent.id}')/replies"
    body = {"@odata.context": _odata(request, f"{path}/$entity"), **message.resource}
    return JSONResponse(body, status_code=201)


@router.post("/teams/{team_id}/channels/{channel_id}/messages")
async def send_message(team_id: str, channel_id: str, request: Request) -> JSONResponse:
    return await _post_message(request, team_id, channel_id, None)


@router.get("/teams/{team_id}/channels/{channel_id}/messages/delta")
async def messages_delta(team_id: str, channel_id: str, request: Request) -> dict[str, Any]:
    """Root messages oldest first, then an `@odata.deltaLink` that yields only newer ones.

    Registered before /messages/{message_id}, which would otherwise take "delta" for an id.
    Messages are never edited here, so "changed since" is "posted since": the delta token
    names the newest root message seen."""
    caller = authorize(request, READ_MESSAGES, team_id=team_id)
    state = emulator_state(request)
    channel = team_channel(member_team(state, caller, team_id), channel_id)
    roots = state.teams.messages(channel.id)
    seen = request.query_params.get("$deltatoken")
    if seen is not None:
        if not seen.isdigit():
            raise errors.graph_bad_request("The $deltatoken value is not valid.")
        roots = [message for message in roots if int(message.id) > int(seen)]
    context = f"teams('{channel.team_id}')/channels('{_q(channel.id)}')/messages/delta"
    page = collection_page(
        request,
        roots,
        key=lambda message: message.id,
        render=_message_json,
        context=_odata(request, context),
        page_size=state.config.page_sizes.messages,
        max_top=MAX_MESSAGES_TOP,
    )
    if "@odata.nextLink" not in page:
        newest = roots[-1].id if roots else (seen or "0")
        path = quote(request.url.path, safe="/")
        page["@odata.deltaLink"] = f"{https_base(request)}{path}?$deltatoken={newest}"
    return page


@router.get("/teams/{team_id}/channels/{channel_id}/messages/{message_id}")
async def get_message(
    team_id: str, channel_id: str, message_id: str, request: Request
) -> dict[str, Any]:
    caller = authorize(request, READ_MESSAGES, team_id=team_id)
    state = emulator_state(request)
    channel = team_channel(member_team(state, caller, team_id), channel_id)
    message = _root_message(state, channel, message_id)
    context = f"teams('{channel.team_id}')/channels('{_q(channel.id)}')/messages/$entity"
    return {"@odata.context": _odata(request, context), **message.resource}


@router.get("/teams/{team_id}/channels/{channel_id}/messages/{message_id}/replies")
async def list_replies(
    team_id: str, channel_id: str, message_id: str, request: Request
) -> dict[str, Any]:
    caller = authorize(request, READ_MESSAGES, team_id=team_id)
    state = emulator_state(request)
    channel = team_channel(member_team(state, caller, team_id), channel_id)
    parent = _root_message(state, channel, message_id)
    context = f"teams('{channel.team_id}')/channels('{_q(channel.id)}')/messages('{parent.id}')"
    return collection_page(
        request,
        list(reversed(parent.replies)),
        key=lambda message: message.id,
        render=_message_json,
        context=_odata(request, f"{context}/replies"),
        page_size=state.config.page_sizes.replies,
        max_top=MAX_MESSAGES_TOP,
    )


@router.post("/teams/{team_id}/channels/{channel_id}/messages/{message_id}/replies")
async def reply(team_id: str, channel_id: str, message_id: str, request: Request) -> JSONResponse:
    return await _post_message(request, team_id, channel_id, message_id)


@router.get("/teams/{team_id}/channels/{channel_id}/messages/{message_id}/replies/{reply_id}")
async def get_reply(
    team_id: str, channel_id: str, message_id: str, reply_id: str, request: Request
) -> dict[str, Any]:
    caller = authorize(request, READ_MESSAGES, team_id=team_id)
    state = emulator_state(request)
    channel = team_channel(member_team(state, caller, team_id), channel_id)
    parent = _root_message(state, channel, message_id)
    found = next((r for r in parent.replies if r.id == reply_id), None)
    if found is None:
        raise errors.graph_not_found(f"Reply {reply_id} was not found.")
    context = (
        f"teams('{channel.team_id}')/channels('{_q(channel.id)}')/messages('{parent.id}')"
        "/replies/$entity"
    )
    return {"@odata.context": _odata(request, context), **found.resource}


@userinfo_router.get("/oidc/userinfo")
async def userinfo(request: Request) -> dict[str, Any]:
    """The OIDC userinfo endpoint discovery publishes; Microsoft serves it from Graph's host."""
    caller = authenticate(request)
    user = caller.user
    return {
        "sub": user.oid,
        "name": user.display_name,
        "family_name": user.surname,
        "given_name": user.given_name,
        "email": user.email,
    }
