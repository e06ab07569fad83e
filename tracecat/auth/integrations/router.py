"""Routes under /auth/integrations: connect a Microsoft account, see it, act in Teams."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import HTMLResponse
from pydantic import TypeAdapter

from tracecat.auth.integrations.models import MICROSOFT_TEAMS
from tracecat.auth.integrations.schemas import (
    ConnectResponse,
    IntegrationSummary,
    SendMessageRequest,
    StatusResponse,
)
from tracecat.auth.integrations.service import browser_id_from
from tracecat.clients import request_address
from tracecat.deps import CurrentUser, IntegrationServiceDep, PagesDep
from tracecat.exceptions import TracecatError
from tracecat.graph.ids import require_segment
from tracecat.graph.resources import Channel, ChatMessage, Team
from tracecat.web.pages import wants_html

router = APIRouter(prefix="/auth/integrations", tags=["integrations"])

# Binds a pending flow to the browser that started it; scoped to the Microsoft routes.
BROWSER_COOKIE = "tracecat_oauth_browser"
BROWSER_COOKIE_PATH = "/auth/integrations/microsoft"


@router.get("/microsoft/connect", response_model=ConnectResponse)
async def connect(
    request: Request, response: Response, user: CurrentUser, service: IntegrationServiceDep
) -> ConnectResponse:
    browser_id = browser_id_from(request.cookies.get(BROWSER_COOKIE))
    auth_url = await service.start_connect(
        user.id, browser_id, client_address=request_address(request)
    )
    response.set_cookie(
        BROWSER_COOKIE,
        browser_id,
        max_age=600,
        path=BROWSER_COOKIE_PATH,
        httponly=True,
        samesite="lax",  # sent on Microsoft's top-level redirect back, not on cross-site posts
        secure=service.settings.redirect_uri().startswith("https://"),
    )
    return ConnectResponse(auth_url=auth_url)


@router.get("/microsoft/callback", response_class=HTMLResponse)
async def callback(
    request: Request, service: IntegrationServiceDep, pages: PagesDep
) -> HTMLResponse:
    """Microsoft's redirect of the person's browser: a page for them either way; API clients
    (no `text/html` in Accept) get the JSON error instead of the failure page."""
    try:
        integration = await service.complete_connect(
            dict(request.query_params),
            request.cookies.get(BROWSER_COOKIE),
            client_address=request_address(request),
        )
    except TracecatError as error:
        if not wants_html(request):
            raise
        return pages.connect_failed(error)
    account = integration.provider_metadata.get("account", {}).get("username")
    return pages.connected(account or "your account")


@router.delete("/microsoft/disconnect", status_code=status.HTTP_204_NO_CONTENT)
async def disconnect(request: Request, user: CurrentUser, service: IntegrationServiceDep) -> None:
    await service.disconnect(user.id, client_address=request_address(request))


@router.get("/microsoft/status", response_model=StatusResponse)
async def get_status(user: CurrentUser, service: IntegrationServiceDep) -> Response:
    views = await service.list_views(user.id, MICROSOFT_TEAMS)
    answer = StatusResponse.from_view(views[0] if views else None)
    # The hottest route: serialized once here instead of validated again by FastAPI.
    return Response(answer.model_dump_json(), media_type="application/json")


@router.get("/integrations", response_model=list[IntegrationSummary])
async def list_integrations(
    user: CurrentUser, service: IntegrationServiceDep
) -> list[IntegrationSummary]:
    return [IntegrationSummary.from_view(view) for view in await service.list_views(user.id)]


# --- Teams ----------------------------------------------------------------------------------
# Ids are checked at the edge, before any token or Graph work: each is one path segment.


async def _team_id(team_id: str) -> str:
    return require_segment(team_id, "team_id")


async def _channel_id(channel_id: str) -> str:
    return require_segment(channel_id, "channel_id")


async def _message_id(message_id: str) -> str:
    return require_segment(message_id, "message_id")


TeamId = Annotated[str, Depends(_team_id)]
ChannelId = Annotated[str, Depends(_channel_id)]
MessageId = Annotated[str, Depends(_message_id)]


# Lists are already typed by the Graph client: serialized once here instead of validated
# again by FastAPI against the response model (which stays, for the OpenAPI schema).
_TEAMS = TypeAdapter(list[Team])
_CHANNELS = TypeAdapter(list[Channel])
_MESSAGES = TypeAdapter(list[ChatMessage])


def _json(adapter: TypeAdapter[Any], value: object) -> Response:
    return Response(adapter.dump_json(value), media_type="application/json")


@router.get("/microsoft/teams", response_model=list[Team])
async def list_teams(user: CurrentUser, service: IntegrationServiceDep) -> Response:
    teams = await service.call_graph(
        user.id, service.teams_client, lambda teams: teams.get_user_teams()
    )
    return _json(_TEAMS, teams)


@router.get("/microsoft/teams/{team_id}/channels", response_model=list[Channel])
async def list_channels(
    team_id: TeamId, user: CurrentUser, service: IntegrationServiceDep
) -> Response:
    channels = await service.call_graph(
        user.id, service.teams_client, lambda teams: teams.list_channels(team_id)
    )
    return _json(_CHANNELS, channels)


@router.post(
    "/microsoft/teams/{team_id}/channels/{channel_id}/messages",
    response_model=ChatMessage,
    status_code=status.HTTP_201_CREATED,
)
async def send_message(
    team_id: TeamId,
    channel_id: ChannelId,
    message: SendMessageRequest,
    user: CurrentUser,
    service: IntegrationServiceDep,
) -> ChatMessage:
    return await service.call_graph(
        user.id,
        service.teams_client,
        lambda teams: teams.send_message(team_id, channel_id, **dict(message)),
    )


@router.get(
    "/microsoft/teams/{team_id}/channels/{channel_id}/messages", response_model=list[ChatMessage]
)
async def list_messages(
    team_id: TeamId,
    channel_id: ChannelId,
    user: CurrentUser,
    service: IntegrationServiceDep,
    top: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Response:
    await service.require_scope(user.id, "ChannelMessage.Read.All")
    messages = await service.call_graph(
        user.id,
        service.teams_client,
        lambda teams: teams.list_channel_messages(team_id, channel_id, top=top),
    )
    return _json(_MESSAGES, messages)


@router.post(
    "/microsoft/teams/{team_id}/channels/{channel_id}/messages/{message_id}/replies",
    response_model=ChatMessage,
    status_code=status.HTTP_201_CREATED,
)
async def reply_to_message(
    team_id: TeamId,
    channel_id: ChannelId,
    message_id: MessageId,
    message: SendMessageRequest,
    user: CurrentUser,
    service: IntegrationServiceDep,
) -> ChatMessage:
    return await service.call_graph(
        user.id,
        service.teams_client,
        lambda teams: teams.reply_to_message(team_id, channel_id, message_id, **dict(message)),
    )
