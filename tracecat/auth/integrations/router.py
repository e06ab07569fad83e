"""Routes under /auth/integrations: connect a Microsoft account, see it, act in Teams."""

from __future__ import annotations

import html

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import HTMLResponse

from tracecat.auth.integrations.models import (
    ConnectResponse,
    IntegrationSummary,
    StatusResponse,
)
from tracecat.auth.integrations.service import new_browser_id
from tracecat.deps import CurrentUser, IntegrationServiceDep

router = APIRouter(prefix="/auth/integrations", tags=["integrations"])

# Binds a pending flow to the browser that started it; scoped to the Microsoft routes.
BROWSER_COOKIE = "tracecat_oauth_browser"
BROWSER_COOKIE_PATH = "/auth/integrations/microsoft"


@router.get("/microsoft/connect", response_model=ConnectResponse)
async def connect(
    request: Request, response: Response, user: CurrentUser, service: IntegrationServiceDep
) -> ConnectResponse:
    browser_id = request.cookies.get(BROWSER_COOKIE) or new_browser_id()
    auth_url = await service.start_connect(user.id, browser_id)
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
async def callback(request: Request, service: IntegrationServiceDep) -> HTMLResponse:
    integration = await service.complete_connect(
        dict(request.query_params), request.cookies.get(BROWSER_COOKIE)
    )
    name = integration.provider_metadata.get("account", {}).get("username") or "your account"
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><title>Connected</title>"
        "<body style='font-family:system-ui;margin:3rem'>"
        f"<h1>Microsoft Teams connected</h1><p>Signed in as <b>{html.escape(name)}</b>.</p>"
        "<p><a href='/'>Back to tracecat-integrations</a>. You can close this window.</p>"
    )


@router.delete("/microsoft/disconnect", status_code=status.HTTP_204_NO_CONTENT)
async def disconnect(user: CurrentUser, service: IntegrationServiceDep) -> None:
    await service.disconnect(user.id)


@router.get("/microsoft/status", response_model=StatusResponse)
async def get_status(user: CurrentUser, service: IntegrationServiceDep) -> StatusResponse:
    return StatusResponse.for_integration(await service.get_user_integration(user_id=user.id))


@router.get("/integrations", response_model=list[IntegrationSummary])
async def list_integrations(
    user: CurrentUser, service: IntegrationServiceDep
) -> list[IntegrationSummary]:
    return [
        IntegrationSummary.from_integration(i) for i in await service.list_integrations(user.id)
    ]
