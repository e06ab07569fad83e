"""The OpenAPI schema tells the truth about errors: each route's error answers, with the one
error model (`{"detail": ...}`, JSON) and the headers they carry.

What a route can answer follows from what it does, so the statuses are given by kind of
work (an API key, a body, a call to Microsoft) plus each route's own, in one table here
rather than spread over the decorators. schemathesis checks the result against the live
app (tests/test_schema.py): an answer the schema does not list fails the suite.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

DESCRIPTIONS = {
    400: "The request is not one this route can act on (a malformed id, a flow that cannot finish)",
    401: "No, wrong or revoked API key; or Microsoft refused the grant (connect again)",
    403: "Not allowed: Microsoft refused, or the connection lacks a permission it names",
    404: "Not found (or not yours), or Microsoft Teams is not connected",
    409: "Conflicts with the current state",
    413: "Request body over TRACECAT_MAX_BODY_BYTES",
    422: "The request does not match the schema; `detail` lists what, without echoing input",
    429: "A rate limit (ours, or Microsoft's passed on); `Retry-After` says when to try again",
    502: "Microsoft answered with an error or a wrong client secret",
    503: "The database, Redis or Microsoft is unavailable for now; retry",
    504: "Microsoft did not answer in time; for a send, whether it was posted is unknown",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer"},
    }
}

AUTHENTICATED = {401, 429, 503}
GRAPH = {400, 401, 403, 404, 409, 429, 502, 503, 504}  # Microsoft on the user's behalf
CHANNEL = AUTHENTICATED | GRAPH | {422}  # ids in the path
SUBSCRIPTION = AUTHENTICATED | {404, 422}
PREFIX = "/auth/integrations"
MS = f"{PREFIX}/microsoft"

ROUTE_ERRORS: dict[tuple[str, str], set[int]] = {
    ("get", f"{MS}/connect"): AUTHENTICATED | {502},
    ("get", f"{MS}/callback"): {400, 422, 502, 503},
    ("delete", f"{MS}/disconnect"): AUTHENTICATED | {404},
    ("get", f"{MS}/status"): AUTHENTICATED,
    ("get", f"{PREFIX}/integrations"): AUTHENTICATED,
    ("get", f"{PREFIX}/audit"): AUTHENTICATED | {422},
    ("get", f"{MS}/teams"): AUTHENTICATED | GRAPH,
    ("get", f"{MS}/teams/{{team_id}}/channels"): CHANNEL,
    ("get", f"{MS}/teams/{{team_id}}/channels/{{channel_id}}/messages"): CHANNEL,
    ("post", f"{MS}/teams/{{team_id}}/channels/{{channel_id}}/messages"): CHANNEL | {413},
    ("post", f"{MS}/teams/{{team_id}}/channels/{{channel_id}}/messages/{{message_id}}/replies"): (
        CHANNEL | {413}
    ),
    ("get", f"{MS}/subscriptions"): AUTHENTICATED,
    ("post", f"{MS}/subscriptions"): AUTHENTICATED | GRAPH | {413, 422},
    ("get", f"{MS}/subscriptions/{{subscription_id}}"): SUBSCRIPTION,
    ("delete", f"{MS}/subscriptions/{{subscription_id}}"): SUBSCRIPTION | GRAPH,
    ("post", f"{MS}/subscriptions/{{subscription_id}}/rotate-secret"): SUBSCRIPTION,
    ("get", f"{MS}/subscriptions/{{subscription_id}}/deliveries"): SUBSCRIPTION,
    ("post", f"{MS}/subscriptions/{{subscription_id}}/deliveries/{{delivery_id}}/retry"): (
        SUBSCRIPTION | {409}
    ),
    ("post", "/webhooks/microsoft/notifications"): {400, 413, 422, 503},
    ("post", "/webhooks/microsoft/lifecycle"): {400, 413, 422, 503},
}
# The callback is Microsoft's redirect: what it may carry, per the authorization code flow.
CALLBACK_PARAMETERS = [
    ("code", "The authorization code (single use)"),
    ("state", "The state the flow started with"),
    ("error", "Microsoft's error code, when the sign-in did not happen"),
    ("error_description", "Microsoft's description of that error"),
]


class ErrorResponse(BaseModel):
    """Every error: `detail` is a sentence, Microsoft's error (`code`, `message`,
    `request_id`), or for 422 the list of what does not match."""

    detail: str | dict[str, Any] | list[dict[str, Any]] = Field(
        description="What went wrong, and what to do"
    )


def document_errors(app: FastAPI) -> None:
    """Replace the app's schema builder with one that lists the error answers."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                routes=app.routes,
                webhooks=app.webhooks.routes,
            )
            schema.setdefault("components", {}).setdefault("schemas", {})["ErrorResponse"] = (
                ErrorResponse.model_json_schema()
            )
            for (method, path), statuses in ROUTE_ERRORS.items():
                operation = schema["paths"][path][method]
                _add_errors(operation, statuses)
                if path == f"{MS}/callback":
                    _declare_callback_parameters(operation)
            schema["components"]["schemas"].pop("HTTPValidationError", None)
            schema["components"]["schemas"].pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_errors(operation: dict[str, Any], statuses: set[int]) -> None:
    responses = operation.setdefault("responses", {})
    for status in sorted(statuses):
        said = responses.get(str(status), {}).get("description")  # a route's own words win
        answer: dict[str, Any] = {
            "description": said or DESCRIPTIONS[status],
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
            },
        }
        if status in (429, 503):
            answer["headers"] = RETRY_AFTER
        responses[str(status)] = answer  # ours replace FastAPI's default 422 too


def _declare_callback_parameters(operation: dict[str, Any]) -> None:
    declared = {p["name"] for p in operation.get("parameters", [])}
    for name, description in CALLBACK_PARAMETERS:
        if name not in declared:
            operation.setdefault("parameters", []).append(
                {
                    "name": name,
                    "in": "query",
                    "required": False,
                    "description": description,
                    "schema": {"type": "string"},
                }
            )
