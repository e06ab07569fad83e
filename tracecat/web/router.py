"""Pages for people: sign in, the connection, teams and channels, composing and sending.

Thin like the API's routers: each page asks the same services the API uses and hands what
they answer to a template, through `present.py` for anything said in words. Forms post
with the session's CSRF token; a page without a session sends the browser to sign in.
Subscriptions and deliveries have pages of their own (`subscription_pages.py`).
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tracecat.auth.integrations.router import BROWSER_COOKIE, BROWSER_COOKIE_PATH
from tracecat.auth.integrations.schemas import StatusResponse
from tracecat.auth.integrations.service import browser_id_from
from tracecat.clients import request_address
from tracecat.deps import PagesDep, ResourcesDep
from tracecat.exceptions import AuthenticationError, NotFoundError, TracecatError
from tracecat.graph.ids import require_segment
from tracecat.graph.resources import ChatMessage
from tracecat.web import present
from tracecat.web.compose import message_request
from tracecat.web.emulator import EmulatorControl
from tracecat.web.sessions import (
    CSRF_FIELD,
    SESSION_COOKIE,
    WebSessions,
    WebUser,
    clear_session_cookie,
    set_session_cookie,
)

router = APIRouter(include_in_schema=False)

RECENT_MESSAGES = 20


async def web_user(request: Request, resources: ResourcesDep) -> WebUser:
    user = await resources.web_sessions.resolve(request.cookies.get(SESSION_COOKIE))
    # A session spends its API key's budget: pages are no way around the rate limit.
    address = request_address(request)
    await resources.rate_limits.count_request(str(user.principal.key_id), user.id, address)
    return user


async def checked_user(
    user: Annotated[WebUser, Depends(web_user)],
    csrf_token: Annotated[str | None, Form(alias=CSRF_FIELD)] = None,
) -> WebUser:
    """The session of a form that changes something: its CSRF token must match."""
    user.check_csrf(csrf_token)
    return user


User = Annotated[WebUser, Depends(web_user)]
CheckedUser = Annotated[WebUser, Depends(checked_user)]


class Page:
    """What every page of a signed-in person shows: the user, the navigation, the emulator."""

    def __init__(self, pages: PagesDep, resources: ResourcesDep, user: User) -> None:
        self.pages = pages
        self.resources = resources
        self.user = user

    def render(
        self, template: str, section: str, *, http_status: int = 200, **context: Any
    ) -> Response:
        emulator = EmulatorControl.for_settings(self.resources.settings) is not None
        return self.pages.render(
            template, http_status, user=self.user, section=section, emulator=emulator, **context
        )

    async def graph(self, work: Any) -> Any:
        service = self.resources.integrations
        return await service.call_graph(self.user.id, service.teams_client, work)


PageDep = Annotated[Page, Depends(Page)]


def see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303)


# --- signing in -----------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, pages: PagesDep, resources: ResourcesDep) -> Response:
    try:
        await resources.web_sessions.resolve(request.cookies.get(SESSION_COOKIE))
    except AuthenticationError:
        return pages.index()
    return see_other("/connection")


@router.post("/sign-in")
async def sign_in(
    request: Request,
    pages: PagesDep,
    resources: ResourcesDep,
    api_key: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    if _from_another_site(request):
        return pages.render("index.html", 403, error="Sign in from this page, not another site.")
    sessions: WebSessions = resources.web_sessions
    address = request_address(request)
    await resources.rate_limits.refuse_if_blocked(address)
    try:
        token = await sessions.open(api_key)
    except AuthenticationError:
        await resources.rate_limits.count_failure(address)
        error = (
            "This API key is not valid (it may have been revoked). Paste a current key, or "
            "create one with: tracecat-integrations users create EMAIL"
        )
        return pages.render("index.html", 401, error=error)
    response = see_other("/connection")
    set_session_cookie(response, token, secure=_secure(resources))
    return response


@router.post("/sign-out")
async def sign_out(request: Request, user: CheckedUser, resources: ResourcesDep) -> Response:
    await resources.web_sessions.close(request.cookies.get(SESSION_COOKIE))
    response = see_other("/")
    clear_session_cookie(response)
    return response


def _from_another_site(request: Request) -> bool:
    """No session yet, so no CSRF token: a sign-in another site posted (login CSRF) is
    told by the browser's Sec-Fetch-Site, or by its Origin. Under our `Referrer-Policy:
    no-referrer` a browser sends `Origin: null` from our own page, so that one proves
    nothing either way."""
    if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("origin")
    return origin not in (None, "null") and origin != str(request.base_url).rstrip("/")


def _secure(resources: ResourcesDep) -> bool:
    return resources.settings.redirect_uri().startswith("https://")


# --- the connection -------------------------------------------------------------------------


@router.get("/connection", response_class=HTMLResponse)
async def connection(page: PageDep) -> Response:
    return await _connection_page(page, confirm_disconnect=False)


async def _connection_page(
    page: Page, *, confirm_disconnect: bool, notice: str | None = None
) -> Response:
    views = await page.resources.integrations.list_views(page.user.id)
    status = StatusResponse.from_view(views[0] if views else None)
    now = page.resources.clock.now()
    return page.render(
        "connection.html",
        "connection",
        title="Connection",
        status=status,
        state=present.connection_state(status),
        expires=present.relative_time(status.expires_at, now),
        refreshed=present.relative_time(status.last_refreshed_at, now),
        confirm_disconnect=confirm_disconnect,
        notice=notice,
    )


@router.post("/connection/connect")
async def connect(
    request: Request, user: CheckedUser, resources: ResourcesDep, pages: PagesDep
) -> Response:
    """Start Microsoft's sign-in from this browser (the flow is bound to it by a cookie)."""
    browser_id = browser_id_from(request.cookies.get(BROWSER_COOKIE))
    auth_url = await resources.integrations.start_connect(
        user.id, browser_id, client_address=request_address(request)
    )
    response = pages.render("continue.html", url=auth_url)
    response.set_cookie(
        BROWSER_COOKIE,
        browser_id,
        max_age=600,
        path=BROWSER_COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(resources),
    )
    return response


@router.post("/connection/disconnect")
async def disconnect(
    request: Request,
    page: PageDep,
    user: CheckedUser,
    confirm: Annotated[str | None, Form()] = None,
) -> Response:
    if confirm != "yes":  # confirmed on the page itself, not in a browser dialog
        return await _connection_page(page, confirm_disconnect=True)
    with contextlib.suppress(NotFoundError):  # already not connected: the page says so
        await page.resources.integrations.disconnect(
            user.id, client_address=request_address(request)
        )
    return await _connection_page(
        page, confirm_disconnect=False, notice="Microsoft Teams was disconnected."
    )


# --- teams, channels, sending ---------------------------------------------------------------


@router.get("/teams", response_class=HTMLResponse)
async def teams(page: PageDep) -> Response:
    try:
        found = await page.graph(lambda teams: teams.get_user_teams())
    except TracecatError as error:
        failed = present.error_in_words(error)
        return page.render("teams.html", "teams", title="Teams", teams=[], error=failed)
    return page.render("teams.html", "teams", title="Teams", teams=found)


@router.get("/teams/{team_id}", response_class=HTMLResponse)
async def team(team_id: str, page: PageDep) -> Response:
    require_segment(team_id, "team_id")
    context: dict[str, Any] = {"team_id": team_id, "team_name": team_id, "channels": []}
    try:
        context["team_name"] = await _team_name(page, team_id)
        context["channels"] = await page.graph(lambda teams: teams.list_channels(team_id))
    except TracecatError as error:
        context.update(_error(error))
    return page.render("team.html", "teams", title=context["team_name"], **context)


@router.get("/teams/{team_id}/channels/{channel_id}", response_class=HTMLResponse)
async def channel(
    team_id: str, channel_id: str, page: PageDep, sent: str | None = None
) -> Response:
    return await _channel_page(page, team_id, channel_id, sent_id=sent)


@router.post("/teams/{team_id}/channels/{channel_id}/messages", response_class=HTMLResponse)
async def send(
    team_id: str,
    channel_id: str,
    page: PageDep,
    user: CheckedUser,
    content: Annotated[str, Form()] = "",
    content_type: Annotated[str, Form()] = "text",
    subject: Annotated[str, Form()] = "",
    mention_id: Annotated[str, Form()] = "",
    mention_name: Annotated[str, Form()] = "",
    adaptive_card: Annotated[str, Form()] = "",
) -> Response:
    form = {
        "content": content,
        "content_type": content_type,
        "subject": subject,
        "mention_id": mention_id,
        "mention_name": mention_name,
        "adaptive_card": adaptive_card,
    }
    try:
        message = message_request(form)
    except ValueError as problem:
        return await _channel_page(
            page, team_id, channel_id, form=form, send_error=str(problem), http_status=422
        )
    try:
        sent = await page.graph(
            lambda teams: teams.send_message(team_id, channel_id, **dict(message))
        )
    except TracecatError as error:
        failed = present.error_in_words(error)
        return await _channel_page(
            page, team_id, channel_id, form=form, send_error=failed, http_status=error.status_code
        )
    # Post/redirect/get: reloading the result page must not post the message again.
    return see_other(f"{channel_url(team_id, channel_id)}?sent={quote(sent.id, safe='')}")


@router.post("/teams/{team_id}/channels/{channel_id}/test-message", response_class=HTMLResponse)
async def test_message(team_id: str, channel_id: str, page: PageDep, user: CheckedUser) -> Response:
    control = EmulatorControl.for_settings(page.resources.settings)
    if control is None:
        return await _channel_page(page, team_id, channel_id, send_error="Not the emulator.")
    await control.post_as_someone_else(page.resources.graph_pool, team_id, channel_id)
    notice = "The emulator posted a message from someone else in this channel."
    return await _channel_page(page, team_id, channel_id, notice=notice)


async def _channel_page(
    page: Page,
    team_id: str,
    channel_id: str,
    *,
    form: dict[str, str] | None = None,
    sent_id: str | None = None,
    send_error: str | None = None,
    notice: str | None = None,
    http_status: int = 200,
) -> Response:
    require_segment(team_id, "team_id")
    require_segment(channel_id, "channel_id")
    if sent_id is not None:
        require_segment(sent_id, "sent")
    context: dict[str, Any] = {
        "team_id": team_id,
        "channel_id": channel_id,
        "team_name": team_id,
        "channel_name": channel_id,
        "form": form or {},
        "sent": None,
        "sent_link": sent_id and present.teams_message_link(team_id, channel_id, sent_id),
        "send_error": send_error,
        "notice": notice,
        "messages": [],
        "messages_note": None,
    }
    try:
        context["team_name"] = await _team_name(page, team_id)
        channels = await page.graph(lambda teams: teams.list_channels(team_id))
        found = next((c for c in channels if c.id == channel_id), None)
        context["channel_name"] = (found and found.display_name) or channel_id
    except TracecatError as error:
        context.update(_error(error))
        return page.render(
            "channel.html", "teams", title=channel_id, http_status=http_status, **context
        )
    if sent_id is not None:
        context["sent"] = await _sent_message(page, team_id, channel_id, sent_id)
    try:
        await page.resources.integrations.require_scope(page.user.id, present.READ_SCOPE)
        recent = await page.graph(
            lambda teams: teams.list_channel_messages(team_id, channel_id, top=RECENT_MESSAGES)
        )
        now = page.resources.clock.now()
        context["messages"] = [present.message_line(m, now) for m in recent]
    except TracecatError as error:
        context["messages_note"] = present.error_in_words(error)
    title = context["channel_name"]
    return page.render("channel.html", "teams", title=title, http_status=http_status, **context)


async def _sent_message(page: Page, team_id: str, channel_id: str, message_id: str) -> Any:
    """What was just sent, as Teams shows it; None when it cannot be read back (no read
    permission): the page then says "Sent" with the link alone."""
    with contextlib.suppress(TracecatError):
        message: ChatMessage = await page.graph(
            lambda teams: teams.get_message(team_id, channel_id, message_id)
        )
        return {
            "subject": message.subject,
            "text": present.plain_text(message.body.content or ""),
            "web_url": message.web_url,
        }
    return None


def channel_url(team_id: str, channel_id: str) -> str:
    return f"/teams/{quote(team_id, safe='')}/channels/{quote(channel_id, safe='')}"


async def _team_name(page: Page, team_id: str) -> str:
    teams = await page.graph(lambda client: client.get_user_teams())
    found = next((t for t in teams if t.id == team_id), None)
    return (found and found.display_name) or team_id


def _error(error: TracecatError) -> dict[str, Any]:
    return {"error": present.error_in_words(error)}
