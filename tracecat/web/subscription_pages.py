"""Pages for subscriptions: create one (team and channel pickers, target URL), see its
signing secret once, rotate it, delete it, and watch its deliveries (a table htmx reloads
every two seconds) with Retry on failed ones. The same NotificationService as the API."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from tracecat.clients import request_address
from tracecat.exceptions import TracecatError
from tracecat.notifications.api import get_notification_service
from tracecat.notifications.models import NotificationSubscription, WebhookDelivery
from tracecat.notifications.service import NotificationService
from tracecat.web import present
from tracecat.web.emulator import demo_receiver_url
from tracecat.web.router import CheckedUser, Page, PageDep, see_other

router = APIRouter(include_in_schema=False)
Service = Annotated[NotificationService, Depends(get_notification_service)]
STATUS_WORDS = {
    "active": ("active", "ok"),
    "reauthorization_required": ("reauthorization required: reconnect", "bad"),
    "disabled": ("disabled: the target answered 410 Gone", "off"),
}
DELIVERY_TONES = {"delivered": "ok", "pending": "warn", "failed": "bad"}


@router.get("/subscriptions", response_class=HTMLResponse)
async def subscriptions(page: PageDep, service: Service) -> Response:
    return await _list_page(page, service)


async def _list_page(
    page: Page,
    service: NotificationService,
    *,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
    form: dict[str, str] | None = None,
    confirm_delete: str | None = None,
) -> Response:
    rows = await service.list_subscriptions(page.user.id)
    teams: list[Any] = []
    channels: list[Any] = []
    form = form or {}
    try:
        teams = await page.graph(lambda client: client.get_user_teams())
        team_id = form.get("team_id") or (teams[0].id if teams else "")
        if team_id:
            channels = await page.graph(lambda client: client.list_channels(team_id))
    except TracecatError as problem:
        error = error or present.error_in_words(problem)
    now = page.resources.clock.now()
    return page.render(
        "subscriptions.html",
        "subscriptions",
        http_status=status,
        title="Subscriptions",
        subscriptions=[_row(row, teams, now) for row in rows],
        teams=teams,
        channels=channels,
        form=form,
        error=error,
        notice=notice,
        confirm_delete=confirm_delete,
        receiver_url=demo_receiver_url(page.resources.settings),
    )


def _row(row: NotificationSubscription, teams: list[Any], now: Any) -> dict[str, Any]:
    words, tone = STATUS_WORDS.get(row.status, (row.status, "off"))
    team = next((t for t in teams if t.id == row.team_id), None)
    return {
        "id": str(row.id),
        "team": (team and team.display_name) or row.team_id,
        "channel_id": row.channel_id,
        "target_url": row.target_url,
        "status": words,
        "tone": tone,
        "expires": present.relative_time(row.expires_at, now),
    }


@router.get("/subscriptions/channel-options", response_class=HTMLResponse)
async def channel_options(page: PageDep, team_id: str = "") -> Response:
    """The Channel picker's options for the chosen team (htmx swaps them in)."""
    try:
        channels = await page.graph(lambda client: client.list_channels(team_id))
    except TracecatError:
        channels = []
    return page.pages.render("_channel_options.html", channels=channels)


@router.post("/subscriptions", response_class=HTMLResponse)
async def create(
    request: Request,
    page: PageDep,
    user: CheckedUser,
    service: Service,
    team_id: Annotated[str, Form()] = "",
    channel_id: Annotated[str, Form()] = "",
    target_url: Annotated[str, Form()] = "",
) -> Response:
    form = {"team_id": team_id, "channel_id": channel_id, "target_url": target_url.strip()}
    if not (team_id and channel_id and form["target_url"]):
        error = "Pick a team and a channel, and give the target URL your automation listens on."
        return await _list_page(page, service, status=422, error=error, form=form)
    try:
        row, secret = await service.create(
            user.id,
            team_id,
            channel_id,
            form["target_url"],
            client_address=request_address(request),
        )
    except TracecatError as problem:
        error = present.error_in_words(problem)
        return await _list_page(page, service, status=problem.status_code, error=error, form=form)
    return _secret_page(page, row.id, secret, created=True)


@router.post("/subscriptions/{subscription_id}/rotate-secret", response_class=HTMLResponse)
async def rotate(
    request: Request, subscription_id: str, page: PageDep, user: CheckedUser, service: Service
) -> Response:
    address = request_address(request)
    secret = await service.rotate_secret(user.id, subscription_id, client_address=address)
    return _secret_page(page, uuid.UUID(subscription_id), secret, created=False)


def _secret_page(page: Page, subscription_id: uuid.UUID, secret: str, *, created: bool) -> Response:
    return page.render(
        "secret.html",
        "subscriptions",
        title="Signing secret",
        subscription_id=str(subscription_id),
        secret=secret,
        created=created,
    )


@router.post("/subscriptions/{subscription_id}/delete", response_class=HTMLResponse)
async def delete(
    request: Request,
    subscription_id: str,
    page: PageDep,
    user: CheckedUser,
    service: Service,
    confirm: Annotated[str | None, Form()] = None,
) -> Response:
    await service.get(user.id, subscription_id)  # 404 for an unknown or another's
    if confirm != "yes":
        return await _list_page(page, service, confirm_delete=subscription_id)
    await service.delete(user.id, subscription_id, client_address=request_address(request))
    return await _list_page(page, service, notice="The subscription was deleted.")


@router.get("/subscriptions/{subscription_id}/deliveries", response_class=HTMLResponse)
async def deliveries(subscription_id: str, page: PageDep, service: Service) -> Response:
    context = await _deliveries(page, service, subscription_id)
    return page.render("deliveries.html", "subscriptions", title="Deliveries", **context)


@router.get("/subscriptions/{subscription_id}/deliveries/table", response_class=HTMLResponse)
async def deliveries_table(subscription_id: str, page: PageDep, service: Service) -> Response:
    """The table alone, for htmx to swap in every two seconds."""
    context = await _deliveries(page, service, subscription_id)
    return page.pages.render("_deliveries_table.html", user=page.user, **context)


@router.post(
    "/subscriptions/{subscription_id}/deliveries/{delivery_id}/retry",
    response_class=HTMLResponse,
)
async def retry(
    subscription_id: str, delivery_id: str, page: PageDep, user: CheckedUser, service: Service
) -> Response:
    await service.retry_delivery(user.id, subscription_id, delivery_id)
    page.resources.deliveries_due()
    return see_other(f"/subscriptions/{subscription_id}/deliveries")


async def _deliveries(
    page: Page, service: NotificationService, subscription_id: str
) -> dict[str, Any]:
    row = await service.get(page.user.id, subscription_id)
    rows = await service.deliveries(page.user.id, subscription_id, 100)
    now = page.resources.clock.now()
    return {
        "subscription": _row(row, [], now),
        "deliveries": [_delivery(d, now) for d in rows],
    }


def _delivery(row: WebhookDelivery, now: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "message_id": row.message_id,
        "status": row.status,
        "tone": DELIVERY_TONES.get(row.status, "off"),
        "attempts": row.attempts,
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "created": present.relative_time(row.created_at, now),
        "next_attempt": present.relative_time(row.next_attempt_at, now)
        if row.next_attempt_at
        else "—",
        "can_retry": row.status == "failed",
    }
