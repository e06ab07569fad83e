"""Routes Microsoft calls (no API key): change and lifecycle notifications.

Both answer Graph's validation handshake (`?validationToken=`: 200, text/plain, the token)
and otherwise store what is genuine and answer 202 at once (see `inbound.py`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import PlainTextResponse

from tracecat.clients import request_address
from tracecat.deps import ResourcesDep
from tracecat.exceptions import BadRequestError
from tracecat.notifications import inbound
from tracecat.notifications.models import InboundKind

router = APIRouter(prefix="/webhooks/microsoft", tags=["webhooks"])

ValidationToken = Annotated[str | None, Query(alias="validationToken", max_length=1024)]
# How these routes answer, for the OpenAPI schema (the body is Graph's, read as it comes).
ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The validation handshake: the decoded `validationToken`",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    202: {"description": "Kept (or, if forged or unknown, dropped and counted)"},
    400: {"description": "The body is no Microsoft Graph notification collection"},
}


async def _handle(
    request: Request, resources: ResourcesDep, kind: InboundKind, token: str | None
) -> Response:
    if token is not None:
        # The handshake when a subscription is created: echo the (decoded) token as plain text.
        return PlainTextResponse(token)
    try:
        body = await request.json()
    except ValueError:
        raise BadRequestError("the body must be JSON: a Microsoft Graph notification") from None
    kept = await inbound.receive(
        resources.database,
        body,
        kind,
        resources.clock,
        audit=resources.audit,
        client_address=request_address(request),
    )
    if kept:
        resources.notifications_kept(lifecycle=kind is InboundKind.LIFECYCLE)
    return Response(status_code=status.HTTP_202_ACCEPTED)


@router.post("/notifications", status_code=status.HTTP_202_ACCEPTED, responses=ANSWERS)
async def change_notifications(
    request: Request, resources: ResourcesDep, token: ValidationToken = None
) -> Response:
    return await _handle(request, resources, InboundKind.CHANGE, token)


@router.post("/lifecycle", status_code=status.HTTP_202_ACCEPTED, responses=ANSWERS)
async def lifecycle_notifications(
    request: Request, resources: ResourcesDep, token: ValidationToken = None
) -> Response:
    return await _handle(request, resources, InboundKind.LIFECYCLE, token)
