"""The control API under /_emulator: what tests use to arrange and inspect the emulator.

It is not a Microsoft API, so its errors are a plain {"error": "..."} body.

    GET    /_emulator                          where it listens, tenant, demo client id
    POST   /_emulator/reset                    forget users, tokens, messages, faults, counters;
                                                the clock goes back to real time
    GET    /_emulator/config                   see EmulatorConfig (tracecat/emulator/config.py)
    PATCH  /_emulator/config                   partial, e.g. {"throttling": {"enabled": false}}
    GET    /_emulator/clock                    {"offset_seconds": 0.0, "now": 1700000000.0,
                                                "now_iso": "2023-11-14T22:13:20.000Z"}
    POST   /_emulator/clock                    {"advance_seconds": 3600}: move the emulator's
                                                time forward (never back); answers like GET
    POST   /_emulator/faults                   add a fault rule (see below); answers the rule
    GET    /_emulator/faults, DELETE /_emulator/faults
    GET    /_emulator/users
    POST   /_emulator/users/{email}/revoke     refresh and access tokens issued so far stop working
    POST   /_emulator/users/{email}/expire-tokens   access tokens issued so far count as expired
    GET    /_emulator/stats                    token requests by grant/outcome/user, Graph requests
                                                by route/status and the last 1000 as sent
                                                (graph_request_log), 429s issued, messages stored
    GET    /_emulator/messages                 every stored message, replies included
    POST   /_emulator/apps                     {"client_id"?, "client_secret"?, "display_name"?,
                                                "redirect_uris": [...], "scopes"?}
    POST   /_emulator/teams/{team}/channels/{channel}/messages
                                               {"content", "content_type"? ("text"|"html"),
                                                "from"? (email), "reply_to"? (root message id)}:
                                                a message from someone else (default: a demo user
                                                not subscribed to the channel), stored like a
                                                Graph POST and notified; 201 with it as in /messages
    GET    /_emulator/subscriptions            {"subscriptions": [Graph's subscription resource +
                                                "needsReauthorization", "delivery": {"attempts",
                                                "delivered", "failed", "last_status",
                                                "lifecycle_sent"}]}, live ones only
    POST   /_emulator/subscriptions/{id}/lifecycle   {"event": "reauthorizationRequired" |
                                                "subscriptionRemoved" | "missed"}: send that
                                                lifecycle notification (subscriptionRemoved also
                                                removes the subscription); 202

Change notifications (graph_subscriptions.py, notifier.py): Graph's POST /v1.0/subscriptions
for /teams/{id}/channels/{id}/messages, with its validation handshake, then a notification
(without resource data) to notificationUrl for every message or reply stored in the channel.
`PATCH /config {"notifications": {...}}` tunes delivery: "retry_delays" (seconds before each
retry after the first try; default [1, 2, 4, 8, 16]), "timeout_seconds" (handshake and each
delivery; default 10, Graph's) and "duplicate" (send every notification twice). Stats count
them under "notifications". Unlike Graph, notificationUrl may be plain http, and
includeResourceData must be false.

The clock: every expiry the emulator judges (access token exp, authorization code lifetime,
refresh-token inactivity of 90 days) and every time it stamps (iat/exp/expires_in of new
tokens, message dates) uses the emulator's time, real time plus the offset. So after
{"advance_seconds": 3600} a token issued before with the default 3599 s lifetime is refused
by Graph as expired, and the token endpoint issues tokens valid from the new time on.

Faults: a rule applies to the next `count` (default 1) matching requests, then is gone; the
first matching rule wins. `target` is "token" (POSTs to a token endpoint), "graph" (all of
/v1.0) or a path prefix ("/v1.0/teams", "/common/oauth2"); `method` ("GET", "POST", ...)
optionally narrows it. `kind` (default "error") says what happens:

    error              {"target": "graph", "status": 503, "count": 1, "retry_after": null,
                        "delay_seconds": 0, "code": null, "message": null}
                       a Microsoft-shaped error (AADSTS or Graph OData body), delay_seconds
                       late. Graph's code follows the status unless `code` is given: 401 is
                       InvalidAuthenticationToken, 429 TooManyRequests, 503 ServiceNotAvailable.
    slow               {"kind": "slow", "target": "graph", "delay_seconds": 2}
                       the normal answer, delay_seconds late. The request is handled at once,
                       so a POST is stored even when the client gave up waiting.
    non_json           {"kind": "non_json", "target": "graph", "status": 200,
                        "body": "<html>...</html>", "content_type": "text/html",
                        "retry_after": null, "delay_seconds": 0}
                       that body instead of the answer, as from a proxy; status 200-599,
                       default 200; body and content_type default to a small HTML page.
    endless_next_link  {"kind": "endless_next_link", "target": "/v1.0/me/joinedTeams"}
                       the list page links to one more page even when it is the last, each
                       link new. Each page served uses the rule once: with count N, N pages
                       link on and the page after them ends the list as usual.
    foreign_next_link  {"kind": "foreign_next_link", "target": "graph",
                        "next_link_base": "https://evil.example"}
                       the list page's @odata.nextLink (added on a last page) starts with
                       next_link_base (scheme://host[:port], default https://evil.example).

The two next-link kinds apply to Graph list routes only (target "graph" or a /v1.0 path),
count list pages rather than requests and take no delay. A rule is answered (and listed) as
{"id", "kind", "target", "method", "status", "count" (uses left), "retry_after",
"delay_seconds", "code", "message", "body", "content_type", "next_link_base"}, null where
it does not apply.

Both listeners serve it, and a browser visiting any web page can reach the loopback one, so
every request that changes state (any method but GET, HEAD and OPTIONS) must:

  * carry `Content-Type: application/json`, even with no body (`POST /_emulator/reset`),
    else 415. A cross-site page can only send form or text/plain bodies without a CORS
    preflight, and the emulator answers no preflight;
  * carry no `Origin` header, or the origin of one of the emulator's own listeners
    (scheme://host:port as published, e.g. http://127.0.0.1:8401), else 403.

curl, httpx and other non-browser clients send no Origin, so they only need the header.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from tracecat.emulator.constants import DEMO_APP_SCOPES, DEMO_CLIENT_ID
from tracecat.emulator.fault_rules import FaultKind, FaultRule, RequestKind
from tracecat.emulator.http_utils import emulator_state, graph_base, http_base, https_base
from tracecat.emulator.identity_store import AppRegistration
from tracecat.emulator.state import EmulatorState

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
DEFAULT_PORTS = {"http": 80, "https": 443}
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_FOREIGN_BASE = "https://evil.example"
DEFAULT_NON_JSON_BODY = (
    "<!doctype html><html><head><title>Service Unavailable</title></head>"
    "<body><h1>Service Unavailable</h1></body></html>"
)
DEFAULT_NON_JSON_TYPE = "text/html"
# Which optional fault fields each kind takes; any other is refused, so a typo'd or
# misplaced field fails loudly instead of silently doing nothing.
FAULT_FIELDS = {
    FaultKind.ERROR: {"status", "retry_after", "delay_seconds", "code", "message"},
    FaultKind.SLOW: {"delay_seconds"},
    FaultKind.NON_JSON: {"status", "retry_after", "delay_seconds", "body", "content_type"},
    FaultKind.ENDLESS_NEXT_LINK: set(),
    FaultKind.FOREIGN_NEXT_LINK: {"next_link_base"},
}
ALL_FAULT_FIELDS = set().union(*FAULT_FIELDS.values())


class ControlError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL; None for anything else, such as "null"."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


async def refuse_cross_site(request: Request) -> None:
    """Guard for state-changing requests; see the module docstring."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    # Only the published listener URLs count, never the Host header: under DNS rebinding a
    # foreign page's Origin and Host name the same attacker host.
    own = {_origin(https_base(request)), _origin(http_base(request))} - {None}
    if origin is not None and _origin(origin) not in own:
        raise ControlError(f"cross-origin requests are refused (Origin: {origin[:200]})", 403)
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ControlError(
            "the control API only accepts Content-Type: application/json, even with no body",
            415,
        )


router = APIRouter(prefix="/_emulator", dependencies=[Depends(refuse_cross_site)])


def control_error_response(exc: ControlError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ControlError("the request body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise ControlError("the request body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is default:
        return value
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ControlError(f"{name} has the wrong type")
    if not isinstance(value, kind):
        raise ControlError(f"{name} has the wrong type")
    return value


@router.get("")
async def info(request: Request) -> dict[str, Any]:
    state = emulator_state(request)
    return {
        "authority_host": https_base(request),
        "graph_url": graph_base(request),
        "http_url": http_base(request),
        "tenant_id": state.tenant_id,
        "tenant_domain": state.tenant_domain,
        "client_id": DEMO_CLIENT_ID,
    }


@router.post("/reset")
async def reset(request: Request) -> dict[str, str]:
    emulator_state(request).reset()
    return {"status": "reset"}


@router.get("/config")
async def get_config(request: Request) -> dict[str, Any]:
    return emulator_state(request).config.to_dict()


@router.patch("/config")
async def patch_config(request: Request) -> dict[str, Any]:
    patch = await _json_object(request)
    try:
        return emulator_state(request).patch_config(patch).to_dict()
    except (ValueError, TypeError) as exc:
        raise ControlError(str(exc)) from exc


def _target(body: dict[str, Any], kind: FaultKind) -> RequestKind | str:
    target = _field(body, "target", str, "")
    if target.startswith("/_emulator"):
        raise ControlError("the control API cannot be faulted")
    if kind.bends_next_link:
        if not (target == RequestKind.GRAPH or target == "/v1.0" or target.startswith("/v1.0/")):
            raise ControlError(f"a {kind} fault needs target 'graph' or a path under /v1.0")
    elif not (target in (RequestKind.TOKEN, RequestKind.GRAPH) or target.startswith("/")):
        raise ControlError("target must be 'token', 'graph' or a path starting with '/'")
    return RequestKind(target) if not target.startswith("/") else target


def _next_link_base(body: dict[str, Any]) -> str:
    base = _field(body, "next_link_base", str, DEFAULT_FOREIGN_BASE).rstrip("/")
    origin = _origin(base)
    if origin is None or urlsplit(base).path or "?" in base or "#" in base:
        raise ControlError("next_link_base must be scheme://host[:port], e.g. https://evil.example")
    return base


def parse_fault(body: dict[str, Any]) -> FaultRule:
    """Validate a POST /faults body (see the module docstring) into a rule."""
    try:
        kind = FaultKind(_field(body, "kind", str, FaultKind.ERROR.value))
    except ValueError:
        raise ControlError(f"kind must be one of {[k.value for k in FaultKind]}") from None
    misplaced = sorted((ALL_FAULT_FIELDS - FAULT_FIELDS[kind]) & set(body))
    if misplaced:
        raise ControlError(f"{', '.join(misplaced)} does not apply to a {kind} fault")
    target = _target(body, kind)
    method = _field(body, "method", str, None)
    if method is not None and method.upper() not in HTTP_METHODS:
        raise ControlError(f"method must be one of {list(HTTP_METHODS)}")
    default_status = 200 if kind == FaultKind.NON_JSON else 503
    status = _field(body, "status", int, default_status)
    if kind == FaultKind.ERROR and not 400 <= status <= 599:
        raise ControlError("status must be an HTTP error status (400-599)")
    if kind == FaultKind.NON_JSON and not 200 <= status <= 599:
        raise ControlError("status must be between 200 and 599")
    count = _field(body, "count", int, 1)
    retry_after = _field(body, "retry_after", int, None)
    delay = float(_field(body, "delay_seconds", (int, float), 0.0))
    if count < 1 or (retry_after is not None and retry_after < 0) or not 0 <= delay <= 300:
        raise ControlError("count must be >= 1, retry_after >= 0 and delay_seconds in [0, 300]")
    if kind == FaultKind.SLOW and not delay:
        raise ControlError("a slow fault needs delay_seconds > 0")
    non_json = kind == FaultKind.NON_JSON
    return FaultRule(
        id=str(uuid.uuid4()),
        kind=kind,
        target=target,
        remaining=count,
        method=method.upper() if method else None,
        status=status if kind in (FaultKind.ERROR, FaultKind.NON_JSON) else None,
        retry_after=retry_after,
        delay_seconds=delay,
        code=_field(body, "code", str, None),
        message=_field(body, "message", str, None),
        body=_field(body, "body", str, DEFAULT_NON_JSON_BODY) if non_json else None,
        content_type=_field(body, "content_type", str, DEFAULT_NON_JSON_TYPE) if non_json else None,
        next_link_base=_next_link_base(body) if kind == FaultKind.FOREIGN_NEXT_LINK else None,
    )


@router.post("/faults", status_code=201)
async def add_fault(request: Request) -> dict[str, Any]:
    rule = parse_fault(await _json_object(request))
    return emulator_state(request).faults.add(rule).public()


def _clock(state: EmulatorState) -> dict[str, Any]:
    now = state.clock.utcnow()
    return {
        "offset_seconds": state.clock.offset,
        "now": now.timestamp(),
        "now_iso": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


@router.get("/clock")
async def get_clock(request: Request) -> dict[str, Any]:
    return _clock(emulator_state(request))


@router.post("/clock")
async def advance_clock(request: Request) -> dict[str, Any]:
    body = await _json_object(request)
    if set(body) != {"advance_seconds"}:
        raise ControlError('the body must be {"advance_seconds": <seconds>}')
    seconds = _field(body, "advance_seconds", (int, float), None)
    state = emulator_state(request)
    try:
        state.advance_clock(float(seconds))
    except ValueError as exc:
        raise ControlError(str(exc)) from exc
    return _clock(state)


@router.get("/faults")
async def list_faults(request: Request) -> dict[str, Any]:
    return {"faults": [rule.public() for rule in emulator_state(request).faults.all()]}


@router.delete("/faults", status_code=204)
async def clear_faults(request: Request) -> Response:
    emulator_state(request).faults.clear()
    return Response(status_code=204)


@router.get("/users")
async def list_users(request: Request) -> dict[str, Any]:
    return {"users": [user.public() for user in emulator_state(request).identity.all_users()]}


@router.post("/users/{email}/revoke")
async def revoke_user(email: str, request: Request) -> dict[str, Any]:
    user = emulator_state(request).identity.revoke_user(email)
    if user is None:
        raise ControlError(f"no user {email!r} has signed in", 404)
    return {**user.public(), "tokens_valid_from": user.tokens_valid_from}


@router.post("/users/{email}/expire-tokens")
async def expire_user_tokens(email: str, request: Request) -> dict[str, Any]:
    user = emulator_state(request).identity.expire_user_access_tokens(email)
    if user is None:
        raise ControlError(f"no user {email!r} has signed in", 404)
    return {**user.public(), "access_tokens_expired_before": user.access_tokens_expired_before}


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    return emulator_state(request).stats_report()


@router.get("/messages")
async def messages(request: Request) -> dict[str, Any]:
    return {"messages": [m.public() for m in emulator_state(request).teams.every_message()]}


@router.post("/apps", status_code=201)
async def register_app(request: Request) -> dict[str, Any]:
    body = await _json_object(request)
    redirect_uris = _field(body, "redirect_uris", list, [])
    if not all(isinstance(uri, str) and uri for uri in redirect_uris):
        raise ControlError("redirect_uris must be a list of URLs")
    scopes = _field(body, "scopes", list, list(DEMO_APP_SCOPES))
    client_id = _field(body, "client_id", str, None) or str(uuid.uuid4())
    try:
        uuid.UUID(client_id)
    except ValueError as exc:
        raise ControlError("client_id must be a GUID, like Entra application ids") from exc
    app = AppRegistration(
        client_id=client_id,
        client_secret=_field(body, "client_secret", str, None) or secrets.token_urlsafe(30),
        display_name=_field(body, "display_name", str, None)
        or f"Emulator app {int(emulator_state(request).now())}",
        redirect_uris=list(redirect_uris),
        scopes=tuple(str(s) for s in scopes),
    )
    return emulator_state(request).identity.register_app(app).public()
